"""CLAP zero-shot baseline (transformers ClapModel + ClapProcessor).

CLAP does not read instructions; it scores the audio against candidate labels that it
parses out of the request's text:
  - option lines "(A) text" (the MCQ format of evalkit.tasks.base.format_options)
    -> mode "mcq": softmax over the options, answers with the best option's letter;
  - otherwise bullet lines "- text" (the class lists of the SSEU prompts)
    -> mode "tagging" when the text mentions "event" (sseu-at), else mode "scene".
  `-M mode=mcq|scene|tagging` overrides the inference.
Scores: cos = cosine(audio embedding, text embedding of `template` filled with the label);
  scene / mcq: softmax over labels of logit_scale * cos; the answer is the argmax label
               (scene) or its letter (mcq);
  tagging:     prob = sigmoid(logit_scale * (cos - mean_labels(cos))) (a label is "present"
               when it matches better than the average label); the answer lists the labels
               with prob > `threshold` (at least the top one), comma-separated.
Every response carries `extra["label_scores"]` {label: score} (softmax probabilities for
scene/mcq, the raw cosine for tagging): the SSEU scorer uses these directly instead of
embedding the answer text (mAP is rank-based, as the paper's CLAP baselines).
Audio is resampled to 48 kHz; clips longer than the model's window (10 s) are split into
consecutive windows whose embeddings are averaged (deterministic, no random crop).

Weights: `-M model=laion/clap-htsat-unfused` at revision CLAP_REVISION (local cache first,
then a download; offline that fails naming the model and `-M path=DIR`), or `-M path=DIR`.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Literal

from evalkit.models.base import AdapterConfig, Model, single_audio
from evalkit.types import Request, Response

CLAP_MODEL = "laion/clap-htsat-unfused"
#: pinned hub revision (the commit public reproduction scripts use for this model;
#: not re-verified against the hub from this offline environment)
CLAP_REVISION = "8fa0f1c6d0433df6e97c127f64b2a1d6c0dcda8a"

_OPTION = re.compile(r"^\s*\(([A-Z])\)\s*(.+?)\s*$", re.M)
_BULLET = re.compile(r"^\s*[-*•]\s+(.+?)\s*$", re.M)


class CLAPConfig(AdapterConfig):
    model: str = CLAP_MODEL
    revision: str = CLAP_REVISION
    path: str | None = None
    device: str = "cpu"
    mode: Literal["auto", "mcq", "scene", "tagging"] = "auto"
    threshold: float = 0.5
    template: str = "This is a sound of {}."


class CLAPModelError(RuntimeError):
    pass


def _offline() -> bool:
    import os

    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def parse_labels(text: str) -> tuple[list[str], list[str] | None]:
    """(labels, letters or None) from a request text: "(A) x" option lines win over "- x" bullets."""
    opts = _OPTION.findall(text or "")
    if opts:
        return [t for _, t in opts], [letter for letter, _ in opts]
    return [b for b in _BULLET.findall(text or "")], None


class CLAP(Model):
    name = "clap"
    audio_fed = "all"  # consecutive 10 s windows, embeddings averaged
    description = "CLAP zero-shot classifier/tagger (labels parsed from the prompt's option or bullet lines)"
    source = f"transformers ClapModel, {CLAP_MODEL}@{CLAP_REVISION[:10]}"
    capabilities = frozenset({"audio"})
    Config = CLAPConfig
    sample_rate = 48000
    default_batch_size = 8

    def __init__(self, config: CLAPConfig):
        super().__init__(config)
        self._model = None
        self._processor = None
        self._text_cache: dict[str, Any] = {}

    # ------------------------------------------------------------------ loading
    def _load(self):
        if self._model is not None:
            return self._model, self._processor
        try:
            import torch  # noqa: F401
            from transformers import ClapModel, ClapProcessor
        except ImportError:
            raise CLAPModelError("the clap adapter needs torch and transformers: pip install 'evalkit[hf]'") from None
        c = self.config
        if c.path:
            p = Path(c.path).expanduser()
            if not (p / "config.json").is_file():
                raise CLAPModelError(f"-M path={c.path}: no config.json in {p} (expected a saved ClapModel + processor)")
            self._processor = ClapProcessor.from_pretrained(str(p), local_files_only=True)
            self._model = ClapModel.from_pretrained(str(p), local_files_only=True)
        else:
            try:
                self._processor = ClapProcessor.from_pretrained(c.model, revision=c.revision, local_files_only=True)
                self._model = ClapModel.from_pretrained(c.model, revision=c.revision, local_files_only=True)
            except Exception:
                if _offline():
                    raise CLAPModelError(
                        f"CLAP model {c.model!r} (revision {c.revision}) is not in the local Hugging Face cache and "
                        "downloads are off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE). Save the model and processor "
                        "to a folder elsewhere and pass -M path=DIR") from None
                try:
                    self._processor = ClapProcessor.from_pretrained(c.model, revision=c.revision)
                    self._model = ClapModel.from_pretrained(c.model, revision=c.revision)
                except Exception as e:
                    raise CLAPModelError(
                        f"cannot load CLAP model {c.model!r} (revision {c.revision}): not in the local Hugging Face "
                        f"cache and the download failed ({type(e).__name__}: {str(e)[:200]}). Offline, save the "
                        f"model and processor to a folder elsewhere and pass -M path=DIR") from None
        self._model.to(c.device).eval()
        return self._model, self._processor

    def use(self, model, processor) -> CLAP:
        """Use an already-built model and processor (tests, notebooks)."""
        self._model, self._processor = model.eval(), processor
        return self

    # ------------------------------------------------------------------ embeddings
    @staticmethod
    def _pooled(out):
        return out if hasattr(out, "shape") else (getattr(out, "pooler_output", None)
                                                  if getattr(out, "pooler_output", None) is not None else out[0])

    def _text_embeds(self, labels: list[str]):
        import torch

        model, proc = self._load()
        missing = [x for x in dict.fromkeys(labels) if x not in self._text_cache]
        if missing:
            inp = proc.tokenizer([self.config.template.format(x) for x in missing], padding=True,
                                 return_tensors="pt").to(self.config.device)
            with torch.no_grad():
                e = self._pooled(model.get_text_features(input_ids=inp["input_ids"],
                                                         attention_mask=inp["attention_mask"]))
            e = torch.nn.functional.normalize(e.float(), dim=-1).cpu()
            self._text_cache.update(zip(missing, e))
        return torch.stack([self._text_cache[x] for x in labels])

    def _audio_embed(self, x):
        import numpy as np
        import torch

        model, proc = self._load()
        fe = proc.feature_extractor
        win = int(getattr(fe, "nb_max_samples", 480000))
        chunks = [x[i:i + win] for i in range(0, len(x), win)] or [x]
        if len(chunks) > 1 and len(chunks[-1]) < win // 4:  # a short tail adds little but padding
            chunks = chunks[:-1]
        feats = fe([np.asarray(ch, dtype=np.float32) for ch in chunks], sampling_rate=self.sample_rate,
                   return_tensors="pt")
        kw = {"input_features": feats["input_features"].to(self.config.device)}
        if "is_longer" in feats and getattr(model.config.audio_config, "enable_fusion", False):
            kw["is_longer"] = feats["is_longer"].to(self.config.device)
        with torch.no_grad():
            e = self._pooled(model.get_audio_features(**kw))
        e = torch.nn.functional.normalize(e.float(), dim=-1).mean(dim=0)
        return torch.nn.functional.normalize(e, dim=-1).cpu()

    # ------------------------------------------------------------------ generation
    def _mode(self, text: str, letters) -> str:
        if self.config.mode != "auto":
            return self.config.mode
        if letters:
            return "mcq"
        return "tagging" if re.search(r"\bevents?\b", text, re.I) else "scene"

    def generate(self, requests: list[Request]) -> list[Response]:
        import torch

        model, _ = self._load()
        scale = float(model.logit_scale_a.detach().exp()) if hasattr(model, "logit_scale_a") else 1.0
        out = []
        for r in requests:
            t0 = time.perf_counter()
            try:
                text = r.text()
                labels, letters = parse_labels(text)
                if not labels:
                    raise ValueError("no candidate labels in the prompt: CLAP needs option lines '(A) label' "
                                     "or bullet lines '- label'")
                x, _ = single_audio(r).load(self.sample_rate)
                mode = self._mode(text, letters)
                cos = (self._text_embeds(labels) @ self._audio_embed(x)).double()
                if mode == "tagging":
                    probs = torch.sigmoid(scale * (cos - cos.mean()))
                    chosen = [lab for lab, p in zip(labels, probs.tolist()) if p > self.config.threshold]
                    if not chosen:
                        chosen = [labels[int(cos.argmax())]]
                    answer = ", ".join(chosen)
                    scores = dict(zip(labels, (round(v, 6) for v in cos.tolist())))
                    extra = {"mode": mode, "label_scores": scores,
                             "label_probs": dict(zip(labels, (round(v, 6) for v in probs.tolist())))}
                else:
                    probs = torch.softmax(scale * cos, dim=0)
                    best = int(probs.argmax())
                    answer = letters[best] if (mode == "mcq" and letters) else labels[best]
                    extra = {"mode": mode, "label_scores": dict(zip(labels, (round(v, 6) for v in probs.tolist())))}
                out.append(Response(key=r.key, text=answer, latency_s=time.perf_counter() - t0, extra=extra))
            except Exception as e:
                out.append(Response(key=r.key, error=f"{type(e).__name__}: {e}", latency_s=time.perf_counter() - t0))
        return out

    def info(self) -> dict[str, Any]:
        c = self.config
        return {"backend": "transformers", "model": c.path or c.model, "revision": None if c.path else c.revision,
                "device": c.device, "mode": c.mode, "threshold": c.threshold, "template": c.template}

    def close(self) -> None:
        self._model = self._processor = None
        self._text_cache.clear()
