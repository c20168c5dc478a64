"""Cascade: an audio captioner, then a text LLM that answers from the caption.

    evalkit run --model cascade -M captioner=qwen-captioner -M llm=text --task mmau
    evalkit run --model cascade \\
        -M captioner='{"name": "openai", "args": {"model": "gpt-4o-audio-preview"}}' \\
        -M llm='{"name": "text", "args": {"backend": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct"}}' \\
        --task mmar

Adapter spec (`-M captioner=SPEC`, `-M llm=SPEC`): either a registered model name (`text`,
`openai`, ...: the adapter with its default settings), or a JSON object
`{"name": NAME, "args": {key: value, ...}}` (the same settings as `-M key=value` for that
adapter; "args" may be omitted). The CLI parses a value starting with "{" as JSON; a Python
caller may pass the dict or the JSON string. Names resolve through evalkit.registry.get_model,
and args are validated by the adapter's own Config at load (a typo fails before any work).

Flow per request:
  1. every audio part is captioned by the captioner with a fixed request: the audio, then
     CAPTION_PROMPT (`-M caption_prompt=...` overrides), greedy, `caption_max_tokens` tokens —
     independent of the run's generation settings, so captions are shared across runs;
  2. the LLM gets the original messages with each audio part replaced by the text part
     "Audio description: <caption>" ("Audio N description: ..." when a request has several).
     An empty caption (Whisper on a clip without speech, a tagger with no label above its
     threshold) is a valid caption, cached like any other: the LLM reads EMPTY_CAPTION_TEXT,
     "Audio description: (no speech or sound events were detected)", rather than a bare
     "Audio description: " that it could read as a truncated prompt; the record's
     extra["caption"] is the captioner's own "" (the placeholder is the LLM's view only).
Captions come from, in order: the precomputed file (`-M captions=FILE`), the persistent cache,
then the captioner — one captioner call per distinct clip (by content hash) per batch, and the
cache makes that one per clip ever: every question on the same clip, every task, every LLM and
every later run reuse it. The captioner is only loaded if some caption is missing.

Cache: sqlite at `-M cache_path=FILE`, else `$EVALKIT_CACHE_DIR/captions.sqlite`, else
`~/.cache/evalkit/captions.sqlite`; keyed by (AudioRef.sha256() of the clip, sha256 of the
captioner identity JSON = captioner name + args as logged (secrets masked, volatile settings
such as concurrency left out, plus the sha256 of every local file an argument names, so a new
model file under an old path captions again) + caption prompt + caption_max_tokens).
`-M cache=false` turns it off. Failed captions are never cached; empty ones are.

Precomputed captions (`-M captions=FILE`): JSONL, one object per line with "caption" and one of
  "audio_sha256"  the clip's content hash (AudioRef.sha256(): sha256 of the file's bytes),
  "audio"         the clip's path / label as logs show it (exact), or its file name,
  "id"            the sample id (for single-audio requests; "#rotN" keys use the sample id).

Logging: every Response carries extra["caption"] (a string; a list when a request has several
clips) and extra["caption_source"] ("file" | "cache" | "captioner"), plus the LLM's own extra.
A captioner error (or a response with no text at all, None) becomes that sample's error
("captioner: ..."); the LLM is not asked.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from evalkit.engine.cache import KVCache, cache_dir
from evalkit.jsonio import jsonl_lines
from evalkit.models.base import AdapterConfig, Model
from evalkit.types import AudioRef, GenerationConfig, Request, Response

CAPTION_PROMPT = ("Describe the audio in detail: the sound sources, acoustic properties, temporal structure, "
                  "any spoken content (transcribe it) and the speaking style.")
CAPTION_TEMPLATE = "Audio description: {caption}"
CAPTION_TEMPLATE_N = "Audio {n} description: {caption}"
#: what the LLM reads in place of an empty caption
EMPTY_CAPTION_TEXT = "(no speech or sound events were detected)"


class CascadeError(ValueError):
    pass


def parse_spec(value: Any, what: str = "adapter") -> dict[str, Any]:
    """An adapter spec -> {"name": str, "args": dict} (validated against the registry)."""
    from evalkit.registry import get_model

    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except ValueError as e:
                raise CascadeError(f"{what} spec {value!r}: invalid JSON ({e})") from None
        elif text:
            value = {"name": text}
        else:
            raise CascadeError(f"{what} spec is empty: give a model name or {{\"name\": ..., \"args\": {{...}}}}")
    if not isinstance(value, dict):
        raise CascadeError(f"{what} spec must be a model name or a JSON object, got {type(value).__name__}")
    unknown = set(value) - {"name", "args"}
    if unknown:
        raise CascadeError(f"{what} spec: unknown field(s) {', '.join(sorted(unknown))}; expected name and args")
    name, args = value.get("name"), value.get("args") or {}
    if not isinstance(name, str) or not name:
        raise CascadeError(f"{what} spec needs \"name\": a registered model name")
    if not isinstance(args, dict):
        raise CascadeError(f"{what} spec: \"args\" must be a JSON object")
    if name == "cascade":
        raise CascadeError(f"{what} spec: a cascade cannot contain a cascade")
    cls = get_model(name)  # unknown name -> RegistryError listing the known ones
    cls.Config(**args)  # typos fail at load
    return {"name": name, "args": dict(args)}


class CascadeConfig(AdapterConfig):
    captioner: dict[str, Any]
    llm: dict[str, Any]
    caption_prompt: str = CAPTION_PROMPT
    caption_max_tokens: int = Field(512, ge=1)
    #: precomputed captions (JSONL)
    captions: str | None = None
    cache: bool = True
    cache_path: str | None = None

    @field_validator("captioner", mode="before")
    @classmethod
    def _captioner(cls, v: Any) -> dict[str, Any]:
        return parse_spec(v, "captioner")

    @field_validator("llm", mode="before")
    @classmethod
    def _llm(cls, v: Any) -> dict[str, Any]:
        return parse_spec(v, "llm")


def default_cache_path() -> Path:
    return cache_dir() / "captions.sqlite"


class CaptionCache(KVCache):
    """Persistent (captioner id, audio sha256) -> caption store (evalkit.engine.cache)."""

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__(Path(path) if path else default_cache_path())

    def get_many(self, captioner: str, shas: list[str]) -> dict[str, str]:
        return {sha: json.loads(v)["caption"] for sha, v in super().get_many(captioner, shas).items()}

    def put_many(self, captioner: str, identity: str, items: dict[str, str]) -> None:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        super().put_many(captioner, {sha: json.dumps({"caption": cap, "identity": identity, "created": now}).encode()
                                     for sha, cap in items.items()})


class CaptionsFile:
    """Precomputed captions, indexed by audio sha256, audio path/label (and file name) and sample id."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise CascadeError(f"captions file not found: {self.path}")
        raw = self.path.read_bytes()
        self.sha256 = hashlib.sha256(raw).hexdigest()
        self.by: dict[str, dict[str, str]] = {"audio_sha256": {}, "audio": {}, "name": {}, "id": {}}
        n = 0
        for lineno, line in jsonl_lines(raw.decode("utf-8-sig")):  # "\n" only: captions may hold U+2028
            where = f"{self.path} line {lineno}"
            try:
                item = json.loads(line)
            except ValueError as e:
                raise CascadeError(f"{where}: malformed JSON ({e})") from None
            if not isinstance(item, dict) or not isinstance(item.get("caption"), str):
                raise CascadeError(f"{where}: expected an object with a string \"caption\"")
            keys = [k for k in ("audio_sha256", "audio", "id") if item.get(k) is not None]
            if not keys:
                raise CascadeError(f"{where}: needs one of \"audio_sha256\", \"audio\", \"id\"")
            for k in keys:
                self._add(k, str(item[k]), item["caption"], where)
                if k == "audio":
                    self._add("name", Path(str(item[k])).name, item["caption"], where, strict=False)
            n += 1
        if not n:
            raise CascadeError(f"{self.path}: no captions")
        self.n = n

    def _add(self, kind: str, key: str, caption: str, where: str, strict: bool = True) -> None:
        table = self.by[kind]
        if key in table and table[key] != caption:
            if strict:
                raise CascadeError(f"{where}: {kind} {key!r} has two different captions in {self.path}")
            table[key] = None  # type: ignore[assignment]  # an ambiguous file name matches nothing
            return
        table[key] = caption

    def lookup(self, audio: AudioRef, sha: str, sample_id: str | None) -> str | None:
        if sha in self.by["audio_sha256"]:
            return self.by["audio_sha256"][sha]
        ref = audio.describe()
        if ref in self.by["audio"]:
            return self.by["audio"][ref]
        name = Path(ref).name
        if self.by["name"].get(name) is not None:  # None: an ambiguous file name; "" is a valid caption
            return self.by["name"][name]
        if sample_id is not None and sample_id in self.by["id"]:
            return self.by["id"][sample_id]
        return None


class Cascade(Model):
    name: ClassVar[str] = "cascade"
    description: ClassVar[str] = "audio captioner -> text LLM (captions cached per clip and captioner)"
    source: ClassVar[str] = "-M captioner=SPEC -M llm=SPEC"
    capabilities: ClassVar[frozenset[str]] = frozenset({"audio", "text", "multi_audio", "multi_turn_audio"})
    Config: ClassVar[type[AdapterConfig]] = CascadeConfig
    #: audio is decoded by the captioner itself, and only for clips without a caption
    sample_rate: ClassVar[int | None] = None
    needs_audio: ClassVar[bool] = False
    default_batch_size: ClassVar[int] = 64
    volatile_args: ClassVar[frozenset[str]] = frozenset({"cache", "cache_path"})

    config: CascadeConfig

    def __init__(self, config: CascadeConfig):
        super().__init__(config)
        from evalkit.engine.runner import ModelHolder

        c = config
        self._captioner = ModelHolder(c.captioner["name"], c.captioner["args"])
        self._llm = ModelHolder(c.llm["name"], c.llm["args"])
        if "audio" not in self._captioner.cls.capabilities:
            raise CascadeError(f"captioner {c.captioner['name']!r} does not take audio")
        if "text" not in self._llm.cls.capabilities:
            raise CascadeError(f"llm {c.llm['name']!r} does not take text-only requests")
        from evalkit.engine.fingerprint import Fingerprints

        with Fingerprints() as fingerprints:
            ident = {**self._captioner.identity(fingerprints), "prompt": c.caption_prompt,
                     "max_new_tokens": c.caption_max_tokens}
        self.captioner_identity = json.dumps(ident, sort_keys=True, ensure_ascii=False, default=str)
        self.captioner_id = hashlib.sha256(self.captioner_identity.encode()).hexdigest()
        self.cache = CaptionCache(c.cache_path) if c.cache else None
        self.captions_file = CaptionsFile(c.captions) if c.captions else None
        llm = self._llm.model  # load the LLM now: a bad LLM config fails before captioning work
        self.preferred_batch_size = max(self.default_batch_size,
                                        getattr(llm, "preferred_batch_size", None) or llm.default_batch_size)
        #: captioning requests sent to the captioner (benchmarks and tests count these)
        self.captioner_calls = 0
        self.sources: dict[str, int] = {"file": 0, "cache": 0, "captioner": 0}

    # ---- captions --------------------------------------------------------------------------
    def _caption_request(self, sha: str, audio: AudioRef) -> Request:
        return Request(key=f"caption:{sha}",
                       messages=[{"role": "user", "content": [{"type": "audio", "audio": audio},
                                                              {"type": "text", "text": self.config.caption_prompt}]}],
                       generation=GenerationConfig(max_new_tokens=self.config.caption_max_tokens, temperature=0.0,
                                                   top_p=1.0, seed=0))

    def captions_for(self, requests: list[Request]) -> tuple[dict[str, tuple[str, str]], dict[str, str],
                                                           dict[str, str]]:
        """({sha: (caption, source)}, {sha: captioner error}, {request key: error}) for the requests' clips."""
        found: dict[str, tuple[str, str]] = {}
        failed: dict[str, str] = {}
        req_errors: dict[str, str] = {}
        todo: dict[str, AudioRef] = {}
        for r in requests:
            audios = r.audio()
            sid = r.key.split("#rot")[0] if len(audios) == 1 else None
            for a in audios:
                try:
                    sha = a.sha256()
                except Exception as e:
                    req_errors[r.key] = f"cannot read audio {a.describe()}: {type(e).__name__}: {e}"
                    break
                if sha in found or sha in todo:
                    continue
                cap = self.captions_file.lookup(a, sha, sid) if self.captions_file else None
                if cap is not None:
                    found[sha] = (cap, "file")
                else:
                    todo[sha] = a
        if todo and self.cache is not None:
            for sha, cap in self.cache.get_many(self.captioner_id, list(todo)).items():
                found[sha] = (cap, "cache")
                del todo[sha]
        if todo:
            captioner = self._captioner.model
            bs = getattr(captioner, "preferred_batch_size", None) or captioner.default_batch_size
            items = list(todo.items())
            for i in range(0, len(items), bs):
                chunk = items[i:i + bs]
                reqs = [self._caption_request(sha, a) for sha, a in chunk]
                self.captioner_calls += len(reqs)
                try:
                    got = {x.key: x for x in captioner.generate(reqs)}
                except Exception as e:  # the captioner failed the whole batch
                    got = {q.key: Response(q.key, error=f"{type(e).__name__}: {e}") for q in reqs}
                new: dict[str, str] = {}
                for (sha, _), q in zip(chunk, reqs):
                    resp = got.get(q.key)
                    if resp is None:
                        failed[sha] = "captioner returned no response"
                    elif resp.error is not None:
                        failed[sha] = resp.error
                    elif resp.text is None:
                        failed[sha] = "captioner returned no text (None) and no error"
                    else:  # "" is a valid caption: nothing was heard
                        new[sha] = resp.text.strip()
                        found[sha] = (new[sha], "captioner")
                if new and self.cache is not None:
                    self.cache.put_many(self.captioner_id, self.captioner_identity, new)
        return found, failed, req_errors

    # ---- the contract ------------------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[Response]:
        if not requests:
            return []
        found, failed, req_errors = self.captions_for(requests)
        out: dict[str, Response] = {}
        llm_reqs: list[Request] = []
        logged: dict[str, dict[str, Any]] = {}
        for r in requests:
            if r.key in req_errors:
                out[r.key] = Response(r.key, error=req_errors[r.key], extra={"caption": None})
                continue
            audios = r.audio()
            shas = [a.sha256() for a in audios]
            errs = [failed[s] for s in shas if s in failed]
            if errs:
                out[r.key] = Response(r.key, error=f"captioner: {errs[0]}", extra={"caption": None})
                continue
            caps = [found[s] for s in shas]
            n, i = len(audios), 0
            messages = []
            for m in r.messages:
                content = m["content"]
                if isinstance(content, str):
                    messages.append(m)
                    continue
                parts = []
                for p in content:
                    if p["type"] == "audio":
                        cap = caps[i][0] or EMPTY_CAPTION_TEXT
                        i += 1
                        text = (CAPTION_TEMPLATE.format(caption=cap) if n == 1
                                else CAPTION_TEMPLATE_N.format(n=i, caption=cap))
                        parts.append({"type": "text", "text": text})
                    else:
                        parts.append(p)
                messages.append({**m, "content": parts})
            llm_reqs.append(Request(r.key, messages, r.generation))
            for _, src in caps:
                self.sources[src] += 1
            logged[r.key] = {"caption": caps[0][0] if n == 1 else [c for c, _ in caps] if n else None,
                             "caption_source": (caps[0][1] if n == 1 else [s for _, s in caps]) if n else None}
        if llm_reqs:
            t0 = time.perf_counter()
            try:
                got = {x.key: x for x in self._llm.model.generate(llm_reqs)}
            except Exception as e:
                got = {q.key: Response(q.key, error=f"llm: {type(e).__name__}: {e}") for q in llm_reqs}
            per = (time.perf_counter() - t0) / len(llm_reqs)
            for q in llm_reqs:
                resp = got.get(q.key) or Response(q.key, error="llm returned no response")
                out[q.key] = Response(q.key, text=resp.text, error=resp.error,
                                      latency_s=resp.latency_s if resp.latency_s is not None else per,
                                      extra={**resp.extra, **logged[q.key]})
        return [out[r.key] for r in requests]

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"captioner": json.loads(self.captioner_identity), "captioner_id": self.captioner_id,
                               "llm": self._llm.identity(), "caption_sources": dict(self.sources),
                               "captioner_calls": self.captioner_calls,
                               "cache": str(self.cache.path) if self.cache else None}
        if self.captions_file:
            out["captions_file"] = {"path": str(self.captions_file.path), "sha256": self.captions_file.sha256,
                                    "n": self.captions_file.n}
        for name, holder in (("captioner_info", self._captioner), ("llm_info", self._llm)):
            if holder._model is not None:
                try:
                    out[name] = holder.model.info()
                except Exception as e:
                    out[name] = {"error": str(e)}
        return out

    def close(self) -> None:
        self._captioner.close()
        self._llm.close()
        if self.cache is not None:
            self.cache.close()


__all__ = ["CAPTION_PROMPT", "EMPTY_CAPTION_TEXT", "CaptionCache", "CaptionsFile", "Cascade", "CascadeConfig", "parse_spec"]
