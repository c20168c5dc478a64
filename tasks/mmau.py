"""MMAU (Sakshi et al., ICLR 2025): audio MCQ over sound, music and speech.

Data, either:
- local upstream JSON (GitHub Sakshi113/MMAU `mmau-test-mini.json`, or
  `mmau-test.json` for `split=test`): `-T data=path/to/mmau-test-mini.json`;
  audio at `audio_root / audio_id` (audio_id looks like
  "./test-mini-audios/<id>.wav"; audio_root defaults to the JSON's folder);
- the hub: `gamma-lab-umd/MMAU-test-mini` (split "test": audio embedded in
  `context`, question in `instruction`, choices/answer with "(A) " prefixes,
  metadata in the `other_attributes` JSON string), or `gamma-lab-umd/MMAU-test`.
  Hub rows are normalized to the GitHub JSON form (prefixes stripped), so the
  official scorer sees the same text either way.

Normalization: 13 test-mini items give `category` as a one-element list
(["Reasoning"]) -> the plain string. 27 items have duplicate choice strings:
the gold is the index of the FIRST choice equal to the answer text, and
scoring compares choice texts, so duplicates are indistinguishable, never a
penalty. An answer that is not among the choices is a loader warning and the
item is skipped (never silently scored).

`split=test`: answers are withheld upstream; samples carry choices but no
answer (presented in the upstream order, not scored) and `export` writes the
submission file. `export` also works for test-mini, so the official
`evaluation.py` can be run on evalkit's outputs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from evalkit.audio import UnsafePathError
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
    loads_json,
    local_audio,
    metadata_value,
    read_json_records,
    record_name,
    without_nonfinite,
)
from evalkit.tasks.official import mmau_official
from evalkit.types import Sample

HUB_REPOS = {"test-mini": "gamma-lab-umd/MMAU-test-mini", "test": "gamma-lab-umd/MMAU-test"}
# MMAU-v05.15.25 test-mini parquet. Sha taken from two independent public
# projects that pin it (no network here to re-check); matches the GitHub JSON
# version stored in shared/data/mmau.
HUB_REVISIONS = {
    "test-mini": "ccd9696c0111ea7060827598f310558df0b71b0a",
    # NOT PINNED: no commit sha for gamma-lab-umd/MMAU-test could be looked up
    # offline. Pin it; until then the resolved sha is recorded in LoadedData.source.
    "test": "main",
}
HUB_SPLIT = "test"

AXIS = {"Information Extraction": "perception", "Reasoning": "reasoning"}
_PREFIX = re.compile(r"^\s*\([A-Z]\)\s*")


# ---------------------------------------------------------------- export helpers

def first_rotation(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per sample (rotation 0 for circular runs), in first-seen order."""
    seen: dict[str, dict[str, Any]] = {}
    for r in records:
        sid = r["sample_id"]
        if sid not in seen or (r.get("rotation") or 0) < (seen[sid].get("rotation") or 0):
            seen[sid] = r
    return list(seen.values())


def upstream_choices(record: dict[str, Any]) -> list[str] | None:
    """The record's choices back in upstream order (undoing the permutation)."""
    choices, perm = record.get("choices"), record.get("permutation")
    if choices is None or perm is None:
        return choices
    out: list[str] = [""] * len(choices)
    for shown, orig in enumerate(perm):
        out[orig] = choices[shown]
    return out


# ---------------------------------------------------------------- the task

class MMAUOptions(HubTaskOptions):
    split: Literal["test-mini", "test"] = "test-mini"


class MMAU(MCQTask):
    name = "mmau"
    version = "1"
    description = "MMAU: audio MCQ over sound, music and speech (test-mini: 1000 items; test: answers withheld)"
    source = f"hf:{HUB_REPOS['test-mini']}@{HUB_REVISIONS['test-mini'][:7]} or -T data=mmau-test-mini.json " \
             "(github Sakshi113/MMAU)"
    Options = MMAUOptions
    groupings = ("task", "difficulty", "category", "sub-category", "axis")
    official = mmau_official

    def __init__(self, options: MMAUOptions | None = None):
        super().__init__(options)
        self._raw: dict[str, dict[str, Any]] = {}

    # ---- loading
    def load(self) -> LoadedData:
        self._raw = {}
        if self.options.data:
            return self._load_local(Path(self.options.data).expanduser())
        return self._load_hub()

    def _load_local(self, path: Path) -> LoadedData:
        items = read_json_records(path)
        root = Path(self.options.audio_root).expanduser() if self.options.audio_root else path.parent
        samples, warnings = [], []
        where = str(path)
        for i, rec in enumerate(items):
            s = self._sample(rec, i, where, warnings,
                             audio=lambda rec, label, i=i: local_audio(root, get_field(rec, "audio_id", where, i),
                                                                  where, label, "audio_id"))
            if s is not None:
                samples.append(s)
        return LoadedData(samples=samples, source={"kind": "local", "path": str(path), "audio_root": str(root),
                                                   "split": self.options.split},
                          data_hash=hash_files([path]), warnings=warnings)

    def _load_hub(self) -> LoadedData:
        from evalkit.hub import audio_from_hub, hub_data_hash, hub_source, load_hub_rows

        split = self.options.split
        repo = HUB_REPOS[split]
        revision = self.options.revision or HUB_REVISIONS[split]
        rows = load_hub_rows(repo, revision, HUB_SPLIT)
        where = f"hf:{repo}@{revision}"
        root = Path(self.options.audio_root).expanduser() if self.options.audio_root else None
        samples, warnings = [], []
        for i, row in enumerate(rows):
            rec = _hub_row_to_item(row, where, i)

            def audio(rec, label, row=row, i=i):
                if "context" in row and row["context"] is not None:
                    try:
                        return audio_from_hub(row["context"], label=rec.get("audio_id") or rec.get("id"))
                    except (ValueError, UnsafePathError) as e:
                        raise TaskDataError(f"{where}: {label}: field 'context': {e}") from None
                if root is None:
                    raise TaskDataError(f"{where}: {label}: rows carry no embedded audio; download the audio "
                                        f"archive and pass -T audio_root=DIR")
                return local_audio(root, get_field(rec, "audio_id", where, i), where, label, "audio_id")

            s = self._sample(rec, i, where, warnings, audio=audio)
            if s is not None:
                samples.append(s)
        src = hub_source(repo, revision, HUB_SPLIT)
        src["split_name"] = split
        return LoadedData(samples=samples, source=src, data_hash=hub_data_hash(rows, repo, revision),
                          warnings=warnings)

    def _sample(self, rec: Any, i: int, where: str, warnings: list[str], audio) -> Sample | None:
        rid = str(get_field(rec, "id", where, i, (str, int)))
        label = record_name(rec, i)
        question = get_field(rec, "question", where, i)
        choices = get_choices(rec, "choices", where, i)
        test = self.options.split == "test"
        raw_answer = rec.get("answer")
        answer: int | None = None
        if raw_answer is None or (test and str(raw_answer).strip() == ""):
            if not test:
                raise TaskDataError(f"{where}: {label}: missing field 'answer'")
        elif not isinstance(raw_answer, (str, int, float)):
            raise TaskDataError(f"{where}: {label}: field 'answer' has type {type(raw_answer).__name__}")
        else:
            answer = gold_index(choices, str(raw_answer))
            if answer is None:
                warnings.append(f"{where}: {label}: answer {str(raw_answer)!r} is not among the choices "
                                f"{choices}; item skipped")
                return None
        if rid in self._raw:
            raise TaskDataError(f"{where}: {label}: duplicate id {rid!r}")
        category = metadata_value(rec.get("category"))
        meta = {
            "task": rec.get("task"),
            "difficulty": rec.get("difficulty"),
            "category": category,
            "sub-category": metadata_value(rec.get("sub-category")),
            "dataset": rec.get("dataset"),
            "axis": AXIS.get(category) if isinstance(category, str) else None,
            "audio_id": rec.get("audio_id"),
        }
        self._raw[rid] = rec
        return Sample(id=rid, question=question, audio=[audio(rec, label)], choices=choices, answer=answer,
                      metadata=meta)

    # ---- upstream submission / official-script input
    def export(self, records: list[dict[str, Any]], run_dir: Path) -> list[str]:
        name = f"mmau-{self.options.split}-submission.json"
        items = []
        for r in first_rotation(records):
            sid = str(r["sample_id"])
            item = dict(self._raw.get(sid) or _item_from_record(r))
            item["model_output"] = r.get("output") if r.get("output") is not None else ""
            items.append(item)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(run_dir) / name, "w", encoding="utf-8") as f:
            json.dump(items, f, ensure_ascii=False, indent=2)
        return [name]


def _item_from_record(r: dict[str, Any]) -> dict[str, Any]:
    """The upstream item as far as a record carries it (when the data was not
    loaded in this process, e.g. `evalkit score RUN_DIR`)."""
    meta = r.get("metadata") or {}
    item: dict[str, Any] = {"id": r["sample_id"]}
    if meta.get("audio_id") is not None:
        item["audio_id"] = meta["audio_id"]
    item["choices"] = upstream_choices(r)
    if r.get("answer") is not None:
        item["answer"] = r["answer"]
    for k in ("dataset", "task", "category", "sub-category", "difficulty"):
        if meta.get(k) is not None:
            item[k] = meta[k]
    return item


def _hub_row_to_item(row: dict[str, Any], where: str, i: int) -> dict[str, Any]:
    """A hub row in the GitHub JSON form: metadata unpacked from
    `other_attributes`, "(A) " prefixes stripped from choices and answer."""
    row = without_nonfinite(row)
    attrs = row.get("other_attributes")
    if isinstance(attrs, str):
        try:
            attrs = loads_json(attrs)
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{where}: record {i}: field 'other_attributes' is not valid JSON: {e.msg}") from None
    attrs = attrs if isinstance(attrs, dict) else {}
    item = {k: v for k, v in row.items() if k not in ("context", "other_attributes", "instruction")}
    for k, v in attrs.items():
        item.setdefault(k, v)
    if "question" not in item and row.get("instruction") is not None:
        item["question"] = row["instruction"]
    if isinstance(item.get("choices"), list):
        item["choices"] = [_PREFIX.sub("", str(c)) for c in item["choices"]]
    if isinstance(item.get("answer"), str):
        item["answer"] = _PREFIX.sub("", item["answer"])
    return item
