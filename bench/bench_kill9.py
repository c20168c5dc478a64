"""Calls asked again after `kill -9` mid-run, with the OpenAI-compatible adapter at concurrency C.

    python bench/bench_kill9.py [--n 400] [--latency 0.1] [--concurrency 4 32]

`evalkit run --model openai` runs in a child process against the local fake server (in this
process, which counts every request it receives), is killed with SIGKILL mid-run, then run again to
completion. Repeated = requests received - questions: the requests in flight at the kill (their
answers were never logged). Target: <= C (records are flushed as each request completes; with
per-batch flushing up to a whole batch of 4 x C could be lost).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai_server import FakeOpenAIServer  # noqa: E402


def once(url: str, data: Path, out: Path, concurrency: int, kill_after: int | None, srv: FakeOpenAIServer) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench"), "EVALKIT_TASKS": "bench-json-text-mcq=common:TextJsonMCQ",
           "OPENAI_API_KEY": "sk-local", "EVALKIT_CACHE_DIR": str(out / "cache")}
    cmd = [sys.executable, "-m", "evalkit.cli", "run", "--model", "openai", "-M", f"base_url={url}", "-M", "model=fake",
           "-M", f"concurrency={concurrency}", "--task", "bench-json-text-mcq", "-T", f"data={data}",
           "--output", str(out / "runs"), "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after is None:
        proc.wait()
        return proc.returncode
    while len(srv.received) < kill_after and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4, 32])
    args = ap.parse_args()
    print(f"{'concurrency':>11} {'questions':>9} {'asked before kill':>17} {'logged at kill':>14} "
          f"{'repeated':>8} {'target':>6}")
    for c in args.concurrency:
        with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(latency_s=args.latency) as srv, \
                contextlib.redirect_stderr(io.StringIO()):  # the server's "connection reset" traces at the kill
            tmp = Path(tmp)
            data = tmp / "data.json"
            data.write_text(json.dumps([{"id": f"q{i}", "q": f"Question {i}?", "c": ["yes", "no", "maybe"], "a": i % 3}
                                        for i in range(args.n)]))
            once(srv.url, data, tmp, c, kill_after=args.n // 2, srv=srv)
            asked_before = len(srv.received)
            run_dir = next((tmp / "runs").iterdir())
            logged = sum(1 for line in (run_dir / "samples.jsonl").read_bytes().split(b"\n") if line.strip())
            rc = once(srv.url, data, tmp, c, kill_after=None, srv=srv)
            keys = Counter(json.dumps(r.body["messages"], sort_keys=True) for r in srv.received)
            repeated = len(srv.received) - args.n
            status = json.loads((run_dir / "run.json").read_text())["status"]
            print(f"{c:>11} {args.n:>9} {asked_before:>17} {logged:>14} {repeated:>8} {c:>6}"
                  f"   (resume exit {rc}, {status}, {sum(v > 1 for v in keys.values())} questions asked twice)")


if __name__ == "__main__":
    main()
