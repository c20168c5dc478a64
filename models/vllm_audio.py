"""Audio LLMs served by vLLM's offline engine (`LLM.generate`), the whole task at once.

    evalkit run --model vllm -M model=Qwen/Qwen2-Audio-7B-Instruct --task mmau
    evalkit run --model vllm -M model=Qwen/Qwen2.5-Omni-7B -M max_model_len=8192 --task mmar
    evalkit run --model vllm -M model=fixie-ai/ultravox-v0_5-llama-3_2-1b --task mmsu
    evalkit run --model vllm -M model=/ckpt/my-lalm -M family=generic -M audio_placeholder='<audio>' ...

Needs the `vllm` extra (`pip install 'evalkit[vllm]'`); `import evalkit.models.vllm_audio`
never imports vllm, only building the adapter does (a missing vllm is a clear error).

Prompts. Each family gets its own prompt format, matching vLLM's
`examples/generate/multimodal/audio_language_offline.py` (formerly `examples/offline_inference/
audio_language.py`) and the models' Hugging Face chat templates;
the audio goes in `multi_modal_data={"audio": [(array, sample_rate), ...]}` in the order of
the placeholders:
  qwen2_audio   ChatML, default system "You are a helpful assistant.", each audio part as
                "Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>\\n" (the HF template's form)
  qwen2_5_omni  ChatML with the Omni system prompt (the model is trained with it), each audio
                as "<|audio_bos|><|AUDIO|><|audio_eos|>\\n"; decoding is greedy unless the run
                asks otherwise (Qwen2.5-Omni samples by default elsewhere; never here)
  ultravox      the tokenizer's chat template, each audio part as "<|audio|>\\n"
  audio_flamingo_3  ChatML, system "You are a helpful assistant.", each audio part as "<sound>"
                (no newline), as vLLM's example for nvidia/audio-flamingo-3-hf
  midashenglm   ChatML, system "You are a helpful language and speech assistant.", each audio part
                as "<|audio_bos|><|AUDIO|><|audio_eos|>" (no newline), as vLLM's example
  voxtral       mistral-common's chat encoding of the request (`prompt_token_ids` + the encoded audios)
                and vLLM's Mistral formats (tokenizer_mode/config_format/load_format "mistral"), as
                vLLM's example; the tokenizer is the snapshot's tekken.json
  generic       the tokenizer's chat template, each audio part as `-M audio_placeholder=...`
                (required when a request carries audio; e.g. "<audio>" for a custom model)
`family=auto` (default) picks by model name, then by the hf config's `model_type` once the
engine is loaded. A system message in the request replaces the family's default system prompt.
Request building (`build_vllm_input`) is a pure function, tested without vLLM.

Batching. `preferred_batch_size` is huge, so the runner hands the whole task (or shard) over
in one call and vLLM's scheduler does the batching (continuous batching, prefix caching);
per-request SamplingParams come from each Request's GenerationConfig (temperature 0 -> greedy,
seed passed through). If one prompt makes `LLM.generate` raise (e.g. longer than
max_model_len), the batch is retried one request at a time so only that sample is an error.

Scaling out:
  - one GPU:   defaults.
  - one big model over several GPUs / nodes: `-M tensor_parallel_size=8
    -M pipeline_parallel_size=2 -M distributed_executor_backend=ray` — vLLM's own distributed
    executor. Across nodes start a Ray cluster first (`ray start --head` on one node,
    `ray start --address=HEAD:6379` on the others, same Python env and model path everywhere)
    and run evalkit on the head node; tensor parallel within a node, pipeline parallel across.
  - data parallel on one node: `-M data_parallel_size=N` starts N engine processes here, each
    on its own `tensor_parallel_size x pipeline_parallel_size` GPUs (CUDA_VISIBLE_DEVICES
    slices); requests are dealt round-robin. (vLLM's `LLM(data_parallel_size=N)` is not
    supported for offline use, so the adapter runs one engine per process itself.)
  - data parallel across machines: `evalkit run ... --shard I/N` on each machine (same
    command, I = 1..N), then `evalkit merge RUN_DIR_1 ... RUN_DIR_N --out DIR` (see
    evalkit/results/merge.py): the shards share one run id, and the merged run equals an unsharded one.
"""
from __future__ import annotations

import atexit
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from evalkit.models.base import AdapterConfig, Model
from evalkit.types import GenerationConfig, Request, Response

INSTALL_HINT = "pip install 'evalkit[vllm]'"
Family = Literal["auto", "qwen2_audio", "qwen2_5_omni", "ultravox", "audio_flamingo_3", "midashenglm", "voxtral",
                 "generic"]

QWEN2_AUDIO_SYSTEM = "You are a helpful assistant."
QWEN2_5_OMNI_SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
                       "perceiving auditory and visual inputs, as well as generating text and speech.")
QWEN_AUDIO_TOKENS = "<|audio_bos|><|AUDIO|><|audio_eos|>"
ULTRAVOX_PLACEHOLDER = "<|audio|>"
AF3_SYSTEM = "You are a helpful assistant."
AF3_PLACEHOLDER = "<sound>"  # no newline after it (vLLM's audio example)
MIDASHENGLM_SYSTEM = "You are a helpful language and speech assistant."

#: (pattern on the model name / path, family), first match wins
_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"qwen2[._-]?5[._-]?omni", "qwen2_5_omni"),
    (r"qwen2[._-]?audio", "qwen2_audio"),
    (r"ultravox", "ultravox"),
    (r"audio[._-]?flamingo[._-]?3", "audio_flamingo_3"),
    (r"midashenglm", "midashenglm"),
    (r"voxtral", "voxtral"),
)
#: hf config model_type -> family
_MODEL_TYPES = {"qwen2_audio": "qwen2_audio", "qwen2_5_omni": "qwen2_5_omni",
                "qwen2_5_omni_thinker": "qwen2_5_omni", "ultravox": "ultravox",
                "audioflamingo3": "audio_flamingo_3", "midashenglm": "midashenglm", "voxtral": "voxtral"}
#: Voxtral runs in vLLM's Mistral formats (vLLM's audio example); the prompt is token ids from mistral-common
MISTRAL_ENGINE_ARGS = {"tokenizer_mode": "mistral", "config_format": "mistral", "load_format": "mistral"}

#: families whose models also take images and videos
_VISION_FAMILIES = frozenset({"qwen2_5_omni"})

ChatTemplate = Callable[[list[dict[str, str]]], str]


class VLLMMissingError(ImportError):
    pass


class VLLMRequestError(ValueError):
    """A request that cannot be turned into a vLLM input; becomes that sample's error."""


def require_vllm(needed_by: str = "the 'vllm' model adapter",
                 requirement: str = "Linux with a CUDA GPU; see https://docs.vllm.ai", alternative: str = "") -> Any:
    """`import vllm`, or a VLLMMissingError naming who needs it, the extra to install and any alternative."""
    try:
        import vllm
    except ImportError as e:
        raise VLLMMissingError(
            f"{needed_by} needs vLLM, which is not installed ({e}): {INSTALL_HINT} ({requirement}){alternative}") from None
    return vllm


class VLLMConfig(AdapterConfig):
    model: str
    revision: str | None = None
    family: Family = "auto"
    #: placeholder for one audio part in the `generic` family (e.g. "<audio>")
    audio_placeholder: str | None = None
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    #: "ray" for multi-node tensor/pipeline parallel; None lets vLLM choose
    distributed_executor_backend: Literal["ray", "mp", "uni", "external_launcher"] | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    dtype: str = "auto"
    limit_mm_per_prompt: dict[str, int] = Field(default_factory=lambda: {"audio": 1})
    trust_remote_code: bool = False
    enforce_eager: bool = False
    seed: int = 0
    #: any other vllm.EngineArgs field, passed through (e.g. {"max_num_seqs": 64})
    engine_args: dict[str, Any] = Field(default_factory=dict)


# ---- family and prompt building (pure; no vLLM) --------------------------------------------
def detect_family(model: str, model_type: str | None = None) -> str:
    if model_type and model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    low = model.lower()
    for pattern, family in _NAME_PATTERNS:
        if re.search(pattern, low):
            return family
    return "generic"


def _text_of(parts: list[dict[str, Any]], audio: Callable[[int], str], audios: list[Any]) -> str:
    """Render one message's parts in order: audio parts through `audio(n)` (n = 1-based count
    over the request), consecutive text parts joined by a newline."""
    out: list[str] = []
    prev_text = False
    for p in parts:
        if p["type"] == "audio":
            audios.append(p["audio"])
            out.append(audio(len(audios)))
            prev_text = False
        elif p["type"] == "text":
            if prev_text:
                out.append("\n")
            out.append(p["text"])
            prev_text = True
        else:
            raise VLLMRequestError(f"unsupported content part type {p['type']!r}")
    return "".join(out)


def _parts(m: dict[str, Any]) -> list[dict[str, Any]]:
    c = m["content"]
    return [{"type": "text", "text": c}] if isinstance(c, str) else c


def _chatml(req: Request, default_system: str, audio: Callable[[int], str]) -> tuple[str, list[Any]]:
    audios: list[Any] = []
    msgs = req.messages
    out = []
    if not msgs or msgs[0]["role"] != "system":
        out.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    for m in msgs:
        out.append(f"<|im_start|>{m['role']}\n{_text_of(_parts(m), audio, audios)}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out), audios


def _templated(req: Request, placeholder: str | None, chat_template: ChatTemplate | None,
               family: str) -> tuple[str, list[Any]]:
    if chat_template is None:
        raise VLLMRequestError(f"family {family!r} needs the tokenizer's chat template (chat_template=...)")
    audios: list[Any] = []

    def audio(n: int) -> str:
        if placeholder is None:
            raise VLLMRequestError(
                "the generic family needs -M audio_placeholder=... (the model's audio token, e.g. '<audio>') "
                "for requests with audio; or set -M family=qwen2_audio|qwen2_5_omni|ultravox|audio_flamingo_3|midashenglm")
        return placeholder + "\n"

    msgs = [{"role": m["role"], "content": _text_of(_parts(m), audio, audios)} for m in req.messages]
    return chat_template(msgs), audios


def build_prompt(req: Request, family: str, chat_template: ChatTemplate | None = None,
                 audio_placeholder: str | None = None) -> tuple[str, list[Any]]:
    """(prompt text, the request's AudioRefs in placeholder order)."""
    if family == "qwen2_audio":
        return _chatml(req, QWEN2_AUDIO_SYSTEM, lambda n: f"Audio {n}: {QWEN_AUDIO_TOKENS}\n")
    if family == "qwen2_5_omni":
        return _chatml(req, QWEN2_5_OMNI_SYSTEM, lambda n: f"{QWEN_AUDIO_TOKENS}\n")
    if family == "audio_flamingo_3":
        return _chatml(req, AF3_SYSTEM, lambda n: AF3_PLACEHOLDER)
    if family == "midashenglm":
        return _chatml(req, MIDASHENGLM_SYSTEM, lambda n: QWEN_AUDIO_TOKENS)
    if family == "ultravox":
        return _templated(req, ULTRAVOX_PLACEHOLDER, chat_template, family)
    if family == "generic":
        return _templated(req, audio_placeholder, chat_template, family)
    raise VLLMRequestError(f"unknown family {family!r}")


def mistral_tokens(req: Request, tokenizer: Any, sample_rate: int | None = 16000) -> tuple[list[int], list[Any]]:
    """Voxtral: (prompt token ids, [(array, sr)] in order) from mistral-common's chat encoding, the form
    vLLM's audio example passes (`prompt_token_ids` + the encoded audios)."""
    from mistral_common.protocol.instruct.chunk import AudioChunk, TextChunk
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.audio import Audio

    def text(parts: list[dict[str, Any]]) -> str:
        if any(p["type"] != "text" for p in parts):
            raise VLLMRequestError("voxtral: audio is only accepted in user messages")
        return "\n".join(p["text"] for p in parts)

    messages: list[Any] = []
    for m in req.messages:
        parts = _parts(m)
        if m["role"] == "system":
            messages.append(SystemMessage(content=text(parts)))
        elif m["role"] == "assistant":
            messages.append(AssistantMessage(content=text(parts)))
        else:
            chunks: list[Any] = []
            for p in parts:
                if p["type"] == "audio":
                    x, sr = p["audio"].load(sample_rate)
                    chunks.append(AudioChunk.from_audio(Audio(audio_array=x, sampling_rate=sr, format="wav")))
                elif p["type"] == "text":
                    chunks.append(TextChunk(text=p["text"]))
                else:
                    raise VLLMRequestError(f"unsupported content part type {p['type']!r}")
            messages.append(UserMessage(content=chunks))
    encoded = tokenizer.encode_chat_completion(ChatCompletionRequest(messages=messages))
    return list(encoded.tokens), [(a.audio_array, a.sampling_rate) for a in encoded.audios]


def build_vllm_input(req: Request, family: str, sample_rate: int | None = 16000,
                     chat_template: ChatTemplate | None = None, audio_placeholder: str | None = None,
                     max_audio: int | None = None, mistral_tokenizer: Any = None) -> dict[str, Any]:
    """One Request -> a vLLM prompt dict {"prompt": str, "multi_modal_data": {"audio": [(x, sr)]}}
    (no multi_modal_data for a text-only request); for Voxtral {"prompt_token_ids": [...], ...}."""
    n_audio = sum(p["type"] == "audio" for m in req.messages for p in _parts(m))
    if max_audio is not None and n_audio > max_audio:
        raise VLLMRequestError(
            f"request has {n_audio} audio parts but limit_mm_per_prompt allows {max_audio}; "
            f"raise it with -M limit_mm_per_prompt='{{\"audio\": {n_audio}}}'")
    if family == "voxtral":
        if mistral_tokenizer is None:
            raise VLLMRequestError("family 'voxtral' needs the model's mistral-common tokenizer (tekken.json)")
        ids, loaded = mistral_tokens(req, mistral_tokenizer, sample_rate)
        out: dict[str, Any] = {"prompt_token_ids": ids}
    else:
        prompt, audios = build_prompt(req, family, chat_template, audio_placeholder)
        out, loaded = {"prompt": prompt}, [tuple(a.load(sample_rate)) for a in audios]
    if loaded:
        out["multi_modal_data"] = {"audio": loaded}
    return out


def sampling_kwargs(g: GenerationConfig) -> dict[str, Any]:
    """vllm.SamplingParams(**kwargs) for a GenerationConfig: temperature 0 is greedy."""
    kw: dict[str, Any] = {"max_tokens": g.max_new_tokens, "n": 1}
    if g.temperature <= 0:
        kw.update(temperature=0.0, top_p=1.0, top_k=-1)  # explicit: never the model's sampling defaults
    else:
        kw.update(temperature=g.temperature, top_p=g.top_p)
    if g.seed is not None:
        kw["seed"] = g.seed
    return kw


def engine_kwargs(c: VLLMConfig) -> dict[str, Any]:
    """vllm.LLM(**kwargs) for one engine (one data-parallel rank)."""
    limits = dict(c.limit_mm_per_prompt)
    if (c.family if c.family != "auto" else detect_family(c.model)) in _VISION_FAMILIES:
        # audio-only evaluation: an unset modality means 999 items to vLLM, whose memory profiling would then
        # reserve room for images and videos (vLLM's own audio example sets both to 0)
        for modality in ("image", "video"):
            limits.setdefault(modality, 0)
    kw: dict[str, Any] = {
        "model": c.model, "revision": c.revision, "tensor_parallel_size": c.tensor_parallel_size,
        "pipeline_parallel_size": c.pipeline_parallel_size, "gpu_memory_utilization": c.gpu_memory_utilization,
        "dtype": c.dtype, "limit_mm_per_prompt": limits,
        "trust_remote_code": c.trust_remote_code, "enforce_eager": c.enforce_eager, "seed": c.seed,
    }
    if c.max_model_len is not None:
        kw["max_model_len"] = c.max_model_len
    if c.distributed_executor_backend is not None:
        kw["distributed_executor_backend"] = c.distributed_executor_backend
    if c.revision is None:
        del kw["revision"]
    if (c.family if c.family != "auto" else detect_family(c.model)) == "voxtral":
        kw.update(MISTRAL_ENGINE_ARGS)
    kw.update(c.engine_args)
    return kw


# ---- execution -------------------------------------------------------------------------------
def _output_result(o: Any) -> dict[str, Any]:
    best = o.outputs[0]
    return {"text": best.text, "extra": {
        "finish_reason": getattr(best, "finish_reason", None),
        "prompt_tokens": len(getattr(o, "prompt_token_ids", None) or []),
        "completion_tokens": len(getattr(best, "token_ids", None) or []),
    }}


def _error(e: Exception) -> dict[str, Any]:
    return {"error": f"{type(e).__name__}: {str(e)[:500]}"}


def generate_isolated(llm: Any, inputs: list[Any], params: list[dict[str, Any]], make_params: Callable[..., Any],
                      to_result: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """`llm.generate` over all inputs in one call, one result per input. A request whose settings vLLM
    refuses when its SamplingParams is built (temperature > 2, top_p outside (0, 1], ...) becomes that
    request's {"error"}; if the batch call raises, the requests are retried one at a time so only the
    failing ones become errors. make_params(**params[i]) builds request i's SamplingParams."""
    results: list[dict[str, Any] | None] = [None] * len(inputs)
    ok, todo, sps = [], [], []
    for i, (x, kw) in enumerate(zip(inputs, params, strict=True)):
        try:
            sps.append(make_params(**kw))
        except Exception as e:
            results[i] = _error(e)
            continue
        ok.append(i)
        todo.append(x)
    if not todo:
        return results  # type: ignore[return-value]
    try:
        for i, o in zip(ok, llm.generate(todo, sps, use_tqdm=False), strict=True):
            results[i] = to_result(o)
        return results  # type: ignore[return-value]
    except Exception as e:
        if len(todo) == 1:  # nothing to isolate: this request is the one the engine rejected
            results[ok[0]] = _error(e)
            return results  # type: ignore[return-value]
    for i, x, sp in zip(ok, todo, sps):
        try:
            results[i] = to_result(llm.generate([x], [sp], use_tqdm=False)[0])
        except Exception as e:
            results[i] = _error(e)
    return results  # type: ignore[return-value]


class LocalEngine:
    """One vllm.LLM in this process."""

    def __init__(self, kwargs: dict[str, Any]):
        vllm = require_vllm()
        self._vllm = vllm
        self.llm = vllm.LLM(**kwargs)

    def model_type(self) -> str | None:
        try:
            return self.llm.llm_engine.model_config.hf_config.model_type
        except Exception:
            return None

    def chat_template(self) -> ChatTemplate:
        tok = self.llm.get_tokenizer()
        return lambda msgs: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def run(self, inputs: list[dict[str, Any]], params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per input: {"text", "extra"} or {"error"}."""
        return generate_isolated(self.llm, inputs, params, self._vllm.SamplingParams, _output_result)

    def close(self) -> None:
        self.llm = None


def _dp_worker(rank: int, kwargs: dict[str, Any], gpus: str | None, conn) -> None:
    import os

    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    try:
        engine = LocalEngine(kwargs)
        conn.send(("ready", {"model_type": engine.model_type()}))
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    tok = None
    while True:
        msg = conn.recv()
        if msg is None:
            break
        op, payload = msg
        try:
            if op == "template":
                if tok is None:
                    tok = engine.llm.get_tokenizer()
                conn.send(("ok", [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                                  for m in payload]))
            else:
                conn.send(("ok", engine.run(*payload)))
        except BaseException as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))


class DataParallelEngine:
    """N engine processes (spawned), each on its own slice of GPUs; requests dealt round-robin."""

    def __init__(self, kwargs: dict[str, Any], size: int, gpus_per_rank: int):
        import multiprocessing as mp
        import os

        ctx = mp.get_context("spawn")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = [d for d in visible.split(",") if d] if visible else None
        if devices is None:
            try:
                import torch

                devices = [str(i) for i in range(torch.cuda.device_count())] or None
            except Exception:
                devices = None
        if devices is not None and len(devices) < size * gpus_per_rank:
            raise RuntimeError(f"data_parallel_size={size} x {gpus_per_rank} GPU(s) per engine needs "
                               f"{size * gpus_per_rank} GPUs; {len(devices)} visible")
        self.procs, self.conns = [], []
        for r in range(size):
            gpus = ",".join(devices[r * gpus_per_rank:(r + 1) * gpus_per_rank]) if devices else None
            parent, child = ctx.Pipe()
            # not daemonic: vllm.LLM starts its EngineCore in a child process, which a daemonic process
            # may not have (vLLM's data_parallel_offline.py example uses plain Processes too)
            p = ctx.Process(target=_dp_worker, args=(r, kwargs, gpus, child), daemon=False,
                            name=f"evalkit-vllm-dp{r}")
            p.start()
            self.procs.append(p)
            self.conns.append(parent)
        atexit.register(self.close)  # non-daemonic workers would otherwise keep interpreter exit waiting
        infos = [self._recv(r) for r in range(size)]
        self._model_type = infos[0].get("model_type")

    def _recv(self, r: int):
        status, payload = self.conns[r].recv()
        if status == "error" or status not in ("ok", "ready"):
            self.close()
            raise RuntimeError(f"vLLM data-parallel rank {r}: {payload}")
        return payload

    def model_type(self) -> str | None:
        return self._model_type

    def chat_template(self) -> ChatTemplate:
        def apply(msgs):
            self.conns[0].send(("template", [msgs]))
            return self._recv(0)[0]
        return apply

    def run(self, inputs: list[dict[str, Any]], params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        n = len(self.conns)
        idx = [list(range(r, len(inputs), n)) for r in range(n)]
        for r in range(n):
            self.conns[r].send(("run", ([inputs[i] for i in idx[r]], [params[i] for i in idx[r]])))
        out: list[dict[str, Any] | None] = [None] * len(inputs)
        for r in range(n):
            for i, res in zip(idx[r], self._recv(r)):
                out[i] = res
        return out  # type: ignore[return-value]

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except Exception:
                pass
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
        self.conns, self.procs = [], []
        atexit.unregister(self.close)


class VLLMAudio(Model):
    name: ClassVar[str] = "vllm"
    description: ClassVar[str] = ("audio LLMs on vLLM's offline engine (Qwen2-Audio, Qwen2.5-Omni, Ultravox, Audio "
                                  "Flamingo 3, MiDashengLM, Voxtral, generic)")
    source: ClassVar[str] = "https://docs.vllm.ai (extra: evalkit[vllm])"
    capabilities: ClassVar[frozenset[str]] = frozenset({"audio", "text", "multi_audio", "multi_turn_audio"})
    Config: ClassVar[type[AdapterConfig]] = VLLMConfig
    sample_rate: ClassVar[int | None] = 16000
    default_batch_size: ClassVar[int] = 100000
    #: how the work is spread and memory sized, not what is computed: not part of the run id
    #: (tensor/pipeline parallel and enforce_eager can change numerics, so they are)
    volatile_args: ClassVar[frozenset[str]] = frozenset(
        {"data_parallel_size", "distributed_executor_backend", "gpu_memory_utilization"})

    config: VLLMConfig

    def __init__(self, config: VLLMConfig):
        super().__init__(config)
        require_vllm()
        if int((config.limit_mm_per_prompt or {}).get("audio", 1)) < 2:
            # one clip per prompt (vLLM's default limit): declare it, so the runner refuses multi-clip tasks
            self.capabilities = frozenset({"audio", "text"})
        #: the runner hands the whole task over in one call; vLLM's scheduler batches it
        self.preferred_batch_size = 100000
        self._engine: LocalEngine | DataParallelEngine | None = None
        self._family: str | None = None
        self._template: ChatTemplate | None = None
        self._mistral: Any = None  # Voxtral's mistral-common tokenizer

    def _ensure(self):
        if self._engine is None:
            c = self.config
            kw = engine_kwargs(c)
            if c.data_parallel_size > 1:
                self._engine = DataParallelEngine(kw, c.data_parallel_size,
                                                  c.tensor_parallel_size * c.pipeline_parallel_size)
            else:
                self._engine = LocalEngine(kw)
            self._family = c.family if c.family != "auto" else detect_family(c.model, self._engine.model_type())
        return self._engine

    @property
    def family(self) -> str:
        self._ensure()
        assert self._family is not None
        return self._family

    def _mistral_tokenizer(self) -> Any:
        """Voxtral's tokenizer: tekken.json of a local snapshot, else the hub (offline: the cache only)."""
        if self.family != "voxtral":
            return None
        if self._mistral is None:
            try:
                from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
            except ImportError:
                raise VLLMRequestError("family 'voxtral' needs mistral-common: pip install 'mistral-common[audio]'") from None
            c = self.config
            local = Path(c.model).expanduser() / "tekken.json"
            try:
                self._mistral = (MistralTokenizer.from_file(str(local)) if local.is_file() else
                                 MistralTokenizer.from_hf_hub(c.model, revision=c.revision))
            except Exception as e:
                raise VLLMRequestError(f"voxtral: cannot load the mistral-common tokenizer of {c.model!r} "
                                       f"(tekken.json in a local snapshot, or the hub): {type(e).__name__}: {e}") from None
        return self._mistral

    def _chat_template(self) -> ChatTemplate | None:
        if self.family in ("ultravox", "generic") and self._template is None:
            self._template = self._ensure().chat_template()
        return self._template

    def build_inputs(self, requests: list[Request]) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                             dict[str, str]]:
        """(inputs, sampling kwargs, {key: error}) for the requests that can be built."""
        inputs, params, errors = [], [], {}
        template = self._chat_template()
        max_audio = self.config.limit_mm_per_prompt.get("audio")
        try:
            mistral = self._mistral_tokenizer()
        except VLLMRequestError as e:
            return [], [], {r.key: str(e) for r in requests}
        for r in requests:
            try:
                inputs.append(build_vllm_input(r, self.family, self.sample_rate, template,
                                               self.config.audio_placeholder, max_audio, mistral))
                params.append(sampling_kwargs(r.generation))
            except VLLMRequestError as e:
                errors[r.key] = str(e)
            except Exception as e:  # audio decode errors name the file
                errors[r.key] = f"cannot build request: {type(e).__name__}: {e}"
        return inputs, params, errors

    def generate(self, requests: list[Request]) -> list[Response]:
        if not requests:
            return []
        engine = self._ensure()
        inputs, params, errors = self.build_inputs(requests)
        ok = [r for r in requests if r.key not in errors]
        t0 = time.perf_counter()
        results = engine.run(inputs, params)
        per = (time.perf_counter() - t0) / max(1, len(ok))  # batched: the mean time per request
        by_key = dict(zip((r.key for r in ok), results))
        out = []
        for r in requests:
            if r.key in errors:
                out.append(Response(r.key, error=errors[r.key]))
                continue
            res = by_key[r.key]
            if "error" in res:
                out.append(Response(r.key, error=res["error"]))
            else:
                out.append(Response(r.key, text=res["text"], latency_s=per, extra=res.get("extra", {})))
        return out

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.config.model, "revision": self.config.revision,
                               "family": self._family or self.config.family, "dtype": self.config.dtype}
        try:
            import vllm

            out["vllm_version"] = getattr(vllm, "__version__", None)
        except ImportError:
            pass
        return out

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()


__all__ = [
    "VLLMAudio",
    "VLLMConfig",
    "VLLMMissingError",
    "build_prompt",
    "build_vllm_input",
    "detect_family",
    "engine_kwargs",
    "require_vllm",
    "sampling_kwargs",
]
