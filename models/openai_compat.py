"""Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM serve, SGLang, llama.cpp, ...).

    evalkit run --model openai -M model=gpt-4o-audio-preview --task mmau
    evalkit run --model openai -M base_url=http://127.0.0.1:8000/v1 -M model=Qwen2-Audio --task mmau

Content: audio parts are sent as `input_audio` content parts (base64 16-bit PCM WAV at 16 kHz).
`-M content_format=auto` (default) sends a message's content as a plain string when it is all text
and as a list of parts only when it carries audio: servers such as llama.cpp's refuse (HTTP 500) or
silently drop list content in text-only chats. `string` always joins text parts (audio is refused
per request), `parts` always sends lists. `audio=false` is text-only mode: capabilities become
{"text"} and any audio part that reaches the adapter is refused per request with a clear error.

Requests run concurrently on one persistent event loop in a background thread, so the HTTP client
(and its keep-alive connections) is reused across batches; `generate_stream` yields each response
as it completes, so the runner logs it at once. `concurrency` bounds the requests in flight;
`preferred_batch_size` is BATCHES_PER_SLOT x concurrency, so that one slow request does not leave
the other slots idle at the end of every batch.

Failures (the SDK's own retries are off):
  - 429, 408, 409, 5xx, timeouts and connection errors are retried with exponential backoff and full
    jitter, honouring Retry-After / retry-after-ms, at most `max_retries` times;
  - a 5xx other than 502/503/504 whose body repeats `max_identical_errors` times in a row is
    deterministic (a server that cannot handle this request) and is not retried further;
  - other 4xx fail at once. 401/403 (credentials), 404 (model or path not found) and a connection that
    cannot be made (refused, unknown host) will fail every request the same way: their error responses
    carry `extra["fatal"]` (the cause, in words) so that the runner stops the run resumably; after a
    connection failure the requests of the batch not yet sent are answered at once (`extra["not_sent"]`);
  - `timeout_s` is the total deadline of one request: every attempt, the backoff between them and a
    body that trickles in byte by byte (`attempt_timeout_s` bounds a single attempt).
Replies of any shape become text or a per-request error: content parts are concatenated, a string
`message` or a legacy `choices[0].text` is read, non-text content (a number, an object without text),
missing choices and non-JSON bodies are errors naming what came back, non-finite `usage` values are
dropped, lone surrogates are replaced by U+FFFD (`extra["text_repaired"] = "surrogates"`).

The API key is read from the environment variable named by `api_key_env` and never appears in logs,
`info()` or error messages (evalkit.engine.secrets masks it by value). Query parameters of `base_url`
(`?api-version=...&api-key=...`) are sent with every request; `headers` are added to every request.
Requires the `openai` extra (`pip install 'evalkit[openai]'`), imported only when the adapter is built.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import json
import math
import os
import queue
import random
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import numpy as np
from pydantic import Field

from evalkit.engine.secrets import mask_json, mask_logs, mask_text, redact_args, register_secret
from evalkit.jsonio import repair_surrogates
from evalkit.models.base import AdapterConfig, Model
from evalkit.types import AudioRef, Request, Response

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
_MAX_ERROR_CHARS = 500
#: preferred_batch_size = BATCHES_PER_SLOT * concurrency: the runner hands over this many requests at once,
#: so the slowest request of a batch rarely leaves slots idle (records are still logged as each completes)
BATCHES_PER_SLOT = 16
#: retried: rate limits, request timeouts, conflicts (the SDK's own list), and every 5xx
RETRIED_4XX = frozenset({408, 409, 429})
#: the same failure will come back for every request of the run: the runner stops (extra["fatal"])
FATAL_STATUS = frozenset({401, 403, 404})
#: gateways and overloaded servers repeat one body while the failure is transient: no identical-body cap
TRANSIENT_5XX = frozenset({502, 503, 504})
#: the content probe (see _probe_content): a short message, and the same with PROBE_EXTRA_WORDS more words
PROBE_TEXT = "evalkit content probe: reply with the word OK."
PROBE_EXTRA_WORDS = 64
PROBE_TIMEOUT_S = 30.0
PROBE_AUDIO_SECONDS = 0.5


def _default_base_url() -> str:
    return os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


class OpenAIConfig(AdapterConfig):
    base_url: str = Field(default_factory=_default_base_url)
    model: str
    #: name of the environment variable holding the key (the key itself is never configured)
    api_key_env: str = "OPENAI_API_KEY"
    #: added to every request (e.g. {"api-key": "..."} for Azure-style gateways); credential headers are
    #: masked in logs by name
    headers: dict[str, str] = Field(default_factory=dict)
    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(6, ge=0)
    #: total deadline of one request in seconds: all attempts, the backoff between them, slow bodies
    timeout_s: float = Field(300.0, gt=0)
    #: deadline of one attempt (a stuck attempt is retried while timeout_s allows)
    attempt_timeout_s: float = Field(120.0, gt=0)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    #: a 5xx (other than 502/503/504) that comes back with the same body this many times in a row is not
    #: retried further
    max_identical_errors: int = Field(2, ge=1)
    #: auto: text-only content as a plain string, parts only when audio is present; string; parts
    content_format: Literal["auto", "string", "parts"] = "auto"
    #: False: text-only mode (capabilities {"text"}); audio parts are refused
    audio: bool = True
    audio_format: Literal["wav"] = "wav"
    #: some models (o-series, gpt-5) take max_completion_tokens instead of max_tokens
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    #: merged into every request body (e.g. {"reasoning_effort": "low"})
    extra_body: dict[str, Any] = Field(default_factory=dict)
    #: before the first request, ask twice (max 1 token) with a short and a long message in the run's content
    #: form: the same usage.prompt_tokens for both means the server does not read the content, and the run stops
    content_probe: bool = True


class _RequestError(Exception):
    """A request that cannot be sent (bad content); becomes an error Response."""


def clean_url(url: str) -> str:
    """The URL without credentials, query or fragment (safe for run.json and messages)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _split_query(url: str) -> tuple[str, dict[str, str]]:
    """(URL without query and fragment, its query parameters): the SDK appends paths to base_url verbatim,
    so a query left in it would swallow the path ("/v1?api-key=X/chat/completions")."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), dict(parse_qsl(parts.query))


def _is_local(url: str) -> bool:
    try:
        return (urlsplit(url).hostname or "") in _LOCAL_HOSTS
    except ValueError:
        return False


def _preview(value: Any, limit: int = 200) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _kind(value: Any) -> str:
    """The JSON type of a parsed value, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _content_text(content: Any, where: str) -> tuple[str | None, str | None]:
    """(text, error) of a message's content of any shape."""
    if content is None:
        return "", None  # no content (e.g. only a refusal or tool calls): an empty answer, extracted as none
    if isinstance(content, str):
        return content, None
    if isinstance(content, list):  # content parts: their text, concatenated
        texts, others = [], []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str) and \
                    part.get("type") in (None, "text", "output_text"):
                texts.append(part["text"])
            else:
                others.append(str(part.get("type")) if isinstance(part, dict) else _kind(part))
        if content and not texts:
            return None, f"{where} has no text part (parts: {', '.join(others)})"
        return "".join(texts), None
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return content["text"], None
        return None, f"{where} is an object without text: {_preview(content)}"
    return None, f"{where} is {_kind(content)} ({_preview(content)}), not text"


def parse_reply(completion: Any) -> tuple[str | None, str | None, dict[str, Any]]:
    """(text, error, extra) of a chat-completions reply body of any shape; exactly one of text/error is set."""
    extra: dict[str, Any] = {}
    if not isinstance(completion, dict):
        return None, f"reply is {_kind(completion)}, not a JSON object: {_preview(completion)}", extra
    usage = completion.get("usage")
    if isinstance(usage, dict):
        extra["usage"] = {k: v for k, v in usage.items() if _finite_number(v)}
        dropped = sorted(str(k) for k, v in usage.items() if isinstance(v, float) and not math.isfinite(v))
        if dropped:
            extra["usage_dropped"] = dropped  # NaN / Infinity: not JSON, and not a count
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        what = ("no choices" if choices is None or choices == [] else
                f"choices that are {_kind(choices)}" if not isinstance(choices, list) else
                f"choices[0] that is {_kind(choices[0])}")
        err = completion.get("error")
        detail = ""
        if err:
            msg = err.get("message") if isinstance(err, dict) else err
            detail = f": {msg if isinstance(msg, str) else _preview(msg)}"
        return None, f"reply has {what}{detail}", extra
    choice = choices[0]
    finish = choice.get("finish_reason")
    extra["finish_reason"] = finish if finish is None or isinstance(finish, str) else _preview(finish)
    message = choice.get("message")
    if message is None and "text" in choice:  # the legacy completions shape
        extra["reply_shape"] = "choices[0].text"
        return (*_content_text(choice["text"], "choices[0].text"), extra)
    if isinstance(message, str):
        extra["reply_shape"] = "message is a string"
        return message, None, extra
    if not isinstance(message, dict):
        return None, f"choices[0].message is {_kind(message)} ({_preview(message)})", extra
    refusal = message.get("refusal")
    if refusal:
        extra["refusal"] = refusal if isinstance(refusal, str) else _preview(refusal)
    return (*_content_text(message.get("content"), "message.content"), extra)


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or HTTP-date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _LoopThread:
    """A persistent asyncio event loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="evalkit-openai-loop", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro):
        fut = self.submit(coro)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class _Attempts:
    """What one request went through so far (read when the total deadline cuts it short)."""

    def __init__(self) -> None:
        self.retries = 0
        self.last_failure: str | None = None


class OpenAICompatible(Model):
    name: ClassVar[str] = "openai"
    audio_fed: ClassVar[str] = "all"  # the whole clip is sent; what the server does with it is its own
    description: ClassVar[str] = "any OpenAI-compatible chat-completions endpoint (audio as input_audio WAV)"
    source: ClassVar[str] = "https://platform.openai.com/docs/api-reference/chat"
    capabilities: ClassVar[frozenset[str]] = frozenset({"audio", "text", "multi_audio", "multi_turn_audio"})
    Config: ClassVar[type[AdapterConfig]] = OpenAIConfig
    sample_rate: ClassVar[int | None] = 16000
    default_batch_size: ClassVar[int] = 8
    #: how requests are paced and retried, not what is asked: not part of the run id
    volatile_args: ClassVar[frozenset[str]] = frozenset(
        {"concurrency", "max_retries", "timeout_s", "attempt_timeout_s", "backoff_base_s", "backoff_max_s",
         "max_identical_errors", "content_probe"})

    config: OpenAIConfig

    def __init__(self, config: OpenAIConfig):
        super().__init__(config)
        try:
            import openai  # noqa: F401
        except ImportError:
            raise ImportError(
                "the 'openai' model adapter needs the OpenAI SDK: pip install 'evalkit[openai]'") from None
        if not config.audio:
            self.capabilities = frozenset({"text"})  # instance attribute overrides the ClassVar
        # A batch must drain completely before the runner sends the next one, so a batch of
        # exactly `concurrency` leaves slots idle while its slowest request finishes (and
        # serializes client CPU with the wait): 16x keeps the semaphore full (bench_openai.py).
        self.preferred_batch_size = BATCHES_PER_SLOT * config.concurrency
        key = os.environ.get(config.api_key_env)
        if not key:
            if _is_local(config.base_url):
                key = "sk-local-dummy"
            else:
                raise ValueError(
                    f"no API key for {clean_url(config.base_url)}: set the environment variable "
                    f"{config.api_key_env} (or -M api_key_env=NAME for another variable)")
        else:
            register_secret(key)  # masked by value in every message, whatever the variable's name
        # every credential in the settings (URL userinfo and query, headers, extra_body) becomes known by value,
        # and the SDK's loggers (full URLs at INFO, request bodies at DEBUG) mask what they print
        redact_args(config)
        mask_logs("openai", "httpx", "httpx2", "httpcore", "httpcore2")
        self._api_key = key
        self._loop: _LoopThread | None = None
        self._client = None
        self._sem: asyncio.Semaphore | None = None
        self._rng = random.Random()
        self._served_model: str | None = None
        #: set when a connection to base_url could not be made: the rest of the batch is not sent
        self._unreachable: str | None = None
        self._lock = threading.Lock()
        #: the content probe's finding per content form ("string", "parts", "parts with audio"), in the order
        #: probed; `_content_ignored` the fatal cause when a form was found not read
        self._probes: dict[str, dict[str, Any]] = {}
        self._content_ignored: str | None = None

    # ---- identity -------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "base_url": clean_url(self.config.base_url),
            "model": self.config.model,
            "text_only": not self.config.audio,
            "content_format": self.config.content_format,
            "audio_format": self.config.audio_format if self.config.audio else None,
            "audio_sample_rate": self.sample_rate if self.config.audio else None,
        }
        if self.config.extra_body:
            out["extra_body"] = mask_json(self.config.extra_body)
        if self.config.headers:
            out["headers"] = mask_json(self.config.headers)
        if self._served_model:
            out["served_model"] = self._served_model
        if self._probes:
            out["content_probe"] = {form: dict(finding) for form, finding in self._probes.items()}
        return out

    # ---- plumbing ------------------------------------------------------------------
    def _ensure_loop(self) -> _LoopThread:
        with self._lock:
            if self._loop is None:
                self._loop = _LoopThread()
            return self._loop

    async def _setup(self) -> None:
        if self._client is None:
            from openai import AsyncOpenAI

            base_url, query = _split_query(self.config.base_url)
            self._client = AsyncOpenAI(api_key=self._api_key, base_url=base_url, default_query=query or None,
                                       default_headers=self.config.headers or None,
                                       timeout=self.config.attempt_timeout_s, max_retries=0)
            self._sem = asyncio.Semaphore(self.config.concurrency)

    def _clean(self, text: str) -> str:
        """An error message as records may hold it: secrets masked, lone surrogates replaced, bounded."""
        text = mask_text(repair_surrogates(text)[0])
        if len(text) > _MAX_ERROR_CHARS:
            text = text[:_MAX_ERROR_CHARS] + "..."
        return text

    def _content(self, content: Any, role: str) -> Any:
        fmt = self.config.content_format
        if isinstance(content, str):
            return [{"type": "text", "text": content}] if fmt == "parts" else content
        parts: list[dict[str, Any]] = []
        for p in content:
            kind = p.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": p["text"]})
            elif kind == "audio":
                if not self.config.audio:
                    raise _RequestError(
                        "audio part in text-only mode (audio=false): this adapter does not send audio; "
                        "run with audio=true or let the runner drop audio for text-only probing")
                if fmt == "string":
                    raise _RequestError("content_format=string cannot carry an audio part: "
                                        "use -M content_format=auto (or parts)")
                from evalkit.audio import encode_wav

                x, sr = p["audio"].load(self.sample_rate)
                b64 = base64.b64encode(encode_wav(x, sr)).decode("ascii")
                parts.append({"type": "input_audio",
                              "input_audio": {"data": b64, "format": self.config.audio_format}})
            else:
                raise _RequestError(f"unsupported content part type {kind!r}")
        if fmt == "parts" or any(p["type"] != "text" for p in parts):
            return parts
        # all text: a plain string, which every server takes (llama.cpp refuses text-only part lists)
        return "\n".join(p["text"] for p in parts)

    def _body(self, req: Request) -> dict[str, Any]:
        messages = [{"role": m["role"], "content": self._content(m["content"], m["role"])}
                    for m in req.messages]
        g = req.generation
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": g.temperature,
            "top_p": g.top_p,
            self.config.max_tokens_param: g.max_new_tokens,
        }
        if g.seed is not None:
            body["seed"] = g.seed
        return body

    def _content_form(self, req: Request) -> str:
        """The form `_body` gives this request's content: "parts with audio" when it carries audio, else "parts"
        (content_format=parts) or "string". A server may read one form and drop another (llama.cpp's chat
        templates differ on list content), so each form is probed on its own."""
        if self.config.audio and any(not isinstance(m["content"], str)
                                     and any(p.get("type") == "audio" for p in m["content"]) for m in req.messages):
            return "parts with audio"
        return "parts" if self.config.content_format == "parts" else "string"

    async def _probe_content(self, requests: list[Request]) -> None:
        """Once per adapter and content form: does the server read what it is sent? Two requests (max 1 token) in
        each form this batch uses and no earlier batch probed (a string, a list of parts, or parts with a short
        silent clip), one with a short message and one with PROBE_EXTRA_WORDS words more. A server that reports
        the same usage.prompt_tokens for both never tokenized the content (llama.cpp with a chat template that
        drops list content does this silently): every answer in that form would come from an empty prompt, so
        the run stops (fatal) before anything more is recorded. No usage, or a probe that fails, decides nothing
        (the real requests then show what the server does); the findings are in info()."""
        if not self.config.content_probe:
            return
        first_of: dict[str, Request] = {}
        for r in requests:
            form = self._content_form(r)
            if form not in self._probes:
                first_of.setdefault(form, r)
        for form, first in first_of.items():
            self._probes[form] = finding = await self._probe_form(form, first)
            if finding["result"] == "ignored" and self._content_ignored is None:
                tokens = finding["prompt_tokens"]
                self._content_ignored = (
                    f"the server at {clean_url(self.config.base_url)} reported the same prompt_tokens ({tokens[0]}) "
                    f"for a message of {len(PROBE_TEXT.split())} words and one of "
                    f"{len(PROBE_TEXT.split()) + PROBE_EXTRA_WORDS} words sent as {form}: it does not read the "
                    "message content, so every answer would come from an empty prompt. With llama.cpp's server, "
                    "a chat format that takes content parts, or -M content_format=string for text-only runs; "
                    "-M content_probe=false skips this check")

    async def _probe_form(self, form: str, first: Request) -> dict[str, Any]:
        """The two probe requests in `form`, with `first`'s generation settings (1 token, greedy)."""
        tokens: list[int | None] = []
        try:
            for text in (PROBE_TEXT, PROBE_TEXT + " " + " ".join(f"w{i}" for i in range(PROBE_EXTRA_WORDS))):
                content: list[dict[str, Any]] = [{"type": "text", "text": text}]
                if form == "parts with audio":
                    content.insert(0, {"type": "audio", "audio": AudioRef(
                        array=np.zeros(int(PROBE_AUDIO_SECONDS * 16000), np.float32), sample_rate=16000)})
                probe = Request(key="evalkit-content-probe", messages=[{"role": "user", "content": content}],
                                generation=dataclasses.replace(first.generation, max_new_tokens=1, temperature=0.0))
                body = self._body(probe)
                body.update(self.config.extra_body)
                reply = await asyncio.wait_for(self._client.post("/chat/completions", cast_to=object, body=body),
                                               min(self.config.attempt_timeout_s, PROBE_TIMEOUT_S))
                usage = reply.get("usage") if isinstance(reply, dict) else None
                n = usage.get("prompt_tokens") if isinstance(usage, dict) else None
                tokens.append(n if isinstance(n, int) and not isinstance(n, bool) else None)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            return {"result": "undecided", "why": self._clean(f"probe failed: {type(e).__name__}: {e}")}
        if None in tokens:
            return {"result": "undecided", "why": "the server reports no usage.prompt_tokens"}
        return {"result": "ignored" if tokens[0] == tokens[1] else "read", "prompt_tokens": tokens}

    def _ignored_responses(self, requests: list[Request]) -> list[Response]:
        assert self._content_ignored is not None
        return [Response(r.key, error=self._content_ignored, extra={"fatal": self._content_ignored, "not_sent": True})
                for r in requests]

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = self.config.backoff_max_s
        if retry_after is not None:
            return min(retry_after, cap)
        return min(cap, self.config.backoff_base_s * 2 ** attempt) * self._rng.random()

    async def _one(self, req: Request) -> Response:
        assert self._sem is not None and self._client is not None
        async with self._sem:
            if self._unreachable is not None:
                return Response(req.key, error=f"not sent: {self._unreachable}",
                                extra={"fatal": self._unreachable, "not_sent": True, "retries": 0})
            try:
                needs_thread = any(p.get("type") == "audio" for m in req.messages
                                   for p in (m["content"] if not isinstance(m["content"], str) else ()))
                body = await asyncio.to_thread(self._body, req) if needs_thread else self._body(req)
            except _RequestError as e:
                return Response(req.key, error=str(e))
            except Exception as e:  # audio decode errors name the file
                return Response(req.key, error=self._clean(f"cannot build request: {type(e).__name__}: {e}"))
            body.update(self.config.extra_body)
            state = _Attempts()
            t0 = time.perf_counter()
            try:
                return await asyncio.wait_for(self._attempts(req, body, state), self.config.timeout_s)
            except asyncio.TimeoutError:
                last = f"; last failure: {state.last_failure}" if state.last_failure else ""
                return Response(req.key, latency_s=time.perf_counter() - t0, extra={"retries": state.retries},
                                error=f"timeout: no complete reply within timeout_s={self.config.timeout_s:g} s "
                                      f"(the total for the request, {state.retries} retries included){last}")

    async def _attempts(self, req: Request, body: dict[str, Any], state: _Attempts) -> Response:
        import openai

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout_s
        identical, previous = 0, None
        where = clean_url(self.config.base_url)
        while True:
            t0 = time.perf_counter()
            retry_after: float | None = None
            fatal: str | None = None
            try:
                # the client's generic `post` (documented for undocumented endpoints) keeps the SDK's auth,
                # HTTP stack and error classes but skips its per-call params transform and response-model
                # construction (measured: 5.3 -> 3.2 ms CPU per request): the body is already plain JSON,
                # and the reply is read as parsed JSON of any shape. wait_for bounds the whole attempt: the
                # SDK's own timeout is per read, which a body trickling in byte by byte never trips.
                completion = await asyncio.wait_for(
                    self._client.post("/chat/completions", cast_to=object, body=body),
                    self.config.attempt_timeout_s)
            except openai.APIStatusError as e:
                status = e.status_code
                detail = self._clean(_error_message(e))
                if status not in RETRIED_4XX and status < 500:
                    extra: dict[str, Any] = {"retries": state.retries}
                    if status in FATAL_STATUS:
                        extra["fatal"] = f"HTTP {status} from {where}: {detail}"
                    return Response(req.key, error=f"HTTP {status}: {detail}", extra=extra)
                failure = f"HTTP {status}"
                retry_after = parse_retry_after(getattr(e.response, "headers", None))
                if status >= 500 and status not in TRANSIENT_5XX and retry_after is None:
                    same = (status, detail)
                    identical = identical + 1 if same == previous else 1
                    previous = same
                    if identical >= self.config.max_identical_errors:
                        return Response(req.key, extra={"retries": state.retries},
                                        error=f"HTTP {status}, the same reply {identical} times in a row "
                                              f"(not retried further): {detail}")
            except (openai.APITimeoutError, asyncio.TimeoutError):
                failure = "timeout"
                detail = f"no complete reply within attempt_timeout_s={self.config.attempt_timeout_s:g} s"
            except openai.APIConnectionError as e:
                cause = e.__cause__ or e
                failure, detail = "connection error", self._clean(f"{type(cause).__name__}: {cause}")
                # refused, unknown host: no server at base_url. By class name: the SDK's HTTP package is httpx
                # or a fork of it (httpx2), both raising a ConnectError
                if any(c.__name__ == "ConnectError" for c in type(cause).__mro__):
                    fatal = f"cannot connect to {where}: {detail}"
            except asyncio.CancelledError:
                raise
            except Exception as e:  # an unreadable body (not JSON, not UTF-8): the same every time, not retried
                return Response(req.key, latency_s=time.perf_counter() - t0, extra={"retries": state.retries},
                                error=self._clean(f"reply could not be read: {type(e).__name__}: {e}"))
            else:
                return self._response(req, completion, time.perf_counter() - t0, state.retries)
            state.last_failure = f"{failure}: {detail}"
            wait = self._backoff(state.retries, retry_after)
            out_of_time = loop.time() + wait >= deadline
            if state.retries >= self.config.max_retries or out_of_time:
                why = " (the next retry would pass timeout_s)" if out_of_time and \
                    state.retries < self.config.max_retries else ""
                extra = {"retries": state.retries}
                if fatal is not None:
                    extra["fatal"] = self._unreachable = fatal
                return Response(req.key, error=f"{failure} after {state.retries} retries{why}: {detail}",
                                extra=extra)
            await asyncio.sleep(wait)
            state.retries += 1

    def _response(self, req: Request, completion: Any, latency: float, retries: int) -> Response:
        text, error, extra = parse_reply(completion)
        extra["retries"] = retries
        if isinstance(completion, dict) and isinstance(completion.get("model"), str):
            self._served_model = repair_surrogates(completion["model"])[0]
        if "refusal" in extra:
            extra["refusal"] = repair_surrogates(extra["refusal"])[0]
        if error is not None:
            return Response(req.key, error=self._clean(error), latency_s=latency, extra=extra)
        text, repaired = repair_surrogates(text or "")
        if repaired:
            extra["text_repaired"] = "surrogates"
        return Response(req.key, text=text, latency_s=latency, extra=extra)

    async def _batch(self, requests: list[Request]) -> list[Response]:
        await self._setup()
        self._unreachable = None  # every batch probes the server afresh
        await self._probe_content(requests)
        if self._content_ignored:
            return self._ignored_responses(requests)
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    # ---- the contract ----------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[Response]:
        if not requests:
            return []
        return self._ensure_loop().run(self._batch(requests))

    def generate_stream(self, requests: list[Request]) -> Iterator[Response]:
        """Each response as soon as its request completes (any order). Closing the iterator early
        (the runner stopping) cancels the requests still pending."""
        if not requests:
            return
        done: queue.Queue[Response | BaseException] = queue.Queue()

        async def one(r: Request) -> None:
            try:
                done.put(await self._one(r))
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # a bug, not a request failure: surfaces in the caller
                done.put(e)

        async def run_all() -> None:
            await self._setup()
            self._unreachable = None
            await self._probe_content(requests)
            if self._content_ignored:
                for resp in self._ignored_responses(requests):
                    done.put(resp)
                return
            await asyncio.gather(*(one(r) for r in requests))

        fut = self._ensure_loop().submit(run_all())
        try:
            for _ in requests:
                item = done.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not fut.done():
                fut.cancel()

    async def agenerate(self, requests: list[Request]) -> list[Response]:
        """The async form: awaitable from any event loop (work runs on the adapter's loop)."""
        if not requests:
            return []
        return await asyncio.wrap_future(self._ensure_loop().submit(self._batch(requests)))

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        client, self._client = self._client, None
        if client is not None:
            try:
                loop.run(client.close())
            except Exception:
                pass
        loop.stop()


def _error_message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"]:
            return err["message"]
        if isinstance(err, str):
            return err
    return str(getattr(e, "message", None) or e)


__all__ = ["OpenAICompatible", "OpenAIConfig", "clean_url", "parse_reply", "parse_retry_after"]
