"""What the fake `vllm` packages of the tests share: the interface of vLLM 0.33 that evalkit calls.

Each test installs (`install`) a fake package whose `__init__.py` is `INTERFACE` + its own `LLM` class (what reaches the
engine and what it answers differ per test). The fake refuses what the real one refuses at construction:
an unknown `vllm.LLM` / `SamplingParams` keyword (EngineArgs is a dataclass, SamplingParams a msgspec
Struct: any other keyword is a TypeError), a non-string model, out-of-range sampling settings.
"""
from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

INTERFACE = textwrap.dedent('''
    """A stand-in for vllm (interface of vLLM 0.33)."""
    from types import SimpleNamespace

    # a subset of vllm.EngineArgs' fields
    _ENGINE_ARGS = {"model", "revision", "tokenizer", "trust_remote_code", "tensor_parallel_size",
                    "pipeline_parallel_size", "distributed_executor_backend", "dtype", "seed", "max_model_len",
                    "gpu_memory_utilization", "enforce_eager", "limit_mm_per_prompt", "max_num_seqs",
                    "max_num_batched_tokens", "hf_overrides", "skip_tokenizer_init", "enable_prompt_embeds",
                    "tokenizer_mode", "config_format", "load_format", "enable_chunked_prefill"}
    # vllm.SamplingParams' fields
    _SAMPLING = {"n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p",
                 "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens",
                 "logprobs", "prompt_logprobs", "detokenize", "skip_special_tokens",
                 "spaces_between_special_tokens", "include_stop_str_in_output", "bad_words", "logit_bias",
                 "allowed_token_ids", "extra_args"}


    class SamplingParams:
        def __init__(self, **kw):
            bad = set(kw) - _SAMPLING
            if bad:
                raise TypeError(f"Unexpected keyword argument {sorted(bad)[0]!r}")
            if not 0.0 <= kw.get("temperature", 1.0) <= 2.0:  # as vLLM validates
                raise ValueError(f"temperature must be in [0, 2], got {kw['temperature']}.")
            if not 0.0 < kw.get("top_p", 1.0) <= 1.0 or kw.get("top_k", 0) < -1 or (kw.get("max_tokens") or 1) < 1:
                raise ValueError("bad top_p / top_k / max_tokens")
            self.kw = kw


    def _engine_kwargs(model, kw):
        """What vllm.LLM(model, **kw) accepts, as the dict the fake records."""
        if not isinstance(model, str):
            raise TypeError("model must be a str")
        bad = set(kw) - _ENGINE_ARGS
        if bad:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {sorted(bad)[0]!r}")
        return dict(kw, model=model)
''')


def _vllm_modules() -> list[str]:
    return [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]


def install(root: Path, init_source: str, files: dict[str, str] | None = None) -> Callable[[], None]:
    """Write a fake `vllm` package under `root` (its `__init__.py`, plus submodules given by path inside the
    package, e.g. {"model_executor/models/qwen2.py": source}), put `root` first on sys.path and forget any
    imported vllm modules. Returns the undo (restores sys.path and the modules that were there)."""
    pkg = root / "vllm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(init_source)
    for rel, source in (files or {}).items():
        f = pkg / rel
        for d in reversed(f.relative_to(pkg).parents[:-1]):  # intermediate packages
            (pkg / d).mkdir(exist_ok=True)
            (pkg / d / "__init__.py").touch()
        f.write_text(source)
    saved = {m: sys.modules.pop(m) for m in _vllm_modules()}
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()

    def undo() -> None:
        if str(root) in sys.path:
            sys.path.remove(str(root))
        for m in _vllm_modules():
            sys.modules.pop(m)
        sys.modules.update(saved)

    return undo

