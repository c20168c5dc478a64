"""Audio I/O in one place: decode (soundfile), downmix, resample (soxr), validate,
and resolve paths from data files without letting them escape their data root."""
from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol


class AudioSource(Protocol):
    """What decode_audio reads (evalkit.types.AudioRef is one); a Protocol, so this module imports
    nothing from evalkit."""

    path: Path | None
    data: bytes | None
    array: Any
    sample_rate: int | None

    def describe(self) -> str: ...


class AudioError(ValueError):
    """Audio that cannot be used; the message names the file."""


class UnsafePathError(ValueError):
    pass


def resolve_under(root: str | os.PathLike, relative: str, what: str = "audio path") -> Path:
    """Join a path read from a data file onto its root, refusing escapes
    (absolute paths, `..`, symlinks pointing outside, NUL bytes, which no file name can hold and
    which the OS calls would reject with a bare "embedded null byte")."""
    if "\x00" in os.fspath(root):
        raise UnsafePathError(f"data root {os.fspath(root)!r} contains a NUL byte")
    root_real = _real_dir(os.path.abspath(os.fspath(root)))  # absolute first: the cwd may change
    rel = str(relative).strip()
    if not rel:
        raise UnsafePathError(f"empty {what}")
    if "\x00" in rel:
        raise UnsafePathError(f"{what} {rel!r} contains a NUL byte")
    if os.path.isabs(rel):
        raise UnsafePathError(f"{what} {rel!r} is absolute; paths in data files must be relative to {root_real}")
    joined = os.path.join(root_real, rel)
    parent, name = os.path.split(joined)
    if ".." in rel.replace("\\", "/").split("/") or name in ("", ".") or os.path.islink(joined):
        # ".." is resolved by the OS after the symlinks before it ("linkdir/../x"), and "missing/../link.wav"
        # names the link: only a full realpath judges these (a lexical normpath would get both wrong)
        full = os.path.realpath(joined)
    else:  # the file itself is no symlink: only its folder can lead elsewhere, and clips share folders
        full = os.path.join(_real_dir(parent), name)
    if full != root_real and not full.startswith(root_real.rstrip(os.sep) + os.sep):
        raise UnsafePathError(f"{what} {rel!r} escapes the data root {root_real}")
    return Path(full)


@lru_cache(maxsize=65536)
def _real_dir(path: str) -> str:
    """realpath of a folder, asked once per folder per process (a 10,000-clip benchmark has a handful
    of folders; realpath per clip dominated the re-run of a finished run). A folder replaced by a
    symlink while the process runs is not seen again: data files are the threat here, not races."""
    return os.path.realpath(path)


def resample(x, sr_in: int, sr_out: int):
    if sr_in == sr_out:
        return x
    import soxr

    return soxr.resample(x, sr_in, sr_out, quality="HQ")


def decode_audio(ref: AudioSource, sample_rate: int | None = None):
    """(float32 mono array, rate) for an AudioRef; raises AudioError naming the source."""
    import numpy as np

    name = ref.describe()
    if ref.array is not None:
        x, sr = np.asarray(ref.array, dtype=np.float32), int(ref.sample_rate)
    else:
        import soundfile as sf

        try:
            src = str(ref.path) if ref.path is not None else io.BytesIO(ref.data)
            x, sr = sf.read(src, dtype="float32", always_2d=True)
        except FileNotFoundError:
            raise AudioError(f"audio file not found: {name}") from None
        except Exception as e:  # soundfile raises LibsndfileError / RuntimeError
            if ref.path is not None and not Path(ref.path).exists():
                raise AudioError(f"audio file not found: {name}") from None
            raise AudioError(f"cannot decode audio {name}: {e}") from None
        x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if x.ndim != 1:
        x = x.reshape(-1)
    if x.size == 0:
        raise AudioError(f"audio {name} is empty (0 samples)")
    if not np.isfinite(x).all():
        raise AudioError(f"audio {name} contains NaN or infinite samples")
    if sample_rate is not None and sample_rate != sr:
        x = resample(x, sr, sample_rate).astype(np.float32, copy=False)
        sr = sample_rate
    return x, sr


def encode_wav(x, sample_rate: int) -> bytes:
    """16-bit PCM WAV bytes (what chat APIs accept as `input_audio`)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
