"""Qwen2.5-Omni backbone for EvA, on the stock transformers thinker (no remote model code).

What the EvA release does for this backbone (satsuki2486441738/EvA at 61cdca4,
`finetune_codes/qwen2_5_omni_eva/modeling_qwen2_5_omni_eva.py`): the Thinker's own audio path is
left intact (audio tower -> its `proj` -> scattered into the placeholder positions of
`inputs_embeds`), and *then* the aligned `ced_processor` output is added in place at the
placeholder positions of that sample, in the embedding dtype, with no extra scaling (alpha is
inside `ced_processor`) and no change in sequence length. Alignment is the same coverage-weighted
interpolation as for Kimi, with the Omni timeline: T_mel = the clip's mel length (the processor's
`feature_attention_mask` sum, 10 ms frames), n = the tower's output length for it, step = T_mel // n
mel frames, centre = step // 2. transformers' `Qwen2_5OmniAudioEncoder` gives one token per 40 ms
(conv2 stride 2, then `avg_pooler` stride 2; `_get_feat_extract_output_lengths`), so step = 4 and
centre = 2 except for very short clips. The fusion weights are `ced_processor.*` in that release
(an attribute of the thinker-level class, whose text model is `model.*`), not Kimi's
`model.ced_processor.*`.

Here a forward hook on the thinker's audio tower adds the evidence to the tower's output rows
(the same numbers as adding after the scatter: the thinker only casts those rows to the embedding
dtype and scatters them in order). The hook is active only while `OmniEvA.generate` runs with
pending clips; decoding steps never call the audio tower. CED and `ced_processor` run in fp32
(the release's inference loads everything in bf16). Differences from the release, by choice:
each clip is aligned from its own CED steps (the release passes the batch-padded CED sequence,
identical for a batch of one, which is how its inference script runs), and a request may hold
several audio parts, each aligned onto its own placeholder run (the release handles one per sample).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .align import align_to_tokens
from .ced import CEDEncoder
from .fusion import PREFIX as KIMI_PREFIX
from .fusion import CEDProcessor, read_prefixed

#: the release's parameter prefix for the Qwen2.5-Omni backbone
OMNI_PREFIX = "ced_processor."
BACKBONE = "qwen2.5-omni"


@dataclass
class OmniClip:
    ced: list[torch.Tensor] | None  # 3 x (F, T, D) fp32 (blocks 4, 8, 12), None with ced=off
    ced_valid: int = 0
    n_samples: int = 0


def omni_step(t_mel: int, n_tokens: int) -> tuple[int, int]:
    """(step_mel, centre_mel) of the release for one clip: T_mel // n and half of it."""
    step = max(1, int(t_mel) // max(1, int(n_tokens)))
    return step, max(0, step // 2)


def tower_output_lengths(feature_lens: torch.Tensor) -> torch.Tensor:
    """Qwen2.5-Omni audio tokens per clip from mel lengths (conv stride 2, then pool 2): 40 ms each."""
    after_conv = (feature_lens - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


class OmniEvA(nn.Module):
    """A stock `Qwen2_5OmniThinkerForConditionalGeneration` + CED encoder + ced_processor."""

    backbone = BACKBONE

    def __init__(self, thinker: nn.Module, processor: Any, ced: CEDEncoder | None, ced_processor: CEDProcessor):
        super().__init__()
        self.thinker = thinker
        self.processor = processor
        self.ced = ced
        self.ced_processor = ced_processor
        self._pending: list[OmniClip] | None = None
        self.last_evidence: list[torch.Tensor | None] = []  # per clip, as added (inspection / tests)
        self._hook = self.audio_tower.register_forward_hook(self._add_evidence, with_kwargs=True)
        tok = getattr(processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"
            if getattr(tok, "pad_token_id", None) is None and getattr(tok, "eos_token", None) is not None:
                tok.pad_token = tok.eos_token

    # ------------------------------------------------------------------ plumbing
    @property
    def audio_tower(self) -> nn.Module:
        inner = getattr(self.thinker, "model", None)
        tower = getattr(inner, "audio_tower", None) or getattr(self.thinker, "audio_tower", None)
        if tower is None:
            raise TypeError(f"{type(self.thinker).__name__} has no audio tower; expected a Qwen2.5-Omni thinker")
        return tower

    @property
    def device(self) -> torch.device:
        return self.thinker.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.thinker.get_input_embeddings().weight.dtype

    @property
    def audio_token_id(self) -> int:
        cfg = self.thinker.config
        v = getattr(cfg, "audio_token_id", None)
        return int(v if v is not None else cfg.audio_token_index)

    def remove_hook(self) -> None:
        self._hook.remove()

    # ------------------------------------------------------------------ CED
    @torch.no_grad()
    def encode(self, waves: list[torch.Tensor]) -> list[OmniClip]:
        """CED hidden states per clip (fp32, no autocast); nothing when ced=off."""
        if self.ced is None or not self.ced_processor.enabled:
            return [OmniClip(None, 0, int(w.shape[-1])) for w in waves]
        dev = next(self.ced.parameters()).device
        with torch.autocast(device_type=dev.type, enabled=False):
            out = self.ced([w.float().to(dev) for w in waves])
        Fq = out.freq_bands
        T = out.hidden_states[0].shape[1] // Fq
        return [OmniClip([h[i].view(Fq, T, -1)[:, : int(out.n_time[i])] for h in out.hidden_states],
                         int(out.valid_lengths[i]), int(waves[i].shape[-1])) for i in range(len(waves))]

    @torch.no_grad()
    def evidence(self, clips: Sequence[OmniClip], feature_lens: torch.Tensor) -> list[torch.Tensor | None]:
        """Per clip, the aligned ced_processor output (n_tokens_i, H) in fp32, or None when inactive.
        feature_lens: the clips' mel lengths as the audio tower receives them."""
        if not clips or not self.ced_processor.active or any(c.ced is None for c in clips):
            return [None] * len(clips)
        pdev = self.ced_processor.alpha.device
        Fq, _, D = clips[0].ced[0].shape
        T = max(c.ced[0].shape[1] for c in clips)
        hidden = []
        for k in range(3):
            buf = torch.zeros(len(clips), Fq, T, D, device=pdev, dtype=torch.float32)
            for i, c in enumerate(clips):
                buf[i, :, : c.ced[k].shape[1]] = c.ced[k].to(pdev, torch.float32)
            hidden.append(buf.view(len(clips), Fq * T, D))
        valid = self.ced_processor.mask_lengths(torch.tensor([c.ced[0].shape[1] for c in clips], device=pdev),
                                                torch.tensor([c.ced_valid for c in clips], device=pdev))
        with torch.autocast(device_type=pdev.type, enabled=False):
            proc = self.ced_processor(*hidden, valid_lengths=valid).float()  # (B, T, H)
        lens = [int(x) for x in feature_lens.tolist()]
        n_out = tower_output_lengths(torch.tensor(lens)).tolist()
        out: list[torch.Tensor | None] = []
        for i, (c, t_mel, n) in enumerate(zip(clips, lens, n_out)):
            step, centre = omni_step(t_mel, n)
            # each clip from its own CED steps (as if alone)
            out.append(align_to_tokens(proc[i, : c.ced[0].shape[1]], int(n), t_mel=t_mel, step_mel=step,
                                       centre_mel=centre))
        return out

    def _add_evidence(self, module, args, kwargs, output):
        clips = self._pending
        if clips is None:
            return None
        feature_lens = kwargs.get("feature_lens")
        if feature_lens is None and len(args) > 1:
            feature_lens = args[1]
        if feature_lens is None or len(feature_lens) != len(clips):
            raise ValueError(f"EvA/Qwen2.5-Omni: the audio tower got {None if feature_lens is None else len(feature_lens)} "
                             f"clips, {len(clips)} CED encodings are pending")
        ev = self.evidence(clips, feature_lens)
        self.last_evidence = ev
        if all(e is None for e in ev):
            return None
        h = output[0] if isinstance(output, tuple) else output.last_hidden_state
        n_out = tower_output_lengths(feature_lens.detach().to("cpu").long()).tolist()
        if h.shape[0] != sum(n_out):
            raise ValueError(f"audio tower returned {h.shape[0]} rows for {sum(n_out)} audio tokens")
        # the release adds after the thinker's cast to the embedding dtype: do the same
        fused = h.to(self.dtype, copy=True)
        off = 0
        for e, n in zip(ev, n_out):
            if e is not None:
                fused[off: off + n] += e.to(fused.device, fused.dtype)
            off += n
        if isinstance(output, tuple):
            return (fused,) + tuple(output[1:])
        output["last_hidden_state"] = fused
        if output.get("pooler_output") is not None:
            output["pooler_output"] = fused
        return output

    # ------------------------------------------------------------------ prompts + generation
    def encode_inputs(self, conversations: list[list[dict]], audios: list[list]) -> dict[str, Any]:
        """The processor's chat template and features, left padded, on the thinker's device."""
        from evalkit.models.hf_common import move_inputs

        proc = self.processor
        texts = [proc.apply_chat_template(cv, add_generation_prompt=True, tokenize=False) for cv in conversations]
        flat = [a for per in audios for a in per]
        kw: dict[str, Any] = {"text": texts, "return_tensors": "pt", "text_kwargs": {"padding": True}}
        if flat:
            kw["audio"] = flat
            kw["sampling_rate"] = int(getattr(getattr(proc, "feature_extractor", None), "sampling_rate", 16000))
        return move_inputs(proc(**kw), str(self.device), self.dtype)

    def pending(self, clips: list[OmniClip] | None):
        """Context manager: the clips whose evidence the next audio-tower call adds (in order)."""
        model = self

        class _Ctx:
            def __enter__(self):
                model._pending = list(clips) if clips else None
                return model

            def __exit__(self, *exc):
                model._pending = None
                return False

        return _Ctx()

    @torch.no_grad()
    def forward_logits(self, inputs: dict[str, Any], clips: list[OmniClip] | None) -> torch.Tensor:
        """One forward pass over the prompt (tests, probes): (B, S, vocab) logits."""
        kw = {k: v for k, v in inputs.items() if k != "num_audio_tokens"}
        with self.pending(clips):
            return self.thinker(**kw, use_audio_in_video=False).logits

    def generate(self, conversations: list[list[dict]], audios: list[list], clips: list[list[OmniClip]],
                 gen) -> tuple[list[str], dict[str, Any]]:
        """Batched (left padded) generation, greedy unless gen.temperature > 0."""
        from evalkit.models.hf_common import generate_batch

        inputs = self.encode_inputs(conversations, audios)
        flat = [c for per in clips for c in per]
        with self.pending(flat):
            return generate_batch(self.thinker, self.processor.tokenizer, inputs, gen,
                                  extra_kwargs={"use_audio_in_video": False})


# ----------------------------------------------------------------------------- weights
def load_omni_processor_weights(processor: CEDProcessor, source: str | Path | dict[str, torch.Tensor]) -> None:
    """Load `ced_processor.*` (the release's Qwen2.5-Omni-EvA names; an exported model folder with
    sharded safetensors works, only these tensors are read) into an fp32 CEDProcessor."""
    sd = source if isinstance(source, dict) else read_prefixed(source, (OMNI_PREFIX, KIMI_PREFIX))
    sub = {k[len(OMNI_PREFIX):]: v for k, v in sd.items() if k.startswith(OMNI_PREFIX)}
    if not sub:
        kimi = any(k.startswith(KIMI_PREFIX) for k in sd)
        hint = (f" It holds `{KIMI_PREFIX}*`, the Kimi-Audio backbone's names: that checkpoint was trained on "
                "Kimi-Audio, use backbone=kimi.") if kimi else ""
        raise ValueError(f"no `{OMNI_PREFIX}*` weights (the release's Qwen2.5-Omni-EvA names) in the EvA checkpoint"
                         f" {'' if isinstance(source, dict) else source}.{hint}")
    missing, unexpected = processor.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise ValueError(f"EvA ced_processor weights: missing {missing[:8]}, unexpected {unexpected[:8]}")
    processor.float().keep_alpha_fp32()


def omni_processor_state_dict(processor: CEDProcessor) -> dict[str, torch.Tensor]:
    return {OMNI_PREFIX + k: v for k, v in processor.state_dict().items()}


# ----------------------------------------------------------------------------- LoRA (the release's optional training)
#: prefix of the release's text decoder layers (its thinker-level class holds `model = TextModel`)
RELEASE_TEXT_LAYERS = "model.layers."
PEFT_PREFIX = "base_model.model."
MODULES_TO_SAVE = "modules_to_save.default."


def text_layers_prefix(thinker: nn.Module) -> str:
    """Where the stock thinker keeps its text decoder layers: `model.language_model.layers.` in
    transformers 5.x, `model.layers.` in 4.x (the release's names)."""
    for name, _ in thinker.named_modules():
        if name.endswith("layers.0.self_attn.q_proj") and "audio_tower" not in name and "visual" not in name:
            return name[: -len("0.self_attn.q_proj")]
    raise ValueError("no text decoder layers (layers.0.self_attn.q_proj) in the Qwen2.5-Omni thinker")


def _to_stock(name: str, layers: str) -> str:
    return layers + name[len(RELEASE_TEXT_LAYERS):] if name.startswith(RELEASE_TEXT_LAYERS) else name


def apply_lora_adapter(thinker: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Merge the release's LoRA adapter into the thinker's weights and return the plain thinker.

    The adapter is what `finetune_codes/qwen2_5_omni_eva/lora_utils.py` (61cdca4) saves with peft's
    `save_pretrained`: `adapter_config.json` + `adapter_model.safetensors`, LoRA on q/k/v/o of the text
    layers, named as in the release's thinker-level class (`model.layers.N...`). Those names are mapped to
    the stock thinker's (`model.language_model.layers.N...` in transformers 5) and peft merges the weights
    (the release keeps the adapter unmerged at inference: the same function, other rounding in bf16).
    Every LoRA tensor in the file must land on a module, or this raises."""
    from peft import LoraConfig, PeftModel, load_peft_weights, set_peft_model_state_dict

    root = Path(adapter_dir).expanduser()
    if not (root / "adapter_config.json").is_file():
        raise FileNotFoundError(f"-M adapter_path={adapter_dir}: no adapter_config.json (expected the release's "
                                "peft LoRA export: adapter_config.json + adapter_model.safetensors)")
    cfg = LoraConfig.from_pretrained(str(root))
    layers = text_layers_prefix(thinker)
    targets = cfg.target_modules
    cfg.target_modules = ({_to_stock(t, layers) for t in targets} if isinstance(targets, (set, list, tuple))
                          else targets)  # a regex string is left to peft
    cfg.modules_to_save = None  # ced_processor lives beside the thinker here; read by adapter_processor_weights
    cfg.inference_mode = True
    peft_model = PeftModel(thinker, cfg)
    sd = load_peft_weights(str(root), device="cpu")
    lora = {PEFT_PREFIX + _to_stock(k[len(PEFT_PREFIX):], layers) if k.startswith(PEFT_PREFIX) else k: v
            for k, v in sd.items() if "lora_" in k}
    if not lora:
        raise ValueError(f"-M adapter_path={adapter_dir}: no LoRA tensors in its adapter weights")
    result = set_peft_model_state_dict(peft_model, lora)
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    if unexpected:
        raise ValueError(f"-M adapter_path={adapter_dir}: LoRA weights for modules this Qwen2.5-Omni thinker does not "
                         f"have: {unexpected[:4]}")
    return peft_model.merge_and_unload()


def adapter_processor_weights(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """`ced_processor.*` saved beside a LoRA adapter, or {} when there is none: `ced_processor.pt` (the
    release writes the module's state dict; peft's modules_to_save wrapper names its trained copy
    `modules_to_save.default.*`), else the copy peft keeps in `adapter_model.safetensors`."""
    root = Path(adapter_dir).expanduser()
    pt = root / "ced_processor.pt"
    if pt.is_file():
        sd = torch.load(str(pt), map_location="cpu", weights_only=True)
        trained = {k[len(MODULES_TO_SAVE):]: v for k, v in sd.items() if k.startswith(MODULES_TO_SAVE)}
        plain = trained or {k: v for k, v in sd.items() if not k.startswith("original_module.")}
        return {OMNI_PREFIX + k: v for k, v in plain.items()}
    head = PEFT_PREFIX + OMNI_PREFIX
    safetensors = root / "adapter_model.safetensors"
    if safetensors.is_file():  # read only these tensors: apply_lora_adapter has read the LoRA ones already
        sd = read_prefixed(safetensors, (head,))
    else:
        from peft import load_peft_weights

        sd = load_peft_weights(str(root), device="cpu")
    return {OMNI_PREFIX + k[len(head):]: v for k, v in sd.items() if k.startswith(head) and "lora_" not in k}


def load_omni_eva(omni_path: str, ced_path: str, checkpoint: str | None, device: str, dtype: torch.dtype,
                  attn_implementation: str = "sdpa", adapter_path: str | None = None) -> OmniEvA:
    """A local Qwen2.5-Omni-7B snapshot (thinker only, stock class), a CED-Base snapshot and the
    EvA fusion checkpoint (`ced_processor.*`); optionally the release's LoRA adapter folder, merged
    into the thinker, whose `ced_processor` weights (if it holds any) replace the checkpoint's, as the
    release's `load_adapter_for_inference` does."""
    import json

    from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    from .ced import load_ced

    root = Path(omni_path).expanduser()
    cfg_file = root / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"-M omni_path={omni_path}: no config.json (expected a Qwen/Qwen2.5-Omni-7B snapshot)")
    model_type = json.loads(cfg_file.read_text()).get("model_type")
    if model_type == "qwen2_5_omni_eva":
        raise ValueError(
            f"-M omni_path={omni_path} is an EvA export (model_type qwen2_5_omni_eva, custom class): pass the base "
            "Qwen/Qwen2.5-Omni-7B snapshot as -M omni_path and this folder as -M checkpoint (its ced_processor.* is read)")
    if model_type not in ("qwen2_5_omni", "qwen2_5_omni_thinker"):
        raise ValueError(f"-M omni_path={omni_path}: model_type {model_type!r}, expected qwen2_5_omni")
    try:
        processor = AutoProcessor.from_pretrained(str(root), local_files_only=True)
    except ImportError as e:
        raise ImportError(f"Qwen2.5-Omni's processor needs torchvision (it always builds its video processor): "
                          f"pip install torchvision ({e})") from None
    thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
        str(root), dtype=dtype, attn_implementation=attn_implementation, local_files_only=True)
    adapter_sd: dict[str, torch.Tensor] = {}
    if adapter_path:
        thinker = apply_lora_adapter(thinker, adapter_path)
        adapter_sd = adapter_processor_weights(adapter_path)
    thinker.to(device).eval()
    hidden = thinker.config.text_config.hidden_size
    ced = load_ced(ced_path, device=device)
    proc = CEDProcessor(hidden)
    if not adapter_sd and not checkpoint:
        raise ValueError(f"-M adapter_path={adapter_path} holds no ced_processor weights (ced_processor.pt or "
                         "peft's modules_to_save copy): pass -M checkpoint=PATH with ced_processor.*")
    load_omni_processor_weights(proc, adapter_sd or checkpoint)
    return OmniEvA(thinker, processor, ced, proc.to(device).eval())
