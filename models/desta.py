"""DeSTA2.5-Audio (`--model desta2.5`): Llama-3.1-8B-Instruct + Whisper-large-v3 + a Q-Former connector.

  evalkit run --model desta2.5 --task mmau
  ... -M path=DIR [-M llm_path=DIR] [-M encoder_path=DIR]     (local copies, offline)

What the release is (read from github.com/kehanlu/DeSTA2.5-Audio at 5503dfc, desta/models/modeling_desta25.py,
README.md, docs/evaluation_tips.md; nothing copied): the hub repo DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B holds only
`config.json` (llm_model_id, encoder_model_id, prompt_size, qformer_num_hidden_layers, audio_locator,
placeholder_token) and `model.safetensors` with the trained parameters (the connector); the LLM and Whisper
load from their own hub repos named in that config. The release's class `DeSTA25AudioModel` lives in the
GitHub package `desta` (not hub remote code, so no trust_remote_code is involved); its parts are stock
transformers classes, rebuilt here:
  - Whisper encoder layers run one by one (conv1/conv2 + GELU, positions, no final layer norm); after each
    target layer (large-v3: 7, 15, 23, 31) a BertEncoder with cross-attention (BertConfig defaults,
    hidden = d_model, heads = encoder heads, `qformer_num_hidden_layers` layers) reads that layer's states
    with a learned per-layer query of `prompt_size` (64) vectors; the per-layer outputs are mixed with
    softmax(layer_weights) per query, then LayerNorm + Linear to the LLM width.
  - Each audio's slot in the prompt is [64 connector vectors ; the LLM embeddings of the clip's
    transcription]: the transcription comes from the same Whisper (generate, max 128 tokens) when silero
    VAD finds speech, else " " (`-M transcription=vad`, the release's behaviour, needs `pip install
    silero-vad`); `-M transcription=asr` transcribes every clip (differs from the release on non-speech audio).
  - Prompt: the LLM's chat template (add_generation_prompt), the user turn with "<|AUDIO|>" where each clip
    goes (README: "<|AUDIO|>\\n{instruction}"), each "<|AUDIO|>" written as "<start_audio><|AUDIO|><end_audio>"
    (the training-time markers), default system prompt "Focus on the audio clips and instructions."
  - Generation: the release defaults to sampling (T=0.7, top_p=0.9); its own evaluation script decodes
    greedily (do_sample=False), as evalkit does unless temperature > 0.

Revisions (searched 2026 in the docs/pages/code corpora; `-M revision=` / `-M llm_revision=` /
`-M encoder_revision=` override):
  - the connector repo DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B: NOT PINNED (no commit sha found; only the older
    DeSTA-ntu/DeSTA2-8B-beta's history is indexed).
  - the LLM its config.json names, DeSTA-ntu/Llama-3.1-8B-Instruct (the release's DeSTA25Config default and a
    public vLLM-integration note reading that config.json; a copy of Meta's Llama-3.1-8B-Instruct): NOT PINNED
    (no sha found). For meta-llama/Llama-3.1-8B-Instruct, should a config or -M llm_path name it, sha
    0e9e39f249a16976918f6564b8830bc894c89659 is the one public code pins it to; it is used only for that id.
  - openai/whisper-large-v3: PINNED to 06f233fe06e710322aca913c1bc4249a0d71fce1, the source commit named by the
    hub mirror aoiandroid/whisper-large-v3 ("Unmodified mirror of openai/whisper-large-v3 at commit ...",
    with the tree URL); used only when the config names that id and no -M encoder_path / encoder_revision.
Silero VAD: the release loads it with torch.hub.load('snakers4/silero-vad', 'silero_vad') (GitHub master at
load time, unpinned, a network fetch) and calls get_speech_timestamps(samples, model) with its defaults
(threshold 0.5, 16 kHz). evalkit calls the same function from the pip package `silero-vad` (the wheel bundles
the model, silero_vad/data/silero_vad.jit, so nothing is downloaded; its version is recorded in info()); a
missing package is refused at preflight with the install line and the `-M transcription=asr` alternative.

Tested on a tiny random release (tests/test_desta.py, contract suite case `desta2.5`): the real loading code
(config.json + model.safetensors + stock Whisper/WhisperProcessor/Llama/BertEncoder from local folders), the
prompt layout by hand, the slot contents, Whisper ASR and the VAD rule (with a stand-in VAD predicate); the
real silero VAD model (pip silero-vad 6.2.3) on a real speech clip, silence and faint noise
(tests/test_desta.py, skipped where silero-vad is not installed).
Untested: the real 8B checkpoint (no weights offline; numbers against the release's own `desta` package
not compared), whether pip silero-vad and the release's torch.hub master agree, and bf16 on GPU.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Literal

from pydantic import Field

from evalkit.models.base import Model
from evalkit.models.hf_common import (
    HFLoadError,
    HFLoadOptions,
    dtype_name,
    generation_kwargs,
    import_hf,
    load_pretrained,
    resolve_device,
    resolve_dtype,
    transformers_version,
)
from evalkit.types import Request, Response

HUB_ID = "DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B"
REVISION: str | None = None  # NOT PINNED (no sha found; see the module docstring)
#: default revisions of the sub-models, by hub id, where a commit sha was found (module docstring: sources)
KNOWN_REVISIONS: dict[str, str] = {
    "openai/whisper-large-v3": "06f233fe06e710322aca913c1bc4249a0d71fce1",
    "meta-llama/Llama-3.1-8B-Instruct": "0e9e39f249a16976918f6564b8830bc894c89659",
}


def sub_model_revision(hub_id: str, explicit: str | None, local_path: bool) -> str | None:
    """The revision a sub-model loads at: -M ..._revision, else the known pin for that hub id (never for a
    local folder, which has no revision)."""
    if explicit or local_path:
        return explicit
    return KNOWN_REVISIONS.get(hub_id)
DEFAULT_SYSTEM_PROMPT = "Focus on the audio clips and instructions."
SAMPLE_RATE = 16000
WINDOW_S = 30.0  # Whisper's input window: the release feeds one 30 s mel window per clip
#: the Whisper layers whose states the connector reads, per encoder (the release's table)
TARGET_LAYERS = {"openai/whisper-medium": [5, 11, 17, 23], "openai/whisper-small": [2, 5, 8, 11],
                 "openai/whisper-tiny": [0, 1, 2, 3], "openai/whisper-large-v3": [7, 15, 23, 31]}
CONNECTOR_PREFIX = "perception.connector."
VAD_EXTRA = "pip install silero-vad"


class DestaConfig(HFLoadOptions):
    llm_path: str | None = Field(None, description="local folder of the LLM (default: config.json's llm_model_id)")
    llm_revision: str | None = None
    encoder_path: str | None = Field(None, description="local folder of Whisper (default: encoder_model_id)")
    encoder_revision: str | None = None
    system_prompt: str | None = None
    #: vad: the release's rule (transcribe a clip only when silero VAD hears speech, else " ");
    #: asr: transcribe every clip (no VAD package needed; differs from the release on non-speech audio)
    transcription: Literal["vad", "asr"] = "vad"
    asr_max_new_tokens: int = Field(128, ge=1)
    #: Whisper + connector precision: float32 as the release runs them; "same" uses -M dtype (the LLM's)
    audio_dtype: Literal["float32", "same"] = "float32"


def render_user_text(parts: list[dict[str, Any]], locator: str) -> tuple[str, int]:
    """A message's content parts -> (text with `locator` where each audio goes, number of audios).
    An audio followed by more content is separated from it by a newline, as the release's examples write
    "<|AUDIO|>\\n{instruction}"."""
    out, n = [], 0
    for i, p in enumerate(parts):
        if p["type"] == "text":
            out.append(p["text"])
        elif p["type"] == "audio":
            n += 1
            out.append(locator + ("\n" if i + 1 < len(parts) else ""))
        else:
            raise ValueError(f"unsupported content part type {p['type']!r}")
    return "".join(out), n


def splice_audio_slots(ids: list[int], locator_id: int, slot_sizes: list[int],
                       placeholder_id: int) -> tuple[list[int], list[int]]:
    """Replace the k-th `locator_id` by slot_sizes[k] placeholder ids; return (ids, slot start positions)."""
    if ids.count(locator_id) != len(slot_sizes):
        raise ValueError(f"the prompt has {ids.count(locator_id)} audio locators for {len(slot_sizes)} audios")
    out, starts, k = [], [], 0
    for t in ids:
        if t == locator_id:
            starts.append(len(out))
            out.extend([placeholder_id] * slot_sizes[k])
            k += 1
        else:
            out.append(t)
    return out, starts


class _SafetensorsFile:
    """`from_pretrained`-shaped loader of one repo's model.safetensors, so load_pretrained's error policy applies."""

    @staticmethod
    def from_pretrained(source: str, revision: str | None = None, local_files_only: bool = False, **_):
        from safetensors.torch import load_file

        if os.path.isdir(source):
            path = os.path.join(source, "model.safetensors")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no model.safetensors in {source}")
        else:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(source, "model.safetensors", revision=revision, local_files_only=local_files_only)
        return load_file(path)


class _ConfigFile:
    @staticmethod
    def from_pretrained(source: str, revision: str | None = None, local_files_only: bool = False, **_):
        if os.path.isdir(source):
            path = os.path.join(source, "config.json")
        else:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(source, "config.json", revision=revision, local_files_only=local_files_only)
        with open(path, encoding="utf-8") as f:
            return json.load(f)


def _build_connector(torch, cfg: dict[str, Any], d_model: int, heads: int, llm_hidden: int, n_layers: int):
    """The Q-Former connector as the release defines it, from stock modules, with the release's parameter names."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertEncoder

    nn = torch.nn
    mode = cfg.get("connector_mode", "qformer_1")
    if mode != "qformer_1":
        raise NotImplementedError(f"DeSTA connector_mode {mode!r}: only 'qformer_1' (the released one) is rebuilt")
    enc_id = cfg.get("encoder_model_id")
    targets = TARGET_LAYERS.get(enc_id) or cfg.get("target_layer_ids")
    if not targets:
        raise HFLoadError(f"DeSTA config: no target layers known for encoder_model_id={enc_id!r} "
                          f"(known: {', '.join(TARGET_LAYERS)}; or give target_layer_ids in config.json)")
    if max(targets) >= n_layers:
        raise HFLoadError(f"DeSTA config: target layer {max(targets)} but the encoder has {n_layers} layers")
    prompt_size = int(cfg.get("prompt_size", 64))
    qc = BertConfig(num_hidden_layers=int(cfg.get("qformer_num_hidden_layers", 2)), num_attention_heads=heads,
                    hidden_size=d_model, add_cross_attention=True, is_decoder=True)
    qc._attn_implementation = "eager"

    class Connector(nn.Module):
        def __init__(self):
            super().__init__()
            self.target_layer_ids = list(targets)
            self.prompt_size = prompt_size
            self.layer_prompts = nn.ParameterList(
                [nn.Parameter(torch.zeros(1, prompt_size, d_model)) for _ in targets])
            self.layer_weights = nn.Parameter(torch.zeros(prompt_size, len(targets)))
            self.qformer = BertEncoder(qc)
            self.proj = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, llm_hidden))

    return Connector()


class DeSTA25Audio(Model):
    name = "desta2.5"
    description = "DeSTA2.5-Audio (Llama-3.1-8B + Whisper-large-v3 + Q-Former; transformers)"
    source = f"Hugging Face {HUB_ID} (+ its LLM and Whisper repos); github.com/kehanlu/DeSTA2.5-Audio"
    capabilities = frozenset({"audio", "text", "multi_audio", "multi_turn_audio"})
    Config = DestaConfig
    sample_rate = SAMPLE_RATE
    default_batch_size = 4
    audio_fed = "reported"

    def __init__(self, config: DestaConfig):
        super().__init__(config)
        if config.batch_size:
            self.preferred_batch_size = config.batch_size
        self._loaded = False
        self._last_generation: dict[str, Any] | None = None
        self._vad = None

    @classmethod
    def preflight(cls, config: DestaConfig) -> None:
        if config.transcription == "vad":
            _silero()

    # ------------------------------------------------------------------ loading
    def _load(self):
        if self._loaded:
            return
        torch, transformers = import_hf()
        c = self.config
        local = bool(c.path)
        src = c.path or HUB_ID
        rev = c.revision or REVISION
        common = dict(hub_id=HUB_ID, revision=rev, trust_remote_code=None, local_path=local)
        self.desta_config = cfg = load_pretrained(_ConfigFile, src, what="config.json", **common)
        weights = load_pretrained(_SafetensorsFile, src, what="connector weights (model.safetensors)", **common)
        self._device = resolve_device(c.device)
        self._dtype = resolve_dtype(c.dtype, self._device)  # the LLM's
        # the release loads only the LLM in bfloat16 and keeps Whisper and the connector in float32
        self._audio_dtype = torch.float32 if c.audio_dtype == "float32" else self._dtype
        llm_id, enc_id = cfg.get("llm_model_id"), cfg.get("encoder_model_id")
        if not llm_id or not enc_id:
            raise HFLoadError(f"{src}/config.json names no llm_model_id / encoder_model_id; not a DeSTA2.5 config")
        self.llm_id, self.encoder_id = llm_id, enc_id
        tr = c.trust_remote_code
        llm_src, enc_src = c.llm_path or llm_id, c.encoder_path or enc_id
        self.llm_revision = sub_model_revision(llm_id, c.llm_revision, bool(c.llm_path))
        self.encoder_revision = sub_model_revision(enc_id, c.encoder_revision, bool(c.encoder_path))
        llm_common = dict(hub_id=llm_id, revision=self.llm_revision, trust_remote_code=tr,
                          local_path=bool(c.llm_path))
        enc_common = dict(hub_id=enc_id, revision=self.encoder_revision, trust_remote_code=tr,
                          local_path=bool(c.encoder_path))
        tok = load_pretrained(transformers.AutoTokenizer, llm_src, what="LLM tokenizer", **llm_common)
        llm = load_pretrained(transformers.AutoModelForCausalLM, llm_src, what="LLM", dtype=self._dtype, **llm_common)
        whisper = load_pretrained(transformers.WhisperForConditionalGeneration, enc_src, what="Whisper encoder",
                                  dtype=self._audio_dtype, **enc_common)
        proc = load_pretrained(transformers.AutoProcessor, enc_src, what="Whisper processor", **enc_common)
        wc = whisper.config
        connector = _build_connector(torch, cfg, wc.d_model, wc.encoder_attention_heads,
                                     llm.get_input_embeddings().weight.shape[1], wc.encoder_layers)
        state = {k[len(CONNECTOR_PREFIX):]: v for k, v in weights.items() if k.startswith(CONNECTOR_PREFIX)}
        expected = set(connector.state_dict())
        missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unknown:  # a connector left at its initial values would answer with garbage, silently
            raise HFLoadError(f"{src} model.safetensors does not match the DeSTA2.5 connector: missing "
                              f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unknown[:5]}")
        connector.load_state_dict(state, strict=True)
        self.locator = cfg.get("audio_locator", "<|AUDIO|>")
        placeholder = cfg.get("placeholder_token", "<|reserved_special_token_87|>")
        tok.add_tokens([self.locator])  # the release adds it as one (non-special) token
        if len(tok.tokenize(self.locator)) != 1 or len(tok.tokenize(placeholder)) != 1:
            raise HFLoadError(f"the LLM tokenizer of {llm_src!r} does not keep {self.locator!r} / {placeholder!r} "
                              "as single tokens; not the DeSTA2.5 LLM tokenizer")
        self.locator_id = tok.convert_tokens_to_ids(self.locator)
        self.placeholder_id = tok.convert_tokens_to_ids(placeholder)
        tok.pad_token, tok.padding_side = tok.eos_token, "left"
        llm.to(device=self._device, dtype=self._dtype).eval()
        for m in (whisper, connector):
            m.to(device=self._device, dtype=self._audio_dtype).eval()
        self.tok, self.llm, self.whisper, self.processor, self.connector = tok, llm, whisper, proc, connector
        self.llm_commit = getattr(llm.config, "_commit_hash", None)
        self.encoder_commit = getattr(wc, "_commit_hash", None)
        if c.transcription == "vad":
            self._vad = _silero()
        self._loaded = True

    # ------------------------------------------------------------------ audio
    def _features(self, clips: list) -> Any:
        feats = self.processor.feature_extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        return feats.to(device=self._device, dtype=self._audio_dtype)

    def connector_outputs(self, feats):
        """(n_clips, prompt_size, llm_hidden): the Q-Former outputs over the target Whisper layers."""
        torch, _ = import_hf()
        enc, con = self.whisper.model.encoder, self.connector
        gelu = torch.nn.functional.gelu
        h = gelu(enc.conv2(gelu(enc.conv1(feats)))).permute(0, 2, 1)
        h = h + enc.embed_positions.weight[: enc.config.max_source_positions]
        per_layer = []
        for i, layer in enumerate(enc.layers):
            h = layer(h, attention_mask=None)
            h = h[0] if isinstance(h, tuple) else h
            if i in con.target_layer_ids:
                q = con.layer_prompts[con.target_layer_ids.index(i)].expand(h.shape[0], -1, -1)
                per_layer.append(con.qformer(q, encoder_hidden_states=h).last_hidden_state[:, :con.prompt_size])
        stacked = torch.stack(per_layer, dim=2)  # (n, prompt, layers, d)
        mix = torch.softmax(con.layer_weights.float(), dim=-1).to(stacked.dtype).unsqueeze(-1)
        return con.proj((stacked * mix).sum(dim=2))

    def _transcripts(self, clips: list, feats) -> list[str]:
        torch, _ = import_hf()
        if self.config.transcription == "vad":
            speech = [bool(self._vad(torch.as_tensor(x, dtype=torch.float32))) for x in clips]
        else:
            speech = [True] * len(clips)
        out = [" "] * len(clips)
        idx = [i for i, s in enumerate(speech) if s]
        if idx:
            ids = self.whisper.generate(input_features=feats[idx], max_new_tokens=self.config.asr_max_new_tokens)
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            for i, t in zip(idx, texts):
                out[i] = t.strip()
        return out

    # ------------------------------------------------------------------ prompts
    def conversation(self, r: Request) -> tuple[list[dict[str, str]], list]:
        """Request -> (chat messages with the audio locator, clips at 16 kHz in order)."""
        conv, clips = [], []
        sys_prompt = self.config.system_prompt or DEFAULT_SYSTEM_PROMPT
        if not any(m["role"] == "system" for m in r.messages):
            conv.append({"role": "system", "content": sys_prompt})
        for m in r.messages:
            text, n = render_user_text(m["content"], self.locator)
            if n and m["role"] != "user":
                raise ValueError(f"audio in a {m['role']!r} message; DeSTA2.5 takes audio in user turns")
            clips.extend(p["audio"].load(SAMPLE_RATE)[0] for p in m["content"] if p["type"] == "audio")
            conv.append({"role": m["role"], "content": text})
        return conv, clips

    def prompt_ids(self, conv: list[dict[str, str]], slot_sizes: list[int]) -> tuple[list[int], list[int]]:
        text = self.tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        text = text.replace(self.locator, f"<start_audio>{self.locator}<end_audio>")
        ids = self.tok(text, add_special_tokens=False)["input_ids"]  # the template writes <|begin_of_text|>
        return splice_audio_slots(ids, self.locator_id, slot_sizes, self.placeholder_id)

    # ------------------------------------------------------------------ generation
    def _run(self, reqs: list[Request], prepared: list[tuple[list, list]]) -> list[tuple[str, float | None]]:
        torch, _ = import_hf()
        gen = reqs[0].generation
        with torch.inference_mode():
            clips = [x for _, cl in prepared for x in cl]
            feats = self._features(clips) if clips else None
            audio_vecs = self.connector_outputs(feats) if clips else None
            transcripts = self._transcripts(clips, feats) if clips else []
            embed = self.llm.get_input_embeddings()
            rows, k = [], 0
            for conv, cl in prepared:
                trans_ids = [self.tok(t, add_special_tokens=False)["input_ids"] for t in transcripts[k:k + len(cl)]]
                sizes = [self.connector.prompt_size + len(t) for t in trans_ids]
                ids, starts = self.prompt_ids(conv, sizes)
                e = embed(torch.tensor(ids, device=self._device))
                for j, (s, t) in enumerate(zip(starts, trans_ids)):
                    slot = [audio_vecs[k + j].to(e.dtype)]
                    if t:
                        slot.append(embed(torch.tensor(t, device=self._device)))
                    slot = torch.cat(slot, dim=0)
                    e[s:s + slot.shape[0]] = slot
                rows.append(e)
                k += len(cl)
            width = max(e.shape[0] for e in rows)
            pad = embed(torch.tensor([self.tok.pad_token_id], device=self._device))[0]
            batch = torch.stack([torch.cat([pad.expand(width - e.shape[0], -1), e]) for e in rows])
            mask = torch.tensor([[0] * (width - e.shape[0]) + [1] * e.shape[0] for e in rows], device=self._device)
            kw = generation_kwargs(gen)
            kw["pad_token_id"] = self.tok.pad_token_id
            if gen.seed is not None:
                torch.manual_seed(int(gen.seed))
            out = self.llm.generate(inputs_embeds=batch, attention_mask=mask, **kw)
        texts = self.tok.batch_decode(out, skip_special_tokens=True)
        self._last_generation = {**kw, "seed": gen.seed}
        fed = [round(sum(min(len(x) / SAMPLE_RATE, WINDOW_S) for x in cl), 3) if cl else None for _, cl in prepared]
        return [(t.strip(), f) for t, f in zip(texts, fed)]

    def generate(self, requests: list[Request]) -> list[Response]:
        self._load()
        out: dict[str, Response] = {}
        groups: dict[tuple, list[tuple[Request, tuple[list, list]]]] = {}
        for r in requests:  # a request with unreadable audio fails alone
            try:
                item = (r, self.conversation(r))
            except Exception as e:
                out[r.key] = Response(key=r.key, error=f"{type(e).__name__}: {e}")
                continue
            groups.setdefault(tuple(sorted(r.generation.to_dict().items())), []).append(item)
        for items in groups.values():
            t0 = time.perf_counter()
            try:
                answers = self._run([r for r, _ in items], [p for _, p in items])
            except Exception as e:
                if len(items) == 1:
                    out[items[0][0].key] = Response(key=items[0][0].key, error=f"{type(e).__name__}: {e}")
                    continue
                answers = []
                for r, p in items:  # find the request that breaks the batch; the others still answer
                    try:
                        answers.append(self._run([r], [p])[0])
                    except Exception as e1:
                        answers.append(e1)
            dt = (time.perf_counter() - t0) / len(items)
            for (r, _), a in zip(items, answers):
                if isinstance(a, Exception):
                    out[r.key] = Response(key=r.key, error=f"{type(a).__name__}: {a}")
                else:
                    out[r.key] = Response(key=r.key, text=a[0], latency_s=dt,
                                          extra={"audio_seconds_fed": a[1]} if a[1] is not None else {})
        return [out[r.key] for r in requests]

    # ------------------------------------------------------------------ identity
    def info(self) -> dict[str, Any]:
        c = self.config
        d: dict[str, Any] = {
            "backend": "transformers (DeSTA2.5 rebuilt from stock classes)", "transformers": transformers_version(),
            "model": HUB_ID, "path": c.path, "revision": c.revision or REVISION,
            "llm_revision": c.llm_revision, "encoder_revision": c.encoder_revision,
            "dtype": dtype_name(self._dtype) if self._loaded else c.dtype, "audio_dtype": c.audio_dtype,
            "transcription": c.transcription,
            "system_prompt": c.system_prompt or DEFAULT_SYSTEM_PROMPT,
            "long_audio": {"policy": "truncate: Whisper's 30 s window (extra.audio_seconds_fed)", "window_s": WINDOW_S},
        }
        if not (c.revision or REVISION):
            d["revision_note"] = "NOT PINNED: pin -M revision / llm_revision / encoder_revision before publishing"
        if c.transcription == "vad":
            d["silero_vad"] = _silero_version()
        if self._loaded:
            d.update(llm_revision=self.llm_revision, encoder_revision=self.encoder_revision)
            d.update(llm=self.llm_id, encoder=self.encoder_id, llm_commit=self.llm_commit,
                     encoder_commit=self.encoder_commit, prompt_size=self.connector.prompt_size,
                     target_layers=self.connector.target_layer_ids)
        if self._last_generation is not None:
            d["generation"] = self._last_generation
        return d

    def close(self) -> None:
        if self._loaded:
            del self.llm, self.whisper, self.connector
        self._loaded = False


def _silero():
    """silero VAD as a predicate (clip -> any speech?), or an error naming the package and the alternative."""
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad
    except ImportError:
        raise HFLoadError("DeSTA2.5 transcribes a clip only when silero VAD hears speech (-M transcription=vad, "
                          f"the release's rule): {VAD_EXTRA}; or -M transcription=asr to transcribe every clip "
                          "(differs from the release on non-speech audio)") from None
    vad = load_silero_vad()
    return lambda x: get_speech_timestamps(x, vad, sampling_rate=SAMPLE_RATE)


def _silero_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("silero-vad")
    except Exception:
        return None
