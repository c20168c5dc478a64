"""Throughput of the OpenAI-compatible adapter against the local fake server.

    python bench/bench_openai.py [--latency 0.2] [--n 256] [--audio-seconds 0]

For each concurrency c, N requests go through `generate` in batches of c, in batches of
the adapter's `preferred_batch_size` (what the runner does without --batch-size), and as
one batch. The fake server runs in a child process (--in-process: in this one).
The ideal rate is c / latency; the ratio shows the adapter's overhead.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai_server import FakeOpenAIServer  # noqa: E402

from evalkit.models.openai_compat import OpenAICompatible, OpenAIConfig  # noqa: E402
from evalkit.types import AudioRef, GenerationConfig, Request  # noqa: E402


def make_requests(n: int, audio_seconds: float) -> list[Request]:
    audio = None
    if audio_seconds > 0:
        import numpy as np

        sr = 16000
        t = np.arange(int(sr * audio_seconds)) / sr
        audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    reqs = []
    for i in range(n):
        parts = []
        if audio is not None:
            parts.append({"type": "audio", "audio": AudioRef(array=audio, sample_rate=16000, label=f"clip{i}")})
        parts.append({"type": "text", "text": f"Question {i}: which is it? (A) x (B) y"})
        reqs.append(Request(f"q{i}", [{"role": "user", "content": parts}], GenerationConfig()))
    return reqs


def run(url: str, concurrency: int, n: int, audio_seconds: float, batch: str) -> tuple[float, int, int]:
    m = OpenAICompatible(OpenAIConfig(base_url=url, model="bench", concurrency=concurrency))
    try:
        m.generate(make_requests(min(concurrency, 8), 0))  # warm up the loop and connections
        reqs = make_requests(n, audio_seconds)
        bs = {"c": concurrency, "preferred": m.preferred_batch_size, "all": n}[batch]
        t0 = time.perf_counter()
        errors = 0
        for i in range(0, n, bs):
            errors += sum(r.error is not None for r in m.generate(reqs[i:i + bs]))
        return time.perf_counter() - t0, errors, bs
    finally:
        m.close()


@contextlib.contextmanager
def serve(latency: float, in_process: bool):
    """The fake server's base URL; by default in a child process, so that its request
    threads do not compete with the adapter for this process's GIL."""
    if in_process:
        with FakeOpenAIServer(latency_s=latency) as srv:
            yield srv.url
        return
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai_server.py"), "--latency", str(latency)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--in-process", action="store_true",
                    help="run the fake server in this process (shares the GIL with the client)")
    ap.add_argument("--audio-seconds", type=float, default=0.0, help="attach this much audio to every request")
    args = ap.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)  # local server: dummy key

    print(f"fake server latency {args.latency * 1000:.0f} ms, audio {args.audio_seconds:g} s per request")
    print(f"{'concurrency':>11} {'batching':>10} {'requests':>8} {'seconds':>8} {'req/s':>8} {'ideal':>8} {'ratio':>6}")
    with serve(args.latency, args.in_process) as url:
        for c in args.concurrency:
            n = min(args.n, 16) if c == 1 else args.n
            for batch in ("c", "preferred", "all"):
                secs, errors, bs = run(url, c, n, args.audio_seconds, batch)
                rate, ideal = n / secs, c / args.latency
                label = "all" if batch == "all" else f"by {bs}"
                err = f"  ({errors} errors)" if errors else ""
                print(f"{c:>11} {label:>10} {n:>8} {secs:>8.2f} {rate:>8.1f} {ideal:>8.1f} {rate / ideal:>6.2f}{err}")


if __name__ == "__main__":
    main()
