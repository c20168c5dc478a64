"""Batching gain of the transformers path (`hf` adapter), tiny random Qwen2-Audio on CPU.

    python bench/bench_hf_batching.py [--n 32] [--new-tokens 16] [--batch 1 8 16] [--device cpu]

Builds the same tiny checkpoint as tests/test_hf_audio.py in a temp dir, loads it through
`-M path=` and times `generate` over N requests (1-3 s clips, prompts of different lengths,
greedy, fixed max_new_tokens) at each batch size. Prints samples/s and the ratio vs batch 1.
Two workloads: audio + text, and text only (the LLM decode path alone). With audio, the tiny
model's time is dominated by per-sample work that batching cannot share on 2 CPU cores (the
Whisper mel front end and the audio encoder always run on 30 s = 3000 frames per clip), so the
gain is small; the text-only table shows the decode-loop gain that batching buys. Real 7B models
on a GPU gain for a different reason (weight reads shared across the batch).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from test_hf_audio import (  # the tests' tiny-model builder
        build_tiny_qwen2_audio,
        clip,
        request,
    )

    from evalkit.models.hf_audio import HFAudioLM

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_qwen2_audio(Path(tmp) / "tiny")
        model = HFAudioLM.from_args({"preset": "qwen2-audio", "path": str(path), "device": args.device})
        words = ["please", "tell", "me", "what", "you", "hear", "in", "this", "short", "recording", "and", "why"]
        print(f"tiny Qwen2-Audio, {args.n} requests, {args.new_tokens} new tokens, device={args.device}, "
              f"torch threads={torch.get_num_threads()}")
        for label, with_audio in (("audio + text", True), ("text only (LLM path alone)", False)):
            reqs = [request(f"r{i}", " ".join(words[: 2 + i % 10]) + "?",
                            clip(i, 1.0 + (i % 3)) if with_audio else None,
                            max_new_tokens=args.new_tokens) for i in range(args.n)]
            model.generate(reqs[:2])  # warm-up (load, first-call allocations)
            for r in reqs:  # decode once up front; time the model path, not soundfile
                for a in r.audio():
                    a.load(model.sample_rate)
            rows = []
            for bs in args.batch:
                t0 = time.perf_counter()
                errors = 0
                for i in range(0, len(reqs), bs):
                    errors += sum(r.error is not None for r in model.generate(reqs[i:i + bs]))
                dt = time.perf_counter() - t0
                rows.append((bs, len(reqs) / dt, dt, errors))
            base = rows[0][1]
            print(f"\n{label}")
            print(f"{'batch':>5} {'samples/s':>10} {'seconds':>8} {'x batch1':>9} {'errors':>6}")
            for bs, sps, dt, err in rows:
                print(f"{bs:>5} {sps:>10.2f} {dt:>8.2f} {sps / base:>9.2f} {err:>6}")


if __name__ == "__main__":
    main()
