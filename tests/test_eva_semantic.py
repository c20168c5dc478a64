"""GLM-4-Voice WhisperVQ semantic tokenizer (models/eva/semantic.py): tiny random configs on CPU."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import torch.nn.functional as F

from evalkit.models.eva import EvA
from evalkit.models.eva.kimi import whisper_token_len
from evalkit.models.eva.semantic import (
    GLM4_VOICE_TOKENIZER,
    SemanticConfig,
    WhisperVQTokenizer,
    attention_allowed,
    load_semantic_tokenizer,
    nearest_code,
    normalize_semantic_state_dict,
    semantic_code_count,
)
from evalkit.types import AudioRef, Request

torch.set_num_threads(1)


def tiny_cfg(**kw) -> SemanticConfig:
    base = {"d_model": 16, "encoder_attention_heads": 2, "encoder_ffn_dim": 32, "num_mel_bins": 128,
            "max_source_positions": 1500, "quantize_position": 2, "pooling_position": 2, "pooling_kernel_size": 4,
            "pooling_type": "avg", "quantize_vocab_size": 32, "quantize_causal_block_size": 200,
            "encoder_causal_convolution": True}
    base.update(kw)
    return SemanticConfig(**base)


def tiny_tok(seed: int = 0, max_batch: int = 16, **kw) -> WhisperVQTokenizer:
    torch.manual_seed(seed)
    m = WhisperVQTokenizer(tiny_cfg(**kw), max_batch=max_batch).eval()
    with torch.no_grad():  # larger weights than the default init so the codes vary along the clip
        for name, p in m.named_parameters():
            if not name.endswith("bias") and "norm" not in name:
                p.normal_(0, 0.3)
        m.codebook.weight.normal_(0, 1.0)
    return m


def wave(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = 0.3 * np.sin(2 * np.pi * (150 + 200 * seed) * t * (1 + t)) + 0.05 * rng.standard_normal(n)
    return torch.from_numpy(x.astype(np.float32))


# ----------------------------------------------------------------------------- rate and shapes
def test_code_rate_and_segmenting():
    tok = tiny_tok()
    assert tok.cfg.samples_per_code == 1280 and tok.cfg.chunk_samples == 480000  # 12.5 Hz, 30 s segments
    lengths = [1, 1279, 1280, 1281, 16000, 479999, 480000, 480001, 1_000_000]
    codes = tok.tokenize([wave(n, i) for i, n in enumerate(lengths)])
    for n, c in zip(lengths, codes):
        per_segment = sum(math.ceil(min(480000, n - t) / 1280) for t in range(0, n, 480000))
        assert len(c) == per_segment == semantic_code_count(n, tok.cfg) == whisper_token_len(n), n
        assert all(0 <= x < 32 for x in c)
    assert len(codes[-1]) == 375 + 375 + 32  # 30 s + 30 s + 2.5 s: 12.5 codes per second
    assert len(set(codes[-1])) > 3  # not a constant code
    assert tok.tokenize([torch.zeros(0)]) == [[]]  # like upstream: no segment, no code


def test_determinism():
    x = [wave(40000, 1), wave(7000, 2)]
    a, b = tiny_tok(seed=3), tiny_tok(seed=3)
    assert a.tokenize(x) == a.tokenize(x) == b.tokenize(x)
    assert tiny_tok(seed=4).tokenize(x) != a.tokenize(x)


# ----------------------------------------------------------------------------- numerics
def test_nearest_code_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    code = torch.randn(50, 8, generator=g) * torch.rand(50, 1, generator=g) * 3
    x = torch.randn(3, 20, 8, generator=g) * 2
    got = nearest_code(x, code)
    xd, cd = x.double().reshape(-1, 8), code.double()
    want = [min(range(50), key=lambda j: float(((xd[i] - cd[j]) ** 2).sum())) for i in range(xd.shape[0])]
    assert got.shape == (3, 20) and got.reshape(-1).tolist() == want
    # squared L2, not cosine: [9, 0] is closer to [10, 1] than to the colinear [1, 0]
    assert nearest_code(torch.tensor([[9.0, 0.0]]), torch.tensor([[1.0, 0.0], [10.0, 1.0]])).tolist() == [1]


def test_attention_mask_brute_force():
    valid = torch.tensor([[1] * 9 + [0] * 3, [1] * 12])
    for block, causal in ((4, False), (None, False), (4, True), (5, False)):
        got = attention_allowed(valid, block, causal)
        for b in range(2):
            for q in range(12):
                for k in range(12):
                    if causal:
                        want = k <= q
                    elif block:
                        want = (k <= q or k // block == q // block) and bool(valid[b, k])
                    else:
                        want = bool(valid[b, k])
                    assert bool(got[b, 0, q, k]) == want, (block, causal, b, q, k)


def reference_hidden(m: WhisperVQTokenizer, mel: torch.Tensor, fmask: torch.Tensor) -> torch.Tensor:
    """Plain-op reference for one segment (no batch): explicit causal padding, per-head eager attention
    with the block-causal rule written out, then avg pooling by reshaping."""
    c = m.cfg
    x = F.gelu(F.conv1d(F.pad(mel[None], (2, 0)), m.conv1.weight, m.conv1.bias))
    x = F.gelu(F.conv1d(F.pad(x, (2, 0)), m.conv2.weight, m.conv2.bias, stride=2))[0].T  # (T, D)
    T, D = x.shape
    x = x + m.embed_positions.weight[:T]
    valid = fmask[::2][:T].bool()
    H, hd = c.encoder_attention_heads, D // c.encoder_attention_heads
    allowed = torch.tensor([[bool(valid[k]) and (k <= q or k // 200 == q // 200) for k in range(T)] for q in range(T)])
    for layer in m.layers:
        a = layer.self_attn
        h = layer.self_attn_layer_norm(x)
        q = (a.q_proj(h) * hd ** -0.5).view(T, H, hd).transpose(0, 1)
        k = a.k_proj(h).view(T, H, hd).transpose(0, 1)
        v = a.v_proj(h).view(T, H, hd).transpose(0, 1)
        s = (q @ k.transpose(1, 2)).masked_fill(~allowed, float("-inf"))
        x = x + a.out_proj((s.softmax(-1) @ v).transpose(0, 1).reshape(T, D))
        x = x + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))
    pad = (-T) % 4
    x = F.pad(x.T, (0, pad)).T
    return x.view(-1, 4, D).mean(1)


def test_encoder_matches_plain_reference():
    tok = tiny_tok(seed=5)
    segs = [tok.segments(wave(n, i))[0] for i, n in enumerate([20000, 9000])]
    mels = [tok.features(s[None], m[None]) for s, m in segs]
    T = max(mel.shape[-1] for mel, _ in mels)
    x = torch.zeros(2, 128, T)
    fm = torch.zeros(2, T, dtype=torch.bool)
    for i, (mel, m) in enumerate(mels):
        x[i, :, : mel.shape[-1]], fm[i, : m.shape[-1]] = mel[0], m[0]
    with torch.no_grad():
        h, mask = tok.hidden(x, fm)
        ids, _ = tok(x, fm)
        for i, (mel, m) in enumerate(mels):
            ref = reference_hidden(tok, mel[0], m[0])
            n = int(mask[i].sum())
            assert n == math.ceil([20000, 9000][i] / 1280)
            assert torch.allclose(h[i, : ref.shape[0]], ref, atol=1e-4), (h[i, : ref.shape[0]] - ref).abs().max()
            assert ids[i, :n].tolist() == nearest_code(ref, tok.codebook.weight)[:n].tolist()


def test_features_match_whisper_feature_extractor():
    from transformers import WhisperFeatureExtractor

    tok = tiny_tok()
    fe = WhisperFeatureExtractor(feature_size=128)
    for n in (27_777, 1_000_000):  # one short segment; three 30 s segments (the last padded to 30 s)
        w = wave(n, 7)
        segs = tok.segments(w)
        pieces = [w[t: t + 480000].numpy() for t in range(0, n, 480000)]
        ref = fe(pieces, sampling_rate=16000, return_attention_mask=True, return_tensors="pt", padding="longest",
                 pad_to_multiple_of=1280)
        mel, fm = tok.features(torch.stack([s for s, _ in segs]), torch.stack([m for _, m in segs]))
        assert mel.shape == ref["input_features"].shape and torch.equal(fm.long(), ref["attention_mask"].long())
        assert torch.allclose(mel, ref["input_features"], atol=2e-4), (mel - ref["input_features"]).abs().max()


def test_batch_equals_alone():
    tok = tiny_tok(seed=6, max_batch=3)
    waves = [wave(n, i) for i, n in enumerate([3000, 490000, 1281, 64000, 15000])]
    batch = tok.tokenize(waves)
    for w, c in zip(waves, batch):
        assert tok.tokenize([w]) == [c]


# ----------------------------------------------------------------------------- weights
def real_like_checkpoint(m: WhisperVQTokenizer) -> dict[str, torch.Tensor]:
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    D = m.cfg.d_model
    sd["ema_count"] = torch.ones(m.cfg.quantize_vocab_size)
    sd["ema_weight"] = sd["codebook.weight"].clone()
    sd["embed_positions2.weight"] = torch.zeros(375, D)
    return sd


def write_snapshot(path, m: WhisperVQTokenizer, sd: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    c = m.cfg
    cfg = {k: getattr(c, k) for k in SemanticConfig.UPSTREAM_DEFAULTS}
    cfg.update({"architectures": ["WhisperVQEncoder"], "model_type": "whisper", "encoder_layers": 32,
                "quantize_encoder_only": True, "quantize_ema_decay": 0.99})
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"feature_size": 128, "hop_length": 160, "n_fft": 400, "sampling_rate": 16000, "chunk_length": 30}))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))


def test_state_dict_round_trip_with_real_key_names(tmp_path):
    src = tiny_tok(seed=8)
    names = set(src.state_dict())
    assert {"conv1.weight", "conv1.bias", "conv2.weight", "embed_positions.weight", "codebook.weight",
            "layers.1.self_attn.q_proj.bias", "layers.1.self_attn.k_proj.weight", "layers.1.self_attn.v_proj.bias",
            "layers.1.self_attn.out_proj.weight", "layers.1.self_attn_layer_norm.weight", "layers.1.fc1.weight",
            "layers.1.fc2.bias", "layers.1.final_layer_norm.bias"} <= names
    assert "layers.1.self_attn.k_proj.bias" not in names and "filters" not in names
    x = [wave(30000, 1)]
    want = src.tokenize(x)
    bare = real_like_checkpoint(src)
    write_snapshot(tmp_path / "bare", src, bare)
    # the WhisperVQForConditionalGeneration layout: model.encoder.*, a final layer_norm, deeper layers
    full = {"model.encoder." + k: v for k, v in bare.items()}
    full["model.encoder.layer_norm.weight"] = torch.ones(16)
    full["model.encoder.layers.2.fc1.weight"] = torch.zeros(32, 16)
    full["model.decoder.embed_tokens.weight"] = torch.zeros(4, 16)
    write_snapshot(tmp_path / "full", src, full)
    for d in ("bare", "full"):
        got = load_semantic_tokenizer(tmp_path / d)
        assert got.cfg == src.cfg
        assert all(torch.equal(got.state_dict()[k], v) for k, v in src.state_dict().items())
        assert got.tokenize(x) == want
    assert set(normalize_semantic_state_dict(bare, src.cfg)) == names
    # a missing tensor is an error naming it
    del bare["layers.0.fc1.weight"]
    write_snapshot(tmp_path / "broken", src, bare)
    with pytest.raises(ValueError, match="layers.0.fc1.weight"):
        load_semantic_tokenizer(tmp_path / "broken")
    for bad in (None, tmp_path / "nowhere", tmp_path):
        with pytest.raises(FileNotFoundError) as e:
            load_semantic_tokenizer(bad)
        assert GLM4_VOICE_TOKENIZER in str(e.value) and "-M semantic_path=" in str(e.value)


def test_real_size_structure_and_config_defaults():
    c = SemanticConfig()
    with torch.device("meta"):
        m = WhisperVQTokenizer(c)
    sd = m.state_dict()
    assert sd["conv1.weight"].shape == (1280, 128, 3) and sd["conv2.weight"].shape == (1280, 1280, 3)
    assert sd["embed_positions.weight"].shape == (1500, 1280) and sd["codebook.weight"].shape == (16384, 1280)
    assert "layers.15.fc2.weight" in sd and "layers.16.fc1.weight" not in sd
    assert sd["layers.0.fc1.weight"].shape == (5120, 1280)
    # keys absent from a config.json take the upstream WhisperVQConfig defaults, not the tokenizer's values
    d = SemanticConfig.from_dict({"quantize_vocab_size": 8})
    assert (d.pooling_type, d.pooling_position, d.pooling_kernel_size, d.quantize_causal_block_size) == ("max", 0, None, None)
    assert d.samples_per_code == 320  # no pooling: 50 Hz
    assert SemanticConfig.from_dict({k: getattr(c, k) for k in SemanticConfig.UPSTREAM_DEFAULTS}) == c


# ----------------------------------------------------------------------------- the EvA adapter
def _request(key: str, audio: AudioRef, text: str = "what is it") -> Request:
    r = Request(key=key, messages=[{"role": "user", "content": [{"type": "audio", "audio": audio},
                                                                 {"type": "text", "text": text}]}])
    r.generation.max_new_tokens = 3
    return r


def test_adapter_uses_the_tokenizer_end_to_end(tmp_path):
    from test_eva_model import CHUNK, enc_text, tiny_kimi

    model = tiny_kimi()
    tok = tiny_tok(seed=9, max_source_positions=100, quantize_vocab_size=64)  # 2 s segments, like the tiny Whisper
    calls = []
    tokenize = tok.tokenize
    tok.tokenize = lambda waves: calls.append(len(waves)) or tokenize(waves)
    model.semantic = tok
    eva = EvA.from_args({"checkpoint": "unused", "max_batch": 2}).attach(model, enc_text, lambda ids: str(ids))
    assert model.semantic_enabled
    refs = [AudioRef(array=wave(n, i).numpy(), sample_rate=16000) for i, n in enumerate([40000, 9000])]
    reqs = [_request("a", refs[0]), _request("b", refs[1]), _request("c", refs[0], "again")]
    out = eva.generate(reqs)
    assert all(o.error is None for o in out), out
    assert calls == [2]  # per clip, once, cached with the other encoder outputs
    for r in refs:
        codes = eva._clips[r.sha256()].codes
        assert codes == tokenize([torch.from_numpy(r.load(16000)[0])])[0]
        assert len(codes) == whisper_token_len(len(r.load(16000)[0]), CHUNK)  # one code per continuous position
    from evalkit.models.eva.kimi import build_prompt

    pr = build_prompt(reqs[0].messages, enc_text, eva._semantic_fn(), model.tokens)
    i = pr.audio_ids.index(model.tokens.media_begin)
    codes = eva._clips[refs[0].sha256()].codes
    assert pr.audio_ids[i + 1: i + 1 + len(codes)] == [c + model.tokens.semantic_offset for c in codes]
    assert eva.generate([reqs[1]])[0].text == out[1].text and calls == [2]

    # -M semantic_codes=FILE.json still overrides: the tokenizer is not run
    table = {refs[0].sha256(): [1, 2, 3] * 100}
    (tmp_path / "codes.json").write_text(json.dumps(table))
    model2 = tiny_kimi()
    model2.semantic = tok
    eva2 = EvA.from_args({"checkpoint": "unused", "semantic_codes": str(tmp_path / "codes.json")})
    eva2.attach(model2, enc_text, str)
    assert not model2.semantic_enabled
    res = eva2.generate([reqs[0]])
    assert res[0].error is None and calls == [2] and eva2._clips[refs[0].sha256()].codes is None


def test_adapter_without_tokenizer_names_semantic_path(tmp_path):
    from test_eva_model import enc_text, tiny_kimi

    eva = EvA.from_args({"checkpoint": "unused"}).attach(tiny_kimi(), enc_text, str)
    out = eva.generate([_request("a", AudioRef(array=wave(8000, 0).numpy(), sample_rate=16000))])
    assert "NotImplementedError" in out[0].error and GLM4_VOICE_TOKENIZER in out[0].error
    assert "-M semantic_path=DIR" in out[0].error and "-M semantic_codes=" in out[0].error
    cfg = EvA.from_args({"checkpoint": str(tmp_path), "kimi_path": str(tmp_path), "ced_path": str(tmp_path),
                         "semantic_path": str(tmp_path / "missing")})
    with pytest.raises(Exception, match="semantic_path"):
        cfg._check_paths()
