"""What run.json records automatically: versions, git commit, canonical hashing."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

KEY_PACKAGES = ("numpy", "scipy", "soundfile", "soxr", "pydantic", "torch", "transformers", "vllm",
                "openai", "datasets", "jiwer", "scikit-learn", "sentence-transformers", "faster-whisper",
                "ctranslate2")


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Installed versions from package metadata (nothing is imported)."""
    out = {}
    for name in KEY_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


@lru_cache(maxsize=1)
def git_commit() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


#: the instruction-set extensions that change which kernels numerical libraries dispatch to (CTranslate2,
#: MKL, oneDNN, torch): SIMD width, fused multiply-add, int8 dot products (VNNI), AMX tiles; a model's
#: output can differ between CPUs that differ here (e.g. the Whisper demo's transcripts on noisy clips)
ISA_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni",
             "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_int8", "amx_bf16",
             "asimd", "asimddp", "sve", "sve2", "bf16", "i8mm")  # the aarch64 names of the same features


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """CPU model, vendor and the ISA_FLAGS present, from the text of /proc/cpuinfo (Linux; x86 names
    the flags "flags", aarch64 "Features"). Only the first processor is read: all cores of one machine
    share an instruction set."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # end of the first processor's block
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = fields.get("flags", fields.get("features"))
    present = set(flags.split()) if flags is not None else None
    return {"model": fields.get("model name") or fields.get("cpu model") or None,
            "vendor": fields.get("vendor_id") or fields.get("cpu implementer") or None,
            # None: no flags line, so unknown (an empty list would claim the CPU has none of them)
            "isa_flags": [f for f in ISA_FLAGS if f in present] if present is not None else None}


@lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU a run ran on: model, vendor, the ISA_FLAGS it has and the logical core count. Where
    /proc/cpuinfo cannot be read (macOS, Windows) the model is platform.processor() and isa_flags is
    None (unknown, not "none")."""
    info: dict[str, Any] = {"model": platform.processor() or None, "vendor": None, "isa_flags": None}
    try:
        parsed = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
        info.update({k: v for k, v in parsed.items() if v is not None})
    except OSError:
        pass
    info["machine"] = platform.machine()
    info["logical_cores"] = os.cpu_count()
    return info


def environment() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu_info(),
            "packages": package_versions()}


def stable_hash(obj: Any, length: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
