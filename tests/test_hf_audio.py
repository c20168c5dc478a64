"""The transformers adapter (`hf`, presets) on tiny random-initialized models built locally.

The tiny Qwen2-Audio (Qwen2AudioForConditionalGeneration + a real Qwen2AudioProcessor around a
hand-built byte-level tokenizer and WhisperFeatureExtractor(feature_size=128)) is saved to a temp
dir and loaded through the adapter's normal `-M path=` code, so the real loading, chat-template,
processor, left-padding and decoding code runs. No download, no GPU (the GPU smoke test skips).

Audio must reach the model (PROTOCOLS.md "Known failures": lmms-eval's `audios=`): a forward hook
on the audio tower must fire with this clip's features, and two clips must give different logits;
the same probe is shown to FAIL when the audio is dropped.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from evalkit.models import hf_audio
from evalkit.models.hf_audio import PRESETS, HFAudioLM, Qwen2AudioHF, Qwen25OmniHF
from evalkit.models.hf_common import HFLoadError, generation_kwargs
from evalkit.types import AudioRef, GenerationConfig, Request

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
SR = 16000


# ---------------------------------------------------------------------------- tiny model
def build_tiny_qwen2_audio(out_dir: Path, seed: int = 0, layers: int = 2) -> Path:
    """Save a tiny random Qwen2-Audio checkpoint + processor (the real chat template) to out_dir
    (`layers` decoder layers in its language model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GenerationConfig as HFGen
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    out_dir = Path(out_dir)
    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):  # byte-level: any text encodes losslessly
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIAL)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fe = WhisperFeatureExtractor(feature_size=128)
    # the template Qwen2-Audio-7B-Instruct ships (kept in transformers as the processor's default)
    template = Qwen2AudioProcessor.default_chat_template.fget(None)
    proc = Qwen2AudioProcessor(fe, tok, chat_template=template)
    cfg = Qwen2AudioConfig(
        audio_config=dict(model_type="qwen2_audio_encoder", d_model=32, encoder_layers=1, encoder_attention_heads=2,
                          encoder_ffn_dim=64, num_mel_bins=128, max_source_positions=1500),
        text_config=dict(model_type="qwen2", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024),
        audio_token_index=vocab["<|AUDIO|>"])
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(cfg)
    model.generation_config = HFGen(eos_token_id=[vocab["<|im_end|>"], vocab["<|endoftext|>"]],
                                    pad_token_id=vocab["<|endoftext|>"])
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen2_audio(tmp_path_factory.mktemp("tiny_qwen2_audio"))


@pytest.fixture(scope="module")
def adapter(tiny_dir):
    return HFAudioLM.from_args({"preset": "qwen2-audio", "path": str(tiny_dir), "dtype": "float32",
                                "device": "cpu"})


def clip(seed: int, seconds: float = 1.0, kind: str = "noise") -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(SR * seconds)
    if kind == "tone":
        return (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / SR)).astype(np.float32)
    return (0.1 * rng.standard_normal(n)).astype(np.float32)


def request(key: str, text: str, audio=None, max_new_tokens: int = 6, **gen) -> Request:
    content = []
    if audio is not None:
        ref = audio if isinstance(audio, AudioRef) else AudioRef(array=audio, sample_rate=SR)
        content.append({"type": "audio", "audio": ref})
    content.append({"type": "text", "text": text})
    return Request(key=key, messages=[{"role": "user", "content": content}],
                   generation=GenerationConfig(max_new_tokens=max_new_tokens, **gen))


# ---------------------------------------------------------------------------- the audio probe
MIN_LOGIT_DIFF = 1e-5  # two different clips under the same text must move the next-token logits more


def first_step_logits(m: HFAudioLM, reqs) -> torch.Tensor:
    """The next-token logits of the prompt(s) (one decoding step), rows in request order."""
    got = []
    h = m._model.lm_head.register_forward_hook(lambda mod, a, out: got.append(out[:, -1].detach().float().clone()))
    try:
        out = m.generate(reqs)
    finally:
        h.remove()
    assert all(r.error is None for r in out), [r.error for r in out]
    return got[0]


def audio_probe(model: HFAudioLM, clips: list[np.ndarray], prompt: str = "What sound is this?",
                expected_features=None) -> float:
    """Run each clip alone under the same text (one decoding step) and check that the audio tower ran once
    per clip on non-constant features that differ between the clips (and equal `expected_features(request)`,
    when given). Returns the largest difference between the two clips' next-token logits: callers assert it
    exceeds MIN_LOGIT_DIFF. A dropped `audio=` fails one of these (AssertionError)."""
    model.generate([request("warm", "hi", max_new_tokens=1)])  # load
    tower = model._model.get_submodule("model.audio_tower")
    seen, first = [], []

    def tower_hook(mod, args, kwargs, output):
        seen.append((args[0] if args else kwargs["input_features"]).detach().float().clone())

    h = tower.register_forward_hook(tower_hook, with_kwargs=True)
    try:
        for i, x in enumerate(clips):
            r = request(f"p{i}", prompt, x, max_new_tokens=1)
            first.append(first_step_logits(model, [r])[0])
            assert len(seen) == i + 1, "the audio tower was not called: the audio never reached the model"
            if expected_features is not None:
                want = expected_features(r)
                assert seen[i].shape == want.shape and torch.allclose(seen[i], want), \
                    "the audio tower did not get this clip's features"
    finally:
        h.remove()
    for f in seen:
        assert float(f.std()) > 0, "the audio tower saw constant (empty) features"
    assert not torch.allclose(seen[0], seen[1]), "both clips gave the same features to the audio tower"
    return float((first[0] - first[1]).abs().max())


# ---------------------------------------------------------------------------- tests
def test_import_is_light():
    code = ("import sys, evalkit.models.hf_audio, evalkit.models.hf_common; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown preset 'qwen3-audio'.*qwen2-audio"):
        HFAudioLM.Config(preset="qwen3-audio")
    with pytest.raises(ValueError):  # extra="forbid": a typo fails at load
        HFAudioLM.Config(preset="qwen2-audio", dtyp="float16")
    with pytest.raises(ValueError, match="preset=NAME"):
        HFAudioLM.Config()
    assert Qwen2AudioHF.Config().preset == "qwen2-audio"  # the fixed registry names need no -M preset
    with pytest.raises(ValueError, match="preset"):
        Qwen2AudioHF(Qwen2AudioHF.Config(preset="voxtral-mini"))
    m = hf_audio.AudioFlamingo3HF.from_args({})
    assert "multi_audio" not in m.capabilities and "audio" in m.capabilities
    assert Qwen2AudioHF.from_args({}).info()["model"] == "Qwen/Qwen2-Audio-7B-Instruct"  # no load needed


def test_presets_are_declarative_and_wired():
    """Every preset's class exists in this transformers (or would fail with a version message)."""
    from evalkit.models.hf_common import transformers_version, version_at_least

    assert PRESETS["qwen2-audio"].audio_kwarg == "audio"  # never `audios=`
    assert PRESETS["voxtral-mini"].audio_kwarg is None  # VoxtralProcessor.apply_chat_template path
    assert PRESETS["qwen2.5-omni"].model_class == "Qwen2_5OmniThinkerForConditionalGeneration"  # text only
    for name, p in PRESETS.items():
        if version_at_least(transformers_version(), p.min_transformers):
            assert hasattr(transformers, p.model_class), (name, p.model_class)
        assert p.revision is None or len(p.revision) == 40


def check_left_padded_batch_equals_single(m: HFAudioLM, reqs: list, name: str = "") -> None:
    """Three requests of different prompt lengths: the batch is left-padded and each batched
    output equals running that request alone (greedy)."""
    convs = [m._conversation(r) for r in reqs]
    enc = m._encode([c for c, _ in convs], [a for _, a in convs])
    mask = enc["attention_mask"]
    lengths = mask.sum(1).tolist()
    assert len(set(lengths)) == 3, lengths  # three different prompt lengths
    short = int(np.argmin(lengths))
    assert mask[short, 0] == 0 and mask[short, -1] == 1  # left padding
    batched = m.generate(reqs)
    assert [r.key for r in batched] == [r.key for r in reqs]
    for r, b in zip(reqs, batched):
        assert b.error is None, b.error
        single = m.generate([r])[0]
        assert single.error is None and single.text == b.text, (name, r.key, single.text, b.text)
    assert m.info()["generation"]["do_sample"] is False


def test_left_padded_batch_equals_single(adapter):
    clips = [clip(1, 0.5), clip(2, 1.5), clip(3, 1.0, "tone")]
    texts = ["Hi?", "Which of these sounds is the loudest one in the recording, please?", "Name the sound."]
    check_left_padded_batch_equals_single(adapter, [request(f"k{i}", t, c) for i, (t, c) in enumerate(zip(texts, clips))])


def test_deterministic(adapter):
    reqs = [request("a", "Describe it.", clip(7)), request("b", "Text only question.")]
    one = [r.text for r in adapter.generate(reqs)]
    two = [r.text for r in adapter.generate(reqs)]
    assert one == two and all(t is not None for t in one)


def test_mixed_batch_text_only_and_audio(adapter):
    out = adapter.generate([request("t", "No audio here."), request("a", "Listen.", clip(4))])
    assert [r.key for r in out] == ["t", "a"] and all(r.error is None for r in out)


def test_empty_output_is_a_response_not_an_error(tiny_dir):
    m = HFAudioLM.from_args({"preset": "qwen2-audio", "path": str(tiny_dir)})
    m.generate([request("warm", "x", max_new_tokens=1)])
    with torch.no_grad():  # every logit 0 -> argmax is token 0 = <|endoftext|> (eos): nothing generated
        m._model.lm_head.weight.zero_()
    out = m.generate([request("e", "Say nothing.", clip(5)), request("f", "Nothing either.")])
    assert [(r.text, r.error) for r in out] == [("", None), ("", None)]


def test_bad_request_fails_alone(adapter, tmp_path):
    missing = AudioRef(path=tmp_path / "nope.wav")
    reqs = [request("ok1", "Fine.", clip(1)), request("bad", "Broken audio.", missing), request("ok2", "Also fine.")]
    out = adapter.generate(reqs)
    assert [r.key for r in out] == ["ok1", "bad", "ok2"]
    assert out[1].error and "nope.wav" in out[1].error and out[1].text is None
    assert out[0].error is None and out[2].error is None


def test_audio_reaches_the_model(adapter):
    assert audio_probe(adapter, [clip(11), clip(12, kind="tone")]) > MIN_LOGIT_DIFF


def test_probe_fails_when_audio_is_passed_as_audios(tiny_dir, monkeypatch):
    """The lmms-eval bug: `audios=` instead of `audio=`. Whether transformers raises or silently
    drops it, the probe must fail."""
    monkeypatch.setitem(PRESETS, "qwen2-audio", dataclasses.replace(PRESETS["qwen2-audio"], audio_kwarg="audios"))
    broken = HFAudioLM.from_args({"preset": "qwen2-audio", "path": str(tiny_dir)})
    with pytest.raises(AssertionError):
        assert audio_probe(broken, [clip(11), clip(12, kind="tone")]) > MIN_LOGIT_DIFF


def test_probe_fails_when_audio_is_silently_dropped(tiny_dir, monkeypatch):
    """The silent form of that bug (older transformers ignored the unknown keyword and its token
    check): the prompt keeps one <|AUDIO|> token, no features reach the tower."""
    from transformers import Qwen2AudioProcessor

    monkeypatch.setattr(Qwen2AudioProcessor, "validate_inputs", lambda self, *a, **k: None)
    broken = HFAudioLM.from_args({"preset": "qwen2-audio", "path": str(tiny_dir)})
    real_encode = broken._encode
    monkeypatch.setattr(broken, "_encode", lambda convs, audios: real_encode(convs, [[] for _ in audios]))
    with pytest.raises(AssertionError, match="audio tower was not called"):
        assert audio_probe(broken, [clip(11), clip(12, kind="tone")]) > MIN_LOGIT_DIFF


def test_sampling_is_opt_in_and_seeded(adapter):
    assert generation_kwargs(GenerationConfig())["do_sample"] is False
    kw = generation_kwargs(GenerationConfig(temperature=0.7, top_p=0.9))
    assert kw["do_sample"] is True and kw["temperature"] == 0.7 and kw["top_p"] == 0.9
    r = request("s", "Sample something.", clip(3), max_new_tokens=8, temperature=1.5, seed=123)
    a, b = adapter.generate([r])[0], adapter.generate([r])[0]
    assert a.error is None and a.text == b.text  # same seed, same sample
    g = adapter.info()["generation"]
    assert g["do_sample"] is True and g["temperature"] == 1.5 and g["seed"] == 123


def test_omni_preset_forces_greedy_and_text_only():
    m = Qwen25OmniHF.from_args({})
    assert m.preset.samples_by_default and "sampling_guard" in m.info()
    assert dict(m.preset.extra_generate_kwargs) == {"use_audio_in_video": False}
    # the checkpoint's sampling default is overridden: do_sample=False is always passed explicitly
    assert generation_kwargs(GenerationConfig(temperature=0.0)) == {"max_new_tokens": 512, "do_sample": False,
                                                                    "num_beams": 1}
    assert "Thinker" in m.preset.model_class  # no talker, no audio output


def test_info_records_identity(adapter):
    adapter.generate([request("i", "Hello.")])
    info = adapter.info()
    assert info["backend"] == "transformers" and info["transformers"] == transformers.__version__
    assert info["model_class"] == "Qwen2AudioForConditionalGeneration" and info["dtype"] == "float32"
    assert info["device"] == "cpu" and "commit" in info and info["audio_kwarg"] == "audio"
    assert info["revision_note"].startswith("unpinned")


def test_missing_model_offline_names_hub_id_revision_and_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    m = HFAudioLM.from_args({"preset": "qwen2-audio", "revision": "0123abc"})
    with pytest.raises(HFLoadError) as e:
        m.generate([request("x", "hi")])
    msg = str(e.value)
    assert "Qwen/Qwen2-Audio-7B-Instruct" in msg and "0123abc" in msg and "-M path=DIR" in msg
    assert "HF_HUB_OFFLINE" in msg
    with pytest.raises(HFLoadError, match="-M path="):
        HFAudioLM.from_args({"preset": "qwen2-audio", "path": str(tmp_path / "empty")}).generate([request("x", "hi")])


def test_class_missing_names_transformers_version(tiny_dir, monkeypatch):
    m = HFAudioLM.from_args({"model": "local/x", "path": str(tiny_dir), "model_class": "NoSuchAudioModel"})
    with pytest.raises(HFLoadError, match=r"transformers \d+\.\d+.* has no NoSuchAudioModel"):
        m.generate([request("x", "hi")])
    monkeypatch.setitem(PRESETS, "voxtral-mini", dataclasses.replace(PRESETS["voxtral-mini"], min_transformers="99.0"))
    with pytest.raises(HFLoadError, match=r"needs transformers>=99\.0"):
        HFAudioLM.from_args({"preset": "voxtral-mini"}).generate([request("x", "hi")])


def test_generic_model_uses_checkpoint_architecture(tiny_dir):
    """`-M model=... -M path=DIR` without a preset: the class comes from config.architectures."""
    m = HFAudioLM.from_args({"model": "someone/tiny-qwen2-audio", "path": str(tiny_dir)})
    out = m.generate([request("g", "Hi.", clip(2))])
    assert out[0].error is None
    assert m.info()["model_class"] == "Qwen2AudioForConditionalGeneration"
    assert audio_probe(m, [clip(11), clip(12, kind="tone")]) > MIN_LOGIT_DIFF


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_smoke(tiny_dir):
    m = HFAudioLM.from_args({"preset": "qwen2-audio", "path": str(tiny_dir), "device": "cuda"})
    reqs = [request("a", "Hi?", clip(1)), request("b", "A longer question about the clip?", clip(2, 2.0))]
    out = m.generate(reqs)
    assert all(r.error is None for r in out), [r.error for r in out]
    info = m.info()
    assert info["device"].startswith("cuda") and info["dtype"] in ("bfloat16", "float16")
    assert audio_probe(m, [clip(11), clip(12, kind="tone")]) > MIN_LOGIT_DIFF


def test_runner_end_to_end(toy, tiny_dir, monkeypatch):
    """Through the real runner: registry name, Config at load, batching, records, run.json info."""
    import json

    from evalkit import registry
    from evalkit.engine.runner import RunSpec, run_task
    from evalkit.engine.store import read_records

    monkeypatch.setenv("EVALKIT_MODELS", "scripted=plugins:Scripted,qwen2-audio=evalkit.models.hf_audio:Qwen2AudioHF")
    registry._table.cache_clear()
    spec = RunSpec(model="qwen2-audio", task="toy-mcq", model_args={"path": str(tiny_dir), "batch_size": 3},
                   task_args={"data": str(toy / "toy.json")}, limit=4, output=toy / "runs",
                   generation=GenerationConfig(max_new_tokens=4))
    res = run_task(spec)
    recs = read_records(res.run_dir / "samples.jsonl")
    assert len(recs) == 4 and all(r["error"] is None and r["output"] is not None for r in recs)
    info = res.run["model"]["info"]
    assert info["preset"] == "qwen2-audio" and info["generation"]["do_sample"] is False
    assert "device" not in res.run["model"]["args"]  # volatile: not part of the run id
    json.dumps(res.run)  # run.json stays serializable


def test_long_clips_are_accounted_for(toy, tiny_dir, monkeypatch):
    """A 40 s clip through Qwen2-Audio's own processor: it hears 30 s, and the record and run.json say so
    (measured on the processor's feature mask, not declared)."""
    import json

    import soundfile as sf

    from evalkit import registry
    from evalkit.engine.runner import RunSpec, run_task
    from evalkit.engine.store import read_records

    items = json.loads((toy / "toy.json").read_text())[:2]
    sf.write(toy / "audio" / "long.wav", clip(3, seconds=40.0), 16000)
    items[0]["audio"] = "audio/long.wav"
    (toy / "two.json").write_text(json.dumps(items))
    monkeypatch.setenv("EVALKIT_MODELS", "scripted=plugins:Scripted,qwen2-audio=evalkit.models.hf_audio:Qwen2AudioHF")
    registry._table.cache_clear()
    res = run_task(RunSpec(model="qwen2-audio", task="toy-mcq", model_args={"path": str(tiny_dir)},
                           task_args={"data": str(toy / "two.json")}, output=toy / "runs",
                           generation=GenerationConfig(max_new_tokens=2)))
    recs = {r["key"]: r for r in read_records(res.run_dir / "samples.jsonl")}
    long, short = recs[items[0]["id"]]["extra"], recs[items[1]["id"]]["extra"]
    assert long["audio_seconds"] == 40.0 and long["audio_seconds_fed"] == 30.0
    assert short["audio_seconds"] == short["audio_seconds_fed"] == 0.1
    assert res.run["long_audio"] == {"records": 2, "fed_known": 2, "truncated": 1, "longest_s": 40.0,
                                     "most_fed_s": 30.0}


def test_long_audio_refuse_fails_only_the_long_clip(tiny_dir):
    m = Qwen2AudioHF.from_args({"path": str(tiny_dir), "long_audio": "refuse"})
    out = m.generate([request("long", "What is it?", clip(4, seconds=40.0), max_new_tokens=2),
                      request("short", "What is it?", clip(5), max_new_tokens=2)])
    assert "hears 30.0 s of this 40.0 s" in out[0].error and out[1].error is None
    assert m.info()["long_audio"]["policy"].startswith("refuse") and m.info()["long_audio"]["window_s"] == 30
    t = Qwen2AudioHF.from_args({"path": str(tiny_dir)})
    t.generate([request("short", "What is it?", clip(5), max_new_tokens=2)])
    assert t.info()["long_audio"]["policy"].startswith("truncate")
