"""Inference-time strategies against scripted adapters whose behaviour makes every aggregate exact.

`Coin` answers each request from its key alone (a seeded coin per request key, or a per-sub-call
script), so the expected vote of every item is computed here independently of evalkit, and the
accuracy over many items is compared with the binomial expectation (scipy)."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.stats import binom

from evalkit.engine.runner import ModelFailure, RunConfigError, RunSpec, rescore, run_task
from evalkit.engine.strategies import CALLS, final_answer_line, parse_segment
from evalkit.models.base import AdapterConfig, Model
from evalkit.tasks.base import LoadedData, MCQTask, hash_files
from evalkit.types import AudioRef, Response, Sample


def uniform(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64


class CoinConfig(AdapterConfig):
    answers: str
    p: float = 0.6
    script: str | None = None  # per sub-call index: C correct, W wrong, F unreadable, E error
    mode: str = "coin"  # coin | first_letter | loudest | first_clip | cot | cot_noline | seg
    seg: str = "<seg>0.5,1.0</seg>"
    log: str | None = None
    raise_on: str | None = None


class Coin(Model):
    name = "coin"
    capabilities = frozenset({"audio", "text", "multi_audio", "multi_turn_audio"})
    Config = CoinConfig
    volatile_args = frozenset({"log", "raise_on"})
    default_batch_size = 4

    def __init__(self, config):
        super().__init__(config)
        self.key = json.loads(Path(config.answers).read_text())

    def generate(self, requests):
        return list(self.generate_stream(requests))

    def generate_stream(self, requests):
        c = self.config
        for r in requests:
            if r.key == c.raise_on:
                raise RuntimeError("CUDA out of memory (simulated)")
            audio = [a.load(self.sample_rate)[0] for a in r.audio()]
            if c.log:
                with open(c.log, "a") as f:
                    f.write(json.dumps({"key": r.key, "audio_samples": [len(x) for x in audio],
                                        "temperature": r.generation.temperature, "seed": r.generation.seed,
                                        "text": r.text()}) + "\n")
            options = dict(re.findall(r"^\(([A-Z])\) (.*)$", r.text(), re.M))
            if not options:  # a later relisten turn: the options are in the first user turn
                first = next(m for m in r.messages if m["role"] == "user")
                text = "\n".join(p["text"] for p in first["content"] if p["type"] == "text")
                options = dict(re.findall(r"^\(([A-Z])\) (.*)$", text, re.M))
            gold = self.key[r.key.split("#")[0]]
            right = next(k for k, v in options.items() if v == gold)
            wrong = next(k for k, v in options.items() if v != gold)
            index = int(re.search(r"(\d+)$", r.key).group(1)) if "#" in r.key else 0
            text = f"The answer is ({right})."
            if c.mode == "coin":
                text = f"The answer is ({right if uniform(r.key) < c.p else wrong})."
            elif c.script is not None:
                ch = c.script[index]
                if ch == "E":
                    yield Response(r.key, error="server said no")
                    continue
                text = {"C": f"The answer is ({right}).", "W": f"The answer is ({wrong}).",
                        "F": "I cannot tell."}[ch]
            elif c.mode == "first_letter":
                text = "(A)"
            elif c.mode in ("loudest", "first_clip"):
                pos = int(np.argmax([float(np.sqrt(np.mean(x ** 2))) for x in audio])) if c.mode == "loudest" else 0
                text = f"({next(k for k, v in options.items() if v == f'Clip {pos + 1}')})"
            elif c.mode == "cot":
                text = f"At first the answer is ({wrong}), but listening again...\n\n**Answer:** ({right})"
            elif c.mode == "cot_noline":
                text = f"It must be ({right})."
            elif c.mode == "seg" and len(audio) == 1 and "final answer now" not in r.text():
                text = f"Let me listen again: {c.seg}"
            yield Response(r.key, text=text, latency_s=0.0)


class MultiClip(MCQTask):
    """Items of three clips; the options name clip positions ("Clip 2"); metadata option_clips says
    option i names clip option_clips[i]."""

    name = "multiclip"

    def load(self):
        path = Path(self.options.data)
        samples = [Sample(id=r["id"], question=r["question"], choices=r["choices"],
                          answer=r["choices"].index(r["answer"]),
                          audio=[AudioRef(path=path.parent / a) for a in r["audio"]],
                          metadata={"option_clips": r.get("option_clips")})
                   for r in json.loads(path.read_text())]
        return LoadedData(samples, {"kind": "local", "path": str(path)}, hash_files([path]))


@pytest.fixture
def reg(monkeypatch):
    from evalkit import registry

    here = os.path.dirname(__file__)
    monkeypatch.setenv("EVALKIT_TASKS", "toy-mcq=plugins:ToyMCQ,multiclip=test_strategies:MultiClip")
    monkeypatch.setenv("EVALKIT_MODELS", "scripted=plugins:Scripted,coin=test_strategies:Coin")
    monkeypatch.setenv("PYTHONPATH", here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    registry._table.cache_clear()
    yield
    registry._table.cache_clear()


def make_mcq(tmp: Path, n: int, k: int = 3, seconds: float = 0.1) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    sf.write(tmp / "a.wav", np.random.default_rng(0).standard_normal(int(16000 * seconds)).astype("float32") * 0.1,
             16000)
    items, key = [], {}
    for i in range(n):
        choices = [f"option {j} of item {i}" for j in range(k)]
        items.append({"id": f"s{i}", "audio": "a.wav", "question": f"Question {i}?", "choices": choices,
                      "answer": choices[i % k]})
        key[f"s{i}"] = choices[i % k]
    (tmp / "toy.json").write_text(json.dumps(items))
    (tmp / "key.json").write_text(json.dumps(key))
    return tmp


def spec(tmp: Path, strategy=None, model="coin", task="toy-mcq", **kw) -> RunSpec:
    margs = {"answers": str(tmp / "key.json"), **kw.pop("margs", {})}
    return RunSpec(model=model, task=task, model_args=margs, task_args={"data": str(tmp / "toy.json")},
                   output=tmp / "runs", strategy=strategy, strategy_options=kw.pop("sopts", {}), **kw)


def records(result) -> list[dict]:
    return [json.loads(x) for x in (result.run_dir / "samples.jsonl").read_text().splitlines()]


# -- self-consistency ------------------------------------------------------------------------------


def test_self_consistency_vote_is_the_exact_majority_and_matches_the_binomial(tmp_path, reg):
    n, k, p = 400, 5, 0.6
    d = make_mcq(tmp_path, n)
    log = tmp_path / "log.jsonl"
    res = run_task(spec(d, "self-consistency", sopts={"k": str(k), "temperature": "0.7"},
                        margs={"p": p, "log": str(log)}))
    recs = {r["key"]: r for r in records(res)}
    assert len(recs) == n and res.run["status"] == "complete"
    # every item's vote, recomputed from the adapter's coins: correct iff at least 3 of 5 samples are
    for key, r in recs.items():
        heads = sum(uniform(f"{key}#sc{i}") < p for i in range(k))
        assert r["scores"]["accuracy"] == float(heads >= 3), key
        assert r["strategy"]["aggregate"]["agreement"] == max(heads, k - heads) / k
        assert len(r["strategy"]["calls"]) == k and r["output"] is None
    votes = sum(r["scores"]["accuracy"] for r in recs.values())
    lo, hi = binom.interval(0.999, n, binom.sf(2, k, p))
    assert lo <= votes <= hi
    summary = res.run["strategy"]
    first = summary["first_call"]["metrics"]["accuracy"]["value"]
    assert first == 100 * sum(uniform(f"{key}#sc0") < p for key in recs) / n  # metrics are percentages
    lo1, hi1 = binom.interval(0.999, n, p)
    assert lo1 <= first * n / 100 <= hi1
    assert res.run["metrics"]["accuracy"]["value"] == 100 * votes / n
    assert summary["calls_per_record"] == k and res.calls == n * k
    asked = [json.loads(x) for x in log.read_text().splitlines()]
    assert {a["temperature"] for a in asked} == {0.7}
    assert len({(a["key"].split("#")[0], a["seed"]) for a in asked}) == n * k  # a distinct seed per sample
    # a rescore re-extracts every sub-call and votes again: same figures
    again = rescore(res.run_dir)
    assert again["metrics"]["accuracy"] == res.run["metrics"]["accuracy"]


@pytest.mark.parametrize("script,accuracy,stage", [
    ("CW", 0.0, "ambiguous"),      # a tie is an extraction failure, never a guess
    ("FFFCC", 1.0, "vote"),        # failures do not vote (three failures do not outvote two answers)
    ("FFFCW", 0.0, "ambiguous"),
    ("FFF", 0.0, "none"),          # no vote at all
    ("CCW", 1.0, "vote"),
    ("CCCCE", 0.0, "error"),       # a failed sub-call makes an error record (not a vote over fewer calls)
])
def test_vote_rules(tmp_path, reg, script, accuracy, stage):
    d = make_mcq(tmp_path, 8)
    res = run_task(spec(d, "self-consistency", sopts={"k": len(script)}, margs={"mode": "script", "script": script}))
    for r in records(res):
        assert r["scores"]["accuracy"] == accuracy and r["extraction_stage"] == stage
        assert r["scores"]["extraction_failure"] == float(stage in ("ambiguous", "none"))
        assert (r["error"] is not None) == (stage == "error")
    assert res.run["counts"]["extraction_failures"] == (8 if stage in ("ambiguous", "none") else 0)


def test_resume_after_a_crash_asks_no_finished_sub_call_again(tmp_path, reg):
    d = make_mcq(tmp_path, 12)
    log = tmp_path / "log.jsonl"
    s = spec(d, "self-consistency", sopts={"k": 3}, margs={"p": 0.5, "log": str(log), "raise_on": "s6#sc1"})
    with pytest.raises(ModelFailure):
        run_task(s)
    run_dir = next((tmp_path / "runs").iterdir())
    finished = {json.loads(x)["key"] for x in (run_dir / CALLS).read_text().splitlines()}
    assert "s6#sc0" in finished and "s6#sc1" not in finished
    before = len(log.read_text().splitlines())
    res = run_task(spec(d, "self-consistency", sopts={"k": 3}, margs={"p": 0.5, "log": str(log)}))
    assert res.run_dir == run_dir and res.run["status"] == "complete"
    second = [json.loads(x)["key"] for x in log.read_text().splitlines()[before:]]
    assert second and not set(second) & finished
    assert len(finished) + len(second) == 12 * 3
    for r in records(res):
        heads = sum(uniform(f"{r['key']}#sc{i}") < 0.5 for i in range(3))
        assert r["scores"]["accuracy"] == float(heads >= 2)


def test_retry_errors_asks_only_the_failed_sub_calls(tmp_path, reg):
    d = make_mcq(tmp_path, 4)
    log = tmp_path / "log.jsonl"
    run_task(spec(d, "self-consistency", sopts={"k": 3}, margs={"mode": "script", "script": "CEC", "log": str(log)}))
    before = len(log.read_text().splitlines())
    # same run id (the script is not volatile, so change nothing): retry asks exactly the failed index again
    res = run_task(spec(d, "self-consistency", sopts={"k": 3}, retry_errors=True,
                        margs={"mode": "script", "script": "CEC", "log": str(log)}))
    again = [json.loads(x)["key"] for x in log.read_text().splitlines()[before:]]
    assert sorted(again) == sorted(f"s{i}#sc1" for i in range(4))
    assert res.run["counts"]["records"] == 4


def test_strategy_is_part_of_the_run_id_and_options_are_typed(tmp_path, reg):
    from pydantic import ValidationError

    d = make_mcq(tmp_path, 4)
    plain = run_task(spec(d))
    sc3 = run_task(spec(d, "self-consistency", sopts={"k": 3}))
    sc5 = run_task(spec(d, "self-consistency", sopts={"k": 5}))
    assert len({plain.run_id, sc3.run_id, sc5.run_id}) == 3
    assert "strategy" not in plain.run and sc3.run["strategy"]["options"]["k"] == 3
    with pytest.raises(ValidationError, match="kk"):
        run_task(spec(d, "self-consistency", sopts={"kk": 3}))
    with pytest.raises(RunConfigError, match="identical"):
        run_task(spec(d, "self-consistency", sopts={"temperature": 0}))
    with pytest.raises(RunConfigError, match="unknown"):
        run_task(spec(d, "majority"))
    with pytest.raises(RunConfigError, match="lacks the steer capability"):  # tests/test_steer.py
        run_task(spec(d, "steer"))


def test_cli_refuses_a_strategy_option_typo(tmp_path, reg):
    from typer.testing import CliRunner

    from evalkit.cli import app

    d = make_mcq(tmp_path, 4)
    out = CliRunner().invoke(app, ["run", "-m", "coin", "-M", f"answers={d / 'key.json'}", "-t", "toy-mcq",
                                   "-T", f"data={d / 'toy.json'}", "--strategy", "self-consistency", "-S", "kk=3",
                                   "--output", str(tmp_path / "runs"), "-q"])
    assert out.exit_code == 2 and "-S kk" in out.output and "did you mean -S k=" in out.output
    assert not (tmp_path / "runs").exists()
    out = CliRunner().invoke(app, ["run", "-m", "coin", "-M", f"answers={d / 'key.json'}", "-t", "toy-mcq",
                                   "-T", f"data={d / 'toy.json'}", "--strategy", "self-consistency", "-S", "k=3",
                                   "--output", str(tmp_path / "runs"), "-q"])
    assert out.exit_code == 0, out.output


# -- audio-permutation -----------------------------------------------------------------------------


def test_choice_rotations_undo_a_position_bias_exactly(tmp_path, reg):
    d = make_mcq(tmp_path, 12, k=4)
    plain = run_task(spec(d, margs={"mode": "first_letter"}))
    # a model that always says (A) is right exactly when the gold sits at A: balanced puts it there 1/4 of the time
    assert plain.run["metrics"]["accuracy"]["value"] == 25.0
    res = run_task(spec(d, "audio-permutation", margs={"mode": "first_letter"}))
    for r in records(res):  # each option is at A once over the 4 rotations: a 4-way tie
        assert r["strategy"]["aggregate"]["outcome"] == "tie" and len(r["strategy"]["calls"]) == 4
        assert sorted(c["answer_index"] for c in r["strategy"]["calls"]) == [0, 1, 2, 3]
    assert res.run["metrics"]["accuracy"]["value"] == 0.0
    good = run_task(spec(d, "audio-permutation", sopts={"orders": 2}, margs={"mode": "script", "script": "CC"}))
    assert good.run["metrics"]["accuracy"]["value"] == 100.0
    for r in records(good):
        calls = r["strategy"]["calls"]
        assert len(calls) == 2 and calls[0]["permutation"] == r["permutation"]  # the record's own order first


def test_strategies_compose_with_circular(tmp_path, reg):
    d = make_mcq(tmp_path, 6, k=3)
    res = run_task(spec(d, "self-consistency", sopts={"k": 3}, choices="circular",
                        margs={"mode": "script", "script": "CWC"}))
    recs = records(res)
    assert len(recs) == 18 and {c["key"] for c in recs[0]["strategy"]["calls"]} == {
        f"{recs[0]['key']}#sc{i}" for i in range(3)}
    assert res.run["metrics"]["accuracy"]["value"] == 100.0
    # one wrong rotation makes the sample wrong (circular), the vote is per rotation
    res = run_task(spec(d, "audio-permutation", choices="circular", margs={"mode": "first_letter"}))
    assert res.run["metrics"]["accuracy"]["value"] == 0.0 and len(records(res)) == 18


def make_multiclip(tmp: Path, n: int, option_clips=True) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    items, key = [], {}
    for i in range(n):
        loud = i % 3
        names = []
        for c in range(3):
            sf.write(tmp / f"i{i}c{c}.wav", (rng.standard_normal(800) * (0.5 if c == loud else 0.05)).astype("float32"),
                     16000)
            names.append(f"i{i}c{c}.wav")
        choices = ["Clip 1", "Clip 2", "Clip 3"]
        items.append({"id": f"m{i}", "audio": names, "question": "Which clip is loudest?", "choices": choices,
                      "answer": choices[loud], **({"option_clips": [0, 1, 2]} if option_clips else {})})
        key[f"m{i}"] = choices[loud]
    (tmp / "toy.json").write_text(json.dumps(items))
    (tmp / "key.json").write_text(json.dumps(key))
    return tmp


def test_audio_permutation_maps_answers_back_to_the_clip(tmp_path, reg):
    d = make_multiclip(tmp_path, 6)
    listens = run_task(spec(d, "audio-permutation", task="multiclip", margs={"mode": "loudest"}))
    for r in records(listens):  # every one of the 3! orders, each answer mapped back to the loudest clip
        calls = r["strategy"]["calls"]
        assert len(calls) == 6 and len({tuple(c["audio_order"]) for c in calls}) == 6
        assert r["strategy"]["aggregate"]["agreement"] == 1.0
    assert listens.run["metrics"]["accuracy"]["value"] == 100.0
    # always "Clip 1": the first position holds each clip in two of six orders -> a 3-way tie
    biased = run_task(spec(d, "audio-permutation", task="multiclip", margs={"mode": "first_clip"}))
    assert all(r["strategy"]["aggregate"]["outcome"] == "tie" for r in records(biased))
    plain = run_task(spec(d, task="multiclip", margs={"mode": "first_clip"}))
    assert plain.run["metrics"]["accuracy"]["value"] == pytest.approx(100 / 3, abs=1e-3)  # rounded to 4 decimals
    sub = run_task(spec(d, "audio-permutation", task="multiclip", sopts={"orders": 3}, margs={"mode": "loudest"}))
    assert all(len(r["strategy"]["calls"]) == 3 and r["strategy"]["calls"][0]["audio_order"] == [0, 1, 2]
               for r in records(sub))


def test_audio_permutation_refusals_before_any_work(tmp_path, reg):
    d = make_multiclip(tmp_path / "a", 3)
    log = tmp_path / "calls.log"
    with pytest.raises(RunConfigError, match="multi_audio"):
        run_task(spec(d, "audio-permutation", model="scripted", task="multiclip", margs={"calls_log": str(log)}))
    assert not log.exists()
    d2 = make_multiclip(tmp_path / "b", 3, option_clips=False)
    with pytest.raises(RunConfigError, match="option_clips.*|m0"):
        run_task(spec(d2, "audio-permutation", task="multiclip"))


# -- cot -------------------------------------------------------------------------------------------


def test_final_answer_line():
    assert final_answer_line("think\n\n**Answer:** (B)\n") == "**Answer:** (B)"
    assert final_answer_line("Final answer: C") == "Final answer: C"
    assert final_answer_line("Answer: A\nbecause it meows") is None
    assert final_answer_line(None) is None


def test_cot_reads_the_final_line_only(tmp_path, reg):
    d = make_mcq(tmp_path, 6)
    log = tmp_path / "log.jsonl"
    res = run_task(spec(d, "cot", margs={"mode": "cot", "log": str(log)}))
    assert res.run["metrics"]["accuracy"]["value"] == 100.0  # the whole reply names two options: ambiguous
    plain = run_task(spec(d, margs={"mode": "cot"}))
    assert plain.run["metrics"]["accuracy"]["value"] == 0.0
    assert all("Answer: X" in json.loads(x)["text"] for x in log.read_text().splitlines())
    strict = run_task(spec(d, "cot", margs={"mode": "cot_noline"}))
    assert strict.run["metrics"]["extraction_failure"]["value"] == 100.0
    lenient = run_task(spec(d, "cot", sopts={"require_answer_line": False}, margs={"mode": "cot_noline"}))
    assert lenient.run["metrics"]["accuracy"]["value"] == 100.0
    both = run_task(spec(d, "self-consistency", sopts={"k": 3, "cot": True}, margs={"mode": "cot"}))
    assert both.run["metrics"]["accuracy"]["value"] == 100.0


# -- relisten --------------------------------------------------------------------------------------


def test_parse_segment():
    assert parse_segment("no tag", 2.0) is None
    assert parse_segment("<seg>0.5,1</seg>", 2.0) == {"requested": "0.5,1", "start": 0.5, "end": 1.0,
                                                       "clamped": False}
    assert parse_segment("<seg>1.5,9</seg>", 2.0)["end"] == 2.0
    assert "error" in parse_segment("<seg>abc</seg>", 2.0)
    assert "error" in parse_segment("<seg>1,0.5</seg>", 2.0)
    assert "outside" in parse_segment("<seg>3,4</seg>", 2.0)["error"]
    assert "unclosed" in parse_segment("<seg>1,2", 2.0)["error"]


@pytest.mark.parametrize("tag,samples,turns", [
    ("<seg>0.5,1.0</seg>", 8000, 2),      # exactly 0.5 s at 16 kHz comes back
    ("<seg>1.5,9</seg>", 8000, 2),        # clamped to the clip's end (2 s)
    ("<seg>0.25, 0.3125</seg>", 1000, 2),
    ("<seg>abc</seg>", None, 4),          # malformed: told so (no audio); rounds=2 used; then the final ask
    ("<seg>5,6</seg>", None, 4),          # outside the clip
])
def test_relisten_sends_the_asked_segment(tmp_path, reg, tag, samples, turns):
    d = make_mcq(tmp_path, 3, seconds=2.0)
    log = tmp_path / "log.jsonl"
    res = run_task(spec(d, "relisten", sopts={"rounds": 2}, margs={"mode": "seg", "seg": tag, "log": str(log)}))
    asked = [json.loads(x) for x in log.read_text().splitlines()]
    second = [a for a in asked if a["key"].endswith("#turn1")]
    assert len(second) == 3
    for a in second:
        assert a["audio_samples"][0] == 32000
        assert a["audio_samples"][1:] == ([samples] if samples else [])
    for r in records(res):
        calls = r["strategy"]["calls"]
        assert len(calls) == turns and calls[-1]["output"] == r["output"]
        if samples is None:
            assert r["strategy"]["aggregate"]["segment_errors"] == 2 and calls[-1]["final"]
        else:
            assert calls[1]["segment"]["samples"] == samples
    assert res.run["metrics"]["accuracy"]["value"] == 100.0


def test_relisten_cuts_the_segment_from_the_clip_at_the_adapters_rate(tmp_path, reg):
    d = make_mcq(tmp_path, 2, seconds=2.0)
    sf.write(d / "a.wav", np.random.default_rng(1).standard_normal(16000).astype("float32") * 0.1, 8000)  # 2 s at 8 kHz
    res = run_task(spec(d, "relisten", sopts={"rounds": 1},
                        margs={"mode": "seg", "seg": "<seg>0.5,1.0</seg>"}))
    for r in records(res):  # 0.5 s at the Coin adapter's 16 kHz, not at the file's 8 kHz
        assert r["strategy"]["calls"][1]["segment"]["samples"] == 8000


def test_a_strategy_session_gets_the_loaded_model_and_the_run_directory(tmp_path, reg, monkeypatch):
    import contextlib

    from evalkit.engine.strategies import SelfConsistency, StrategyError

    d = make_mcq(tmp_path, 2)
    seen = []

    @contextlib.contextmanager
    def session(self, model, run_dir):
        seen.append(("enter", type(model).__name__, Path(run_dir)))
        yield
        seen.append(("exit",))

    monkeypatch.setattr(SelfConsistency, "session", session)
    res = run_task(spec(d, "self-consistency", sopts={"k": 2}))
    assert seen == [("enter", "Coin", res.run_dir), ("exit",)]

    def refuse(self, model, run_dir):
        raise StrategyError("the steering vector does not fit this model")

    monkeypatch.setattr(SelfConsistency, "session", refuse)
    with pytest.raises(RunConfigError) as e:
        run_task(spec(d, "self-consistency", sopts={"k": 3}))
    assert str(e.value) == "the steering vector does not fit this model"


def test_relisten_needs_a_multi_turn_audio_adapter(tmp_path, reg):
    d = make_mcq(tmp_path, 3, seconds=1.0)
    with pytest.raises(RunConfigError, match="lacks the multi_turn_audio capability"):
        run_task(spec(d, "relisten", model="scripted"))
