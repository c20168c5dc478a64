"""EvA adapter: tiny random models on CPU through the real code paths (no weights, no downloads)."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from evalkit.models.eva import EvA, EvAWeightsError  # noqa: E402
from evalkit.models.eva.aggregator import AudioAggregator, parse_bands  # noqa: E402
from evalkit.models.eva.align import align_to_tokens  # noqa: E402
from evalkit.models.eva.ced import CEDConfig, CEDEncoder, htk_mel_filterbank, load_ced, normalize_ced_state_dict  # noqa: E402
from evalkit.models.eva.fusion import CEDProcessor, fuse_embeddings, load_processor_weights, processor_state_dict  # noqa: E402
from evalkit.models.eva.kimi import (  # noqa: E402
    KimiEvA,
    KimiTokens,
    VQAdaptor,
    WhisperFrontEnd,
    build_prompt,
    vllm_prompts,
    whisper_token_len,
)
from evalkit.types import AudioRef, Request  # noqa: E402

torch.set_num_threads(1)
TOK = KimiTokens(msg_end=1, media_begin=2, media_end=3, text_blank=4, text_eos=5, user_msg_start=6,
                 assistant_msg_start=7, speech_ct=8, semantic_offset=100, extra_stops=(1,))
CHUNK = 32000  # the tiny Whisper's chunk: 2 * 100 positions * hop 160


def tiny_ced_cfg(**kw) -> CEDConfig:
    base = dict(embed_dim=32, depth=3, num_heads=4, layers=(0, 1, 2))
    base.update(kw)
    return CEDConfig(**base)


def tiny_ced(**kw) -> CEDEncoder:
    torch.manual_seed(0)
    m = CEDEncoder(tiny_ced_cfg(**kw)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        m.init_bn.running_mean.uniform_(-40, 0)
        m.init_bn.running_var.uniform_(50, 150)
    return m


def tiny_processor(hidden=64) -> CEDProcessor:
    torch.manual_seed(1)
    p = CEDProcessor(hidden, input_dim=32, n_heads=4, d_ff=64).eval()
    with torch.no_grad():  # leave the zero-init so nothing is trivially uniform after "training"
        p.audio_aggregator.gate[-1].weight.normal_(0, 0.5)
    return p


def tiny_kimi() -> KimiEvA:
    from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(2)
    wcfg = WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                         num_mel_bins=128, max_source_positions=100, vocab_size=100, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    whisper = WhisperFrontEnd(WhisperEncoder(wcfg).eval())
    qcfg = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=0, bos_token_id=0, eos_token_id=5)
    qcfg._attn_implementation = "sdpa"
    llm = Qwen2ForCausalLM(qcfg).eval()
    return KimiEvA(llm, whisper, tiny_ced(), tiny_processor(64), VQAdaptor(256, 64, 1e-6).eval(), TOK).eval()


def enc_text(s: str) -> list[int]:
    return [10 + (ord(ch) % 80) for ch in s]


def semantic(ref: AudioRef) -> list[int]:
    x, _ = ref.load(16000)
    n = whisper_token_len(len(x), CHUNK)
    return [int(abs(x[i * 1280]) * 1000) % 300 for i in range(n)]


def wave(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 + 300 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def request(key: str, audio: AudioRef, text: str = "what is it") -> Request:
    return Request(key=key, messages=[{"role": "user", "content": [{"type": "audio", "audio": audio},
                                                                    {"type": "text", "text": text}]}])


# ----------------------------------------------------------------------------- adapter surface
def test_import_does_not_load_torch():
    code = "import sys, evalkit.models.eva; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_says_no_checkpoint_before_loading_any_data(tmp_path):
    """`evalkit run --model eva --task mmau` without weights: the EvA message comes first, fast, and no data is
    touched (the task's data path does not exist: loading it would be another error)."""
    cmd = [sys.executable, "-m", "evalkit.cli", "run", "--model", "eva", "--task", "mmau",
           "-T", f"data={tmp_path / 'absent.json'}", "--output", str(tmp_path / "runs"), "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode != 0
    assert "not published upstream" in r.stdout + r.stderr and "absent.json" not in r.stdout + r.stderr
    assert not (tmp_path / "runs").exists()


def test_no_checkpoint_error_message():
    with pytest.raises(EvAWeightsError) as e:  # at construction: before any sample runs
        EvA.from_args({})
    msg = str(e.value)
    assert "not published upstream" in msg and "-M checkpoint=PATH" in msg
    assert "-M kimi_path=" in msg and "-M ced_path=" in msg
    with pytest.raises(Exception):
        EvA.from_args({"chekpoint": "x"})  # typo fails at load
    with pytest.raises(EvAWeightsError, match="omni_path"):  # the Omni backbone needs its snapshot
        EvA.from_args({"backbone": "qwen2.5-omni", "checkpoint": "x"}).generate([])


def test_release_export_folder_supplies_the_snapshot_paths(tmp_path):
    """The release's export (finetune_codes/kimi_audio_eva/export_utils.py) is a whole snapshot: the LLM with
    vq_adaptor and model.ced_processor.* (LoRA merged), whisper-large-v3/, ced-base/, the tokenizer files."""
    export = tmp_path / "export"
    (export / "whisper-large-v3").mkdir(parents=True)
    (export / "ced-base").mkdir()
    (export / "config.json").write_text("{}")
    eva = EvA.from_args({"checkpoint": str(export)})
    assert eva.kimi_path == str(export) and eva.ced_path == str(export / "ced-base")
    assert eva.info()["kimi_path"] == str(export)
    assert eva.config.kimi_path is None and eva.config.ced_path is None  # the run's identity is what was given
    # explicit paths win; an Omni export gives its ced-base/ only
    eva = EvA.from_args({"checkpoint": str(export), "ced_path": "/elsewhere/ced", "kimi_path": "/elsewhere/kimi"})
    assert eva.ced_path == "/elsewhere/ced" and eva.kimi_path == "/elsewhere/kimi"
    eva = EvA.from_args({"checkpoint": str(export), "backbone": "qwen2.5-omni"})
    assert eva.ced_path == str(export / "ced-base") and eva.kimi_path is None
    # a plain fusion-weights file or a folder that is not a Kimi snapshot supplies nothing
    (tmp_path / "fusion").mkdir()
    eva = EvA.from_args({"checkpoint": str(tmp_path / "fusion")})
    assert eva.kimi_path is None and eva.ced_path is None
    with pytest.raises(EvAWeightsError, match="-M kimi_path="):
        eva.generate([])


def test_run_identity_ignores_speed_settings():
    from evalkit.engine.runner import ModelHolder

    a = ModelHolder("eva", {"checkpoint": "x", "max_batch": 2, "cache_clips": 8}).identity()
    b = ModelHolder("eva", {"checkpoint": "x", "max_batch": 16}).identity()
    assert a == b and "max_batch" not in a["args"]
    assert ModelHolder("eva", {"checkpoint": "x", "ced": "off"}).identity() != a  # an ablation is another run


def test_attention_kernel_auto(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    installed = {"flash_attn": True}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if installed[name] else None) if name in installed else real(name, *a))
    gpu = EvA.from_args({"checkpoint": "x", "device": "cuda"})
    assert gpu._attention() == "flash_attention_2" and gpu.info()["attn_implementation"] == "flash_attention_2"
    assert EvA.from_args({"checkpoint": "x", "device": "cuda", "dtype": "float32"})._attention() == "sdpa"
    assert EvA.from_args({"checkpoint": "x", "device": "cpu"})._attention() == "sdpa"
    assert EvA.from_args({"checkpoint": "x", "device": "cuda", "attn_implementation": "eager"})._attention() == "eager"
    installed["flash_attn"] = False
    assert gpu._attention() == "sdpa"


# ----------------------------------------------------------------------------- CED
def np_reference_logmel(x: np.ndarray, n_fft=512, hop=160, n_mels=64, sr=16000, top_db=120.0) -> np.ndarray:
    """numpy reference: reflect-padded frames x periodic hann, |rfft|^2, HTK filterbank, dB."""
    pad = n_fft // 2
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    n_frames = 1 + (len(xp) - n_fft) // hop
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([xp[i * hop: i * hop + n_fft] * win for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, n_freqs)
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = hz(np.linspace(mel(0), mel(sr / 2), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        fb[:, m] = np.maximum(0, np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)))
    db = 10 * np.log10(np.maximum(power @ fb, 1e-10)).T
    return np.maximum(db, db.max() - top_db)


def test_mel_front_end_matches_numpy_reference():
    x = wave(1.3, 3)
    fe = CEDEncoder(tiny_ced_cfg()).front_end
    got = fe(torch.from_numpy(x))[0].numpy()
    ref = np_reference_logmel(x)
    assert got.shape == ref.shape == (64, len(x) // 160 + 1)
    assert np.abs(got - ref).max() < 2e-3
    fb = htk_mel_filterbank(257, 0, 8000, 64, 16000)
    assert fb.shape == (257, 64) and float(fb.min()) >= 0


def test_top_db_is_per_sample():
    fe = CEDEncoder(tiny_ced_cfg()).front_end
    loud, quiet = torch.from_numpy(wave(0.5, 1)), torch.from_numpy(wave(0.5, 2)) * 1e-5
    both = fe(torch.stack([loud, quiet]))
    assert torch.allclose(both[1], fe(quiet)[0], atol=1e-4)


def test_ced_chunking_keeps_last_chunk_on_exact_multiple():
    ced = tiny_ced(target_length=64)
    # 128 frames exactly = 2 chunks of 64: waveform of (128 - 1) * 160 samples gives 128 frames
    out = ced([torch.from_numpy(wave((127 * 160) / 16000, 4))])
    assert int(out.n_time[0]) == 2 * 4
    out = ced([torch.from_numpy(wave((129 * 160) / 16000, 4))])
    assert int(out.n_time[0]) == 3 * 4  # 129 frames: the last, 1-frame chunk is zero-padded, not dropped
    short = ced([torch.from_numpy(wave(0.5, 4))])  # 51 frames: one chunk of its own length, 3 patches
    assert int(short.n_time[0]) == 3 and short.hidden_states[0].shape == (1, 4 * 3, 32)


def test_ced_batch_equals_alone():
    ced = tiny_ced(target_length=64)
    waves = [torch.from_numpy(wave(s, i)) for i, s in enumerate([2.1, 0.4, 1.0, 0.77])]  # multi-chunk and short
    batch = ced(waves)
    T = batch.hidden_states[0].shape[1] // 4
    for i, w in enumerate(waves):
        alone = ced([w])
        n = int(alone.n_time[0])
        assert int(batch.n_time[i]) == n and int(batch.valid_lengths[i]) == int(alone.valid_lengths[0])
        for hb, ha in zip(batch.hidden_states, alone.hidden_states):
            assert torch.allclose(hb[i].view(4, T, -1)[:, :n], ha[0].view(4, n, -1), atol=1e-5)
            assert float(hb[i].view(4, T, -1)[:, n:].abs().sum()) == 0.0
    assert batch.valid_lengths.tolist() == [min(len(w) // 2560, int(n)) or 1
                                            for w, n in zip(waves, batch.n_time)]


def test_ced_weight_layouts(tmp_path):
    from safetensors.torch import save_file

    src = tiny_ced()
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    hf = {"encoder." + k: v for k, v in sd.items()}
    hf["outputlayer.0.weight"] = torch.ones(32)
    hf["outputlayer.1.weight"] = torch.zeros(527, 32)
    save_file(hf, str(tmp_path / "model.safetensors"))
    orig = {("init_bn.1." + k[len("init_bn."):] if k.startswith("init_bn.") else k): v for k, v in sd.items()}
    orig["front_end.0.mel_scale.fb"] = torch.zeros(257, 64)
    torch.save(orig, tmp_path / "ced.pt")
    x = [torch.from_numpy(wave(0.7, 5))]
    want = src(x).hidden_states[-1]
    for path in (tmp_path / "model.safetensors", tmp_path / "ced.pt", tmp_path):
        got = load_ced(path, tiny_ced_cfg())(x).hidden_states[-1]
        assert torch.equal(got, want), path
    assert set(normalize_ced_state_dict(hf)) == set(sd)
    # real-size key names: blocks.{0..11}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}
    names = set(CEDEncoder(CEDConfig(depth=12)).state_dict())
    assert {"patch_embed.proj.weight", "time_pos_embed", "freq_pos_embed", "blocks.11.attn.qkv.bias",
            "blocks.11.mlp.fc2.weight", "norm.weight", "init_bn.running_var"} <= names
    assert CEDEncoder().time_pos_embed.shape == (1, 768, 1, 63)
    assert CEDEncoder().freq_pos_embed.shape == (1, 768, 4, 1)


# ----------------------------------------------------------------------------- aggregator
def test_gate_zero_init_is_uniform_and_band_zeroing():
    agg = AudioAggregator(4, 32, n_heads=4, d_ff=64).eval()
    x = torch.randn(2, 4 * 5, 32)
    w = agg.band_weights(x)
    assert w.shape == (2, 5, 4) and torch.allclose(w, torch.full_like(w, 0.25))
    assert torch.allclose(agg.pool(x), x.view(2, 4, 5, 32).mean(1), atol=1e-6)
    torch.nn.init.normal_(agg.gate[-1].weight)
    agg.zero_bands = parse_bands("0,3")
    xz = x.view(2, 4, 5, 32).clone()
    xz[:, [0, 3]] = 0
    got = agg.pool(x)
    agg.zero_bands = ()
    assert torch.allclose(got, agg.pool(xz.view(2, 20, 32)))
    with pytest.raises(ValueError):
        parse_bands("4")


def test_cross_attention_masks_ignore_padding():
    torch.manual_seed(0)
    agg = AudioAggregator(4, 32, n_heads=4, d_ff=64).eval()
    f = [torch.randn(1, 4 * 6, 32) for _ in range(3)]
    lens = torch.tensor([4])
    a = agg(f[2], f[0], f[1], valid_lengths=lens)
    g = [x.view(1, 4, 6, 32).clone() for x in f]
    for x in g:
        x[:, :, 4:] = torch.randn_like(x[:, :, 4:]) * 10  # change only the padded steps
    b = agg(*(x.view(1, 24, 32) for x in (g[2], g[0], g[1])), valid_lengths=lens)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-5)
    c = agg(f[2], f[0], f[1])  # without a mask the padding leaks in
    assert not torch.allclose(a[:, :4], agg(*(x.view(1, 24, 32) for x in (g[2], g[0], g[1])))[:, :4])
    assert c.shape == (1, 6, 32)


# ----------------------------------------------------------------------------- alignment
def test_align_hand_cases():
    x = torch.tensor([[0.0], [16.0], [32.0]])  # centres at mel frames 8, 24, 40
    # targets at 4, 12, 20, 28, 36 with full coverage: plain linear interpolation (k=0 extrapolates)
    got = align_to_tokens(x, 5, t_mel=48).squeeze(-1)
    assert torch.allclose(got, torch.tensor([-4.0, 4.0, 12.0, 20.0, 28.0]), atol=1e-4)
    # padding at the end: T_mel = 36 leaves token 2 (frames 32..47) 4/16 covered
    got = align_to_tokens(x, 5, t_mel=36).squeeze(-1)
    a = (28 - 24) / 16  # target 28 between centres 24 and 40
    want = ((1 - a) * 16 * 1 + a * 32 * 0.25) / ((1 - a) * 1 + a * 0.25)
    assert math.isclose(float(got[3]), want, rel_tol=1e-5)
    # a CED token wholly outside the real frames has zero weight
    got = align_to_tokens(x, 5, t_mel=32).squeeze(-1)
    assert math.isclose(float(got[4]), 16.0, rel_tol=1e-5)
    # single feature is repeated
    one = torch.tensor([[1.0, 2.0]])
    assert torch.equal(align_to_tokens(one, 3), one.expand(3, 2))


def test_align_stride_mismatch_and_chunk_boundary():
    # two CED tokens per LLM token pair: 160 ms vs 80 ms; 63 tokens per 1,012-frame chunk
    x = torch.arange(126, dtype=torch.float64).unsqueeze(-1)
    out = align_to_tokens(x, 253, t_mel=2024).squeeze(-1)
    assert out.shape == (253,)
    assert math.isclose(float(out[1]), 0.25, abs_tol=1e-6)  # target 12: (12 - 8) / 16 past token 0
    assert math.isclose(float(out[2]), 0.75, abs_tol=1e-6)  # target 20
    # chunk boundary: token 62 centred at 1000, token 63 (chunk 1, j = 0) at 1012 + 8 = 1020
    assert math.isclose(float(out[125]), 62.2, abs_tol=1e-6)  # target 1004
    assert math.isclose(float(out[126]), 62.6, abs_tol=1e-6)  # target 1012


def test_align_is_vectorized_formula():
    x = torch.randn(130, 8, dtype=torch.float64)
    n, t_mel = 200, 1600
    got = align_to_tokens(x, n, t_mel=t_mel)
    per = 63
    starts = [(j // per) * 1012 + (j % per) * 16 for j in range(130)]
    centres = [s + 8 for s in starts]
    cov = [max(0, min(s + 15, t_mel - 1) - s + 1) / 16 for s in starts]
    for k in (0, 1, 57, 126, 127, 199):
        t = 8 * k + 4
        r = min(max(int(np.searchsorted(centres, t)), 1), 129)
        l_ = r - 1
        a = (t - centres[l_]) / (centres[r] - centres[l_] + 1e-8)
        num = (1 - a) * x[l_] * cov[l_] + a * x[r] * cov[r]
        den = (1 - a) * cov[l_] + a * cov[r]
        assert torch.allclose(got[k], num / (den + 1e-8))


# ----------------------------------------------------------------------------- fusion + backbone
def test_processor_state_dict_round_trip(tmp_path):
    from safetensors.torch import save_file

    p = tiny_processor()
    sd = processor_state_dict(p)
    assert all(k.startswith("model.ced_processor.") for k in sd)
    assert {"model.ced_processor.alpha", "model.ced_processor.aggregator_proj_norm.weight",
            "model.ced_processor.aggregator_projection.0.weight", "model.ced_processor.aggregator_projection.2.bias",
            "model.ced_processor.audio_aggregator.gate.3.weight",
            "model.ced_processor.audio_aggregator.aggregator_layer_1.crossattention.in_proj_weight",
            "model.ced_processor.audio_aggregator.aggregator_layer_2.output.weight",
            "model.ced_processor.audio_aggregator.aggregator_layer_2.norm3.bias"} <= set(sd)
    full = dict(sd)
    full["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(2, 2)  # other keys are ignored
    save_file({k: v.contiguous() for k, v in full.items()}, str(tmp_path / "eva.safetensors"))
    torch.save(full, tmp_path / "eva.pt")
    export = tmp_path / "export"  # a release export: the LLM's shards with the fusion weights among them
    export.mkdir()
    keys = sorted(full)
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        save_file({k: full[k].contiguous() for k in part}, str(export / f"model-0000{i + 1}-of-00002.safetensors"))
    for path in (tmp_path / "eva.safetensors", tmp_path / "eva.pt", export):
        q = CEDProcessor(64, input_dim=32, n_heads=4, d_ff=64)
        load_processor_weights(q, path)
        assert all(torch.equal(q.state_dict()[k], v) for k, v in p.state_dict().items())
        assert q.alpha.dtype == torch.float32
    assert CEDProcessor(64, input_dim=32, n_heads=4, d_ff=64).alpha.item() == pytest.approx(0.1)


def test_prompt_streams():
    ref = AudioRef(array=wave(0.5, 0), sample_rate=16000)
    msgs = [{"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": [{"type": "audio", "audio": ref}, {"type": "text", "text": "hi"}]}]
    pr = build_prompt(msgs, enc_text, lambda a: [0, 1, 2], TOK)
    assert len(pr.audio_ids) == len(pr.text_ids) == len(pr.is_audio)
    assert pr.audio_ids[0] == TOK.user_msg_start and pr.text_ids[0] == TOK.text_blank
    i = pr.audio_ids.index(TOK.media_begin)
    assert pr.audio_ids[i + 1: i + 4] == [100, 101, 102] and pr.is_audio[i + 1: i + 4] == [True] * 3
    assert pr.audio_ids[i + 4] == TOK.media_end and sum(pr.is_audio) == 3 and pr.audio_slots == [3]
    assert pr.audio_ids[-2:] == [TOK.msg_end, TOK.assistant_msg_start]
    assert pr.text_ids[-4:-2] == enc_text("hi") and pr.audio_ids[-4:-2] == [TOK.text_blank] * 2
    # an audio part that ends the run is followed by the speech_ct token
    pr2 = build_prompt([{"role": "user", "content": [{"type": "audio", "audio": ref}]}], enc_text, lambda a: [5], TOK)
    assert pr2.audio_ids == [6, 2, 105, 3, 8, 1, 7]


def _embeds_and_logits(model: KimiEvA, ref: AudioRef):
    pr = build_prompt(request("k", ref).messages, enc_text, semantic, TOK)
    clips = model.encode([torch.from_numpy(ref.load(16000)[0])])
    e = model.embed([pr], [clips])[0]
    with torch.no_grad():
        logits = model.llm(inputs_embeds=e.unsqueeze(0)).logits
    return pr, clips, e, logits


def test_full_path_shapes_and_fusion_off_equals_backbone():
    model = tiny_kimi()
    ref = AudioRef(array=wave(2.5, 1), sample_rate=16000)  # two Whisper chunks of the tiny encoder
    pr, clips, e_on, logits_on = _embeds_and_logits(model, ref)
    n = whisper_token_len(40000, CHUNK)
    assert clips[0].whisper.shape == (n, 256) and sum(pr.is_audio) == n
    assert e_on.shape == (len(pr.audio_ids), 64) and logits_on.shape == (1, len(pr.audio_ids), 512)
    # the backbone alone: Kimi's own formula without a CED term
    emb = model.llm.get_input_embeddings()
    a, t = emb(torch.tensor([pr.audio_ids])), emb(torch.tensor([pr.text_ids]))
    m = torch.tensor([pr.is_audio])
    with torch.no_grad():
        base = fuse_embeddings(a, t, m, [model.vq_adaptor(clips[0].whisper)], None)
        base_logits = model.llm(inputs_embeds=base).logits
    assert not torch.allclose(logits_on, base_logits)
    model.ced_processor.gate_override = 0.0
    _, _, e0, logits0 = _embeds_and_logits(model, ref)
    assert torch.equal(e0, base[0]) and torch.equal(logits0, base_logits)
    model.ced_processor.gate_override = None
    model.ced_processor.enabled = False
    _, clips_off, eoff, logits_off = _embeds_and_logits(model, ref)
    assert clips_off[0].ced is None and torch.equal(logits_off, base_logits)
    # audio positions only: text positions are untouched by the CED term
    keep = ~torch.tensor(pr.is_audio)
    assert torch.equal(e_on[keep], base[0][keep])


def test_adapter_generate_batches_and_caches_clips():
    model = tiny_kimi()
    calls = []
    encode = model.encode
    model.encode = lambda waves: calls.append(len(waves)) or encode(waves)
    eva = EvA.from_args({"checkpoint": "unused", "max_batch": 4, "bands": "1"})
    eva.attach(model, enc_text, lambda ids: " ".join(map(str, ids)), semantic_fn=semantic)
    assert model.ced_processor.audio_aggregator.zero_bands == (1,)
    r1 = AudioRef(array=wave(1.0, 1), sample_rate=16000)
    r2 = AudioRef(array=wave(0.6, 2), sample_rate=16000)
    reqs = [request("a", r1, "what"), request("b", r1, "which sound"), request("c", r2, "why"),
            Request(key="d", messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}])]
    for r in reqs:
        r.generation.max_new_tokens = 4
    out = eva.generate(reqs)
    assert [o.key for o in out] == ["a", "b", "c", "d"] and all(o.error is None for o in out), out
    assert all(len(o.text.split()) <= 4 for o in out)
    assert calls == [2]  # two distinct clips, encoded once
    alone = eva.generate([reqs[2]])
    assert calls == [2] and alone[0].text == out[2].text  # cached, and batching does not change the answer
    bad = Request(key="x", messages=[{"role": "tool", "content": [{"type": "text", "text": "?"}]}])
    res = eva.generate([bad, reqs[0]])
    assert res[0].error and res[1].error is None
    info = eva.info()
    assert info["backbone"] == "kimi" and info["dtype"] in ("float32", "bfloat16")


def test_semantic_ids_missing_is_not_implemented():
    model = tiny_kimi()
    eva = EvA.from_args({"checkpoint": "unused"}).attach(model, enc_text, str)
    out = eva.generate([request("a", AudioRef(array=wave(0.5, 0), sample_rate=16000))])
    assert out[0].error and "glm-4-voice-tokenizer" in out[0].error and "NotImplementedError" in out[0].error


def test_vllm_prompts_without_vllm():
    embeds = [torch.randn(7, 64), torch.randn(5, 64)]
    prompts, params = vllm_prompts(embeds, max_new_tokens=9, tokens=TOK)
    assert [p["prompt_embeds"].shape for p in prompts] == [(7, 64), (5, 64)]
    assert params["max_tokens"] == 9 and TOK.text_eos in params["stop_token_ids"]
    from evalkit.models.eva.kimi import run_vllm

    with pytest.raises(ValueError, match="vllm_prompts"):  # an engine is required
        run_vllm(prompts, params)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_mixed_precision_path(device):
    """The CUDA setting (LLM, Whisper and vq_adaptor in bf16; CED and ced_processor in fp32), also run on the
    CPU so that dtype mismatches between the branches show up without a GPU."""
    ref = AudioRef(array=wave(1.0, 1), sample_rate=16000)
    _, _, e32, _ = _embeds_and_logits(tiny_kimi(), ref)
    model = tiny_kimi().to(device)
    for part in (model.llm, model.vq_adaptor, model.whisper):
        part.to(torch.bfloat16)
    _, _, e16, logits = _embeds_and_logits(model, ref)
    assert e16.dtype == torch.bfloat16 and logits.dtype == torch.bfloat16
    assert model.ced_processor.alpha.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.ced.parameters())
    scale = e32.abs().max().item()
    assert (e16.float().cpu() - e32).abs().max().item() < 0.02 * scale  # bf16 rounding, not a different sum
    eva = EvA.from_args({"checkpoint": "unused"}).attach(model, enc_text, str, semantic_fn=semantic)
    req = request("a", ref)
    req.generation.max_new_tokens = 3
    out = eva.generate([req])
    assert out[0].error is None, out[0].error


def test_gpu_benchmark_script_runs_tiny(capsys):
    """bench/bench_eva_gpu.py has only ever run where a GPU is lent; --tiny runs its whole code path here."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_eva_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_eva_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--tiny", "--batches", "1", "2", "--new-tokens", "2", "--seconds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "not a measurement" in lines[0] and "13 audio tokens" in lines[0]
    rows = [ln for ln in lines if ln.startswith("B=")]
    assert [r.split()[0:2] for r in rows] == [["B=", "1"], ["B=", "2"]]
    assert all("of prefill" in r and "tok/s (" in r for r in rows)
    assert rows[1].split("tok/s (")[1].startswith("4 tokens")  # 2 clips x 2 new tokens each


# ----------------------------------------------------------------------------- decoding
def test_each_request_keeps_its_generation_settings():
    """One generate call with two max_new_tokens: each request is decoded with its own."""
    eva = EvA.from_args({"checkpoint": "unused", "text_repetition_penalty": 1.0}).attach(
        tiny_kimi(), enc_text, lambda ids: " ".join(map(str, ids)), semantic_fn=semantic)
    ref = AudioRef(array=wave(1.0, 1), sample_rate=16000)
    short, long_ = request("s", ref), request("l", ref)
    short.generation.max_new_tokens, long_.generation.max_new_tokens = 2, 6
    a, b = eva.generate([short, long_])
    assert len(a.text.split()) == 2 and len(b.text.split()) == 6
    assert b.text.split()[:2] == a.text.split()  # same prompt, same greedy start


def test_kimia_repetition_penalty_rule():
    from evalkit.models.eva.kimi import kimia_repetition_penalty

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    window = 3
    history = torch.tensor([[3, 0, 1, 1], [2, 2, 2, 2]])  # 4 > window tokens generated: the last 3 count
    got = kimia_repetition_penalty(logits, history, 1.25, window)
    want = torch.tensor([[2.0 / 1.25, -1.0 * 1.25, 0.5, 3.0],  # 0 and 1 once each (1 twice: still once)
                         [2.0, -1.0, 0.5 / 1.25, 3.0]])  # rows are independent
    assert torch.allclose(got, want)
    assert torch.equal(kimia_repetition_penalty(logits, history[:, :3], 1.25, window), logits)  # not yet > window
    assert torch.equal(kimia_repetition_penalty(logits, history, 1.0, window), logits)


def test_repetition_penalty_in_generation():
    model = tiny_kimi()
    ref = AudioRef(array=wave(1.0, 1), sample_rate=16000)
    _, _, e, _ = _embeds_and_logits(model, ref)
    plain, = model.generate_from_embeds([e], max_new_tokens=40)
    hard, = model.generate_from_embeds([e], max_new_tokens=40, repetition_penalty=1e4, repetition_window=16)
    assert len(plain) == len(hard) == 40  # no stop token in this tiny model's first 40 greedy tokens
    assert hard[:17] == plain[:17]  # the penalty starts once more than 16 tokens were generated
    assert any(plain[k] in plain[k - 16:k] for k in range(17, 40))  # greedy repeats itself here...
    assert all(hard[k] not in hard[k - 16:k] for k in range(17, 40))  # ...and the penalty prevents it
    # the adapter passes its option through
    eva = EvA.from_args({"checkpoint": "unused", "text_repetition_penalty": 1e4}).attach(
        model, enc_text, lambda ids: " ".join(map(str, ids)), semantic_fn=semantic)
    req = request("a", ref)
    req.generation.max_new_tokens = 40
    out = eva.generate([req])[0]
    toks = [int(t) for t in out.text.split()]
    assert len(toks) == 40 and all(toks[k] not in toks[k - 16:k] for k in range(17, 40))


def test_repetition_penalty_defaults_follow_the_release():
    kimi = EvA.from_args({"checkpoint": "x"})
    assert kimi.repetition_penalty() == 1.05 and kimi.info()["text_repetition_penalty"] == 1.05
    assert EvA.from_args({"checkpoint": "x", "text_repetition_penalty": 1.0}).repetition_penalty() == 1.0
    assert EvA.from_args({"checkpoint": "x", "backbone": "qwen2.5-omni"}).repetition_penalty() == 1.0
    with pytest.raises(ValueError, match="windowed penalty"):
        EvA.from_args({"checkpoint": "x", "backbone": "qwen2.5-omni", "text_repetition_penalty": 1.1})
    with pytest.raises(Exception):
        EvA.from_args({"checkpoint": "x", "text_repetition_penalty": 0.5})  # < 1 is not a penalty



def test_ced_mask_release_and_training_against_a_clip_run_alone():
    """ced_mask=release: the aggregator attends over every CED frame of the clip (the release's inference
    passes no ced_valid_lengths); training: masked at the valid length. Independent references: the
    processor on the clip alone without any mask (release) and on the clip cut at its valid length
    (training: with key padding masked, the valid steps cannot see the rest)."""
    torch.manual_seed(0)
    proc = tiny_processor().eval()
    torch.nn.init.normal_(proc.audio_aggregator.gate[-1].weight)
    T, valid, D = 6, 4, 32
    feats = [torch.randn(1, 4 * T, D) for _ in range(3)]
    cut = [x.view(1, 4, T, D)[:, :, :valid].reshape(1, 4 * valid, D) for x in feats]
    n_time, valid_t = torch.tensor([T]), torch.tensor([valid])
    with torch.no_grad():
        proc.ced_mask = "release"
        release = proc(*feats, valid_lengths=proc.mask_lengths(n_time, valid_t))
        alone = proc(*feats)
        proc.ced_mask = "training"
        training = proc(*feats, valid_lengths=proc.mask_lengths(n_time, valid_t))
        truncated = proc(*cut)
    assert torch.allclose(release, alone, atol=1e-6)
    assert torch.allclose(training[:, :valid], truncated, atol=1e-5)
    assert not torch.allclose(release[:, :valid], training[:, :valid], atol=1e-4)  # the choice matters
    proc.ced_mask = "neither"
    with pytest.raises(ValueError, match="ced_mask"):
        proc.mask_lengths(n_time, valid_t)


def test_ced_mask_default_is_the_release_and_is_recorded():
    eva = EvA.from_args({"checkpoint": "x"})
    assert eva.config.ced_mask == "release"
    eva.attach(tiny_kimi(), enc_text, lambda ids: "")
    assert eva._model.ced_processor.ced_mask == "release"
    trained = EvA.from_args({"checkpoint": "x", "ced_mask": "training"}).attach(tiny_kimi(), enc_text, lambda ids: "")
    assert trained._model.ced_processor.ced_mask == "training" and trained.info()["ced_mask"] == "training"
