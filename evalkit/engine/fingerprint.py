"""Content identity of local files and folders: sha256, cached by (path, size, mtime_ns).

A run id must change when the bytes a run reads change (a clip replaced on disk, a checkpoint
re-exported into the same folder), yet a re-run of a finished 10,000-clip run must stay fast: one
`stat` per file, the sha256 read again only when size or mtime changed. The cache is a JSON file
in evalkit's cache folder (`$EVALKIT_CACHE_DIR`, default ~/.cache/evalkit); an unwritable one
keeps it in memory only. Imports only evalkit's key-value cache."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evalkit.engine.cache import KVCache, cache_dir

MISSING = "missing"  # a file that is not there has an identity too (its absence)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Fingerprints:
    """sha256 of files, cached across runs by (path, size, mtime_ns) in evalkit's cache
    ($EVALKIT_CACHE_DIR/fingerprints.sqlite); `cache=None` keeps it in memory (tests, read-only homes)."""

    NAMESPACE = "sha256-by-stat"

    def __init__(self, cache: KVCache | None | str = "default"):
        if cache == "default":
            try:
                cache = KVCache(cache_dir() / "fingerprints.sqlite")
            except Exception:  # an unwritable cache folder: hash again next time
                cache = None
        self.cache = cache
        self._memo: dict[str, str] = {}

    @staticmethod
    def _stat_key(path: str) -> str | None:
        try:
            st = os.stat(path)
        except (OSError, ValueError):  # missing, not a directory, NUL in the path
            return None
        return f"{path}\0{st.st_size}\0{st.st_mtime_ns}"

    def files(self, paths: Iterable[str | os.PathLike]) -> dict[str, str]:
        """{path: sha256 (or MISSING)} for many files: one stat each, one cache query for all."""
        keys = {os.fspath(p): None for p in paths}
        stat_keys = {p: self._stat_key(p) for p in keys}
        wanted = [k for k in stat_keys.values() if k is not None and k not in self._memo]
        if wanted and self.cache is not None:
            self._memo.update((k, v.decode()) for k, v in self.cache.get_many(self.NAMESPACE, wanted).items())
        new: dict[str, bytes] = {}
        out: dict[str, str] = {}
        for p, k in stat_keys.items():
            if k is None:
                out[p] = MISSING
                continue
            if k not in self._memo:
                try:
                    self._memo[k] = sha256_file(p)
                except OSError:
                    out[p] = MISSING
                    continue
                new[k] = self._memo[k].encode()
            out[p] = self._memo[k]
        if new and self.cache is not None:
            try:
                self.cache.put_many(self.NAMESPACE, new)
            except Exception:
                pass  # a cache only
        return out

    def file(self, path: str | os.PathLike) -> str:
        return self.files([path])[os.fspath(path)]

    def close(self) -> None:
        """Close the cache's database (the in-memory memo stays usable, without the cache)."""
        cache, self.cache = self.cache, None
        if cache is not None:
            cache.close()

    def __enter__(self) -> Fingerprints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tree(self, path: str | os.PathLike) -> str:
        """A file's sha256, or for a folder the sha256 over its files' (relative path, sha256)."""
        root = Path(path)
        if not root.is_dir():
            return self.file(root)
        members = sorted(p for p in root.rglob("*") if p.is_file())
        digests = self.files(members)
        h = hashlib.sha256()
        for f in members:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + digests[os.fspath(f)].encode() + b"\n")
        return "tree:" + h.hexdigest()


def combined(digests: dict[str, str]) -> str:
    """One sha256 over a {name: digest} map (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(name.encode() + b"\0" + digests[name].encode() + b"\n")
    return "sha256:" + h.hexdigest()


def local_paths(value: Any, prefix: str = "") -> dict[str, str]:
    """{dotted arg name: path} for every string in an adapter's arguments that names an existing
    local file or folder (a model folder, a checkpoint, a predictions or captions file)."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(local_paths(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            out.update(local_paths(v, f"{prefix}[{i}]"))
    elif isinstance(value, str) and value.strip() and "\0" not in value and len(value) < 4096:
        try:
            if os.path.exists(value):
                out[prefix] = value
        except (OSError, ValueError):
            pass
    return out
