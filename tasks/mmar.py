"""MMAR (ddlBoJack/MMAR): 1000 audio MCQs on deep reasoning across sound,
music, speech and their mixes, in four layers (Signal, Perception,
Semantic, Cultural).

Data, either:
- local: `-T data=MMAR-meta.json` (a JSON list, the HF/v1 release) or
  `-T data=MMAR-meta.jsonl` (the current GitHub file, with thinking/cue/rubric);
  audio at `audio_root / audio_path` ("./audio/<id>.wav"; audio_root defaults
  to the data file's folder: extract `mmar-audio.tar.gz` there);
- the hub: `BoJack/MMAR` split "test" (metadata rows; the audio is the
  `mmar-audio.tar.gz` archive in the same repo, so `-T audio_root=DIR` is required).

Items whose answer is not among the choices are skipped with a loader warning
naming the id and the answer. The v1 JSON has six such items against the
jsonl: three answers that paraphrase or truncate a choice, two multi-line
answers listing several choices (multi-answer items cannot be scored as
single choice; reported separately), and one ("2040" vs the choice "2040 ")
that matches once surrounding spaces are stripped from choices and answer,
which evalkit does.

Official scorer: the same token-set rule as MMAU (`code/evaluation.py`); the
current MMAR script reads the prediction from `answer_prediction` (the May-2025
script read `model_prediction`); evalkit feeds it the record's raw `output`.
MMAR's GPT-4o rubric score (`evaluation_rubrics.py`) is not reproduced.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.tasks.base import (
    HubTaskOptions,
    LoadedData,
    MCQTask,
    TaskDataError,
    hash_files,
)
from evalkit.tasks.loaders import (
    get_choices,
    get_field,
    gold_index,
    local_audio,
    read_json_records,
    record_name,
    without_nonfinite,
)
from evalkit.tasks.official import mmau_official
from evalkit.types import Sample

HUB_REPO = "BoJack/MMAR"
# NOT PINNED: no commit sha for BoJack/MMAR could be looked up offline. Pin it;
# until then the resolved sha is recorded in LoadedData.source.
HUB_REVISION = "main"
HUB_SPLIT = "test"

AXIS = {"Signal Layer": "perception", "Perception Layer": "perception",
        "Semantic Layer": "reasoning", "Cultural Layer": "reasoning"}


class MMAR(MCQTask):
    name = "mmar"
    version = "1"
    description = "MMAR: 1000 audio reasoning MCQs (sound, music, speech, mixes) in four layers"
    source = f"hf:{HUB_REPO}@{HUB_REVISION} (+ mmar-audio.tar.gz) or -T data=MMAR-meta.jsonl (github ddlBoJack/MMAR)"
    Options = HubTaskOptions
    groupings = ("modality", "category", "sub-category", "language", "axis")
    official = mmau_official

    def load(self) -> LoadedData:
        if self.options.data:
            path = Path(self.options.data).expanduser()
            items = read_json_records(path)
            root = Path(self.options.audio_root).expanduser() if self.options.audio_root else path.parent
            samples, warnings = self._samples(items, str(path), root)
            return LoadedData(samples=samples, data_hash=hash_files([path]), warnings=warnings,
                              source={"kind": "local", "path": str(path), "audio_root": str(root)})
        from evalkit.hub import hub_data_hash, hub_source, load_hub_rows

        revision = self.options.revision or HUB_REVISION
        if not self.options.audio_root:
            raise TaskDataError(
                f"mmar: the hub rows of {HUB_REPO} carry audio paths only; download and extract "
                f"mmar-audio.tar.gz from {HUB_REPO} and pass -T audio_root=DIR (the folder holding audio/), "
                f"or pass -T data=MMAR-meta.json -T audio_root=DIR")
        rows = load_hub_rows(HUB_REPO, revision, HUB_SPLIT)
        samples, warnings = self._samples([without_nonfinite(dict(r)) for r in rows], f"hf:{HUB_REPO}@{revision}",
                                          Path(self.options.audio_root).expanduser())
        return LoadedData(samples=samples, source=hub_source(HUB_REPO, revision, HUB_SPLIT),
                          data_hash=hub_data_hash(rows, HUB_REPO, revision), warnings=warnings)

    def _samples(self, items: list[Any], where: str, root: Path) -> tuple[list[Sample], list[str]]:
        samples: list[Sample] = []
        warnings: list[str] = []
        seen: set[str] = set()
        for i, rec in enumerate(items):
            rid = str(get_field(rec, "id", where, i, (str, int)))
            label = record_name(rec, i)
            question = get_field(rec, "question", where, i)
            choices = get_choices(rec, "choices", where, i)
            answer_text = str(get_field(rec, "answer", where, i, (str, int, float)))
            gold = gold_index(choices, answer_text)
            if gold is None:
                lines = [x.strip() for x in answer_text.splitlines() if x.strip()]
                if len(lines) > 1 and all(gold_index(choices, x) is not None for x in lines):
                    warnings.append(f"{where}: id {rid}: answer {answer_text!r} names several choices "
                                    f"(multi-answer item); cannot be scored as single choice, item skipped")
                else:
                    warnings.append(f"{where}: id {rid}: answer {answer_text!r} is not among the choices "
                                    f"{choices}; item skipped")
                continue
            if rid in seen:
                raise TaskDataError(f"{where}: {label}: duplicate id {rid!r}")
            seen.add(rid)
            audio = local_audio(root, get_field(rec, "audio_path", where, i), where, label, "audio_path")
            category = rec.get("category")
            samples.append(Sample(
                id=rid, question=question, audio=[audio], choices=choices, answer=gold,
                metadata={
                    "modality": rec.get("modality"),
                    "category": category,
                    "sub-category": rec.get("sub-category"),
                    "language": rec.get("language"),
                    "axis": AXIS.get(category) if isinstance(category, str) else None,
                    "source": rec.get("source"),
                }))
        return samples, warnings
