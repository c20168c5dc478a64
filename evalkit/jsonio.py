"""Reading JSON and JSONL the way data files need it, shared by tasks and adapters: lines split on
"\\n" only, NaN/Infinity read as missing; text made writable to a UTF-8 log. Imports nothing from evalkit."""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for each non-blank line of a JSONL text, split on "\\n" only.

    `str.splitlines()` also splits on U+2028, U+2029 and U+0085, which JSON allows raw inside
    strings (json.dumps(..., ensure_ascii=False) writes them so, as evalkit's own samples.jsonl
    does): a record holding one would be cut in two and refused. A trailing "\\r" (CRLF files)
    is JSON whitespace."""
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip(" \t\r"):
            yield lineno, line


def repair_surrogates(text: str) -> tuple[str, bool]:
    """(text that UTF-8 can hold, whether it needed repair). Surrogates cannot be written to a UTF-8
    log: a high and a low one side by side become the character they encode (as a UTF-16 reader would
    read them), each lone one becomes one U+FFFD."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace"), True


def _nonfinite_to_none(name: str) -> None:
    return None


def loads_json(text: str) -> Any:
    """json.loads, with the non-standard constants NaN, Infinity and -Infinity read as None.
    Python's json.dumps and pandas write NaN for a missing value; kept as a float it would become
    a "nan" group or an option text, or make the run log unwritable (records are written with
    allow_nan=False). Infinity is no more writable, so it goes the same way."""
    return json.loads(text, parse_constant=_nonfinite_to_none)


def without_nonfinite(value: Any) -> Any:
    """`value` with every float NaN/Infinity (nested in dicts and lists) replaced by None: rows read
    from parquet or the hub, where a pandas export stores a missing string as a float NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: without_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nonfinite(v) for v in value]
    return value
