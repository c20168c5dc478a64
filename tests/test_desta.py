"""The DeSTA2.5-Audio adapter (`desta2.5`) on a tiny random release built locally.

The tiny release mirrors the real one's layout: a folder with config.json (llm_model_id / encoder_model_id
pointing at local folders, prompt_size, qformer layers, target_layer_ids) and model.safetensors holding
only `perception.connector.*`; a tiny stock Llama (byte-level tokenizer, Llama-3-style template) and a
tiny stock Whisper in their own folders. Everything loads through the adapter's real `-M path=` code.
Most tests replace Whisper ASR by a stand-in transcript (fast, deterministic); test_real_whisper_asr runs
the tiny Whisper's own generate + WhisperProcessor decode. silero VAD is replaced by a stand-in predicate
(the real silero model is untested here).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from evalkit.models import desta
from evalkit.models.desta import DeSTA25Audio, render_user_text, splice_audio_slots
from evalkit.models.hf_common import HFLoadError
from evalkit.types import AudioRef, GenerationConfig, Request

SR = 16000
PROMPT = 4
REAL_TRANSCRIPTS = DeSTA25Audio._transcripts  # kept before the module fixture swaps in the stand-in
SPECIAL = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
           "<|reserved_special_token_87|>"]
TEMPLATE = ("{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
            "'<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def build_tiny_release(root: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIAL)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    tok.chat_template = TEMPLATE
    torch.manual_seed(seed)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab) + 8, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=2048, eos_token_id=vocab["<|eot_id|>"],
                                       initializer_range=0.5))  # large: the slot contents move the logits
    (root / "llm").mkdir(parents=True)
    llm.save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    wh = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=64))
    wh.save_pretrained(root / "whisper")
    wsp = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]  # ids 0..2 = pad/eos, start, -
    wv = {t: i for i, t in enumerate(wsp)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet())[:61]:
        wv[ch] = len(wv)
    wtk = Tokenizer(models.BPE(vocab=wv, merges=[]))
    wtk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    wtk.decoder = decoders.ByteLevel()
    wtk.add_special_tokens(wsp)
    wtok = WhisperTokenizerFast(tokenizer_object=wtk, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), wtok).save_pretrained(root / "whisper")
    cfg = {"model_type": "desta25", "llm_model_id": str(root / "llm"), "encoder_model_id": str(root / "whisper"),
           "connector_mode": "qformer_1", "qformer_num_hidden_layers": 1, "prompt_size": PROMPT,
           "target_layer_ids": [0, 1], "audio_locator": "<|AUDIO|>",
           "placeholder_token": "<|reserved_special_token_87|>"}
    (root / "desta").mkdir()
    (root / "desta" / "config.json").write_text(json.dumps(cfg))
    con = desta._build_connector(torch, cfg, 16, 2, 32, 2)
    for p in con.parameters():  # trained-looking values, so a connector left at zeros would show
        torch.nn.init.normal_(p, std=0.5)
    save_file({f"perception.connector.{k}": v.contiguous() for k, v in con.state_dict().items()},
              str(root / "desta" / "model.safetensors"))
    return root / "desta"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return build_tiny_release(tmp_path_factory.mktemp("desta"))


def fixed_transcripts(self, clips, feats):  # stand-in for Whisper ASR (untested: tiny Whisper cannot decode)
    return ["hi" if float(np.abs(x).max()) > 0.2 else " " for x in clips]


@pytest.fixture(scope="module")
def adapter(release):
    mp = pytest.MonkeyPatch()
    mp.setattr(DeSTA25Audio, "_transcripts", fixed_transcripts)
    m = DeSTA25Audio.from_args({"path": str(release), "transcription": "asr", "device": "cpu", "dtype": "float32"})
    m._load()
    yield m
    mp.undo()


def tone(hz: float) -> np.ndarray:
    return (0.1 * np.sin(2 * np.pi * hz * np.arange(SR) / SR)).astype(np.float32)


def clip(seed: int, amp: float = 0.1) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(SR)).astype(np.float32)


def request(key, text, *clips, max_new_tokens=4):
    content = [{"type": "audio", "audio": AudioRef(array=c, sample_rate=SR)} for c in clips]
    content.append({"type": "text", "text": text})
    return Request(key=key, messages=[{"role": "user", "content": content}],
                   generation=GenerationConfig(max_new_tokens=max_new_tokens))


def test_render_and_splice_by_hand():
    parts = [{"type": "audio"}, {"type": "text", "text": "Q?"}]
    assert render_user_text(parts, "<A>") == ("<A>\nQ?", 1)
    assert render_user_text([{"type": "text", "text": "x"}, {"type": "audio"}], "<A>") == ("x<A>", 1)
    ids, starts = splice_audio_slots([1, 9, 2, 9, 3], 9, [2, 3], 0)
    assert ids == [1, 0, 0, 2, 0, 0, 0, 3] and starts == [1, 4]
    with pytest.raises(ValueError, match="2 audio locators for 1 audios"):
        splice_audio_slots([9, 9], 9, [1], 0)


def test_prompt_layout_matches_the_release(adapter):
    conv, clips = adapter.conversation(request("a", "What is it?", clip(0)))
    assert conv == [{"role": "system", "content": "Focus on the audio clips and instructions."},
                    {"role": "user", "content": "<|AUDIO|>\nWhat is it?"}] and len(clips) == 1
    ids, starts = adapter.prompt_ids(conv, [PROMPT + 2])
    tok = adapter.tok
    expected_text = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nFocus on the audio clips and "
                     "instructions.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<start_audio>")
    head = tok(expected_text, add_special_tokens=False)["input_ids"]
    assert ids[:len(head)] == head and starts == [len(head)]
    assert ids[len(head):len(head) + PROMPT + 2] == [adapter.placeholder_id] * (PROMPT + 2)
    tail = tok("<end_audio>\nWhat is it?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
               add_special_tokens=False)["input_ids"]
    assert ids[len(head) + PROMPT + 2:] == tail


def first_logits(m, req):
    """Next-token logits the LLM sees for `req` (hooks the LLM's forward on the embeddings the adapter builds)."""
    seen = []
    h = m.llm.register_forward_hook(lambda mod, a, kw, out: seen.append(out.logits[:, -1].clone()), with_kwargs=True)
    try:
        r = m.generate([req])[0]
    finally:
        h.remove()
    assert r.error is None, r.error
    return seen[0][0]


def test_audio_and_transcription_reach_the_llm(adapter, monkeypatch):
    a, b = first_logits(adapter, request("a", "Q", tone(300))), first_logits(adapter, request("b", "Q", clip(2)))
    assert (a - b).abs().max() > 1e-4  # two clips, same text: different logits
    # the connector output is what carries the clip: zero it and the two clips become identical
    monkeypatch.setattr(DeSTA25Audio, "connector_outputs",
                        lambda self, f: torch.zeros(f.shape[0], PROMPT, 32))
    a0, b0 = first_logits(adapter, request("a", "Q", tone(300))), first_logits(adapter, request("b", "Q", tone(500)))
    assert torch.allclose(a0, b0)  # same (blank) transcript, zeroed connector: nothing else carries the clip
    c0 = first_logits(adapter, request("c", "Q", clip(2)))  # stand-in transcript "hi" is spliced into the slot
    assert (a0 - c0).abs().max() > 1e-4


def test_slot_holds_connector_vectors_then_transcript_embeddings(adapter, monkeypatch):
    """The embeddings the LLM is given: at the audio slot, the connector's prompt_size vectors, then the
    LLM embeddings of the transcript; every other position the embedding of its prompt token."""
    monkeypatch.setattr(DeSTA25Audio, "connector_outputs", lambda self, f: torch.full((f.shape[0], PROMPT, 32), 7.0))
    seen = []
    h = adapter.llm.register_forward_pre_hook(lambda mod, a, kw: seen.append(kw.get("inputs_embeds")),
                                              with_kwargs=True)
    try:
        req = request("a", "Q", clip(2))  # stand-in transcript "hi"
        assert adapter.generate([req])[0].error is None
    finally:
        h.remove()
    got = seen[0][0]
    conv, _ = adapter.conversation(req)
    hi = adapter.tok("hi", add_special_tokens=False)["input_ids"]
    ids, (start,) = adapter.prompt_ids(conv, [PROMPT + len(hi)])
    emb = adapter.llm.get_input_embeddings().weight.detach()
    assert got.shape[0] == len(ids)
    assert torch.all(got[start:start + PROMPT] == 7.0)
    assert torch.equal(got[start + PROMPT:start + PROMPT + len(hi)], emb[hi])
    rest = [i for i in range(len(ids)) if not start <= i < start + PROMPT + len(hi)]
    assert torch.equal(got[rest], emb[[ids[i] for i in rest]])


def test_batch_equals_single_and_info(adapter):
    reqs = [request("a", "Q", clip(3)), request("b", "a longer question here", clip(4), clip(5, amp=0.5)),
            request("c", "text only")]
    batch = adapter.generate(reqs)
    single = [adapter.generate([r])[0] for r in reqs]
    assert [r.error for r in batch] == [None] * 3
    assert [r.text for r in batch] == [r.text for r in single]
    assert batch[1].extra["audio_seconds_fed"] == 2.0 and "audio_seconds_fed" not in batch[2].extra
    info = adapter.info()
    assert info["revision_note"].startswith("NOT PINNED") and info["prompt_size"] == PROMPT
    assert info["generation"]["do_sample"] is False


def test_connector_weights_must_all_be_present(release, tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import load_file, save_file
    bad = tmp_path / "bad"
    shutil.copytree(release, bad)
    w = load_file(str(release / "model.safetensors"))
    w.pop(next(k for k in w if "layer_weights" in k))
    save_file(w, str(bad / "model.safetensors"))
    m = DeSTA25Audio.from_args({"path": str(bad), "transcription": "asr", "device": "cpu"})
    with pytest.raises(HFLoadError, match="missing.*layer_weights"):
        m.generate([request("a", "Q", clip(0))])


def test_offline_error_names_hub_id_revision_and_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    m = DeSTA25Audio.from_args({"transcription": "asr", "revision": "abc123"})
    with pytest.raises(HFLoadError) as e:
        m.generate([request("x", "hi")])
    msg = str(e.value)
    assert "DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B" in msg and "abc123" in msg and "-M path=DIR" in msg


def test_vad_mode_names_the_package_when_missing(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_silero(name, *a, **k):
        if name == "silero_vad":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_silero)
    with pytest.raises(HFLoadError, match="pip install silero-vad.*-M transcription=asr"):
        DeSTA25Audio.preflight(DeSTA25Audio.Config())


def test_real_whisper_asr_and_vad_rule(release, monkeypatch):
    """Unpatched ASR: the tiny Whisper transcribes each clip (checked against transformers' own generate +
    decode on the same features); a clip the VAD hears no speech in gets " " and is not transcribed."""
    monkeypatch.setattr(DeSTA25Audio, "_transcripts", REAL_TRANSCRIPTS)
    m = DeSTA25Audio.from_args({"path": str(release), "transcription": "asr", "device": "cpu", "dtype": "float32",
                                "asr_max_new_tokens": 6})
    m._load()
    clips = [tone(300), clip(2)]
    feats = m._features(clips)
    ref = m.processor.batch_decode(m.whisper.generate(input_features=feats, max_new_tokens=6),
                                   skip_special_tokens=True)
    got = m._transcripts(clips, feats)
    assert got == [t.strip() for t in ref] and all(got)
    assert m.generate([request("a", "Q", clips[0])])[0].error is None
    m.config = m.config.model_copy(update={"transcription": "vad"})
    m._vad = lambda x: [{"start": 0, "end": 10}] if float(x.abs().max()) > 0.2 else []  # stand-in VAD
    calls = []
    real_generate = m.whisper.generate
    monkeypatch.setattr(m.whisper, "generate", lambda **kw: calls.append(kw["input_features"].shape[0])
                        or real_generate(**kw))
    assert m._transcripts(clips, feats) == [" ", got[1]] and calls == [1]


def test_precision_follows_the_release(release):
    """The release runs only the LLM in bfloat16; Whisper and the connector stay float32."""
    m = DeSTA25Audio.from_args({"path": str(release), "transcription": "asr", "device": "cpu", "dtype": "bfloat16",
                                "asr_max_new_tokens": 4})
    m._load()
    assert next(m.llm.parameters()).dtype == torch.bfloat16
    assert {p.dtype for p in m.whisper.parameters()} | {p.dtype for p in m.connector.parameters()} == {torch.float32}
    r = m.generate([request("a", "Q", clip(2))])[0]
    assert r.error is None, r.error
    assert m.info()["audio_dtype"] == "float32"


def test_sub_model_revisions_pin_only_the_ids_they_were_found_for():
    from evalkit.models.desta import sub_model_revision

    # openai/whisper-large-v3 @ 06f233fe... (the commit the hub mirror aoiandroid/whisper-large-v3 names)
    assert sub_model_revision("openai/whisper-large-v3", None, False) == "06f233fe06e710322aca913c1bc4249a0d71fce1"
    assert sub_model_revision("openai/whisper-large-v3", "abc", False) == "abc"  # -M encoder_revision wins
    assert sub_model_revision("openai/whisper-large-v3", None, True) is None  # a local folder has no revision
    assert sub_model_revision("DeSTA-ntu/Llama-3.1-8B-Instruct", None, False) is None  # no sha found: NOT PINNED
    assert sub_model_revision("openai/whisper-tiny", None, False) is None


def test_real_silero_vad_hears_speech_and_not_silence():
    """The pip package's bundled model (no download): a real speech clip of the demo set is speech;
    silence and faint noise are not. Skipped where silero-vad is not installed."""
    pytest.importorskip("silero_vad")
    import soundfile as sf
    import torch

    from evalkit.models.desta import SAMPLE_RATE, _silero

    vad = _silero()
    speech, sr = sf.read(Path(__file__).resolve().parents[1] / "tasks/sseu/synth/speech/s01.flac", dtype="float32")
    assert sr == SAMPLE_RATE
    assert len(vad(torch.as_tensor(speech))) >= 1
    assert vad(torch.zeros(SAMPLE_RATE * 2)) == []
    noise = np.random.default_rng(0).standard_normal(SAMPLE_RATE * 2).astype("float32") * 1e-3
    assert vad(torch.as_tensor(noise)) == []
