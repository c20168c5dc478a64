"""Cascade: captioner -> text LLM, with captions cached per (clip, captioner identity)."""
import hashlib
import json
from typing import ClassVar

import numpy as np
import pytest

from evalkit.engine.runner import RunSpec, run_task
from evalkit.engine.store import read_records
from evalkit.models.base import AdapterConfig, Model
from evalkit.types import AudioRef, Request, Response

FAIL_ON = None  # tests set this to fail clips without changing the captioner's identity


class CaptConfig(AdapterConfig):
    calls_log: str | None = None
    fail_on: str | None = None  # clips whose path contains this get an error
    empty_on: str | None = None  # clips whose path contains this get the empty caption (nothing heard)


def fingerprint(x) -> str:
    return hashlib.sha256(np.round(np.asarray(x, dtype=np.float32), 4).tobytes()).hexdigest()[:12]


class Capt(Model):
    """Captions from the decoded samples themselves: no audio -> no fingerprint."""
    name = "test-capt"
    capabilities = frozenset({"audio"})
    Config = CaptConfig
    volatile_args = frozenset({"calls_log"})

    def generate(self, requests):
        out = []
        for r in requests:
            if self.config.calls_log:
                with open(self.config.calls_log, "a") as f:
                    f.write(r.key + "\n")
            audio = r.audio()
            if len(audio) != 1 or "Describe the audio in detail" not in r.text():
                out.append(Response(r.key, error="bad caption request"))
                continue
            fail_on = self.config.fail_on or FAIL_ON
            if fail_on and fail_on in audio[0].describe():
                out.append(Response(r.key, error="captioner exploded"))
                continue
            if self.config.empty_on and self.config.empty_on in audio[0].describe():
                out.append(Response(r.key, text=""))
                continue
            x, sr = audio[0].load(16000)
            out.append(Response(r.key, text=f"noise at {sr} Hz, fp {fingerprint(x)}"))
        return out


class Echo(Model):
    """Text-only LLM recording what it was asked."""
    name = "test-echo"
    capabilities = frozenset({"text"})
    Config = AdapterConfig
    seen: ClassVar[list] = []

    def generate(self, requests):
        out = []
        for r in requests:
            assert not r.audio(), "audio reached the text LLM"
            Echo.seen.append(r)
            out.append(Response(r.key, text="The answer is (A).", extra={"llm_extra": 1}))
        return out


@pytest.fixture
def env(toy, monkeypatch):
    from evalkit import registry

    models = ("scripted=plugins:Scripted,test-capt=test_cascade:Capt,test-echo=test_cascade:Echo,"
              "cascade=evalkit.models.cascade:Cascade")
    if "cascade" in registry.BUILTIN_MODELS:  # once registered as a built-in, no plugin entry is needed
        models = models.rsplit(",", 1)[0]
    monkeypatch.setenv("EVALKIT_MODELS", models)
    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(toy / "cache"))
    registry._table.cache_clear()
    Echo.seen = []
    yield toy
    registry._table.cache_clear()


def cascade_spec(toy, log, llm=None, seed=0, captioner=None, **extra):
    llm = llm or {"name": "scripted", "args": {"answers": str(toy / "key.json"), "require_audio": False}}
    captioner = captioner or {"name": "test-capt", "args": {"calls_log": str(log)}}
    args = {"captioner": captioner, "llm": llm, **extra}
    return RunSpec(model="cascade", task="toy-mcq", model_args=args, task_args={"data": str(toy / "toy.json")},
                   seed=seed, output=toy / "runs")


def calls(log):
    return log.read_text().split() if log.exists() else []


def expected_caption(path):
    x, sr = AudioRef(path=path).load(16000)
    return f"noise at {sr} Hz, fp {fingerprint(x)}"


def test_one_caption_per_clip_across_questions_runs_and_llms(env):
    toy, log = env, env / "calls.log"
    a = run_task(cascade_spec(toy, log))  # 24 questions on 12 clips
    assert a.run["metrics"]["accuracy"]["value"] == 100.0 and a.run["counts"]["errors"] == 0
    assert len(calls(log)) == 12 == len(set(calls(log)))
    recs = read_records(a.run_dir / "samples.jsonl")
    for r in recs:
        clip = toy / "audio" / f"a{int(r['sample_id'][1:]) // 2}.wav"
        assert r["extra"]["caption"] == expected_caption(clip)  # the audio itself reached the captioner
        assert r["extra"]["caption_source"] == "captioner"
    # another run (other seed -> other run id), then another LLM: every caption from the cache
    b = run_task(cascade_spec(toy, log, seed=1))
    assert b.run_id != a.run_id and b.calls == 24
    c = run_task(cascade_spec(toy, log, llm="test-echo"))
    assert len(calls(log)) == 12
    assert {r["extra"]["caption_source"] for r in read_records(c.run_dir / "samples.jsonl")} == {"cache"}
    assert c.run["model"]["info"]["caption_sources"] == {"file": 0, "cache": 24, "captioner": 0}
    # the LLM got the question with the audio replaced by the caption
    first = next(r for r in Echo.seen if r.key == "s0")
    parts = first.messages[0]["content"]
    assert parts[0] == {"type": "text", "text": "Audio description: " + expected_caption(toy / "audio" / "a0.wav")}
    assert "Question 0?" in parts[1]["text"]
    # a different caption prompt is a different captioner identity: captioned again
    run_task(cascade_spec(toy, log, llm="test-echo", caption_prompt="Describe the audio in detail, briefly."))
    assert len(calls(log)) == 24


def test_precomputed_captions_file(env):
    toy, log = env, env / "calls.log"
    sha = AudioRef(path=toy / "audio" / "a1.wav").sha256()
    lines = [{"audio": "a0.wav", "caption": "from file by name"},
             {"audio_sha256": sha, "caption": "from file by hash"},
             {"id": "s4", "caption": "from file by id"}]
    (toy / "caps.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = run_task(cascade_spec(toy, log, llm="test-echo", captions=str(toy / "caps.jsonl")))
    recs = {r["key"]: r for r in read_records(res.run_dir / "samples.jsonl")}
    assert recs["s0"]["extra"]["caption"] == recs["s1"]["extra"]["caption"] == "from file by name"
    assert recs["s2"]["extra"]["caption"] == "from file by hash"
    assert recs["s4"]["extra"]["caption"] == "from file by id" and recs["s4"]["extra"]["caption_source"] == "file"
    assert recs["s6"]["extra"]["caption_source"] == "captioner"
    assert len(calls(log)) == 12 - 3
    assert res.run["model"]["info"]["captions_file"]["n"] == 3


def test_captioner_error_is_the_samples_error_and_not_cached(env, monkeypatch):
    import test_cascade

    toy, log = env, env / "calls.log"
    spec = cascade_spec(toy, log, llm="test-echo")
    monkeypatch.setattr(test_cascade, "FAIL_ON", "a3.wav")
    res = run_task(spec)
    errs = [r for r in read_records(res.run_dir / "samples.jsonl") if r["error"]]
    assert sorted(r["key"] for r in errs) == ["s6", "s7"]
    assert all(r["error"] == "captioner: captioner exploded" and r["extra"]["caption"] is None for r in errs)
    assert not any(r.key in ("s6", "s7") for r in Echo.seen)  # the LLM was not asked
    n = len(calls(log))
    monkeypatch.setattr(test_cascade, "FAIL_ON", None)
    spec.retry_errors = True
    res2 = run_task(spec)
    assert res2.run_id == res.run_id and res2.calls == 2 and res2.run["counts"]["errors"] == 0
    assert len(calls(log)) == n + 1  # only the failed clip is captioned again


def test_empty_caption_is_valid_cached_and_shown_to_the_llm(env):
    """Whisper on a background-only clip correctly says nothing: that is an answer, not an error."""
    from evalkit.models.cascade import EMPTY_CAPTION_TEXT

    toy, log = env, env / "calls.log"
    capt = {"name": "test-capt", "args": {"calls_log": str(log), "empty_on": "a3.wav"}}
    res = run_task(cascade_spec(toy, log, llm="test-echo", captioner=capt))
    recs = {r["key"]: r for r in read_records(res.run_dir / "samples.jsonl")}
    assert res.run["counts"]["errors"] == 0 and len(recs) == 24
    for key in ("s6", "s7"):  # the two questions on a3.wav
        assert recs[key]["error"] is None and recs[key]["output"] == "The answer is (A)."
        assert recs[key]["extra"]["caption"] == "" and recs[key]["extra"]["caption_source"] == "captioner"
        asked = next(r for r in Echo.seen if r.key == key)
        assert asked.messages[0]["content"][0] == {"type": "text", "text": "Audio description: " + EMPTY_CAPTION_TEXT}
    assert recs["s0"]["extra"]["caption"] == expected_caption(toy / "audio" / "a0.wav")
    assert len(calls(log)) == 12
    # the empty caption was cached like the others: another run captions nothing
    again = run_task(cascade_spec(toy, log, llm="test-echo", captioner=capt, seed=1))
    assert again.run_id != res.run_id and len(calls(log)) == 12
    recs2 = {r["key"]: r for r in read_records(again.run_dir / "samples.jsonl")}
    assert recs2["s6"]["extra"]["caption"] == "" and recs2["s6"]["extra"]["caption_source"] == "cache"
    assert again.run["model"]["info"]["caption_sources"]["captioner"] == 0


def test_captioner_without_text_is_an_error(env, monkeypatch):
    """A response with neither text nor error is not silently read as "nothing heard"."""
    import test_cascade

    toy, log = env, env / "calls.log"

    def no_text(self, requests):
        return [Response(r.key) for r in requests]

    monkeypatch.setattr(test_cascade.Capt, "generate", no_text)
    res = run_task(cascade_spec(toy, log, llm="test-echo"))
    recs = read_records(res.run_dir / "samples.jsonl")
    assert len(recs) == 24 and all(r["error"] == "captioner: captioner returned no text (None) and no error"
                                   for r in recs)


def test_empty_caption_from_the_captions_file(env):
    toy, log = env, env / "calls.log"
    (toy / "caps.jsonl").write_text(json.dumps({"audio": "a0.wav", "caption": ""}) + "\n")
    res = run_task(cascade_spec(toy, log, llm="test-echo", captions=str(toy / "caps.jsonl")))
    recs = {r["key"]: r for r in read_records(res.run_dir / "samples.jsonl")}
    assert recs["s0"]["extra"]["caption"] == "" and recs["s0"]["extra"]["caption_source"] == "file"
    assert len(calls(log)) == 11


def test_captioner_without_audio_fails(env):
    """--no-audio drops the audio: the cascade must not invent a caption."""
    toy, log = env, env / "calls.log"
    spec = cascade_spec(toy, log, llm="test-echo")
    spec.no_audio = True
    res = run_task(spec)
    recs = read_records(res.run_dir / "samples.jsonl")
    assert calls(log) == [] and all(r["extra"]["caption"] is None for r in recs)


def test_spec_syntax(env):
    from evalkit.models.cascade import CascadeConfig, CascadeError, parse_spec

    assert parse_spec("test-echo") == {"name": "test-echo", "args": {}}
    assert parse_spec('{"name": "test-capt", "args": {"fail_on": "x"}}') == {"name": "test-capt",
                                                                            "args": {"fail_on": "x"}}
    assert parse_spec({"name": "test-capt"}) == {"name": "test-capt", "args": {}}
    with pytest.raises(Exception, match="unknown model 'nope'"):
        parse_spec("nope")
    with pytest.raises(Exception, match="fail_onn"):
        CascadeConfig(captioner={"name": "test-capt", "args": {"fail_onn": 1}}, llm="test-echo")
    with pytest.raises(CascadeError, match="unknown field"):
        parse_spec({"name": "test-capt", "arg": {}})
    from evalkit.models.cascade import Cascade

    with pytest.raises(CascadeError, match="does not take audio"):
        Cascade(CascadeConfig(captioner="test-echo", llm="test-echo", cache=False))


def test_openai_pair_on_fake_server(env, monkeypatch):
    """Captioner and LLM both on the fake OpenAI server: the audio arrives as WAV, the LLM gets text."""
    pytest.importorskip("openai")
    from fake_openai_server import (
        FakeOpenAIServer,
        audio_parts,
        decode_input_audio,
        text_of,
    )

    from evalkit.models.cascade import Cascade, CascadeConfig

    def reply(body):
        if audio_parts(body):
            x, sr = decode_input_audio(audio_parts(body)[0])
            return f"a tone of {len(x)} samples at {sr} Hz"
        return "LLM saw: " + text_of(body)

    with FakeOpenAIServer(reply=reply) as srv:
        spec = {"name": "openai", "args": {"base_url": srv.url, "model": "m"}}
        m = Cascade(CascadeConfig(captioner=spec, llm={"name": "openai", "args": {**spec["args"], "audio": False}}))
        try:
            clip = AudioRef(array=np.zeros(8000, "float32") + 0.1, sample_rate=8000, label="c.wav")
            reqs = [Request(f"q{i}", [{"role": "user", "content": [{"type": "audio", "audio": clip},
                                                                    {"type": "text", "text": f"Q{i}?"}]}])
                    for i in range(3)]
            out = m.generate(reqs)
        finally:
            m.close()
        assert srv.count == 4  # one caption + three questions
        assert out[0].text == "LLM saw: Audio description: a tone of 16000 samples at 16000 Hz\nQ0?"
        assert out[2].extra["caption"] == "a tone of 16000 samples at 16000 Hz"


def test_captions_file_lines_split_on_newline_only(tmp_path):
    import json

    from evalkit.models.cascade import CaptionsFile

    p = tmp_path / "caps.jsonl"
    p.write_text(json.dumps({"id": "s1", "caption": "a dog\u2028then a cat"}, ensure_ascii=False) + "\n")
    caps = CaptionsFile(p)
    assert caps.by["id"]["s1"] == "a dog\u2028then a cat"
