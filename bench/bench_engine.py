"""Engine overhead: a 10,000-sample MCQ run against an in-process instant adapter.

Prints samples/s for run + score + write (target >= 2,000/s on one core) and the
time of a full re-run of the finished run (target < 2 s, zero model calls).
Usage: python bench/bench_engine.py [N]
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from common import register

from evalkit.engine.runner import RunSpec, run_task
from evalkit.models.base import AdapterConfig, Model
from evalkit.types import Response


class Instant(Model):
    name = "bench-instant"
    capabilities = frozenset({"text"})
    Config = AdapterConfig
    default_batch_size = 64

    def __init__(self, config):
        super().__init__(config)
        self.calls = 0

    def generate(self, requests):
        self.calls += len(requests)
        return [Response(r.key, text=f"The answer is ({'ABCD'[i % 4]}).", latency_s=0.0)
                for i, r in enumerate(requests)]


def main(n: int = 10_000) -> None:
    register({"bench-json-text-mcq": "common:TextJsonMCQ"}, {"bench-instant": f"{__name__}:Instant"})
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.json"
        data.write_text(json.dumps([{"id": f"q{i}", "q": f"Question number {i}?", "c": [f"choice {j}" for j in range(4)],
                                     "a": i % 4, "meta": {"axis": ["perception", "reasoning"][i % 2], "category": f"c{i % 7}"}}
                                    for i in range(n)]))
        spec = RunSpec(model="bench-instant", task="bench-json-text-mcq", task_args={"data": str(data)},
                       output=Path(tmp) / "runs")
        from evalkit.engine.runner import ModelHolder

        holder = ModelHolder("bench-instant", {})
        t0 = time.perf_counter()
        res = run_task(spec, holder)
        first = time.perf_counter() - t0
        holder2 = ModelHolder("bench-instant", {})
        t0 = time.perf_counter()
        again = run_task(spec, holder2)
        rerun = time.perf_counter() - t0
        print(f"engine: {n} samples, run+score+write {first:.2f} s = {n / first:,.0f} samples/s "
              f"(target >= 2,000/s); records={res.run['counts']['records']}")
        print(f"re-run of the finished run: {rerun:.2f} s (target < 2 s), model calls: {again.calls}, "
              f"model loaded: {holder2._model is not None}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
