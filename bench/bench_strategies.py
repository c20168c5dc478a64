"""Calls per sample and wall-time overhead of each inference-time strategy against an instant adapter.

    .venv/bin/python bench/bench_strategies.py [--items 300]

The adapter answers from the prompt at once (no model), so the wall time is evalkit's own cost:
building sub-requests, logging every sub-call to calls.jsonl, voting, writing records. Each
strategy runs into a fresh output folder; figures are the median of 3 repeats."""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from evalkit.models.base import AdapterConfig, Model  # noqa: E402
from evalkit.types import Response  # noqa: E402


class InstantConfig(AdapterConfig):
    pass


class Instant(Model):
    """Names option (A) at once; asks for one segment in the first relisten turn."""

    name = "instant"
    capabilities = frozenset({"audio", "text", "multi_audio"})
    Config = InstantConfig
    default_batch_size = 16

    def generate(self, requests):
        out = []
        for r in requests:
            if "<seg>START,END</seg>" in r.text() and len(r.audio()) == 1:
                out.append(Response(r.key, text="<seg>0.5,1.0</seg>", latency_s=0.0))
            else:
                out.append(Response(r.key, text="Answer: (A)", latency_s=0.0))
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=300)
    args = ap.parse_args()
    os.environ["EVALKIT_TASKS"] = "toy-mcq=plugins:ToyMCQ"
    os.environ["EVALKIT_MODELS"] = "instant=bench_strategies:Instant"
    from evalkit import registry
    from evalkit.engine.runner import RunSpec, run_task

    registry._table.cache_clear()
    tmp = Path(tempfile.mkdtemp(prefix="bench-strategies-"))
    sf.write(tmp / "a.wav", np.zeros(32000, dtype="float32"), 16000)
    items = [{"id": f"s{i}", "audio": "a.wav", "question": f"Q{i}?", "choices": [f"o{j} {i}" for j in range(4)],
              "answer": f"o{i % 4} {i}"} for i in range(args.items)]
    (tmp / "toy.json").write_text(json.dumps(items))
    cases = [("plain", None, {}), ("self-consistency k=5", "self-consistency", {"k": 5}),
             ("audio-permutation", "audio-permutation", {}), ("cot", "cot", {}),
             ("relisten rounds=2", "relisten", {"rounds": 2})]
    rows, base = [], None
    for label, name, opts in cases:
        walls, calls = [], 0
        slug = re.sub(r"\W", "", label)
        for rep in range(3):
            spec = RunSpec(model="instant", task="toy-mcq", task_args={"data": str(tmp / "toy.json")},
                           output=tmp / f"runs-{slug}-{rep}", strategy=name,
                           strategy_options=opts)
            t0 = time.perf_counter()
            res = run_task(spec)
            walls.append(time.perf_counter() - t0)
            calls = res.calls
        wall = statistics.median(walls)
        base = wall if base is None else base
        per_item_ms = (wall - base) / args.items * 1000  # evalkit's added cost per item, over the plain run
        rows.append((label, calls / args.items, wall, wall / base, per_item_ms))
    print(f"{args.items} items, 4 options, instant adapter (median of 3)")
    print(f"{'strategy':24s} {'calls/item':>10s} {'wall s':>8s} {'x plain':>8s} {'+ms/item':>9s}")
    for label, cps, wall, ratio, ms in rows:
        print(f"{label:24s} {cps:10.2f} {wall:8.3f} {ratio:8.2f} {ms:9.3f}")


if __name__ == "__main__":
    main()
