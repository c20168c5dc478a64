import json
import os
import signal
import subprocess
import sys
import time

import pytest

from evalkit.engine.runner import ModelHolder, RunConfigError, RunSpec, run_task
from evalkit.engine.store import RunLockedError, RunStore, read_records


def spec(toy, **kw):
    args = {"answers": str(toy / "key.json"), **kw.pop("model_args", {})}
    kw.setdefault("output", toy / "runs")
    return RunSpec(model="scripted", task="toy-mcq", model_args=args,
                   task_args={"data": str(toy / "toy.json")}, **kw)


def test_run_scores_logs_and_records(toy):
    res = run_task(spec(toy))
    recs = read_records(res.run_dir / "samples.jsonl")
    assert len(recs) == 24 and len({r["key"] for r in recs}) == 24
    assert res.run["metrics"]["accuracy"]["value"] == 100.0
    assert res.run["counts"] == {**res.run["counts"], "errors": 0, "extraction_failures": 0, "samples": 24}
    r = recs[0]
    assert r["extraction_stage"] == "answer_phrase" and r["scores"]["accuracy"] == 1.0
    assert r["choices"] == [json.loads((toy / "toy.json").read_text())[0]["choices"][i] for i in r["permutation"]]
    assert r["prompt"][0]["content"][0] == {"type": "audio", "audio": str(toy / "audio" / "a0.wav")}
    assert "axis" in res.run["groups"]
    lo, hi = res.run["metrics"]["accuracy"]["ci"]
    assert lo <= 100.0 <= hi


def test_wrong_answers_score_zero_and_ci_brackets(toy):
    res = run_task(spec(toy, model_args={"wrong": True}))
    assert res.run["metrics"]["accuracy"]["value"] == 0.0


def test_rerun_makes_zero_calls_and_same_run_id(toy):
    a = run_task(spec(toy))
    b = run_task(spec(toy, batch_size=7, model_args={"concurrency": 4}))  # concurrency is not identity
    assert a.run_id == b.run_id and b.calls == 0
    c = run_task(spec(toy, seed=1))
    assert c.run_id != a.run_id


def test_limit_then_full_resumes(toy):
    a = run_task(spec(toy, limit=5))
    assert a.calls == 5 and a.run["counts"]["samples"] == 5
    b = run_task(spec(toy))
    assert b.run_id == a.run_id and b.calls == 19
    assert len(read_records(b.run_dir / "samples.jsonl")) == 24


def test_shards_merge_to_unsharded(toy):
    full = run_task(spec(toy, output=toy / "full"))
    parts = [run_task(spec(toy, shard=(i, 3), output=toy / f"s{i}")) for i in range(3)]
    merged = {}
    for p in parts:
        for r in read_records(p.run_dir / "samples.jsonl"):
            merged[r["key"]] = r
    full_recs = {r["key"]: r for r in read_records(full.run_dir / "samples.jsonl")}
    assert merged.keys() == full_recs.keys()
    for k in merged:
        assert merged[k]["choices"] == full_recs[k]["choices"]
        assert merged[k]["output"] == full_recs[k]["output"]


def test_circular_asks_every_rotation(toy):
    res = run_task(spec(toy, choices="circular"))
    assert res.calls == sum([2, 3, 4, 5] * 6)
    assert res.run["metrics"]["accuracy"]["n"] == 24
    hist = res.run["protocol"]["gold_positions"]["after"]
    assert hist["5"] == {"A": 6, "B": 6, "C": 6, "D": 6, "E": 6}


def test_balanced_positions_within_one(toy):
    res = run_task(spec(toy))
    for k, counts in res.run["protocol"]["gold_positions"]["after"].items():
        assert max(counts.values()) - min(counts.values()) <= 1
        assert sum(counts.values()) == 6 and len(counts) == int(k)


def test_missing_audio_is_an_error_record_and_run_goes_on(toy):
    (toy / "audio" / "a3.wav").unlink()
    res = run_task(spec(toy))
    errs = [r for r in read_records(res.run_dir / "samples.jsonl") if r["error"]]
    assert len(errs) == 2 and all("a3.wav" in r["error"] for r in errs)
    assert res.run["counts"]["errors"] == 2 and res.run["counts"]["input_errors"] == 2
    # the figure counts only samples that reached the model, and the run is not called complete
    assert res.run["metrics"]["accuracy"]["n"] == 22 and res.run["status"] == "incomplete"
    assert "could not be prepared" in res.run["stopped"]


def test_dropped_audio_fails(toy):
    """An adapter that needs audio must not silently answer without it."""
    res = run_task(spec(toy, no_audio=True))
    assert res.run["counts"]["errors"] == 24


def test_model_exception_stops_run_resumably(toy):
    from evalkit.engine.runner import ModelFailure

    with pytest.raises(ModelFailure, match="out of memory"):
        run_task(spec(toy, batch_size=4, model_args={"raise_on": "s9"}))
    run_dir = next((toy / "runs").iterdir())
    saved = read_records(run_dir / "samples.jsonl")
    assert [r["key"] for r in saved] == [f"s{i}" for i in range(8)]  # batches before the failure
    assert not any(r["error"] for r in saved)  # no bogus error records
    assert json.loads((run_dir / "run.json").read_text())["status"] == "incomplete"
    res = run_task(spec(toy, batch_size=4))
    assert res.calls == 16 and res.run["counts"]["records"] == 24 and res.run["status"] == "complete"


def test_text_only_model_refused_on_audio_task(toy, monkeypatch):
    import plugins

    monkeypatch.setattr(plugins.Scripted, "capabilities", frozenset({"text"}))
    with pytest.raises(RunConfigError, match="--no-audio"):
        run_task(spec(toy))


def test_model_arg_typo_fails_at_load(toy):
    with pytest.raises(Exception, match="delay_sec"):
        ModelHolder("scripted", {"answers": "x", "delay_sec": 1})


def test_second_process_refused(toy):
    res = run_task(spec(toy, limit=1))
    holder = RunStore(res.run_dir)
    holder.acquire()
    try:
        with pytest.raises(RunLockedError, match="another evalkit process"):
            run_task(spec(toy))
    finally:
        holder.release()


def test_torn_last_line_is_repaired(toy):
    res = run_task(spec(toy, limit=4))
    path = res.run_dir / "samples.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"key": "s4", "trunc')
    again = run_task(spec(toy, limit=6))
    recs = read_records(path)
    assert [r["key"] for r in recs] == ["s0", "s1", "s2", "s3", "s4", "s5"]
    assert again.calls == 2


def _cli(toy, *extra):
    return [sys.executable, "-m", "evalkit.cli", "run", "--model", "scripted", "--task", "toy-mcq",
            "-T", f"data={toy / 'toy.json'}", "-M", f"answers={toy / 'key.json'}",
            "--output", str(toy / "runs"), "--quiet", *extra]


@pytest.mark.slow
def test_kill_9_then_resume_exactly_once(toy):
    log = toy / "calls.log"
    cmd = _cli(toy, "-M", "delay_s=0.05", "-M", f"calls_log={log}", "--batch-size", "1")
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while time.time() < deadline and (not log.exists() or len(log.read_text().split()) < 8):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = next((toy / "runs").iterdir())
    before = {r["key"] for r in read_records(run_dir / "samples.jsonl")}
    assert 0 < len(before) < 24
    done = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    recs = read_records(run_dir / "samples.jsonl")
    assert sorted(r["key"] for r in recs) == sorted(f"s{i}" for i in range(24))
    calls = log.read_text().split()
    # no completed sample was asked again (the one in flight at the kill may be)
    assert not (set(calls[len(calls) - (24 - len(before)):]) & before)
    assert len(calls) <= 24 + 1
    n_calls = len(calls)
    final = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True)
    assert final.returncode == 0 and len(log.read_text().split()) == n_calls
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume(toy):
    cmd = _cli(toy, "-M", "delay_s=0.2", "--batch-size", "1")
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "resume" in err and "evalkit" in err
    run = json.loads(next((toy / "runs").iterdir()).joinpath("run.json").read_text())
    assert run["status"] == "incomplete"
