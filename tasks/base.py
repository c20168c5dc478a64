"""The task contract and the shared multiple-choice task.

A task is a small declarative object: options (typed, `-T key=value`), a loader,
a prompt, a scorer and groupings. Scorers are pure functions of a sample record
(the same code path scores a live run and `evalkit score RUN_DIR`), so records
carry what scoring needs: presented choices, gold index, target, metadata.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from evalkit.errors import TaskDataError  # noqa: F401  (tasks raise it; its home is the engine)
from evalkit.protocol.choices import LETTERS
from evalkit.protocol.circular import collapse_rotations
from evalkit.protocol.extract import FAILURE_STAGES, extract_choice
from evalkit.results.metrics import MetricSpec, aggregate_scores
from evalkit.types import Presentation, Sample


class TaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str | None = None  # local upstream metadata file / parquet / folder
    audio_root: str | None = None  # root that relative audio paths resolve against
    prompt: str = "default"  # prompt variant


class HubTaskOptions(TaskOptions):
    revision: str | None = None  # overrides the task's pinned hub revision


@dataclass
class LoadedData:
    samples: list[Sample]
    source: dict[str, Any]  # {"kind": "local", "path": ...} or {"kind": "hub", "repo": ..., "revision": ...}
    data_hash: str
    warnings: list[str] = field(default_factory=list)


def hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


class Task:
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    source: ClassVar[str] = ""  # shown by `evalkit list tasks`
    main_metric: ClassVar[str] = "accuracy"
    modality: ClassVar[str] = "audio"  # "audio" or "text"
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    metric_specs: ClassVar[tuple[MetricSpec, ...]] = (MetricSpec("accuracy"),)
    groupings: ClassVar[tuple[str, ...]] = ()
    is_mcq: ClassVar[bool] = False
    #: adapter capabilities every request of this task needs beyond its modality (e.g. "multi_audio" for
    #: several clips per request); the runner refuses an adapter without them before any work. A task may
    #: set it on the instance when its options decide (dynamic-superb's two-clip tasks)
    required_capabilities: frozenset[str] = frozenset()

    def __init__(self, options: TaskOptions | None = None):
        self.options = options or self.Options()

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Task:
        return cls(cls.Options(**args))

    def load(self) -> LoadedData:
        raise NotImplementedError

    def prompt(self, p: Presentation) -> list[dict[str, Any]]:
        """Chat messages for one presentation of a sample."""
        raise NotImplementedError

    def score(self, record: dict[str, Any]) -> dict[str, Any]:
        """{"extracted", "extraction_stage", "scores"} from a record's raw output."""
        raise NotImplementedError

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        metrics, groups = aggregate_scores(records, self.metric_specs, self.groupings)
        return {"metrics": metrics, "groups": groups, "extra": {}}

    def export(self, records: list[dict[str, Any]], run_dir: Path) -> list[str]:
        """Write upstream-format files (e.g. a leaderboard submission); returns their names."""
        return []

    def user_message(self, p: Presentation, text: str) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "audio", "audio": a} for a in p.sample.audio]
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]


def format_options(choices: list[str], style: str = "paren") -> str:
    if style == "dot":
        return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


DEFAULT_MCQ_PROMPT = "{question}\n\nOptions:\n{options}\n\nAnswer with the letter of the correct option."

OfficialScorer = Callable[[dict[str, Any]], "float | None"]


class MCQTask(Task):
    """Multiple choice under the protocol: presented order, extraction, accuracy,
    the upstream scorer's figure (`accuracy_official`) where one exists, and the
    extraction-failure rate. Circular runs count a sample correct only if every
    rotation is."""

    is_mcq = True
    metric_specs = (MetricSpec("accuracy"), MetricSpec("extraction_failure", higher_is_better=False))
    prompts: ClassVar[dict[str, str]] = {"default": DEFAULT_MCQ_PROMPT}
    official: ClassVar[OfficialScorer | None] = None

    def __init__(self, options: TaskOptions | None = None):
        super().__init__(options)
        if self.options.prompt not in self.prompts:
            raise TaskDataError(f"{self.name}: unknown prompt variant {self.options.prompt!r}; "
                                f"choose one of {', '.join(self.prompts)}")

    def render_prompt(self, p: Presentation) -> str:
        template = self.prompts[self.options.prompt]
        style = "dot" if "{options_dot}" in template else "paren"
        return template.format(question=p.sample.question, options=format_options(p.choices, style),
                               options_dot=format_options(p.choices, "dot"), **_choice_fields(p.choices))

    def prompt(self, p: Presentation) -> list[dict[str, Any]]:
        return self.user_message(p, self.render_prompt(p))

    def score(self, record: dict[str, Any]) -> dict[str, Any]:
        choices, gold = record["choices"], record["gold"]
        if record.get("error") is not None:
            ext_index, stage = None, "error"
        else:
            e = extract_choice(record.get("output"), choices)
            ext_index, stage = e.index, e.stage
        # withheld answers (e.g. MMAU test): extracted and exported, not scored
        correct = None if gold is None else float(ext_index is not None and choices[ext_index] == choices[gold])
        scores: dict[str, float | None] = {
            "accuracy": correct,
            "extraction_failure": float(stage in FAILURE_STAGES and stage != "error"),
        }
        if type(self).official is not None:
            scores["accuracy_official"] = type(self).official(record) if gold is not None else None
        return {"extracted": LETTERS[ext_index] if ext_index is not None else None,
                "extraction_stage": stage, "scores": scores}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        per_sample = collapse_rotations(records)
        specs = list(self.metric_specs)
        if type(self).official is not None:
            specs.insert(1, MetricSpec("accuracy_official"))
        metrics, groups = aggregate_scores(per_sample, specs, self.groupings)
        stages: dict[str, int] = defaultdict(int)
        for r in records:
            stages[r.get("extraction_stage") or "unscored"] += 1
        extra: dict[str, Any] = {"extraction_stages": dict(sorted(stages.items()))}
        if type(self).official is not None:
            extra["official_excluded"] = sum(r["scores"].get("accuracy_official") is None for r in per_sample)
        return {"metrics": metrics, "groups": groups, "extra": extra}


def _choice_fields(choices: list[str]) -> dict[str, str]:
    return {f"choice_{LETTERS[i].lower()}": c for i, c in enumerate(choices)}


class BuilderOptions(BaseModel):
    """A data builder's typed options; `evalkit data build NAME --field value` fills them (field
    descriptions are its --help). Every builder writes into `out`."""

    model_config = ConfigDict(extra="forbid")
    out: Path


class DataBuilder:
    """Builds a benchmark's data (clips and manifest) from its source corpora. Registered by name
    (`evalkit.registry` "builder" table or the `evalkit.builders` entry-point group), so
    `evalkit data build NAME ...` needs no CLI change for a new one."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[BuilderOptions]] = BuilderOptions

    def build(self, options: BuilderOptions, progress: bool = True) -> dict[str, Any]:
        """Build into `options.out` (resumable); returns a summary. Raises ValueError naming the
        file or option that stops it."""
        raise NotImplementedError
