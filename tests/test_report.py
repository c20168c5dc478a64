"""`evalkit report`: the HTML of real runs (escaped, linked, compared) and, when chromium, chromedriver
and selenium are present, the page in a real headless browser."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from scipy.stats import binomtest

from evalkit.engine.runner import RunSpec, run_task
from evalkit.engine.store import read_records
from evalkit.models.base import Model
from evalkit.protocol.extract import FAILURE_STAGES
from evalkit.results.report import safe_json, write_report
from evalkit.types import Response

XSS_SCRIPT = "</script><script>window.__xss=1</script><!--"
XSS_IMG = '<img src=x onerror="window.__xss=2"> & \u2028 "quotes"'


class Hostile(Model):
    """Outputs an attacker would write, empty replies, errors and right answers, by key."""

    name = "hostile"
    capabilities = frozenset({"audio", "text"})

    def generate(self, requests):
        out = []
        for r in requests:
            i = int(r.key.lstrip("s"))
            text = {0: XSS_SCRIPT, 1: XSS_IMG + " The answer is (A).", 2: ""}.get(i % 6, "The answer is (A).")
            out.append(Response(r.key, error="boom <b>bold</b>") if i % 6 == 3 else Response(r.key, text=text))
        return out


@pytest.fixture
def runs(toy, monkeypatch):
    """Three real runs of the toy task: scripted right, scripted wrong, hostile."""
    from evalkit import registry

    monkeypatch.setenv("EVALKIT_MODELS", "scripted=plugins:Scripted,hostile=test_report:Hostile")
    registry._table.cache_clear()
    common = dict(task="toy-mcq", task_args={"data": str(toy / "toy.json")}, output=toy / "runs")
    key = {"answers": str(toy / "key.json")}
    out = {"right": run_task(RunSpec(model="scripted", model_args=key, **common)),
           "wrong": run_task(RunSpec(model="scripted", model_args={**key, "wrong": True}, **common)),
           "hostile": run_task(RunSpec(model="hostile", **common))}
    yield toy, out
    registry._table.cache_clear()


def blob_of(text: str) -> dict:
    m = re.search(r"<script type='application/json' id='report-data'>(.*?)</script>", text, re.S)
    return json.loads(m.group(1))


def test_samples_audio_links_and_summary(runs):
    toy, res = runs
    out = toy / "reports" / "r.html"
    write_report([res["right"].run_dir], out)
    text = out.read_text()
    data = blob_of(text)
    assert len(data["samples"]) == 24 and len(data["runs"]) == 1
    recs = {r["key"]: r for r in read_records(res["right"].run_dir / "samples.jsonl")}
    for s in data["samples"]:
        (clip,) = s["a"]
        src = data["clips"][clip]["src"]
        assert not src.startswith(("/", "file:")) and src.startswith("../")
        assert (out.parent / unquote(src)).resolve() == Path(recs[s["k"]]["audio"][0]["ref"]).resolve()
        assert s["o"] == recs[s["k"]]["output"] and s["ok"] is True
    assert len(data["clips"]) == 12  # two questions per clip: one entry each
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    # summary: main metric with its CI, perception/reasoning from the axis groups
    run = json.loads((res["right"].run_dir / "run.json").read_text())
    acc = run["metrics"]["accuracy"]
    assert f"100.00 [{acc['ci'][0]:.2f}, {acc['ci'][1]:.2f}] (n=24)" in text
    assert f"(n={run['groups']['axis']['reasoning']['accuracy']['n']})" in text
    assert "accuracy by axis" in text and "4 choices: predicted vs gold position" in text


def test_untrusted_outputs_are_escaped(runs):
    toy, res = runs
    out = toy / "h.html"
    write_report([res["hostile"].run_dir], out)
    text = out.read_text()
    assert text.count("<script") == 2 and text.count("</script>") == 2  # the blob's and the code's
    assert "<img src=x" not in text and "window.__xss" in text  # present, but only as escaped text
    assert "&lt;/script&gt;&lt;script&gt;window.__xss=1" in text  # an extraction example, HTML-escaped
    outputs = {s["k"]: s["o"] for s in blob_of(text)["samples"]}
    assert outputs["s0"] == XSS_SCRIPT and outputs["s1"] == XSS_IMG + " The answer is (A)."  # intact
    raw_blob = re.search(r"id='report-data'>(.*?)</script>", text, re.S).group(1)
    assert "\u2028" not in raw_blob and "<" not in raw_blob and "&" not in raw_blob
    assert safe_json({"o": "</script>&"}) == '{"o":"\\u003c/script\\u003e\\u0026"}'


def test_embed_audio_puts_the_bytes_in(runs):
    toy, res = runs
    out = toy / "e.html"
    write_report([res["right"].run_dir], out, embed_audio=True)
    data = blob_of(out.read_text())
    clip = data["clips"][data["samples"][0]["a"][0]]
    assert clip["src"].startswith("data:audio/")
    raw = base64.b64decode(clip["src"].split(",", 1)[1])
    assert raw == Path(clip["label"]).read_bytes()


def test_comparison_of_two_runs_with_the_paired_test(runs):
    toy, res = runs
    out = toy / "c.html"
    write_report([res["right"].run_dir, res["wrong"].run_dir, res["hostile"].run_dir], out)
    text = out.read_text()
    data = blob_of(text)
    right_vs_wrong = data["compare"][0]
    assert (right_vs_wrong["a"], right_vs_wrong["b"]) == (0, 1) and len(right_vs_wrong["rows"]) == 24
    # 24 discordant pairs, all in A's favour: exact McNemar p(B worse) = 0.5**24
    assert binomtest(24, 24, 0.5, alternative="greater").pvalue == pytest.approx(0.5 ** 24)
    assert f"<td>1.000 / {0.5 ** 24:.2e}</td>" in text and "<td>24 / 0</td>" in text  # p(A worse) / p(B worse)
    # right vs hostile: they disagree exactly where hostile is not right (by the records, independently)
    hostile = {r["sample_id"]: r for r in read_records(res["hostile"].run_dir / "samples.jsonl")}
    expected = sum(r["scores"]["accuracy"] != 1.0 or r["extracted"] != "A" for r in hostile.values())
    rows = data["compare"][1]["rows"]
    assert len(rows) == expected and all(a is not None and b is not None for a, b in rows)
    assert {data["samples"][b]["r"] for _, b in rows} == {2}


def _write_run(d: Path, run: dict, records: list[dict]) -> Path:
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps(run))
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def _asr_run(tmp_path: Path, name: str, wer: dict[str, float]) -> Path:
    cell = lambda v: {"value": v, "ci": [v - 1, v + 1], "n": 10, "higher_is_better": False}
    run = {"run_id": name, "status": "complete", "model": {"name": name, "args": {}},
           "task": {"name": "sseu-asr", "main_metric": "wer", "source": {"synthetic": True}, "data_hash": "h",
                    "options": {"data": str(tmp_path / "data"), "audio_root": None}},
           "counts": {"errors": 0, "extraction_failures": 0, "records": 2},
           "metrics": {"wer": cell(sum(wer.values()) / len(wer))},
           "groups": {"snr": {k: {"wer": cell(v)} for k, v in wer.items()}},
           "diagnostics": {"audio_reliance": {"items": 2, "metric": "wer", "with_audio": cell(10.0),
                                              "silence": cell(11.0), "unchanged_silence": 0.95, "flag": True,
                                              "threshold": 0.9}}}
    recs = [{"key": f"u{i}", "sample_id": f"u{i}", "cluster": f"u{i}", "output": "hello", "error": None,
             "extracted": {"transcript": "hello"}, "extraction_stage": "text", "metadata": {"snr": "0"},
             "scores": {"wer_errors": float(i), "wer_words": 2.0},
             # SSEU labels its clips "<set name>/<path under the data folder>"; the second's bytes changed
             "audio": [{"ref": f"myset/clips/{i}.wav", "sha256": hashlib.sha256(b"clip0").hexdigest()}],
             "extra": {"audio_seconds": 45.0 if i else 20.0, "audio_seconds_fed": 30.0 if i else 20.0}}
            for i in range(2)]
    return _write_run(tmp_path / name, run, recs)


def test_asr_runs_wer_vs_snr_audio_reliance_and_long_audio(tmp_path):
    (tmp_path / "data" / "clips").mkdir(parents=True)
    (tmp_path / "data" / "clips" / "0.wav").write_bytes(b"clip0")
    (tmp_path / "data" / "clips" / "1.wav").write_bytes(b"clip1, not the bytes the run heard")
    a = _asr_run(tmp_path, "whisper", {"+inf": 5.0, "10": 8.0, "0": 30.0})
    b = _asr_run(tmp_path, "other", {"+inf": 6.0, "10": 9.0, "0": 20.0})
    out = tmp_path / "r.html"
    write_report([a, b], out)
    text = out.read_text()
    assert "WER vs SNR, all runs" in text
    svg = text[text.index("WER vs SNR, all runs"):]
    svg = svg[:svg.index("</svg>")]
    assert svg.count("<circle") == 6 and "whisper · sseu-asr: 30.00 [29.00, 31.00] (n=10)" in svg
    assert "IGNORES ITS AUDIO?" in text and "unchanged (silence): 95%" in text
    assert "1 of 2 cut (longest 45.0 s, most fed 30.0 s; 2 with audio)" in text
    assert "(synthetic data)" in text and "not multiple choice" in text
    data = blob_of(text)
    assert [s["ok"] for s in data["samples"][:2]] == [True, False]  # 0 word errors = exact transcript
    assert data["clips"][0] == {"label": "myset/clips/0.wav", "src": "data/clips/0.wav"}  # relative to r.html
    assert data["clips"][1] == {"label": "myset/clips/1.wav", "src": None}  # another file's bytes: no link
    # the paired test runs on word errors (lower is better): u1 has 1 more error in both runs: no discordance
    assert "wer_errors" in text


def test_diagnostics_come_from_run_json_else_from_records(runs):
    toy, res = runs
    d = res["wrong"].run_dir
    run = json.loads((d / "run.json").read_text())
    run.pop("diagnostics", None)
    (d / "run.json").write_text(json.dumps(run))
    text = write_report([d], toy / "w.html").read_text()
    assert "χ²=" in text and "Position bias" in text
    run["diagnostics"] = {"position_bias": {"by_choice_count": {}, "combined": {"statistic": 123.456, "df": 9,
                                                                                 "p_value": 1e-20},
                                            "gold_balanced": False}}
    (d / "run.json").write_text(json.dumps(run))
    text = write_report([d], toy / "w.html").read_text()
    assert "χ²=123.46, df=9, p=1.00e-20" in text and "gold not balanced" in text


def test_cli_report_and_bad_input(runs):
    from typer.testing import CliRunner

    from evalkit.cli import app

    toy, res = runs
    out = toy / "cli" / "report.html"
    r = CliRunner().invoke(app, ["report", str(res["right"].run_dir), str(res["wrong"].run_dir), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.exists() and len(blob_of(out.read_text())["samples"]) == 48
    r = CliRunner().invoke(app, ["report", str(toy / "nowhere"), "--out", str(out)])
    assert r.exit_code == 2 and "nowhere" in r.output


# ---------------------------------------------------------------- the page in a real browser

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1400"]


def chromium_driver(profile: Path):
    """A headless chromium under selenium, or a skip naming what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium; it is in the test extra)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("the browser test needs Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver); "
                    f"missing: {', '.join(n for n, p in (('chromium', binary), ('chromedriver', driver_path)) if not p)}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for f in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def test_report_in_a_headless_browser(runs, tmp_path):
    from selenium.webdriver.support.ui import Select

    toy, res = runs
    out = toy / "reports" / "report.html"
    write_report([res["right"].run_dir, res["wrong"].run_dir, res["hostile"].run_dir], out)
    hostile = read_records(res["hostile"].run_dir / "samples.jsonl")
    failed = sum(r["extraction_stage"] in FAILURE_STAGES and r["error"] is None for r in hostile)
    errors = sum(r["error"] is not None for r in hostile)
    assert failed and errors
    driver = chromium_driver(tmp_path / "profile")
    try:
        driver.get(out.resolve().as_uri())
        count = lambda: int(driver.find_element("id", "count").text)
        assert driver.find_element("id", "total").text == "72" and count() == 72
        Select(driver.find_element("id", "f-run")).select_by_index(3)  # "all", right, wrong, hostile
        assert count() == 24
        Select(driver.find_element("id", "f-extract")).select_by_value("failed")
        assert count() == failed == 8
        Select(driver.find_element("id", "f-extract")).select_by_value("ok")
        assert count() == 24 - failed - errors
        Select(driver.find_element("id", "f-extract")).select_by_value("")
        Select(driver.find_element("id", "f-error")).select_by_value("yes")
        assert count() == errors
        assert "boom <b>bold</b>" in driver.find_element("id", "list").text  # shown as text
        Select(driver.find_element("id", "f-error")).select_by_value("")
        Select(driver.find_element("id", "f-run")).select_by_index(0)
        Select(driver.find_element("id", "f-outcome")).select_by_value("wrong")
        wrong_total = sum(r["scores"]["accuracy"] == 0.0 for d in res.values()
                          for r in read_records(d.run_dir / "samples.jsonl"))
        assert count() == wrong_total
        Select(driver.find_element("id", "f-outcome")).select_by_value("")
        box = driver.find_element("id", "f-text")
        box.send_keys("window.__xss")
        hits = sum("window.__xss" in (r["output"] or "") for r in hostile)
        deadline = time.time() + 5
        while count() != hits and time.time() < deadline:  # the search is debounced
            time.sleep(0.05)
        assert count() == hits == 8  # the hostile run's outputs that hold the payloads
        assert driver.execute_script("return window.__xss === undefined")
        box.clear()
        # the audio element's source resolves to the clip file and the browser can read it
        audio = driver.find_element("css selector", "#list audio")
        card = driver.execute_script("return arguments[0].closest('.card').getAttribute('data-key')", audio)
        rec = {r["key"]: r for r in read_records(res["right"].run_dir / "samples.jsonl")}[card]
        assert audio.get_property("src") == Path(rec["audio"][0]["ref"]).resolve().as_uri()
        duration = driver.execute_async_script(
            "var a=arguments[0], done=arguments[1]; a.preload='metadata';"
            "a.addEventListener('loadedmetadata', function(){done(a.duration)});"
            "a.addEventListener('error', function(){done(-1)}); a.load();", audio)
        assert duration == pytest.approx(1600 / 16000, abs=0.01)
        shot = Path(os.environ.get("EVALKIT_REPORT_SCREENSHOT") or tmp_path / "report.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.execute_script("window.scrollTo(0, 0)")
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        logs = driver.get_log("browser")
    finally:
        driver.quit()
    severe = [e for e in logs if e.get("level") == "SEVERE"]
    assert not severe, f"JavaScript console errors: {severe}"
