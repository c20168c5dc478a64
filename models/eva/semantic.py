"""GLM-4-Voice speech tokenizer (HF `THUDM/glm-4-voice-tokenizer`, "WhisperVQ") in evalkit's own torch code.

Kimi-Audio puts these discrete semantic codes (plus 152,064) in the audio stream of its prompt,
one per 80 ms. Written from a reading of GitHub THUDM/GLM-4-Voice at eb00ce9 (the commit Kimi-Audio
pins as its `kimia_infer/models/tokenizer/glm4` submodule): `speech_tokenizer/modeling_whisper.py`
(WhisperVQEncoder), `speech_tokenizer/configuration_whisper.py` (WhisperVQConfig) and
`speech_tokenizer/utils.py` (`extract_speech_token`); Kimi-Audio's `glm4_tokenizer.py` calls
`WhisperVQEncoder.from_pretrained(path)` and `extract_speech_token` on one utterance.

Pipeline (one clip):
- 16 kHz audio is cut into consecutive, non-overlapping 30 s segments (480,000 samples; here
  `2 * max_source_positions * hop`, which is 30 s for the real config).
- Every segment of a clip is zero-padded to the clip's longest segment rounded up to a multiple of
  `2 * pooling_kernel_size * hop` = 1,280 samples (upstream: WhisperFeatureExtractor with
  padding="longest", pad_to_multiple_of=1280 over the clip's segments) and a sample mask is kept.
- Whisper log-mel (128 bins, n_fft 400, hop 160, hann, centred reflect STFT, last frame dropped,
  Slaney filters, log10, floor at max - 8 per segment, (x + 4) / 4): `logmel.whisper_log_mel`.
  Frame mask = sample mask[::160].
- conv1 (k 3, stride 1) + GELU, conv2 (k 3, stride 2) + GELU; both causal (left pad 2) when
  `encoder_causal_convolution`, else symmetric pad 1. Mask[::2]. Plus learned positions.
- The first `quantize_position` (16) pre-LN Whisper encoder layers (k_proj has no bias; exact GELU;
  LayerNorm eps 1e-5). Attention mask: key padding, and with `quantize_causal_block_size` (200) a
  block-causal mask (a query sees every earlier frame and its whole 200-frame block, i.e. 4 s of
  look-ahead at most); fully causal when `encoder_causal_attention` / `quantize_causal_encoder`
  (upstream then passes no padding mask; padding only ever follows the valid frames, so the valid
  outputs are the same).
- After layer `pooling_position` (16): zero-pad time to a multiple of 4, AvgPool1d(4) (stride 4;
  the padded tail and masked frames are averaged in, as upstream), mask[::4] -> 12.5 Hz.
- After layer `quantize_position` (16): nearest codebook row by squared L2 distance
  (||c||^2 + ||x||^2 - 2 x.c, argmin), no normalisation (the EMA options only train the codebook).
- Valid codes: mask[::160][::2][::4], i.e. ceil(n / 1280) codes per segment; segments concatenated.

Batching: segments of different clips are padded at the frame level (masked) and run together; a
clip's own padding is the one it gets alone, so batching never changes its codes (tested).

Weights (safetensors; `normalize_semantic_state_dict`): `conv1.{weight,bias}`, `conv2.{weight,bias}`,
`embed_positions.weight`, `codebook.weight`, `layers.{i}.self_attn.{q_proj,v_proj,out_proj}.{weight,bias}`,
`layers.{i}.self_attn.k_proj.weight`, `layers.{i}.{self_attn_layer_norm,final_layer_norm,fc1,fc2}.{weight,bias}`
for i < quantize_position. A `model.encoder.` prefix (WhisperVQForConditionalGeneration layout) is
stripped; `ema_count`, `ema_weight`, `embed_positions2.weight` (used only after the quantizer),
`layer_norm.*` and layers >= quantize_position are ignored.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

GLM4_VOICE_TOKENIZER = "THUDM/glm-4-voice-tokenizer"

IGNORED_KEYS = ("ema_count", "ema_weight", "embed_positions2.weight")


@dataclass
class SemanticConfig:
    """Field names are those of the snapshot's config.json (WhisperVQConfig). The defaults are the
    published tokenizer's values as quoted by third-party copies of its config.json (unverified here);
    `from_dict` fills keys missing from a config.json with the upstream class defaults instead."""
    d_model: int = 1280
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    num_mel_bins: int = 128
    max_source_positions: int = 1500
    activation_function: str = "gelu"
    quantize_position: int = 16  # encoder layers that run before the quantizer
    quantize_vocab_size: int | None = 16384
    pooling_position: int = 16
    pooling_kernel_size: int | None = 4
    pooling_type: str = "avg"
    quantize_causal_block_size: int | None = 200
    encoder_causal_attention: bool = False
    quantize_causal_encoder: bool = False
    encoder_causal_convolution: bool = True
    layer_norm_eps: float = 1e-5  # torch nn.LayerNorm default, as upstream
    # feature extractor (preprocessor_config.json)
    sampling_rate: int = 16000
    hop_length: int = 160
    n_fft: int = 400

    # upstream defaults (WhisperVQConfig / WhisperConfig) for keys a config.json leaves out
    UPSTREAM_DEFAULTS: ClassVar[dict[str, Any]] = {
        "d_model": 256, "encoder_attention_heads": 4, "encoder_ffn_dim": 1536, "num_mel_bins": 80,
        "max_source_positions": 1500, "activation_function": "gelu", "quantize_position": 16,
        "quantize_vocab_size": None, "pooling_position": 0, "pooling_kernel_size": None, "pooling_type": "max",
        "quantize_causal_block_size": None, "encoder_causal_attention": False, "quantize_causal_encoder": False,
        "encoder_causal_convolution": False,
    }

    @classmethod
    def from_dict(cls, d: dict[str, Any], preprocessor: dict[str, Any] | None = None) -> SemanticConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: d.get(k, v) for k, v in cls.UPSTREAM_DEFAULTS.items()}
        kw.update({k: v for k, v in d.items() if k in names and k not in kw})
        for src, dst in (("sampling_rate", "sampling_rate"), ("hop_length", "hop_length"), ("n_fft", "n_fft")):
            if preprocessor and src in preprocessor:
                kw[dst] = int(preprocessor[src])
        if preprocessor and "feature_size" in preprocessor and int(preprocessor["feature_size"]) != kw["num_mel_bins"]:
            raise ValueError(f"preprocessor feature_size {preprocessor['feature_size']} != num_mel_bins {kw['num_mel_bins']}")
        return cls(**kw)

    @property
    def pool(self) -> int:
        k = self.pooling_kernel_size
        return int(k) if k and 1 <= self.pooling_position <= self.quantize_position else 1

    @property
    def samples_per_code(self) -> int:
        """conv2 stride (2) * pooling * hop = 1,280 samples (80 ms, 12.5 Hz) for the real config."""
        return 2 * self.pool * self.hop_length

    @property
    def chunk_samples(self) -> int:
        """Segment length: 2 * max_source_positions mel frames (30 s = 480,000 samples for the real model)."""
        return 2 * self.max_source_positions * self.hop_length

    @property
    def causal_attention(self) -> bool:
        # every layer kept here is below quantize_position, so quantize_causal_encoder applies to all
        return bool(self.encoder_causal_attention or self.quantize_causal_encoder)


def _activation(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unsupported activation_function {name!r}")


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model {d} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = (p(x).view(B, T, self.heads, D // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # scale head_dim ** -0.5
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class _EncoderLayer(nn.Module):
    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = _Attention(d, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(d, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.act = _activation(cfg.activation_function)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), allowed)
        return x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))


def attention_allowed(mask: torch.Tensor, block: int | None, causal: bool) -> torch.Tensor:
    """(B, T) valid-frame mask -> (B, 1, T, T) bool, True where a query may attend to a key.
    causal: lower triangle only. block: (lower triangle | block diagonal of `block`-frame blocks)
    and valid keys. Otherwise: valid keys."""
    B, T = mask.shape
    idx = torch.arange(T, device=mask.device)
    if causal:
        return (idx[None, :] <= idx[:, None]).expand(B, 1, T, T)
    keys = mask.bool()[:, None, None, :]
    if block:
        same = (idx[:, None] // block) == (idx[None, :] // block)
        return ((idx[None, :] <= idx[:, None]) | same)[None, None] & keys
    return keys.expand(B, 1, T, T)


def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (...) index of the codebook row at the smallest squared L2 distance, computed as
    ||c||^2 + ||x||^2 - 2 x.c (the expansion upstream uses)."""
    flat = x.reshape(-1, codebook.shape[1])
    base = (codebook ** 2).sum(1)[None, :] + (flat ** 2).sum(1, keepdim=True)
    dist = torch.addmm(base, flat, codebook.t(), beta=1.0, alpha=-2.0)
    return dist.argmin(dim=1).reshape(x.shape[:-1])


class WhisperVQTokenizer(nn.Module):
    """The WhisperVQ encoder up to its quantizer. `tokenize(waves)` -> codes per clip."""

    def __init__(self, cfg: SemanticConfig | None = None, max_batch: int = 16):
        super().__init__()
        from .logmel import slaney_filters

        cfg = cfg or SemanticConfig()
        if not cfg.quantize_vocab_size:
            raise ValueError("not a WhisperVQ tokenizer config: quantize_vocab_size is unset")
        if cfg.quantize_position < 1:
            raise ValueError("quantize_position must be >= 1")
        if cfg.pool > 1 and cfg.pooling_type not in ("avg", "max"):
            raise NotImplementedError(f"pooling_type {cfg.pooling_type!r}")
        if cfg.n_fft != 400 or cfg.hop_length != 160:
            raise NotImplementedError("only Whisper's n_fft 400 / hop 160 front end is implemented")
        self.cfg = cfg
        self.max_batch = max_batch
        d = cfg.d_model
        pad = 0 if cfg.encoder_causal_convolution else 1
        self.conv1 = nn.Conv1d(cfg.num_mel_bins, d, kernel_size=3, padding=pad)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=pad)
        self.embed_positions = nn.Embedding(cfg.max_source_positions, d)
        self.layers = nn.ModuleList(_EncoderLayer(cfg) for _ in range(cfg.quantize_position))
        self.codebook = nn.Embedding(cfg.quantize_vocab_size, d)
        self.register_buffer("filters", slaney_filters(cfg.num_mel_bins), persistent=False)

    # -------------------------------------------------------------- model
    def _conv(self, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.encoder_causal_convolution:
            x = F.pad(x, (conv.kernel_size[0] - 1, 0))  # causal: left pad (kernel - 1) * dilation
        return F.gelu(conv(x))

    def hidden(self, features: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_mels, T) log-mel and (B, T) frame mask -> the quantizer's input (B, T', D) and its mask."""
        cfg = self.cfg
        x = self._conv(self.conv2, self._conv(self.conv1, features)).transpose(1, 2)
        T = x.shape[1]
        if cfg.max_source_positions < T:
            raise ValueError(f"segment has {T} frames after the convolutions; at most {cfg.max_source_positions}")
        x = x + self.embed_positions.weight[:T]
        mask = frame_mask[:, ::2][:, :T]
        block = cfg.quantize_causal_block_size
        allowed = attention_allowed(mask, block, cfg.causal_attention)
        for i, layer in enumerate(self.layers):
            x = layer(x, allowed)
            if i + 1 == cfg.pooling_position and cfg.pool > 1:
                k = cfg.pool
                y = x.transpose(1, 2)
                if y.shape[-1] % k:
                    y = F.pad(y, (0, k - y.shape[-1] % k))
                y = F.avg_pool1d(y, k) if cfg.pooling_type == "avg" else F.max_pool1d(y, k)
                x = y.transpose(1, 2)
                mask = mask[:, ::k]
                allowed = attention_allowed(mask, block // k if block else None, cfg.causal_attention)
        return x, mask

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (B, T') code ids and (B, T') bool mask of the valid ones."""
        h, mask = self.hidden(features, frame_mask)
        return nearest_code(h, self.codebook.weight), mask.bool()

    # -------------------------------------------------------------- audio -> codes
    def segments(self, wave: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One clip -> [(padded segment samples, sample mask)], as upstream pads one utterance's segments."""
        w = wave.reshape(-1).float()
        n, C, S = int(w.shape[0]), self.cfg.chunk_samples, self.cfg.samples_per_code
        if n == 0:
            return []  # upstream yields no segment, hence no code, for empty audio
        pieces = [w[t: t + C] for t in range(0, n, C)]
        P = math.ceil(max(int(p.shape[0]) for p in pieces) / S) * S
        out = []
        for p in pieces:
            m = torch.zeros(P, dtype=torch.bool, device=w.device)
            m[: p.shape[0]] = True
            out.append((F.pad(p, (0, P - p.shape[0])), m))
        return out

    def features(self, samples: torch.Tensor, sample_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, P) equal-length padded segments -> (N, n_mels, P // hop) log-mel and (N, P // hop) frame mask."""
        from .logmel import whisper_log_mel

        hop = self.cfg.hop_length
        mel = whisper_log_mel(samples.float(), self.filters)
        fmask = sample_mask[:, ::hop][:, : mel.shape[-1]]
        return mel, fmask

    @torch.no_grad()
    def tokenize(self, waves: Sequence[torch.Tensor]) -> list[list[int]]:
        """16 kHz waveforms -> per clip the list of raw codes (0 .. quantize_vocab_size - 1) at 12.5 Hz."""
        dev = self.filters.device
        dtype = self.codebook.weight.dtype
        segs: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (clip, order, mel, frame mask)
        by_len: dict[int, list[tuple[int, int, torch.Tensor, torch.Tensor]]] = {}
        for i, w in enumerate(waves):
            for j, (s, m) in enumerate(self.segments(torch.as_tensor(w).to(dev))):
                by_len.setdefault(int(s.shape[0]), []).append((i, j, s, m))
        for items in by_len.values():  # log-mel per padded length (the floor is per segment)
            mel, fm = self.features(torch.stack([s for _, _, s, _ in items]), torch.stack([m for *_, m in items]))
            segs += [(i, j, mel[k], fm[k]) for k, (i, j, _, _) in enumerate(items)]
        segs.sort(key=lambda s: (s[2].shape[-1], s[0], s[1]))
        codes: dict[tuple[int, int], list[int]] = {}
        with torch.autocast(device_type=dev.type, enabled=False):
            for b0 in range(0, len(segs), max(1, self.max_batch)):
                batch = segs[b0: b0 + self.max_batch]
                T = max(s[2].shape[-1] for s in batch)
                x = torch.zeros(len(batch), self.cfg.num_mel_bins, T, device=dev, dtype=dtype)
                fm = torch.zeros(len(batch), T, device=dev, dtype=torch.bool)
                for k, (_, _, mel, m) in enumerate(batch):
                    x[k, :, : mel.shape[-1]] = mel.to(dtype)
                    fm[k, : m.shape[0]] = m
                ids, mask = self(x, fm)
                for k, (i, j, _, _) in enumerate(batch):
                    codes[(i, j)] = ids[k][mask[k]].tolist()
        out: list[list[int]] = [[] for _ in waves]
        for (i, j) in sorted(codes):
            out[i].extend(codes[(i, j)])
        return out


def semantic_code_count(n_samples: int, cfg: SemanticConfig | None = None) -> int:
    """Number of codes for n samples: ceil(segment / 1280) summed over the 30 s segments."""
    cfg = cfg or SemanticConfig()
    C, S = cfg.chunk_samples, cfg.samples_per_code
    return sum(math.ceil(min(C, n_samples - t) / S) for t in range(0, max(n_samples, 0), C))


# ----------------------------------------------------------------------------- weights
def normalize_semantic_state_dict(sd: dict[str, torch.Tensor], cfg: SemanticConfig) -> dict[str, torch.Tensor]:
    """Checkpoint keys -> WhisperVQTokenizer keys (see the module docstring)."""
    if any(k.startswith("model.encoder.") for k in sd):
        sd = {k[len("model.encoder."):]: v for k, v in sd.items() if k.startswith("model.encoder.")}
    out = {}
    for k, v in sd.items():
        if k in IGNORED_KEYS or k.startswith("layer_norm."):
            continue
        if k.startswith("layers.") and int(k.split(".")[1]) >= cfg.quantize_position:
            continue
        out[k] = v
    return out


def load_semantic_tokenizer(path: str | Path | None, device: str | torch.device = "cpu",
                            max_batch: int = 16) -> WhisperVQTokenizer:
    """A local snapshot folder of THUDM/glm-4-voice-tokenizer (config.json, model*.safetensors,
    optionally preprocessor_config.json). Nothing is downloaded. Runs in float32, as upstream."""
    hint = (f"expected a local snapshot of {GLM4_VOICE_TOKENIZER} (config.json + model*.safetensors), "
            f"passed as -M semantic_path=DIR")
    if not path:
        raise FileNotFoundError(f"no GLM-4-Voice tokenizer given: {hint}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"-M semantic_path={path}: no such folder; {hint}")
    files = sorted(root.glob("model*.safetensors"))
    if not (root / "config.json").is_file() or not files:
        raise FileNotFoundError(f"-M semantic_path={path}: config.json or model*.safetensors missing; {hint}")
    pre_path = root / "preprocessor_config.json"
    pre = json.loads(pre_path.read_text()) if pre_path.is_file() else None
    cfg = SemanticConfig.from_dict(json.loads((root / "config.json").read_text()), pre)
    model = WhisperVQTokenizer(cfg, max_batch=max_batch)
    from safetensors import safe_open

    raw: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            names = list(fh.keys())
            keep = set(normalize_semantic_state_dict(dict.fromkeys(names), cfg))  # type: ignore[arg-type]
            for k in names:
                name = k.removeprefix("model.encoder.")
                if name in keep:
                    raw[name] = fh.get_tensor(k).float()
    missing, unexpected = model.load_state_dict(raw, strict=False)
    if missing or unexpected:
        raise ValueError(f"GLM-4-Voice tokenizer weights in {root}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    return model.to(device).float().eval()
