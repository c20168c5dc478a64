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


def local_task_rows(data: str, audio_root: str | None, task: str, names: tuple[str, ...], benchmark: str):
    """A benchmark's local copy laid out one folder per task, DATA/<task>/: the first of `names` found
    there, read as JSON/JSONL records. Returns (rows, where, source, data hash, audio root); the audio
    root is AUDIO_ROOT/<task> when given, else the task's folder."""
    from evalkit.tasks.base import hash_files

    folder = Path(data).expanduser() / task
    for name in names:
        path = folder / name
        if path.is_file():
            root = Path(audio_root).expanduser() / task if audio_root else folder
            return read_json_records(path), str(path), {"kind": "local", "path": str(path)}, hash_files([path]), root
    raise TaskDataError(f"{benchmark}: no {' or '.join(names)} in {folder} (task {task})")


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


# ---------------------------------------------------------------- transcripts and ratio metrics

def _english_normalizer():
    try:
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError:
        raise ImportError("transcript scoring needs whisper-normalizer and jiwer: pip install 'evalkit[sseu]'") from None
    return EnglishTextNormalizer()


_NORMALIZERS: dict[str, Any] = {}


def normalized_transcript(text: str | None) -> str:
    """The Whisper English normalizer (the open_asr_leaderboard's), whitespace collapsed."""
    if "en" not in _NORMALIZERS:
        _NORMALIZERS["en"] = _english_normalizer()
    return " ".join(_NORMALIZERS["en"](text or "").split())


def transcript_error_parts(reference: str | None, hypothesis: str | None,
                           unit: str = "word") -> tuple[int, int] | None:
    """(edit errors, reference length) after normalization, in words (`unit="word"`, WER) or
    characters (`unit="char"`, CER, spaces included as jiwer counts them); None when the
    reference is empty. Corpus WER/CER = sum of errors / sum of lengths."""
    if unit not in ("word", "char"):
        raise ValueError(f"unit {unit!r}: use 'word' or 'char'")
    ref = normalized_transcript(reference)
    if not ref:
        return None
    hyp = normalized_transcript(hypothesis)
    n_ref = len(ref.split()) if unit == "word" else len(ref)
    if not hyp:
        return n_ref, n_ref
    try:
        import jiwer
    except ImportError:
        raise ImportError("transcript scoring needs jiwer: pip install 'evalkit[sseu]'") from None
    o = jiwer.process_words(ref, hyp) if unit == "word" else jiwer.process_characters(ref, hyp)
    return int(o.substitutions + o.deletions + o.insertions), n_ref


def ratio_with_ci(numerators, denominators, clusters, scale: float = 100.0, higher_is_better: bool = False,
                  seed: int = 0) -> dict[str, Any]:
    """sum(num) / sum(den) (a corpus WER) with the 95% percentile cluster-bootstrap CI, drawn from
    the same resamples as every other evalkit metric (`Bootstrap`): each resample's ratio is the
    weighted sums' ratio. No interval with fewer than two clusters (as `mean_with_ci`)."""
    import numpy as np

    from evalkit.results.metrics import CONFIDENCE, NO_INTERVAL, Bootstrap

    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.shape[0] != len(clusters):
        raise ValueError(f"ratio_with_ci: {num.shape[0]} numerators, {den.shape[0]} denominators, "
                         f"{len(clusters)} cluster labels; pass one of each per sample")
    if num.size == 0 or den.sum() <= 0:
        return {"value": None, "ci": list(NO_INTERVAL), "n": int(num.size), "higher_is_better": higher_is_better}
    value = float(num.sum() / den.sum())
    out = {"value": round(value * scale, 4), "ci": list(NO_INTERVAL), "n": int(num.size),
           "higher_is_better": higher_is_better, "total_numerator": float(num.sum()),
           "total_denominator": float(den.sum())}
    boot = Bootstrap(clusters, seed)
    if boot.weights is not None:
        w = boot.weights.astype(np.float64)
        num_c = np.bincount(boot.cid, weights=num, minlength=boot.m)
        den_c = np.bincount(boot.cid, weights=den, minlength=boot.m)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios = (w @ num_c) / (w @ den_c)
        ratios = ratios[np.isfinite(ratios)]
        if ratios.size:
            a = (1 - CONFIDENCE) / 2
            lo, hi = np.quantile(ratios, [a, 1 - a])
            out["ci"] = [round(float(lo) * scale, 4), round(float(hi) * scale, 4)]
    return out
