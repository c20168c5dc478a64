"""A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol.

For tests and benchmarks of network adapters: injectable latency, a fault schedule
(429 with Retry-After, 5xx, 400), a reply function, and a thread-safe record of every
request body received (so tests can check that audio arrived as valid base64 WAV).

A reply function returns the assistant text (str), a whole reply body (dict, sent as given:
NaN becomes the bare `NaN` token Python's json writes, a lone surrogate a `\ud800` escape), or
`Raw(...)` bytes with any status and content type, optionally trickled one byte at a time (a
slow body). `strict_content=True` answers a text-only chat whose content is a list of parts with
HTTP 500, as llama.cpp's server does; `drop_list_content=True` silently drops every list content (its
text and audio), as llama.cpp's chatml template does: the reply and usage see empty messages.

The openai adapter's content probe (two requests whose text starts with PROBE_MARK) is answered at once,
outside the fault schedule, latency and reply function, and kept in `probes`, not `received`: arrival
indices, counts and bodies are those of the real requests.

    with FakeOpenAIServer(latency_s=0.2, faults=first_n(2, 429, retry_after="0")) as srv:
        adapter = OpenAICompatible(OpenAIConfig(base_url=srv.url, model="m"))
        ...
        assert srv.max_in_flight <= 8

One thread per connection (ThreadingHTTPServer, HTTP/1.1 keep-alive, deep accept
backlog), so many concurrent requests each sleeping `latency_s` overlap rather than
serialize.
"""
from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATHS = ("/v1/chat/completions", "/chat/completions")
EMBEDDING_PATHS = ("/v1/embeddings", "/embeddings")
EMBEDDING_DIM = 8


def fake_embedding(text: str) -> list[float]:
    """A deterministic vector per text (not normalised): what the fake embeddings endpoint returns."""
    import hashlib

    h = hashlib.sha256(text.encode()).digest()
    return [(b - 127.5) / 127.5 for b in h[:EMBEDDING_DIM]]


@dataclass
class Fault:
    status: int
    message: str = "injected fault"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Raw:
    """A reply sent byte for byte: `body` with `status` and `content_type`; with `byte_interval_s`, the
    headers go out at once and the body one byte every `byte_interval_s` seconds."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"
    byte_interval_s: float = 0.0


FaultSchedule = Callable[[int, dict], "Fault | None"]  # (arrival index from 0, body) -> fault or None
ReplyFn = Callable[[dict], "str | dict | Raw"]
#: what llama.cpp-style servers answer when a chat template meets list content (HTTP 500)
STRICT_CONTENT_ERROR = "can only concatenate str (not \"list\") to str"
#: how the openai adapter's content probe begins (models/openai_compat.PROBE_TEXT)
PROBE_MARK = "evalkit content probe"


# ---- fault schedules -------------------------------------------------------------------
def first_n(n: int, status: int = 429, retry_after: str | None = "0", message: str | None = None) -> FaultSchedule:
    """The first `n` requests fail with `status` (and a Retry-After header if given)."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}

    def schedule(i: int, body: dict) -> Fault | None:
        if i < n:
            return Fault(status, message or f"injected {status} (request {i})", dict(headers))
        return None

    return schedule


def always(status: int = 500, message: str | None = None, retry_after: str | None = None) -> FaultSchedule:
    return first_n(1 << 62, status, retry_after, message)


def fraction(f: float, status: int = 503) -> FaultSchedule:
    """A deterministic fraction `f` of requests (by arrival index) fail with `status`."""

    def schedule(i: int, body: dict) -> Fault | None:
        if int((i + 1) * f) > int(i * f):
            return Fault(status, f"injected {status} (request {i})")
        return None

    return schedule


# ---- replies ----------------------------------------------------------------------------
def audio_parts(body: dict) -> list[dict]:
    """The `input_audio` payloads of a chat-completions request body."""
    out = []
    for m in body.get("messages", []):
        content = m.get("content")
        if isinstance(content, list):
            out.extend(p["input_audio"] for p in content if p.get("type") == "input_audio")
    return out


def text_of(body: dict) -> str:
    out = []
    for m in body.get("messages", []):
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p.get("text", "") for p in content if p.get("type") == "text")
    return "\n".join(out)


def decode_input_audio(part: dict):
    """(float32 array, sample rate) of one input_audio payload; raises if not valid base64 WAV."""
    import soundfile as sf

    raw = base64.b64decode(part["data"], validate=True)
    x, sr = sf.read(io.BytesIO(raw), dtype="float32")
    return x, sr


def has_list_text_content(body: dict) -> bool:
    """True for a text-only chat (no input_audio / image part) in which some message's content is a list."""
    lists = [m.get("content") for m in body.get("messages", []) if isinstance(m.get("content"), list)]
    media = any(isinstance(p, dict) and p.get("type") not in ("text", None) for c in lists for p in c)
    return bool(lists) and not media


def reply_fixed(text: str = "The answer is (B).") -> ReplyFn:
    return lambda body: text


def reply_audio_aware(body: dict) -> str:
    """"A" when the request carries audio, "no audio" otherwise (catches dropped audio)."""
    return "A" if audio_parts(body) else "no audio"


REPLIES: dict[str, ReplyFn] = {"fixed": reply_fixed(), "audio_aware": reply_audio_aware}


@dataclass
class Received:
    index: int
    path: str
    headers: dict[str, str]
    body: dict
    status: int | None = None
    t_start: float = 0.0
    t_end: float | None = None
    query: str = ""  # the request URL's query string (adapters may send ?api-version=...)


class FakeOpenAIServer:
    def __init__(self, latency_s: float | Callable[[int, dict], float] = 0.0,
                 faults: FaultSchedule | None = None,
                 reply: ReplyFn | str = "fixed", model: str = "fake-model",
                 strict_content: bool = False, drop_list_content: bool = False) -> None:
        self.latency_s = latency_s
        self.strict_content = strict_content
        self.drop_list_content = drop_list_content
        self.probes: list[dict] = []
        self.faults = faults
        self.reply: ReplyFn = REPLIES[reply] if isinstance(reply, str) else reply
        self.model = model
        self._lock = threading.Lock()
        self.received: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        server = self

        class Handler(_Handler):
            fake = server

        httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL for the OpenAI client (ends in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # ---- inspection -------------------------------------------------------------------
    @property
    def bodies(self) -> list[dict]:
        with self._lock:
            return [r.body for r in self.received]

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
            self.max_in_flight = 0

    # ---- request handling (called from handler threads) -------------------------------
    def _begin(self, path: str, headers: dict[str, str], body: dict) -> Received:
        with self._lock:
            rec = Received(len(self.received), path, headers, body, t_start=time.perf_counter())
            self.received.append(rec)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return rec

    def _end(self, rec: Received, status: int) -> None:
        with self._lock:
            self.in_flight -= 1
            rec.status = status
            rec.t_end = time.perf_counter()

    def _completion(self, rec: Received) -> dict | Raw:
        text = "OK" if rec.index < 0 else self.reply(rec.body)  # index -1: a content probe
        if not isinstance(text, str):  # a whole body, of whatever shape the test wants
            return text
        prompt_tokens = max(1, len(text_of(rec.body).split()))
        completion_tokens = max(1, len(text.split()))
        return {
            "id": f"chatcmpl-fake-{rec.index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": rec.body.get("model", self.model),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


    def _embeddings(self, rec: Received) -> dict:
        texts = rec.body["input"]
        texts = [texts] if isinstance(texts, str) else texts
        if any(not t for t in texts):
            raise ValueError("'$.input' is invalid: empty strings are rejected, as by the OpenAI API")
        # items in reverse order: a client must place them by `index`, as the API documents
        data = [{"object": "embedding", "index": i, "embedding": fake_embedding(t)} for i, t in enumerate(texts)]
        n = sum(len(t.split()) for t in texts)
        return {"object": "list", "data": data[::-1], "model": rec.body.get("model", self.model),
                "usage": {"prompt_tokens": n, "total_tokens": n}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # a burst of new connections must not overflow the accept backlog


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # no Nagle: a small reply must not wait for the client's delayed ACK (~40 ms)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, payload: dict | Raw, headers: dict[str, str] | None = None) -> None:
        if isinstance(payload, Raw):
            if payload.byte_interval_s:
                self._trickle(payload, headers)
                return
            status, data, content_type = payload.status, payload.body, payload.content_type
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self._headers_buffer.append(b"\r\n")  # end_headers, but headers and body in one write
            self._headers_buffer.append(data)
            self.flush_headers()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            self.close_connection = True

    def _trickle(self, raw: Raw, headers: dict[str, str] | None) -> None:
        try:
            self.send_response(raw.status)
            self.send_header("Content-Type", raw.content_type)
            self.send_header("Content-Length", str(len(raw.body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            for i in range(len(raw.body)):
                time.sleep(raw.byte_interval_s)
                self.wfile.write(raw.body[i:i + 1])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):  # the client gave up: the point of the test
            self.close_connection = True

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [{"id": self.fake.model, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        if path not in PATHS + EMBEDDING_PATHS:
            self._send(404, {"error": {"message": f"no route {path}", "type": "not_found"}})
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        fake = self.fake
        is_probe = path in PATHS and PROBE_MARK in text_of(body)
        if fake.drop_list_content:
            body = {**body, "messages": [m if not isinstance(m.get("content"), list) else {**m, "content": ""}
                                         for m in body.get("messages", [])]}
        if is_probe:
            with fake._lock:
                fake.probes.append(body)
            probe = Received(-1, path, {}, body)
            self._send(200, fake._completion(probe))
            return
        rec = fake._begin(path, {k.lower(): v for k, v in self.headers.items()}, body)
        rec.query = self.path.partition("?")[2]
        headers: dict[str, str] = {}
        try:
            fault = fake.faults(rec.index, body) if fake.faults else None
            if fault is None and fake.strict_content and path in PATHS and has_list_text_content(body):
                fault = Fault(500, STRICT_CONTENT_ERROR)
            if fault is not None:
                status, headers = fault.status, fault.headers
                kind = "rate_limit_error" if status == 429 else (
                    "server_error" if status >= 500 else "invalid_request_error")
                payload = {"error": {"message": fault.message, "type": kind, "code": None}}
            else:
                latency = fake.latency_s(rec.index, body) if callable(fake.latency_s) else fake.latency_s
                if latency:
                    time.sleep(latency)
                status, payload = 200, (fake._embeddings(rec) if path in EMBEDDING_PATHS
                                        else fake._completion(rec))
        except Exception as e:  # a bug in a reply function shows up as a 500 with its message
            status = 500
            payload = {"error": {"message": f"fake server error: {type(e).__name__}: {e}",
                                 "type": "server_error"}}
        if isinstance(payload, Raw):
            status = payload.status
        # leave the in-flight count before replying, so a client that starts its next
        # request as soon as it reads this reply never sees a stale count
        fake._end(rec, status)
        self._send(status, payload, headers)


def main(argv: list[str] | None = None) -> None:
    """Serve from a separate process (benchmarks: keeps the server off the client's GIL).
    Prints the base URL on the first line of stdout, then serves until killed / stdin closes."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="fake OpenAI chat-completions server")
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--reply", choices=sorted(REPLIES), default="fixed")
    args = ap.parse_args(argv)
    with FakeOpenAIServer(latency_s=args.latency, reply=args.reply) as srv:
        print(srv.url, flush=True)
        try:
            sys.stdin.read()  # serve until the parent closes our stdin (or kills us)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
