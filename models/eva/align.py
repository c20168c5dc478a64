"""Time-aware alignment of the 160 ms CED sequence onto the 80 ms LLM audio-token timeline.

CED token j of chunk s covers mel frames [s*L + 16j, s*L + 16j + 15] (L = 1012, 63 tokens per
chunk) and is centred at s*L + 16j + 8; LLM audio token k is centred at mel frame 8k + 4.
Each target takes its two neighbouring CED tokens (torch.searchsorted), interpolates linearly,
and weights each neighbour by its coverage (the fraction of its 16-frame window inside the
T_mel real frames, clamped at 0), renormalised by the interpolated coverage. As in the EvA
release the interpolation weight is not clamped: targets before the first CED centre (k = 0)
or after the last extrapolate linearly from the two end tokens. One CED feature is repeated.
Fully vectorised (no Python loop over frames): the blend is one `embedding_bag` over the
(left, right) neighbour pairs with per-pair weights, so each output row is written once (the
gather-then-add form wrote and re-read every row three times, and ran 4-5x slower).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ced_centres(n_tokens: int, chunk_frames: int = 1012, stride: int = 16, window: int = 16, device=None):
    per_chunk = (chunk_frames - window) // stride + 1  # 63
    idx = torch.arange(n_tokens, device=device)
    start = (idx // per_chunk) * chunk_frames + (idx % per_chunk) * stride
    return start, start + window - 1, start + window // 2


def neighbours_and_weights(T_c: int, n_target: int, t_mel: int | None = None, chunk_frames: int = 1012,
                           stride: int = 16, window: int = 16, step_mel: int = 8, centre_mel: int = 4,
                           eps: float = 1e-8, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """For T_c >= 2 CED tokens and n_target LLM tokens: (index (n_target, 2): the left and right CED
    neighbours of each target; weights (n_target, 2), fp32)."""
    t_mel = n_target * step_mel if t_mel is None else t_mel
    start, end, centre = ced_centres(T_c, chunk_frames, stride, window, device)
    cov = (torch.clamp(end, max=t_mel - 1) - start + 1).clamp(min=0) / window
    t_w = torch.arange(n_target, device=device) * step_mel + centre_mel
    right = torch.searchsorted(centre, t_w).clamp(1, T_c - 1)
    left = right - 1
    a = (t_w - centre[left]).float() / ((centre[right] - centre[left]).float() + eps)
    c_l, c_r = cov[left], cov[right]
    den = (1 - a) * c_l + a * c_r + eps
    return torch.stack((left, right), dim=1), torch.stack(((1 - a) * c_l / den, a * c_r / den), dim=1)


def align_to_tokens(x: torch.Tensor, n_target: int, t_mel: int | None = None, chunk_frames: int = 1012,
                    stride: int = 16, window: int = 16, step_mel: int = 8, centre_mel: int = 4,
                    eps: float = 1e-8) -> torch.Tensor:
    """x: (T_c, H) CED-rate features -> (n_target, H). t_mel defaults to n_target * step_mel
    (what the EvA release passes)."""
    T_c, H = x.shape
    if n_target <= 0:
        return x.new_zeros(0, H)
    if T_c <= 1:
        return x[:1].expand(n_target, H)
    index, weights = neighbours_and_weights(T_c, n_target, t_mel, chunk_frames, stride, window, step_mel,
                                            centre_mel, eps, x.device)
    # one fused gather-and-sum over the features; the weights are fp32 whatever x's dtype, cast once
    return F.embedding_bag(index, x, per_sample_weights=weights.to(x.dtype), mode="sum")
