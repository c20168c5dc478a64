"""EvA's audio aggregator: frequency-gated pooling, then two cascaded cross-attention blocks.

Gated pooling: the (B, F * T, D) frequency-major CED sequence is viewed as (B, F, T, D); a
gate (LayerNorm -> Linear(D, D/4) -> SiLU -> Linear(D/4, 1), last layer zero-initialised so
the softmax starts uniform) scores each of the F bands per time step; the pooled step is the
softmax-weighted sum over bands. Then two pre-LN blocks (self-attention, cross-attention,
feed-forward D -> 4D -> D with GELU; nn.MultiheadAttention, 12 heads, batch_first, dropout
0.1; LayerNorm eps 1e-12): block 1's queries are the final-layer features attending to block
8's; block 2 attends to block 4's. Key padding masks come from the valid lengths. Parameter
names follow the EvA release (`gate.*`, `aggregator_layer_{1,2}.{attention, crossattention,
intermediate, output, norm1..3}`) so its state dict loads as is.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FusionBlock(nn.Module):
    def __init__(self, d_model: int = 768, n_heads: int = 12, d_ff: int = 3072, dropout: float = 0.1,
                 eps: float = 1e-12):
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.crossattention = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.intermediate = nn.Linear(d_model, d_ff)
        self.output = nn.Linear(d_ff, d_model)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.norm2 = nn.LayerNorm(d_model, eps=eps)
        self.norm3 = nn.LayerNorm(d_model, eps=eps)

    def forward(self, x, memory=None, key_padding_mask=None, memory_key_padding_mask=None):
        h = self.norm1(x)
        x = x + self.dropout(self.attention(h, h, h, key_padding_mask=key_padding_mask, need_weights=False)[0])
        if memory is not None:
            h = self.norm2(x)
            x = x + self.dropout(self.crossattention(h, memory, memory, key_padding_mask=memory_key_padding_mask,
                                                     need_weights=False)[0])
        h = self.norm3(x)
        return x + self.dropout(self.output(self.activation(self.intermediate(h))))


class AudioAggregator(nn.Module):
    def __init__(self, freq_bands: int = 4, d_model: int = 768, n_heads: int = 12, d_ff: int | None = None,
                 dropout: float = 0.1, eps: float = 1e-12):
        super().__init__()
        self.F = freq_bands
        self.D = d_model
        hid = max(32, d_model // 4)
        self.gate = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, hid), nn.SiLU(), nn.Linear(hid, 1))
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.zeros_(self.gate[-1].bias)
        d_ff = d_ff or 4 * d_model
        self.aggregator_layer_1 = FusionBlock(d_model, n_heads, d_ff, dropout, eps)
        self.aggregator_layer_2 = FusionBlock(d_model, n_heads, d_ff, dropout, eps)
        #: ablation: frequency bands whose tokens are zeroed before pooling (-M bands=0,3)
        self.zero_bands: tuple[int, ...] = ()

    def _bands(self, x_flat: torch.Tensor) -> torch.Tensor:
        b, n, d = x_flat.shape
        if n % self.F:
            raise ValueError(f"CED sequence length {n} is not a multiple of {self.F} frequency bands")
        x = x_flat.reshape(b, self.F, n // self.F, d)
        if self.zero_bands:
            keep = torch.ones(self.F, device=x.device, dtype=x.dtype)
            keep[list(self.zero_bands)] = 0
            x = x * keep.view(1, self.F, 1, 1)
        return x.transpose(1, 2)  # (B, T, F, D)

    def band_weights(self, x_flat: torch.Tensor) -> torch.Tensor:
        """Softmax weights over bands, (B, T, F)."""
        return torch.softmax(self.gate(self._bands(x_flat)).squeeze(-1), dim=-1)

    def pool(self, x_flat: torch.Tensor) -> torch.Tensor:
        x = self._bands(x_flat)
        w = torch.softmax(self.gate(x), dim=2)  # (B, T, F, 1)
        return (w * x).sum(dim=2)

    @staticmethod
    def padding_mask(valid_lengths: torch.Tensor | None, T: int, device) -> torch.Tensor | None:
        if valid_lengths is None:
            return None
        lens = valid_lengths.to(device).clamp(min=1, max=T)
        return torch.arange(T, device=device).unsqueeze(0) >= lens.unsqueeze(1)  # True = padding

    def forward(self, feat_last, feat_4, feat_8, valid_lengths=None):
        q, k8, k4 = self.pool(feat_last), self.pool(feat_8), self.pool(feat_4)
        mask = self.padding_mask(valid_lengths, q.shape[1], q.device)
        out = self.aggregator_layer_1(q, k8, key_padding_mask=mask, memory_key_padding_mask=mask)
        return self.aggregator_layer_2(out, k4, key_padding_mask=mask, memory_key_padding_mask=mask)


def parse_bands(spec: str | Sequence[int] | None, n_bands: int = 4) -> tuple[int, ...]:
    if spec is None or spec == "" or spec == ():
        return ()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = tuple(sorted({int(i) for i in items if str(i).strip() != ""}))
    bad = [i for i in out if not 0 <= i < n_bands]
    if bad:
        raise ValueError(f"bands={spec!r}: band indices must be in 0..{n_bands - 1}")
    return out
