"""Dynamic-SUPERB Phase-2 (Huang et al., ICLR 2025): 180 instruction-based tasks over speech,
music and environmental audio, one hub dataset per task.

`-T tasks=NAME,...` (e.g. `SpoofDetection_ASVspoof2017`) or `-T family=PREFIX` (every catalog task
whose name starts with `PREFIX_`, e.g. `family=EmotionRecognition`) selects tasks.

Data, per task, either:
- the hub: `DynamicSuperb/<NAME>`, split "test", columns `file`, `audio`, optional `audio2`
  (a second clip, e.g. speaker verification; catalog "clips": 2), `instruction`, `label` (checked against the
  dataset cards of DynamicSuperb/SuperbSV_SuperbHiddenSet and DynamicSuperb/SpokenDigitArithmetic_AudioMNIST).
  Some tasks name their clips otherwise (SuperbSV_VoxCeleb1-Test: `enrollment`/`testing`); those fail with
  the missing field named. Revisions: PINNED to the dataset commit the task list gives (176 of 259 tasks);
  the others (the Phase-1 tasks among them) are NOT PINNED and load "main". `-T revision=` overrides every
  task's pin; the resolved sha of each is recorded in run.json (`task.source.tasks`).
- local: `-T data=DIR` with `DIR/<NAME>/metadata.jsonl` (or `.json`): records {file, instruction,
  label, optional audio2} in the hub columns' form, audio at `DIR/<NAME>/<file>` (`audio_root`
  overrides DIR).

The hub rows do not say how a task is scored, so each task needs a catalog entry
{"type", "metric", "domain"}. The catalog is `tasks/dynamic_superb_catalog.json`, generated from the
Phase-2 task list DynamicSUPERB_ConfirmedTasks.csv (github.com/figisiwirf/dynamic-superb-utils at
e05554c58f45b933c0213024e820497ca567d0ae; its SOURCE entry says what the file is and how its columns were
mapped): the list's Category gives the type (154 Classification -> classification/accuracy, 9 Regression ->
regression/mae, MAE being evalkit's choice since the list names no metric; 91 "Text generation" and 5
speech/audio generation tasks are refused, as the list names no metric for them), its Speech/Music/Audio flags
the domain ("unspecified" where none is set), its Version the pinned revision. BUILTIN_CATALOG below adds
SuperbSV_SuperbHiddenSet (not in the list; a two-clip yes/no task by its dataset card) and the domain of the
three Phase-1 tasks evalkit's tests name (the list sets no flag for them; evalkit's reading of the names).
A user file `-T catalog=FILE` (a JSON object keyed by task name) overrides both. The official repository
dynamic-superb/dynamic-superb (per-task READMEs with their metrics) could not be fetched from here.

What evalkit scores (SCORED) and refuses (REFUSED), decided before any data loads:
- classification / accuracy: the response must name exactly one of the task's labels (the
  distinct `label` values of its rows): the whole normalized response equal to a label
  (`label_exact`), else exactly one label found as whole words (`label_mention`; a label inside
  a longer found label drops out). None found is `none`, several `ambiguous`: wrong and counted
  in `extraction_failure`; never a guess. Upstream maps responses to labels with an LLM
  (GPT-4o), so evalkit's figure is stricter and not the official one.
- regression / mae: exactly one number in the response (several different numbers fail as
  `ambiguous`); mean absolute error over the parsed responses, the parse failures reported
  beside it as `extraction_failure` (an MAE never includes a failure).
- sequence / wer, cer: corpus WER/CER (sum of edits / sum of reference length) after the
  Whisper English normalizer, jiwer alignment; CI by the cluster bootstrap of the ratio.
- refused: type "judge" (LLM-judge-only tasks: captioning, open QA) until evalkit has a judge,
  "generation" (the list's text-generation tasks: no metric named; a transcription task can be scored by
  passing -T catalog=FILE with {"type": "sequence", "metric": "wer"}), "audio_generation" (audio output),
  and any other metric (BLEU, F1, EER, ...) until implemented; the message names the task.

Results per task, per domain (speech / music / audio) and per type (`groups`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from evalkit.protocol.extract import normalize_text
from evalkit.results.metrics import MetricSpec, aggregate_scores
from evalkit.tasks.base import HubTaskOptions, LoadedData, Task, TaskDataError
from evalkit.tasks.loaders import (
    get_field,
    local_audio,
    local_task_rows,
    ratio_with_ci,
    transcript_error_parts,
    without_nonfinite,
)
from evalkit.types import Presentation, Sample

HUB_ORG = "DynamicSuperb"
# for tasks the catalog gives no revision (NOT PINNED); the resolved sha of each task is recorded in LoadedData.source
HUB_REVISION = "main"
CATALOG_FILE = Path(__file__).with_name("dynamic_superb_catalog.json")
TASK_LIST = ("DynamicSUPERB_ConfirmedTasks.csv, github.com/figisiwirf/dynamic-superb-utils@"
             "e05554c58f45b933c0213024e820497ca567d0ae")
HUB_SPLIT = "test"

#: (type, metric) pairs evalkit scores
SCORED: dict[str, tuple[str, ...]] = {"classification": ("accuracy",), "regression": ("mae",),
                                      "sequence": ("wer", "cer")}
#: types evalkit refuses, with why
REFUSED: dict[str, str] = {
    "judge": "is scored by an LLM judge upstream, and evalkit has no judge yet",
    "generation": ("is a text-generation task in the Phase-2 task list, which names no metric for it (upstream "
                   "uses WER, BLEU or an LLM judge by task); if it is a transcription task pass -T catalog=FILE "
                   "with {\"NAME\": {\"type\": \"sequence\", \"metric\": \"wer\", \"domain\": \"speech\"}}"),
    "audio_generation": "asks for audio output, which evalkit does not score",
}
DOMAINS = ("speech", "music", "audio", "unspecified")

#: on top of the generated catalog: a task the list lacks, and the domain of three Phase-1 tasks (no flag in the list)
BUILTIN_CATALOG: dict[str, dict[str, Any]] = {
    "SpoofDetection_ASVspoof2017": {"type": "classification", "metric": "accuracy", "domain": "speech"},
    "SpeechCommandRecognition_GoogleSpeechCommandsV1": {"type": "classification", "metric": "accuracy",
                                                        "domain": "speech"},
    "ChordClassification_AcousticGuitarAndPiano": {"type": "classification", "metric": "accuracy",
                                                   "domain": "music"},
    "SuperbSV_SuperbHiddenSet": {"type": "classification", "metric": "accuracy", "domain": "speech", "clips": 2},
}


def generated_catalog() -> dict[str, dict[str, Any]]:
    """The catalog generated from the Phase-2 task list (see the module docstring), keyed by hub name."""
    return json.loads(CATALOG_FILE.read_text(encoding="utf-8"))["tasks"]

FAILURES = frozenset({"empty", "none", "ambiguous", "error"})
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?!\w)")  # not inside words ("mp3", "3rd")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


class DynamicSuperbOptions(HubTaskOptions):
    tasks: str | None = None
    family: str | None = None
    catalog: str | None = None


def check_entry(name: str, entry: Any, where: str) -> dict[str, str]:
    """A catalog entry, refused with a message naming the task when evalkit cannot score it."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("type", "metric", "domain")):
        raise TaskDataError(f"{where}: task {name!r}: an entry needs string fields type, metric, domain; got {entry!r}")
    kind, metric, domain = entry["type"], entry["metric"], entry["domain"]
    if kind in REFUSED:
        raise TaskDataError(f"dynamic-superb: task {name!r} (type {kind!r}) {REFUSED[kind]}; leave it out of -T tasks")
    if kind not in SCORED:
        raise TaskDataError(f"{where}: task {name!r}: unknown type {kind!r}; evalkit scores "
                            f"{', '.join(SCORED)} and refuses {', '.join(REFUSED)}")
    if metric not in SCORED[kind]:
        raise TaskDataError(f"dynamic-superb: task {name!r}: metric {metric!r} for type {kind!r} is not implemented "
                            f"(evalkit scores {kind} by {', '.join(SCORED[kind])})")
    if domain not in DOMAINS:
        raise TaskDataError(f"{where}: task {name!r}: domain {domain!r}; use one of {', '.join(DOMAINS)}")
    clips = entry.get("clips", 1)
    if clips not in (1, 2) or isinstance(clips, bool):
        raise TaskDataError(f"{where}: task {name!r}: clips {clips!r}; use 1 (audio) or 2 (audio and audio2)")
    revision = entry.get("revision")
    if revision is not None and not isinstance(revision, str):
        raise TaskDataError(f"{where}: task {name!r}: revision {revision!r} must be a string (a commit sha)")
    return {"type": kind, "metric": metric, "domain": domain, "clips": clips, "revision": revision}


class DynamicSuperb(Task):
    name = "dynamic-superb"
    version = "1"
    description = "Dynamic-SUPERB Phase-2: instruction tasks (classification, regression, sequence) by -T tasks="
    source = (f"hf:{HUB_ORG}/<task>@<the task list's commit> (176 of 259 pinned, the rest @main, NOT PINNED) or "
              f"-T data=DIR; catalog from {TASK_LIST}; -T tasks=NAME,... or -T family=")
    Options = DynamicSuperbOptions
    metric_specs = (MetricSpec("accuracy"), MetricSpec("extraction_failure", higher_is_better=False),
                    MetricSpec("mae", higher_is_better=False, scale=1.0))
    groupings = ("task", "domain", "type")

    def __init__(self, options: DynamicSuperbOptions | None = None):
        super().__init__(options)
        catalog = generated_catalog()
        for name, extra in BUILTIN_CATALOG.items():
            catalog[name] = {**catalog.get(name, {}), **extra}
        where = f"dynamic-superb catalog ({CATALOG_FILE.name})"
        if self.options.catalog:
            path = Path(self.options.catalog).expanduser()
            try:
                user = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise TaskDataError(f"-T catalog={path}: cannot read it as JSON: {e}") from None
            if not isinstance(user, dict):
                raise TaskDataError(f"-T catalog={path}: expected a JSON object keyed by task name")
            catalog.update(user)
            where = str(path)
        if bool(self.options.tasks) == bool(self.options.family):
            raise TaskDataError("dynamic-superb: pass exactly one of -T tasks=NAME,... or -T family=PREFIX")
        if self.options.tasks:
            names = list(dict.fromkeys(t.strip() for t in self.options.tasks.split(",") if t.strip()))
        else:
            family = sorted(n for n in catalog if n.startswith(f"{self.options.family}_"))
            if not family:
                raise TaskDataError(f"dynamic-superb: -T family={self.options.family}: no catalog task is named "
                                    f"'{self.options.family}_...'; catalog tasks: {', '.join(sorted(catalog))}")
            # a family keeps the tasks evalkit scores; naming a refused task in -T tasks= says why it is refused
            names = [n for n in family if isinstance(catalog[n], dict) and catalog[n].get("type") in SCORED]
            if not names:
                raise TaskDataError(f"dynamic-superb: -T family={self.options.family}: evalkit scores none of "
                                    f"{', '.join(family)} (types: {', '.join(sorted({str(catalog[n].get('type')) for n in family if isinstance(catalog[n], dict)}))})")
        unknown = [n for n in names if n not in catalog]
        if unknown:
            raise TaskDataError(f"dynamic-superb: no catalog entry for {', '.join(unknown)}: evalkit cannot tell how to "
                                "score it; pass -T catalog=FILE with {\"NAME\": {\"type\": \"classification\", "
                                "\"metric\": \"accuracy\", \"domain\": \"speech\"}}")
        self.entries = {n: check_entry(n, catalog[n], where) for n in names}
        # two-clip tasks (audio + audio2) need an adapter taking several clips per request
        self.required_capabilities = frozenset({"audio"} | ({"multi_audio"} if any(
            e["clips"] == 2 for e in self.entries.values()) else set()))

    # ---- loading
    def load(self) -> LoadedData:
        samples: list[Sample] = []
        sources: dict[str, Any] = {}
        hashes: list[str] = []
        for task_name, entry in self.entries.items():
            rows, where, source, data_hash, root = self._rows(task_name)
            sources[task_name] = source
            hashes.append(data_hash)
            samples += self._samples(task_name, entry, rows, where, root)
        kind = "local" if self.options.data else "hub"
        source = {"kind": kind, "tasks": sources, "catalog": self.entries}
        if self.options.data:
            source["path"] = str(Path(self.options.data).expanduser())
        return LoadedData(samples=samples, source=source, data_hash="|".join(hashes))

    def _rows(self, task_name: str):
        if self.options.data:
            return local_task_rows(self.options.data, self.options.audio_root, task_name,
                                   ("metadata.jsonl", "metadata.json"), "dynamic-superb")
        from evalkit.hub import hub_data_hash, hub_source, load_hub_rows

        repo = f"{HUB_ORG}/{task_name}"
        revision = self.options.revision or self.entries[task_name]["revision"] or HUB_REVISION
        rows = load_hub_rows(repo, revision, HUB_SPLIT)
        return ([without_nonfinite(dict(r)) for r in rows], f"hf:{repo}@{revision}",
                hub_source(repo, revision, HUB_SPLIT), hub_data_hash(rows, repo, revision), None)

    def _samples(self, task_name: str, entry: dict[str, str], rows: list[Any], where: str,
                 root: Path | None) -> list[Sample]:
        kind = entry["type"]
        out: list[Sample] = []
        parsed = []
        for i, rec in enumerate(rows):
            label = get_field(rec, "label", where, i, (str, int, float))
            instruction = get_field(rec, "instruction", where, i)
            file = str(get_field(rec, "file", where, i, (str, int)))
            if kind == "regression":
                try:
                    label = float(label)
                except ValueError:
                    raise TaskDataError(f"{where}: record {i} (file {file!r}): regression label {label!r} "
                                        "is not a number") from None
            else:
                label = str(label).strip()
            parsed.append((i, rec, file, instruction, label))
        labels = sorted({p[4] for p in parsed}) if kind == "classification" else None
        seen: set[str] = set()
        for i, rec, file, instruction, label in parsed:
            sid = f"{task_name}/{file}"
            if sid in seen:
                raise TaskDataError(f"{where}: record {i}: duplicate file {file!r}")
            seen.add(sid)
            audio = [self._audio(rec, "audio", file, where, i, root)]
            if (rec.get("audio2") is not None) != (entry["clips"] == 2):
                raise TaskDataError(f"{where}: record {i} (file {file!r}): the catalog says {entry['clips']} clip(s) "
                                    f"for {task_name} but the record {'has' if rec.get('audio2') is not None else 'lacks'}"
                                    " an audio2 field; fix the catalog entry's \"clips\"")
            if entry["clips"] == 2:
                audio.append(self._audio(rec, "audio2", None, where, i, root))
            target: dict[str, Any] = {"type": kind, "metric": entry["metric"], "label": label}
            if labels is not None:
                target["labels"] = labels
            out.append(Sample(id=sid, question=instruction, audio=audio, target=target, group=sid,
                              metadata={"task": task_name, "domain": entry["domain"], "type": kind,
                                        "file": file}))
        return out

    def _audio(self, rec: dict, field: str, file: str | None, where: str, i: int, root: Path | None):
        value = rec.get(field)
        label = f"record {i} (file {rec.get('file')!r})"
        if root is not None:  # local: the audio field (or the file name) is a path under the task folder
            rel = value if isinstance(value, str) else file
            if not isinstance(rel, str):
                raise TaskDataError(f"{where}: {label}: field {field!r} must be a relative audio path")
            return local_audio(root, rel, where, label, field)
        from evalkit.hub import audio_from_hub

        if value is None:
            raise TaskDataError(f"{where}: {label}: missing field {field!r}")
        try:
            return audio_from_hub(value, label=f"{where}#{rec.get('file')}:{field}")
        except ValueError as e:
            raise TaskDataError(f"{where}: {label}: field {field!r}: {e}") from None

    # ---- prompt and scoring
    def prompt(self, p: Presentation) -> list[dict[str, Any]]:
        return self.user_message(p, p.sample.question)

    def score(self, record: dict[str, Any]) -> dict[str, Any]:
        target = record["target"]
        kind = target["type"]
        scores: dict[str, float | None] = {"accuracy": None, "extraction_failure": None, "mae": None}
        if record.get("error") is not None:
            stage, extracted = "error", None
        else:
            stage, extracted = None, None
        output = record.get("output")
        if kind == "classification":
            if stage is None:
                extracted, stage = match_label(output, target["labels"])
            scores["accuracy"] = float(extracted is not None and extracted == target["label"])
            scores["extraction_failure"] = float(stage in FAILURES and stage != "error")
        elif kind == "regression":
            if stage is None:
                extracted, stage = parse_number(output)
            scores["mae"] = abs(extracted - float(target["label"])) if extracted is not None else None
            scores["extraction_failure"] = float(stage in FAILURES and stage != "error")
        else:
            unit = "word" if target["metric"] == "wer" else "char"
            parts = transcript_error_parts(str(target["label"]), output if stage is None else "", unit)
            if stage is None:
                stage = "transcript"
            scores["edits"], scores["ref_len"] = (None, None) if parts is None else (float(parts[0]), float(parts[1]))
        return {"extracted": extracted, "extraction_stage": stage, "scores": scores}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        metrics, groups = aggregate_scores(records, self.metric_specs, self.groupings)
        for name, unit_metric in (("wer", "wer"), ("cer", "cer")):
            chosen = [r for r in records if r["target"].get("metric") == unit_metric
                      and r["scores"].get("edits") is not None]
            if not chosen:
                continue
            metrics[name] = _ratio(chosen)
            for g in self.groupings:
                for key in sorted({str(r["metadata"].get(g)) for r in chosen}):
                    cell = [r for r in chosen if str(r["metadata"].get(g)) == key]
                    groups.setdefault(g, {}).setdefault(key, {})[name] = _ratio(cell)
        return {"metrics": metrics, "groups": groups,
                "extra": {"scored_types": {k: list(v) for k, v in SCORED.items()}, "refused_types": dict(REFUSED)}}


def _ratio(records: list[dict[str, Any]]) -> dict[str, Any]:
    return ratio_with_ci([r["scores"]["edits"] for r in records], [r["scores"]["ref_len"] for r in records],
                         [r["cluster"] for r in records])


def match_label(response: str | None, labels: list[str]) -> tuple[str | None, str]:
    """(label, stage): the one label the response names, or (None, failure stage). Never a guess."""
    if response is None or not response.strip():
        return None, "empty"
    text = normalize_text(response.replace("*", ""))
    norm = {lab: normalize_text(lab) for lab in labels}
    exact = [lab for lab, n in norm.items() if n == text]
    if exact:
        return exact[0], "label_exact"
    found = [lab for lab, n in norm.items() if n and re.search(rf"(?<!\w){re.escape(n)}(?!\w)", text)]
    found = [a for a in found
             if not any(b != a and re.search(rf"(?<!\w){re.escape(norm[a])}(?!\w)", norm[b]) for b in found)]
    if len(found) == 1:
        return found[0], "label_mention"
    return None, ("ambiguous" if found else "none")


def parse_number(response: str | None) -> tuple[float | None, str]:
    """(value, stage): the one number in the response (repeats of the same value allowed)."""
    if response is None or not response.strip():
        return None, "empty"
    values = {float(m) for m in _NUMBER.findall(_THOUSANDS.sub("", response))}
    if len(values) == 1:
        return values.pop(), "number"
    return None, ("ambiguous" if values else "none")
