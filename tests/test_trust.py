"""Exit 0 means the numbers are right: runs that did not really happen are never "complete", a
result never survives a change of its inputs, figures count only samples that reached a model.

Each test here failed on the runner before these rules (issue 10)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evalkit.engine.runner import ModelHolder, RunConfigError, RunSpec, RunStopped, run_task
from evalkit.engine.store import read_records
from evalkit.models.base import AdapterConfig, Model
from evalkit.types import Response


class OddConfig(AdapterConfig):
    mode: str
    model_dir: str | None = None  # a "local model folder": its content is identity


class Odd(Model):
    """Answers every request correctly ("(A)" is never right by construction: it reads the options) or
    in one of the broken ways real backends have."""

    name = "odd"
    capabilities = frozenset({"audio", "text"})
    Config = OddConfig
    default_batch_size = 8
    calls = 0

    def _answer(self, r) -> Response:
        Odd.calls += 1
        mode = self.config.mode
        if mode == "fatal":
            return Response(r.key, error="HTTP 401: invalid api key", extra={"fatal": "HTTP 401 from the server"})
        if mode == "number":
            return Response(r.key, text=5)
        if mode == "nan":
            return Response(r.key, text="The answer is (A).", extra={"usage": {"prompt_tokens": float("nan")}})
        if mode == "surrogate":
            return Response(r.key, text="The answer is (A). \ud800")
        if mode == "error":
            return Response(r.key, error="the backend said no")
        return Response(r.key, text="The answer is (A).")

    def generate(self, requests):
        return [self._answer(r) for r in requests]

    def generate_stream(self, requests):
        if self.config.mode == "stream-then-raise":
            for r in requests[:2]:
                yield self._answer(r)
            raise RuntimeError("the server went away")
        yield from self.generate(requests)


@pytest.fixture
def odd(toy, monkeypatch):
    from evalkit import registry

    monkeypatch.setenv("EVALKIT_MODELS", "scripted=plugins:Scripted,odd=test_trust:Odd")
    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(toy / "cache"))
    registry._table.cache_clear()
    Odd.calls = 0
    yield toy
    registry._table.cache_clear()


def odd_spec(toy, mode, **kw):
    return RunSpec(model="odd", task="toy-mcq", model_args={"mode": mode, **kw.pop("model_args", {})},
                   task_args={"data": str(toy / "toy.json")}, output=toy / "runs", **kw)


def scripted_spec(toy, **kw):
    return RunSpec(model="scripted", task="toy-mcq", model_args={"answers": str(toy / "key.json")},
                   task_args={"data": str(toy / "toy.json")}, output=toy / "runs", **kw)


# ---------------------------------------------------------------- a run that did not happen


def test_fatal_responses_stop_the_run_and_record_nothing(odd):
    with pytest.raises(RunStopped, match="HTTP 401"):
        run_task(odd_spec(odd, "fatal", batch_size=1))
    assert Odd.calls == 3  # stopped after a few, not 24 error records with an accuracy of 0.00
    runs = list((odd / "runs").iterdir())
    assert runs == []  # nothing reached a model: no run directory, no figure


def test_records_are_on_disk_as_each_request_completes(odd):
    with pytest.raises(Exception, match="server went away"):
        run_task(odd_spec(odd, "stream-then-raise", batch_size=8))
    run_dir, = (odd / "runs").iterdir()
    assert len(read_records(run_dir / "samples.jsonl")) == 2  # the two answered before the crash are kept
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "incomplete" and run["counts"]["records"] == 2 and "went away" in run["stopped"]


def test_replies_of_the_wrong_shape_become_error_records(odd):
    res = run_task(odd_spec(odd, "number"))
    recs = read_records(res.run_dir / "samples.jsonl")
    assert len(recs) == 24 and all("int" in r["error"] for r in recs)
    assert res.run["counts"]["errors"] == 24 and res.run["counts"]["records"] == 24


def test_unloggable_fields_become_error_records_naming_the_field(odd):
    res = run_task(odd_spec(odd, "nan"))
    recs = read_records(res.run_dir / "samples.jsonl")
    assert len(recs) == 24 and res.run["counts"]["records"] == 24  # run.json counts what the file holds
    assert all("extra" in r["error"] and "could not be logged" in r["error"] for r in recs)


def test_lone_surrogates_are_replaced_and_the_repair_recorded(odd):
    res = run_task(odd_spec(odd, "surrogate"))
    recs = read_records(res.run_dir / "samples.jsonl")
    assert len(recs) == 24 and all(r["error"] is None and r["output"].endswith("\ufffd") for r in recs)
    assert all("surrogate" in r["extra"]["text_repaired"] for r in recs)


# ---------------------------------------------------------------- input errors


def test_input_errors_are_asked_again_on_resume_and_never_counted(odd, monkeypatch):
    from evalkit.types import AudioRef

    real_load = AudioRef.load
    flaky = {"a3.wav"}

    def load(self, sample_rate=None):
        if self.path is not None and self.path.name in flaky:
            raise OSError("Input/output error (a flaky network share)")
        return real_load(self, sample_rate)

    monkeypatch.setattr(AudioRef, "load", load)
    first = run_task(scripted_spec(odd))
    assert first.run["status"] == "incomplete" and first.run["counts"]["input_errors"] == 2
    assert first.run["metrics"]["accuracy"]["n"] == 22  # figures only over samples that reached the model
    flaky.clear()
    second = run_task(scripted_spec(odd))  # no --retry-errors: the input never reached the model
    assert second.run_id == first.run_id and second.calls == 2
    assert second.run["status"] == "complete" and second.run["counts"]["errors"] == 0
    assert second.run["metrics"]["accuracy"]["n"] == 24


def test_model_errors_are_kept_without_retry_errors(odd):
    res = run_task(odd_spec(odd, "error"))
    assert res.run["status"] == "complete" and res.run["counts"]["errors"] == 24
    again = run_task(odd_spec(odd, "error"))
    assert again.calls == 0


# ---------------------------------------------------------------- identity covers content


def test_replacing_a_clip_on_disk_is_a_new_run(odd):
    import soundfile as sf

    a = run_task(scripted_spec(odd))
    sf.write(odd / "audio" / "a0.wav", np.zeros(1600, dtype="float32"), 16000)  # the clip replaced by silence
    b = run_task(scripted_spec(odd))
    assert b.run_id != a.run_id and b.calls == 24
    rec = read_records(b.run_dir / "samples.jsonl")[0]
    import hashlib

    assert rec["audio"][0]["sha256"] == hashlib.sha256((odd / "audio" / "a0.wav").read_bytes()).hexdigest()


def test_same_bytes_elsewhere_are_the_same_run(odd):
    import shutil

    a = run_task(scripted_spec(odd))
    shutil.copytree(odd / "audio", odd / "copy" / "audio")
    shutil.copy(odd / "toy.json", odd / "copy" / "toy.json")
    spec = scripted_spec(odd)
    spec.task_args = {"data": str(odd / "copy" / "toy.json")}
    b = run_task(spec)
    assert b.run_id == a.run_id and b.calls == 0


def test_a_local_model_folders_content_is_identity(odd):
    folder = odd / "model"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"first export")
    a = run_task(odd_spec(odd, "ok", model_args={"model_dir": str(folder)}))
    assert a.run["model"]["content"]["model_dir"].startswith("tree:")
    (folder / "weights.safetensors").write_bytes(b"second export, same path")
    b = run_task(odd_spec(odd, "ok", model_args={"model_dir": str(folder)}))
    assert b.run_id != a.run_id and b.calls == 24


def test_fingerprints_follow_content_not_mtime_alone(tmp_path):
    from evalkit.engine.fingerprint import MISSING, Fingerprints

    f = tmp_path / "x.wav"
    f.write_bytes(b"abc")
    fp = Fingerprints(cache=None)
    import hashlib

    assert fp.file(f) == hashlib.sha256(b"abc").hexdigest()
    assert fp.file(tmp_path / "nope.wav") == MISSING
    f.write_bytes(b"abcd")  # new size: hashed again
    assert Fingerprints(cache=None).file(f) == hashlib.sha256(b"abcd").hexdigest()


def test_fingerprint_cache_is_closed_and_reused_across_runs(tmp_path, monkeypatch):
    """The sqlite cache is closed when the run start is done with it (no connection left to GC) and a
    new Fingerprints reads what the last one stored: the second lookup hashes nothing."""
    import sqlite3

    from evalkit.engine import fingerprint
    from evalkit.engine.fingerprint import Fingerprints

    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "x.wav"
    f.write_bytes(b"abc")
    with Fingerprints() as fp:
        conn = fp.cache._conn
        first = fp.file(f)
    assert fp.cache is None
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")  # closed
    hashed = []
    monkeypatch.setattr(fingerprint, "sha256_file", lambda p: hashed.append(p) or "recomputed")
    with Fingerprints() as fp2:
        assert fp2.file(f) == first and hashed == []


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize("kw, match", [({"limit": -2}, "--limit"), ({"limit": 0}, "--limit"),
                                       ({"batch_size": -1}, "--batch-size"), ({"choices": "random"}, "--choices")])
def test_bad_run_arguments_are_refused_before_any_work(odd, kw, match):
    with pytest.raises(RunConfigError, match=match):
        run_task(scripted_spec(odd, **kw))
    assert not (odd / "runs").exists() or not any((odd / "runs").iterdir())


def test_a_failed_start_leaves_no_run_directory(odd, monkeypatch):
    def broken(self, config):
        raise RuntimeError("weights not found")

    monkeypatch.setattr(Odd, "__init__", broken)
    with pytest.raises(Exception, match="weights not found"):
        run_task(odd_spec(odd, "ok"))
    assert list((odd / "runs").iterdir()) == []


def test_a_finished_run_in_a_read_only_folder_is_shown(odd, monkeypatch):
    from evalkit.engine.store import RunStore

    a = run_task(scripted_spec(odd))
    before = (a.run_dir / "run.json").read_text()

    def read_only(self):
        raise PermissionError(13, "Permission denied", str(self.dir / ".lock"))

    monkeypatch.setattr(RunStore, "acquire", read_only)
    b = run_task(scripted_spec(odd))
    assert b.run_id == a.run_id and b.calls == 0 and b.run["metrics"] == a.run["metrics"]
    assert (a.run_dir / "run.json").read_text() == before
    with pytest.raises(RunConfigError, match="read-only"):
        run_task(scripted_spec(odd, seed=5))  # unfinished (new) run: the message names the folder


# ---------------------------------------------------------------- the CLI's exit codes


def _cli(toy, *args):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "EVALKIT_MODELS": "scripted=plugins:Scripted,odd=test_trust:Odd", "EVALKIT_CACHE_DIR": str(toy / "cache")}
    return subprocess.run([sys.executable, "-m", "evalkit.cli", "run", "--task", "toy-mcq",
                           "-T", f"data={toy / 'toy.json'}", "--output", str(toy / "runs"), "-q", *args],
                          capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_exit_codes(odd):
    ok = _cli(odd, "--model", "scripted", "-M", f"answers={odd / 'key.json'}")
    assert ok.returncode == 0, ok.stderr
    errors = _cli(odd, "--model", "odd", "-M", "mode=error")
    assert errors.returncode == 3 and "24 samples hold error records" in errors.stderr and "--retry-errors" in errors.stderr
    fatal = _cli(odd, "--model", "odd", "-M", "mode=fatal")
    assert fatal.returncode == 4 and "HTTP 401" in fatal.stderr and "results" not in fatal.stdout
    (odd / "audio" / "a3.wav").unlink()
    incomplete = _cli(odd, "--model", "scripted", "-M", f"answers={odd / 'key.json'}", "--seed", "3")
    assert incomplete.returncode == 4 and "incomplete" in incomplete.stderr
    usage = _cli(odd, "--model", "scripted", "-M", f"answers={odd / 'key.json'}", "--limit", "-2")
    assert usage.returncode == 2 and "--limit" in usage.stderr
    typo = _cli(odd, "--model", "odd", "-M", "mdoe=ok")
    assert typo.returncode == 2 and "did you mean -M mode=" in typo.stderr and "valid: mode, model_dir" in typo.stderr


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(odd):
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "EVALKIT_CACHE_DIR": str(odd / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "evalkit.cli", "run", "--model", "scripted", "--task", "toy-mcq",
                             "-T", f"data={odd / 'toy.json'}", "-M", f"answers={odd / 'key.json'}",
                             "-M", "delay_s=0.2", "--batch-size", "1", "--output", str(odd / "runs"), "-q"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "resume" in err
    run_dir, = (odd / "runs").iterdir()
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "incomplete" and 0 < run["counts"]["records"] < 24


def test_version(capsys):
    from evalkit import __version__

    r = subprocess.run([sys.executable, "-m", "evalkit.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and __version__ in r.stdout


def test_holder_rejects_typos_with_pydantic(odd):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ModelHolder("odd", {"mdoe": "x"})


def test_leaderboard_prints_to_the_terminal_without_out(odd):
    res = run_task(scripted_spec(odd))
    r = subprocess.run([sys.executable, "-m", "evalkit.cli", "leaderboard", str(res.run_dir)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "toy-mcq" in r.stdout and "| task" in r.stdout and res.run_id in r.stdout


@pytest.mark.slow
def test_predictions_default_to_the_order_they_answered(odd):
    """A file of correct upstream letters, run without --choices, scores 100 (27% under balanced before)."""
    items = json.loads((odd / "toy.json").read_text())
    preds = odd / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": it["id"], "response": "(" + "ABCDE"[it["choices"].index(it["answer"])] + ")"})
                             + "\n" for it in items))
    r = _cli(odd, "--model", "predictions", "-M", f"path={preds}")
    assert r.returncode == 0, r.stderr
    run_dir, = (odd / "runs").iterdir()
    run = json.loads((run_dir / "run.json").read_text())
    assert run["protocol"]["choices"] == "original" and run["metrics"]["accuracy"]["value"] == 100.0
    refused = _cli(odd, "--model", "predictions", "-M", f"path={preds}", "--choices", "balanced")
    assert refused.returncode == 2 and "--choices original" in refused.stderr


def test_error_messages_are_masked_before_they_are_written(odd, monkeypatch):
    from evalkit.engine.secrets import register_secret

    secret = "sk-planted-0123456789abcdef"
    register_secret(secret)

    def leaky(self, r):
        return Response(r.key, error=f"HTTP 400: bad request for key {secret} at https://u:{secret}@host/v1")

    monkeypatch.setattr(Odd, "_answer", leaky)
    res = run_task(odd_spec(odd, "ok"))
    text = (res.run_dir / "samples.jsonl").read_text() + (res.run_dir / "run.json").read_text()
    assert secret not in text and "HTTP 400" in text
