"""Plumbing shared by every transformers-based adapter, written once.

- `HFLoadOptions`: the `-M` options every transformers adapter takes (path, revision, dtype,
  device, attn_implementation, trust_remote_code), typed.
- `import_hf()`: torch + transformers, or an error naming the extra to install.
- `resolve_device` / `resolve_dtype`: `auto` rules in one place.
- `load_pretrained()`: `from_pretrained` with revision, `trust_remote_code` only when the user
  passed it, `local_files_only` under HF_HUB_OFFLINE, and failures turned into a message naming
  the hub id, the revision and the `-M path=DIR` / cache options. With `gguf_file=NAME` it checks
  the gguf package and the file first, and a failure says that transformers dequantizes GGUF to
  float and which tensor types / architectures it can load (`gguf_note()`).
- `to_conversation()`: Request messages -> the chat-template conversation + the audio arrays at
  the processor's rate.
- `generation_kwargs()` / `generate_batch()`: left-padded batched generation, greedy unless
  temperature > 0 (which also overrides checkpoints that sample by default), seeded, decoding
  only the new tokens; the effective generation config is returned for `info()`.
- `Steerable`: the "steer" capability (`--strategy steer`, evalkit/engine/strategies.py) written once for
  every transformers adapter: the language model's decoder layers, the residual stream at the last token
  of text-only prompts, and additive forward hooks that are always removed.

Nothing heavy is imported at module import time: torch/transformers load inside functions.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import Field

from evalkit.hub import download_hint, hub_reachable
from evalkit.models.base import AdapterConfig
from evalkit.types import GenerationConfig, Request

HF_EXTRA = "pip install 'evalkit[hf]'"


class HFLoadError(RuntimeError):
    """A model or processor that cannot be loaded; the message says what to do."""


class HFLoadOptions(AdapterConfig):
    """Options common to every transformers adapter (`-M key=value`)."""

    path: str | None = Field(None, description="local snapshot directory (overrides the hub id)")
    revision: str | None = Field(None, description="hub commit sha / tag / branch")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    attn_implementation: str | None = None  # eager | sdpa | flash_attention_2 | ...; None: transformers' default
    trust_remote_code: bool | None = None  # passed to from_pretrained only when set
    batch_size: int | None = Field(None, ge=1)


# ---------------------------------------------------------------------------- environment
def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def import_hf():
    """(torch, transformers), or HFLoadError naming the extra."""
    try:
        import torch
        import transformers
    except ImportError as e:
        raise HFLoadError(f"transformers adapters need torch and transformers ({e.name} is missing): {HF_EXTRA}") from None
    return torch, transformers


def transformers_version() -> str:
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:
        return "not installed"


def version_at_least(have: str, need: str) -> bool:
    def parts(v: str) -> tuple[int, ...]:
        out = []
        for x in v.split("+")[0].split("."):
            digits = "".join(c for c in x if c.isdigit())
            if not digits:
                break
            out.append(int(digits))
            if not x.isdigit():
                break
        return tuple(out)

    return parts(have) >= parts(need)


def resolve_device(name: str) -> str:
    torch, _ = import_hf()
    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HFLoadError(f"-M device={name} but CUDA is not available (torch {torch.__version__}); use -M device=cpu")
        return name
    if name in ("cpu", "mps"):
        return name
    raise HFLoadError(f"-M device={name!r}: expected auto, cpu, cuda or cuda:N")


def resolve_dtype(name: str, device: str):
    """auto: bfloat16 on CUDA GPUs that support it, else float16 on CUDA, float32 on CPU."""
    torch, _ = import_hf()
    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------- loading
def load_pretrained(loader: Any, source: str, *, what: str, hub_id: str | None, revision: str | None,
                    trust_remote_code: bool | None, local_path: bool, **kwargs) -> Any:
    """`loader.from_pretrained(source, ...)` with one error policy.

    `trust_remote_code` is passed only when the user set it; `local_files_only` follows
    HF_HUB_OFFLINE (and is always True for a local directory)."""
    kw = dict(kwargs)
    gguf_file = kw.get("gguf_file")
    if gguf_file:
        check_gguf(source, gguf_file, local_path)
    if not local_path:
        kw["revision"] = revision
    if trust_remote_code is not None:
        kw["trust_remote_code"] = trust_remote_code
    kw["local_files_only"] = True if local_path else (offline() or not hub_reachable())
    try:
        return loader.from_pretrained(source, **kw)
    except ImportError as e:  # a missing optional package the model code needs
        raise HFLoadError(f"loading the {what} of {source!r} needs a missing package ({e}); "
                          f"{HF_EXTRA} and the package named above") from None
    except Exception as e:
        if gguf_file:
            raise HFLoadError(f"cannot load the {what} of {source!r} from -M gguf_file={gguf_file}: "
                              f"{type(e).__name__}: {e}. {gguf_note()}") from None
        if local_path:
            raise HFLoadError(f"cannot load the {what} from -M path={source}: {type(e).__name__}: {e}") from None
        cache = os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'
        how = (f"downloads are off (HF_HUB_OFFLINE=1), so it must already be in the Hugging Face cache ({cache})"
               if offline() else f"the hub cannot be reached from here and it is not in the cache ({cache})"
               if not hub_reachable() else "it was not in the local cache and could not be downloaded")
        raise HFLoadError(
            f"cannot load the {what} of {hub_id or source!r} at revision {revision or 'main (unpinned)'}: {how}. "
            f"Fetch it with {download_hint(hub_id or source, revision)}; or pass -M path=DIR with the files. "
            f"Cause: {type(e).__name__}: {e}") from None


GGUF_EXTRA = "pip install 'gguf>=0.10'"


def gguf_dequantizable_types() -> list[str]:
    """The GGML tensor types the installed gguf-py can turn back into floats (transformers loads a
    GGUF file through `gguf.dequantize`, so these are the quantizations it can load)."""
    import gguf.quants

    traits = getattr(gguf.quants, "_type_traits", {})  # gguf-py's table of implemented quantizations
    return sorted({"F32", "F16", *(getattr(t, "name", str(t)) for t in traits)})


def gguf_note() -> str:
    """What a user needs to know when a GGUF file does not load: transformers has no quantized
    kernels for it and dequantizes every tensor to float, so only the types and architectures below load."""
    try:
        types = ", ".join(gguf_dequantizable_types())
    except Exception:  # gguf missing or changed: the note still says what transformers does
        types = "(gguf-py not importable)"
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        archs = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
    except Exception:
        archs = "(see the transformers GGUF documentation)"
    return (f"transformers does not run GGUF quantizations: it dequantizes every tensor to float (-M dtype; "
            f"the memory of an unquantized model), so the file must use tensor types gguf-py can dequantize "
            f"({types}) and an architecture transformers maps from GGUF ({archs}); transformers "
            f"{transformers_version()}. For other files, run them in llama.cpp (the openai backend against "
            f"its server) or use the original safetensors checkpoint")


def check_gguf(source: str, gguf_file: str, local_path: bool) -> None:
    """-M gguf_file: the gguf package is importable and, in a local folder, the file is there."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)

        have = version("gguf")
    except (ImportError, PackageNotFoundError):
        raise HFLoadError(f"-M gguf_file={gguf_file} needs the gguf package: {GGUF_EXTRA}") from None
    if not version_at_least(have, "0.10"):
        raise HFLoadError(f"-M gguf_file={gguf_file} needs gguf>=0.10 (installed: {have}): {GGUF_EXTRA}")
    if local_path:
        folder = os.path.abspath(source)
        if not os.path.isfile(os.path.join(folder, gguf_file)):
            found = sorted(n for n in os.listdir(folder) if n.endswith(".gguf")) if os.path.isdir(folder) else []
            raise HFLoadError(f"-M gguf_file={gguf_file}: no such file in -M path={source} "
                              f"(.gguf files there: {', '.join(found) or 'none'})")


def resolved_commit(model: Any) -> str | None:
    """The hub commit the weights came from (None for a local directory)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "_commit_hash", None) if cfg is not None else None


# ---------------------------------------------------------------------------- prompts
def to_conversation(request: Request, sample_rate: int, *,
                    audio_part: Callable[[Any, int], dict[str, Any]] | None = None,
                    system_prompt: str | None = None,
                    string_content_roles: frozenset[str] = frozenset({"system"})) -> tuple[list[dict], list]:
    """Request messages -> (chat-template conversation, audio arrays in order).

    Audio parts become `audio_part(array, sample_rate)` (default `{"type": "audio", "audio": "<audio i>"}`,
    a placeholder the template turns into the model's audio tokens; the arrays travel separately to
    the processor). Roles in `string_content_roles` get their text joined into one string, as most
    chat templates expect for system turns. `system_prompt` is prepended when the request has none.
    """
    conversation: list[dict[str, Any]] = []
    audios = []
    if system_prompt and not any(m["role"] == "system" for m in request.messages):
        conversation.append({"role": "system", "content": system_prompt})
    for m in request.messages:
        parts = []
        for p in m["content"]:
            if p["type"] == "text":
                parts.append({"type": "text", "text": p["text"]})
            elif p["type"] == "audio":
                x, sr = p["audio"].load(sample_rate)
                audios.append(x)
                parts.append(audio_part(x, sr) if audio_part else {"type": "audio", "audio": f"<audio {len(audios)}>"})
            else:
                raise ValueError(f"unsupported content part type {p['type']!r}")
        if m["role"] in string_content_roles and all(p["type"] == "text" for p in parts):
            conversation.append({"role": m["role"], "content": "".join(p["text"] for p in parts)})
        else:
            conversation.append({"role": m["role"], "content": parts})
    return conversation, audios


# ---------------------------------------------------------------------------- generation
def generation_kwargs(gen: GenerationConfig) -> dict[str, Any]:
    """transformers `generate` kwargs for a GenerationConfig: greedy when temperature == 0
    (`do_sample=False` is always passed explicitly, so a checkpoint whose generation_config samples
    by default, e.g. Qwen2.5-Omni, is decoded greedily too); temperature/top_p only when sampling."""
    kw: dict[str, Any] = {"max_new_tokens": gen.max_new_tokens}
    if gen.temperature and gen.temperature > 0:
        kw.update(do_sample=True, temperature=float(gen.temperature), top_p=float(gen.top_p))
    else:
        kw.update(do_sample=False, num_beams=1)
    return kw


def checkpoint_sampling_defaults(model: Any) -> dict[str, Any]:
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return {}
    return {k: getattr(gc, k, None) for k in ("do_sample", "temperature", "top_p", "top_k", "num_beams",
                                               "repetition_penalty")}


def move_inputs(inputs: Any, device: str, dtype) -> dict[str, Any]:
    """Processor output -> dict of tensors on `device`; floating tensors (audio features) in `dtype`."""
    torch, _ = import_hf()
    out = {}
    for k, v in dict(inputs).items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
        out[k] = v
    return out


def generate_batch(model: Any, tokenizer: Any, inputs: dict[str, Any], gen: GenerationConfig,
                   drop_keys: tuple[str, ...] = ("num_audio_tokens",),
                   extra_kwargs: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Run one left-padded batch through `model.generate`; return (texts, effective config).

    Only the new tokens are decoded (special tokens skipped). `seed` seeds torch before the
    call, so sampling runs are reproducible and greedy runs are unaffected."""
    torch, _ = import_hf()
    kw = generation_kwargs(gen)
    if extra_kwargs:
        kw.update(extra_kwargs)
    if "pad_token_id" not in kw and getattr(tokenizer, "pad_token_id", None) is not None:
        kw["pad_token_id"] = tokenizer.pad_token_id
    if gen.seed is not None:
        torch.manual_seed(int(gen.seed))
    inputs = {k: v for k, v in inputs.items() if k not in drop_keys}
    input_ids = inputs["input_ids"]
    with torch.inference_mode():
        out = model.generate(**inputs, **kw)
    if not isinstance(out, torch.Tensor):  # GenerateOutput
        out = out.sequences
    n = input_ids.shape[1]
    if out.shape[1] >= n and torch.equal(out[:, :n].to(input_ids.device), input_ids):
        out = out[:, n:]  # decoder-only: the prompt is echoed; keep only the new tokens
    texts = tokenizer.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    effective = {**{k: v for k, v in kw.items()}, "seed": gen.seed}
    return [t.strip() for t in texts], effective


# ---------------------------------------------------------------------------- steering
def decoder_layers(model: Any):
    """The language model's decoder layers (an nn.ModuleList) of a causal LM or an audio LLM wrapping one
    (`get_decoder().layers`: Qwen2ForCausalLM -> model.layers, Qwen2-Audio -> model.language_model.layers)."""
    get = getattr(model, "get_decoder", None)
    layers = getattr(get(), "layers", None) if callable(get) else None
    if layers is None or not len(layers):
        raise ValueError(f"{type(model).__name__}: cannot find the decoder layers (get_decoder().layers), so it "
                         "cannot be steered")
    return layers


class Steerable:
    """The "steer" capability for a transformers adapter (the protocol `Steer` in
    evalkit/engine/strategies.py uses). Layer i is decoder layer i, 0-based; its residual stream is the
    layer's output (`output_hidden_states`' hidden_states[i + 1], except that transformers puts the last
    layer's output there after the final norm; here it is the layer's own output, before that norm).

    The adapter provides `_steer_model()` (its loaded torch model) and `_steer_inputs(request, continuation)`:
    the model inputs of one text-only request rendered exactly as for generation (chat template, system
    prompt), with `continuation` appended after the generation prompt, as tensors on the model's device."""

    def _steer_model(self) -> Any:
        raise NotImplementedError

    def _steer_inputs(self, request: Request, continuation: str) -> dict[str, Any]:
        raise NotImplementedError

    def decoder_layers(self):
        return decoder_layers(self._steer_model())

    @property
    def hidden_size(self) -> int:
        return int(self._steer_model().config.get_text_config().hidden_size)

    def last_token_activations(self, requests: list[Request], layers: list[int],
                               continuations: list[str] | None = None):
        """float32 numpy [len(requests), len(layers), hidden_size]: each chosen layer's output at the last
        token of each prompt (one forward pass per prompt, so no padding enters)."""
        import numpy as np

        torch, _ = import_hf()
        model, mods = self._steer_model(), self.decoder_layers()
        bad = [i for i in layers if not 0 <= i < len(mods)]
        if bad:
            raise ValueError(f"layers {bad}: the model has {len(mods)} decoder layers (0..{len(mods) - 1})")
        continuations = continuations if continuations is not None else [""] * len(requests)
        out = np.zeros((len(requests), len(layers), self.hidden_size), dtype=np.float32)
        seen: dict[int, Any] = {}

        def capture(i):
            def hook(mod, args, output):
                h = output[0] if isinstance(output, tuple) else output
                seen[i] = h[0, -1].detach().float().cpu().numpy()
            return hook

        handles = [mods[i].register_forward_hook(capture(i)) for i in layers]
        try:
            with torch.inference_mode():
                for n, (r, c) in enumerate(zip(requests, continuations)):
                    seen.clear()
                    inputs = {k: v for k, v in self._steer_inputs(r, c).items() if k != "num_audio_tokens"}
                    model(**inputs, use_cache=False)
                    for j, i in enumerate(layers):
                        out[n, j] = seen[i]
        finally:
            for h in handles:
                h.remove()
        return out

    @contextmanager
    def steering(self, vectors: dict[int, Any], alpha: float) -> Iterator[None]:
        """Inside the block, alpha * vectors[i] is added to decoder layer i's output at every position (the
        prompt and each generated token); the hooks are removed on leaving it, also on an exception."""
        torch, _ = import_hf()
        mods = self.decoder_layers()
        bad = [i for i in vectors if not 0 <= i < len(mods)]
        if bad:
            raise ValueError(f"layers {bad}: the model has {len(mods)} decoder layers (0..{len(mods) - 1})")

        def add(delta):
            def hook(mod, args, output):
                if isinstance(output, tuple):
                    return (output[0] + delta, *output[1:])
                return output + delta
            return hook

        handles = []
        try:
            for i, v in sorted(vectors.items()):
                param = next(mods[i].parameters())  # the layer's own device and dtype
                delta = (torch.as_tensor(v, dtype=torch.float32) * float(alpha)).to(param.device, param.dtype)
                handles.append(mods[i].register_forward_hook(add(delta)))
            yield
        finally:
            for h in handles:
                h.remove()
