"""A run directory: `samples.jsonl` (append-only, flushed per record), `run.json`
(written atomically) and a lock so two processes never write one run.

Crash safety: each finished record is appended with one write and flushed as it completes, so
`kill -9` loses at most a partial last line, which `load()` truncates away. Lines are split on
"\n" only (JSON may hold a raw U+2028 inside a string). Records are
never rewritten in place; `compact()` rewrites the file atomically (temp file +
rename) when superseded records (retried errors) must go.
"""
from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SAMPLES = "samples.jsonl"
RUN = "run.json"
LOCK = ".lock"


class RunLockedError(RuntimeError):
    pass


class RunStoreError(ValueError):
    pass


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:  # as every reader of run.json, whatever the locale
        json.dump(obj, f, indent=1, ensure_ascii=False, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_records(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a samples.jsonl. A torn last line (a crash mid-write) is cut off
    when `repair` is set, else ignored; a bad line elsewhere is an error naming it."""
    if not path.exists():
        return []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    offset = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        is_last = i == len(lines) - 1
        if is_last and line == b"":
            break
        try:
            if is_last:  # no trailing newline: the write was torn
                raise ValueError("torn write")
            records.append(json.loads(line))
        except ValueError:
            if is_last or (i == len(lines) - 2 and lines[-1] == b""):
                if repair:
                    with open(path, "r+b") as f:
                        f.truncate(offset)
                break
            raise RunStoreError(f"{path}: line {i + 1} is not valid JSON; the run log is damaged") from None
        offset += len(line) + 1
    return records


def encode_record(record: dict[str, Any]) -> str:
    """One samples.jsonl line; raises ValueError naming what cannot be logged."""
    try:
        line = json.dumps(record, ensure_ascii=False, allow_nan=False)
        line.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as e:
        raise RunStoreError(f"record {record.get('key')!r}: {unserializable_field(record) or e}") from None
    return line + "\n"


def unserializable_field(record: dict[str, Any]) -> str | None:
    """The first field of a record that cannot be written as strict UTF-8 JSON (NaN, Infinity, lone
    surrogates, objects that are not JSON), as "field 'name': why"; None when the record is fine."""
    def problem(value: Any) -> str | None:
        try:
            json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
            return None
        except (TypeError, ValueError, UnicodeEncodeError) as e:
            return f"{type(e).__name__}: {str(e)[:200]}"

    if problem(record) is None:
        return None
    for name, value in record.items():
        why = problem(value)
        if why is not None:
            if isinstance(value, dict):
                inner = next((f"{name}.{k}" for k, v in value.items() if problem(v) is not None), name)
                return f"field {inner!r}: {why}"
            return f"field {name!r}: {why}"
    return "the record's keys: not JSON"


def latest_by_key(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest record per key (a retried error supersedes the old record)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        out[r["key"]] = r
    return out


class RunStore:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.samples_path = self.dir / SAMPLES
        self.run_path = self.dir / RUN
        self._lock_file = None
        self._out = None

    # -- locking ---------------------------------------------------------------
    def acquire(self) -> None:
        if self._lock_file is not None:  # already held by this store
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        f = open(self.dir / LOCK, "a+")  # noqa: SIM115 (held open: the flock lives as long as the run)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunLockedError(
                f"another evalkit process (pid {holder}) is writing {self.dir}; "
                "wait for it to finish or stop it, then run the same command again to resume") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def release(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> RunStore:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- records ---------------------------------------------------------------
    def load(self) -> dict[str, dict[str, Any]]:
        return latest_by_key(read_records(self.samples_path, repair=self._lock_file is not None))

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append finished records and flush them to the OS, so a `kill -9` after this returns loses
        none of them. The whole call is one write: a record that cannot be encoded writes nothing."""
        text = "".join(encode_record(r) for r in records)
        try:
            if self._out is None:
                self._out = open(self.samples_path, "a", encoding="utf-8")  # noqa: SIM115 (appended to per record)
            self._out.write(text)
            self._out.flush()
        except OSError as e:
            raise RunStoreError(f"cannot write {self.samples_path}: {e}") from None

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace samples.jsonl with exactly these records (temp file + rename: atomic)."""
        if self._out is not None:
            self._out.close()
            self._out = None
        data = "".join(encode_record(r) for r in records)  # a record that cannot be encoded fails before any file is touched
        tmp = self.samples_path.with_name(SAMPLES + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.samples_path)

    def compact(self, keep_order: list[str] | None = None) -> None:
        """Rewrite samples.jsonl with one record per key, in `keep_order` first."""
        records = read_records(self.samples_path)
        latest = latest_by_key(records)
        if len(latest) == len(records):
            return
        ordered = [latest.pop(k) for k in (keep_order or []) if k in latest]
        self.rewrite(ordered + list(latest.values()))

    def iter_records(self) -> Iterator[dict[str, Any]]:
        yield from latest_by_key(read_records(self.samples_path)).values()

    def read_run(self) -> dict[str, Any] | None:
        if not self.run_path.exists():
            return None
        return json.loads(self.run_path.read_text(encoding="utf-8"))

    def write_run(self, run: dict[str, Any]) -> None:
        try:
            write_json_atomic(self.run_path, run)
        except OSError as e:
            raise RunStoreError(f"cannot write {self.run_path}: {e}") from None
