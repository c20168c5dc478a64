import json
import subprocess
import sys
from importlib.resources import files

import jsonschema
import pytest

from evalkit.engine.runner import RunSpec, rescore, run_task
from evalkit.engine.store import read_records
from evalkit.results import leaderboard as lb
from evalkit.results.check import check


def schema(name):
    return json.loads(files("evalkit").joinpath("schemas", name).read_text())


def _run(toy, **kw):
    args = {"answers": str(toy / "key.json"), **kw.pop("model_args", {})}
    return run_task(RunSpec(model="scripted", task="toy-mcq", model_args=args,
                            task_args={"data": str(toy / "toy.json")}, output=toy / kw.pop("out", "runs"), **kw))


def test_run_json_validates(toy):
    res = _run(toy)
    jsonschema.validate(res.run, schema("run.schema.json"))
    bad = dict(res.run, status="finished")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema("run.schema.json"))


def test_no_secret_in_run_record(toy):
    from pydantic import SecretStr

    from evalkit.engine.secrets import redact_args
    from evalkit.models.base import AdapterConfig

    class C(AdapterConfig):
        api_key: SecretStr | None = None
        token: str | None = None
        model: str = "m"

    args = redact_args(C(api_key="sk-123", token="t0k", model="x"))
    assert args == {"api_key": "***", "token": "***", "model": "x"}


def test_leaderboard_pure_and_valid(toy, tmp_path):
    a = _run(toy)
    b = _run(toy, model_args={"wrong": True})
    board = lb.build([lb.load_run(a.run_dir), lb.load_run(b.run_dir)])
    jsonschema.validate(board, schema("leaderboard.schema.json"))
    assert board == lb.build([lb.load_run(b.run_dir), lb.load_run(a.run_dir)])
    rows = {r["run_id"]: r for r in board["rows"]}
    assert rows[a.run_id]["value"] == 100.0 and rows[b.run_id]["value"] == 0.0
    assert set(rows[a.run_id]["splits"]) == {"perception", "reasoning"}
    for fmt in ("md", "csv"):
        text = lb.render(board, fmt)
        assert a.run_id in text and b.run_id in text


def test_rescore_reproduces_metrics_without_model(toy):
    res = _run(toy)
    path = res.run_dir / "samples.jsonl"
    recs = read_records(path)
    recs[0]["output"] = "I have no idea"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    run = rescore(res.run_dir)
    assert run["metrics"]["accuracy"]["value"] == pytest.approx(100 * 23 / 24, abs=1e-3)
    assert run["counts"]["extraction_failures"] == 1
    assert read_records(path)[0]["extraction_stage"] == "none"


def test_check_paired_and_tolerance(toy):
    good = _run(toy, out="good")
    same = _run(toy, out="same")
    bad = _run(toy, model_args={"wrong": True})
    failed, rows = check(same.run_dir, good.run_dir)
    assert not failed and rows[0]["method"].startswith("paired test")
    failed, rows = check(bad.run_dir, good.run_dir)
    acc = next(r for r in rows if r["metric"] == "accuracy")
    assert failed and acc["verdict"] == "FAIL" and acc["p_value"] < 0.001
    failed, _ = check(bad.run_dir, good.run_dir, tolerance=100.0)
    assert not failed
    # against a leaderboard JSON (no per-sample data): falls back to the CI
    board = toy / "board.json"
    board.write_text(lb.render(lb.build([lb.load_run(good.run_dir)]), "json"))
    failed, rows = check(bad.run_dir, board)
    assert failed and rows[0]["method"] == "baseline 95% CI"


def test_cli_check_exit_code(toy):
    good = _run(toy, out="good")
    bad = _run(toy, model_args={"wrong": True})
    cmd = [sys.executable, "-m", "evalkit.cli", "check"]
    assert subprocess.run(cmd + [str(bad.run_dir), "--baseline", str(good.run_dir)]).returncode == 1
    assert subprocess.run(cmd + [str(good.run_dir), "--baseline", str(good.run_dir)]).returncode == 0


def test_light_imports():
    code = ("import sys, evalkit, evalkit.cli, evalkit.engine.runner, evalkit.registry\n"
            "from evalkit import registry\n"
            "for n in registry.names('task') + registry.names('model'):\n"
            "    try: registry.get('task' if n in registry.names('task') else 'model', n)\n"
            "    except Exception: pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'vllm', 'openai', 'datasets', 'sklearn') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_help_and_list():
    r = subprocess.run([sys.executable, "-m", "evalkit.cli", "list", "tasks"], capture_output=True, text=True)
    assert r.returncode == 0 and "mmau" in r.stdout
    r = subprocess.run([sys.executable, "-m", "evalkit.cli", "run", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--choices" in r.stdout


def test_cli_reports_bad_arguments(toy):
    r = subprocess.run([sys.executable, "-m", "evalkit.cli", "run", "--model", "nope", "--task", "toy-mcq"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown model 'nope'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "evalkit.cli", "run", "--model", "scripted", "--task", "toy-mcq",
                        "-M", "answers"], capture_output=True, text=True)
    assert r.returncode == 2 and "key=value" in r.stderr


def test_task_args_route_by_task_prefix():
    from evalkit.cli import parse_kv, task_args_for

    targs = parse_kv(["sseu-asr.data=a", "mmau.data=b", "audio-root=r"], "-T")
    assert task_args_for("sseu-asr", targs, ["sseu-asr", "mmau"]) == {"audio_root": "r", "data": "a"}
    assert task_args_for("mmau", targs, ["sseu-asr", "mmau"]) == {"audio_root": "r", "data": "b"}


def test_committed_baselines_validate():
    from pathlib import Path

    runs = sorted((Path(__file__).resolve().parents[1] / "results" / "baselines").glob("*/run.json"))
    assert runs, "no committed baseline"
    for p in runs:
        run = json.loads(p.read_text())
        jsonschema.validate(run, schema("run.schema.json"))
        assert run["status"] == "complete" and run["counts"]["errors"] == 0
        board = lb.build([run])
        jsonschema.validate(board, schema("leaderboard.schema.json"))
        assert board["rows"][0]["synthetic"] is (run["task"]["source"].get("synthetic") is True)


def test_leaderboard_names_superseded_runs_and_flags(toy):
    a = _run(toy)
    b = _run(toy, seed=1)  # the same model configuration on the same task: one row, the newer run wins
    ra, rb = lb.load_run(a.run_dir), lb.load_run(b.run_dir)
    ra["updated"], rb["updated"] = "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"
    rb.setdefault("diagnostics", {})["audio_reliance"] = {"flag": True}
    rb["long_audio"] = {"truncated": 3}
    board = lb.build([ra, rb])
    jsonschema.validate(board, schema("leaderboard.schema.json"))
    row, = board["rows"]
    assert row["run_id"] == b.run_id and row["superseded"] == [a.run_id] and board["superseded_run_ids"] == [a.run_id]
    md = lb.render(board, "md")
    assert f"supersedes {a.run_id}" in md and "barely depend on the audio" in md and "3 samples' audio cut" in md


def test_plot_legends_tell_runs_apart():
    from evalkit.results.plot import legend_labels

    run = lambda rid, args: {"run_id": rid, "model": {"name": "whisper", "args": args}, "task": {"name": "sseu-asr"}}
    labels = legend_labels([run("aaaaaaaa11", {"size": "tiny.en"}), run("bbbbbbbb22", {"size": "base.en"}),
                            run("cccccccc33", {"size": "base.en"})])
    assert labels[0] == "whisper:tiny.en on sseu-asr"
    assert labels[1:] == ["whisper:base.en on sseu-asr (bbbbbbbb)", "whisper:base.en on sseu-asr (cccccccc)"]
