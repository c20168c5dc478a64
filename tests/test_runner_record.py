"""Edge cases of evalkit.engine.runner: the run record, run id, rescore, each checked against a hand-derived expectation (issue 11: mutation kill rate)."""
from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest

from evalkit import __version__
from evalkit.engine import runner
from evalkit.engine.runner import RunConfigError, RunSpec, check_pairing, compute_run_id
from evalkit.tasks.base import MCQTask, Task, TaskOptions
from evalkit.types import GenerationConfig


class PlainMCQ(MCQTask):
    name = "plain-mcq"
    version = "3"
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
