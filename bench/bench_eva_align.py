"""CPU cost of EvA's time-aware alignment for 10 minutes of audio (target: < 5 ms).

10 min = 600 s -> 3,750 CED steps (160 ms; 60 chunks of 63 steps, rounded up) projected to
H = 3584, aligned onto 7,500 LLM audio tokens (80 ms). Run: python bench/bench_eva_align.py
"""
from __future__ import annotations

import math
import time

import torch

from evalkit.models.eva.align import align_to_tokens, neighbours_and_weights


def gather_blend(x: torch.Tensor, n_target: int):
    """Baseline: the same neighbours and weights, blended the straightforward way (two row gathers, a
    multiply and an add: the form align.py used before its single embedding_bag)."""
    index, weights = neighbours_and_weights(x.shape[0], n_target)
    left, right = index[:, 0], index[:, 1]
    w_l, w_r = weights[:, :1].to(x.dtype), weights[:, 1:].to(x.dtype)

    def blend() -> torch.Tensor:
        return x.index_select(0, left).mul_(w_l).addcmul_(x.index_select(0, right), w_r)

    return blend


def main(seconds: float = 600.0, hidden: int = 3584, repeats: int = 20) -> float:
    torch.manual_seed(0)
    chunks = math.ceil(seconds / 10.12)
    x = torch.randn(chunks * 63, hidden)
    n_tokens = int(seconds * 12.5)
    align_to_tokens(x, n_tokens)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        align_to_tokens(x, n_tokens)
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2] * 1e3
    base = gather_blend(x, n_tokens)
    assert torch.allclose(base(), align_to_tokens(x, n_tokens), atol=1e-5)  # the baseline computes the same
    btimes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        base()
        btimes.append(time.perf_counter() - t0)
    bmed = sorted(btimes)[len(btimes) // 2] * 1e3
    print(f"align {x.shape[0]} CED steps x {hidden} -> {n_tokens} tokens ({seconds / 60:.0f} min audio), "
          f"{torch.get_num_threads()} threads: median {med:.2f} ms, min {min(times) * 1e3:.2f} ms; "
          f"two-gather baseline (blend only) median {bmed:.2f} ms: {bmed / med:.1f}x")
    # the index arithmetic alone (what the alignment adds beyond reading the features)
    small = torch.randn(chunks * 63, 1)
    t0 = time.perf_counter()
    for _ in range(repeats):
        align_to_tokens(small, n_tokens)
    print(f"  index/weights only (H=1): {(time.perf_counter() - t0) / repeats * 1e3:.3f} ms")
    return med


if __name__ == "__main__":
    main(hidden=768)  # CED width (before projection)
    main(hidden=3584)  # Kimi hidden size, for scale: ~107 MB written per call (memory-bound)
