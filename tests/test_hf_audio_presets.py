"""The `hf` adapter's other presets (Qwen2.5-Omni, Audio Flamingo 3, Voxtral) on tiny random models.

tests/test_hf_audio.py verifies Qwen2-Audio; this file does the same for the three presets that
were only wired. For each, a tiny random-initialized model is built from its config class in the
installed transformers, a processor is built locally (tokenizer with the special tokens that
model's processor needs, its feature extractor, a chat template), both are saved to a temp dir and
loaded through the adapter's normal `-M path=DIR -M preset=NAME` code (AutoProcessor +
from_pretrained). Checked per preset: batched greedy == one by one (left padding, also at the
logits level), audio reaches the audio encoder with that clip's own features and changes the
logits, greedy is forced even when the checkpoint's generation_config samples (Qwen2.5-Omni), and
info() records the effective generation config.

What is a stand-in, not the real checkpoint's file:
- the chat templates of Qwen2.5-Omni and Audio Flamingo 3 are hand-written in the models' format
  (Qwen `<|im_start|>` turns; `<|audio_bos|><|AUDIO|><|audio_eos|>` resp. `<sound>` per audio);
- the tokenizers are byte-level with only the special tokens the processors look up;
- Voxtral: a tiny `tekken.json` (256 byte tokens + 100 special tokens, [AUDIO] at id 24 where
  VoxtralProcessor hard-codes it, [BEGIN_AUDIO] 25) read by the real mistral-common; skipped when
  mistral-common[audio] is not installed.
- Qwen2.5-Omni: its processor requires a video processor, which needs torchvision. Where
  torchvision is not importable (CPU-only torch here: the PyPI torchvision wheel links CUDA
  libraries), the processor is built and loaded without a video processor through a test-only
  patch of transformers' processor plumbing (`_omni_without_torchvision`); where torchvision works,
  the real Qwen2VLVideoProcessor is used and nothing is patched. A real run needs torchvision.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_hf_audio import (  # noqa: E402
    MIN_LOGIT_DIFF,
    audio_probe,
    check_left_padded_batch_equals_single,
    clip,
    first_step_logits,
    request,
)

from evalkit.models.hf_audio import PRESETS, HFAudioLM  # noqa: E402

SR = 16000
OMNI, AF3, VOXTRAL = "qwen2.5-omni", "audio-flamingo-3", "voxtral-mini"


def _has_mistral_common() -> bool:
    try:
        import mistral_common  # noqa: F401
        import soundfile  # noqa: F401
    except ImportError:
        return False
    return True


def _torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or a wheel whose C ops do not match this torch
        return False
    return True


def _byte_level_tokenizer(special: list[str], **kw):
    """A byte-level BPE tokenizer without merges: any text encodes losslessly; `special` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(special)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(special)
    return PreTrainedTokenizerFast(tokenizer_object=tk, **kw), vocab


def _tiny_qwen2_text(vocab_size: int, **extra) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, **extra)


# ---------------------------------------------------------------------------- Qwen2.5-Omni
OMNI_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
                "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>"]
# the Qwen2.5-Omni template's shape (text and audio parts; images/videos left out)
OMNI_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
OMNI_SAMPLING = dict(do_sample=True, temperature=1.5, top_p=0.95, top_k=50)  # "samples by default"


@contextlib.contextmanager
def _omni_without_torchvision():
    """Let Qwen2_5OmniProcessor be built, saved and loaded with no video processor (test-only; a no-op
    where torchvision works). Only `video_processor` is touched: AutoVideoProcessor -> None, and None
    passes the processor's type check; the text/audio path of the processor is the real one."""
    if _torchvision_works():
        yield
        return
    from transformers import processing_utils as pu

    class _NoVideoProcessor:
        @classmethod
        def from_pretrained(cls, *a, **k):
            return None

    get_item = pu._LazyAutoProcessorMapping.__getitem__
    check = pu.ProcessorMixin.check_argument_for_proper_class
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pu._LazyAutoProcessorMapping, "__getitem__",
                   lambda self, key: _NoVideoProcessor if key == "video_processor" else get_item(self, key))
        mp.setattr(pu.ProcessorMixin, "check_argument_for_proper_class",
                   lambda self, name, arg: None if (name == "video_processor" and arg is None) else check(self, name, arg))
        yield


def build_tiny_omni(out_dir: Path, seed: int = 0) -> Path:
    """A tiny Qwen2.5-Omni saved like the real checkpoint: the full Qwen2_5OmniConfig (thinker_config
    nested, audio output off) with `thinker.`-prefixed weights; the adapter loads only the thinker."""
    from transformers import GenerationConfig as HFGen
    from transformers import (
        Qwen2_5OmniConfig,
        Qwen2_5OmniForConditionalGeneration,
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        WhisperFeatureExtractor,
    )

    out_dir = Path(out_dir)
    named = {"audio_token": "<|AUDIO|>", "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
             "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
             "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>"}
    tok, vocab = _byte_level_tokenizer(OMNI_SPECIAL, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                       extra_special_tokens=named)
    video = None
    if _torchvision_works():
        from transformers import Qwen2VLVideoProcessor

        video = Qwen2VLVideoProcessor()
    proc = Qwen2_5OmniProcessor(Qwen2VLImageProcessor(), video, WhisperFeatureExtractor(feature_size=128), tok,
                                chat_template=OMNI_TEMPLATE)
    thinker = dict(
        audio_config=dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                          d_model=32, output_dim=32, n_window=100, max_source_positions=1500),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
        text_config=_tiny_qwen2_text(len(vocab), rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                  "mrope_section": [2, 1, 1]}),
        audio_token_index=vocab["<|AUDIO|>"], image_token_index=vocab["<|IMAGE|>"],
        video_token_index=vocab["<|VIDEO|>"], audio_start_token_id=vocab["<|audio_bos|>"],
        audio_end_token_id=vocab["<|audio_eos|>"], vision_start_token_id=vocab["<|vision_bos|>"],
        vision_end_token_id=vocab["<|vision_eos|>"], user_token_id=vocab["u"])  # vision_*: read by get_rope_index
    cfg = Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
    torch.manual_seed(seed)
    model = Qwen2_5OmniForConditionalGeneration(cfg)
    model.generation_config = HFGen(**OMNI_SAMPLING, eos_token_id=[vocab["<|im_end|>"], vocab["<|endoftext|>"]],
                                    pad_token_id=vocab["<|endoftext|>"])
    model.save_pretrained(out_dir)
    with _omni_without_torchvision():
        if video is None:  # save without the absent video processor
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(Qwen2_5OmniProcessor, "get_attributes",
                           classmethod(lambda cls: ["image_processor", "feature_extractor", "tokenizer"]))
                proc.save_pretrained(out_dir)
        else:
            proc.save_pretrained(out_dir)
    torch.save({k: v.clone() for k, v in model.thinker.state_dict().items()}, out_dir / "thinker_reference.pt")
    return out_dir


# ---------------------------------------------------------------------------- Audio Flamingo 3
AF3_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<sound>"]
AF3_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'audio' %}<sound>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_af3(out_dir: Path, seed: int = 0) -> Path:
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
        WhisperFeatureExtractor,
    )
    from transformers import GenerationConfig as HFGen

    out_dir = Path(out_dir)
    tok, vocab = _byte_level_tokenizer(AF3_SPECIAL, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    proc = AudioFlamingo3Processor(WhisperFeatureExtractor(feature_size=128), tok, chat_template=AF3_TEMPLATE,
                                   audio_token="<sound>")
    cfg = AudioFlamingo3Config(
        audio_config=dict(model_type="audioflamingo3_encoder", hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=2, num_mel_bins=128, max_source_positions=1500),
        text_config=dict(model_type="qwen2", **_tiny_qwen2_text(len(vocab))),
        audio_token_id=vocab["<sound>"])
    torch.manual_seed(seed)
    model = AudioFlamingo3ForConditionalGeneration(cfg)
    model.generation_config = HFGen(eos_token_id=[vocab["<|im_end|>"], vocab["<|endoftext|>"]],
                                    pad_token_id=vocab["<|endoftext|>"])
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------- Voxtral
VOX_SPECIAL_COUNT = 100
TEKKEN_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
                  r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _tiny_tekken() -> dict:
    """A tekken.json in the layout mistral-common reads: byte vocab + Voxtral's special-token ids."""
    from mistral_common.tokens.tokenizers.base import SpecialTokens

    names = {i: s.value for i, s in enumerate(list(SpecialTokens)[:22])}  # <unk> <s> </s> [INST] ... [CALL_ID]
    names.update({24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 34: "[TRANSCRIBE]"})
    specials = [{"rank": i, "token_str": names.get(i, f"<SPECIAL_{i}>"), "is_control": True} for i in range(35)]
    vocab = [{"rank": b, "token_bytes": base64.b64encode(bytes([b])).decode(),
              "token_str": chr(b) if 32 <= b < 127 else None} for b in range(256)]
    return {"config": {"pattern": TEKKEN_PATTERN, "num_vocab_tokens": 256, "version": "v11",
                       "default_vocab_size": VOX_SPECIAL_COUNT + 256, "default_num_special_tokens": VOX_SPECIAL_COUNT},
            "vocab": vocab, "special_tokens": specials,
            "audio": {"sampling_rate": SR, "frame_rate": 12.5, "chunk_length_s": 30.0,
                      "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400}}}


def build_tiny_voxtral(out_dir: Path, seed: int = 0) -> Path:
    from transformers import GenerationConfig as HFGen
    from transformers import (
        MistralCommonBackend,
        VoxtralConfig,
        VoxtralForConditionalGeneration,
        VoxtralProcessor,
        WhisperFeatureExtractor,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tekken.json").write_text(json.dumps(_tiny_tekken()))
    tok = MistralCommonBackend.from_pretrained(str(out_dir))
    assert tok.convert_ids_to_tokens(24) == "[AUDIO]"
    proc = VoxtralProcessor(WhisperFeatureExtractor(feature_size=128), tok)
    # the projector folds 4 encoder frames into one token: audio intermediate_size = 4 * hidden_size
    cfg = VoxtralConfig(
        audio_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                          num_mel_bins=128, max_source_positions=1500),
        text_config=dict(model_type="llama", vocab_size=VOX_SPECIAL_COUNT + 256, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         max_position_embeddings=2048),
        audio_token_id=24)
    torch.manual_seed(seed)
    model = VoxtralForConditionalGeneration(cfg)
    model.generation_config = HFGen(bos_token_id=1, eos_token_id=2, pad_token_id=11)
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return out_dir


BUILDERS = {OMNI: build_tiny_omni, AF3: build_tiny_af3, VOXTRAL: build_tiny_voxtral}


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def omni_patch():
    with _omni_without_torchvision():
        yield


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return {}


def _dir(tiny_dirs, tmp_path_factory, name: str) -> Path:
    if name == VOXTRAL and not _has_mistral_common():
        pytest.skip("Voxtral's processor needs mistral-common[audio] (pip install 'mistral-common[audio]')")
    if name not in tiny_dirs:
        tiny_dirs[name] = BUILDERS[name](tmp_path_factory.mktemp(name.replace(".", "_")))
    return tiny_dirs[name]


@pytest.fixture(scope="module")
def adapters(tiny_dirs, tmp_path_factory, omni_patch):
    made: dict[str, HFAudioLM] = {}

    def get(name: str) -> HFAudioLM:
        if name not in made:
            path = _dir(tiny_dirs, tmp_path_factory, name)
            made[name] = HFAudioLM.from_args({"preset": name, "path": str(path), "dtype": "float32", "device": "cpu"})
        return made[name]

    return get


ALL = [OMNI, AF3, VOXTRAL]


def _tower_input(name: str, enc: dict) -> torch.Tensor:
    """What the audio encoder must receive for these processor outputs."""
    feats = enc["input_features"].float()
    if name == OMNI:  # the thinker drops the padded frames and flattens: (mel, frames)
        mask = enc["feature_attention_mask"].bool()
        return feats.permute(0, 2, 1)[mask].permute(1, 0)
    return feats


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", ALL)
def test_batch_of_three_equals_one_by_one(adapters, name):
    m = adapters(name)
    clips = [clip(1, 0.5), clip(2, 1.5), clip(3, 1.0, "tone")]
    texts = ["Hi?", "Which of these sounds is the loudest one in the recording, please tell me?", "Name the sound."]
    reqs = [request(f"k{i}", t, c, max_new_tokens=6) for i, (t, c) in enumerate(zip(texts, clips))]
    check_left_padded_batch_equals_single(m, reqs, name)
    # also at the logits level (texts of a random tiny model can coincide)
    one_step = [request(r.key, r.messages[0]["content"][1]["text"], c, max_new_tokens=1) for r, c in zip(reqs, clips)]
    lb = first_step_logits(m, one_step)
    for i, r in enumerate(one_step):
        ls = first_step_logits(m, [r])[0]
        assert torch.allclose(lb[i], ls, atol=1e-4, rtol=1e-4), (name, r.key, float((lb[i] - ls).abs().max()))
    assert m.info()["generation"]["do_sample"] is False


def probe(m: HFAudioLM, name: str) -> float:
    """test_hf_audio's audio probe, also checking that the encoder gets exactly the processor's features."""
    def expected(r):
        conv, audios = m._conversation(r)
        return _tower_input(name, m._encode([conv], [audios]))

    return audio_probe(m, [clip(11), clip(12, kind="tone")], expected_features=expected)


@pytest.mark.parametrize("name", ALL)
def test_audio_reaches_the_model(adapters, name):
    assert probe(adapters(name), name) > MIN_LOGIT_DIFF


@pytest.mark.parametrize("name", [OMNI, AF3])
def test_probe_fails_when_audio_goes_under_the_wrong_keyword(adapters, tiny_dirs, name):
    """`audios=` (the lmms-eval bug) instead of the processor's `audio=`: the probe must fail."""
    adapters(name)  # build
    broken = HFAudioLM.from_args({"preset": name, "path": str(tiny_dirs[name]), "dtype": "float32", "device": "cpu"})
    broken.audio_kwarg = "audios"
    with pytest.raises(AssertionError):
        assert probe(broken, name) > MIN_LOGIT_DIFF


def test_voxtral_probe_fails_when_audio_is_dropped(adapters, tiny_dirs, monkeypatch):
    adapters(VOXTRAL)  # build
    broken = HFAudioLM.from_args({"preset": VOXTRAL, "path": str(tiny_dirs[VOXTRAL]), "dtype": "float32",
                                  "device": "cpu"})
    real = broken._conversation

    def no_audio(r):
        conv, audios = real(r)
        return [{**t, "content": [p for p in t["content"] if p["type"] != "audio"]} for t in conv], audios

    monkeypatch.setattr(broken, "_conversation", no_audio)
    with pytest.raises(AssertionError, match="audio tower was not called"):
        assert probe(broken, VOXTRAL) > MIN_LOGIT_DIFF


@pytest.mark.parametrize("name", ALL)
def test_info_records_effective_generation(adapters, name):
    m = adapters(name)
    out = m.generate([request("i", "Hello.", clip(4), max_new_tokens=3)])
    assert out[0].error is None, out[0].error
    info = m.info()
    assert info["preset"] == name and info["model_class"] == PRESETS[name].model_class
    assert info["dtype"] == "float32" and info["device"] == "cpu" and info["audio_kwarg"] == PRESETS[name].audio_kwarg
    g = info["generation"]
    assert g["max_new_tokens"] == 3 and g["do_sample"] is False and g["num_beams"] == 1
    assert "temperature" not in g and "top_p" not in g  # no sampling knobs on a greedy call
    assert set(info["checkpoint_generation_defaults"]) >= {"do_sample", "temperature", "top_p", "top_k"}
    json.dumps(info)  # goes into run.json
    # an explicit sampling request is recorded as such
    r = m.generate([request("s", "Hello.", clip(4), max_new_tokens=3, temperature=0.8, seed=7)])[0]
    assert r.error is None, r.error
    g = m.info()["generation"]
    assert g["do_sample"] is True and g["temperature"] == 0.8 and g["seed"] == 7


def test_omni_loads_only_the_thinker_from_the_full_checkpoint(adapters, tiny_dirs):
    m = adapters(OMNI)
    m.generate([request("x", "hi", max_new_tokens=1)])
    assert type(m._model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    assert json.loads((tiny_dirs[OMNI] / "config.json").read_text())["model_type"] == "qwen2_5_omni"
    ref = torch.load(tiny_dirs[OMNI] / "thinker_reference.pt")
    got = m._model.state_dict()
    assert set(got) == set(ref)
    bad = [k for k in ref if not torch.equal(got[k], ref[k])]
    assert not bad, f"thinker weights not loaded from the checkpoint (randomly re-initialized?): {bad[:5]}"
    assert dict(PRESETS[OMNI].extra_generate_kwargs) == {"use_audio_in_video": False}
    assert m.info()["generation"]["use_audio_in_video"] is False


def test_omni_checkpoint_sampling_default_is_overridden(adapters):
    """The saved generation_config samples (do_sample=True, temperature 1.5, like the real Omni's
    sampling default); a naive `generate()` then differs run to run, the adapter's greedy default does not."""
    m = adapters(OMNI)

    def reqs_with(seed=None):
        return [request("a", "Describe it.", clip(21), max_new_tokens=12, seed=seed),
                request("b", "What is it?", clip(22, 1.5), max_new_tokens=12, seed=seed)]

    reqs = reqs_with()
    m.generate(reqs[:1])  # load
    net, proc = m._model, m._processor
    assert net.generation_config.do_sample is True and net.generation_config.temperature == 1.5
    info = m.info()
    assert info["checkpoint_generation_defaults"]["do_sample"] is True and "sampling_guard" in info

    convs = [m._conversation(r) for r in reqs]
    enc = {k: v for k, v in m._encode([c for c, _ in convs], [a for _, a in convs]).items() if k != "num_audio_tokens"}
    n = enc["input_ids"].shape[1]

    def naive(seed, **kw):  # what a harness that forgets do_sample=False gets
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = net.generate(**enc, max_new_tokens=12, **kw)
        return proc.tokenizer.batch_decode(out[:, n:], skip_special_tokens=True)

    sampled = {tuple(naive(s)) for s in (1, 2, 3)}
    assert len(sampled) > 1, "the tiny checkpoint should sample by default (test setup)"
    greedy = [t.strip() for t in naive(0, do_sample=False)]
    runs = [[r.text for r in m.generate(reqs_with(s))] for s in (1, 2, 3)]
    assert runs[0] == runs[1] == runs[2] == greedy, (runs, greedy)
    g = m.info()["generation"]
    assert g["do_sample"] is False and g["num_beams"] == 1


def test_omni_guard_is_what_makes_it_greedy(adapters, monkeypatch):
    """Without the explicit do_sample=False the same adapter call follows the checkpoint and samples."""
    from evalkit.models import hf_common

    m = adapters(OMNI)
    real = hf_common.generation_kwargs
    monkeypatch.setattr(hf_common, "generation_kwargs",
                        lambda gen: {k: v for k, v in real(gen).items() if k not in ("do_sample", "num_beams")})
    texts = {tuple(r.text for r in m.generate([request("a", "Describe it.", clip(21), max_new_tokens=12, seed=s),
                                                request("b", "What is it?", clip(22, 1.5), max_new_tokens=12, seed=s)]))
             for s in (1, 2, 3)}
    assert len(texts) > 1


def test_af3_takes_one_audio_per_prompt(adapters):
    m = adapters(AF3)
    assert "multi_audio" not in m.capabilities
    two = request("two", "Compare.", clip(1))
    two.messages[0]["content"].insert(1, {"type": "audio", "audio": two.messages[0]["content"][0]["audio"]})
    out = m.generate([two, request("one", "Describe.", clip(2)), request("none", "No audio.")])
    assert out[0].error and "one audio per prompt" in out[0].error
    assert out[1].error is None and out[2].error is None


def test_voxtral_conversation_format(adapters):
    """What the adapter hands to VoxtralProcessor.apply_chat_template: audio as a base64 16-bit WAV
    part (mistral-common loads it), text as a text part, one [AUDIO] run per clip in the tokens."""
    import soundfile as sf

    m = adapters(VOXTRAL)
    x = clip(5, 1.0, "tone")
    conv, audios = m._conversation(request("v", "What is it?", x))
    assert audios and conv == [{"role": "user", "content": [
        {"type": "audio", "base64": conv[0]["content"][0]["base64"]}, {"type": "text", "text": "What is it?"}]}]
    wav, sr = sf.read(io.BytesIO(base64.b64decode(conv[0]["content"][0]["base64"])), dtype="float32")
    assert sr == SR and len(wav) == len(x) and np.abs(wav - x).max() < 1e-3
    enc = m._encode([conv], [audios])
    ids = enc["input_ids"][0].tolist()
    assert 25 in ids and ids.count(24) == 375  # [BEGIN_AUDIO] + 30 s window at 12.5 tokens/s
    assert enc["input_features"].shape[0] == 1  # one 30 s chunk
