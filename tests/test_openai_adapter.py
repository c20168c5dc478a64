"""The OpenAI-compatible adapter against a real local HTTP server (tests/fake_openai_server.py)."""
from __future__ import annotations

import email.utils
import json
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("openai")

from fake_openai_server import (  # noqa: E402
    PROBE_MARK,
    STRICT_CONTENT_ERROR,
    FakeOpenAIServer,
    Fault,
    Raw,
    always,
    audio_parts,
    decode_input_audio,
    first_n,
    text_of,
)

from evalkit.models.openai_compat import (  # noqa: E402
    BATCHES_PER_SLOT,
    OpenAICompatible,
    OpenAIConfig,
    clean_url,
    parse_retry_after,
)
from evalkit.types import AudioRef, GenerationConfig, Request  # noqa: E402

SECRET = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture
def fake_server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
def make_adapter(monkeypatch):
    monkeypatch.setenv("EVALKIT_TEST_OPENAI_KEY", SECRET)
    made = []

    def make(srv, **kw):
        kw.setdefault("model", "fake-audio-model")
        kw.setdefault("api_key_env", "EVALKIT_TEST_OPENAI_KEY")
        kw.setdefault("backoff_base_s", 0.001)
        kw.setdefault("backoff_max_s", 0.01)
        kw.setdefault("timeout_s", 10)
        m = OpenAICompatible(OpenAIConfig(base_url=srv.url, **kw))
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def tone(sr=8000, seconds=0.5, freq=440.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def audio_request(key="s1", sr=8000, gen=None, n_audio=1):
    parts = [{"type": "audio", "audio": AudioRef(array=tone(sr, freq=300 + 100 * i), sample_rate=sr,
                                                   label=f"clip{i}.wav")} for i in range(n_audio)]
    parts.append({"type": "text", "text": "Which sound is it? (A) dog (B) cat"})
    return Request(key, [{"role": "user", "content": parts}], gen or GenerationConfig())


def text_request(key="t1", text="What is 2+2?"):
    return Request(key, [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                         {"role": "user", "content": [{"type": "text", "text": text}]}])


# ---- payload ------------------------------------------------------------------------------
def test_text_and_audio_request_payload(fake_server, make_adapter):
    fake_server.reply = lambda body: "A" if audio_parts(body) else "no audio"
    m = make_adapter(fake_server)
    out = m.generate([audio_request("a1", sr=8000, n_audio=2), text_request("t1")])
    assert [r.key for r in out] == ["a1", "t1"]
    assert [r.text for r in out] == ["A", "no audio"]
    assert all(r.error is None for r in out)
    assert out[0].latency_s is not None and out[0].latency_s > 0
    assert out[0].extra["retries"] == 0 and out[0].extra["finish_reason"] == "stop"
    assert out[0].extra["usage"]["total_tokens"] >= 2

    by_text = {("audio" if audio_parts(b) else "text"): b for b in fake_server.bodies}
    body = by_text["audio"]
    assert body["model"] == "fake-audio-model"
    content = body["messages"][0]["content"]
    assert [p["type"] for p in content] == ["input_audio", "input_audio", "text"]
    assert content[2] == {"type": "text", "text": "Which sound is it? (A) dog (B) cat"}
    for p in audio_parts(body):
        assert p["format"] == "wav"
        x, sr = decode_input_audio(p)  # valid base64 (validate=True) of a readable WAV
        assert sr == 16000  # resampled from 8 kHz to the adapter's rate
        assert abs(len(x) - 8000) <= 2  # 0.5 s at 16 kHz
        assert np.abs(x).max() > 0.3

    tbody = by_text["text"]
    assert tbody["messages"][0] == {"role": "system", "content": "Be brief."}
    assert tbody["messages"][1]["content"] == "What is 2+2?"  # text-only: a plain string (content_format=auto)
    # the key went in the Authorization header, nowhere else
    auth = [r.headers.get("authorization") for r in fake_server.received]
    assert auth == [f"Bearer {SECRET}"] * 2


def test_generation_settings_forwarded(fake_server, make_adapter):
    m = make_adapter(fake_server, extra_body={"reasoning_effort": "low"})
    gen = GenerationConfig(max_new_tokens=33, temperature=0.7, top_p=0.9, seed=1234)
    (r,) = m.generate([audio_request(gen=gen)])
    assert r.text == "The answer is (B)." and r.error is None
    body = fake_server.bodies[0]
    assert body["max_tokens"] == 33
    assert body["temperature"] == 0.7
    assert body["top_p"] == 0.9
    assert body["seed"] == 1234
    assert body["reasoning_effort"] == "low"

    fake_server.reset()
    m2 = make_adapter(fake_server, max_tokens_param="max_completion_tokens")
    m2.generate([Request("x", text_request().messages, GenerationConfig(seed=None, max_new_tokens=7))])
    body = fake_server.bodies[0]
    assert body["max_completion_tokens"] == 7 and "max_tokens" not in body and "seed" not in body


def test_keys_and_order_preserved_across_batches(fake_server, make_adapter):
    fake_server.latency_s = lambda i, body: 0.002 * (i % 5)  # replies arrive out of order
    fake_server.reply = lambda body: body["messages"][-1]["content"]
    m = make_adapter(fake_server, concurrency=8)
    for batch in range(2):  # the client and its loop are reused across batches
        reqs = [text_request(f"k{batch}-{i}", text=f"echo {batch}-{i}") for i in range(20)]
        out = m.generate(reqs)
        assert [r.key for r in out] == [r.key for r in reqs]
        assert [r.text for r in out] == [f"echo {batch}-{i}" for i in range(20)]
    assert m.generate([]) == []


# ---- concurrency -----------------------------------------------------------------------------
@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrency_limit_respected(make_adapter, concurrency):
    with FakeOpenAIServer(latency_s=0.05) as srv:
        m = make_adapter(srv, concurrency=concurrency)
        assert m.preferred_batch_size == BATCHES_PER_SLOT * concurrency
        out = m.generate([text_request(f"k{i}") for i in range(12)])
        assert all(r.error is None for r in out)
        assert srv.count == 12
        assert srv.max_in_flight <= concurrency
        assert srv.max_in_flight == concurrency  # and actually used


def test_concurrent_requests_overlap(make_adapter):
    with FakeOpenAIServer(latency_s=0.3) as srv:
        m = make_adapter(srv, concurrency=32)
        m.generate([text_request("warm")])
        t0 = time.perf_counter()
        out = m.generate([text_request(f"k{i}") for i in range(32)])
        elapsed = time.perf_counter() - t0
        assert all(r.error is None for r in out)
        assert srv.max_in_flight == 32
        assert elapsed < 0.3 * 4, f"32 concurrent 0.3 s requests took {elapsed:.2f} s"


def test_async_form(fake_server, make_adapter):
    import asyncio

    m = make_adapter(fake_server)
    out = asyncio.run(m.agenerate([text_request("a"), text_request("b")]))
    assert [r.key for r in out] == ["a", "b"] and all(r.text for r in out)


# ---- retries -------------------------------------------------------------------------------
def test_429_with_retry_after_is_retried(make_adapter):
    with FakeOpenAIServer(faults=first_n(2, 429, retry_after="0")) as srv:
        m = make_adapter(srv, max_retries=3, backoff_base_s=5, backoff_max_s=5)  # Retry-After: 0 wins
        t0 = time.perf_counter()
        (r,) = m.generate([text_request()])
        assert time.perf_counter() - t0 < 2
        assert r.error is None and r.text == "The answer is (B)."
        assert r.extra["retries"] == 2
        assert [x.status for x in srv.received] == [429, 429, 200]


def test_retry_after_seconds_is_honoured(make_adapter):
    with FakeOpenAIServer(faults=first_n(1, 429, retry_after="1")) as srv:
        m = make_adapter(srv, max_retries=2, backoff_base_s=0.001, backoff_max_s=5)
        t0 = time.perf_counter()
        (r,) = m.generate([text_request()])
        assert r.error is None
        assert time.perf_counter() - t0 >= 0.95


def test_retry_after_capped_by_backoff_max(make_adapter):
    with FakeOpenAIServer(faults=first_n(1, 429, retry_after="30")) as srv:
        m = make_adapter(srv, max_retries=2, backoff_max_s=0.05)
        t0 = time.perf_counter()
        (r,) = m.generate([text_request()])
        assert r.error is None and time.perf_counter() - t0 < 2


def test_parse_retry_after():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    now = time.time()
    date = email.utils.formatdate(now + 10, usegmt=True)
    assert 8 <= parse_retry_after({"retry-after": date}, now=now) <= 11
    past = email.utils.formatdate(now - 100, usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=now) == 0.0


@pytest.mark.parametrize("status", [502, 503, 504])
def test_persistent_transient_5xx_becomes_error_after_max_retries(make_adapter, status):
    # gateways and overloaded servers repeat one body while transient: retried up to max_retries
    with FakeOpenAIServer(faults=always(status, message="backend exploded")) as srv:
        m = make_adapter(srv, max_retries=3)
        out = m.generate([text_request("a"), text_request("b")])
        for r in out:
            assert r.text is None
            assert r.error.startswith(f"HTTP {status} after 3 retries: ")
            assert "backend exploded" in r.error
            assert r.extra["retries"] == 3 and "fatal" not in r.extra
        assert srv.count == 2 * 4


@pytest.mark.parametrize("status", [500, 501])
def test_5xx_with_the_same_body_is_not_retried_forever(make_adapter, status):
    with FakeOpenAIServer(faults=always(status, message="template error")) as srv:
        m = make_adapter(srv, max_retries=6)
        (r,) = m.generate([text_request()])
        assert srv.count == 2  # the second identical body settles it
        assert r.error.startswith(f"HTTP {status}, the same reply 2 times in a row (not retried further): ")
        assert "template error" in r.error and r.extra["retries"] == 1
    with FakeOpenAIServer(faults=always(status, message="template error")) as srv:
        m = make_adapter(srv, max_retries=6, max_identical_errors=3)
        m.generate([text_request()])
        assert srv.count == 3


def test_5xx_with_changing_bodies_is_retried(make_adapter):
    # first_n numbers its messages ("request 0", "request 1"...): never the same body twice
    with FakeOpenAIServer(faults=first_n(4, 500, retry_after=None)) as srv:
        m = make_adapter(srv, max_retries=6)
        (r,) = m.generate([text_request()])
        assert r.error is None and r.extra["retries"] == 4 and srv.count == 5


def test_persistent_429_error_message(make_adapter):
    with FakeOpenAIServer(faults=always(429, retry_after="0")) as srv:
        m = make_adapter(srv, max_retries=2)
        (r,) = m.generate([text_request()])
        assert r.error.startswith("HTTP 429 after 2 retries: ")
        assert srv.count == 3


def test_400_not_retried(make_adapter):
    with FakeOpenAIServer(faults=always(400, message="bad audio format")) as srv:
        m = make_adapter(srv, max_retries=5)
        (r,) = m.generate([audio_request()])
        assert r.error == "HTTP 400: bad audio format"
        assert srv.count == 1


def test_attempt_timeout_is_retried(make_adapter):
    with FakeOpenAIServer(latency_s=lambda i, body: 2.0 if i == 0 else 0.0) as srv:
        m = make_adapter(srv, attempt_timeout_s=0.3, timeout_s=10, max_retries=2)
        (r,) = m.generate([text_request()])
        assert r.error is None and r.extra["retries"] == 1


def test_attempt_timeouts_exhausted(make_adapter):
    with FakeOpenAIServer(latency_s=1.0) as srv:
        m = make_adapter(srv, attempt_timeout_s=0.1, timeout_s=10, max_retries=1)
        (r,) = m.generate([text_request()])
        assert r.error.startswith("timeout after 1 retries: no complete reply within attempt_timeout_s=0.1 s")


def test_timeout_s_is_a_total_deadline(make_adapter):
    with FakeOpenAIServer(latency_s=1.0) as srv:
        m = make_adapter(srv, timeout_s=0.3, max_retries=5)
        t0 = time.perf_counter()
        (r,) = m.generate([text_request()])
        assert time.perf_counter() - t0 < 0.9
        assert r.error.startswith("timeout: no complete reply within timeout_s=0.3 s (the total for the request")


def test_connection_error_becomes_error_response(make_adapter):
    srv = FakeOpenAIServer().start()
    m, url = make_adapter(srv, max_retries=1), srv.url
    srv.stop()  # nothing listens on that port any more
    (r,) = m.generate([text_request()])
    assert r.error.startswith("connection error after 1 retries")
    assert r.extra["fatal"].startswith(f"cannot connect to {url}: ConnectError")


def test_one_failure_does_not_fail_the_batch(make_adapter):
    def faults(i, body):
        return Fault(400, "nope") if "poison" in json.dumps(body) else None

    with FakeOpenAIServer(faults=faults) as srv:
        m = make_adapter(srv)
        out = m.generate([text_request("ok1"), text_request("bad", text="poison"), text_request("ok2")])
        assert [r.error is None for r in out] == [True, False, True]


def test_undecodable_audio_is_a_per_request_error(fake_server, make_adapter, tmp_path):
    m = make_adapter(fake_server)
    bad = Request("bad", [{"role": "user", "content": [
        {"type": "audio", "audio": AudioRef(path=tmp_path / "missing.wav")},
        {"type": "text", "text": "q"}]}])
    out = m.generate([bad, text_request("ok")])
    assert "missing.wav" in out[0].error and out[1].error is None
    assert fake_server.count == 1


# ---- secrets ----------------------------------------------------------------------------------
def test_api_key_never_leaks(make_adapter):
    def faults(i, body):  # a hostile server echoing the key back in its error
        return Fault(401, f"Incorrect API key provided: {SECRET}") if i == 0 else Fault(503, f"Bearer {SECRET}")

    with FakeOpenAIServer(faults=faults) as srv:
        m = make_adapter(srv, max_retries=1)
        out = m.generate([text_request("a")]) + m.generate([text_request("b")])
        blob = json.dumps([r.__dict__ for r in out], default=str) + json.dumps(m.info()) + repr(m.config)
        assert out[0].error.startswith("HTTP 401") and out[1].error.startswith("HTTP 503")
        assert SECRET not in blob
        assert "SECRET" not in blob


def test_missing_key_for_remote_endpoint_is_clear(monkeypatch):
    monkeypatch.delenv("EVALKIT_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="EVALKIT_NO_SUCH_KEY"):
        OpenAICompatible(OpenAIConfig(base_url="https://api.example.com/v1", model="m",
                                      api_key_env="EVALKIT_NO_SUCH_KEY"))


def test_local_endpoint_needs_no_key(fake_server, monkeypatch):
    monkeypatch.delenv("EVALKIT_NO_SUCH_KEY", raising=False)
    m = OpenAICompatible(OpenAIConfig(base_url=fake_server.url, model="m", api_key_env="EVALKIT_NO_SUCH_KEY"))
    try:
        (r,) = m.generate([text_request()])
        assert r.error is None
    finally:
        m.close()


def test_info_strips_credentials_and_query():
    assert clean_url("https://user:pw@host.example:8443/v1?api-key=abc#x") == "https://host.example:8443/v1"
    assert clean_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


def test_info(fake_server, make_adapter):
    m = make_adapter(fake_server)
    info = m.info()
    assert info["base_url"] == fake_server.url and info["model"] == "fake-audio-model"
    assert info["text_only"] is False
    m2 = make_adapter(fake_server, audio=False)
    assert m2.info()["text_only"] is True


def test_config_typos_fail():
    with pytest.raises(Exception, match="concurency"):
        OpenAIConfig(model="m", concurency=4)


def test_base_url_default_from_env(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert OpenAIConfig(model="m").base_url == "http://127.0.0.1:9/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAIConfig(model="m").base_url == "https://api.openai.com/v1"


# ---- text-only mode -------------------------------------------------------------------------------
def test_text_only_mode_refuses_audio(fake_server, make_adapter):
    m = make_adapter(fake_server, audio=False)
    assert m.capabilities == frozenset({"text"})
    assert "audio" in OpenAICompatible.capabilities  # the class default is untouched
    out = m.generate([audio_request("a"), text_request("t")])
    assert "text-only" in out[0].error and out[0].text is None
    assert out[1].error is None
    assert fake_server.count == 1 and not audio_parts(fake_server.bodies[0])


# ---- lazy import -------------------------------------------------------------------------------
def test_module_import_does_not_import_openai():
    code = ("import sys, evalkit.models.openai_compat as m; "
            "assert m.OpenAICompatible.name == 'openai'; "
            "bad = [x for x in ('openai', 'httpx', 'httpx2') if x in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry_resolves():
    from evalkit import registry

    assert registry.get_model("openai") is OpenAICompatible


# ---- content format (llama.cpp-style servers refuse list content in text-only chats) ---------------
def test_strict_server_refuses_list_content_as_llama_cpp_does(make_adapter):
    with FakeOpenAIServer(strict_content=True) as srv:
        parts = make_adapter(srv, content_format="parts", max_retries=6)
        (r,) = parts.generate([text_request()])
        assert r.error.startswith("HTTP 500, the same reply 2 times in a row") and STRICT_CONTENT_ERROR in r.error
        assert srv.count == 2  # not six retries per sample
        srv.reset()
        auto = make_adapter(srv)  # the default
        out = auto.generate([text_request("t"), audio_request("a")])
        assert [r.error for r in out] == [None, None]
        bodies = {("audio" if audio_parts(b) else "text"): b for b in srv.bodies}
        assert [m["content"] for m in bodies["text"]["messages"]] == ["Be brief.", "What is 2+2?"]
        assert isinstance(bodies["audio"]["messages"][0]["content"], list)  # parts only with audio


def test_content_format_string_and_parts(fake_server, make_adapter):
    two_parts = Request("two", [{"role": "user", "content": [{"type": "text", "text": "line 1"},
                                                              {"type": "text", "text": "line 2"}]}])
    m = make_adapter(fake_server, content_format="string")
    out = m.generate([two_parts, audio_request("a")])
    assert out[0].error is None
    assert "content_format=string cannot carry an audio part" in out[1].error
    assert fake_server.count == 1 and fake_server.bodies[0]["messages"][0]["content"] == "line 1\nline 2"
    fake_server.reset()
    m = make_adapter(fake_server, content_format="parts")
    m.generate([text_request()])
    assert [m["content"] for m in fake_server.bodies[0]["messages"]] == [
        [{"type": "text", "text": "Be brief."}], [{"type": "text", "text": "What is 2+2?"}]]
    with pytest.raises(Exception, match="content_format"):
        OpenAIConfig(model="m", content_format="list")


# ---- replies of any shape -------------------------------------------------------------------
def _reply(message=None, **choice):
    return {"choices": [{"index": 0, "finish_reason": "stop", "message": message, **choice}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


SHAPES = [  # (reply the server sends, text expected, or None and a fragment of the error)
    ("content list of parts", _reply({"role": "assistant", "content": [
        {"type": "text", "text": "The answer "}, {"type": "audio", "audio": {}}, {"type": "text", "text": "is (B)."}]}),
     "The answer is (B).", None),
    ("content list of strings", _reply({"content": ["(", "A", ")"]}), "(A)", None),
    ("content a text object", _reply({"content": {"type": "text", "text": "B"}}), "B", None),
    ("message a string", _reply("A"), "A", None),
    ("legacy text", {"choices": [{"text": "(C)", "finish_reason": "stop"}]}, "(C)", None),
    ("content null", _reply({"role": "assistant", "content": None}), "", None),
    ("content a number", _reply({"content": 3}), None, "message.content is a number (3), not text"),
    ("content a boolean", _reply({"content": True}), None, "message.content is a boolean (true), not text"),
    ("content an object without text", _reply({"content": {"answer": "B"}}), None,
     'message.content is an object without text: {"answer": "B"}'),
    ("content parts without text", _reply({"content": [{"type": "audio"}]}), None,
     "message.content has no text part (parts: audio)"),
    ("message a number", _reply(7), None, "choices[0].message is a number (7)"),
    ("no choices", {"usage": {}}, None, "reply has no choices"),
    ("empty choices with error", {"choices": [], "error": {"message": "model overloaded"}}, None,
     "reply has no choices: model overloaded"),
    ("choices an object", {"choices": {"0": {}}}, None, "reply has choices that are an object"),
    ("choices[0] a string", {"choices": ["A"]}, None, "reply has choices[0] that is a string"),
    ("body a list", [1, 2], None, "reply is a list, not a JSON object: [1, 2]"),
    ("body a string", Raw(b'"A"'), None, 'reply is a string, not a JSON object: "A"'),
    ("body html", Raw(b"<html>502 Bad Gateway</html>", content_type="text/html"), None,
     "reply is a string, not a JSON object: \"<html>502 Bad Gateway</html>\""),
    ("body not JSON", Raw(b"{not json"), None, "reply could not be read: JSONDecodeError"),
    ("body not UTF-8", Raw(b'{"choices": "\xff\xfe"}'), None, "reply could not be read: UnicodeDecodeError"),
    ("body empty", Raw(b""), None, "reply could not be read: JSONDecodeError"),
]


@pytest.mark.parametrize("reply,text,error", [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_replies_of_any_shape(make_adapter, reply, text, error):
    with FakeOpenAIServer(reply=lambda body: reply) as srv:
        m = make_adapter(srv, max_retries=3)
        (r,) = m.generate([text_request()])
        json.dumps(r.__dict__, allow_nan=False).encode("utf-8")  # the record can always be written
        if error is None:
            assert (r.text, r.error) == (text, None)
        else:
            assert r.text is None and error in r.error, r.error
            assert srv.count == 1  # a malformed reply is not retried
        assert "fatal" not in r.extra


def test_non_finite_usage_is_dropped(make_adapter):
    reply = _reply({"content": "A"}, )
    reply["usage"] = {"prompt_tokens": 5, "completion_tokens": float("nan"), "total_tokens": float("inf"),
                      "cost": -float("inf"), "flag": True, "details": {"x": 1}}
    with FakeOpenAIServer(reply=lambda body: reply) as srv:
        (r,) = make_adapter(srv).generate([text_request()])
        assert b"NaN" in json.dumps(reply).encode()  # the server really sent the bare tokens
        assert r.text == "A" and r.extra["usage"] == {"prompt_tokens": 5}
        assert r.extra["usage_dropped"] == ["completion_tokens", "cost", "total_tokens"]
        json.dumps(r.extra, allow_nan=False)


def test_lone_surrogates_are_replaced_and_recorded(make_adapter):
    # a lone high surrogate, a lone low one, and a valid pair (an emoji, which must survive)
    body = b'{"choices": [{"message": {"content": "A\\ud800 B\\udfff \\ud83d\\ude00", "refusal": "\\udc00"}}]}'
    with FakeOpenAIServer(reply=lambda b: Raw(body)) as srv:
        (r,) = make_adapter(srv).generate([text_request()])
        assert r.text == "A\ufffd B\ufffd \U0001F600" and r.extra["text_repaired"] == "surrogates"
        assert r.extra["refusal"] == "\ufffd"
        r.text.encode("utf-8")
    with FakeOpenAIServer(reply=lambda b: "clean") as srv:
        (r,) = make_adapter(srv).generate([text_request()])
        assert "text_repaired" not in r.extra


def test_lone_surrogate_in_an_error_body(make_adapter):
    with FakeOpenAIServer(faults=always(400, message="bad \ud800 input")) as srv:
        (r,) = make_adapter(srv).generate([text_request()])
        assert r.error == "HTTP 400: bad \ufffd input"


# ---- deterministic 4xx: not retried; those that fail every request are fatal for the run ----------
@pytest.mark.parametrize("status,fatal", [(400, False), (401, True), (403, True), (404, True), (422, False)])
def test_deterministic_4xx_not_retried(make_adapter, status, fatal):
    with FakeOpenAIServer(faults=always(status, message="invalid api key" if fatal else "bad input")) as srv:
        m = make_adapter(srv, max_retries=6)
        (r,) = m.generate([text_request()])
        assert srv.count == 1
        assert r.error.startswith(f"HTTP {status}: ")
        if fatal:
            assert r.extra["fatal"] == f"HTTP {status} from {srv.url}: invalid api key"
        else:
            assert "fatal" not in r.extra


@pytest.mark.parametrize("status", [408, 409, 429])
def test_transient_4xx_retried(make_adapter, status):
    with FakeOpenAIServer(faults=first_n(2, status, retry_after="0")) as srv:
        (r,) = make_adapter(srv, max_retries=6).generate([text_request()])
        assert r.error is None and srv.count == 3


def test_unreachable_server_answers_the_rest_of_the_batch_at_once(make_adapter):
    srv = FakeOpenAIServer().start()
    m, url = make_adapter(srv, max_retries=2, concurrency=1), srv.url
    srv.stop()
    t0 = time.perf_counter()
    out = m.generate([text_request(f"k{i}") for i in range(20)])
    assert time.perf_counter() - t0 < 2
    assert out[0].error.startswith("connection error after 2 retries")
    assert all(r.extra["fatal"].startswith(f"cannot connect to {url}") for r in out)
    assert [r.extra.get("not_sent", False) for r in out] == [False] + [True] * 19
    assert out[1].error.startswith("not sent: cannot connect to")
    with FakeOpenAIServer() as srv2:  # a later batch probes again (here: another server, same adapter)
        m2 = make_adapter(srv2, concurrency=1)
        assert all(r.error is None for r in m2.generate([text_request("a"), text_request("b")]))


# ---- the total deadline ---------------------------------------------------------------------
def test_trickling_body_is_cut_at_timeout_s(make_adapter):
    body = json.dumps(_reply({"content": "A"})).encode()
    with FakeOpenAIServer(reply=lambda b: Raw(body, byte_interval_s=0.25)) as srv:
        m = make_adapter(srv, timeout_s=1.0, max_retries=6)  # the SDK's read timeout (per byte) never trips
        t0 = time.perf_counter()
        (r,) = m.generate([text_request()])
        elapsed = time.perf_counter() - t0
        assert 0.9 < elapsed < 2.0, elapsed
        assert r.error.startswith("timeout: no complete reply within timeout_s=1 s")


def test_trickling_attempt_is_cut_at_attempt_timeout_s_and_retried(make_adapter):
    body = json.dumps(_reply({"content": "A"})).encode()
    with FakeOpenAIServer(reply=lambda b: Raw(body, byte_interval_s=0.1)) as srv:
        m = make_adapter(srv, attempt_timeout_s=0.4, timeout_s=10, max_retries=1)
        t0 = time.perf_counter()
        (r,) = m.generate([text_request()])
        assert time.perf_counter() - t0 < 2.0
        assert r.error.startswith("timeout after 1 retries: no complete reply within attempt_timeout_s=0.4 s")
        assert srv.count == 2


def test_base_url_query_is_sent_with_every_request(make_adapter, fake_server):
    m = OpenAICompatible(OpenAIConfig(base_url=fake_server.url + "?api-version=2024-06-01", model="m"))
    try:
        (r,) = m.generate([text_request()])
    finally:
        m.close()
    assert r.error is None and fake_server.received[0].path == "/v1/chat/completions"
    assert fake_server.received[0].query == "api-version=2024-06-01"


def test_deadline_covers_retries_and_backoff(make_adapter):
    with FakeOpenAIServer(faults=always(503, retry_after="0.3")) as srv:
        m = make_adapter(srv, timeout_s=1.0, max_retries=100, backoff_max_s=5)
        t0 = time.perf_counter()
        (r,) = m.generate([text_request()])
        assert time.perf_counter() - t0 < 1.5
        assert r.error.startswith("HTTP 503 after ") and "(the next retry would pass timeout_s)" in r.error
        assert 2 <= srv.count <= 5


# ---- streaming responses as they complete -------------------------------------------------------
def test_generate_stream_yields_in_completion_order(make_adapter):
    with FakeOpenAIServer(latency_s=lambda i, body: 0.6 if "slow" in text_of(body) else 0.0,
                          reply=lambda body: text_of(body).split()[-1]) as srv:
        m = make_adapter(srv, concurrency=4)
        t0 = time.perf_counter()
        stream = m.generate_stream([text_request("slow", "slow"), text_request("fast", "fast")])
        first = next(stream)
        assert first.key == "fast" and first.text == "fast" and time.perf_counter() - t0 < 0.5
        rest = list(stream)
        assert [r.key for r in rest] == ["slow"] and rest[0].text == "slow"


def test_generate_stream_closed_early_cancels_the_rest(make_adapter):
    with FakeOpenAIServer(latency_s=lambda i, body: 0.0 if "fast" in text_of(body) else 0.5) as srv:
        m = make_adapter(srv, concurrency=1)
        stream = m.generate_stream([text_request("fast", "fast")] + [text_request(f"s{i}") for i in range(6)])
        assert next(stream).key == "fast"
        stream.close()
        time.sleep(0.8)
        assert srv.count <= 3  # not all six slow requests were sent
        assert m.generate([text_request("after")])[0].error is None  # the adapter is still usable


# ---- with the runner: a run whose every request is refused stops, naming the cause ----------------
@pytest.mark.parametrize("mode", ["401", "nothing listening"])
def test_run_against_a_refusing_server_stops_with_the_cause(toy, tmp_path, mode):
    from evalkit.engine.runner import RunSpec, run_task

    srv = FakeOpenAIServer(faults=always(401, message="invalid api key")).start()
    url = srv.url
    if mode != "401":
        srv.stop()
    try:
        t0 = time.perf_counter()
        with pytest.raises(Exception, match="HTTP 401 from .*: invalid api key" if mode == "401"
                           else "cannot connect to http://127.0.0.1"):
            run_task(RunSpec(model="openai", task="toy-mcq", task_args={"data": str(toy / "toy.json")},
                             model_args={"base_url": url, "model": "m", "backoff_base_s": 0.001, "max_retries": 2},
                             output=tmp_path / "runs"))
        assert time.perf_counter() - t0 < 10
        if mode == "401":
            # each sent once (401 is not retried), and at most the 8 in flight (concurrency 8) plus the slots
            # freed by the 3 fatal replies the runner reads before it stops
            texts = [text_of(b) for b in srv.bodies]
            assert len(texts) == len(set(texts)) and srv.count <= 8 + 3
    finally:
        srv.stop()


# ---- the content probe: a server that does not read the content stops the run before any record ------
def test_probe_stops_a_server_that_drops_list_content(make_adapter):
    """llama.cpp's chatml template drops list content silently: every answer would come from an empty
    prompt. The probe sees the same prompt_tokens for a 7- and a 71-word message and every response is
    fatal; no real request is sent."""
    with FakeOpenAIServer(drop_list_content=True) as srv:
        m = make_adapter(srv)
        out = m.generate([audio_request("a1"), audio_request("a2")])
        assert srv.count == 0 and len(srv.probes) == 2
        assert all(r.text is None and r.extra["fatal"] == r.error for r in out)
        assert "reported the same prompt_tokens" in out[0].error and "parts with audio" in out[0].error
        assert m.info()["content_probe"]["parts with audio"]["result"] == "ignored"
        # streaming answers the same, without another probe
        assert all("fatal" in r.extra for r in m.generate_stream([audio_request("a3")]))
        assert len(srv.probes) == 2 and srv.count == 0


def test_probe_sends_the_runs_content_form_once(make_adapter):
    with FakeOpenAIServer() as srv:
        m = make_adapter(srv)
        assert all(r.error is None for r in m.generate([audio_request("a1")]))
        assert all(r.error is None for r in m.generate([audio_request("a2")]))
        assert srv.count == 2 and len(srv.probes) == 2  # once per adapter, not per batch
        short, long = srv.probes
        assert text_of(short).startswith(PROBE_MARK)  # the fake tells probes apart by the adapter's own text
        assert [p["type"] for p in short["messages"][0]["content"]] == ["input_audio", "text"]
        assert short["max_tokens"] == 1 and short["temperature"] == 0.0
        assert len(text_of(long).split()) - len(text_of(short).split()) == 64
        probe = m.info()["content_probe"]["parts with audio"]
        assert probe["result"] == "read" and list(m.info()["content_probe"]) == ["parts with audio"]
        assert probe["prompt_tokens"] == [len(text_of(short).split()), len(text_of(long).split())]


def test_probe_text_only_uses_a_string_and_can_be_turned_off(make_adapter):
    with FakeOpenAIServer() as srv:
        m = make_adapter(srv)
        m.generate([text_request()])
        assert isinstance(srv.probes[0]["messages"][0]["content"], str)
        assert list(m.info()["content_probe"]) == ["string"]
    with FakeOpenAIServer(drop_list_content=True) as srv:
        m = make_adapter(srv, content_probe=False)
        out = m.generate([audio_request("a1")])
        assert srv.probes == [] and srv.count == 1 and out[0].error is None  # the user's choice: not checked
        assert "content_probe" not in m.info()


def test_probe_without_usage_or_failing_decides_nothing(make_adapter):
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "B"}}]}  # no usage
    with FakeOpenAIServer(reply=lambda b: body) as srv:
        m = make_adapter(srv)
        # the fake answers probes itself (with usage): make its probe replies usage-less too
        srv._completion = lambda rec: body
        out = m.generate([audio_request("a1")])
        assert out[0].text == "B" and srv.count == 1
        assert m.info()["content_probe"] == {"parts with audio": {
            "result": "undecided", "why": "the server reports no usage.prompt_tokens"}}


def test_probe_runs_again_for_a_form_not_yet_probed(make_adapter):
    """A server that reads strings but drops list content: a batch of text-only requests (strings) is read;
    when later requests carry audio (parts), that form is probed too and found ignored, so those responses are
    fatal and none is sent. Probing only the first form would have let every audio answer come from an empty
    prompt with exit 0."""
    with FakeOpenAIServer(drop_list_content=True) as srv:
        m = make_adapter(srv)
        assert all(r.error is None for r in m.generate([text_request()]))
        assert len(srv.probes) == 2 and srv.count == 1
        assert isinstance(srv.probes[0]["messages"][0]["content"], str)
        out = m.generate([text_request(), audio_request("a1")])
        assert len(srv.probes) == 4 and srv.count == 1  # the new form probed; nothing more sent
        assert all(r.extra.get("fatal") for r in out) and "sent as parts with audio" in out[1].error
        probes = m.info()["content_probe"]
        assert list(probes) == ["string", "parts with audio"]
        assert probes["string"]["result"] == "read" and probes["parts with audio"]["result"] == "ignored"
        m.generate([audio_request("a2")])
        assert len(srv.probes) == 4  # each form once per adapter


def test_content_probe_is_not_part_of_the_run_id():
    from evalkit.engine.runner import ModelHolder

    on = ModelHolder("openai", {"base_url": "http://127.0.0.1:9/v1", "model": "m"}).identity()
    off = ModelHolder("openai", {"base_url": "http://127.0.0.1:9/v1", "model": "m", "content_probe": False}).identity()
    assert on == off and "content_probe" not in on["args"]


def test_run_against_a_content_dropping_server_stops_before_any_record(toy, tmp_path):
    """With the runner: the fatal probe stops the run (resumable, nothing recorded), naming the cause."""
    from evalkit.engine.runner import RunSpec, run_task

    with FakeOpenAIServer(drop_list_content=True) as srv:
        spec = RunSpec(model="openai", task="toy-mcq", task_args={"data": str(toy / "toy.json")},
                       model_args={"base_url": srv.url, "model": "m", "content_format": "parts"},
                       output=tmp_path / "runs")
        with pytest.raises(Exception, match="reported the same prompt_tokens"):
            run_task(spec)
        assert srv.count == 0
    records = [line for f in (tmp_path / "runs").rglob("samples.jsonl") for line in f.read_text().splitlines()]
    assert records == []
