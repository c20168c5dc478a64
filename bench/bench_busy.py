"""Model-busy fraction over a run: how much of the wall time the model spends inside `generate`.

An audio MCQ task over real WAV files (256 clips of 10 s at 44.1 kHz, resampled to 16 kHz by the
runner's prefetch thread) and a model that takes 50 ms per batch (time.sleep, so the GIL is
free, as for a GPU model). busy = time inside generate / run wall time (run_task end to end,
data loading included). Target >= 0.9. Prints one line per batch size.
Usage: python bench/bench_busy.py [N_CLIPS]
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import register

from evalkit.engine.runner import ModelHolder, RunSpec, run_task
from evalkit.models.base import AdapterConfig, Model
from evalkit.types import AudioRef, Response


class SleepyConfig(AdapterConfig):
    batch_s: float = 0.05


class Sleepy(Model):
    name = "bench-sleepy"
    capabilities = frozenset({"audio", "text"})
    Config = SleepyConfig
    sample_rate = 16000
    default_batch_size = 8
    inside = 0.0

    def generate(self, requests):
        t0 = time.perf_counter()
        for r in requests:  # the audio must have been decoded (by the prefetch thread)
            x, sr = r.audio()[0].load(self.sample_rate)
            assert sr == 16000 and x.size == 160000
        time.sleep(self.config.batch_s)
        Sleepy.inside += time.perf_counter() - t0
        return [Response(r.key, text="The answer is (A).") for r in requests]


def main(n_clips: int = 256) -> None:
    import soundfile as sf

    register({"bench-json-mcq": "common:JsonMCQ"}, {"bench-sleepy": f"{__name__}:Sleepy"})
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "audio").mkdir()
        rows = []
        for i in range(n_clips):
            x = (0.1 * rng.standard_normal(441000)).astype(np.float32)
            sf.write(root / "audio" / f"c{i}.wav", x, 44100, subtype="PCM_16")
            rows.append({"id": f"q{i}", "q": f"Question {i}?", "c": ["yes", "no", "maybe", "never"], "a": i % 4,
                         "audio": f"audio/c{i}.wav"})
        (root / "data.json").write_text(json.dumps(rows))
        t0 = time.perf_counter()
        for i in range(n_clips):
            AudioRef(path=root / "audio" / f"c{i}.wav").load(16000)
        decode_ms = (time.perf_counter() - t0) / n_clips * 1e3
        print(f"busy: decode + resample, serial: {decode_ms:.1f} ms per clip")
        for bs in (4, 8, 16):
            Sleepy.inside = 0.0
            spec = RunSpec(model="bench-sleepy", task="bench-json-mcq", task_args={"data": str(root / "data.json")},
                           batch_size=bs, output=root / f"runs{bs}")
            t0 = time.perf_counter()
            res = run_task(spec, ModelHolder("bench-sleepy", {}))
            wall = time.perf_counter() - t0
            busy = Sleepy.inside / wall
            print(f"busy: batch {bs:2d}: {n_clips} clips x 10 s @ 44.1 kHz -> 16 kHz, 50 ms/batch: "
                  f"model {Sleepy.inside:.2f} s / wall {wall:.2f} s = {busy:.3f} (target >= 0.9); "
                  f"runner wall_s {res.run['timings']['sessions'][-1]['wall_s']:.2f}, "
                  f"load_s {res.run['timings']['sessions'][-1]['load_s']:.3f}; bound with serial decode "
                  f"~ min(1, 50 ms / {bs} x {decode_ms:.1f} ms) = {min(1.0, 50 / (bs * decode_ms)):.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 256)
