"""EvA (Evidence-first Audio): Kimi-Audio (or Qwen2.5-Omni) with a CED-Base branch fused into the LLM input.

Importing this module imports neither torch nor transformers; the torch code lives in the
submodules (`ced`, `aggregator`, `align`, `fusion`, `kimi`) and is imported on first use.

Usage: `evalkit run --model eva -M checkpoint=PATH -M kimi_path=DIR -M ced_path=DIR ...`
- checkpoint: the EvA fusion weights (`model.ced_processor.*`, .safetensors, or a torch file
  loaded with weights_only=True). Not published upstream (the release says "TBD").
- kimi_path: a local `moonshotai/Kimi-Audio-7B-Instruct` snapshot (LLM, vq_adaptor, whisper-large-v3/).
- ced_path: a local `mispeech/ced-base` snapshot or weights file (HF or original layout).
- semantic_path: a local `THUDM/glm-4-voice-tokenizer` snapshot; evalkit's own WhisperVQ code
  (`semantic.py`) computes each clip's discrete codes (cached with the other encoder outputs).
- semantic_codes: JSON {clip sha256 | path | label: [GLM-4-Voice codes]}; overrides semantic_path.
- ablations: ced=off, bands=0,3 (zero those CED frequency bands), gate=0.0 (override alpha).
- A release export folder (`finetune_codes/*/export_utils.py`) as -M checkpoint=DIR also supplies the
  unset kimi_path (Kimi: the export is a full snapshot, LoRA merged) and ced_path (its ced-base/).
- backbone=qwen2.5-omni: the release's Qwen2.5-Omni variant (`omni.py`): -M omni_path=DIR (a local
  Qwen/Qwen2.5-Omni-7B snapshot; thinker only, stock transformers class), -M ced_path, and a checkpoint
  holding `ced_processor.*` (the release's names for this backbone). No semantic codes are needed.
  -M adapter_path=DIR: the release's optional LoRA export (peft folder; needs `pip install peft`), merged
  into the thinker; its ced_processor.pt (if any) replaces the checkpoint's fusion weights.
- engine=vllm (Kimi backbone): evalkit computes the fused prompt embeddings, vLLM runs the LLM on them
  (`vllm_path.py`; needs `pip install 'evalkit[vllm]'`); options tensor_parallel_size, max_model_len,
  gpu_memory_utilization, enforce_eager, vllm_batch_size, vllm_engine_args. Default engine=transformers.
See docs/eva.md.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from evalkit.models.base import AdapterConfig, Model
from evalkit.types import Request, Response

NO_CHECKPOINT = (
    "EvA fusion weights are not published upstream (satsuki2486441738/EvA lists them as TBD); "
    "pass -M checkpoint=PATH (a .safetensors or .pt file holding model.ced_processor.* weights, or the "
    "release's export folder, which also holds the snapshots), "
    "and point at local snapshots with -M kimi_path=DIR (moonshotai/Kimi-Audio-7B-Instruct) and "
    "-M ced_path=DIR_OR_FILE (mispeech/ced-base).")


RELEASE_REPETITION_PENALTY = 1.05  # src/inference/infer_kimi_audio_dataset.py (EvA at 61cdca4)


def _generation_key(r: Request) -> tuple:
    return tuple(sorted(r.generation.to_dict().items()))


class EvAWeightsError(RuntimeError):
    pass


class EvAOmniSnapshotError(EvAWeightsError):
    """backbone=qwen2.5-omni without its local snapshots."""


class EvAConfig(AdapterConfig):
    checkpoint: str | None = None
    kimi_path: str | None = None
    omni_path: str | None = None  # local Qwen/Qwen2.5-Omni-7B snapshot (backbone=qwen2.5-omni)
    adapter_path: str | None = None  # backbone=qwen2.5-omni: the release's LoRA export (peft folder), merged
    ced_path: str | None = None
    backbone: Literal["kimi", "qwen2.5-omni"] = "kimi"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: str = "auto"
    ced: Literal["on", "off"] = "on"
    #: release: the CED aggregator unmasked within each clip, as the release's inference runs it (its
    #: published figures); training: masked at the clip's valid length, as its training model
    ced_mask: Literal["release", "training"] = "release"
    bands: str | None = None
    gate: float | None = None
    # auto: flash_attention_2 when flash-attn is installed and the LLM runs in bf16/fp16 on CUDA, else sdpa
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    max_batch: int = 8
    # Kimi-Audio's windowed text repetition penalty. None: the EvA release's inference setting (1.05 over the last
    # 16 generated tokens, src/inference/infer_kimi_audio_dataset.py) for backbone=kimi on the transformers
    # engine, else 1.0 (vLLM's penalty is not windowed; the release's Omni inference uses none)
    text_repetition_penalty: float | None = Field(None, ge=1.0)
    text_repetition_window: int = Field(16, ge=1)
    semantic_codes: str | None = None
    semantic_path: str | None = None  # local THUDM/glm-4-voice-tokenizer snapshot
    cache_clips: int = 256
    trust_remote_code: bool = False  # Kimi-Audio's text tokenizer is custom code in its snapshot
    engine: Literal["transformers", "vllm"] = "transformers"  # vllm: Kimi backbone only (vllm_path.py)
    tensor_parallel_size: int = 1  # engine=vllm
    max_model_len: int | None = None  # engine=vllm (None: the snapshot's max positions)
    gpu_memory_utilization: float = 0.85  # engine=vllm; leaves room for Whisper/CED/embeddings on the GPU
    enforce_eager: bool = False  # engine=vllm
    vllm_batch_size: int = 512  # engine=vllm: requests per llm.generate call (the runner's batch)
    vllm_engine_args: dict[str, Any] = Field(default_factory=dict)  # engine=vllm: other vllm.LLM keyword arguments, passed through


class EvA(Model):
    name = "eva"
    audio_fed = "all"  # Whisper in 30 s chunks, CED in its chunks: every second is encoded
    description = "EvA: Kimi-Audio (or Qwen2.5-Omni) + CED-Base evidence branch (needs local weights)"
    source = "github.com/satsuki2486441738/EvA (arXiv 2603.27667); moonshotai/Kimi-Audio-7B-Instruct; mispeech/ced-base"
    capabilities = frozenset({"audio", "text", "multi_audio", "multi_turn_audio"})
    Config = EvAConfig
    sample_rate = 16000
    default_batch_size = 8
    #: not part of the run id: they change speed and memory, not outputs (batch == alone is tested)
    volatile_args = frozenset({"max_batch", "cache_clips", "device", "gpu_memory_utilization", "vllm_batch_size"})

    def __init__(self, config: EvAConfig):
        super().__init__(config)
        self._model = None
        self._encode_text = None
        self._decode = None
        self._semantic = None
        self._clips: OrderedDict[str, Any] = OrderedDict()
        self._engine = None  # vllm_path.EvAVLLMEngine with -M engine=vllm
        self._check_config()  # fail before any sample is processed (paths are checked at load)
        if config.engine == "vllm":
            if config.backbone != "kimi":
                raise ValueError("-M engine=vllm is implemented for backbone=kimi only")
            from .vllm_path import require_vllm

            require_vllm()  # a missing extra is a clear error now, not after the encoders load
            self.preferred_batch_size = max(1, config.vllm_batch_size)  # the runner hands over this many

    # ------------------------------------------------------------------ loading
    def _resolved(self) -> tuple[str, str]:
        import torch

        c = self.config
        device = c.device if c.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = c.dtype if c.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
        return device, dtype

    def _attention(self) -> str:
        """The LLM's attention kernel: flash-attn when it is installed and can run (CUDA, half precision),
        else PyTorch SDPA. Whisper, CED and ced_processor use SDPA / their own attention either way."""
        import importlib.util

        c = self.config
        if c.attn_implementation != "auto":
            return c.attn_implementation
        device, dtype = self._resolved()
        if device.startswith("cuda") and dtype in ("bfloat16", "float16") and importlib.util.find_spec("flash_attn"):
            return "flash_attention_2"
        return "sdpa"

    def repetition_penalty(self) -> float:
        c = self.config
        if c.text_repetition_penalty is not None:
            return c.text_repetition_penalty
        return RELEASE_REPETITION_PENALTY if (c.backbone, c.engine) == ("kimi", "transformers") else 1.0

    @classmethod
    def preflight(cls, config: EvAConfig) -> None:  # type: ignore[override]
        """Before any data loads: without fusion weights (not published upstream) nothing can run."""
        cls._check_args(config)

    def _check_config(self) -> None:
        self._check_args(self.config)
        self.kimi_path, self.ced_path = self._paths_with_export_defaults()

    @staticmethod
    def _check_args(c: EvAConfig) -> None:
        if (c.text_repetition_penalty or 1.0) > 1.0 and (c.backbone, c.engine) != ("kimi", "transformers"):
            raise ValueError("-M text_repetition_penalty is Kimi-Audio's windowed penalty, applied by the transformers "
                             "engine of backbone=kimi only (vLLM's penalty is not windowed; the release's Omni "
                             "inference uses none)")
        if c.adapter_path and c.backbone != "qwen2.5-omni":
            raise EvAWeightsError(
                "-M adapter_path is for backbone=qwen2.5-omni: the release merges Kimi-Audio's LoRA into its export "
                "(finetune_codes/kimi_audio_eva/lora_utils.py), so pass that export folder as -M checkpoint=DIR")
        if not c.checkpoint and not (c.adapter_path and c.backbone == "qwen2.5-omni"):
            raise EvAWeightsError(NO_CHECKPOINT)

    def _paths_with_export_defaults(self) -> tuple[str | None, str | None]:
        """(kimi_path, ced_path) to load from. The release exports a self-contained folder
        (finetune_codes/*/export_utils.py): for Kimi-Audio the LLM with vq_adaptor and `model.ced_processor.*`
        (LoRA merged), whisper-large-v3/, ced-base/ and the tokenizer; for Qwen2.5-Omni the thinker with
        `ced_processor.*` and ced-base/. So `-M checkpoint=EXPORT` alone is enough: unset snapshot paths default
        to the export's parts. The config is left as given: it is the run's identity (run id, resume)."""
        c = self.config
        kimi, ced = c.kimi_path, c.ced_path
        root = Path(c.checkpoint).expanduser() if c.checkpoint else None
        if root is not None and root.is_dir():
            if ced is None and (root / "ced-base").is_dir():
                ced = str(root / "ced-base")
            if (kimi is None and c.backbone == "kimi" and (root / "config.json").is_file()
                    and (root / "whisper-large-v3").is_dir()):
                kimi = str(root)
        return kimi, ced

    def _check_paths(self) -> None:
        self._check_config()
        c = self.config
        omni = c.backbone == "qwen2.5-omni"
        have = {"omni_path": c.omni_path, "kimi_path": self.kimi_path, "ced_path": self.ced_path}
        missing = [f"-M {k}=..." for k in (("omni_path" if omni else "kimi_path"), "ced_path") if not have[k]]
        if missing and omni:
            raise EvAOmniSnapshotError(
                f"EvA on Qwen2.5-Omni needs local snapshots: {', '.join(missing)} (-M omni_path=DIR: "
                "Qwen/Qwen2.5-Omni-7B; -M ced_path=DIR_OR_FILE: mispeech/ced-base) and -M checkpoint=PATH holding "
                "ced_processor.* (the release's Qwen2.5-Omni-EvA names; not published upstream)")
        if missing:
            raise EvAWeightsError(f"EvA needs local snapshots: {', '.join(missing)}. " + NO_CHECKPOINT)
        paths = {"checkpoint": c.checkpoint, "kimi_path": self.kimi_path, "omni_path": c.omni_path,
                 "ced_path": self.ced_path, "semantic_path": c.semantic_path, "adapter_path": c.adapter_path}
        for k, v in paths.items():
            if v and not Path(v).expanduser().exists():
                raise EvAWeightsError(f"-M {k}={v}: no such file or folder")

    def _load(self):
        if self._model is not None:
            return self._model
        self._check_paths()
        import torch

        from .kimi import encode_text_fn, load_kimi_eva

        device, dtype = self._resolved()
        if self.config.backbone == "qwen2.5-omni":
            from .omni import load_omni_eva

            omni = load_omni_eva(self.config.omni_path, self.ced_path, self.config.checkpoint, device,
                                 getattr(torch, dtype), self._attention(),
                                 adapter_path=self.config.adapter_path)
            self.attach(omni, None, None)
            return self._model
        vllm = self.config.engine == "vllm"
        if vllm:  # built before evalkit touches CUDA, so vLLM forks and its processes inherit the registration
            self._vllm_engine(dtype)
        model, tok = load_kimi_eva(self.kimi_path, self.ced_path, self.config.checkpoint,
                                   "cpu" if vllm else device,  # vllm: the LLM copy is dropped before moving
                                   getattr(torch, dtype), self._attention(),
                                   trust_remote_code=self.config.trust_remote_code,
                                   semantic_path=None if self.config.semantic_codes else self.config.semantic_path)
        if vllm:
            from .vllm_path import embed_only

            model = embed_only(model).to(device)
            sent = self._engine.kwargs["hf_overrides"]["eva_text_blank_id"]
            if model.tokens.text_blank != sent:
                raise ValueError(f"Kimi tokenizer's <|im_kimia_text_blank|> is {model.tokens.text_blank}, "
                                 f"but the vLLM engine was built with {sent}")
        self.attach(model, encode_text_fn(tok), lambda ids: tok.decode(ids))
        return self._model

    def _vllm_engine(self, dtype: str | None = None):
        if self._engine is None:
            from .kimi import TEXT_BLANK
            from .vllm_path import EvAVLLMEngine

            c = self.config
            if dtype is None:
                dtype = str(self._model.dtype).replace("torch.", "") if self._model is not None else "auto"
            text_blank = getattr(getattr(self._model, "tokens", None), "text_blank", TEXT_BLANK)
            self._engine = EvAVLLMEngine(self.kimi_path, tensor_parallel_size=c.tensor_parallel_size,
                                         max_model_len=c.max_model_len,
                                         gpu_memory_utilization=c.gpu_memory_utilization, dtype=dtype,
                                         enforce_eager=c.enforce_eager, trust_remote_code=c.trust_remote_code,
                                         text_blank=text_blank, extra=dict(c.vllm_engine_args))
        return self._engine

    def attach(self, model, encode_text, decode, semantic_fn=None) -> EvA:
        """Use prebuilt components (tests, notebooks): a kimi.KimiEvA, text encode/decode callables
        and optionally a semantic-id function (AudioRef -> list of GLM-4-Voice codes); or an
        omni.OmniEvA (backbone=qwen2.5-omni; it tokenizes with its own processor: pass None, None)."""
        from .aggregator import parse_bands

        have = getattr(model, "backbone", "kimi")
        if have != self.config.backbone:
            raise ValueError(f"EvA is configured with backbone={self.config.backbone} but got a {have} model")

        self._model = model
        self._encode_text, self._decode = encode_text, decode
        if semantic_fn is not None:
            self._semantic = semantic_fn
        if hasattr(model, "semantic_enabled"):  # codes from a function or a file win over the tokenizer
            model.semantic_enabled = self._semantic is None and not self.config.semantic_codes
        proc = model.ced_processor
        proc.enabled = self.config.ced == "on"
        proc.gate_override = self.config.gate
        proc.ced_mask = self.config.ced_mask
        proc.audio_aggregator.zero_bands = parse_bands(self.config.bands, proc.audio_aggregator.F)
        return self

    def _semantic_fn(self):
        if self._semantic is not None:
            return self._semantic
        from .kimi import no_semantic_tokenizer

        if not self.config.semantic_codes:
            if getattr(self._model, "semantic", None) is not None:
                return self._codes_from_clips  # computed by the model's tokenizer in encode()
            return no_semantic_tokenizer
        table = json.loads(Path(self.config.semantic_codes).expanduser().read_text())

        def lookup(audio) -> list[int]:
            for key in (audio.sha256(), str(audio.path) if audio.path else None, audio.label):
                if key and key in table:
                    return [int(x) for x in table[key]]
            raise KeyError(f"no semantic codes for {audio.describe()} in {self.config.semantic_codes}")

        self._semantic = lookup
        return lookup

    def _codes_from_clips(self, audio) -> list[int]:
        enc = self._clips.get(audio.sha256())
        if enc is None or getattr(enc, "codes", None) is None:
            raise RuntimeError(f"no semantic codes were computed for {audio.describe()}")
        return list(enc.codes)

    # ------------------------------------------------------------------ generation
    def _encode_clips(self, refs: list[Any]) -> dict[str, Any]:
        """Encoder outputs per clip, cached by AudioRef.sha256() across questions on one clip."""
        import torch

        model = self._model
        todo = {r.sha256(): r for r in refs if r.sha256() not in self._clips}
        if todo:
            waves = [torch.from_numpy(r.load(16000)[0]).float() for r in todo.values()]
            for key, enc in zip(todo, model.encode(waves)):
                self._clips[key] = enc
        out = {}
        for r in refs:
            key = r.sha256()
            self._clips.move_to_end(key)
            out[key] = self._clips[key]
        while len(self._clips) > max(self.config.cache_clips, len(out)):
            self._clips.popitem(last=False)
        return out

    def generate(self, requests: list[Request]) -> list[Response]:
        model = self._load()
        if self.config.backbone == "qwen2.5-omni":
            return self._generate_omni(requests)
        if self.config.engine == "vllm":
            return self._generate_vllm(requests)
        semantic = self._semantic_fn()
        out: dict[str, Response] = {}
        bs = max(1, self.config.max_batch)
        groups: dict[tuple, list[Request]] = {}
        for r in requests:  # one decode loop per generation setting
            groups.setdefault(_generation_key(r), []).append(r)
        for batch in (g[i: i + bs] for g in groups.values() for i in range(0, len(g), bs)):
            t0 = time.perf_counter()
            try:
                clips = self._encode_clips([a for r in batch for a in r.audio()])
            except Exception as e:  # fall back to one request at a time to isolate the bad clip
                if len(batch) > 1:
                    for r in batch:
                        out[r.key] = self._one(r)
                    continue
                out[batch[0].key] = Response(key=batch[0].key, error=f"{type(e).__name__}: {e}")
                continue
            ok, prompts, clip_lists = self._kimi_prompts(batch, clips, semantic, out)
            if ok:
                try:
                    embeds = model.embed(prompts, clip_lists)
                    g = ok[0].generation
                    ids = model.generate_from_embeds(embeds, g.max_new_tokens, g.temperature, g.top_p, g.seed,
                                                     self.repetition_penalty(), self.config.text_repetition_window)
                    dt = (time.perf_counter() - t0) / len(ok)
                    for r, seq in zip(ok, ids):
                        out[r.key] = Response(key=r.key, text=self._decode(seq), latency_s=dt)
                except Exception as e:
                    for r in ok:
                        out[r.key] = Response(key=r.key, error=f"{type(e).__name__}: {e}")
        return [out[r.key] for r in requests]

    def _kimi_prompts(self, batch: list[Request], clips: dict[str, Any], semantic,
                      out: dict[str, Response]) -> tuple[list[Request], list[Any], list[list[Any]]]:
        """Two-stream prompts and encoded clips for each request of a batch; a request whose prompt
        cannot be built gets its error in `out` and is left out."""
        from .kimi import build_prompt

        ok, prompts, clip_lists = [], [], []
        for r in batch:
            try:
                prompts.append(build_prompt(r.messages, self._encode_text, semantic, self._model.tokens))
                clip_lists.append([clips[a.sha256()] for a in r.audio()])
                ok.append(r)
            except Exception as e:
                out[r.key] = Response(key=r.key, error=f"{type(e).__name__}: {e}")
        return ok, prompts, clip_lists

    def _embed_requests(self, requests: list[Request], out: dict[str, Response]) -> list[tuple[Request, Any]]:
        """(request, fused prompt embeddings) per request, max_batch at a time; failures go to `out`
        (a failing batch is retried one request at a time to isolate the bad one)."""
        model = self._model
        semantic = self._semantic_fn()
        done: list[tuple[Request, Any]] = []

        def run(batch: list[Request]) -> None:
            clips = self._encode_clips([a for r in batch for a in r.audio()])
            ok, prompts, clip_lists = self._kimi_prompts(batch, clips, semantic, out)
            if ok:
                done.extend(zip(ok, model.embed(prompts, clip_lists)))

        bs = max(1, self.config.max_batch)
        for b0 in range(0, len(requests), bs):
            batch = requests[b0: b0 + bs]
            try:
                run(batch)
                continue
            except Exception as e:
                if len(batch) == 1:
                    out[batch[0].key] = Response(key=batch[0].key, error=f"{type(e).__name__}: {e}")
                    continue
            for r in batch:
                out.pop(r.key, None)
                try:
                    run([r])
                except Exception as e:
                    out[r.key] = Response(key=r.key, error=f"{type(e).__name__}: {e}")
        return done

    def _generate_vllm(self, requests: list[Request]) -> list[Response]:
        """engine=vllm: embeddings here (max_batch at a time), then one llm.generate for all requests."""
        from .kimi import vllm_prompts

        t0 = time.perf_counter()
        out: dict[str, Response] = {}
        items = self._embed_requests(requests, out)
        prompts, params = [], []
        for r, e in items:
            g = r.generation
            p, kw = vllm_prompts([e], g.max_new_tokens, g.temperature, g.top_p, g.seed, self._model.tokens)
            prompts.extend(p)
            params.append(kw)
        results = []
        if items:
            try:
                results = self._vllm_engine().run(prompts, params, stops=self._model.tokens.stops)
            except Exception as e:
                results = [{"error": f"{type(e).__name__}: {e}"}] * len(items)
        dt = (time.perf_counter() - t0) / max(1, len(requests))
        for (r, _), res in zip(items, results):
            if "error" in res:
                out[r.key] = Response(key=r.key, error=res["error"])
                continue
            try:
                out[r.key] = Response(key=r.key, text=self._decode(res["token_ids"]), latency_s=dt)
            except Exception as e:
                out[r.key] = Response(key=r.key, error=f"{type(e).__name__}: {e}")
        return [out[r.key] for r in requests]

    def _generate_omni(self, requests: list[Request]) -> list[Response]:
        """Qwen2.5-Omni: the processor's chat template; batches of max_batch per (generation settings,
        with/without audio), left padded; a failing batch is retried one request at a time."""
        from evalkit.models.hf_common import to_conversation

        model = self._model
        out: dict[str, Response] = {}
        groups: dict[tuple, list[tuple[Request, list, list]]] = {}
        for r in requests:
            try:
                conv, audios = to_conversation(r, self.sample_rate)
            except Exception as e:
                out[r.key] = Response(key=r.key, error=f"{type(e).__name__}: {e}")
                continue
            key = (_generation_key(r), bool(audios))
            groups.setdefault(key, []).append((r, conv, audios))
        bs = max(1, self.config.max_batch)

        def run(items) -> list[str]:
            clips = self._encode_clips([a for r, _, _ in items for a in r.audio()])
            per = [[clips[a.sha256()] for a in r.audio()] for r, _, _ in items]
            texts, effective = model.generate([c for _, c, _ in items], [a for _, _, a in items], per,
                                              items[0][0].generation)
            self._last_generation = effective
            return texts

        for items in groups.values():
            for b0 in range(0, len(items), bs):
                batch = items[b0: b0 + bs]
                t0 = time.perf_counter()
                try:
                    texts = run(batch)
                    dt = (time.perf_counter() - t0) / len(batch)
                    for (r, _, _), text in zip(batch, texts):
                        out[r.key] = Response(key=r.key, text=text, latency_s=dt)
                    continue
                except Exception as e:
                    if len(batch) == 1:
                        out[batch[0][0].key] = Response(key=batch[0][0].key, error=f"{type(e).__name__}: {e}")
                        continue
                for item in batch:  # isolate the request that breaks the batch
                    t1 = time.perf_counter()
                    try:
                        out[item[0].key] = Response(key=item[0].key, text=run([item])[0],
                                                    latency_s=time.perf_counter() - t1)
                    except Exception as e1:
                        out[item[0].key] = Response(key=item[0].key, error=f"{type(e1).__name__}: {e1}")
        return [out[r.key] for r in requests]

    def _one(self, r: Request) -> Response:
        saved = self.config.max_batch
        try:
            self.config.max_batch = 1
            return self.generate([r])[0]
        finally:
            self.config.max_batch = saved

    def info(self) -> dict[str, Any]:
        c = self.config
        d: dict[str, Any] = {"backbone": c.backbone, "engine": c.engine, "checkpoint": c.checkpoint, "kimi_path": self.kimi_path,
                             "omni_path": c.omni_path, "adapter_path": c.adapter_path, "ced_path": self.ced_path,
                             "ced": c.ced, "ced_mask": c.ced_mask, "bands": c.bands, "gate": c.gate,
                             "text_repetition_penalty": self.repetition_penalty(),
                             "text_repetition_window": c.text_repetition_window,
                             "semantic": ("codes file" if c.semantic_codes else "tokenizer" if c.semantic_path else None)}
        try:
            d["device"], d["dtype"] = self._resolved()
            d["attn_implementation"] = self._attention()
        except Exception:
            pass
        if getattr(self, "_last_generation", None) is not None:
            d["generation"] = self._last_generation
        return d

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self._model = None
        self._clips.clear()
