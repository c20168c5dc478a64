"""Edge cases of evalkit.engine.runner: pending work, resume, records, each checked against a hand-derived expectation (issue 11: mutation kill rate)."""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from plugins import ToyMCQ

from evalkit.engine.runner import Progress, RunSpec, run_task
from evalkit.engine.store import read_records
from evalkit.models.base import AdapterConfig, Model
from evalkit.types import AudioRef, Response

#: clip lengths in samples at 16 kHz: item i lasts SECONDS[i] seconds (each item has its own file)
SECONDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


class ProbeConfig(AdapterConfig):
    answers: str
    tag: str = ""  # a new tag is a new run id (a fresh run directory in the same output folder)


class Probe(Model):
    """Answers every request correctly and notes what it was sent; tests change its behaviour through
    the class attributes (monkeypatch), which are not part of the run id."""

    name = "probe"
    capabilities = frozenset({"audio", "text"})
    Config = ProbeConfig
    default_batch_size = 3
    batches: list[list[str]] = []  # keys of every generate call, in order
    seen: list = []  # every request, as sent
    respond = None  # (self, request) -> Response | None; None: the correct answer

    def __init__(self, config):
        super().__init__(config)
        self.key = json.loads(Path(config.answers).read_text())

    def correct(self, r) -> Response:
        options = dict(re.findall(r"^\(([A-Z])\) (.*)$", r.text(), re.M))
        gold = self.key[r.key.split("#")[0]]
        return Response(r.key, text=f"The answer is ({[k for k, v in options.items() if v == gold][0]}).",
                        latency_s=0.5)

    def generate(self, requests):
        Probe.batches.append([r.key for r in requests])
        Probe.seen.extend(requests)
        out = []
        for r in requests:
            resp = type(self).respond(self, r) if type(self).respond is not None else self.correct(r)
            if resp is not None:
                out.append(resp)
        return out


class ToyOpen(ToyMCQ):
    """The toy items as a task that is not scored as multiple choice: shown in their own option order."""

    name = "toy-open"
    is_mcq = False


class Recorder(Progress):
    def __init__(self):
        self.started, self.advanced, self.stopped = [], [], 0

    def start(self, task, total, done, errors=0):
        self.started.append((task, total, done, errors))

    def advance(self, n, errors):
        self.advanced.append((n, int(errors)))

    def stop(self):
        self.stopped += 1


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Seven MCQ items s0..s6 with two options each, every item its own clip of SECONDS[i] seconds."""
    yield from tiny_tree(tmp_path, monkeypatch)


def tiny_tree(tmp_path, monkeypatch):
    """The `tiny` fixture's body, for other test modules' fixtures."""
    import plugins
    import soundfile as sf

    from evalkit import registry

    plugins.install(monkeypatch)
    monkeypatch.setenv("EVALKIT_MODELS", "scripted=plugins:Scripted,probe=test_runner_resume:Probe")
    monkeypatch.setenv("EVALKIT_TASKS", "toy-mcq=plugins:ToyMCQ,toy-open=test_runner_resume:ToyOpen")
    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(tmp_path / "cache"))
    registry._table.cache_clear()
    monkeypatch.setattr(Probe, "batches", [])
    monkeypatch.setattr(Probe, "seen", [])
    (tmp_path / "audio").mkdir()
    items, key = [], {}
    for i, s in enumerate(SECONDS):
        sf.write(tmp_path / "audio" / f"c{i}.wav", np.full(round(s * 16000), 0.1, dtype="float32"), 16000)
        choices = [f"yes {i}", f"no {i}"]
        items.append({"id": f"s{i}", "audio": f"audio/c{i}.wav", "question": f"Q{i}?", "choices": choices,
                      "answer": choices[i % 2]})
        key[f"s{i}"] = choices[i % 2]
    (tmp_path / "toy.json").write_text(json.dumps(items))
    (tmp_path / "key.json").write_text(json.dumps(key))
    yield tmp_path
    registry._table.cache_clear()


def probe_spec(root, tag="", **kw):
    kw.setdefault("output", root / "runs")
    return RunSpec(model="probe", task="toy-mcq", model_args={"answers": str(root / "key.json"), "tag": tag},
                   task_args={"data": str(root / "toy.json")}, choices="original", **kw)


def records(res):
    return read_records(res.run_dir / "samples.jsonl")


KEYS = [f"s{i}" for i in range(len(SECONDS))]


# ---------------------------------------------------------------- batching


def test_batches_follow_batch_size_then_the_adapters_preference_then_its_default(tiny, monkeypatch):
    res = run_task(probe_spec(tiny, "default"))  # default_batch_size 3: 3 + 3 + 1
    assert Probe.batches == [KEYS[0:3], KEYS[3:6], KEYS[6:7]]
    assert [r["key"] for r in records(res)] == KEYS and res.calls == 7
    Probe.batches.clear()
    monkeypatch.setattr(Probe, "preferred_batch_size", 2, raising=False)
    run_task(probe_spec(tiny, "preferred"))
    assert Probe.batches == [KEYS[0:2], KEYS[2:4], KEYS[4:6], KEYS[6:7]]
    Probe.batches.clear()
    res = run_task(probe_spec(tiny, "given", batch_size=5))  # --batch-size wins over both
    assert Probe.batches == [KEYS[0:5], KEYS[5:7]]
    assert res.run["batch_size"] == 5 and res.run["status"] == "complete"


# ---------------------------------------------------------------- audio prefetch


@pytest.fixture
def loads(monkeypatch):
    """Every AudioRef.load: (clip file name, thread name), in call order."""
    seen: list[tuple[str, str]] = []
    real = AudioRef.load

    def load(self, sample_rate=None):
        seen.append((self.path.name, threading.current_thread().name))
        return real(self, sample_rate)

    monkeypatch.setattr(AudioRef, "load", load)
    return seen


def test_the_next_two_batches_are_decoded_in_the_pool_while_the_model_answers_and_no_more(tiny, loads, monkeypatch):
    ahead = []

    def respond(self, r):
        i = int(r.key[1:])
        want = {f"c{j}.wav" for j in range(i + 1, min(i + 3, len(SECONDS)))}  # batch size 1: two batches ahead
        deadline = time.monotonic() + 5
        while not want <= {name for name, _ in loads} and time.monotonic() < deadline:
            time.sleep(0.005)
        ahead.append((i, sorted(int(name[1:-4]) for name, _ in loads)))
        assert r.audio()[0]._decoded.keys() == {16000}  # the clip arrives decoded at the adapter's rate
        return self.correct(r)

    monkeypatch.setattr(Probe, "respond", respond)
    res = run_task(probe_spec(tiny, batch_size=1))
    assert res.run["status"] == "complete"
    # while item i is answered, items up to i + 2 are decoded and none later
    assert ahead == [(i, list(range(min(i + 3, len(SECONDS))))) for i in range(len(SECONDS))]
    assert all(t.startswith("evalkit-prep") for _, t in loads)  # decoded in the prefetch pool


def test_an_adapter_that_reads_the_files_itself_gets_nothing_decoded(tiny, loads, monkeypatch):
    monkeypatch.setattr(Probe, "needs_audio", False, raising=False)
    res = run_task(probe_spec(tiny))
    assert loads == [] and res.run["status"] == "complete"
    assert all("audio_seconds" not in r["extra"] for r in records(res))  # nothing decoded: length unknown


@pytest.mark.parametrize("cpus, threads", [(16, 4), (2, 2), (None, 1)])
def test_the_prefetch_pool_uses_at_most_four_threads_and_no_more_than_the_cpus(tiny, loads, monkeypatch,
                                                                                cpus, threads):
    import os

    real = AudioRef.load

    def slow(self, sample_rate=None):
        time.sleep(0.03)  # long enough for every worker of the pool to take a clip
        return real(self, sample_rate)

    monkeypatch.setattr(AudioRef, "load", slow)
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    run_task(probe_spec(tiny, batch_size=7))
    assert len({t for _, t in loads}) == threads


# ---------------------------------------------------------------- what the model heard


def test_records_say_how_much_audio_each_request_carried_and_what_the_adapter_heard(tiny, monkeypatch):
    res = run_task(probe_spec(tiny, "unknown"))  # audio_fed None: how much was heard is unknown
    assert [(r["extra"]["audio_seconds"], r["extra"]["audio_seconds_fed"]) for r in records(res)] == \
        [(s, None) for s in SECONDS]
    monkeypatch.setattr(Probe, "audio_fed", "all")
    res = run_task(probe_spec(tiny, "all"))
    assert [(r["extra"]["audio_seconds"], r["extra"]["audio_seconds_fed"]) for r in records(res)] == \
        [(s, s) for s in SECONDS]
    assert res.run["long_audio"]["truncated"] == 0

    def reported(self, r):  # the adapter cut every clip to its first 0.25 s and says so
        resp = self.correct(r)
        resp.extra = {"usage": 7, "audio_seconds_fed": 0.25}
        return resp

    monkeypatch.setattr(Probe, "respond", reported)
    res = run_task(probe_spec(tiny, "reported"))
    assert [r["extra"] for r in records(res)] == \
        [{"usage": 7, "audio_seconds": s, "audio_seconds_fed": 0.25} for s in SECONDS]
    assert res.run["long_audio"]["truncated"] == sum(s > 0.25 for s in SECONDS)


def test_decoded_audio_is_released_once_its_request_is_answered(tiny):
    run_task(probe_spec(tiny, batch_size=2))
    clips = [a for r in Probe.seen for a in r.audio()]
    assert len(clips) == 7 and all(a._decoded == {} for a in clips)


# ---------------------------------------------------------------- the per-sample record


def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_each_kind_of_record_holds_what_happened_to_its_request(tiny, monkeypatch):
    from evalkit.engine.secrets import register_secret

    secret = "sk-runres-planted-0123456789"
    register_secret(secret)
    (tiny / "audio" / "c2.wav").unlink()  # s2: its input never reaches the model

    def respond(self, r):
        if r.key == "s1":  # the wrong option (gold of s1 is its second option, B)
            return Response(r.key, text="The answer is (A).", latency_s=0.25, extra={"usage": 3})
        if r.key == "s3":
            return Response(r.key, error=f"HTTP 500 for key {secret}", latency_s=0.125)
        if r.key == "s4":  # a reply that no JSON log can hold
            return Response(r.key, text="The answer is (A).", latency_s=0.75, extra={"logprob": float("nan")})
        return self.correct(r)

    monkeypatch.setattr(Probe, "respond", respond)
    res = run_task(probe_spec(tiny))
    recs = {r["key"]: r for r in records(res)}
    assert len(records(res)) == 7 and sorted(recs) == KEYS  # every sample recorded exactly once
    audio_extra = {i: {"audio_seconds": s, "audio_seconds_fed": None} for i, s in enumerate(SECONDS)}
    fields = ("output", "error", "error_kind", "latency_s", "extra", "extracted", "extraction_stage", "scores")
    got = {k: {f: r[f] for f in fields} for k, r in recs.items()}
    assert got["s0"] == {"output": "The answer is (A).", "error": None, "error_kind": None, "latency_s": 0.5,
                         "extra": audio_extra[0], "extracted": "A", "extraction_stage": "answer_phrase",
                         "scores": {"accuracy": 1.0, "extraction_failure": 0.0}}
    assert got["s1"] == {"output": "The answer is (A).", "error": None, "error_kind": None, "latency_s": 0.25,
                         "extra": {"usage": 3, **audio_extra[1]}, "extracted": "A",
                         "extraction_stage": "answer_phrase", "scores": {"accuracy": 0.0, "extraction_failure": 0.0}}
    failed = {"extracted": None, "extraction_stage": "error", "scores": {"accuracy": 0.0, "extraction_failure": 0.0}}
    assert secret not in got["s3"]["error"] and got["s3"]["error"].startswith("HTTP 500 for key ")
    assert {f: got["s3"][f] for f in fields if f != "error"} == \
        {"output": None, "error_kind": "model", "latency_s": 0.125, "extra": audio_extra[3], **failed}
    s2 = got["s2"]
    assert s2["error_kind"] == "input" and "c2.wav" in s2["error"]
    assert {f: s2[f] for f in fields if f not in ("error", "error_kind")} == \
        {"output": None, "latency_s": None, "extra": {}, **failed}
    assert recs["s2"]["prompt"] is None  # no request was built
    assert recs["s4"]["error"].startswith("the response could not be logged: field 'extra.logprob'")
    assert {f: got["s4"][f] for f in fields if f != "error"} == \
        {"output": None, "error_kind": "model", "latency_s": 0.75, "extra": {}, **failed}
    assert all("strategy" not in r for r in recs.values())
    for k in ("s0", "s1", "s3", "s4"):  # the request as sent, and the bytes of the clip it carried
        i = int(k[1:])
        assert recs[k]["prompt"][0]["content"][0] == {"type": "audio", "audio": str(tiny / "audio" / f"c{i}.wav")}
        assert recs[k]["audio"][0]["sha256"] == _sha(tiny / "audio" / f"c{i}.wav")
    assert res.run["counts"]["errors"] == 3 and res.run["counts"]["input_errors"] == 1
    # figures over the six samples that reached the model: s0, s5, s6 right; s1 wrong; s3, s4 failed
    assert res.run["metrics"]["accuracy"]["n"] == 6
    assert res.run["metrics"]["accuracy"]["value"] == pytest.approx(100 * 3 / 6)
