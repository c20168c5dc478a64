"""EvA's CED branch: `ced_processor` (aggregator -> LayerNorm -> Linear -> GELU -> Linear, x alpha)
and the fusion of its aligned output into the LLM input at audio-token positions.

State-dict names follow the release under `model.ced_processor.`: `audio_aggregator.*`,
`aggregator_proj_norm.*`, `aggregator_projection.{0,2}.*`, `alpha` (an fp32 scalar, init 0.1).

Ablations (adapter `-M` switches): `ced="off"` masks the CED path entirely; `bands` zeroes
chosen frequency bands before pooling; `gate` overrides alpha. With alpha = 0 or ced off the
fused embeddings equal the backbone's own (the CED term is exactly zero and skipped).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .aggregator import AudioAggregator
from .align import align_to_tokens

PREFIX = "model.ced_processor."


class CEDProcessor(nn.Module):
    def __init__(self, hidden_size: int, input_dim: int = 768, freq_bands: int = 4, n_heads: int = 12,
                 d_ff: int | None = None):
        super().__init__()
        self.audio_aggregator = AudioAggregator(freq_bands, input_dim, n_heads=n_heads, d_ff=d_ff)
        self.aggregator_proj_norm = nn.LayerNorm(input_dim)
        self.aggregator_projection = nn.Sequential(nn.Linear(input_dim, hidden_size), nn.GELU(),
                                                   nn.Linear(hidden_size, hidden_size))
        self.alpha = nn.Parameter(torch.tensor(0.1, dtype=torch.float32))
        self.enabled = True
        self.gate_override: float | None = None
        #: "release": as the release's inference (kimia.py calls the model without ced_valid_lengths, so the
        #: aggregator attends over every CED frame of the clip; only batch padding is masked here, so a clip
        #: scores as it would alone); "training": masked at the valid length (waveform length // 2560), as
        #: the release's training model does. `-M ced_mask=`.
        self.ced_mask: str = "release"

    def keep_alpha_fp32(self) -> CEDProcessor:
        self.alpha.data = self.alpha.data.float()
        return self

    @property
    def effective_alpha(self) -> torch.Tensor:
        if self.gate_override is not None:
            return torch.tensor(float(self.gate_override), dtype=torch.float32, device=self.alpha.device)
        return self.alpha.float()

    @property
    def active(self) -> bool:
        return self.enabled and float(self.effective_alpha.detach()) != 0.0

    def mask_lengths(self, n_time: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The key-padding lengths the aggregator gets: each clip's CED frame count (release) or its valid
        length (training)."""
        if self.ced_mask not in ("release", "training"):
            raise ValueError(f"ced_mask={self.ced_mask!r}: use release or training")
        return n_time if self.ced_mask == "release" else valid

    def forward(self, feat_4, feat_8, feat_last, valid_lengths=None) -> torch.Tensor:
        dt = self.aggregator_proj_norm.weight.dtype
        y = self.audio_aggregator(feat_last.to(dt), feat_4.to(dt), feat_8.to(dt), valid_lengths=valid_lengths)
        y = self.aggregator_projection(self.aggregator_proj_norm(y))
        return (self.effective_alpha * y.float()).to(y.dtype)


def fuse_embeddings(audio_emb: torch.Tensor, text_emb: torch.Tensor, is_audio: torch.Tensor,
                    whisper_emb: list[torch.Tensor | None] | None = None,
                    ced_emb: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """The release's training-model order (modeling_kimia.py):
    at audio positions (audio_emb + whisper + ced) * sqrt(2), elsewhere audio_emb; then + text_emb.

    audio_emb, text_emb: (B, S, H); is_audio: (B, S) bool; whisper_emb[i]: (T_w, H) placed in the
    first min(n_audio, T_w) audio positions of sample i; ced_emb[i]: (n_audio, H) already aligned.
    """
    B = audio_emb.shape[0]
    extra = torch.zeros_like(audio_emb)
    used = False
    for i in range(B):
        pos = torch.nonzero(is_audio[i], as_tuple=False).squeeze(-1)
        if pos.numel() == 0:
            continue
        if whisper_emb is not None and whisper_emb[i] is not None:
            n = min(pos.numel(), whisper_emb[i].shape[0])
            extra[i, pos[:n]] += whisper_emb[i][:n].to(extra.dtype)
            used = True
        if ced_emb is not None and ced_emb[i] is not None:
            extra[i, pos] += ced_emb[i][: pos.numel()].to(extra.dtype)
            used = True
    out = audio_emb
    if used:
        fused = (audio_emb + extra) * math.sqrt(2.0)
        out = torch.where(is_audio.unsqueeze(-1), fused, audio_emb)
    return out + text_emb


def ced_to_tokens(processor: CEDProcessor, hidden: list[torch.Tensor], n_time: torch.Tensor,
                  valid_lengths: torch.Tensor, n_audio: list[int]) -> list[torch.Tensor | None]:
    """CED hidden states (blocks 4, 8, 12) -> per sample (n_audio[i], H) aligned features, or None
    per sample when the CED path is inactive (ced=off or alpha 0)."""
    if not processor.active:
        return [None] * len(n_audio)
    f4, f8, fl = hidden
    proc = processor(f4, f8, fl, valid_lengths=valid_lengths)  # (B, T, H)
    # each sample is aligned from its own time steps only, as if it ran alone
    return [align_to_tokens(proc[i, : int(n_time[i])], n) if n > 0 else None for i, n in enumerate(n_audio)]


def extract_prefixed(sd: dict[str, torch.Tensor], prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def processor_state_dict(processor: CEDProcessor) -> dict[str, torch.Tensor]:
    """The release's names: model.ced_processor.*"""
    return {PREFIX + k: v for k, v in processor.state_dict().items()}


def read_prefixed(source: str | Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Keys under `prefixes` from a .safetensors file or a folder of shards (only those tensors are read:
    a release export holds the whole 7B LLM beside the fusion weights), or a torch file
    (weights_only=True). The prefixes are kept."""
    from .ced import read_state_dict

    p = Path(source).expanduser()
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    if files and all(f.suffix == ".safetensors" for f in files):
        from safetensors import safe_open

        out: dict[str, torch.Tensor] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():  # noqa: SIM118 (safe_open handles have no __iter__)
                    if k.startswith(prefixes):
                        out[k] = fh.get_tensor(k)
        return out
    return read_state_dict(p)


def load_processor_weights(processor: CEDProcessor, source: str | Path | dict[str, torch.Tensor]) -> None:
    from .ced import read_state_dict

    p = None if isinstance(source, dict) else Path(source).expanduser()
    sd = source if p is None else read_prefixed(p, (PREFIX,)) if p.is_dir() else read_state_dict(p)
    sub = extract_prefixed(sd)
    if not sub:
        # a bare ced_processor state dict (no prefix) is accepted too
        sub = {k: v for k, v in sd.items() if k.split(".")[0] in dict(processor.named_children()) or k == "alpha"}
    if not sub:
        raise ValueError(f"no `{PREFIX}*` weights in the EvA checkpoint {source if not isinstance(source, dict) else ''}")
    missing, unexpected = processor.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise ValueError(f"EvA ced_processor weights: missing {missing[:8]}, unexpected {unexpected[:8]}")
    processor.keep_alpha_fp32()
