"""Audio language models through Hugging Face transformers, one adapter for all of them.

  evalkit run --model hf -M preset=qwen2-audio --task mmau
  evalkit run --model qwen2-audio --task mmau                  (same thing, preset fixed)
  evalkit run --model hf -M model=<hub id> -M revision=<sha>   (any processor + chat template model)
  ... -M path=DIR                                               (a local snapshot, offline)

Model-specific quirks live in a small declarative `Preset` (principle 2): the model class, the
keyword the processor takes audio under, the sampling rate, how audio parts appear in the chat
template, and whether the processor's own `apply_chat_template` tokenizes (Voxtral). Every prompt
is built with the model's own processor and chat template. Batching, dtype/device, loading and
greedy decoding are shared plumbing (`hf_common`).

Known failures this guards against (../shared/data/PROTOCOLS.md): Qwen2-Audio's processor takes
`audio=`, not `audios=` (with the wrong keyword the audio is silently ignored; the tests hook the
audio tower to prove features reach it); Qwen2.5-Omni samples by default, so `do_sample=False` is
always passed unless temperature > 0, and only the thinker (text output) is loaded.

Revisions: none of the presets pins a hub commit yet (no verified sha was available offline) —
pin before publishing results: `-M revision=<sha>`. The commit actually loaded
(`config._commit_hash`) is recorded in `info()` either way.
"""
from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from evalkit.models.base import Model
from evalkit.models.hf_common import (
    HFLoadError,
    HFLoadOptions,
    Steerable,
    checkpoint_sampling_defaults,
    dtype_name,
    generate_batch,
    import_hf,
    load_pretrained,
    move_inputs,
    resolve_device,
    resolve_dtype,
    resolved_commit,
    to_conversation,
    transformers_version,
    version_at_least,
)
from evalkit.types import Request, Response


@dataclass(frozen=True)
class Preset:
    hub_id: str
    model_class: str  # attribute of `transformers`
    min_transformers: str  # first release that ships model_class
    revision: str | None = None  # pin before publishing results
    #: keyword the processor's __call__ takes audio under; None: the processor's apply_chat_template
    #: tokenizes the conversation and loads the audio itself (Voxtral / mistral-common)
    audio_kwarg: str | None = "audio"
    #: how an audio part appears in the chat-template conversation: "placeholder" = {"type": "audio",
    #: "audio": "<audio i>"} (arrays go to the processor separately); "base64" = {"type": "audio",
    #: "base64": <16-bit WAV>} (read by the processor's apply_chat_template)
    audio_part: Literal["placeholder", "base64"] = "placeholder"
    sample_rate: int = 16000
    system_prompt: str | None = None  # prepended when a request has no system turn; None: the template's default
    multi_audio: bool = True
    #: the chat template renders the whole conversation, audio in any user turn included (a later turn's clip
    #: and the assistant's earlier replies reach the model): --strategy relisten needs it
    multi_turn_audio: bool = True
    #: the checkpoint's generation_config samples by default (greedy is forced anyway; logged in info)
    samples_by_default: bool = False
    extra_generate_kwargs: tuple[tuple[str, Any], ...] = ()
    extra_requirements: str = ""  # named in load errors
    notes: str = ""


PRESETS: dict[str, Preset] = {
    "qwen2-audio": Preset(
        hub_id="Qwen/Qwen2-Audio-7B-Instruct", model_class="Qwen2AudioForConditionalGeneration",
        min_transformers="4.45.0", audio_kwarg="audio",  # NOT `audios=` (lmms-eval PR #1081)
        notes="chat template emits 'Audio i: <|audio_bos|><|AUDIO|><|audio_eos|>' per audio part"),
    "qwen2.5-omni": Preset(
        hub_id="Qwen/Qwen2.5-Omni-7B", model_class="Qwen2_5OmniThinkerForConditionalGeneration",
        min_transformers="4.52.0", audio_kwarg="audio", samples_by_default=True,
        extra_generate_kwargs=(("use_audio_in_video", False),),
        extra_requirements="torchvision",  # Qwen2_5OmniProcessor always builds its video processor
        notes="thinker only (text output, no talker / audio output); weights load from the full checkpoint"),
    "audio-flamingo-3": Preset(
        hub_id="nvidia/audio-flamingo-3-hf", model_class="AudioFlamingo3ForConditionalGeneration",
        min_transformers="5.0.0", audio_kwarg="audio", multi_audio=False, multi_turn_audio=False,
        notes="one audio per prompt (the processor pairs texts and audios 1:1); 30 s windows, <= 10 min"),
    "voxtral-mini": Preset(
        hub_id="mistralai/Voxtral-Mini-3B-2507", model_class="VoxtralForConditionalGeneration",
        min_transformers="4.54.0", audio_kwarg=None, audio_part="base64",
        extra_requirements="mistral-common[audio]",
        notes="tokenized by mistral-common through VoxtralProcessor.apply_chat_template"),
}


class HFAudioConfig(HFLoadOptions):
    model: str | None = None  # hub id; default: the preset's
    preset: str | None = None
    model_class: str | None = None  # override; default: the preset's, else config.architectures[0]
    audio_kwarg: str | None = None  # override of the processor's audio keyword (generic models)
    system_prompt: str | None = None
    #: a clip longer than what the processor passes on (Qwen2-Audio's extractor keeps 30 s): "truncate"
    #: answers from the part it keeps (recorded per sample as audio_seconds_fed); "refuse" makes that
    #: sample an error naming the limit
    long_audio: Literal["truncate", "refuse"] = "truncate"

    @model_validator(mode="after")
    def _check(self):
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))}")
        if self.preset is None and not (self.model or self.path):
            raise ValueError("give -M preset=NAME, -M model=<hub id> or -M path=DIR "
                             f"(presets: {', '.join(sorted(PRESETS))})")
        return self


class LongAudioRefused(ValueError):
    """A clip longer than the processor passes on, with -M long_audio=refuse."""


def _wav_base64(x, sr: int) -> str:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class HFAudioLM(Steerable, Model):
    name = "hf"
    audio_fed = "reported"  # measured on the processor's feature mask (Qwen2-Audio keeps the first 30 s)
    description = "audio LLMs through transformers (presets: " + ", ".join(PRESETS) + ")"
    source = "Hugging Face transformers"
    capabilities = frozenset({"audio", "text", "multi_audio", "multi_turn_audio", "steer"})  # steer: hf_common.Steerable
    Config = HFAudioConfig
    sample_rate = 16000
    default_batch_size = 8
    volatile_args = frozenset({"batch_size", "device"})
    #: set by the per-model subclasses (registry names such as "qwen2-audio")
    fixed_preset: ClassVar[str | None] = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> HFAudioLM:
        return cls(cls.Config(**args))

    def __init__(self, config: HFAudioConfig):
        if self.fixed_preset is not None:
            if config.preset not in (None, self.fixed_preset):
                raise ValueError(f"model {self.name!r} is preset {self.fixed_preset!r}; "
                                 f"use --model hf -M preset={config.preset} for another one")
            config = config.model_copy(update={"preset": self.fixed_preset})
        super().__init__(config)
        c = config
        self.preset: Preset | None = PRESETS[c.preset] if c.preset else None
        p = self.preset
        self.hub_id = c.model or (p.hub_id if p else None)
        self.revision = c.revision or (p.revision if p else None)
        self.audio_kwarg = c.audio_kwarg or (p.audio_kwarg if p else "audio")
        self.system_prompt = c.system_prompt or (p.system_prompt if p else None)
        self.sample_rate = p.sample_rate if p else 16000
        if p is not None:  # a preset narrows the class's capabilities (the runner checks the instance too)
            self.capabilities = frozenset(c for c in type(self).capabilities
                                          if (c != "multi_audio" or p.multi_audio)
                                          and (c != "multi_turn_audio" or (p.multi_audio and p.multi_turn_audio)))
        if c.batch_size:
            self.preferred_batch_size = c.batch_size
        self._model = self._processor = None
        self._device = self._dtype = None
        self._class_name: str | None = c.model_class or (p.model_class if p else None)
        self._last_generation: dict[str, Any] | None = None

    # ------------------------------------------------------------------ loading
    def _model_class(self, transformers, source: str, local: bool):
        name = self._class_name
        if name is None:  # generic: the checkpoint's own architecture
            cfg = load_pretrained(transformers.AutoConfig, source, what="config", hub_id=self.hub_id,
                                  revision=self.revision, trust_remote_code=self.config.trust_remote_code,
                                  local_path=local)
            archs = getattr(cfg, "architectures", None) or []
            if not archs:
                raise HFLoadError(f"{source!r}: config.json names no architecture; pass -M model_class=NAME")
            name = archs[0]
        cls = getattr(transformers, name, None)
        if cls is None:
            need = f" (needs transformers>={self.preset.min_transformers})" if self.preset else ""
            raise HFLoadError(f"transformers {transformers_version()} has no {name}{need}: "
                              f"pip install -U 'transformers{'>=' + self.preset.min_transformers if self.preset else ''}'")
        self._class_name = name
        return cls

    def _load(self):
        if self._model is not None:
            return self._model, self._processor
        torch, transformers = import_hf()
        c, p = self.config, self.preset
        if p is not None and not version_at_least(transformers_version(), p.min_transformers):
            raise HFLoadError(f"preset {c.preset!r} ({p.model_class}) needs transformers>={p.min_transformers}; "
                              f"installed {transformers_version()}: pip install -U 'transformers>={p.min_transformers}'")
        local = bool(c.path)
        source = c.path or self.hub_id
        cls = self._model_class(transformers, source, local)
        self._device = resolve_device(c.device)
        self._dtype = resolve_dtype(c.dtype, self._device)
        common = dict(hub_id=self.hub_id, revision=self.revision, trust_remote_code=c.trust_remote_code,
                      local_path=local)
        try:
            processor = load_pretrained(transformers.AutoProcessor, source, what="processor", **common)
        except HFLoadError as e:
            if p is not None and p.extra_requirements:
                raise HFLoadError(f"{e} (preset {c.preset!r} also needs: pip install '{p.extra_requirements}')") from None
            raise
        kw: dict[str, Any] = {"dtype": self._dtype}
        if c.attn_implementation:
            kw["attn_implementation"] = c.attn_implementation
        model = load_pretrained(cls, source, what="model", **common, **kw)
        model.to(self._device).eval()
        tok = getattr(processor, "tokenizer", None)
        if tok is None:
            raise HFLoadError(f"{source!r}: the processor has no tokenizer; not an audio LLM processor")
        try:
            tok.padding_side = "left"  # batched decoder-only generation
        except Exception:
            pass
        if getattr(tok, "pad_token_id", None) is None and getattr(tok, "eos_token", None) is not None:
            tok.pad_token = tok.eos_token
        self._model, self._processor = model, processor
        return model, processor

    @property
    def processor_sample_rate(self) -> int:
        fe = getattr(self._processor, "feature_extractor", None)
        return int(getattr(fe, "sampling_rate", None) or self.sample_rate)

    # ------------------------------------------------------------------ prompts
    def _conversation(self, r: Request) -> tuple[list[dict], list]:
        self._load()
        p = self.preset
        part = None
        if p is not None and p.audio_part == "base64":
            part = lambda x, sr: {"type": "audio", "base64": _wav_base64(x, sr)}
        conv, audios = to_conversation(r, self.processor_sample_rate, audio_part=part,
                                       system_prompt=self.system_prompt)
        if len(audios) > 1 and "multi_audio" not in self.capabilities:
            raise ValueError(f"{self.config.preset or self.hub_id} takes one audio per prompt; got {len(audios)}")
        return conv, audios

    def _encode(self, convs: list[list[dict]], audios: list[list], suffixes: list[str] | None = None) -> dict[str, Any]:
        """Tokenize a batch with the model's own processor and chat template (`suffixes`: text appended
        after each generation prompt, as the start of the assistant's reply)."""
        _, proc = self._load()
        if self.audio_kwarg is None:  # the processor's apply_chat_template tokenizes and loads audio (Voxtral)
            if any(suffixes or ()):
                raise ValueError(f"{self.config.preset or self.hub_id}: the processor tokenizes the conversation "
                                 "itself, so no text can follow the generation prompt (a steering pair with a "
                                 "\"prompt\" and completions); give the pair without \"prompt\"")
            inputs = proc.apply_chat_template(convs)
        else:
            texts = [proc.apply_chat_template(cv, add_generation_prompt=True, tokenize=False) for cv in convs]
            texts = [t + s for t, s in zip(texts, suffixes)] if suffixes else texts
            flat = [a for per in audios for a in per]
            # pad the texts only: a top-level `padding=True` also reaches the feature extractor, which then
            # pads audio to the longest clip instead of the 30 s window Whisper-style encoders need (AF3)
            kw: dict[str, Any] = {"text": texts, "return_tensors": "pt", "text_kwargs": {"padding": True}}
            if flat:
                kw[self.audio_kwarg] = flat
                kw["sampling_rate"] = self.processor_sample_rate
            inputs = proc(**kw)
        return move_inputs(inputs, self._device, self._dtype)

    # ------------------------------------------------------------------ steering (hf_common.Steerable)
    def _steer_model(self):
        return self._load()[0]

    def _steer_inputs(self, request: Request, continuation: str) -> dict[str, Any]:
        conv, audios = self._conversation(request)
        if audios:
            raise ValueError("steering prompts are text only")
        return self._encode([conv], [[]], [continuation])

    # ------------------------------------------------------------------ generation
    def _fed_seconds(self, inputs: dict[str, Any], prepared: list[tuple[list, list]]) -> list[float | None]:
        """Seconds of audio the model was given per request, measured on the processor's output (the
        feature mask's kept frames x hop / rate): a Whisper-style extractor keeps the first 30 s of a clip
        and drops the rest without a word (Qwen2-Audio). None when the processor reports no mask, or when
        its rows are not one per clip (windowed encoders: AF3 splits a clip into 30 s rows and keeps all)."""
        counts = [len(a) for _, a in prepared]
        mask = next((inputs[k] for k in ("feature_attention_mask", "input_features_mask") if k in inputs), None)
        fe = getattr(self._processor, "feature_extractor", None)
        hop, rate = getattr(fe, "hop_length", None), getattr(fe, "sampling_rate", None)
        if mask is None or not hop or not rate or int(mask.shape[0]) != sum(counts):
            return [None] * len(prepared)
        per_clip = (mask.sum(-1).float() * hop / rate).tolist()
        out, i = [], 0
        for n in counts:
            out.append(round(sum(per_clip[i:i + n]), 3) if n else None)
            i += n
        return out

    def _run(self, reqs: list[Request], prepared: list[tuple[list, list]]) -> list[tuple[str, float | None]]:
        model, proc = self._load()
        inputs = self._encode([c for c, _ in prepared], [a for _, a in prepared])
        fed = self._fed_seconds(inputs, prepared)
        if self.config.long_audio == "refuse":
            sr = self.processor_sample_rate
            for (_, audios), heard in zip(prepared, fed):
                had = sum(len(a) for a in audios) / sr
                if heard is not None and heard < had - 1e-3:
                    # raised for the batch: generate() then answers each request alone, so only this one fails
                    raise LongAudioRefused(f"{self.config.preset or self.hub_id} hears {heard:.1f} s of this "
                                           f"{had:.1f} s audio (its processor's window); -M long_audio=refuse")
        gen = reqs[0].generation
        extra = dict(self.preset.extra_generate_kwargs) if self.preset else {}
        texts, effective = generate_batch(model, proc.tokenizer, inputs, gen, extra_kwargs=extra)
        self._last_generation = effective
        return list(zip(texts, fed))

    @staticmethod
    def _response(r: Request, answer: tuple[str, float | None], latency_s: float) -> Response:
        text, fed = answer
        return Response(key=r.key, text=text, latency_s=latency_s,
                        extra={"audio_seconds_fed": fed} if fed is not None else {})

    def generate(self, requests: list[Request]) -> list[Response]:
        self._load()
        out: dict[str, Response] = {}
        ok: list[tuple[Request, tuple[list, list]]] = []
        for r in requests:  # per-request failures (bad audio, too many clips) fail alone
            try:
                ok.append((r, self._conversation(r)))
            except Exception as e:
                out[r.key] = Response(key=r.key, error=f"{type(e).__name__}: {e}")
        # one generate call per (generation settings, with/without audio) group: processors that pair
        # texts and audios 1:1 cannot take a mixed batch, and settings are per call
        groups: dict[tuple, list[tuple[Request, tuple[list, list]]]] = {}
        for item in ok:
            r, (_, audios) = item
            groups.setdefault((tuple(sorted(r.generation.to_dict().items())), bool(audios)), []).append(item)
        for items in groups.values():
            t0 = time.perf_counter()
            try:
                answers = self._run([r for r, _ in items], [pc for _, pc in items])
                dt = (time.perf_counter() - t0) / len(items)
                for (r, _), answer in zip(items, answers):
                    out[r.key] = self._response(r, answer, dt)
            except Exception as e:
                if len(items) == 1:
                    r = items[0][0]
                    out[r.key] = Response(key=r.key, error=f"{type(e).__name__}: {e}",
                                          latency_s=time.perf_counter() - t0)
                    continue
                for r, pc in items:  # find the one that breaks the batch; the others still answer
                    t1 = time.perf_counter()
                    try:
                        answer = self._run([r], [pc])[0]
                        out[r.key] = self._response(r, answer, time.perf_counter() - t1)
                    except Exception as e1:
                        out[r.key] = Response(key=r.key, error=f"{type(e1).__name__}: {e1}",
                                              latency_s=time.perf_counter() - t1)
        return [out[r.key] for r in requests]

    # ------------------------------------------------------------------ identity
    def info(self) -> dict[str, Any]:
        c, p = self.config, self.preset
        d: dict[str, Any] = {
            "backend": "transformers", "transformers": transformers_version(),
            "preset": c.preset, "model": self.hub_id, "path": c.path,
            "revision": self.revision, "model_class": self._class_name,
            "audio_kwarg": self.audio_kwarg, "sample_rate": self.sample_rate,
            "dtype": dtype_name(self._dtype) if self._dtype is not None else c.dtype,
            "device": self._device or c.device, "attn_implementation": c.attn_implementation,
            "trust_remote_code": c.trust_remote_code,
        }
        if p is not None and p.revision is None and c.revision is None:
            d["revision_note"] = "unpinned: pin before publishing results"
        if self._model is not None:
            try:
                import torch

                d["torch"] = torch.__version__
            except Exception:
                pass
            d["commit"] = resolved_commit(self._model)
            d["checkpoint_generation_defaults"] = checkpoint_sampling_defaults(self._model)
            d["attn_implementation_used"] = getattr(self._model.config, "_attn_implementation", None)
        if p is not None and p.samples_by_default:
            d["sampling_guard"] = "checkpoint samples by default; do_sample=False forced unless temperature > 0"
        if self._last_generation is not None:
            d["generation"] = self._last_generation
        fe = getattr(self._processor, "feature_extractor", None)
        window = getattr(fe, "chunk_length", None)
        d["long_audio"] = {
            "policy": ("truncate: audio past the processor's window is dropped (measured per sample: "
                       "extra.audio_seconds_fed)" if c.long_audio == "truncate" else
                       "refuse: a sample whose audio the processor would cut is an error naming the limit"),
            "window_s": window, "notes": p.notes if p is not None else ""}
        return d

    def close(self) -> None:
        self._model = self._processor = None


# per-model registry names: the adapter with its preset fixed
class Qwen2AudioHF(HFAudioLM):
    name = "qwen2-audio"
    description = "Qwen2-Audio-7B-Instruct (transformers)"
    fixed_preset = "qwen2-audio"


class Qwen25OmniHF(HFAudioLM):
    name = "qwen2.5-omni"
    description = "Qwen2.5-Omni-7B thinker, text output, greedy (transformers)"
    fixed_preset = "qwen2.5-omni"


class AudioFlamingo3HF(HFAudioLM):
    name = "audio-flamingo-3"
    description = "Audio Flamingo 3 (transformers)"
    capabilities = frozenset({"audio", "text", "steer"})
    fixed_preset = "audio-flamingo-3"


class VoxtralMiniHF(HFAudioLM):
    name = "voxtral-mini"
    description = "Voxtral-Mini-3B-2507 (transformers + mistral-common)"
    fixed_preset = "voxtral-mini"


def _fixed_config(fixed: str) -> type[HFAudioConfig]:
    """Subclass configs where -M preset is optional (fixed by the class)."""

    class Fixed(HFAudioConfig):
        preset: str | None = fixed

    Fixed.__name__ = f"HFAudioConfig_{fixed.replace('-', '_').replace('.', '_')}"
    return Fixed


for _cls in (Qwen2AudioHF, Qwen25OmniHF, AudioFlamingo3HF, VoxtralMiniHF):
    _cls.Config = _fixed_config(_cls.fixed_preset)
