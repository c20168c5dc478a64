"""One persistent cache for derived artefacts (text embeddings, captions...):
sqlite (WAL, safe across processes and threads) mapping (namespace, key) -> bytes,
with batched lookups. Lives under $EVALKIT_CACHE_DIR (default ~/.cache/evalkit)."""
from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 500  # sqlite variables per IN (...) query


def cache_dir() -> Path:
    env = os.environ.get("EVALKIT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evalkit"


class KVCache:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS kv (namespace TEXT NOT NULL, key TEXT NOT NULL, "
                               "value BLOB NOT NULL, PRIMARY KEY (namespace, key))")
            self._conn.commit()

    def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        uniq = list(dict.fromkeys(keys))
        with self._lock:
            for i in range(0, len(uniq), _CHUNK):
                chunk = uniq[i:i + _CHUNK]
                q = ",".join("?" * len(chunk))
                rows = self._conn.execute(f"SELECT key, value FROM kv WHERE namespace = ? AND key IN ({q})",
                                          [namespace, *chunk])
                out.update((k, bytes(v)) for k, v in rows)
        return out

    def put_many(self, namespace: str, items: dict[str, bytes]) -> None:
        with self._lock:
            self._conn.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)",
                                   [(namespace, k, v) for k, v in items.items()])
            self._conn.commit()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
