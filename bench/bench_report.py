"""Benchmark: `evalkit report` on a 10,000-sample run: generation time, file size, and the time to
first render in headless chromium.

    python bench/bench_report.py [--n 10000] [--clips 1000] [--no-browser]

The run is real (run_task on a JSON MCQ task with 2-5 options, `--clips` short WAV files shared by
the questions, a local adapter answering right, wrong, with prose or with nothing), so the records
have the shape and size of a real run's. Time to first render: chromium's navigationStart to the
moment the page's script has parsed the data and drawn the first page of samples
(`window.__reportRendered`), plus the wall time of the WebDriver page load; then one filter
change and one text search over all samples, timed in the page.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evalkit.models.base import Model  # noqa: E402
from evalkit.types import Response  # noqa: E402


class BenchAnswers(Model):
    """Answers by a hash of the key: 60% the gold letter, 25% another letter, 10% prose, 5% nothing."""

    name = "bench-report-model"
    capabilities = frozenset({"audio", "text"})
    default_batch_size = 64
    needs_audio = False  # the clips are linked in the report, never decoded here

    def generate(self, requests):
        import re

        out = []
        for r in requests:
            rnd = random.Random(r.key)
            options = dict(re.findall(r"^\(([A-Z])\) (.*)$", r.text(), re.M))
            i = int(re.search(r"Question (\d+):", r.text()).group(1))
            # the data's gold is option i % k (see make_run), wherever the protocol showed it
            gold = next(c for c, text in options.items() if text == f"option {i % len(options)} of question {i}")
            letters = list(options)
            x = rnd.random()
            if x < 0.6:
                text = f"The answer is ({gold})."
            elif x < 0.85:
                text = f"({rnd.choice([c for c in letters if c != gold])}) seems right to me."
            elif x < 0.95:
                text = "I cannot tell from this recording; " + " ".join(rnd.choice(["it", "sounds", "like", "a",
                                                                                    "dog", "or", "car"])
                                                                         for _ in range(40))
            else:
                text = ""
            out.append(Response(r.key, text=text, latency_s=0.0))
        return out


def make_run(root: Path, n: int, clips: int):
    import numpy as np
    import soundfile as sf
    from common import register

    from evalkit.engine.runner import RunSpec, run_task

    register(tasks={"bench-json-mcq": "common:JsonMCQ"}, models={"bench-report-model": "bench_report:BenchAnswers"})
    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for c in range(clips):
        sf.write(root / "audio" / f"clip{c:05d}.wav", (rng.standard_normal(1600) * 0.1).astype("float32"), 16000)
    rows = []
    for i in range(n):
        k = 2 + i % 4
        rows.append({"id": f"q{i:05d}", "q": f"Question {i}: which sound is in the clip? " + "detail " * 10,
                     "c": [f"option {j} of question {i}" for j in range(k)], "a": i % k,
                     "audio": f"audio/clip{i % clips:05d}.wav",
                     "meta": {"axis": "perception" if i % 3 else "reasoning", "category": f"cat{i % 12}"}})
    data = root / "data.json"
    data.write_text(json.dumps(rows))
    t = time.perf_counter()
    res = run_task(RunSpec(model="bench-report-model", task="bench-json-mcq", task_args={"data": str(data)},
                           output=root / "runs"))
    return res, time.perf_counter() - t


def browser_times(report: Path, profile: Path) -> dict[str, float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import Select

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for f in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1000",
              f"--user-data-dir={profile}"]:
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get("about:blank")  # browser start-up is not the page's cost
        t = time.perf_counter()
        driver.get(report.resolve().as_uri())
        load_wall = time.perf_counter() - t
        rendered_ms = driver.execute_script("return window.__reportRendered")
        shown = driver.find_element("id", "count").text
        t0 = driver.execute_script("return performance.now()")
        Select(driver.find_element("id", "f-outcome")).select_by_value("wrong")
        filter_ms = driver.execute_script("return performance.now()") - t0
        wrong = driver.find_element("id", "count").text
        t0 = driver.execute_script("return performance.now()")
        driver.execute_script("var b=document.getElementById('f-text'); b.value='cannot tell';"
                              "b.dispatchEvent(new Event('input'));")
        deadline = time.time() + 10
        while driver.find_element("id", "count").text == wrong and time.time() < deadline:
            time.sleep(0.01)
        search_ms = driver.execute_script("return performance.now()") - t0 - 150  # less the 150 ms debounce
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    finally:
        driver.quit()
    return {"first_render_ms": rendered_ms, "load_wall_s": load_wall, "shown": shown, "wrong": wrong,
            "filter_ms": filter_ms, "search_ms": search_ms, "console_errors": len(errors)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    from evalkit.results.report import write_report

    root = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        res, run_s = make_run(root, args.n, args.clips)
        samples = res.run_dir / "samples.jsonl"
        print(f"run: {args.n} samples, {args.clips} clips, {run_s:.1f} s; samples.jsonl "
              f"{samples.stat().st_size / 1e6:.1f} MB; accuracy {res.run['metrics']['accuracy']['value']}")
        out = root / "report" / "report.html"
        times = []
        for _ in range(3):
            t = time.perf_counter()
            write_report([res.run_dir], out)
            times.append(time.perf_counter() - t)
        print(f"report generation: best {min(times):.2f} s, median {sorted(times)[1]:.2f} s (3 runs); "
              f"file {out.stat().st_size / 1e6:.1f} MB")
        if args.no_browser:
            return
        if not (shutil.which("chromium") and shutil.which("chromedriver")):
            print("browser timing skipped: chromium / chromedriver not installed")
            return
        b = browser_times(out, root / "profile")
        print(f"headless chromium: first render {b['first_render_ms']:.0f} ms after navigationStart "
              f"(page load wall {b['load_wall_s']:.2f} s), {b['shown']} samples shown; filter 'wrong' "
              f"{b['filter_ms']:.0f} ms ({b['wrong']} shown); text search {b['search_ms']:.0f} ms; "
              f"console errors {b['console_errors']}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
