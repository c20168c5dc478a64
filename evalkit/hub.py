"""Hugging Face Hub datasets, loaded lazily (the `hub` extra).

`datasets` is imported only inside these functions, so `import evalkit` and
`evalkit list` never pay for it. Audio columns are read undecoded (raw bytes
or a path), and turned into `AudioRef`s that evalkit decodes itself.
"""
from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from evalkit.errors import TaskDataError
from evalkit.types import AudioRef

OFFLINE_HINT = ("To run offline, download the data once and pass it with "
                "`-T data=PATH -T audio_root=DIR`, or set HF_HUB_OFFLINE=1 with the dataset "
                "already in the Hugging Face cache (HF_HOME / HF_DATASETS_CACHE).")


@lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connect within seconds (False under HF_HUB_OFFLINE=1).

    Asked once per process: without it, an offline machine spends tens of seconds to minutes in the hub
    client's retries before the first error. When False, loads use only the local cache."""
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def download_hint(repo: str, revision: str | None, kind: str = "model") -> str:
    """The command that fetches `repo` into the cache on a machine with network, and how to run offline."""
    rev = f" --revision {revision}" if revision and revision != "main" else ""
    typ = " --repo-type dataset" if kind == "dataset" else ""
    return (f"`hf download {repo}{rev}{typ}` on a machine with network (then copy the cache, HF_HOME), and set "
            "HF_HUB_OFFLINE=1 here so nothing waits on the network")


def load_hub_rows(repo: str, revision: str, split: str, config: str | None = None):
    """Rows of one split of a hub dataset (a `datasets.Dataset`: iterable of
    dicts, len-able) at a pinned revision. Audio columns are cast to
    `decode=False`, so they hold `{"bytes": ..., "path": ...}`.

    Raises TaskDataError when `datasets` is missing or the download fails.
    """
    try:
        import datasets  # noqa: F401
        from datasets import load_dataset
    except ImportError:
        raise TaskDataError(
            f"loading {repo} from the Hugging Face Hub needs the `datasets` package: "
            f"pip install 'evalkit[hub]'. {OFFLINE_HINT}") from None
    try:
        args: list[Any] = [repo] + ([config] if config else [])
        kwargs: dict[str, Any] = {}
        if not hub_reachable():  # the cache only: fail in seconds instead of retrying the network
            from datasets import DownloadConfig

            kwargs["download_config"] = DownloadConfig(local_files_only=True)
        ds = load_dataset(*args, split=split, revision=revision, **kwargs)
    except Exception as e:  # network, auth, missing split/revision, offline mode ...
        raise TaskDataError(
            f"could not load {repo} (revision {revision}, split {split}"
            f"{', config ' + config if config else ''}) from the Hugging Face Hub: "
            f"{type(e).__name__}: {e}. {OFFLINE_HINT} Or fetch it: {download_hint(repo, revision, 'dataset')}.") from None
    return _undecoded(ds)


def _undecoded(ds):
    """Cast every Audio column to decode=False (no torchcodec / librosa needed)."""
    try:
        from datasets import Audio
    except ImportError:  # pragma: no cover
        return ds
    features = getattr(ds, "features", None) or {}
    for name, feat in list(features.items()):
        if isinstance(feat, Audio) and getattr(feat, "decode", True):
            ds = ds.cast_column(name, Audio(decode=False))
    return ds


def resolve_revision(repo: str, revision: str) -> str | None:
    """The commit sha `revision` points to, or None when it cannot be asked
    (offline, no huggingface_hub). Never raises."""
    if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision.lower()):
        return revision
    if not hub_reachable():
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo, revision=revision).sha
    except Exception:
        return None


def hub_source(repo: str, revision: str, split: str, config: str | None = None) -> dict[str, Any]:
    """`LoadedData.source` for hub data: the requested and the resolved revision."""
    return {"kind": "hub", "repo": repo, "revision": revision,
            "resolved_revision": resolve_revision(repo, revision), "split": split, "config": config}


def hub_data_hash(rows, repo: str, revision: str) -> str:
    """A stable id for hub data: the datasets fingerprint (content of the
    cached arrow files) where available, else repo@revision."""
    fp = getattr(rows, "_fingerprint", None)
    return f"hub:{repo}@{revision}" + (f"#{fp}" if fp else "")


def audio_from_hub(value: Any, label: str | None = None, root: str | Path | None = None) -> AudioRef:
    """AudioRef for an HF audio value.

    Accepts the undecoded form `{"bytes": b"...", "path": "x.wav"}` (bytes win;
    a path alone is used as a file, relative paths resolved safely under
    `root`), the decoded form `{"array": ..., "sampling_rate": 16000}`, raw
    bytes, or a path string. Raises ValueError for anything else.
    """
    if isinstance(value, (bytes, bytearray)):
        return AudioRef(data=bytes(value), label=label)
    if isinstance(value, (str, Path)):
        return _path_ref(str(value), label, root)
    if isinstance(value, dict):
        data = value.get("bytes")
        if data:
            return AudioRef(data=bytes(data), label=label or value.get("path") or None)
        array = value.get("array")
        if array is not None:
            sr = value.get("sampling_rate") or value.get("sample_rate")
            if not sr:
                raise ValueError("audio array without sampling_rate")
            import numpy as np

            return AudioRef(array=np.asarray(array, dtype=np.float32), sample_rate=int(sr),
                            label=label or value.get("path") or None)
        path = value.get("path")
        if path:
            return _path_ref(str(path), label, root)
    raise ValueError(f"unrecognized audio value of type {type(value).__name__} (expected an HF audio "
                     f"dict with bytes/path or array/sampling_rate)")


def _path_ref(path: str, label: str | None, root: str | Path | None) -> AudioRef:
    from evalkit.audio import resolve_under

    if "\0" in path:
        raise ValueError(f"audio path {path!r} contains a NUL byte")
    p = Path(path)
    if root is not None:
        return AudioRef(path=resolve_under(root, path), label=label)
    if not p.is_absolute():
        raise ValueError(f"relative audio path {path!r} without an audio root")
    return AudioRef(path=p, label=label)
