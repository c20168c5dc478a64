"""MUGEN (Yang et al., 2026, arXiv:2603.09714): multi-audio understanding, 35 tasks in 7 dimensions over
speech, general audio and music; every question is a 5-way choice among candidate clips (audio as
option), ten tasks add a reference clip; accuracy falls as the number of candidates grows.

SOURCE (read 2026, from here): the release repository github.com/danielqwer/MUGEN at commit
6e6da9b4594676b5ab64f9d99de7d5e0968e5cbc (README.md, data/README.md: task list, per-row schema,
splits; evaluation/README.md and evaluation/llm_judge.py: the scoring protocol) and the hub dataset
cards of the organization MUGEN-Benchmark (formerly Multi-Audio-Grounding; the card YAML of e.g.
Noise_Environment_Classification, Gender_Classification, Genre_Classification lists the columns and
splits). What the release says, and what evalkit does with it:

- data: one hub dataset per task, `MUGEN-Benchmark/<Task>` (the 35 names in TASKS below, grouped in
  the paper's dimensions). Columns: `id` (not on every task; evalkit then uses the row index),
  `instruction`, `answer` (an option letter "(A)".."(E)"), `audio1`..`audio5` (the candidates;
  option (A) is audio1, (B) audio2, ...), `reference_audio` on the ten reference tasks, and
  task-specific columns (kept in metadata["upstream"], audio-free). NOT PINNED: the hub pages seen
  from here give only short commit ids; `-T revision=` pins every task, and the resolved sha of each
  is recorded in run.json (`task.source.tasks`).
- splits: `test`, `test_2`, `test_3`, `test_4` (50 rows each). `-T split=` picks one (default
  `test`) or `all` (the four). The cards' split sizes grow 2:3:4:5 (plus the reference clip), so
  `test_k` is read as the k-candidate version of the task and `test` as the 5-candidate one, the
  paper's input-scaling axis; evalkit does not rely on it: the candidates of a row are its non-null
  audio1.. columns (contiguous from audio1, at least two), and `n_clips` groups by their count.
- scoring upstream: an LLM judge (claude-haiku-4-5-20251001, temperature 0) decides whether the
  response selects exactly the gold option, accepting a letter "(B)", "Audio 2" or an ordinal ("the
  second clip"); none, several or hedging is wrong. evalkit scores without a judge: the options are
  presented as "(A) Audio 1" ... so a letter or the text "Audio k" is read by the protocol's
  extraction, several options are `ambiguous` (wrong), and ordinals are not read (counted in
  `extraction_failure`). So evalkit's `accuracy` is not the official figure.
- prompt: the release does not publish its inference prompt (only the judge). evalkit sends, in
  order, "Reference audio:" + the reference clip (reference tasks), then "Audio k:" + candidate k
  for each candidate, then the prompt text: `-T prompt=default` is the instruction followed by the
  lettered options and "Answer with the letter..."; `-T prompt=instruction` is the row's
  instruction alone.

Audio permutation (the paper's Audio-Permutational Self-Consistency, `--strategy audio-permutation`):
each sample's metadata["option_clips"] says which clip of `audio` option i names (option (A) names
the first candidate, which sits after the reference clip when there is one); the strategy reorders
the candidates only (the reference keeps its place), sends each order and maps each answer back.

Local data: `-T data=DIR` with `DIR/<Task>/<split>.jsonl` (or `.json`), records in the hub columns'
form with the audio columns as paths relative to `DIR/<Task>` (`-T audio_root=ROOT` resolves them
under `ROOT/<Task>`). `-T tasks=A,B` selects tasks (default: all 35). Groupings: `n_clips`,
`dimension`, `task`, `split`, `reference`. Adapters without `multi_audio` are refused before any work.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from evalkit.tasks.base import HubTaskOptions, LoadedData, MCQTask, TaskDataError, format_options
from evalkit.tasks.loaders import local_audio, local_task_rows, without_nonfinite
from evalkit.types import Presentation, Sample

HUB_ORG = "MUGEN-Benchmark"
# NOT PINNED: see the module docstring; the resolved sha of each task is recorded in LoadedData.source.
HUB_REVISION = "main"
SPLITS = ("test", "test_2", "test_3", "test_4")
N_CANDIDATES = 5
RELEASE = "github.com/danielqwer/MUGEN@6e6da9b4594676b5ab64f9d99de7d5e0968e5cbc"

#: the 35 hub dataset names by dimension (data/README.md of the release)
DIMENSIONS: dict[str, tuple[str, ...]] = {
    "Semantics & Pragmatics": ("Keyword_Spotting", "Intent_Classification", "Language_Identification"),
    "Speaker & Demographics": ("Speaker_Verification", "Gender_Classification", "Accent_Identification",
                               "Dysarthria_Detection"),
    "Affective & Paralinguistic State": ("Emotion_Recognition", "Emotion_Intensity_Comparison",
                                         "Pitch_Level_Distinction", "Vocal_Effort_Recognition", "Vocal_Fry_Detection",
                                         "Disfluency_Detection", "Prosodic_Stress_Matching",
                                         "Prosody_Semantic_Mismatch"),
    "Temporal Awareness": ("Duration_Extremes_Extraction", "Duration_Ordinal_Selection", "Duration_Precise_Selection",
                           "Speaking_Rate_Extremes", "Ordinal_Speaking_Rate"),
    "Acoustic Scene & Event Analysis": ("Noise_Environment_Classification", "Interruption_Detection",
                                        "Speech_Concurrent_Event_Detection", "Cocktail_Party_Extraction",
                                        "Signal_to_Noise_Comparison"),
    "Music Analysis": ("Music_Tagging", "Genre_Classification", "Key_Detection", "Instrument_Classification",
                       "Vocal_Technique_Detection"),
    "Compositional Acoustic Reasoning": ("Gender_Emotion_Filtering", "Accent_Tempo_Filtering",
                                         "Specific_Speaker_State", "Negative_Constraint_Filtering",
                                         "Max_Attribute_Selection"),
}
TASKS: dict[str, str] = {t: dim for dim, names in DIMENSIONS.items() for t in names}
#: the ten tasks whose rows carry a reference_audio (data/README.md)
REFERENCE_TASKS = frozenset({
    "Accent_Identification", "Emotion_Recognition", "Gender_Classification", "Intent_Classification",
    "Language_Identification", "Noise_Environment_Classification", "Speaker_Verification", "Specific_Speaker_State",
    "Speech_Concurrent_Event_Detection", "Vocal_Effort_Recognition"})

REFERENCE_INTRO = "Reference audio:"
CLIP_INTRO = "Audio {k}:"
PROMPTS = {"default": "{question}\n\nOptions:\n{options}\n\nAnswer with the letter of the correct option.",
           "instruction": "{question}"}
_ANSWER = re.compile(r"^\(?\s*([A-Z])\s*\)?$")


class MugenOptions(HubTaskOptions):
    tasks: str | None = None
    split: str = "test"


class Mugen(MCQTask):
    name = "mugen"
    version = "2"
    description = "MUGEN: 35 multi-audio tasks, 5-way choice among candidate clips; accuracy by number of clips"
    source = (f"hf:{HUB_ORG}/<Task>@{HUB_REVISION} (NOT PINNED), splits test|test_2|test_3|test_4, or "
              f"-T data=DIR; format from {RELEASE}")
    Options = MugenOptions
    groupings = ("n_clips", "dimension", "task", "split", "reference")
    prompts = PROMPTS
    #: the runner refuses adapters lacking these before any work (several clips per request)
    required_capabilities: ClassVar[frozenset[str]] = frozenset({"audio", "multi_audio"})

    def __init__(self, options: MugenOptions | None = None):
        super().__init__(options)
        if self.options.tasks:
            names = list(dict.fromkeys(t.strip() for t in self.options.tasks.split(",") if t.strip()))
        else:
            names = list(TASKS)
        unknown = [n for n in names if n not in TASKS]
        if unknown or not names:
            raise TaskDataError(f"mugen: unknown task(s) {', '.join(unknown) or '(none given)'}; MUGEN's tasks: "
                                f"{', '.join(TASKS)}")
        if self.options.split != "all" and self.options.split not in SPLITS:
            raise TaskDataError(f"mugen: -T split={self.options.split}: use one of {', '.join(SPLITS)} or all")
        self.names = names
        self.splits = list(SPLITS) if self.options.split == "all" else [self.options.split]

    def load(self) -> LoadedData:
        samples: list[Sample] = []
        sources: dict[str, Any] = {}
        hashes: list[str] = []
        warnings: list[str] = []
        seen: set[str] = set()
        for task in self.names:
            for split in self.splits:
                rows, where, source, data_hash, root = self._rows(task, split)
                sources[f"{task}/{split}"] = source
                hashes.append(data_hash)
                for i, rec in enumerate(rows):
                    s = _sample(task, split, rec, i, where, root, warnings)
                    if s is None:
                        continue
                    if s.id in seen:
                        raise TaskDataError(f"{where}: record {i}: duplicate id {s.id!r}")
                    seen.add(s.id)
                    samples.append(s)
        source = {"kind": "local" if self.options.data else "hub", "tasks": sources, "release": RELEASE}
        if self.options.data:
            source["path"] = str(Path(self.options.data).expanduser())
        return LoadedData(samples=samples, source=source, data_hash="|".join(hashes), warnings=warnings)

    def _rows(self, task: str, split: str):
        if self.options.data:
            return local_task_rows(self.options.data, self.options.audio_root, task,
                                   (f"{split}.jsonl", f"{split}.json"), "mugen")
        from evalkit.hub import hub_data_hash, hub_source, load_hub_rows

        repo = f"{HUB_ORG}/{task}"
        revision = self.options.revision or HUB_REVISION
        rows = load_hub_rows(repo, revision, split)
        return (rows, f"hf:{repo}@{revision}:{split}", hub_source(repo, revision, split),
                hub_data_hash(rows, repo, revision) + f":{split}", None)

    def prompt(self, p: Presentation) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        offset = 1 if p.sample.metadata.get("reference") else 0
        for j, a in enumerate(p.sample.audio):
            intro = REFERENCE_INTRO if j < offset else CLIP_INTRO.format(k=j + 1 - offset)
            content.append({"type": "text", "text": intro})
            content.append({"type": "audio", "audio": a})
        text = self.prompts[self.options.prompt].format(question=p.sample.question,
                                                        options=format_options(p.choices))
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]


def _sample(task: str, split: str, rec: Any, i: int, where: str, root: Path | None,
            warnings: list[str]) -> Sample | None:
    if not isinstance(rec, dict):
        raise TaskDataError(f"{where}: record {i} is a {type(rec).__name__}, not an object")
    rec = without_nonfinite(dict(rec))
    rid = rec.get("id")
    rid = str(i) if rid is None or str(rid).strip() == "" else str(rid)
    label = f"record {i} (id {rid!r})"
    sid = f"{task}/{split}/{rid}"
    instruction = rec.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise TaskDataError(f"{where}: {label}: missing field 'instruction'")
    present = [rec.get(f"audio{k}") is not None for k in range(1, N_CANDIDATES + 1)]
    n = sum(present)
    if n < 2 or present != [True] * n + [False] * (N_CANDIDATES - n):
        have = [f"audio{k}" for k, p in enumerate(present, 1) if p]
        raise TaskDataError(f"{where}: {label}: the candidates must be audio1..audioN (N >= 2, contiguous); "
                            f"the row has {', '.join(have) or 'none'}")
    answer = rec.get("answer")
    m = _ANSWER.match(str(answer).strip()) if answer is not None else None
    if m is None:
        raise TaskDataError(f"{where}: {label}: field 'answer' must be an option letter like '(B)'; got {answer!r}")
    gold = ord(m.group(1)) - ord("A")
    if gold >= n:
        warnings.append(f"{where}: {label}: answer {answer!r} names no candidate (the row has {n}); item skipped")
        return None
    fields = (["reference_audio"] if rec.get("reference_audio") is not None else []) + \
        [f"audio{k}" for k in range(1, n + 1)]
    audio = [_audio(rec[f], f, sid, where, label, root) for f in fields]
    reference = len(fields) > n
    upstream = {k: v for k, v in rec.items()
                if k not in ("instruction", "answer", "reference_audio") and not re.fullmatch(r"audio\d+", k)
                and (v is None or isinstance(v, (str, int, float, bool)))}
    return Sample(id=sid, question=instruction, audio=audio, choices=[f"Audio {k}" for k in range(1, n + 1)],
                  answer=gold, group=sid,
                  metadata={"task": task, "dimension": TASKS[task], "split": split, "n_clips": n,
                            "reference": reference, "option_clips": [k + int(reference) for k in range(n)],
                            "upstream_answer": str(answer).strip(), "upstream": upstream})


def _audio(value: Any, field: str, sid: str, where: str, label: str, root: Path | None):
    name = f"{sid}#{'reference' if field == 'reference_audio' else field}"
    if root is not None:  # local: a path under the task folder
        if not isinstance(value, str):
            raise TaskDataError(f"{where}: {label}: field {field!r} must be a relative audio path")
        ref = local_audio(root, value, where, label, field)
        ref.label = f"{name}:{value}"
        return ref
    from evalkit.hub import audio_from_hub

    try:
        return audio_from_hub(value, label=name)
    except ValueError as e:
        raise TaskDataError(f"{where}: {label}: field {field!r}: {e}") from None
