"""Engine overhead: a 10,000-sample MCQ run against an in-process instant adapter.

Prints samples/s for run + score + write (target >= 2,000/s on one core) and the
time of a full re-run of the finished run (target < 2 s, zero model calls), for a text-only
task and for MMAU's own loader on a 10,000-item file whose clips are on disk (every clip is
fingerprinted into the run id: sha256 on the first run, one stat per clip on the re-run).
Usage: python bench/bench_engine.py [N]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import register

from evalkit.engine.runner import ModelHolder, RunResult, RunSpec, run_task
from evalkit.models.base import AdapterConfig, Model
from evalkit.types import Response


class Instant(Model):
    name = "bench-instant"
    capabilities = frozenset({"text", "audio"})
    needs_audio = False  # the runner skips decoding: the bench measures the engine, not soundfile
    Config = AdapterConfig
    default_batch_size = 64

    def __init__(self, config):
        super().__init__(config)
        self.calls = 0

    def generate(self, requests):
        self.calls += len(requests)
        return [Response(r.key, text=f"The answer is ({'ABCD'[i % 4]}).", latency_s=0.0)
                for i, r in enumerate(requests)]


def mmau_fixture(folder: Path, n: int) -> Path:
    """An upstream-format mmau-test-mini.json with n items, each with its own 0.1 s WAV on disk."""
    import numpy as np
    import soundfile as sf

    audio = folder / "test-mini-audios"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        sf.write(audio / f"c{i}.wav", (rng.standard_normal(1600) * 0.1).astype("float32"), 16000)
        choices = [f"choice {j}" for j in range(4)]
        items.append({"id": f"m{i}", "audio_id": f"./test-mini-audios/c{i}.wav", "question": f"Question {i}?",
                      "choices": choices, "answer": choices[i % 4], "dataset": "bench", "task": "sound",
                      "split": "test-mini", "category": ["Information Extraction", "Reasoning"][i % 2],
                      "sub-category": f"s{i % 5}", "difficulty": "easy"})
    path = folder / "mmau-test-mini.json"
    path.write_text(json.dumps(items))
    return path


def timed_pair(spec: RunSpec) -> tuple[float, float, RunResult, RunResult, ModelHolder]:
    from evalkit.engine.runner import ModelHolder

    t0 = time.perf_counter()
    first = run_task(spec, ModelHolder(spec.model, {}))
    t1 = time.perf_counter()
    holder = ModelHolder(spec.model, {})
    again = run_task(spec, holder)
    return t1 - t0, time.perf_counter() - t1, first, again, holder


def main(n: int = 10_000) -> None:
    register({"bench-json-text-mcq": "common:TextJsonMCQ"}, {"bench-instant": f"{__name__}:Instant"})
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.json"
        data.write_text(json.dumps([{"id": f"q{i}", "q": f"Question number {i}?", "c": [f"choice {j}" for j in range(4)],
                                     "a": i % 4, "meta": {"axis": ["perception", "reasoning"][i % 2], "category": f"c{i % 7}"}}
                                    for i in range(n)]))
        spec = RunSpec(model="bench-instant", task="bench-json-text-mcq", task_args={"data": str(data)},
                       output=Path(tmp) / "runs")
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
        os.environ["EVALKIT_CACHE_DIR"] = str(Path(tmp) / "cache")  # a cold fingerprint cache
        t0 = time.perf_counter()
        path = mmau_fixture(Path(tmp) / "mmau", n)
        made = time.perf_counter() - t0
        spec = RunSpec(model="bench-instant", task="mmau", task_args={"data": str(path)}, output=Path(tmp) / "mmau-runs")
        first, rerun, res, again, holder = timed_pair(spec)
        print(f"mmau loader, {n} clips on disk (fixture written in {made:.1f} s): first run {first:.2f} s = "
              f"{n / first:,.0f} samples/s incl. sha256 of every clip (target >= 2,000/s); re-run {rerun:.2f} s "
              f"(target < 2 s), model calls: {again.calls}, model loaded: {holder._model is not None}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
