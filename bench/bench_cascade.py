"""Captioner calls per task run through the cascade, with the caption cache.

An audio MCQ task with several questions per clip (as MMAU/MMAR have), run through
evalkit.engine.runner.run_task with `-M captioner=... -M llm=...`, small runner batches so that
questions on one clip land in different batches. Target: captioner calls == distinct clips
on a cold cache, 0 on a warm one (another LLM, another task variant). Prints calls vs clips.
Usage: python bench/bench_cascade.py [N_CLIPS] [QUESTIONS_PER_CLIP]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import register

from evalkit.engine.runner import ModelHolder, RunSpec, run_task
from evalkit.models.base import AdapterConfig, Model
from evalkit.types import Response


class CountingCaptioner(Model):
    name = "bench-captioner"
    capabilities = frozenset({"audio"})
    Config = AdapterConfig
    calls = 0

    def generate(self, requests):
        CountingCaptioner.calls += len(requests)
        out = []
        for r in requests:
            x, sr = r.audio()[0].load(16000)
            out.append(Response(r.key, text=f"a {x.size / sr:.1f} s clip, rms {float(np.sqrt((x ** 2).mean())):.3f}"))
        return out


class LLMConfig(AdapterConfig):
    letter: str = "A"


class LetterLLM(Model):
    name = "bench-letter-llm"
    capabilities = frozenset({"text"})
    Config = LLMConfig

    def generate(self, requests):
        return [Response(r.key, text=f"The answer is ({self.config.letter}).") for r in requests]


def main(n_clips: int = 100, per_clip: int = 4) -> None:
    import soundfile as sf

    register({"bench-json-mcq": "common:JsonMCQ"},
             {"bench-captioner": f"{__name__}:CountingCaptioner", "bench-letter-llm": f"{__name__}:LetterLLM"})
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["EVALKIT_CACHE_DIR"] = str(root / "cache")
        (root / "audio").mkdir()
        rows = []
        for c in range(n_clips):
            sf.write(root / "audio" / f"c{c}.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
            for q in range(per_clip):
                rows.append({"id": f"c{c}q{q}", "q": f"Question {q} about clip {c}?",
                             "c": ["yes", "no", "maybe", "never"], "a": (c + q) % 4, "audio": f"audio/c{c}.wav"})
        order = rng.permutation(len(rows))  # questions on one clip spread over the task
        (root / "data.json").write_text(json.dumps([rows[i] for i in order]))
        for label, letter, seed in (("cold cache", "A", 0), ("warm cache, other LLM", "B", 0),
                                    ("warm cache, other seed", "A", 1)):
            CountingCaptioner.calls = 0
            args = {"captioner": "bench-captioner", "llm": {"name": "bench-letter-llm", "args": {"letter": letter}}}
            spec = RunSpec(model="cascade", task="bench-json-mcq", model_args=args, seed=seed, batch_size=16,
                           task_args={"data": str(root / "data.json")}, output=root / "runs")
            t0 = time.perf_counter()
            res = run_task(spec, ModelHolder("cascade", args))
            wall = time.perf_counter() - t0
            print(f"cascade ({label}): {len(rows)} questions on {n_clips} distinct clips, batch 16: "
                  f"captioner calls {CountingCaptioner.calls} (target {n_clips if label == 'cold cache' else 0}), "
                  f"errors {res.run['counts']['errors']}, {wall:.2f} s")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
