"""Edge cases of evalkit.engine.runner: the run record, run id, rescore, each checked against a hand-derived expectation (issue 11: mutation kill rate)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from evalkit import __version__
from evalkit.engine import runner
from evalkit.engine.runner import RunConfigError, RunSpec, check_pairing, compute_run_id
from evalkit.models.base import AdapterConfig, Model
from evalkit.tasks.base import MCQTask, Task, TaskOptions
from evalkit.types import GenerationConfig


class PlainMCQ(MCQTask):
    name = "plain-mcq"
    version = "3"
    groupings = ("axis",)
    prompts = {"default": "{question}\n{options}", "terse": "{question} {options}"}


class RenamedMCQ(PlainMCQ):
    name = "other-mcq"


class NextVersionMCQ(PlainMCQ):
    version = "4"


class OpenTask(Task):
    """Not multiple choice: --choices means nothing to it."""

    name = "open-task"
    version = "2"
    main_metric = "wer"
    modality = "text"

    def score(self, record):
        return {"extracted": record.get("output"), "extraction_stage": None, "scores": {}}

    def aggregate(self, records):  # a task whose aggregate has no "extra"
        return {"metrics": {"answered": {"value": len(records)}}, "groups": {}}


def mcq(**options):
    return PlainMCQ(TaskOptions(**options))


def reference_run_id(model, task_name, version, options, data_hash, *, choices, seed=0, no_audio=False,
                     audio=None, silence=False, generation=None, strategy=None, release=__version__):
    """The run id as its contract spells it: sha256 of the canonical JSON (sorted keys, no spaces) of
    release, model identity, task identity (data location left out), protocol and generation, 16 hex digits;
    the audio hash, the silence ablation and the strategy enter only when present."""
    task = {"name": task_name, "version": version, "options": options, "data": data_hash}
    if audio is not None:
        task["audio"] = audio
    protocol = {"choices": choices, "seed": seed, "no_audio": no_audio}
    if silence:
        protocol["silence_audio"] = True
    obj = {"evalkit": release, "model": model, "task": task, "protocol": protocol,
           "generation": generation or {"max_new_tokens": 512, "temperature": 0.0, "top_p": 1.0, "seed": 0}}
    if strategy is not None:
        obj["strategy"] = strategy
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


MODEL = {"name": "m", "args": {"path": "/x"}}


def spec(**kw):
    return RunSpec(model="m", task="plain-mcq", **kw)


# ---------------------------------------------------------------- the run id


def test_run_id_is_the_documented_hash_of_its_inputs():
    task = mcq(data="/data/a.json", audio_root="/audio")
    got = compute_run_id(MODEL, task, "sha256:d", spec())
    # data and audio_root are where the data lies, not what it is: left out (the data hash covers it)
    assert got == reference_run_id(MODEL, "plain-mcq", "3", {"prompt": "default"}, "sha256:d", choices="balanced")
    assert len(got) == 16


def test_run_id_with_audio_hash_silence_and_generation():
    task = mcq()
    gen = GenerationConfig(max_new_tokens=7, temperature=0.5, top_p=0.9, seed=3)
    got = compute_run_id(MODEL, task, "h", spec(choices="circular", seed=4, no_audio=True, silence_audio=True,
                                                generation=gen), "sha256:aud")
    want = reference_run_id(MODEL, "plain-mcq", "3", {"prompt": "default"}, "h", choices="circular", seed=4,
                            no_audio=True, audio="sha256:aud", silence=True,
                            generation={"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 3})
    assert got == want


def test_run_id_with_a_strategy_names_it_and_its_options():
    got = compute_run_id(MODEL, mcq(), "h", spec(strategy="cot", strategy_options={"require_answer_line": False}))
    want = reference_run_id(MODEL, "plain-mcq", "3", {"prompt": "default"}, "h", choices="balanced",
                            strategy={"name": "cot", "options": {"require_answer_line": False}})
    assert got == want


def test_run_id_of_a_non_mcq_task_ignores_the_choice_mode():
    task = OpenTask(TaskOptions())
    ids = {compute_run_id(MODEL, task, "h", spec(choices=c)) for c in ("balanced", "original", "circular")}
    assert ids == {reference_run_id(MODEL, "open-task", "2", {"prompt": "default"}, "h", choices=None)}


def test_run_id_changes_with_every_input_that_changes_the_answers(monkeypatch):
    base = compute_run_id(MODEL, mcq(), "h", spec())
    changed = {
        "model": compute_run_id({"name": "m", "args": {"path": "/y"}}, mcq(), "h", spec()),
        "task": compute_run_id(MODEL, RenamedMCQ(TaskOptions()), "h", spec()),
        "task version": compute_run_id(MODEL, NextVersionMCQ(TaskOptions()), "h", spec()),
        "prompt variant": compute_run_id(MODEL, mcq(prompt="terse"), "h", spec()),
        "data": compute_run_id(MODEL, mcq(), "h2", spec()),
        "audio": compute_run_id(MODEL, mcq(), "h", spec(), "sha256:a"),
        "choices": compute_run_id(MODEL, mcq(), "h", spec(choices="original")),
        "seed": compute_run_id(MODEL, mcq(), "h", spec(seed=1)),
        "no audio": compute_run_id(MODEL, mcq(), "h", spec(no_audio=True)),
        "silence": compute_run_id(MODEL, mcq(), "h", spec(silence_audio=True)),
        "generation": compute_run_id(MODEL, mcq(), "h", spec(generation=GenerationConfig(max_new_tokens=9))),
        "strategy": compute_run_id(MODEL, mcq(), "h", spec(strategy="cot")),
    }
    monkeypatch.setattr(runner, "__version__", __version__ + ".post1")
    changed["release"] = compute_run_id(MODEL, mcq(), "h", spec())
    assert base not in changed.values() and len(set(changed.values())) == len(changed)


def test_run_id_ignores_what_does_not_change_the_answers(tmp_path):
    base = compute_run_id(MODEL, mcq(data="/a", audio_root="/b"), "h", spec())
    same = [compute_run_id(MODEL, mcq(data="/elsewhere", audio_root="/other"), "h", spec()),
            compute_run_id(MODEL, mcq(), "h", spec(limit=3, shard=(1, 4), batch_size=2, retry_errors=True,
                                                   output=tmp_path)),
            compute_run_id(MODEL, mcq(), "h", spec(), None)]
    assert same == [base] * 3


# ---------------------------------------------------------------- pairing a model with a task


def caps(*names):
    return SimpleNamespace(capabilities=frozenset(names))


def task_of(modality, required=frozenset(), name="t"):
    return SimpleNamespace(modality=modality, required_capabilities=frozenset(required), name=name)


def test_text_only_model_on_an_audio_task_is_refused_unless_audio_is_dropped():
    with pytest.raises(RunConfigError) as e:
        check_pairing(caps("text"), task_of("audio", name="mmau"), RunSpec(model="llm", task="mmau"))
    assert str(e.value) == ("model 'llm' takes text only but task 'mmau' needs audio; "
                            "pass --no-audio for an explicit no-audio ablation")
    check_pairing(caps("text"), task_of("audio"), RunSpec(model="llm", task="t", no_audio=True))
    check_pairing(caps("audio"), task_of("audio"), RunSpec(model="alm", task="t"))


def test_text_task_needs_a_model_that_reads_text():
    with pytest.raises(RunConfigError) as e:
        check_pairing(caps("audio"), task_of("text", name="trivia"), RunSpec(model="clap", task="trivia"))
    assert str(e.value) == "model 'clap' cannot answer text-only task 'trivia'"
    with pytest.raises(RunConfigError, match="cannot answer text-only"):  # dropping audio does not help
        check_pairing(caps("audio"), task_of("text"), RunSpec(model="clap", task="t", no_audio=True))
    check_pairing(caps("text"), task_of("text"), RunSpec(model="llm", task="t"))


def test_missing_required_capabilities_are_named_sorted():
    task = task_of("audio", {"timestamps", "multi_audio", "audio"}, name="pair")
    with pytest.raises(RunConfigError) as e:
        check_pairing(caps("audio"), task, RunSpec(model="alm", task="pair"))
    assert str(e.value) == ("model 'alm' lacks multi_audio, timestamps, which task 'pair' needs"
                            " (several audio clips per request)")
    with pytest.raises(RunConfigError) as e:
        check_pairing(caps("audio"), task_of("audio", {"timestamps"}, name="seg"), RunSpec(model="alm", task="seg"))
    assert str(e.value) == "model 'alm' lacks timestamps, which task 'seg' needs"
    check_pairing(caps("audio", "multi_audio", "timestamps"), task, RunSpec(model="alm", task="pair"))


def test_required_capabilities_do_not_apply_without_audio():
    """--no-audio sends no clip: what a task needs of the audio path is moot."""
    check_pairing(caps("text"), task_of("audio", {"multi_audio"}), RunSpec(model="llm", task="t", no_audio=True))


def test_task_without_required_capabilities_attribute():
    check_pairing(caps("audio"), SimpleNamespace(modality="audio", name="t"), RunSpec(model="m", task="t"))


# ---------------------------------------------------------------- run.json


class FakeHolder:
    """What build_run_record reads of a ModelHolder: the loaded adapter (if any) and the identity."""

    def __init__(self, model=None):
        self._model = model

    @property
    def model(self):
        return self._model

    def identity(self, fingerprints=None):
        return {"name": "fake", "args": {"size": "tiny"}}


class InfoModel:
    def __init__(self, info):
        self._info = info

    def info(self):
        if isinstance(self._info, Exception):
            raise self._info
        return self._info


def three_choice_samples(n):
    from evalkit.types import Sample

    return [Sample(id=f"s{i}", question=f"q{i}?", choices=["red", "green", "blue"], answer=i % 3,
                   metadata={"axis": "x" if i % 2 else "y"}) for i in range(n)]


def scored(task, p, output=None, error=None, error_kind=None, extra=None):
    rec = runner.base_record(p, None)
    rec.update({"output": output, "error": error, "error_kind": error_kind, "latency_s": 0.1, "extra": extra or {}})
    rec.update(task.score(rec))
    return rec


LETTER = "ABC"


def five_records(task, selected):
    """s0 right, s1 wrong, s2 unreadable reply, s3 a model error, s4 never reached the model."""
    p = {q.key: q for q in selected}
    return [scored(task, p["s0"], f"The answer is ({LETTER[p['s0'].gold]})."),
            scored(task, p["s1"], f"The answer is ({LETTER[(p['s1'].gold + 1) % 3]})."),
            scored(task, p["s2"], "I cannot tell."),
            scored(task, p["s3"], error="HTTP 500", error_kind="model"),
            scored(task, p["s4"], error="OSError: unreadable", error_kind="input")]


def loaded(samples, **kw):
    from evalkit.tasks.base import LoadedData

    return LoadedData(samples, {"kind": "local", "path": "/data/q.json"}, "sha256:data", **kw)


def build(spec_, task, data, selected, records, *, holder=None, status="incomplete", previous=None,
          timing=None, **kw):
    return runner.build_run_record(spec_, task, data, holder or FakeHolder(), "rid0", selected, records, status,
                                   timing or {"load_s": 0.5, "wall_s": 1.25, "model_s": 1.0, "calls": 4},
                                   previous, **kw)


def iso_now_close(text):
    from datetime import datetime, timezone

    t = datetime.fromisoformat(text)
    assert t.utcoffset().total_seconds() == 0 and t.microsecond == 0 and text.endswith("+00:00")
    assert abs((datetime.now(timezone.utc) - t).total_seconds()) < 60


def test_run_record_fields_of_a_first_session():
    from evalkit.protocol.choices import present

    samples = three_choice_samples(7)
    task = mcq(data="/data/q.json", audio_root="/clips")
    selected = present(samples, "original", 0)[:6]  # s5 selected, not yet asked; s6 beyond --limit
    records = five_records(task, selected)
    run = build(spec(limit=6, shard=(1, 4), batch_size=3, seed=2), task, loaded(samples, warnings=["w1"]),
                selected, records, identity={"name": "m", "args": {}}, audio_hash="sha256:aud", stopped="why")
    assert run["schema_version"] == 1 and run["run_id"] == "rid0"
    assert run["status"] == "incomplete" and run["stopped"] == "why"
    iso_now_close(run["updated"])
    assert run["created"] == run["updated"]
    assert run["evalkit"]["version"] == __version__ and {"commit", "dirty"} <= run["evalkit"].keys()
    assert run["environment"]["python"] == __import__("platform").python_version()
    assert run["task"] == {"name": "plain-mcq", "version": "3",
                           "options": {"data": "/data/q.json", "audio_root": "/clips", "prompt": "default"},
                           "source": {"kind": "local", "path": "/data/q.json"}, "data_hash": "sha256:data",
                           "audio_hash": "sha256:aud", "warnings": ["w1"], "main_metric": "accuracy",
                           "modality": "audio"}
    assert run["model"] == {"name": "m", "args": {}, "info": {}}  # the identity given, nothing loaded
    assert run["generation"] == {"max_new_tokens": 512, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    # answers 0,1,2,0,1,2 in upstream order, shown in that order
    assert run["protocol"] == {"choices": "balanced", "seed": 2, "limit": 6, "shard": "2/4", "no_audio": False,
                               "silence_audio": False,
                               "gold_positions": {"before": {"3": {"A": 2, "B": 2, "C": 2}},
                                                  "after": {"3": {"A": 2, "B": 2, "C": 2}}}}
    assert run["batch_size"] == 3
    assert run["counts"] == {"records": 5, "samples": 5, "errors": 2, "input_errors": 1, "extraction_failures": 1,
                             "selected_samples": 6, "selected_calls": 6, "task_samples": 7}
    session, = run["timings"]["sessions"]
    assert session == {"finished": run["updated"], "load_s": 0.5, "wall_s": 1.25, "model_s": 1.0, "calls": 4,
                       "task_options": {"data": "/data/q.json", "audio_root": "/clips"},
                       "status": "incomplete", "stopped": "why"}
    assert run["timings"]["total_wall_s"] == 1.25
    # figures over the four records that reached the model: one right, one extraction failure
    assert run["metrics"]["accuracy"]["value"] == 25.0 and run["metrics"]["accuracy"]["n"] == 4
    assert run["metrics"]["extraction_failure"]["value"] == 25.0
    assert run["groups"]["axis"]["y"]["accuracy"]["n"] == 2 and run["groups"]["axis"]["x"]["accuracy"]["n"] == 2
    assert run["extra"] == {"extraction_stages": {"answer_phrase": 2, "error": 1, "none": 1}}
    assert run["long_audio"] is None
    ext = run["diagnostics"]["extraction"]
    assert ext["records"] == 3 and ext["model_errors"] == 1 and ext["failures"] == 1
    assert run["diagnostics"]["position_bias"]["by_choice_count"]["3"]["records"] == 4  # positions checked (MCQ)
    assert "strategy" not in run


def test_run_record_circular_counts_calls_and_samples_apart():
    from evalkit.protocol.choices import present

    samples = three_choice_samples(2)
    task = mcq()
    selected = present(samples, "circular", 0)
    run = build(spec(choices="circular"), task, loaded(samples), selected, [])
    assert run["counts"]["selected_samples"] == 2 and run["counts"]["selected_calls"] == 6
    assert run["counts"]["records"] == 0 and run["counts"]["task_samples"] == 2
    assert run["protocol"]["gold_positions"]["after"] == {"3": {"A": 2, "B": 2, "C": 2}}
    assert run["metrics"] == {} and run["groups"] == {} and run["extra"] == {}
    assert run["model"] == {"name": "fake", "args": {"size": "tiny"}, "info": {}}  # the holder's, when none given
    assert run["task"]["audio_hash"] is None and run["protocol"]["shard"] is None
    assert run["stopped"] is None


def test_run_record_of_a_resumed_session_keeps_history():
    from evalkit.protocol.choices import present

    samples = three_choice_samples(5)
    task = mcq(data="/new/copy.json")
    selected = present(samples, "original", 0)
    previous = {"created": "2026-01-01T00:00:00+00:00",
                "timings": {"sessions": [{"finished": "2026-01-01T00:00:00+00:00", "wall_s": 2.00002}]},
                "model": {"info": {"revision": "r1"}},
                "diagnostics": {"audio_reliance": {"drop": 0.5}, "extraction": "stale"}}
    run = build(spec(), task, loaded(samples), selected, five_records(task, selected), previous=previous,
                status="complete", timing={"load_s": 0.0, "wall_s": 1.00004, "model_s": 0.0, "calls": 0})
    assert run["created"] == "2026-01-01T00:00:00+00:00" and run["updated"] != run["created"]
    first, second = run["timings"]["sessions"]
    assert first == previous["timings"]["sessions"][0]
    assert second["task_options"] == {"data": "/new/copy.json", "audio_root": None} and second["status"] == "complete"
    assert run["timings"]["total_wall_s"] == 3.0001  # rounded to 4 places
    assert run["model"]["info"] == {"revision": "r1"}  # not loaded this session: what the last one said
    assert run["diagnostics"]["audio_reliance"] == {"drop": 0.5}  # the audio check's entry survives
    assert run["diagnostics"]["extraction"]["records"] == 3
    assert previous["timings"]["sessions"] == [{"finished": "2026-01-01T00:00:00+00:00", "wall_s": 2.00002}]


@pytest.mark.parametrize("info, want", [
    ({"revision": "abc", "api_key": "sk-runrec-secret-0001"}, {"revision": "abc", "api_key": "***"}),
    (RuntimeError("no info today"), {"error": "no info today"}),
])
def test_run_record_model_info_from_the_loaded_adapter(info, want):
    from evalkit.engine.secrets import MASK
    from evalkit.protocol.choices import present

    samples = three_choice_samples(1)
    previous = {"model": {"info": {"revision": "stale"}}}
    run = build(spec(), mcq(), loaded(samples), present(samples, "original", 0), [],
                holder=FakeHolder(InfoModel(info)), previous=previous)
    assert run["model"]["info"] == {k: (MASK if v == "***" else v) for k, v in want.items()}
    assert run["created"] == run["updated"]  # the previous session wrote no creation time: this one is it


def test_run_record_without_previous_info_or_model():
    from evalkit.protocol.choices import present

    samples = three_choice_samples(1)
    run = build(spec(), mcq(), loaded(samples), present(samples, "original", 0), [], previous={"created": "c"})
    assert run["model"]["info"] == {} and run["created"] == "c"
    run = build(spec(), mcq(), loaded(samples), present(samples, "original", 0), [], previous={"model": {"n": 1}})
    assert run["model"]["info"] == {}


class WindowOptions(TaskOptions):
    window: tuple[int, int] = (0, 30)


class WindowMCQ(PlainMCQ):
    Options = WindowOptions


def test_run_record_task_options_as_json_has_them():
    from evalkit.protocol.choices import present

    samples = three_choice_samples(1)
    run = build(spec(), WindowMCQ(WindowOptions()), loaded(samples), present(samples, "original", 0), [])
    assert run["task"]["options"] == {"data": None, "audio_root": None, "prompt": "default", "window": [0, 30]}
    assert type(run["task"]["options"]["window"]) is list  # what run.json reads back, not a tuple


# ---------------------------------------------------------------- rescore


@pytest.fixture
def toy_registry(monkeypatch):
    import plugins

    plugins.install(monkeypatch)
    yield
    from evalkit import registry

    registry._table.cache_clear()


def stale_run(run_dir, samples, records, task_name="toy-mcq", **run_fields):
    """A run directory as an older extractor left it: every record claimed right, figures to match."""
    from evalkit.engine.store import RunStore

    for r in records:
        r.update(extracted="A", extraction_stage="stale", scores={"accuracy": 1.0, "extraction_failure": 0.0})
    store = RunStore(run_dir)
    with store:
        store.append(records)
        store.write_run({"run_id": "rid0", "task": {"name": task_name, "options": {"data": "/nowhere.json"}},
                         "counts": {"records": 5, "errors": 0, "input_errors": 0, "extraction_failures": 0,
                                    "selected_samples": 9},
                         "metrics": {"accuracy": {"value": 100.0}}, "groups": {}, "extra": {"old": 1},
                         "diagnostics": {"audio_reliance": {"drop": 0.5}, "extraction": "stale"}, **run_fields})


def test_rescore_recomputes_records_figures_and_counts(tmp_path, toy_registry):
    import plugins

    from evalkit.engine.store import read_records
    from evalkit.protocol.choices import present

    samples = three_choice_samples(5)
    task = plugins.ToyMCQ(TaskOptions(data="/nowhere.json"))
    selected = present(samples, "original", 0)
    stale_run(tmp_path, samples, five_records(task, selected))
    run = runner.rescore(tmp_path)
    on_disk = json.loads((tmp_path / "run.json").read_text())
    assert on_disk == run
    assert run["metrics"]["accuracy"]["value"] == 25.0 and run["metrics"]["accuracy"]["n"] == 4
    assert run["metrics"]["extraction_failure"]["value"] == 25.0
    assert run["groups"]["axis"]["y"]["accuracy"]["n"] == 2
    assert run["extra"] == {"extraction_stages": {"answer_phrase": 2, "error": 1, "none": 1}}
    assert run["counts"] == {"records": 5, "samples": 5, "errors": 2, "input_errors": 1, "extraction_failures": 1,
                             "selected_samples": 9}  # what the records do not decide is kept
    assert run["diagnostics"]["audio_reliance"] == {"drop": 0.5}
    ext = run["diagnostics"]["extraction"]
    assert ext["records"] == 3 and ext["model_errors"] == 1 and ext["failures"] == 1
    assert run["diagnostics"]["position_bias"]["by_choice_count"]["3"]["records"] == 4
    iso_now_close(run["rescored"])
    recs = {r["key"]: r for r in read_records(tmp_path / "samples.jsonl")}
    assert [recs[f"s{i}"]["scores"]["accuracy"] for i in range(5)] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert [recs[f"s{i}"]["extraction_stage"] for i in range(5)] == ["answer_phrase", "answer_phrase", "none",
                                                                      "error", "error"]
    assert recs["s0"]["extracted"] == LETTER[selected[0].gold]


def test_rescore_of_a_run_without_records(tmp_path, toy_registry):
    stale_run(tmp_path, [], [])
    run = runner.rescore(tmp_path)
    assert run["metrics"] == {} and run["groups"] == {} and run["extra"] == {}
    assert run["counts"]["records"] == 0 and run["counts"]["selected_samples"] == 9


def test_rescore_refuses_a_folder_without_run_json(tmp_path):
    with pytest.raises(RunConfigError) as e:
        runner.rescore(tmp_path)
    assert str(e.value) == f"{tmp_path}: no run.json; is this a run directory?"


def test_rescore_of_an_unchanged_run_reproduces_its_figures(toy):
    """Records whose input never reached the model stay out of the figures after `evalkit score` too."""
    from evalkit.engine.runner import run_task

    (toy / "audio" / "a3.wav").unlink()  # s6 and s7 cannot be prepared
    res = run_task(RunSpec(model="scripted", task="toy-mcq", model_args={"answers": str(toy / "key.json")},
                           task_args={"data": str(toy / "toy.json")}, output=toy / "runs", limit=8))
    assert res.run["metrics"]["accuracy"]["n"] == 6 and res.run["counts"]["input_errors"] == 2
    again = runner.rescore(res.run_dir)
    assert again["metrics"]["accuracy"]["value"] == 100.0 and again["metrics"]["accuracy"]["n"] == 6
    assert again["counts"]["records"] == 8 and again["counts"]["input_errors"] == 2


def test_run_record_of_a_task_that_is_not_multiple_choice():
    from evalkit.types import Presentation, Sample

    samples = [Sample(id="t0", question="say it"), Sample(id="t1", question="again")]
    selected = [Presentation(key=s.id, sample=s) for s in samples]
    records = [{**runner.base_record(selected[0], None), "output": "hi", "error": None, "error_kind": None},
               {**runner.base_record(selected[1], None), "output": None, "error": "OSError", "error_kind": "input"}]
    run = build(spec(choices="circular"), OpenTask(TaskOptions()), loaded(samples), selected, records)
    assert run["protocol"]["choices"] is None and run["protocol"]["gold_positions"] is None
    assert run["metrics"] == {"answered": {"value": 1}}  # the input error is not among the figures
    assert run["extra"] == {} and run["groups"] == {}
    assert run["task"]["main_metric"] == "wer" and run["task"]["modality"] == "text"
    assert "position_bias" not in run["diagnostics"]


def cot_record(task, p, error_kind=None):
    rec = scored(task, p, "Answer: A", error="OSError" if error_kind else None, error_kind=error_kind)
    rec["strategy"] = {"name": "cot", "options": {"require_answer_line": True},
                       "calls": [{"output": "thinking"}, {"output": "Answer: A"}]}
    return rec


def test_run_record_strategy_block(tmp_path, monkeypatch):
    from evalkit.engine.strategies import ChainOfThought
    from evalkit.protocol.choices import present

    asked = []
    monkeypatch.setattr(ChainOfThought, "run_info", lambda self, run_dir: asked.append(run_dir) or {"from": "dir"})
    samples = three_choice_samples(3)
    task = mcq()
    selected = present(samples, "original", 0)
    records = [cot_record(task, selected[0]), cot_record(task, selected[1], "input"), scored(task, selected[2], "A")]
    sp = spec(strategy="cot", strategy_options={"require_answer_line": True}, output=tmp_path)
    run = build(sp, task, loaded(samples), selected, records)
    # identity, then the figures over records that reached the model (one holds the strategy), then run_info
    assert run["strategy"] == {"name": "cot", "options": {"require_answer_line": True}, "records": 1,
                               "calls_per_record": 2.0, "from": "dir"}
    assert asked == [tmp_path / "rid0"]
    plain = build(sp, task, loaded(samples), selected, records[2:])
    assert plain["strategy"] == {"name": "cot", "options": {"require_answer_line": True}, "from": "dir"}


# ---------------------------------------------------------------- counts and audio summaries


def test_count_records_by_kind():
    recs = [{"sample_id": "a", "error": None, "extraction_stage": "answer_phrase"},
            {"sample_id": "a", "error": None, "extraction_stage": "none"},  # a second rotation of a
            {"sample_id": "b", "error": "HTTP 500", "error_kind": "model", "extraction_stage": "error"},
            {"sample_id": "c", "error": "OSError", "error_kind": "input", "extraction_stage": "error"},
            {"sample_id": "d", "extraction_stage": "ambiguous"}]  # no error field: an answer
    assert runner.count_records(recs) == {"records": 5, "samples": 4, "errors": 2, "input_errors": 1,
                                          "extraction_failures": 2}
    assert runner.count_records([]) == {"records": 0, "samples": 0, "errors": 0, "input_errors": 0,
                                        "extraction_failures": 0}


def test_long_audio_summary_over_records_that_say():
    recs = [{"extra": {"audio_seconds": 10.0, "audio_seconds_fed": 10.0}},
            {"extra": {"audio_seconds": 40.0, "audio_seconds_fed": 30.0}},  # truncated
            {"extra": {"audio_seconds": 12.0, "audio_seconds_fed": 11.9995}},  # within the 1 ms rounding
            {"extra": {"audio_seconds": 20.0, "audio_seconds_fed": 19.999}},  # one rounding step (1 ms): not cut
            {"extra": {"audio_seconds": 50.0, "audio_seconds_fed": None}},  # fed not known
            {"extra": {"audio_seconds": 8.0, "audio_seconds_fed": 7.998}},  # 2 ms short: truncated
            {"extra": {}}, {"extra": None}, {}]
    assert runner.long_audio_summary(recs) == {"records": 6, "fed_known": 5, "truncated": 2, "longest_s": 50.0,
                                               "most_fed_s": 30.0}
    assert runner.long_audio_summary([{"extra": {"audio_seconds": 3.0}}]) == {
        "records": 1, "fed_known": 0, "truncated": 0, "longest_s": 3.0, "most_fed_s": None}
    assert runner.long_audio_summary([{"extra": {}}]) is None and runner.long_audio_summary([]) is None


def test_run_record_long_audio_from_the_records():
    from evalkit.protocol.choices import present

    samples = three_choice_samples(1)
    task = mcq()
    selected = present(samples, "original", 0)
    rec = scored(task, selected[0], "A", extra={"audio_seconds": 31.0, "audio_seconds_fed": 30.0})
    run = build(spec(), task, loaded(samples), selected, [rec])
    assert run["long_audio"] == {"records": 1, "fed_known": 1, "truncated": 1, "longest_s": 31.0,
                                 "most_fed_s": 30.0}


def test_run_record_voting_strategy_reports_the_first_sample_alone():
    from evalkit.protocol.choices import present

    samples = three_choice_samples(2)
    task = mcq()
    selected = present(samples, "original", 0)
    options = {"k": 2, "temperature": 0.7, "top_p": 1.0, "cot": False}
    records = []
    for p, first_right, agreement in ((selected[0], 1.0, 1.0), (selected[1], 0.0, 0.5)):
        rec = scored(task, p, f"The answer is ({LETTER[p.gold]}).")
        calls = [{"scores": {"accuracy": first_right, "extraction_failure": 0.0}, "extraction_stage": "answer_phrase"},
                 {"scores": {"accuracy": 1.0, "extraction_failure": 0.0}, "extraction_stage": "answer_phrase"}]
        rec["strategy"] = {"name": "self-consistency", "options": options, "calls": calls,
                           "aggregate": {"agreement": agreement, "outcome": "majority" if agreement == 1.0 else "tie"}}
        records.append(rec)
    run = build(spec(strategy="self-consistency", strategy_options={"k": 2}), task, loaded(samples), selected,
                records)
    st = run["strategy"]
    assert st["name"] == "self-consistency" and st["options"] == options
    assert st["records"] == 2 and st["calls_per_record"] == 2.0
    assert st["first_call"]["metrics"]["accuracy"]["value"] == 50.0  # the first samples alone: one of two right
    assert st["agreement_mean"] == 0.75 and st["outcomes"] == {"majority": 1, "tie": 1}


def test_rescore_of_an_old_run_json_without_diagnostics(tmp_path, toy_registry):
    import plugins

    from evalkit.protocol.choices import present

    samples = three_choice_samples(5)
    selected = present(samples, "original", 0)
    stale_run(tmp_path, samples, five_records(plugins.ToyMCQ(TaskOptions()), selected))
    run = json.loads((tmp_path / "run.json").read_text())
    del run["diagnostics"]
    (tmp_path / "run.json").write_text(json.dumps(run))
    again = runner.rescore(tmp_path)
    assert set(again["diagnostics"]) == {"extraction", "position_bias"}


def test_rescore_through_a_task_whose_aggregate_has_no_extra(tmp_path, monkeypatch):
    from evalkit import registry
    from evalkit.types import Presentation, Sample

    monkeypatch.setenv("EVALKIT_TASKS", "open-task=test_runner_record:OpenTask")
    registry._table.cache_clear()
    try:
        samples = [Sample(id="t0"), Sample(id="t1")]
        recs = [{**runner.base_record(Presentation(key=s.id, sample=s), None), "output": "x", "error": None,
                 "error_kind": kind} for s, kind in zip(samples, (None, "input"))]
        stale_run(tmp_path, samples, recs, task_name="open-task")
        run = runner.rescore(tmp_path)
    finally:
        registry._table.cache_clear()
    assert run["metrics"] == {"answered": {"value": 1}} and run["extra"] == {} and run["groups"] == {}


# ---------------------------------------------------------------- a run folder this process cannot write


def finished_folder(run_dir, records, run=True):
    from evalkit.engine.store import RunStore

    store = RunStore(run_dir)
    with store:
        store.append(records)
        if run:
            store.write_run({"run_id": "rid0", "status": "complete"})


def plain_presentations(*ids):
    from evalkit.types import Presentation, Sample

    return [Presentation(key=i, sample=Sample(id=i)) for i in ids]


def test_read_only_finished_run_is_shown_as_it_is(tmp_path):
    finished_folder(tmp_path, [{"key": "a", "error": None}, {"key": "b", "error": "HTTP 500", "error_kind": "model"}])
    res = runner._show_read_only(tmp_path, "rid0", plain_presentations("a", "b"))
    assert (res.run_id, res.run_dir, res.run, res.calls) == ("rid0", tmp_path, {"run_id": "rid0", "status": "complete"},
                                                             0)


@pytest.mark.parametrize("records, run, to_do", [
    ([{"key": "a", "error": None}], True, 1),  # b was never asked
    ([{"key": "a", "error": None}, {"key": "b", "error": "OSError", "error_kind": "input"}], True, 1),  # b unprepared
    ([{"key": "a", "error": None}, {"key": "b", "error": None}], False, 0),  # no run.json
])
def test_read_only_unfinished_run_is_refused(tmp_path, records, run, to_do):
    finished_folder(tmp_path, records, run)
    with pytest.raises(RunConfigError) as e:
        runner._show_read_only(tmp_path, "rid0", plain_presentations("a", "b"))
    assert str(e.value) == (f"cannot write to the run directory {tmp_path} (read-only or no permission), and the "
                            f"run is not finished ({to_do} of 2 samples to do); pass --output DIR to a writable folder")


@pytest.mark.parametrize("error, readable", [
    (PermissionError(1, "Operation not permitted"), True),
    (OSError(30, "Read-only file system"), True),
    (OSError(28, "No space left on device"), False),
])
def test_open_store_tells_a_read_only_folder_from_a_broken_one(tmp_path, monkeypatch, error, readable):
    from evalkit.engine.store import RunStore

    def refuse(self):
        raise error

    monkeypatch.setattr(RunStore, "acquire", refuse)
    if readable:
        assert runner._open_store(tmp_path) is None  # shown read-only when finished
    else:
        with pytest.raises(RunConfigError) as e:
            runner._open_store(tmp_path)
        assert str(e.value) == f"cannot open the run directory {tmp_path}: [Errno 28] No space left on device"


def test_open_store_locks_the_run(tmp_path):
    from evalkit.engine.store import RunLockedError, RunStore

    store = runner._open_store(tmp_path)
    try:
        assert store.dir == tmp_path
        with pytest.raises(RunLockedError):
            RunStore(tmp_path).acquire()
    finally:
        store.release()


# ---------------------------------------------------------------- request building


def test_silence_keeps_length_and_rate():
    import numpy as np

    from evalkit.types import AudioRef

    clip = AudioRef(array=np.linspace(-1, 1, 1234, dtype=np.float32), sample_rate=22050, label="clip7")
    clip.load(None)
    quiet = runner.silence_like(clip)
    x, sr = quiet.load(None)
    assert sr == 22050 and quiet.sample_rate == 22050 and x.dtype == np.float32 and x.shape == (1234,)
    assert not x.any() and quiet.array.dtype == np.float32
    assert quiet.describe() == "silence:clip7"
    assert clip._decoded == {}  # the original's decoded samples are not kept alive


# ---------------------------------------------------------------- adapter arguments that name files


def test_input_paths_walk_nested_adapter_specs(tmp_path, toy_registry):
    weights, answers, log, notes = (tmp_path / n for n in ("weights", "answers.json", "calls.log", "notes.txt"))
    weights.mkdir()
    for f in (answers, log, notes):
        f.write_text("x")
    top = SimpleNamespace(volatile_args=frozenset({"cache"}))
    args = {"cache": str(weights),  # volatile: never identity, and the walk goes on after it
            "model_dir": str(weights), "name_only": "not/a/path", "n": 3,
            "captioner": {"name": "scripted", "args": {"answers": str(answers), "calls_log": str(log)}},
            "lookalike": {"name": "no-such-adapter", "args": {"calls_log": str(log)}},
            "named_file": {"name": str(notes), "args": {}},  # its "name" is a file, not an adapter
            "notes": str(notes)}
    assert runner.input_paths(top, args) == {
        "model_dir": str(weights),
        "captioner.args.answers": str(answers),  # scripted's calls_log is volatile for scripted
        "lookalike.args.calls_log": str(log),  # not an adapter: every path in it counts
        "named_file.name": str(notes),
        "notes": str(notes)}
    assert runner.input_paths(SimpleNamespace(), {"notes": str(notes)}, "outer.") == {"outer.notes": str(notes)}


class PathArgConfig(AdapterConfig):
    weights: Path  # a Path-typed argument: fingerprinted like a string one


class PathArg(Model):
    name = "path-arg"
    capabilities = frozenset({"text"})
    Config = PathArgConfig


def test_a_path_typed_adapter_argument_is_fingerprinted(tmp_path, monkeypatch):
    from evalkit import registry
    from evalkit.engine.fingerprint import Fingerprints

    monkeypatch.setenv("EVALKIT_MODELS", "path-arg=test_runner_record:PathArg")
    registry._table.cache_clear()
    (tmp_path / "w.bin").write_bytes(b"weights")
    holder = runner.ModelHolder("path-arg", {"weights": str(tmp_path / "w.bin")})
    with Fingerprints() as fp:
        identity = holder.identity(fp)
    registry._table.cache_clear()
    assert identity["args"] == {"weights": str(tmp_path / "w.bin")} and list(identity["content"]) == ["weights"]


class Preflighted(PathArg):
    name = "preflighted"

    @classmethod
    def preflight(cls, config):
        if not config.weights.exists():
            raise RuntimeError(f"{config.weights}: no weights there; pass -M weights=PATH")


def test_the_adapters_preflight_sees_the_validated_config_before_anything_loads(tmp_path, monkeypatch):
    from evalkit import registry

    monkeypatch.setenv("EVALKIT_MODELS", "preflighted=test_runner_record:Preflighted")
    registry._table.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="no weights there"):
            runner.ModelHolder("preflighted", {"weights": str(tmp_path / "missing.bin")})
        (tmp_path / "w.bin").write_bytes(b"w")
        assert runner.ModelHolder("preflighted", {"weights": str(tmp_path / "w.bin")})._model is None  # not loaded
    finally:
        registry._table.cache_clear()


# ---------------------------------------------------------------- replies of any shape


def test_a_reply_that_is_not_text_becomes_an_error_naming_its_type():
    from evalkit.types import Response

    usage = {"tokens": 3}
    out = runner.normalize_response(Response("k1", text=5, latency_s=0.25, extra=usage))
    assert (out.key, out.text, out.error, out.latency_s, out.extra) == (
        "k1", None, "adapter returned a int as its output, not text", 0.25, {"tokens": 3})
    assert out.extra is not usage  # the error response does not share the adapter's dict
    bare = runner.normalize_response(Response("k2", text=["a"]))
    assert bare.error == "adapter returned a list as its output, not text" and bare.extra == {}


def test_lone_surrogates_are_replaced_and_the_repair_noted():
    from evalkit.types import Response

    out = runner.normalize_response(Response("k1", text="ok \ud800 end", error="partial", latency_s=0.5,
                                             extra={"tokens": 3}))
    # one replacement character per lone surrogate (not one per byte of its UTF-8 form)
    assert (out.key, out.text, out.error, out.latency_s) == ("k1", "ok \ufffd end", "partial", 0.5)
    assert out.extra == {"tokens": 3, "text_repaired": "surrogates"}
    low = runner.normalize_response(Response("k2", text="\udfff"))
    assert (low.text, low.extra) == ("\ufffd", {"text_repaired": "surrogates"})
    # a high and a low surrogate side by side are the character they encode (U+1F600); a low before a high is not
    pair = runner.normalize_response(Response("k3", text="a\ud83d\ude00b\ude00\ud83dc"))
    assert pair.text == "a\N{GRINNING FACE}b\ufffd\ufffdc" and pair.text.encode("utf-8")


@pytest.mark.parametrize("text", ["plain é ✓", None, ""])
def test_well_formed_replies_pass_untouched(text):
    from evalkit.types import Response

    resp = Response("k", text=text, error=None if text is not None else "HTTP 500", extra={"a": 1})
    assert runner.normalize_response(resp) is resp


# ---------------------------------------------------------------- seconds of audio heard


def clip(n, sr, decoded_at):
    import numpy as np

    from evalkit.types import AudioRef

    a = AudioRef(array=np.zeros(n, dtype=np.float32), sample_rate=sr)
    if decoded_at is not False:
        a.load(decoded_at)
    return a


def request_with(*clips):
    from evalkit.types import Request

    content = [{"type": "audio", "audio": c} for c in clips] + [{"type": "text", "text": "q"}]
    return Request(key="k", messages=[{"role": "user", "content": content}])


def test_audio_seconds_sums_the_clips_as_the_model_received_them():
    model = SimpleNamespace(sample_rate=16000)
    # 1.0000625 s + 0.5 s, at the model's rate; rounded to the millisecond
    assert runner.audio_seconds(request_with(clip(16001, 16000, 16000), clip(8000, 16000, 16000)), model) == 1.5
    assert runner.audio_seconds(request_with(clip(16001, 16000, 16000)), model) == 1.0
    assert runner.audio_seconds(request_with(clip(24000, 48000, 16000)), model) == 0.5  # resampled: 8000 at 16 kHz


def test_audio_seconds_unknown_when_nothing_was_decoded_for_the_model():
    model = SimpleNamespace(sample_rate=16000)
    assert runner.audio_seconds(request_with(clip(16000, 16000, 16000), clip(16000, 16000, False)), model) is None
    assert runner.audio_seconds(request_with(clip(16000, 16000, None)), model) is None  # native rate only
    assert runner.audio_seconds(request_with(), model) is None  # no audio in the request
    # an adapter without a fixed rate takes the native one
    assert runner.audio_seconds(request_with(clip(22050, 22050, None)), SimpleNamespace()) == 1.0


# ---------------------------------------------------------------- values refused before any work


@pytest.mark.parametrize("kw, message", [
    ({"limit": 0}, "--limit 0: must be a positive number of samples"),
    ({"limit": True}, "--limit True: must be a positive number of samples"),
    ({"limit": 2.5}, "--limit 2.5: must be a positive number of samples"),
    ({"batch_size": 0}, "--batch-size 0: must be a positive integer"),
    ({"batch_size": False}, "--batch-size False: must be a positive integer"),
    ({"batch_size": 1.5}, "--batch-size 1.5: must be a positive integer"),
    ({"choices": "shuffled"}, "--choices 'shuffled': use balanced, original or circular"),
    ({"generation": GenerationConfig(max_new_tokens=0)}, "--max-new-tokens 0: must be a positive integer"),
    ({"generation": GenerationConfig(temperature=-0.1)}, "--temperature -0.1: must be >= 0"),
    ({"generation": GenerationConfig(temperature=float("nan"))}, "--temperature nan: must be >= 0"),
    ({"strategy_options": {"k": 3, "cot": True}}, "-S k, cot: strategy options without --strategy"),
    ({"strategy": "no-such-strategy"}, "--strategy 'no-such-strategy': unknown; choose one of "),
])
def test_validate_refuses(kw, message):
    with pytest.raises(RunConfigError) as e:
        spec(**kw).validate()
    assert str(e.value).startswith(message) and (message.endswith("of ") or str(e.value) == message)


@pytest.mark.parametrize("kw", [
    {}, {"limit": 1, "batch_size": 1}, {"choices": "original"}, {"choices": "circular"},
    {"generation": GenerationConfig(max_new_tokens=1, temperature=0.0)},
    {"generation": GenerationConfig(temperature=0.5)},
    {"strategy": "self-consistency", "strategy_options": {"k": 3}},
])
def test_validate_accepts_the_smallest_legal_values(kw):
    import copy

    accepted = spec(**kw)
    before = copy.deepcopy(accepted)
    assert accepted.validate() is None  # raises RunConfigError on a refusal
    assert accepted == before  # and changes nothing it accepts


def test_make_strategy():
    assert spec().make_strategy() is None
    made = spec(strategy="self-consistency", strategy_options={"k": 3}).make_strategy()
    assert made.name == "self-consistency" and made.options.k == 3


@pytest.mark.parametrize("text, want", [(None, None), ("", None), ("1/4", (0, 4)), ("4/4", (3, 4)), ("1/1", (0, 1))])
def test_parse_shard_is_one_based_on_the_command_line(text, want):
    assert runner.parse_shard(text) == want


@pytest.mark.parametrize("text, why", [("0/4", "need 1 <= I <= N"), ("5/4", "need 1 <= I <= N"),
                                       ("1-4", "expected I/N, e.g. 1/4"), ("1/2/3", "expected I/N, e.g. 1/4"),
                                       ("a/4", "expected I/N, e.g. 1/4")])
def test_parse_shard_refuses(text, why):
    with pytest.raises(RunConfigError) as e:
        runner.parse_shard(text)
    assert str(e.value) == f"--shard {text!r}: {why}"


def rotations(n_samples, per_sample):
    from evalkit.types import Presentation, Sample

    out = []
    for i in range(n_samples):
        s = Sample(id=f"s{i}")
        out += [Presentation(key=f"s{i}#rot{r}", sample=s, rotation=r) for r in range(per_sample)]
    return out


@pytest.mark.parametrize("limit, shard, ids", [
    (None, None, ["s0", "s1", "s2", "s3", "s4"]),
    (3, None, ["s0", "s1", "s2"]),
    (None, (1, 2), ["s1", "s3"]),
    (3, (0, 2), ["s0", "s2"]),  # --limit first, then every 2nd of those
    (1, None, ["s0"]),
])
def test_select_keeps_every_rotation_of_a_chosen_sample(limit, shard, ids):
    got = runner.select(rotations(5, 3), limit, shard)
    assert [p.key for p in got] == [f"{i}#rot{r}" for i in ids for r in range(3)]


# ---------------------------------------------------------------- the adapter holder


def test_model_holder_loads_once_and_identifies_without_volatile_args(toy, monkeypatch):
    from evalkit.engine.fingerprint import Fingerprints

    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(toy / "cache"))
    answers = toy / "key.json"
    holder = runner.ModelHolder("scripted", {"answers": str(answers), "concurrency": 4, "delay_s": 0.5})
    assert holder._model is None  # nothing loaded until a request needs it
    want_args = {"answers": str(answers), "require_audio": True, "wrong": False}
    assert holder.identity() == {"name": "scripted", "args": want_args}
    with Fingerprints() as fp:
        got = holder.identity(fp)
    digest = hashlib.sha256(answers.read_bytes()).hexdigest()
    assert got["name"] == "scripted" and got["args"] == want_args
    assert list(got["content"]) == ["answers"] and digest in got["content"]["answers"]
    answers.write_text("{}")  # computed once per holder (one run): not re-read
    assert holder.identity() == got
    model = holder.model
    assert type(model).__name__ == "Scripted" and holder.model is model
    closed = []
    monkeypatch.setattr(type(model), "close", lambda self: closed.append(self))
    holder.close()
    assert closed == [model]


def test_model_holder_close_without_a_model_loads_nothing(toy):
    holder = runner.ModelHolder("scripted", {"answers": str(toy / "key.json")})
    holder.close()
    assert holder._model is None


# ---------------------------------------------------------------- requests and the records' common part


def audio_sample(sid="s0", n_clips=1):
    import numpy as np

    from evalkit.types import AudioRef, Sample

    clips = [AudioRef(array=np.full(800 * (i + 1), 0.5, dtype=np.float32), sample_rate=8000, label=f"c{i}")
             for i in range(n_clips)]
    return Sample(id=sid, question="which?", choices=["x", "y"], answer=1, audio=clips, metadata={"axis": "y"},
                  target={"ref": "y"})


def one_presentation(sample, mode="original"):
    from evalkit.protocol.choices import present

    return present([sample], mode, 0)[0]


def parts(req):
    return [(c["type"], c.get("text") or c["audio"].describe()) for m in req.messages for c in m["content"]]


def test_build_request_as_the_task_prompts_it():
    p = one_presentation(audio_sample(n_clips=2))
    gen = GenerationConfig(max_new_tokens=5)
    req = runner.build_request(mcq(), p, spec(generation=gen))
    assert req.key == p.key and req.generation is gen
    assert parts(req) == [("audio", "c0"), ("audio", "c1"), ("text", "which?\n(A) x\n(B) y")]


def test_build_request_without_audio_drops_every_clip():
    req = runner.build_request(mcq(), one_presentation(audio_sample(n_clips=2)), spec(no_audio=True, silence_audio=True))
    assert parts(req) == [("text", "which?\n(A) x\n(B) y")]  # no audio wins over silence


def test_build_request_with_silence_keeps_each_clip_length():
    req = runner.build_request(mcq(), one_presentation(audio_sample(n_clips=2)), spec(silence_audio=True))
    assert parts(req) == [("audio", "silence:c0"), ("audio", "silence:c1"), ("text", "which?\n(A) x\n(B) y")]
    assert [len(a.load(None)[0]) for a in req.audio()] == [800, 1600] and not any(a.load(None)[0].any()
                                                                                  for a in req.audio())


def test_base_record_fields(tmp_path):
    import numpy as np

    from evalkit.types import AudioRef, Sample

    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    arr = AudioRef(array=np.zeros(4, dtype=np.float32), sample_rate=8000)
    s = Sample(id="q1", question="which?", choices=["x", "y", "z"], answer=2, audio=[AudioRef(path=wav), arr],
               metadata={"axis": "x"}, target={"note": 1}, group="g7")
    p = one_presentation(s, "balanced")
    req = runner.build_request(mcq(), p, spec())
    rec = runner.base_record(p, req, {"q1/0": "sha256:from-digests"})
    assert rec == {"key": p.key, "sample_id": "q1", "rotation": p.rotation, "prompt": req.rendered(),
                   "audio": [{"ref": str(wav), "sha256": "sha256:from-digests"},
                             {"ref": arr.describe(), "sha256": hashlib.sha256(np.zeros(4, dtype=np.float32).tobytes()
                                                                              + b"8000").hexdigest()}],
                   "choices": [["x", "y", "z"][i] for i in p.permutation], "permutation": p.permutation,
                   "gold": p.permutation.index(2), "answer": "z", "target": {"note": 1}, "metadata": {"axis": "x"},
                   "cluster": "g7"}
    # a file clip without a digest is not hashed here (the run hashes files once, through the cache)
    bare = runner.base_record(p, None)
    assert bare["prompt"] is None and bare["audio"][0] == {"ref": str(wav), "sha256": None}
    assert bare["audio"][1]["sha256"] == rec["audio"][1]["sha256"]


def test_base_record_of_a_sample_without_choices():
    from evalkit.types import Presentation, Sample

    rec = runner.base_record(Presentation(key="t", sample=Sample(id="t", target={"text": "hi"})), None)
    assert rec["answer"] is None and rec["choices"] is None and rec["gold"] is None and rec["cluster"] == "t"
    s = Sample(id="w", choices=["a", "b"])  # choices, answer withheld (a test split)
    assert runner.base_record(Presentation(key="w", sample=s), None)["answer"] is None


def test_audio_digests_are_keyed_by_sample_and_clip(tmp_path, monkeypatch):
    import numpy as np

    from evalkit.engine.fingerprint import Fingerprints
    from evalkit.types import AudioRef, Sample

    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(tmp_path / "cache"))
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    samples = [Sample(id="s0", audio=[AudioRef(path=a), AudioRef(path=b)]),
               Sample(id="s1", audio=[AudioRef(array=np.zeros(2, dtype=np.float32), sample_rate=8000),
                                      AudioRef(path=a)])]
    with Fingerprints() as fp:
        got = runner.audio_digests(samples, fp)
    ha, hb = (hashlib.sha256(x).hexdigest() for x in (b"one", b"two"))
    assert sorted(got) == ["s0/0", "s0/1", "s1/1"]  # embedded audio: covered by the data hash
    assert ha in got["s0/0"] and hb in got["s0/1"] and got["s1/1"] == got["s0/0"]


# ---------------------------------------------------------------- preparing and asking


def test_prepare_decodes_at_the_model_rate_or_reports_the_failure():
    from evalkit.types import AudioRef

    p = one_presentation(audio_sample())
    model = SimpleNamespace(sample_rate=4000)
    got_p, req, err = runner._prepare(mcq(), p, spec(), model, True)
    assert got_p is p and err is None and req.key == p.key
    assert list(req.audio()[0]._decoded) == [4000] and len(req.audio()[0]._decoded[4000][0]) == 400
    _, req, _ = runner._prepare(mcq(), one_presentation(audio_sample()), spec(), model, False)
    assert req.audio()[0]._decoded == {}  # an adapter that decodes itself
    broken = audio_sample("s9")
    broken.audio = [AudioRef(path="/no/such/clip.wav")]
    got_p, req, err = runner._prepare(mcq(), one_presentation(broken), spec(), model, True)
    assert req is None and err.startswith("AudioError: ") and "/no/such/clip.wav" in err


class Streamer:
    def __init__(self, fail=None):
        self.fail, self.asked = fail, []

    def generate(self, reqs):
        self.asked.append(("generate", [r.key for r in reqs]))
        if self.fail:
            raise self.fail
        return [f"answer {r.key}" for r in reqs]


class StreamingStreamer(Streamer):
    def generate_stream(self, reqs):
        self.asked.append(("stream", [r.key for r in reqs]))
        yield from (f"streamed {r.key}" for r in reqs)


def test_stream_prefers_generate_stream_and_skips_empty_batches():
    reqs = [SimpleNamespace(key="a"), SimpleNamespace(key="b")]
    plain, streaming = Streamer(), StreamingStreamer()
    assert list(runner._stream(plain, reqs)) == ["answer a", "answer b"] and plain.asked == [("generate", ["a", "b"])]
    assert list(runner._stream(streaming, reqs)) == ["streamed a", "streamed b"]
    assert streaming.asked == [("stream", ["a", "b"])]
    assert list(runner._stream(plain, [])) == [] and len(plain.asked) == 1  # nothing asked for nothing


def test_stream_turns_an_adapter_exception_into_a_model_failure():
    with pytest.raises(runner.ModelFailure) as e:
        list(runner._stream(Streamer(RuntimeError("CUDA out of memory")), [SimpleNamespace(key="a")]))
    assert str(e.value) == "RuntimeError: CUDA out of memory" and isinstance(e.value.__cause__, RuntimeError)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C is not a broken model
        list(runner._stream(Streamer(KeyboardInterrupt()), [SimpleNamespace(key="a")]))


# ---------------------------------------------------------------- task options as JSON has them


class Voice(__import__("enum").Enum):
    CALM = "calm"


class VoiceOptions(TaskOptions):
    voice: Voice = Voice.CALM


class VoiceMCQ(PlainMCQ):
    Options = VoiceOptions


def test_run_id_hashes_task_options_in_their_json_form():
    got = compute_run_id(MODEL, VoiceMCQ(VoiceOptions()), "h", spec())
    assert got == reference_run_id(MODEL, "plain-mcq", "3", {"prompt": "default", "voice": "calm"}, "h",
                                   choices="balanced")


class PathDataOptions(TaskOptions):
    data: __import__("pathlib").Path | None = None  # a task may type its data location as a path


class PathDataMCQ(PlainMCQ):
    Options = PathDataOptions


def test_session_records_the_data_location_as_text():
    from pathlib import Path

    from evalkit.protocol.choices import present

    samples = three_choice_samples(1)
    task = PathDataMCQ(PathDataOptions(data=Path("/data/q.json")))
    run = build(spec(), task, loaded(samples), present(samples, "original", 0), [])
    assert run["timings"]["sessions"][0]["task_options"] == {"data": "/data/q.json", "audio_root": None}
    assert json.loads(json.dumps(run["timings"])) == run["timings"]
