"""EvA (Kimi-Audio backbone) on vLLM: prompt embeddings in, greedy text out (`-M engine=vllm`).

How it works (the EvA release's design, `src/third_party/kimia_infer/api/vllm_eva.py` at 61cdca4):
1. evalkit computes each prompt's fused input embeddings itself (`KimiEvA.embed`: Whisper + vq_adaptor,
   CED + ced_processor, the two token streams), exactly as on the transformers path.
2. They go to vLLM as prompt embeddings (`LLM(..., enable_prompt_embeds=True)`,
   `llm.generate([{"prompt_embeds": (S, H) tensor}, ...], [SamplingParams, ...])`), the whole list at once.
3. vLLM runs a `Qwen2ForCausalLM` subclass (`build_model_class`). Prompt positions arrive as embeddings and
   are used as they are; every generated (decode) token is embedded as embed(token) + embed(text_blank 151666),
   Kimi's two-stream convention while the audio stream is blank (`decode_embeddings`, a plain function).
   Its `load_weights` keeps only the LLM's tensors (`model.layers.*`, `model.embed_tokens.*`, `model.norm.*`,
   `lm_head.*`); the MIMO branch, vq_adaptor, ced_processor and anything else in the snapshot are skipped.
4. Output token ids (stops removed) are decoded by evalkit with Kimi's own tokenizer; vLLM itself loads no
   tokenizer (`skip_tokenizer_init=True`, `detokenize=False`).

Registration. The class is registered with `vllm.ModelRegistry.register_model` under its own name
`EvAKimiaForCausalLM` only, and the engine is pointed at it with
`hf_overrides={"architectures": ["EvAKimiaForCausalLM"], ...}`. The release registers the name
`MoonshotKimiaForCausalLM`, but current vLLM ships its own model under that name (Kimi-Audio,
`kimi_audio.py`): overriding it would change what every other vLLM user of Kimi-Audio in the process (or,
through the plugin entry point, on the machine) runs, and a process that missed our registration would
silently run vLLM's. An unknown name fails loudly instead. Registration lives in the process that calls it:
vLLM processes started by fork inherit it, spawned ones do not. The adapter therefore builds the engine
before it touches CUDA (vLLM forks while CUDA is uninitialised). For spawned workers, `vllm_plugin` is a
`vllm.general_plugins` entry point: a lazy `module:class` registration that imports nothing and never raises.

Importing this module imports neither torch nor vllm.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from evalkit.models import vllm_audio

TEXT_BLANK = 151666  # <|im_kimia_text_blank|> (confirmed; kimi.TEXT_BLANK)
KIMIA_ARCH = "MoonshotKimiaForCausalLM"  # the release's registration name (= the Kimi snapshot's architecture)
EVA_ARCH = "EvAKimiaForCausalLM"  # the name the engine is pointed at (see module docstring)
ARCHITECTURES = (EVA_ARCH,)  # never KIMIA_ARCH: that name is vLLM's own Kimi-Audio model
#: the Kimi checkpoint's LLM tensors; everything else (model.mimo_layers.*, model.mimo_norm.*, mimo_output.*,
#: model.vq_adaptor.*, model.ced_processor.*, whisper/CED weights, rotary buffers) is skipped
LLM_PREFIXES = ("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head.")
TEXT_BLANK_KEY = "eva_text_blank_id"  # hf_overrides key: reaches every vLLM process with the model config


def require_vllm() -> Any:
    return vllm_audio.require_vllm("EvA with -M engine=vllm", "Linux with a CUDA GPU, a vLLM with prompt-embeds support",
                                   "; or use -M engine=transformers")


# ----------------------------------------------------------------------------- pure pieces (tested without vLLM)
def keep_llm_weight(name: str, tie_word_embeddings: bool = False) -> bool:
    if tie_word_embeddings and name.startswith("lm_head."):
        return False
    return name.startswith(LLM_PREFIXES) and "rotary_emb.inv_freq" not in name


def filter_llm_weights(weights: Iterable[tuple[str, Any]], tie_word_embeddings: bool = False
                       ) -> Iterator[tuple[str, Any]]:
    """Lazily keep the LLM's (name, tensor) pairs (vLLM streams weights; nothing is materialised here)."""
    for name, tensor in weights:
        if keep_llm_weight(name, tie_word_embeddings):
            yield name, tensor


def decode_embeddings(embed: Callable[[Any], Any], input_ids, text_blank: int = TEXT_BLANK):
    """embed(ids) + embed(text_blank): the input of a generated token (ids of any shape; the blank row
    broadcasts). Same arithmetic as kimi.KimiEvA.generate_from_embeds' decode step."""
    import torch

    blank = embed(torch.full((1,), int(text_blank), dtype=input_ids.dtype, device=input_ids.device))
    return embed(input_ids) + blank


def engine_kwargs(model_path: str | None, *, tensor_parallel_size: int = 1, max_model_len: int | None = None,
                  gpu_memory_utilization: float = 0.85, dtype: str = "auto", enforce_eager: bool = False,
                  trust_remote_code: bool = False, seed: int = 0, text_blank: int = TEXT_BLANK,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """vllm.LLM(**kwargs) for the EvA LLM built from a local Kimi-Audio snapshot."""
    kw: dict[str, Any] = {
        "model": None if model_path is None else str(model_path),
        "enable_prompt_embeds": True,
        "tensor_parallel_size": int(tensor_parallel_size),
        "gpu_memory_utilization": float(gpu_memory_utilization),
        "dtype": dtype,
        "enforce_eager": bool(enforce_eager),
        # the snapshot's config.json maps its config class through auto_map (custom code); the same
        # explicit -M trust_remote_code=true the Kimi tokenizer needs
        "trust_remote_code": bool(trust_remote_code),
        "seed": int(seed),
        # evalkit decodes with Kimi's tokenizer. vLLM 0.33 needs none for prompt embeds (renderers/base.py
        # _process_embeds); EOS is then None and stops come only from stop_token_ids (v1/core/sched/utils.py)
        "skip_tokenizer_init": True,
        "hf_overrides": {"architectures": [EVA_ARCH], TEXT_BLANK_KEY: int(text_blank)},
    }
    if max_model_len is not None:
        kw["max_model_len"] = int(max_model_len)
    kw.update(extra or {})
    return kw


def sampling_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """A `kimi.vllm_prompts` params dict -> vllm.SamplingParams(**kwargs): greedy at temperature 0,
    stops at text_eos / msg_end, token ids only (no detokenisation in vLLM)."""
    kw = dict(params)
    kw["n"] = 1
    kw["detokenize"] = False
    if float(kw.get("temperature") or 0.0) <= 0:
        kw.update(temperature=0.0, top_p=1.0, top_k=-1)
    if kw.get("seed") is None:
        kw.pop("seed", None)
    kw["stop_token_ids"] = sorted(int(t) for t in kw.get("stop_token_ids") or [])
    return kw


def _strip_stops(ids: Sequence[int], stops: set[int]) -> list[int]:
    out = []
    for t in ids:
        if int(t) in stops:
            break
        out.append(int(t))
    return out


# ----------------------------------------------------------------------------- the vLLM model class
def build_model_class(base: type | None = None) -> type:
    """A subclass of vLLM's Qwen2ForCausalLM (or of `base`, for tests) for EvA/Kimi-Audio's LLM."""
    if base is None:
        from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM as base

    class EvAKimiaForCausalLM(base):  # type: ignore[misc, valid-type]
        """Qwen2ForCausalLM whose token embedding is embed(t) + embed(text_blank).

        vLLM embeds token ids only for generated tokens here: prompts arrive as prompt embeddings and are
        used unchanged. Both method names are defined: `embed_input_ids` (vLLM >= 0.11.1, PR #27583) and
        `get_input_embeddings` (older vLLM)."""

        def _eva_text_blank(self) -> int:
            return int(getattr(getattr(self, "config", None), TEXT_BLANK_KEY, TEXT_BLANK))

        def embed_input_ids(self, input_ids, *args, **kwargs):
            return decode_embeddings(self.model.embed_tokens, input_ids, self._eva_text_blank())

        def get_input_embeddings(self, input_ids=None, *args, **kwargs):
            if input_ids is None:  # a transformers-style getter call
                return self.model.embed_tokens
            return self.embed_input_ids(input_ids)

        def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
            # Without this, Qwen2Model would embed token ids itself (no text blank). vLLM with prompt embeds
            # enabled normally passes inputs_embeds (built with embed_input_ids) and this branch is idle.
            if intermediate_tensors is None and inputs_embeds is None and input_ids is not None:
                inputs_embeds = self.embed_input_ids(input_ids)
                input_ids = None
            return super().forward(input_ids, positions, intermediate_tensors=intermediate_tensors,
                                   inputs_embeds=inputs_embeds, **kwargs)

        def load_weights(self, weights):
            tie = bool(getattr(getattr(self, "config", None), "tie_word_embeddings", False))
            return super().load_weights(filter_llm_weights(weights, tie))

    return EvAKimiaForCausalLM


_REGISTERED: dict[int, type] = {}
_CLASSES: dict[int, type] = {}
LAZY_CLASS = f"{__name__}:{EVA_ARCH}"  # resolved by this module's __getattr__


def model_class(vllm: Any = None) -> type:
    """The EvA LLM class for this vllm module (built once: registration and lazy lookup share it)."""
    vllm = vllm or require_vllm()
    if id(vllm) not in _CLASSES:
        from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

        _CLASSES[id(vllm)] = build_model_class(Qwen2ForCausalLM)
    return _CLASSES[id(vllm)]


def __getattr__(name: str) -> Any:  # `module:EvAKimiaForCausalLM`, vLLM's lazy registration form
    if name == EVA_ARCH:
        return model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_eva_model(vllm: Any = None) -> type:
    """Register the EvA LLM class with vLLM in this process (idempotent per vllm module)."""
    vllm = vllm or require_vllm()
    key = id(vllm)
    if key not in _REGISTERED:
        cls = model_class(vllm)
        for arch in ARCHITECTURES:
            vllm.ModelRegistry.register_model(arch, cls)
        _REGISTERED[key] = cls
    return _REGISTERED[key]


def vllm_plugin() -> None:
    """The `vllm.general_plugins` entry point: vLLM calls it in every process it starts, for every user of
    vLLM on a machine where evalkit is installed. So it registers the class lazily (`module:class`, nothing
    imported until a run asks for EvAKimiaForCausalLM) and never raises: a failure here is logged and
    only an EvA run (which also registers in-process) can be affected."""
    try:
        from vllm import ModelRegistry

        if EVA_ARCH not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(EVA_ARCH, LAZY_CLASS)
    except Exception as e:  # noqa: BLE001 (must not break vLLM start-up for unrelated models)
        import logging

        logging.getLogger(__name__).warning("evalkit's vLLM plugin could not register %s: %s: %s",
                                            EVA_ARCH, type(e).__name__, e)


class EvAVLLMEngine:
    """One vllm.LLM running EvA's Kimi LLM on prompt embeddings."""

    def __init__(self, model_path: str | None, **options: Any):
        vllm = require_vllm()
        self._vllm = vllm
        self.model_class = register_eva_model(vllm)
        self.kwargs = engine_kwargs(model_path, **options)
        self.llm = vllm.LLM(**self.kwargs)

    def run(self, prompts: list[dict[str, Any]], params: dict[str, Any] | list[dict[str, Any]],
            stops: Iterable[int] | None = None) -> list[dict[str, Any]]:
        return run_prompts(self.llm, prompts, params, stops=stops, vllm=self._vllm)

    def close(self) -> None:
        self.llm = None


def _result(o: Any, stops: set[int]) -> dict[str, Any]:
    best = o.outputs[0]
    ids = list(getattr(best, "token_ids", None) or [])
    return {"token_ids": _strip_stops(ids, stops), "finish_reason": getattr(best, "finish_reason", None),
            "prompt_tokens": len(getattr(o, "prompt_token_ids", None) or []) or None,
            "completion_tokens": len(ids)}


def run_prompts(llm: Any, prompts: list[dict[str, Any]], params: dict[str, Any] | list[dict[str, Any]],
                stops: Iterable[int] | None = None, vllm: Any = None) -> list[dict[str, Any]]:
    """`kimi.vllm_prompts` outputs through `llm.generate`, all prompts in one call. One result per
    prompt: {"token_ids": [...] (stops removed), ...} or {"error": "..."}. If the batch call raises, the
    prompts are retried one at a time so only the failing ones become errors."""
    if not prompts:
        return []
    vllm = vllm or require_vllm()
    plist = [params] * len(prompts) if isinstance(params, dict) else list(params)
    if len(plist) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(plist)} parameter sets")
    stop_set = {int(t) for t in (stops if stops is not None else
                                 {t for p in plist for t in (p.get("stop_token_ids") or [])})}
    inputs = [{"prompt_embeds": _cpu(p["prompt_embeds"])} for p in prompts]
    return vllm_audio.generate_isolated(llm, inputs, [sampling_kwargs(p) for p in plist], vllm.SamplingParams,
                             lambda o: _result(o, stop_set))


def _cpu(t):
    """vLLM's own example passes CPU tensors; the engine process gets them serialised."""
    t = t.detach()
    return t if t.device.type == "cpu" else t.cpu()


# ----------------------------------------------------------------------------- the embedder side
def embed_only(model: Any) -> Any:
    """Replace KimiEvA.llm by a module holding only its token embedding (what `KimiEvA.embed` needs):
    with -M engine=vllm the transformer layers and lm_head run in vLLM, so evalkit's copy is dropped."""
    from torch import nn

    class EmbeddingOnlyLLM(nn.Module):
        def __init__(self, embed_tokens: nn.Module):
            super().__init__()
            self.embed_tokens = embed_tokens

        def get_input_embeddings(self) -> nn.Module:
            return self.embed_tokens

        def forward(self, *args, **kwargs):
            raise RuntimeError("EvA's LLM runs in vLLM (-M engine=vllm); evalkit keeps only its embedding")

    if not hasattr(model.llm, "embed_tokens") or model.llm.__class__.__name__ != "EmbeddingOnlyLLM":
        model.llm = EmbeddingOnlyLLM(model.llm.get_input_embeddings())
    return model
