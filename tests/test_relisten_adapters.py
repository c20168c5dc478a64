"""--strategy relisten (Echo) on real adapters, not scripted ones.

openai: the real adapter against the fake OpenAI-compatible HTTP server (tests/fake_openai_server.py).
The server answers a relisten conversation from a script indexed by the number of assistant turns the
request holds, so every HTTP body the adapter sends is inspected: the whole conversation must be there,
and the segment's WAV (decoded here with soundfile) must hold exactly (end - start) * 16000 samples of the
source clip, read independently from the file, at that position.

hf: the tiny random Qwen2-Audio (tests/test_hf_audio.py's builder) run end to end through the runner,
with the LM head forced to say a scripted reply ("<seg>1.0,2.0</seg>", then "(A)"). What the processor
receives in the second turn is compared with the conversation rendered here by hand from the
Qwen2-Audio template's rules, and its output holds one feature block per clip. A preset whose template
cannot take audio in later turns (Audio Flamingo 3) is refused before the model loads.

Edge cases (clamped end, start >= end, malformed and unclosed tags, outside the clip, NaN, more asks than
rounds) go through the openai adapter and are checked in the HTTP bodies and in the records.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from evalkit.engine.runner import ModelHolder, RunConfigError, RunSpec, run_task

pytest.importorskip("openai")

from fake_openai_server import FakeOpenAIServer, decode_input_audio, text_of  # noqa: E402
from test_strategies import reg  # noqa: E402,F401  (registers toy-mcq from tests/plugins.py)

pytestmark = pytest.mark.usefixtures("reg")

SR = 16000
CLIP_S = 2.0
INSTRUCTION_MARK = "<seg>START,END</seg>"  # in the first user turn of every relisten conversation
SEG_FEEDBACK = "This is the segment from {a:.2f} s to {b:.2f} s. Ask for another segment or give your answer."
#: |x - int16(x) / 32768|: the WAV the adapter sends is 16-bit PCM
PCM16_TOL = 1.0 / 32767


def make_items(tmp: Path, n: int = 1, seconds: float = CLIP_S) -> Path:
    """n three-option items on one noise clip (16 kHz, 16-bit WAV); returns the items file."""
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    sf.write(tmp / "clip.wav", (0.1 * rng.standard_normal(int(SR * seconds))).astype(np.float32), SR)
    items = [{"id": f"s{i}", "audio": "clip.wav", "question": f"Which sound is it ({i})?",
              "choices": ["dog", "cat", "bird"], "answer": "dog"} for i in range(n)]
    (tmp / "toy.json").write_text(json.dumps(items))
    return tmp / "toy.json"


def source_clip(data: Path) -> np.ndarray:
    x, sr = sf.read(data.parent / "clip.wav", dtype="float32")
    assert sr == SR
    return x


def records(res) -> list[dict]:
    return [json.loads(x) for x in (res.run_dir / "samples.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------- openai
def scripted(script: list[str]):
    """Server reply: script[number of assistant turns in the request] (the last entry repeats); requests
    that are no relisten conversation (the adapter's own probes) get "OK"."""

    def reply(body: dict) -> str:
        if INSTRUCTION_MARK not in text_of(body):
            return "OK"
        turns = sum(m.get("role") == "assistant" for m in body["messages"])
        return script[min(turns, len(script) - 1)]

    return reply


def conversations(srv: FakeOpenAIServer) -> list[dict]:
    return [b for b in srv.bodies if INSTRUCTION_MARK in text_of(b)]


def audio_of(message: dict) -> list[np.ndarray]:
    content = message["content"]
    if isinstance(content, str):
        return []
    out = []
    for p in content:
        if p.get("type") == "input_audio":
            x, sr = decode_input_audio(p["input_audio"])
            assert sr == SR
            out.append(x)
    return out


def text_in(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content
                                                            if p.get("type") == "text")


def run_openai(srv: FakeOpenAIServer, data: Path, out: Path, rounds: int):
    spec = RunSpec(model="openai", task="toy-mcq", task_args={"data": str(data)}, output=out,
                   model_args={"base_url": srv.url, "model": "fake-audio-model", "max_retries": 0,
                               "timeout_s": 20},
                   strategy="relisten", strategy_options={"rounds": rounds})
    return run_task(spec)


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server: the adapter uses a dummy key


def test_openai_second_request_carries_the_conversation_and_the_exact_segment(tmp_path, no_key):
    data = make_items(tmp_path)
    src = source_clip(data)
    with FakeOpenAIServer(reply=scripted(["Let me listen again: <seg>1.0,2.0</seg>", "The answer is (A)."])) as srv:
        res = run_openai(srv, data, tmp_path / "runs", rounds=2)
        bodies = conversations(srv)
    assert len(bodies) == 2, [text_of(b)[:80] for b in bodies]
    first, second = bodies
    assert [m["role"] for m in first["messages"]] == ["user"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    u1, asst, u2 = second["messages"]
    # turn 1 again, as it was first sent: the original clip and the instruction
    assert u1 == first["messages"][0]
    (orig,) = audio_of(u1)
    assert len(orig) == len(src) and np.abs(orig - src).max() <= PCM16_TOL
    assert "you may listen to part of the audio again" in text_in(u1).lower()
    assert "the clip lasts 2.00 s" in text_in(u1)
    # the assistant's reply, verbatim
    assert asst["content"] == "Let me listen again: <seg>1.0,2.0</seg>"
    # the segment: exactly 1.0 s of the clip, from sample 16000 on
    (seg,) = audio_of(u2)
    i0, i1 = int(1.0 * SR), int(2.0 * SR)
    assert len(seg) == (2.0 - 1.0) * SR == i1 - i0
    assert np.abs(seg - src[i0:i1]).max() <= PCM16_TOL
    assert np.array_equal(seg, orig[i0:i1])  # the same samples, through the same 16-bit encoding
    # one sample off would not pass: neighbouring noise samples differ far more than the PCM step
    assert np.abs(seg - src[i0 - 1:i1 - 1]).max() > 100 * PCM16_TOL
    assert text_in(u2) == SEG_FEEDBACK.format(a=1.0, b=2.0)
    # the record holds each round's request and reply
    (rec,) = records(res)
    calls = rec["strategy"]["calls"]
    assert [c["output"] for c in calls] == ["Let me listen again: <seg>1.0,2.0</seg>", "The answer is (A)."]
    assert calls[1]["segment"] == {"requested": "1.0,2.0", "start": 1.0, "end": 2.0, "clamped": False,
                                   "samples": 16000}
    assert [m["role"] for m in calls[1]["prompt"]] == ["user", "assistant", "user"]
    assert calls[1]["prompt"][2]["content"][0] == {"type": "audio",
                                                   "audio": f"segment 1.000-2.000s of {data.parent / 'clip.wav'}"}
    assert rec["output"] == "The answer is (A)." and rec["extracted"] == "A"
    assert rec["strategy"]["aggregate"] == {"turns": 2, "segments": 1, "segment_errors": 0, "clamped": 0,
                                            "final_ask": False}


@pytest.mark.parametrize("tag,expect", [
    ("<seg>1.5,9</seg>", {"requested": "1.5,9", "start": 1.5, "end": 2.0, "clamped": True, "samples": 8000}),
    ("<seg>-1,0.25</seg>", {"requested": "-1,0.25", "start": 0.0, "end": 0.25, "clamped": True, "samples": 4000}),
    ("<seg>1.5,1.0</seg>", {"requested": "1.5,1.0", "error": "END must be a number after START"}),
    ("<seg>1,1</seg>", {"requested": "1,1", "error": "END must be a number after START"}),
    ("<seg>nan,1</seg>", {"requested": "nan,1", "error": "END must be a number after START"}),
    ("<seg>abc</seg>", {"requested": "abc", "error": "expected <seg>START,END</seg> in seconds"}),
    ("<seg>1.0;2.0</seg>", {"requested": "1.0;2.0", "error": "expected <seg>START,END</seg> in seconds"}),
    ("<seg>1,2 and then", {"requested": "<seg>1,2 and then", "error": "unclosed <seg> tag"}),
    ("<seg>5,6</seg>", {"requested": "5,6", "error": "the segment lies outside the clip (0 to 2.00 s)"}),
])
def test_openai_segment_edge_cases_are_answered_and_logged(tmp_path, no_key, tag, expect):
    data = make_items(tmp_path)
    src = source_clip(data)
    with FakeOpenAIServer(reply=scripted([f"Again: {tag}", "The answer is (B)."])) as srv:
        res = run_openai(srv, data, tmp_path / "runs", rounds=1)
        bodies = conversations(srv)
    assert len(bodies) == 2
    last = bodies[1]["messages"][-1]
    (rec,) = records(res)
    calls = rec["strategy"]["calls"]
    assert len(calls) == 2 and calls[1]["segment"] == expect and not calls[1]["final"]
    agg = rec["strategy"]["aggregate"]
    if "error" in expect:
        assert audio_of(last) == []  # told why, no audio
        assert text_in(last).startswith(f"Your segment request could not be used ({expect['error']}).")
        assert (agg["segments"], agg["segment_errors"]) == (0, 1)
    else:
        (seg,) = audio_of(last)
        i0 = int(expect["start"] * SR)
        assert len(seg) == expect["samples"] == int(round((expect["end"] - expect["start"]) * SR))
        assert np.abs(seg - src[i0:i0 + expect["samples"]]).max() <= PCM16_TOL
        assert text_in(last) == SEG_FEEDBACK.format(a=expect["start"], b=expect["end"])
        assert (agg["segments"], agg["segment_errors"], agg["clamped"]) == (1, 0, 1)
    assert rec["extracted"] == "B"


def test_openai_more_requests_than_rounds_end_with_the_final_ask(tmp_path, no_key):
    data = make_items(tmp_path)
    with FakeOpenAIServer(reply=scripted(["<seg>0,0.5</seg>"])) as srv:  # asks for ever
        res = run_openai(srv, data, tmp_path / "runs", rounds=2)
        bodies = conversations(srv)
    # turn 0 asks, turns 1 and 2 each get a segment and ask again, turn 3 is told to answer; nothing after it
    assert len(bodies) == 4
    roles = [m["role"] for m in bodies[3]["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert [len(a) for m in bodies[3]["messages"] for a in audio_of(m)] == [32000, 8000, 8000]
    assert text_in(bodies[3]["messages"][-1]).startswith("You cannot ask for more segments.")
    (rec,) = records(res)
    calls = rec["strategy"]["calls"]
    assert [c["final"] for c in calls] == [False, False, False, True]
    assert "segment" not in calls[3]
    assert rec["strategy"]["aggregate"] == {"turns": 4, "segments": 2, "segment_errors": 0, "clamped": 0,
                                            "final_ask": True}
    # the final reply still only asks: no answer in it, an extraction failure (never a guess)
    assert rec["output"] == "" and rec["extracted"] is None


def test_relisten_refuses_items_with_several_clips(tmp_path, no_key):
    data = make_items(tmp_path)
    items = json.loads(data.read_text())
    items.append({**items[0], "id": "none", "audio": None})
    data.write_text(json.dumps(items))
    with FakeOpenAIServer(reply=scripted(["(A)"])) as srv:
        with pytest.raises(RunConfigError, match=r"one clip: 1 items have 0 clips \(first: 'none'\)"):
            run_openai(srv, data, tmp_path / "runs", rounds=1)
        assert srv.count == 0


# ---------------------------------------------------------------------------------------- hf (Qwen2-Audio)
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_hf_audio import build_tiny_qwen2_audio  # noqa: E402

from evalkit.models.hf_audio import PRESETS, HFAudioLM  # noqa: E402


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen2_audio(tmp_path_factory.mktemp("relisten_qwen2_audio"))


def force_replies(model: HFAudioLM, monkeypatch, replies: list[str]):
    """The LM head says replies[i] (then <|im_end|>) in the i-th generate call, for every row. Returns (the
    list that counts the calls, the hook's handle, for the caller to remove)."""
    net, tok = model._model, model._processor.tokenizer
    scripts = [tok.encode(r, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
               for r in replies]
    calls, step = [], [0]
    real_generate = net.generate

    def generate(*a, **kw):
        calls.append(len(calls))
        step[0] = 0
        return real_generate(*a, **kw)

    def head(mod, args, out):
        ids = scripts[min(len(calls) - 1, len(scripts) - 1)]
        tid = ids[min(step[0], len(ids) - 1)]
        step[0] += 1
        out = out.clone()
        out[:, -1, :] = -1e4
        out[:, -1, tid] = 1e4
        return out

    monkeypatch.setattr(net, "generate", generate)
    return calls, net.lm_head.register_forward_hook(head)


def spy_processor(model: HFAudioLM, monkeypatch) -> list[dict]:
    """Every processor call of the adapter: the texts, the audio arrays, and what the processor returned."""
    proc = model._processor
    cls = type(proc)
    real = cls.__call__
    seen: list[dict] = []

    def call(self, *a, **kw):
        out = real(self, *a, **kw)
        if self is proc:
            seen.append({"text": list(kw["text"]), "audio": [np.asarray(x) for x in kw.get("audio", [])],
                         "out": {k: v.clone() for k, v in out.items()}})
        return out

    monkeypatch.setattr(cls, "__call__", call)
    return seen


def render_qwen2_audio(messages: list[dict]) -> str:
    """Evalkit's rendered messages (a record's `prompt`) through the Qwen2-Audio-7B-Instruct chat template's
    rules, written out here: a default system turn, "Audio i: <|audio_bos|><|AUDIO|><|audio_eos|>\\n" per
    audio part numbered across the whole conversation, text parts as they are, then the generation prompt."""
    out, n = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", 0
    for m in messages:
        out += f"<|im_start|>{m['role']}\n"
        for p in m["content"]:
            if p["type"] == "audio":
                n += 1
                out += f"Audio {n}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
            else:
                out += p["text"]
        out += "<|im_end|>\n"
    return out + "<|im_start|>assistant\n"


def test_hf_qwen2_audio_relisten_end_to_end(tmp_path, qwen_dir, monkeypatch):
    data = make_items(tmp_path)
    src = source_clip(data)
    args = {"preset": "qwen2-audio", "path": str(qwen_dir), "dtype": "float32", "device": "cpu"}
    holder = ModelHolder("hf", args)
    m = holder.model
    m._load()
    assert "multi_turn_audio" in m.capabilities
    seen = spy_processor(m, monkeypatch)
    gens, hook = force_replies(m, monkeypatch, ["<seg>1.0,2.0</seg>", "(A)"])
    try:
        res = run_task(RunSpec(model="hf", task="toy-mcq", model_args=args, task_args={"data": str(data)},
                               output=tmp_path / "runs", strategy="relisten", strategy_options={"rounds": 2}),
                       holder=holder)
    finally:
        hook.remove()
    assert len(gens) == 2 and len(seen) == 2
    (rec,) = records(res)
    calls = rec["strategy"]["calls"]
    assert [c["output"] for c in calls] == ["<seg>1.0,2.0</seg>", "(A)"]
    assert calls[1]["segment"]["samples"] == 16000
    assert rec["extracted"] == "A" and rec["strategy"]["aggregate"]["segments"] == 1
    # turn 1: one clip; turn 2: the clip, then the segment, in that order
    first, second = seen
    assert [len(x) for x in first["audio"]] == [32000]
    assert [len(x) for x in second["audio"]] == [32000, 16000]
    assert np.array_equal(second["audio"][0], src)
    assert np.array_equal(second["audio"][1], src[16000:32000])
    # the chat template rendered the whole conversation, both audio placeholders numbered across turns
    (text,) = second["text"]
    assert text == render_qwen2_audio(calls[1]["prompt"])
    assert text.count("<|AUDIO|>") == 2 and "Audio 2: <|audio_bos|>" in text
    assert "<|im_start|>assistant\n<seg>1.0,2.0</seg><|im_end|>\n<|im_start|>user\nAudio 2:" in text
    assert text.endswith(SEG_FEEDBACK.format(a=1.0, b=2.0) + "<|im_end|>\n<|im_start|>assistant\n")
    # two feature blocks: 200 and 100 frames (32000 and 16000 samples / hop 160)
    out = second["out"]
    assert out["input_features"].shape[0] == 2
    assert out["feature_attention_mask"].sum(-1).tolist() == [200, 100]
    tok = m._processor.tokenizer
    ids = out["input_ids"][0].tolist()
    assert ids.count(tok.convert_tokens_to_ids("<|audio_bos|>")) == 2
    # each block expands to ((frames - 1) // 2 + 1 - 2) // 2 + 1 audio tokens: 50 + 25
    assert ids.count(tok.convert_tokens_to_ids("<|AUDIO|>")) == 50 + 25


@pytest.mark.parametrize("how", ["hf -M preset", "registry name"])
def test_hf_preset_without_multi_turn_audio_refuses_relisten_before_loading(tmp_path, monkeypatch, how):
    assert not PRESETS["audio-flamingo-3"].multi_turn_audio
    data = make_items(tmp_path)

    def no_load(self):
        raise AssertionError("the model was loaded: relisten was not refused before any work")

    monkeypatch.setattr(HFAudioLM, "_load", no_load)
    model, args = (("hf", {"preset": "audio-flamingo-3", "path": str(tmp_path)}) if how == "hf -M preset"
                   else ("audio-flamingo-3", {"path": str(tmp_path)}))
    spec = RunSpec(model=model, task="toy-mcq", model_args=args, task_args={"data": str(data)},
                   output=tmp_path / "runs", strategy="relisten", strategy_options={"rounds": 1})
    with pytest.raises(RunConfigError, match="lacks the multi_turn_audio capability"):
        run_task(spec)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("samples.jsonl"))


# ---------------------------------------------------------------------------------------- vllm prompts
@pytest.mark.parametrize("family,placeholder", [
    ("qwen2_audio", "Audio {n}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"),
    ("qwen2_5_omni", "<|audio_bos|><|AUDIO|><|audio_eos|>\n"),
])
def test_vllm_prompt_keeps_the_conversation_and_both_clips(family, placeholder):
    """The vllm adapter's prompt for a relisten second turn (the contract suite's fake engine echoes only the
    audio it got, so the history is checked on the prompt text here)."""
    from evalkit.models.vllm_audio import build_prompt
    from evalkit.types import AudioRef, Request

    a, b = (AudioRef(array=np.zeros(n, np.float32), sample_rate=SR, label=f"c{n}") for n in (32000, 16000))
    req = Request("k", [
        {"role": "user", "content": [{"type": "audio", "audio": a}, {"type": "text", "text": "Which?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<seg>1.0,2.0</seg>"}]},
        {"role": "user", "content": [{"type": "audio", "audio": b}, {"type": "text", "text": "The segment."}]}])
    prompt, audios = build_prompt(req, family)
    assert audios == [a, b]
    tail = (f"<|im_start|>user\n{placeholder.format(n=1)}Which?<|im_end|>\n"
            "<|im_start|>assistant\n<seg>1.0,2.0</seg><|im_end|>\n"
            f"<|im_start|>user\n{placeholder.format(n=2)}The segment.<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.endswith(tail) and prompt.count("<|AUDIO|>") == 2
