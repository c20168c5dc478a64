"""Text-only LLMs: AKB-2000 probing and the cascade's second stage.

    evalkit run --model text -M model=Qwen/Qwen2.5-7B-Instruct --task akb2000              # hf (default)
    evalkit run --model text -M backend=vllm -M model=Qwen/Qwen2.5-7B-Instruct --task akb2000
    evalkit run --model text -M backend=openai -M model=gpt-4o-mini --task akb2000
    evalkit run --model text -M backend=openai -M base_url=http://127.0.0.1:8000/v1 -M model=qwen ...

Backends (`-M backend=hf|vllm|openai`):
  hf      transformers AutoModelForCausalLM + AutoTokenizer through evalkit.models.hf_common (`-M model=HUB_ID [-M revision=...]` or
          `-M path=DIR`), left-padded batches of `batch_size`, greedy at temperature 0 (sampling
          with the request's temperature/top_p and a seeded generator otherwise). Kept deliberately
          minimal: no quantization or multi-GPU sharding beyond `device` (`auto`: cuda if
          available) and `dtype`.
          `-M gguf_file=NAME` loads tokenizer and model from one GGUF file in the folder / hub repo
          (transformers' GGUF loading; needs `pip install 'gguf>=0.10'`). transformers dequantizes
          every tensor to float (`dtype`), so a GGUF model takes the memory of an unquantized one,
          and a quantization gguf-py cannot dequantize fails with a message listing those it can.
          Prompt format (`-M prompt_format=auto|chat_template|plain`; run.json's model info records
          the one used as `prompt_format`):
            chat_template  the tokenizer's chat template with `add_generation_prompt=True`,
                           tokenized without adding special tokens (the template writes them).
                           `auto` picks it when the tokenizer has a template.
            plain          the plain prompt format: each message's text in order (system first),
                           no role names, separated by one blank line, ending with a newline;
                           tokenized with the special tokens the tokenizer puts before a sequence
                           (e.g. <bos>: Gemma and Llama produce garbage without it) and without
                           those it puts after one (a prompt ending in </s> asks for nothing).
                           Recorded as "plain+special_tokens", the prefix as
                           `prompt_prefix_tokens`. `auto` picks it when there is no template.
  vllm    vLLM's offline engine with text prompts (the chat template through
          evalkit.models.vllm_audio, family "generic"); `-M vllm='{"tensor_parallel_size": 2}'`
          passes any other vllm adapter setting. Needs `pip install 'evalkit[vllm]'`.
  openai  any OpenAI-compatible endpoint via evalkit.models.openai_compat in text-only mode
          (audio=false): `-M model=...`, `-M base_url=...`, `-M api_key_env=...`, `-M concurrency=N`,
          `-M openai='{"max_retries": 3}'` for any other setting.
Capabilities are {"text"}: the runner refuses an audio task unless `--no-audio` (the explicit
no-audio ablation) drops the audio; an audio part that still reaches the adapter is refused per
request. backend=hf adds "steer" (`--strategy steer`, evalkit.models.hf_common.Steerable: the
steering prompts are rendered as `render` renders a request). `system_prompt` adds a system message
when a request has none.
"""
from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from evalkit.models.base import AdapterConfig, Model
from evalkit.models.hf_common import Steerable
from evalkit.types import GenerationConfig, Request, Response

AUDIO_REFUSED = ("audio part sent to a text-only model: run the task with --no-audio (the explicit "
                 "no-audio ablation) or use an audio model / the cascade")


class TextLLMConfig(AdapterConfig):
    backend: Literal["hf", "vllm", "openai"] = "hf"
    #: hub id (hf, vllm) or served model name (openai)
    model: str | None = None
    #: a local model folder (hf, vllm)
    path: str | None = None
    revision: str | None = None
    #: a GGUF file inside `path` (or the hub repo `model`) holding tokenizer and weights (hf)
    gguf_file: str | None = None
    #: auto: the chat template when the tokenizer has one, else the plain format (hf)
    prompt_format: Literal["auto", "chat_template", "plain"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: str = "auto"
    batch_size: int = Field(8, ge=1)
    trust_remote_code: bool = False
    system_prompt: str | None = None
    # openai backend
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)
    #: extra settings for the backend's own config (validated by it)
    vllm: dict[str, Any] = Field(default_factory=dict)
    openai: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> TextLLMConfig:
        b = self.backend
        if b in ("hf", "vllm") and not (self.model or self.path):
            raise ValueError(f"backend={b} needs -M model=HUB_ID or -M path=DIR")
        if b == "openai" and not self.model:
            raise ValueError("backend=openai needs -M model=NAME (the served model)")
        if b == "openai" and self.path:
            raise ValueError("backend=openai takes no path (the model is served elsewhere)")
        if self.vllm and b != "vllm":
            raise ValueError(f"-M vllm=... applies to backend=vllm only (backend is {b})")
        if self.openai and b != "openai":
            raise ValueError(f"-M openai=... applies to backend=openai only (backend is {b})")
        if b != "openai" and self.base_url:
            raise ValueError(f"-M base_url=... applies to backend=openai only (backend is {b})")
        if b != "hf" and self.gguf_file:
            raise ValueError(f"-M gguf_file=... applies to backend=hf only (backend is {b}); vLLM takes a "
                             "GGUF file as -M model=PATH.gguf")
        if b != "hf" and self.prompt_format != "auto":
            raise ValueError(f"-M prompt_format=... applies to backend=hf only (backend is {b})")
        g = self.gguf_file
        if g is not None and (not g.lower().endswith(".gguf") or g.startswith(("/", "\\", "~"))
                              or ".." in g.replace("\\", "/").split("/")):
            raise ValueError(f"-M gguf_file={g!r}: expected the name of a .gguf file inside -M path=DIR "
                             "(or inside the hub repo -M model=ID), relative to it")
        if b == "vllm":
            self.vllm_config()  # typos in -M vllm={...} fail at load
        if b == "openai":
            self.openai_config()
        return self

    def vllm_config(self):
        from evalkit.models.vllm_audio import VLLMConfig

        args = {"model": self.path or self.model, "dtype": self.dtype,
                "trust_remote_code": self.trust_remote_code, "family": "generic",
                "limit_mm_per_prompt": {"audio": 0}, **self.vllm}
        if self.revision and not self.path:
            args.setdefault("revision", self.revision)
        return VLLMConfig(**args)

    def openai_config(self):
        from evalkit.models.openai_compat import OpenAIConfig

        args: dict[str, Any] = {"model": self.model, "api_key_env": self.api_key_env,
                                "concurrency": self.concurrency, **self.openai, "audio": False}
        if self.base_url:
            args["base_url"] = self.base_url
        return OpenAIConfig(**args)


def plain_messages(req: Request, system_prompt: str | None = None) -> list[dict[str, str]]:
    """Chat messages with string content (text parts joined by newlines); audio is refused."""
    out = []
    for m in req.messages:
        content = m["content"]
        if isinstance(content, str):
            out.append({"role": m["role"], "content": content})
            continue
        texts = []
        for p in content:
            if p["type"] == "audio":
                raise ValueError(AUDIO_REFUSED)
            if p["type"] != "text":
                raise ValueError(f"unsupported content part type {p['type']!r}")
            texts.append(p["text"])
        out.append({"role": m["role"], "content": "\n".join(texts)})
    if system_prompt and not (out and out[0]["role"] == "system"):
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def _with_system(req: Request, system_prompt: str | None) -> Request:
    if not system_prompt or (req.messages and req.messages[0]["role"] == "system"):
        return req
    sys_msg = {"role": "system", "content": [{"type": "text", "text": system_prompt}]}
    return Request(req.key, [sys_msg, *req.messages], req.generation)


PLAIN_FORMAT = "plain+special_tokens"
CHAT_FORMAT = "chat_template"


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """The plain prompt format (tokenizers without a chat template): each message's text in order,
    no role names, separated by one blank line, ending with a newline."""
    return "\n\n".join(m["content"] for m in messages) + "\n"


def special_prefix(tok) -> list[int]:
    """The special-token ids the tokenizer puts before a single sequence (e.g. [<bos>]), found by
    encoding a probe with and without special tokens. Ids it appends after the text (e.g. </s>) are
    not part of it: a generation prompt must not end the sequence."""
    probe = "a"
    bare = tok(probe, add_special_tokens=False)["input_ids"]
    full = tok(probe, add_special_tokens=True)["input_ids"]
    n = len(bare)
    for k in range(len(full) - n + 1):
        if full[k:k + n] == bare:
            return list(full[:k])
    raise ValueError(f"cannot tell which special tokens the tokenizer adds: {probe!r} encodes as {bare} without "
                     f"and {full} with special tokens; pass -M prompt_format=chat_template with a tokenizer that "
                     "has a chat template")


class _HFBackend:
    """transformers, through the shared plumbing in evalkit.models.hf_common (device/dtype rules,
    loading and its error policy, left-padded batched generation)."""

    def __init__(self, c: TextLLMConfig):
        from evalkit.models import hf_common as hc

        _, transformers = hc.import_hf()
        self.c, self.hc = c, hc
        src, local = (c.path, True) if c.path else (c.model, False)
        common: dict[str, Any] = {"hub_id": c.model, "revision": c.revision, "local_path": local,
                                  "trust_remote_code": c.trust_remote_code or None}
        if c.gguf_file:
            common["gguf_file"] = c.gguf_file
        self.tok = hc.load_pretrained(transformers.AutoTokenizer, src, what="tokenizer", **common)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        has_template = bool(getattr(self.tok, "chat_template", None))
        if c.prompt_format == "chat_template" and not has_template:
            raise ValueError(f"-M prompt_format=chat_template but the tokenizer of {src!r} has no chat template; "
                             "use -M prompt_format=plain (or auto)")
        self.prompt_format = CHAT_FORMAT if c.prompt_format == "chat_template" or (
            c.prompt_format == "auto" and has_template) else PLAIN_FORMAT
        self.prefix_ids = special_prefix(self.tok) if self.prompt_format == PLAIN_FORMAT else []
        self.device = hc.resolve_device(c.device)
        self.dtype = hc.resolve_dtype(c.dtype, self.device)
        self.model = hc.load_pretrained(transformers.AutoModelForCausalLM, src, what="model", dtype=self.dtype,
                                        **common).to(self.device).eval()

    def render(self, req: Request) -> str:
        msgs = plain_messages(req)
        if self.prompt_format == CHAT_FORMAT:
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return plain_prompt(msgs)

    def encode(self, prompts: list[str]) -> dict[str, Any]:
        """Rendered prompts -> left-padded input_ids + attention_mask (torch, on the CPU). A chat
        template writes its own special tokens; a plain prompt gets the tokenizer's prefix (<bos>)."""
        if self.prompt_format == CHAT_FORMAT:
            return dict(self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False))
        ids = [self.prefix_ids + self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        return dict(self.tok.pad({"input_ids": ids}, padding=True, return_tensors="pt", return_attention_mask=True))

    def _batch(self, prompts: list[str], g: GenerationConfig) -> list[str]:
        inputs = {k: v.to(self.device) for k, v in self.encode(prompts).items()}
        texts, _ = self.hc.generate_batch(self.model, self.tok, inputs, g)
        return texts

    def info(self) -> dict[str, Any]:
        hc = self.hc
        out: dict[str, Any] = {"dtype": hc.dtype_name(self.dtype), "device": self.device,
                               "commit": hc.resolved_commit(self.model), "prompt_format": self.prompt_format}
        if self.prompt_format == PLAIN_FORMAT:
            out["prompt_prefix_tokens"] = self.tok.convert_ids_to_tokens(self.prefix_ids)
        if self.c.gguf_file:
            out["gguf_file"] = self.c.gguf_file
            out["gguf_dequantized_to"] = hc.dtype_name(self.dtype)
        return out

    def generate(self, requests: list[Request]) -> list[Response]:
        out: dict[str, Response] = {}
        groups: dict[tuple, list[tuple[Request, str]]] = {}
        for r in requests:
            try:
                prompt = self.render(r)
                groups.setdefault(tuple(r.generation.to_dict().items()), []).append((r, prompt))
            except ValueError as e:
                out[r.key] = Response(r.key, error=str(e))
            except Exception as e:
                out[r.key] = Response(r.key, error=f"{type(e).__name__}: {e}")
        bs = self.c.batch_size
        for items in groups.values():
            g = items[0][0].generation
            for i in range(0, len(items), bs):
                chunk = items[i:i + bs]
                t0 = time.perf_counter()
                try:
                    texts = self._batch([p for _, p in chunk], g)
                except Exception as e:
                    for r, _ in chunk:
                        out[r.key] = Response(r.key, error=f"{type(e).__name__}: {e}")
                    continue
                per = (time.perf_counter() - t0) / len(chunk)
                for (r, _), t in zip(chunk, texts):
                    out[r.key] = Response(r.key, text=t, latency_s=per)
        return [out[r.key] for r in requests]

    def close(self) -> None:
        self.model = None


class _RefusingAudio:
    """Wraps a backend adapter: requests with audio become error Responses, never sent."""

    def __init__(self, inner: Model):
        self.inner = inner

    def generate(self, requests: list[Request]) -> list[Response]:
        bad = {r.key for r in requests if r.audio()}
        good = [r for r in requests if r.key not in bad]
        got = {x.key: x for x in self.inner.generate(good)} if good else {}
        return [Response(r.key, error=AUDIO_REFUSED) if r.key in bad
                else got.get(r.key) or Response(r.key, error="backend returned no response") for r in requests]

    def close(self) -> None:
        self.inner.close()


class TextLLM(Steerable, Model):
    name: ClassVar[str] = "text"
    description: ClassVar[str] = "text-only LLM (backend=hf|vllm|openai): AKB-2000 probing, cascade second stage"
    source: ClassVar[str] = "transformers / vLLM / OpenAI-compatible endpoint"
    capabilities: ClassVar[frozenset[str]] = frozenset({"text", "steer"})  # steer: backend=hf only
    Config: ClassVar[type[AdapterConfig]] = TextLLMConfig
    sample_rate: ClassVar[int | None] = None
    needs_audio: ClassVar[bool] = False
    default_batch_size: ClassVar[int] = 8
    volatile_args: ClassVar[frozenset[str]] = frozenset({"batch_size", "concurrency", "device"})

    config: TextLLMConfig

    def __init__(self, config: TextLLMConfig):
        super().__init__(config)
        c = config
        self._backend: Any
        self.capabilities = self.capabilities_for(c)
        if c.backend == "hf":
            self._backend = _HFBackend(c)
            self.preferred_batch_size = c.batch_size
        elif c.backend == "vllm":
            from evalkit.models.vllm_audio import VLLMAudio

            inner = VLLMAudio(c.vllm_config())
            self._backend = _RefusingAudio(inner)
            self.preferred_batch_size = inner.preferred_batch_size
        else:
            from evalkit.models.openai_compat import OpenAICompatible

            inner = OpenAICompatible(c.openai_config())
            self._backend = _RefusingAudio(inner)
            self.preferred_batch_size = inner.preferred_batch_size

    @classmethod
    def capabilities_for(cls, config: TextLLMConfig) -> frozenset[str]:
        return cls.capabilities if config.backend == "hf" else cls.capabilities - {"steer"}

    def _steer_model(self):
        if not isinstance(self._backend, _HFBackend):
            raise ValueError(f"--strategy steer needs backend=hf (backend is {self.config.backend})")
        return self._backend.model

    def _steer_inputs(self, request: Request, continuation: str) -> dict[str, Any]:
        self._steer_model()  # backend=hf, or the error naming it
        b = self._backend
        prompt = b.render(_with_system(request, self.config.system_prompt)) + continuation
        return {k: v.to(b.device) for k, v in b.encode([prompt]).items()}

    def generate(self, requests: list[Request]) -> list[Response]:
        if not requests:
            return []
        sp = self.config.system_prompt
        return self._backend.generate([_with_system(r, sp) for r in requests])

    def info(self) -> dict[str, Any]:
        c = self.config
        out: dict[str, Any] = {"backend": c.backend, "model": c.model, "path": c.path, "revision": c.revision}
        inner = getattr(self._backend, "inner", None)
        if inner is not None:
            try:
                out["backend_info"] = inner.info()
            except Exception as e:
                out["backend_info"] = {"error": str(e)}
        elif c.backend == "hf":
            out.update(self._backend.info())
        return out

    def close(self) -> None:
        self._backend.close()


__all__ = ["TextLLM", "TextLLMConfig", "plain_messages", "plain_prompt", "special_prefix"]
