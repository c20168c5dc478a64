"""Kimi-Audio backbone glue for EvA, on stock `transformers` classes (no remote model code).

- Whisper-large-v3 encoder (`transformers` WhisperEncoder), 128-bin log-mel computed here in
  torch (Whisper's recipe: n_fft 400, hop 160, hann, drop the last frame, Slaney filterbank,
  log10, floor at max - 8 per 30 s chunk, (x + 4) / 4). Audio runs in 30 s chunks padded to
  3,000 frames; each chunk keeps token_len * 4 encoder frames, token_len = (L - 1) // 1280 + 1;
  4 consecutive frames are concatenated: (T, 1280) -> (T / 4, 5120) at 12.5 Hz.
- `vq_adaptor`: Linear(5120 -> H), SiLU, Dropout(0), Linear(H -> H), LayerNorm(eps=rms_norm_eps).
- The two-stream prompt (audio stream / text stream) of the release's prompt manager.
- Fusion in the release's training-model order (see fusion.fuse_embeddings) and a greedy /
  sampling decode loop with a KV cache in which each new token's input is
  embed(token) + embed(<|im_kimia_text_blank|>) (the audio stream is blank while text is output).
- The LLM is a stock `Qwen2ForCausalLM` fed with `inputs_embeds`.

Discrete semantic ids: the GLM-4-Voice WhisperVQ tokenizer (`THUDM/glm-4-voice-tokenizer`) is in
`semantic.py`; give KimiEvA a `semantic` tokenizer (load_kimi_eva(semantic_path=...)) and `encode`
stores each clip's codes in `EncodedClip.codes`. Precomputed ids (a `semantic_fn` or the adapter's
`-M semantic_codes=FILE.json`) take precedence; with neither, the path raises NotImplementedError.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .ced import CEDEncoder
from .fusion import CEDProcessor, ced_to_tokens, fuse_embeddings
from .logmel import HOP, slaney_filters, whisper_log_mel

# Kimi-Audio special token ids. media_begin / media_end / text_blank are confirmed (FACTS.md);
# the others are derived from the release's index comments (base 151648 + index) and are
# re-resolved from the real tokenizer when one is loaded (`KimiTokens.from_tokenizer`).
MSG_END = 151648  # <|im_msg_end|>
USER_MSG_START = 151649  # <|im_user_msg_start|>
ASSISTANT_MSG_START = 151650  # <|im_assistant_msg_start|>
MEDIA_BEGIN = 151661  # <|im_media_begin|>
MEDIA_END = 151663  # <|im_media_end|>
TEXT_BLANK = 151666  # <|im_kimia_text_blank|>
TEXT_EOS = 151667  # <|im_kimia_text_eos|>
KIMIA_USER_MSG_START = 151670  # <|im_kimia_user_msg_start|>
KIMIA_ASSISTANT_MSG_START = 151671  # <|im_kimia_assistant_msg_start|>
SPEECH_CT_ID = 151675  # <|im_kimia_speech_ct_id|>
SEMANTIC_OFFSET = 152064  # GLM-4-Voice codes are offset by this in the audio stream
GLM4_VOICE_TOKENIZER = "THUDM/glm-4-voice-tokenizer"

SAMPLES_PER_TOKEN = 1280  # 80 ms at 16 kHz


@dataclass
class KimiTokens:
    msg_end: int = MSG_END
    media_begin: int = MEDIA_BEGIN
    media_end: int = MEDIA_END
    text_blank: int = TEXT_BLANK
    text_eos: int = TEXT_EOS
    user_msg_start: int = KIMIA_USER_MSG_START
    assistant_msg_start: int = KIMIA_ASSISTANT_MSG_START
    speech_ct: int = SPEECH_CT_ID
    semantic_offset: int = SEMANTIC_OFFSET
    extra_stops: tuple[int, ...] = (MSG_END,)

    @classmethod
    def from_tokenizer(cls, tok) -> KimiTokens:
        names = {"msg_end": "<|im_msg_end|>", "media_begin": "<|im_media_begin|>", "media_end": "<|im_media_end|>",
                 "text_blank": "<|im_kimia_text_blank|>", "text_eos": "<|im_kimia_text_eos|>",
                 "user_msg_start": "<|im_kimia_user_msg_start|>",
                 "assistant_msg_start": "<|im_kimia_assistant_msg_start|>", "speech_ct": "<|im_kimia_speech_ct_id|>"}
        kw: dict[str, Any] = {}
        for field_name, s in names.items():
            try:
                v = tok.special_tokens[s] if hasattr(tok, "special_tokens") else tok.convert_tokens_to_ids(s)
            except Exception:
                continue
            if isinstance(v, int) and v >= 0:
                kw[field_name] = v
        t = cls(**kw)
        t.extra_stops = (t.msg_end,)
        return t

    @property
    def stops(self) -> set[int]:
        return {self.text_eos, *self.extra_stops}


# ----------------------------------------------------------------------------- Whisper
class WhisperFrontEnd(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        cfg = encoder.config
        self.n_frames = 2 * cfg.max_source_positions  # 3,000 mel frames for large-v3
        self.chunk_samples = self.n_frames * HOP  # 480,000 samples = 30 s
        self.register_buffer("filters", slaney_filters(cfg.num_mel_bins), persistent=False)

    @torch.no_grad()
    def forward(self, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """List of 1-D waveforms -> list of (token_len_total, 4 * d_model) features."""
        dev = self.filters.device
        dtype = next(self.encoder.parameters()).dtype
        segs, owners, keep = [], [], []
        for i, w in enumerate(waves):
            w = w.float().to(dev).flatten()
            for t0 in range(0, max(w.shape[0], 1), self.chunk_samples):
                seg = w[t0: t0 + self.chunk_samples]
                L = max(int(seg.shape[0]), 1)
                segs.append(F.pad(seg, (0, self.chunk_samples - seg.shape[0])))
                owners.append(i)
                keep.append(((L - 1) // SAMPLES_PER_TOKEN + 1) * 4)
        mel = whisper_log_mel(torch.stack(segs), self.filters).to(dtype)
        h = self.encoder(mel).last_hidden_state  # (N, n_frames / 2, d)
        out: list[list[torch.Tensor]] = [[] for _ in waves]
        for j, i in enumerate(owners):
            out[i].append(h[j, : keep[j]])
        feats = []
        for parts in out:
            x = torch.cat(parts, dim=0)
            feats.append(x.reshape(x.shape[0] // 4, x.shape[1] * 4))
        return feats


def whisper_token_len(n_samples: int, chunk_samples: int = 480000) -> int:
    n, total = max(n_samples, 1), 0
    for t0 in range(0, n, chunk_samples):
        total += (min(chunk_samples, n - t0) - 1) // SAMPLES_PER_TOKEN + 1
    return total


class VQAdaptor(nn.Module):
    def __init__(self, input_dim: int, hidden_size: int, eps: float):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(input_dim, hidden_size), nn.SiLU(), nn.Dropout(0.0),
                                    nn.Linear(hidden_size, hidden_size), nn.LayerNorm(hidden_size, eps=eps))

    def forward(self, x):
        return self.layers(x)


# ----------------------------------------------------------------------------- prompt
@dataclass
class KimiPrompt:
    audio_ids: list[int] = field(default_factory=list)
    text_ids: list[int] = field(default_factory=list)
    is_audio: list[bool] = field(default_factory=list)
    audio_slots: list[int] = field(default_factory=list)  # number of continuous positions per audio part

    def add(self, audio: int, text: int, cont: bool = False) -> None:
        self.audio_ids.append(audio)
        self.text_ids.append(text)
        self.is_audio.append(cont)


def build_prompt(messages: list[dict[str, Any]], encode_text: Callable[[str], list[int]],
                 semantic_ids: Callable[[Any], list[int]], tokens: KimiTokens | None = None) -> KimiPrompt:
    """evalkit chat messages -> the two parallel streams.

    A system message is folded into the next user turn (Kimi has user/assistant roles only).
    A role run starts with its kimia start token (text stream blank); a text part fills the text
    stream and blanks the audio stream; an audio part puts media_begin + semantic ids (+ offset) +
    media_end in the audio stream and blanks in the text stream, and when it ends the run, the
    speech_ct token follows; the run ends with msg_end; then the assistant start token.
    `semantic_ids(audio_ref)` returns the raw GLM-4-Voice codes of one audio part.
    """
    tk = tokens or KimiTokens()
    flat: list[tuple[str, str, Any]] = []
    for m in messages:
        role = "user" if m["role"] in ("user", "system") else m["role"]
        if role not in ("user", "assistant"):
            raise ValueError(f"Kimi-Audio prompts have user/assistant roles, not {m['role']!r}")
        for p in m["content"]:
            flat.append((role, p["type"], p["text"] if p["type"] == "text" else p["audio"]))
    pr = KimiPrompt()
    prev = None
    for i, (role, kind, content) in enumerate(flat):
        ends_run = i == len(flat) - 1 or flat[i + 1][0] != role
        if role != prev:
            pr.add(tk.user_msg_start if role == "user" else tk.assistant_msg_start, tk.text_blank)
        prev = role
        if kind == "text":
            ids = list(encode_text(content))
            for t in ids:
                pr.add(tk.text_blank, t)
            if role == "assistant":
                pr.add(tk.text_blank, tk.text_eos)
        elif kind == "audio":
            codes = [int(c) + tk.semantic_offset for c in semantic_ids(content)]
            pr.add(tk.media_begin, tk.text_blank)
            for c in codes:
                pr.add(c, tk.text_blank, True)
            pr.add(tk.media_end, tk.text_blank)
            pr.audio_slots.append(len(codes))
            if ends_run:
                pr.add(tk.speech_ct, tk.text_blank)
        else:
            raise ValueError(f"unknown content part type {kind!r}")
        if ends_run:
            pr.add(tk.msg_end, tk.text_blank)
    pr.add(tk.assistant_msg_start, tk.text_blank)
    return pr


def no_semantic_tokenizer(_audio) -> list[int]:
    raise NotImplementedError(
        f"Kimi-Audio needs discrete semantic ids from the GLM-4-Voice WhisperVQ tokenizer ({GLM4_VOICE_TOKENIZER}) "
        f"and none is configured: pass -M semantic_path=DIR (a local snapshot of {GLM4_VOICE_TOKENIZER}; evalkit "
        "runs it itself), or precomputed codes with -M semantic_codes=FILE.json "
        "(a JSON object mapping each clip's sha256, path or label to its list of codes).")


# ----------------------------------------------------------------------------- the model
@dataclass
class EncodedClip:
    whisper: torch.Tensor | None  # (T_w, 4 * d_whisper) on device
    ced: list[torch.Tensor] | None  # 3 x (F, T, D) fp32
    ced_valid: int = 0
    n_samples: int = 0
    codes: list[int] | None = None  # raw GLM-4-Voice codes when KimiEvA has a semantic tokenizer


class KimiEvA(nn.Module):
    """Whisper + CED encoders, vq_adaptor, ced_processor and a Qwen2ForCausalLM."""

    def __init__(self, llm: nn.Module, whisper: WhisperFrontEnd | None, ced: CEDEncoder | None,
                 ced_processor: CEDProcessor, vq_adaptor: VQAdaptor, tokens: KimiTokens | None = None,
                 semantic: nn.Module | None = None):
        super().__init__()
        self.semantic = semantic  # semantic.WhisperVQTokenizer (fp32) or None
        self.semantic_enabled = True  # the adapter turns it off when codes come from elsewhere
        self.llm = llm
        self.whisper = whisper
        self.ced = ced
        self.ced_processor = ced_processor
        self.vq_adaptor = vq_adaptor
        self.tokens = tokens or KimiTokens()

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    @torch.no_grad()
    def encode(self, waves: list[torch.Tensor]) -> list[EncodedClip]:
        wh = self.whisper(waves) if self.whisper is not None else [None] * len(waves)
        ced = [None] * len(waves)
        valid = [0] * len(waves)
        if self.ced is not None and self.ced_processor.enabled:
            with torch.autocast(device_type=self.device.type, enabled=False):
                out = self.ced(waves)
            Fq = out.freq_bands
            for i in range(len(waves)):
                T = out.hidden_states[0].shape[1] // Fq
                ced[i] = [h[i].view(Fq, T, -1)[:, : int(out.n_time[i])] for h in out.hidden_states]
                valid[i] = int(out.valid_lengths[i])
        codes: list[list[int] | None] = [None] * len(waves)
        if self.semantic is not None and self.semantic_enabled:
            codes = list(self.semantic.tokenize(waves))
        return [EncodedClip(wh[i], ced[i], valid[i], int(waves[i].shape[-1]), codes[i]) for i in range(len(waves))]

    @torch.no_grad()
    def ced_tokens(self, clips: list[EncodedClip], n_audio: list[int]) -> list[torch.Tensor | None]:
        """Run ced_processor over the clips as one padded batch; align each to its audio slots."""
        if not self.ced_processor.active or not clips or any(c.ced is None for c in clips):
            return [None] * len(clips)
        Fq, _, D = clips[0].ced[0].shape
        T = max(c.ced[0].shape[1] for c in clips)
        hidden = []
        for k in range(3):
            buf = torch.zeros(len(clips), Fq, T, D, device=self.device, dtype=torch.float32)
            for i, c in enumerate(clips):
                buf[i, :, : c.ced[k].shape[1]] = c.ced[k].to(self.device)
            hidden.append(buf.view(len(clips), Fq * T, D))
        n_time = torch.tensor([c.ced[0].shape[1] for c in clips])
        valid = self.ced_processor.mask_lengths(n_time, torch.tensor([c.ced_valid for c in clips]))
        return ced_to_tokens(self.ced_processor, hidden, n_time, valid, n_audio)

    @torch.no_grad()
    def embed(self, prompts: list[KimiPrompt], clips: list[list[EncodedClip]]) -> list[torch.Tensor]:
        """Per request (S_i, H) fused input embeddings. clips[i]: the request's audio parts in order."""
        emb = self.llm.get_input_embeddings()
        flat_clips = [c for cs in clips for c in cs]
        flat_slots = [n for p in prompts for n in p.audio_slots]
        ced_flat = self.ced_tokens(flat_clips, flat_slots)
        out, j = [], 0
        H = emb.weight.shape[1]
        for p, cs in zip(prompts, clips):
            a = torch.tensor([p.audio_ids], device=self.device)
            t = torch.tensor([p.text_ids], device=self.device)
            m = torch.tensor([p.is_audio], device=self.device)
            wh, ce = [], []
            for c, n in zip(cs, p.audio_slots):
                w = self.vq_adaptor(c.whisper.to(self.device, self.dtype)) if c.whisper is not None else None
                wh.append(_fit(w, n, self.dtype, H, self.device))
                ce.append(_fit(ced_flat[j], n, self.dtype, H, self.device))
                j += 1
            # several audio parts: each part's features fill its own slots, laid end to end
            w_cat = torch.cat(wh) if any(x is not None for x in [c.whisper for c in cs]) else None
            c_cat = torch.cat(ce) if any(ced_flat[j - len(cs) + k] is not None for k in range(len(cs))) else None
            out.append(fuse_embeddings(emb(a), emb(t), m, [w_cat], [c_cat])[0])
        return out

    @torch.no_grad()
    def generate_from_embeds(self, embeds: list[torch.Tensor], max_new_tokens: int = 64, temperature: float = 0.0,
                             top_p: float = 1.0, seed: int | None = 0, repetition_penalty: float = 1.0,
                             repetition_window: int = 16) -> list[list[int]]:
        """Batched decode with a KV cache; left padding; stops at text_eos / msg_end. `repetition_penalty` is
        Kimi-Audio's windowed text penalty (`kimia_repetition_penalty`)."""
        from transformers import DynamicCache

        B, H = len(embeds), embeds[0].shape[-1]
        S = max(e.shape[0] for e in embeds)
        x = torch.zeros(B, S, H, device=self.device, dtype=self.dtype)
        mask = torch.zeros(B, S, device=self.device, dtype=torch.long)
        for i, e in enumerate(embeds):
            x[i, S - e.shape[0]:] = e.to(self.dtype)
            mask[i, S - e.shape[0]:] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        emb = self.llm.get_input_embeddings()
        blank = emb(torch.tensor([self.tokens.text_blank], device=self.device))
        gen = torch.Generator(device=self.device)
        if seed is not None:
            gen.manual_seed(seed)
        cache = DynamicCache()
        out = self.llm(inputs_embeds=x, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        ids: list[list[int]] = [[] for _ in range(B)]
        last = pos[:, -1:]
        stops = torch.tensor(sorted(self.tokens.stops), device=self.device)
        history = torch.zeros(B, 0, dtype=torch.long, device=self.device)
        for _ in range(max_new_tokens):
            logits = kimia_repetition_penalty(out.logits[:, -1].float(), history, repetition_penalty,
                                              repetition_window)
            nxt = _pick(logits, temperature, top_p, gen)
            history = torch.cat([history, nxt.unsqueeze(1)], dim=1)
            for i in range(B):
                if not done[i] and not bool(torch.isin(nxt[i], stops)):
                    ids[i].append(int(nxt[i]))
            done |= torch.isin(nxt, stops)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones(B, 1, device=self.device, dtype=mask.dtype)], dim=1)
            last = last + 1
            step = (emb(nxt.unsqueeze(1)) + blank).to(self.dtype)
            out = self.llm(inputs_embeds=step, attention_mask=mask, position_ids=last, past_key_values=out.past_key_values,
                           use_cache=True)
        return ids


def _fit(x: torch.Tensor | None, n: int, dtype, hidden: int, device=None) -> torch.Tensor:
    """x cut or zero-padded to n rows (the release places min(n, len(x)) rows)."""
    if x is None:
        return torch.zeros(n, hidden, dtype=dtype, device=device)
    x = x.to(device=device, dtype=dtype)
    if x.shape[0] >= n:
        return x[:n]
    return F.pad(x, (0, 0, 0, n - x.shape[0]))


def kimia_repetition_penalty(logits: torch.Tensor, history: torch.Tensor, penalty: float, window: int) -> torch.Tensor:
    """Kimi-Audio's text repetition penalty (`kimia_infer/utils/sampler.py`, `sample_text_logits`), per row:
    once more than `window` tokens have been generated, the logits of the last `window` generated tokens are
    divided by `penalty` (multiplied when negative), each token id once. logits (B, V); history (B, i)."""
    if penalty <= 1.0 or history.shape[1] <= window:
        return logits
    recent = history[:, -window:]
    scores = logits.gather(1, recent)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(1, recent, scores)


def _pick(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        keep = sp.cumsum(-1) - sp < top_p
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=gen).squeeze(-1)


# ----------------------------------------------------------------------------- vLLM
def vllm_prompts(embeds: list[torch.Tensor], max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = 0, tokens: KimiTokens | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """What the vLLM path passes (`vllm_path.run_prompts`): EmbedsPrompt-shaped dicts
    ({"prompt_embeds": (S, H)}) and the SamplingParams keyword arguments. Built without vLLM installed."""
    tk = tokens or KimiTokens()
    prompts = [{"prompt_embeds": e.detach()} for e in embeds]
    params = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
              "stop_token_ids": sorted(tk.stops)}
    return prompts, params


def run_vllm(prompts: list[dict[str, Any]], params: dict[str, Any] | list[dict[str, Any]], llm: Any = None,
             tokens: KimiTokens | None = None) -> list[dict[str, Any]]:
    """Run `vllm_prompts()` outputs on a vLLM engine built by `vllm_path.EvAVLLMEngine` (its `.llm`):
    one `llm.generate` call for the whole list; per prompt {"token_ids": [...]} (stops removed) or
    {"error": ...}. The adapter does this with `-M engine=vllm`; see models/eva/vllm_path.py."""
    if llm is None:
        raise ValueError(
            "run_vllm needs an engine: llm=vllm_path.EvAVLLMEngine(kimi_path, ...).llm (a vLLM LLM with "
            "enable_prompt_embeds=True and EvA's Qwen2ForCausalLM subclass, which adds embed(<|im_kimia_text_blank|>) "
            "(token 151666) at decode); build the inputs with models.eva.kimi.vllm_prompts(), or run the adapter "
            "with -M engine=vllm.")
    from .vllm_path import run_prompts

    return run_prompts(llm, prompts, params, stops=tokens.stops if tokens is not None else None)


# ----------------------------------------------------------------------------- loading
def qwen2_config_from_kimi(path: Path, attn_implementation: str = "sdpa"):
    import json

    from transformers import Qwen2Config

    c = json.loads((path / "config.json").read_text())
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "pad_token_id", "bos_token_id",
            "eos_token_id"]
    kw = {k: c[k] for k in keys if k in c}
    cfg = Qwen2Config(**kw, tie_word_embeddings=bool(c.get("tie_word_embeddings", False)))
    if "rope_theta" in c:
        rp = dict(getattr(cfg, "rope_parameters", None) or {"rope_type": "default"})
        rp["rope_theta"] = c["rope_theta"]
        cfg.rope_parameters = rp
    cfg._attn_implementation = attn_implementation
    return cfg, c


def load_kimi_eva(kimi_path: str, ced_path: str, checkpoint: str, device: str, dtype: torch.dtype,
                  attn_implementation: str = "sdpa", trust_remote_code: bool = False,
                  semantic_path: str | None = None) -> tuple[KimiEvA, Any]:
    """Real weights: a local Kimi-Audio-7B-Instruct snapshot (LLM, vq_adaptor, whisper-large-v3/),
    a CED-Base snapshot, the EvA fusion checkpoint and optionally a local THUDM/glm-4-voice-tokenizer
    snapshot (semantic_path; run in fp32). Returns (model, text tokenizer).
    Kimi's text tokenizer is a tiktoken class shipped as code in the snapshot, so loading it
    needs the user's explicit `-M trust_remote_code=true` (the model itself is stock transformers)."""
    if not trust_remote_code:
        raise PermissionError(
            f"Kimi-Audio's text tokenizer in {kimi_path} is custom code (tokenization_kimia.py); evalkit runs "
            "snapshot code only when asked: pass -M trust_remote_code=true after reviewing it")
    from safetensors import safe_open
    from transformers import AutoTokenizer, Qwen2ForCausalLM, WhisperModel

    from .ced import load_ced
    from .fusion import load_processor_weights

    root = Path(kimi_path).expanduser()
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"-M kimi_path={kimi_path}: no config.json (expected a Kimi-Audio-7B-Instruct snapshot)")
    cfg, raw = qwen2_config_from_kimi(root, attn_implementation)
    with torch.device("meta"):
        llm = Qwen2ForCausalLM(cfg)
    vq = VQAdaptor(int(raw.get("kimia_adaptor_input_dim", 5120)), cfg.hidden_size, cfg.rms_norm_eps)
    llm_sd, vq_sd = {}, {}
    for f in sorted(root.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():  # noqa: SIM118 (safe_open handles have no __iter__)
                if k.startswith("model.vq_adaptor."):
                    vq_sd[k[len("model.vq_adaptor."):]] = fh.get_tensor(k)
                elif k.startswith(("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head.")):
                    llm_sd[k] = fh.get_tensor(k).to(dtype)
    if cfg.tie_word_embeddings:
        llm_sd.pop("lm_head.weight", None)
    llm.load_state_dict(llm_sd, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        llm.tie_weights()
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    llm.model.rotary_emb = Qwen2RotaryEmbedding(config=cfg, device=device)  # its buffers were on meta
    left = [n for n, t in list(llm.named_parameters()) + list(llm.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"Kimi-Audio snapshot {root}: weights missing for {left[:8]}")
    llm.to(device).eval()
    vq.load_state_dict(vq_sd)
    whisper = WhisperModel.from_pretrained(str(root / "whisper-large-v3"), dtype=dtype).get_encoder()
    front = WhisperFrontEnd(whisper).to(device).eval()
    ced = load_ced(ced_path, device=device)
    proc = CEDProcessor(cfg.hidden_size)
    load_processor_weights(proc, checkpoint)
    proc = proc.to(device).eval()  # CED branch kept in fp32 (alpha is fp32 by construction)
    tok = AutoTokenizer.from_pretrained(str(root), trust_remote_code=True)  # the user allowed it (checked above)
    semantic = None
    if semantic_path:
        from .semantic import load_semantic_tokenizer

        semantic = load_semantic_tokenizer(semantic_path, device=device)
    model = KimiEvA(llm, front, ced, proc, vq.to(device, dtype).eval(), KimiTokens.from_tokenizer(tok), semantic)
    return model, tok


def encode_text_fn(tok) -> Callable[[str], list[int]]:
    def enc(text: str) -> list[int]:
        try:
            return list(tok.encode(text, bos=False, eos=False))
        except TypeError:
            return list(tok.encode(text, add_special_tokens=False))
    return enc
