"""The audio check flags a model that ignores its audio and not one that listens (issue 13, item 1)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from evalkit.engine.audio_check import UNCHANGED_FLAG, audio_check
from evalkit.engine.runner import ModelHolder, RunSpec, run_task
from evalkit.engine.store import read_records
from evalkit.models.base import AdapterConfig, Model
from evalkit.types import Response


class KeyConfig(AdapterConfig):
    answers: str


class _Keyed(Model):
    capabilities = frozenset({"audio", "text"})
    Config = KeyConfig

    def __init__(self, config):
        super().__init__(config)
        self.key = json.loads(Path(config.answers).read_text())

    def pick(self, r, correct: bool) -> Response:
        options = dict(re.findall(r"^\(([A-Z])\) (.*)$", r.text(), re.M))
        gold = self.key[r.key]
        letter = next(k for k, v in options.items() if (v == gold) == correct)
        return Response(r.key, text=f"The answer is ({letter}).")


class Listener(_Keyed):
    """Right when it hears something, wrong on silence or without audio."""

    def generate(self, requests):
        out = []
        for r in requests:
            clips = r.audio()
            heard = bool(clips) and float(np.abs(clips[0].load(16000)[0]).max()) > 0
            out.append(self.pick(r, correct=heard))
        return out


class Deaf(_Keyed):
    """Answers from the text alone (a processor that dropped the audio): the same with or without it."""

    def generate(self, requests):
        return [self.pick(r, correct=True) for r in requests]


class AudioOnly(Listener):
    capabilities = frozenset({"audio"})


@pytest.fixture
def models(toy, monkeypatch):
    from evalkit import registry

    monkeypatch.setenv("EVALKIT_MODELS", "listener=test_audio_check:Listener,deaf=test_audio_check:Deaf,"
                                         "audio-only=test_audio_check:AudioOnly")
    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(toy / "cache"))
    registry._table.cache_clear()
    yield toy
    registry._table.cache_clear()


def check(toy, model, limit=None):
    spec = RunSpec(model=model, task="toy-mcq", model_args={"answers": str(toy / "key.json")},
                   task_args={"data": str(toy / "toy.json")}, output=toy / "runs")
    holder = ModelHolder(model, spec.model_args)
    main = run_task(spec, holder)
    return main, audio_check(main, spec, holder, limit)


def test_a_model_that_ignores_its_audio_is_flagged(models):
    main, entry = check(models, "deaf")
    assert entry["flag"] is True and entry["unchanged_silence"] == 1.0 and entry["unchanged_no_audio"] == 1.0
    assert entry["with_audio"]["value"] == entry["silence"]["value"] == 100.0
    run = json.loads((main.run_dir / "run.json").read_text())
    assert run["diagnostics"]["audio_reliance"]["flag"] is True  # on disk, in the main run's record


def test_a_model_that_listens_is_not_flagged(models):
    main, entry = check(models, "listener")
    assert entry["flag"] is False and entry["unchanged_silence"] == 0.0
    assert entry["with_audio"]["value"] == 100.0 and entry["silence"]["value"] == 0.0
    assert entry["no_audio"]["value"] == 0.0 and entry["items"] == 24
    lo, hi = entry["silence"]["ci"] or (0.0, 0.0)
    assert lo <= 0.0 <= hi


def test_silence_has_the_clips_length_and_the_variants_are_their_own_runs(models):
    main, entry = check(models, "listener", limit=5)
    assert entry["items"] == 5 and len(set(entry["run_ids"].values())) == 3
    silent = read_records(next(d for d in (models / "runs").iterdir() if d.name == entry["run_ids"]["silence"])
                          / "samples.jsonl")
    assert len(silent) == 5 and all(r["prompt"][0]["content"][0]["audio"].startswith("silence:") for r in silent)
    again = check(models, "listener", limit=5)[1]  # resumes: no new calls, same figures
    assert again == entry


def test_an_audio_only_adapter_skips_the_no_audio_variant(models):
    _, entry = check(models, "audio-only", limit=4)
    assert "no_audio" not in entry and "text-only" in entry["no_audio_skipped"]
    assert entry["flag"] is False


def test_threshold_is_documented():
    import evalkit.engine.audio_check as ac

    assert f"{UNCHANGED_FLAG}" in ac.__doc__


class SampledDeaf(_Keyed):
    """Ignores its audio; greedy (temperature 0) it answers right, sampled it picks a letter from a hash of
    the request key: its self-consistency votes look nothing like its greedy answers on silence."""

    def generate(self, requests):
        import hashlib

        out = []
        for r in requests:
            if r.generation.temperature == 0:
                out.append(self.pick(r, correct=True))
                continue
            options = re.findall(r"^\(([A-Z])\) ", r.text(), re.M)
            letter = options[hashlib.sha256(r.key.encode()).digest()[0] % len(options)]
            out.append(Response(r.key, text=f"The answer is ({letter})."))
        return out


def test_a_deaf_model_under_a_sampling_strategy_is_still_flagged(models, monkeypatch):
    """The ablations are plain single calls: they are compared with a plain run with the audio, not with
    the strategy's votes (which, sampled, differ from greedy answers whatever the audio)."""
    from evalkit import registry

    monkeypatch.setenv("EVALKIT_MODELS", "sampled-deaf=test_audio_check:SampledDeaf")
    registry._table.cache_clear()
    spec = RunSpec(model="sampled-deaf", task="toy-mcq", model_args={"answers": str(models / "key.json")},
                   task_args={"data": str(models / "toy.json")}, output=models / "runs",
                   strategy="self-consistency", strategy_options={"k": 3, "temperature": 0.8})
    holder = ModelHolder("sampled-deaf", spec.model_args)
    main = run_task(spec, holder)
    entry = audio_check(main, spec, holder, None)
    assert entry["compared_with"] == "plain single calls with the audio"
    assert entry["flag"] is True and entry["unchanged_silence"] == 1.0
    assert entry["with_audio"]["value"] == 100.0 and entry["with_audio_strategy"]["value"] < 80.0
    assert len(set(entry["run_ids"].values())) == 4  # main, plain with audio, silence, no audio
