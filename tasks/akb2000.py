"""AKB-2000 (arXiv 2603.19195): 2000 four-option text-only MCQs probing the
auditory knowledge of LLM backbones, in six categories (Sound,
Paralinguistic, Phonetic, Music, Audio Quality, Technical; 48 subcategories).
The reported "Avg." is the micro average, i.e. overall accuracy.

The data is unpublished (as of 2026-04: kehanlu/AKB holds only the project
page; see shared/data/akb2000/SOURCE.md), so the loader accepts the formats a
release is likely to use:
- `-T data=FILE.json` (a list, or an object with a list under "data"/"questions"/"items"),
  `.jsonl`, or `.csv`;
- `-T data=hf:<owner>/<name>[@revision]` once it is on the hub (`-T hub_split=`).
Fields: `question`; four options as a list (`choices` or `options`) or as
`option_a`..`option_d` (also `choice_a`.., `A`..`D`); `answer` as a letter
("B", "(B)") or as the option text (or `answer_index`, 0-based); `category`;
`subcategory` (or `sub-category` / `sub_category`); `id` (defaults to the
record number). A letter answer that is also the text of a *different*
option is ambiguous: warning, item skipped.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from evalkit.tasks.base import (
    LoadedData,
    MCQTask,
    TaskDataError,
    TaskOptions,
    hash_files,
)
from evalkit.tasks.loaders import loads_json, read_json_records, without_nonfinite
from evalkit.types import Sample

CATEGORIES = ("Sound", "Paralinguistic", "Phonetic", "Music", "Audio Quality", "Technical")
PAPER_SIZES = {"Sound": 248, "Paralinguistic": 594, "Phonetic": 217, "Music": 401, "Audio Quality": 196,
               "Technical": 344}
_LETTER = re.compile(r"^\s*\(?\s*([A-Da-d])\s*\)?\s*[.:]?\s*$")
_OPTION_FIELD_SETS = (("option_a", "option_b", "option_c", "option_d"),
                      ("choice_a", "choice_b", "choice_c", "choice_d"),
                      ("A", "B", "C", "D"))


class AKBOptions(TaskOptions):
    hub_split: str = "test"


class AKB2000(MCQTask):
    name = "akb2000"
    version = "1"
    description = "AKB-2000: 2000 text-only MCQs on auditory knowledge in LLM backbones (six categories)"
    source = "unpublished (arXiv 2603.19195); -T data=FILE.json|jsonl|csv or hf:<repo>"
    modality = "text"
    Options = AKBOptions
    groupings = ("category", "subcategory")

    def load(self) -> LoadedData:
        data = self.options.data
        if not data:
            raise TaskDataError(
                "akb2000: the AKB-2000 questions are not published yet (the kehanlu/AKB repository holds only "
                "the project page; see SOURCE.md). Pass a local copy with -T data=FILE (.json, .jsonl or .csv "
                "with question, four options, answer, category, subcategory), or -T data=hf:<owner>/<name> "
                "once it is on the Hugging Face Hub")
        if data.startswith("hf:"):
            from evalkit.hub import hub_data_hash, hub_source, load_hub_rows

            repo, _, revision = data[3:].partition("@")
            revision = revision or "main"
            rows = load_hub_rows(repo, revision, self.options.hub_split)
            samples, warnings = self._samples([without_nonfinite(dict(r)) for r in rows], f"hf:{repo}@{revision}")
            return LoadedData(samples=samples, source=hub_source(repo, revision, self.options.hub_split),
                              data_hash=hub_data_hash(rows, repo, revision), warnings=warnings)
        path = Path(data).expanduser()
        records = read_records(path)
        samples, warnings = self._samples(records, str(path))
        return LoadedData(samples=samples, source={"kind": "local", "path": str(path)},
                          data_hash=hash_files([path]), warnings=warnings)

    def _samples(self, records: list[Any], where: str) -> tuple[list[Sample], list[str]]:
        samples: list[Sample] = []
        warnings: list[str] = []
        seen: set[str] = set()
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise TaskDataError(f"{where}: record {i} is a {type(rec).__name__}, not an object")
            rid = str(rec["id"]) if rec.get("id") not in (None, "") else str(i)
            label = f"record {i} (id {rid!r})"
            question = rec.get("question")
            if not isinstance(question, str) or not question.strip():
                raise TaskDataError(f"{where}: {label}: missing field 'question'")
            choices = _choices(rec, where, label)
            gold = _answer(rec, choices, where, label, warnings)
            if gold is None:
                continue
            category = _text(rec, ("category",))
            if category is None:
                raise TaskDataError(f"{where}: {label}: missing field 'category'")
            if category not in CATEGORIES:
                warnings.append(f"{where}: {label}: category {category!r} is not one of {', '.join(CATEGORIES)}")
            if rid in seen:
                raise TaskDataError(f"{where}: {label}: duplicate id {rid!r}")
            seen.add(rid)
            samples.append(Sample(
                id=rid, question=question.strip(), choices=choices, answer=gold,
                metadata={"category": category,
                          "subcategory": _text(rec, ("subcategory", "sub-category", "sub_category"))}))
        if not samples:
            raise TaskDataError(f"{where}: no usable records")
        return samples, warnings


def _text(rec: dict, names: tuple[str, ...]) -> str | None:
    for n in names:
        v = rec.get(n)
        if v is not None and str(v).strip() != "":
            return str(v).strip()
    return None


def _choices(rec: dict, where: str, label: str) -> list[str]:
    for key in ("choices", "options"):
        if key in rec and rec[key] is not None:
            v = rec[key]
            if isinstance(v, str):  # CSV cell holding a JSON list
                try:
                    v = loads_json(v)
                except json.JSONDecodeError:
                    raise TaskDataError(f"{where}: {label}: field {key!r} is not a list") from None
            if not isinstance(v, list) or len(v) != 4 or any(c is None or str(c).strip() == "" for c in v):
                raise TaskDataError(f"{where}: {label}: field {key!r} must be a list of four non-empty options")
            return [str(c).strip() for c in v]
    for fields in _OPTION_FIELD_SETS:
        if any(f in rec for f in fields):
            missing = [f for f in fields if rec.get(f) is None or str(rec.get(f)).strip() == ""]
            if missing:
                raise TaskDataError(f"{where}: {label}: missing field {missing[0]!r}")
            return [str(rec[f]).strip() for f in fields]
    raise TaskDataError(f"{where}: {label}: missing field 'choices' (or 'options', or option_a..option_d)")


def _answer(rec: dict, choices: list[str], where: str, label: str, warnings: list[str]) -> int | None:
    if rec.get("answer_index") not in (None, ""):
        try:
            k = int(rec["answer_index"])
        except (TypeError, ValueError):
            raise TaskDataError(f"{where}: {label}: field 'answer_index' is not an integer") from None
        if not 0 <= k < len(choices):
            raise TaskDataError(f"{where}: {label}: field 'answer_index' {k} is out of range")
        return k
    raw = _text(rec, ("answer", "answer_gt", "label"))
    if raw is None:
        raise TaskDataError(f"{where}: {label}: missing field 'answer'")
    by_text = next((j for j, c in enumerate(choices) if c == raw), None)
    m = _LETTER.match(raw)
    by_letter = "ABCD".index(m.group(1).upper()) if m else None
    if by_text is not None and by_letter is not None and by_text != by_letter:
        warnings.append(f"{where}: {label}: answer {raw!r} is both a letter and the text of option "
                        f"{'ABCD'[by_text]}; ambiguous, item skipped (give answer_index)")
        return None
    if by_text is not None:
        return by_text
    if by_letter is not None:
        return by_letter
    raise TaskDataError(f"{where}: {label}: field 'answer' {raw!r} is neither a letter A-D nor one of the options")


def read_records(path: Path) -> list[Any]:
    if not path.exists():
        raise TaskDataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                return list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise TaskDataError(f"cannot read CSV {path}: {e}") from None
    if suffix not in (".json", ".jsonl"):
        raise TaskDataError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl or .csv")
    if suffix == ".json":
        try:
            data = loads_json(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        if isinstance(data, dict):
            for key in ("data", "questions", "items"):
                if isinstance(data.get(key), list):
                    return data[key]
            raise TaskDataError(f"{path}: expected a JSON list of records (or an object with a 'data' list)")
        if not isinstance(data, list):
            raise TaskDataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    return read_json_records(path)
