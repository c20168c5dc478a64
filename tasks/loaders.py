"""Loader helpers shared by several tasks: reading JSON/JSONL record files, typed field access
with errors naming file, record and field, choice lists, the gold index, audio paths kept under
their data root, JSONL lines and NaN handling. Imports the engine's types, audio path checks and the
choice-count limit only, never another task."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evalkit.audio import UnsafePathError, resolve_under
from evalkit.errors import TaskDataError
from evalkit.jsonio import jsonl_lines, loads_json, without_nonfinite  # noqa: F401  (tasks use them from here too)
from evalkit.protocol.choices import check_choice_count
from evalkit.types import AudioRef


def read_json_records(path: Path) -> list[Any]:
    """Records of a JSON list or a JSONL file; TaskDataError names file and record.
    NaN/Infinity constants are read as None (see loads_json)."""
    if not path.exists():
        raise TaskDataError(f"data file not found: {path}")
    if path.is_dir():
        raise TaskDataError(f"expected a JSON/JSONL file, got a folder: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TaskDataError(f"cannot read {path}: {e}") from None
    if path.suffix.lower() == ".jsonl" or (not text.lstrip().startswith("[") and path.suffix.lower() != ".json"):
        out = []
        for lineno, line in jsonl_lines(text):
            try:
                out.append(loads_json(line))
            except json.JSONDecodeError as e:
                raise TaskDataError(f"{path}: line {lineno} (record {len(out)}) is not valid JSON: {e.msg}") from None
        return out
    try:
        data = loads_json(text)
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, list):
        raise TaskDataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def record_name(rec: Any, index: int, id_field: str = "id") -> str:
    rid = rec.get(id_field) if isinstance(rec, dict) else None
    return f"record {index} (id {rid!r})" if rid is not None else f"record {index}"


def get_field(rec: Any, field: str, where: str, index: int, kind: type | tuple = str) -> Any:
    if not isinstance(rec, dict):
        raise TaskDataError(f"{where}: record {index} is a {type(rec).__name__}, not an object")
    if field not in rec or rec[field] is None:
        raise TaskDataError(f"{where}: {record_name(rec, index)}: missing field {field!r}")
    value = rec[field]
    if not isinstance(value, kind):
        raise TaskDataError(f"{where}: {record_name(rec, index)}: field {field!r} has type "
                            f"{type(value).__name__}")
    return value


def get_choices(rec: dict, field: str, where: str, index: int) -> list[str]:
    value = get_field(rec, field, where, index, list)
    if len(value) < 2 or not all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in value):
        missing = [j for j, c in enumerate(value) if c is None]
        detail = f" (item {missing[0]} is null or NaN)" if missing else ""
        raise TaskDataError(f"{where}: {record_name(rec, index)}: field {field!r} must be a list of "
                            f"at least two strings{detail}")
    check_choice_count(len(value), f"{where}: {record_name(rec, index)}: field {field!r}")
    return [str(c).strip() for c in value]


def gold_index(choices: list[str], answer: str) -> int | None:
    """Index of the FIRST choice equal to the answer text (surrounding spaces ignored)."""
    answer = answer.strip()
    for i, c in enumerate(choices):
        if c == answer:
            return i
    return None


def local_audio(root: Path, rel: str, where: str, rec_label: str, field: str) -> AudioRef:
    try:
        return AudioRef(path=resolve_under(root, rel))
    except UnsafePathError as e:
        raise TaskDataError(f"{where}: {rec_label}: field {field!r}: {e}") from None


def metadata_value(v: Any) -> Any:
    """A one-element list (["Reasoning"]) becomes its element."""
    if isinstance(v, list) and len(v) == 1:
        return v[0]
    return v
