"""CPU cost of EvA's time-aware alignment for 10 minutes of audio (target: < 5 ms).

10 min = 600 s -> 3,750 CED steps (160 ms; 60 chunks of 63 steps, rounded up) projected to
H = 3584, aligned onto 7,500 LLM audio tokens (80 ms). Run: python bench/bench_eva_align.py
"""
from __future__ import annotations

import math
import time

import torch

from evalkit.models.eva.align import align_to_tokens


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
    print(f"align {x.shape[0]} CED steps x {hidden} -> {n_tokens} tokens ({seconds / 60:.0f} min audio), "
          f"{torch.get_num_threads()} threads: median {med:.2f} ms, min {min(times) * 1e3:.2f} ms")
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
