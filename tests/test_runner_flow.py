"""How run_task and its request loop report and stop: progress, failures that stop a run, answers the
adapter owes, timings, the export of upstream files, clean-up after a failed start. Each expectation is
derived by hand from the documented behaviour (issue 11: mutation kill rate of evalkit/engine/runner.py)."""
from __future__ import annotations

import hashlib
import json
import time

import pytest
from plugins import ToyMCQ
from test_runner_resume import KEYS, Probe, Recorder, probe_spec, records, tiny_tree

from evalkit import registry
from evalkit.engine.runner import FATAL_STOP_AFTER, ModelFailure, RunConfigError, RunSpec, RunStopped, run_task
from evalkit.engine.store import read_records
from evalkit.types import AudioRef, Response


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Seven MCQ items s0..s6, two options each, one clip each (tests/test_runner_resume.py)."""
    yield from tiny_tree(tmp_path, monkeypatch)


def answers(mapping):
    """A Probe.respond that answers the keys in `mapping` with a Response built from it, the others
    correctly. A value is a Response factory (key -> Response) or None (no answer at all)."""
    def respond(self, r):
        if r.key in mapping:
            make = mapping[r.key]
            return None if make is None else make(r.key)
        return self.correct(r)
    return respond


def fatal(cause):
    return lambda key: Response(key, error=f"{cause} (as sent)", extra={"fatal": cause})


def model_error(key):
    return Response(key, error="HTTP 500", latency_s=0.1)


# ---------------------------------------------------------------- progress


def test_progress_hears_the_total_and_every_record_once(tiny):
    (tiny / "audio" / "c2.wav").rename(tiny / "c2.wav")  # s2's input cannot be prepared
    seen = Recorder()
    run_task(probe_spec(tiny), progress=seen)  # batches of 3: s0-s2, s3-s5, s6
    assert seen.started == [("toy-mcq", 7, 0, 0)]
    # an input error is reported with its batch before the model answers the rest of it
    assert seen.advanced == [(1, 1), (1, 0), (1, 0), (1, 0), (1, 0), (1, 0), (1, 0)]
    assert seen.stopped == 1


def unreadable(monkeypatch, name):
    """Decoding the clip `name` fails (its bytes, and so the run id, stay as they are)."""
    real = AudioRef.load

    def load(self, sample_rate=None):
        if self.path.name == name:
            raise OSError(f"cannot decode {name}")
        return real(self, sample_rate)

    monkeypatch.setattr(AudioRef, "load", load)
    return lambda: monkeypatch.setattr(AudioRef, "load", real)


def test_a_record_whose_input_could_not_be_prepared_still_names_its_clip_and_bytes(tiny, monkeypatch):
    unreadable(monkeypatch, "c2.wav")
    res = run_task(probe_spec(tiny))
    rec = next(r for r in records(res) if r["key"] == "s2")
    assert rec["error"] == "OSError: cannot decode c2.wav" and rec["error_kind"] == "input"
    assert rec["audio"] == [{"ref": str(tiny / "audio" / "c2.wav"),
                             "sha256": hashlib.sha256((tiny / "audio" / "c2.wav").read_bytes()).hexdigest()}]


def test_progress_of_a_resumed_run_starts_from_what_is_on_disk(tiny, monkeypatch):
    readable = unreadable(monkeypatch, "c2.wav")
    monkeypatch.setattr(Probe, "respond", answers({"s4": model_error, "s5": None}))
    run_task(probe_spec(tiny))
    readable()
    monkeypatch.setattr(Probe, "respond", None)
    Probe.batches.clear()
    seen = Recorder()
    run_task(probe_spec(tiny), progress=seen)
    # s2 (never reached the model) is asked again; s4 (model error) and s5 (no answer) are kept: done
    # 6 of 7, 2 of them errors
    assert seen.started == [("toy-mcq", 7, 6, 2)] and Probe.batches == [["s2"]]
    assert seen.advanced == [(1, 0)] and seen.stopped == 1
    seen = Recorder()
    res = run_task(probe_spec(tiny, retry_errors=True), progress=seen)
    assert seen.started == [("toy-mcq", 7, 5, 0)]  # errors are to do again: not done
    assert Probe.batches[1:] == [["s4", "s5"]] and res.run["status"] == "complete"


def test_a_finished_run_asked_again_calls_nothing(tiny):
    run_task(probe_spec(tiny))
    Probe.batches.clear()
    seen = Recorder()
    res = run_task(probe_spec(tiny), progress=seen)
    assert seen.started == [("toy-mcq", 7, 7, 0)] and seen.advanced == [] and seen.stopped == 1
    assert Probe.batches == [] and res.calls == 0 and res.run["status"] == "complete"
    assert res.run["timings"]["sessions"][-1]["calls"] == 0


# ---------------------------------------------------------------- answers the adapter owes


def test_a_request_left_unanswered_becomes_a_model_error_record(tiny, monkeypatch):
    monkeypatch.setattr(Probe, "respond", answers({"s1": None, "s4": None}))
    seen = Recorder()
    res = run_task(probe_spec(tiny), progress=seen)
    recs = {r["key"]: r for r in records(res)}
    assert sorted(recs) == KEYS
    for k in ("s1", "s4"):
        assert recs[k]["error"] == "adapter returned no response for this request"
        assert recs[k]["error_kind"] == "model" and recs[k]["output"] is None
        # the request it was asked, and the bytes of its clip, as for any record
        clip = tiny / "audio" / f"c{k[1:]}.wav"
        assert recs[k]["prompt"][0]["content"][0] == {"type": "audio", "audio": str(clip)}
        assert recs[k]["audio"][0]["sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    # the unanswered request of each batch is reported after the answered ones, as one advance
    assert seen.advanced == [(1, 0), (1, 0), (1, 1), (1, 0), (1, 0), (1, 1), (1, 0)]
    assert res.run["status"] == "complete" and res.run["counts"]["errors"] == 2


@pytest.mark.parametrize("extra_key", ["zz", "s0"])
def test_an_answer_to_a_request_not_asked_stops_the_run(tiny, monkeypatch, extra_key):
    def respond(self, r):
        return Response(extra_key, text="(A)") if r.key == "s4" else self.correct(r)

    monkeypatch.setattr(Probe, "respond", respond)
    with pytest.raises(ModelFailure) as e:
        run_task(probe_spec(tiny))
    assert str(e.value) == (f"the adapter answered a request it was not asked ({extra_key!r}) "
                            "or answered one twice")
    res_dir = next((tiny / "runs").iterdir())
    run = json.loads((res_dir / "run.json").read_text())
    assert run["status"] == "incomplete" and run["stopped"] == f"the model failed: {e.value}"
    assert [r["key"] for r in read(res_dir)] == ["s0", "s1", "s2", "s3"]  # what came before is kept


def read(run_dir):
    return read_records(run_dir / "samples.jsonl")


# ---------------------------------------------------------------- failures that fail every request


def test_failures_that_fail_every_request_stop_after_three_in_a_row(tiny, monkeypatch):
    assert FATAL_STOP_AFTER == 3
    causes = {k: fatal("HTTP 401 from the server" if k == "s4" else f"HTTP 401 ({k})") for k in KEYS[2:]}
    slow_first = lambda key: (time.sleep(0.02), Response(key, text="The answer is (A)."))[1]  # s0's gold is A
    monkeypatch.setattr(Probe, "respond", answers({"s0": slow_first, **causes}))
    seen = Recorder()
    with pytest.raises(RunStopped) as e:
        run_task(probe_spec(tiny, batch_size=7), progress=seen)
    assert str(e.value) == ("3 requests in a row failed in a way that fails every request: "
                            "HTTP 401 from the server")
    # s0, s1 recorded; s2-s4 counted as failed, not recorded; s5, s6 not read at all
    assert seen.advanced == [(1, 0), (1, 0), (0, 1), (0, 1), (0, 1)] and seen.stopped == 1
    run_dir = next((tiny / "runs").iterdir())
    assert [r["key"] for r in read(run_dir)] == ["s0", "s1"]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "incomplete" and run["stopped"] == f"stopped: {e.value}"
    # a stopped session still reports what it asked: seven requests in one batch, time inside the adapter
    assert run["timings"]["sessions"][0]["calls"] == 7 and run["timings"]["sessions"][0]["model_s"] >= 0.02


def test_two_such_failures_in_a_row_do_not_stop_the_loop_but_the_run_ends_stopped(tiny, monkeypatch):
    # s1, s2 fatal; s3 answered (the count in a row restarts); s5, s6 fatal: never three in a row
    causes = {"s1": fatal("one"), "s2": fatal("two"), "s5": fatal("three"), "s6": fatal("four")}
    monkeypatch.setattr(Probe, "respond", answers(causes))
    seen = Recorder()
    with pytest.raises(RunStopped) as e:
        run_task(probe_spec(tiny, batch_size=1), progress=seen)
    assert str(e.value) == "4 requests failed in a way that would fail them again (last: four); they are not recorded"
    assert seen.advanced == [(1, 0), (0, 1), (0, 1), (1, 0), (1, 0), (0, 1), (0, 1)]
    run_dir = next((tiny / "runs").iterdir())
    assert [r["key"] for r in read(run_dir)] == ["s0", "s3", "s4"]
    # a resume asks only what was not recorded, and then finishes
    monkeypatch.setattr(Probe, "respond", None)
    Probe.batches.clear()
    res = run_task(probe_spec(tiny, batch_size=1))
    assert Probe.batches == [["s1"], ["s2"], ["s5"], ["s6"]] and res.run["status"] == "complete"
    assert [s["stopped"] for s in res.run["timings"]["sessions"]] == [f"stopped: {e.value}", None]


def test_a_failure_of_every_request_from_the_start_leaves_no_run_directory(tiny, monkeypatch):
    monkeypatch.setattr(Probe, "respond", answers({k: fatal("no such model") for k in KEYS}))
    with pytest.raises(RunStopped, match="3 requests in a row"):
        run_task(probe_spec(tiny))
    assert list((tiny / "runs").iterdir()) == []  # nothing recorded: no empty run left behind


def test_a_failed_resume_keeps_its_run_directory(tiny, monkeypatch):
    monkeypatch.setattr(Probe, "respond", answers({k: fatal("quota") for k in KEYS[3:]}))
    with pytest.raises(RunStopped):
        run_task(probe_spec(tiny, batch_size=7))
    run_dir = next((tiny / "runs").iterdir())
    monkeypatch.setattr(Probe, "respond", answers({k: fatal("quota") for k in KEYS}))
    with pytest.raises(RunStopped):
        run_task(probe_spec(tiny, batch_size=7))
    run = json.loads((run_dir / "run.json").read_text())
    assert len(run["timings"]["sessions"]) == 2 and run["status"] == "incomplete"
    assert [r["key"] for r in read(run_dir)] == ["s0", "s1", "s2"]


class Unloadable(Probe):
    name = "unloadable"

    def __init__(self, config):
        raise OSError("weights not found")


def test_a_model_that_cannot_load_leaves_no_run_directory_and_an_existing_one_untouched(tiny, monkeypatch):
    monkeypatch.setenv("EVALKIT_MODELS", "probe=test_runner_resume:Probe,unloadable=test_runner_flow:Unloadable")
    registry._table.cache_clear()
    spec = probe_spec(tiny)
    spec = RunSpec(**{**spec.__dict__, "model": "unloadable"})
    with pytest.raises(OSError, match="weights not found"):
        run_task(spec)
    assert list((tiny / "runs").iterdir()) == []
    # an existing (empty) run directory of the same run id is not removed
    spec.limit = 2
    with pytest.raises(OSError):
        run_task(spec)
    assert list((tiny / "runs").iterdir()) == []
    (tiny / "runs" / "keep").mkdir()
    with pytest.raises(OSError):
        run_task(spec)
    assert [p.name for p in (tiny / "runs").iterdir()] == ["keep"]


# ---------------------------------------------------------------- timings


def test_session_timings_count_calls_and_the_seconds_inside_the_adapter(tiny, monkeypatch):
    def slow(self, r):
        time.sleep(0.05)
        return self.correct(r)

    real_load = ToyMCQ.load

    def slow_load(self):
        time.sleep(0.05)
        return real_load(self)

    monkeypatch.setattr(ToyMCQ, "load", slow_load)
    monkeypatch.setattr(Probe, "respond", slow)
    t0 = time.perf_counter()
    res = run_task(probe_spec(tiny))
    elapsed = time.perf_counter() - t0
    s = res.run["timings"]["sessions"][0]
    assert s["calls"] == 7 == res.calls
    assert 7 * 0.05 <= s["model_s"] <= s["wall_s"] <= elapsed  # every batch's time in the adapter is summed
    assert 0.05 <= s["load_s"] <= elapsed - s["wall_s"]  # loading the data is not part of the session's wall
    for f in ("load_s", "wall_s", "model_s"):
        assert s[f] == round(s[f], 4)
    assert res.run["timings"]["total_wall_s"] == s["wall_s"]


# ---------------------------------------------------------------- retried errors and upstream files


def test_a_completed_retry_compacts_the_log_to_one_record_per_key(tiny, monkeypatch):
    monkeypatch.setattr(Probe, "respond", answers({"s1": model_error, "s5": model_error}))
    res = run_task(probe_spec(tiny))
    monkeypatch.setattr(Probe, "respond", answers({"s5": model_error}))
    run_task(probe_spec(tiny, retry_errors=True))  # s5 fails again: complete, compacted
    lines = (res.run_dir / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 7 and [r["key"] for r in read(res.run_dir)] == KEYS
    monkeypatch.setattr(Probe, "respond", None)
    run_task(probe_spec(tiny))  # without retry_errors a kept error is not asked again, nothing appended
    assert (res.run_dir / "samples.jsonl").read_text().splitlines() == lines


def test_without_retry_a_resume_appends_and_never_rewrites(tiny, monkeypatch):
    readable = unreadable(monkeypatch, "c2.wav")
    res = run_task(probe_spec(tiny))
    before = (res.run_dir / "samples.jsonl").read_text()
    readable()
    run_task(probe_spec(tiny))
    after = (res.run_dir / "samples.jsonl").read_text()
    assert after.startswith(before) and len(after.splitlines()) == 8  # the input error's record stays, superseded
    assert [r["error"] for r in read(res.run_dir) if r["key"] == "s2"] == ["OSError: cannot decode c2.wav", None]


class Exporting(ToyMCQ):
    name = "toy-export"
    exported: list[list[str]] = []

    def export(self, records, run_dir):
        assert (run_dir / "samples.jsonl").is_file()  # written into the run's own folder
        Exporting.exported.append([r["key"] for r in records])
        return []


@pytest.fixture
def exporting(tiny, monkeypatch):
    monkeypatch.setenv("EVALKIT_TASKS", "toy-mcq=plugins:ToyMCQ,toy-export=test_runner_flow:Exporting")
    registry._table.cache_clear()
    monkeypatch.setattr(Exporting, "exported", [])
    return tiny


def export_spec(root, **kw):
    spec = probe_spec(root, **kw)
    spec.task = "toy-export"
    return spec


def test_upstream_files_are_written_when_a_run_completes_and_only_when_its_records_change(exporting, monkeypatch):
    monkeypatch.setattr(Probe, "respond", answers({"s6": fatal("quota")}))
    with pytest.raises(RunStopped):
        run_task(export_spec(exporting))
    assert Exporting.exported == []  # incomplete: nothing exported
    monkeypatch.setattr(Probe, "respond", None)
    run_task(export_spec(exporting))
    assert Exporting.exported == [KEYS]  # completed by this session
    run_task(export_spec(exporting))
    assert Exporting.exported == [KEYS]  # nothing new: the files stay as they are


def test_a_complete_run_whose_record_said_otherwise_is_exported_again(exporting, monkeypatch):
    res = run_task(export_spec(exporting))
    run = json.loads((res.run_dir / "run.json").read_text())
    run["status"] = "incomplete"  # e.g. a session stopped after its last record was written
    (res.run_dir / "run.json").write_text(json.dumps(run))
    again = run_task(export_spec(exporting))
    assert again.calls == 0 and again.run["status"] == "complete"
    assert Exporting.exported == [KEYS, KEYS]


def test_an_unprepared_input_keeps_the_run_incomplete_with_its_reason(exporting):
    (exporting / "audio" / "c2.wav").unlink()
    res = run_task(export_spec(exporting))
    assert res.run["status"] == "incomplete" and Exporting.exported == []
    assert res.run["stopped"] == ("1 of 7 requests could not be prepared (their input never reached the model); "
                                  "fix the cause and run the same command again")


# ---------------------------------------------------------------- checks before the first call


def test_the_adapters_protocol_check_sees_the_choice_mode_and_the_selection(tiny, monkeypatch):
    seen = []
    monkeypatch.setattr(Probe, "check_protocol",
                        classmethod(lambda cls, config, mode, selected: seen.append((mode, [p.key for p in selected]))),
                        raising=False)
    run_task(probe_spec(tiny, limit=3))
    spec = probe_spec(tiny, limit=2)
    spec.choices = "balanced"
    run_task(spec)
    spec = probe_spec(tiny, limit=2)
    spec.task = "toy-open"  # not multiple choice: the order shown is always the original
    spec.choices = "balanced"
    run_task(spec)
    assert seen == [("original", ["s0", "s1", "s2"]), ("balanced", ["s0", "s1"]), ("original", ["s0", "s1"])]


def test_an_adapters_protocol_refusal_stops_before_any_call(tiny, monkeypatch):
    def refuse(cls, config, mode, selected):
        raise RunConfigError("predictions refer to the upstream order: use --choices original")

    monkeypatch.setattr(Probe, "check_protocol", classmethod(refuse), raising=False)
    with pytest.raises(RunConfigError, match="upstream order"):
        run_task(probe_spec(tiny))
    assert Probe.batches == [] and not (tiny / "runs").exists()


# ---------------------------------------------------------------- more of run_task


def test_an_interrupted_session_says_so_and_keeps_what_it_recorded(tiny, monkeypatch):
    def respond(self, r):
        if r.key == "s3":
            raise KeyboardInterrupt
        return self.correct(r)

    monkeypatch.setattr(Probe, "respond", respond)
    with pytest.raises(KeyboardInterrupt):
        run_task(probe_spec(tiny, batch_size=1))
    run_dir = next((tiny / "runs").iterdir())
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "incomplete" and run["stopped"] == "interrupted"
    assert [r["key"] for r in read(run_dir)] == ["s0", "s1", "s2"]


def test_an_existing_run_directory_survives_a_failed_start(tiny, monkeypatch):
    from evalkit.engine import runner

    ids = []
    real = runner.compute_run_id
    monkeypatch.setattr(runner, "compute_run_id", lambda *a, **k: ids.append(real(*a, **k)) or ids[-1])
    monkeypatch.setattr(Probe, "respond", answers({k: fatal("quota") for k in KEYS}))
    with pytest.raises(RunStopped):
        run_task(probe_spec(tiny))
    assert not (tiny / "runs" / ids[0]).exists()  # made by this failed start: removed
    (tiny / "runs" / ids[0]).mkdir()  # made before the start (say by the user): kept, empty
    with pytest.raises(RunStopped):
        run_task(probe_spec(tiny))
    assert ids[1] == ids[0] and (tiny / "runs" / ids[0]).is_dir()


def test_a_task_without_audio_has_no_audio_hash(tiny):
    items = json.loads((tiny / "toy.json").read_text())
    for it in items:
        del it["audio"]
    (tiny / "toy.json").write_text(json.dumps(items))
    res = run_task(probe_spec(tiny))
    assert res.run["task"]["audio_hash"] is None and res.run["status"] == "complete"
    assert all(r["audio"] == [] for r in records(res))


def test_a_task_that_is_not_multiple_choice_shows_its_options_in_their_own_order(tiny):
    spec = probe_spec(tiny)
    spec.task, spec.choices = "toy-open", "balanced"
    res = run_task(spec)
    assert [r["permutation"] for r in records(res)] == [[0, 1]] * 7
    assert [r.text().count("(A) yes") for r in Probe.seen] == [1] * 7
    balanced = probe_spec(tiny)  # the same items as multiple choice: balanced reorders some of them
    balanced.choices = "balanced"
    assert [1, 0] in [r["permutation"] for r in records(run_task(balanced))]


def test_the_loaded_models_own_strategy_check_refuses_with_its_message(tiny, monkeypatch):
    from evalkit.engine.strategies import SelfConsistency, StrategyError

    def check(self, task, model, spec):
        if not isinstance(model, type):  # the class passes; the loaded instance narrows it
            raise StrategyError("this preset cannot sample: -S temperature is ignored")

    monkeypatch.setattr(SelfConsistency, "check", check)
    spec = probe_spec(tiny)
    spec.strategy, spec.strategy_options = "self-consistency", {"k": 2}
    with pytest.raises(RunConfigError) as e:
        run_task(spec)
    assert str(e.value) == "this preset cannot sample: -S temperature is ignored" and Probe.batches == []


def test_a_completed_retry_compacts_in_the_order_of_the_selection(tiny, monkeypatch):
    monkeypatch.setattr(Probe, "respond", answers({"s3": model_error}))
    first = run_task(probe_spec(tiny, shard=(1, 2)))  # s1, s3, s5 first in the file
    assert [r["key"] for r in records(first)] == ["s1", "s3", "s5"]
    monkeypatch.setattr(Probe, "respond", None)
    res = run_task(probe_spec(tiny, retry_errors=True))
    assert res.run_dir == first.run_dir and res.run["status"] == "complete"
    assert [r["key"] for r in read(res.run_dir)] == KEYS


def test_the_run_record_holds_the_audio_hash_that_enters_the_run_id(tiny):
    from evalkit.engine.runner import compute_run_id

    res = run_task(probe_spec(tiny))
    audio_hash = res.run["task"]["audio_hash"]
    assert isinstance(audio_hash, str) and len(audio_hash) >= 16
    (tiny / "audio" / "c6.wav").write_bytes((tiny / "audio" / "c6.wav").read_bytes()[:-2])  # new bytes, same name
    again = run_task(probe_spec(tiny))
    assert again.run["task"]["audio_hash"] != audio_hash and again.run_id != res.run_id
    # the run id is the documented hash of the recorded identity with that audio hash
    task = registry.get_task("toy-mcq").from_args({"data": str(tiny / "toy.json")})
    model = {k: v for k, v in again.run["model"].items() if k != "info"}
    assert compute_run_id(model, task, again.run["task"]["data_hash"], probe_spec(tiny),
                          again.run["task"]["audio_hash"]) == again.run_id


def test_an_empty_shard_is_a_complete_run_with_no_figures(tiny):
    res = run_task(probe_spec(tiny, shard=(7, 8)))  # eight shards of seven samples: the eighth is empty
    assert res.run["status"] == "complete" and res.run["counts"]["records"] == 0 and res.run["metrics"] == {}
    assert res.run_dir.is_dir() and res.calls == 0 and Probe.batches == []


def test_a_strategy_record_has_the_plain_fields_and_its_strategy(tiny):
    plain = records(run_task(probe_spec(tiny)))
    spec = probe_spec(tiny)
    spec.strategy, spec.strategy_options = "self-consistency", {"k": 2}
    voted = records(run_task(spec))
    assert [sorted(r) for r in voted] == [sorted([*r, "strategy"]) for r in plain]
    assert all("strategy" not in r["extra"] for r in voted)  # moved out of extra, not copied
