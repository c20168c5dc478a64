"""The CLAP adapter on a tiny random-initialized ClapModel with a locally built
processor (ClapFeatureExtractor + a byte-level RobertaTokenizerFast from a tiny vocab),
saved to disk and loaded through `-M path=` (the real loading path; no download)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from evalkit.models.clap import CLAP, CLAPModelError, parse_labels  # noqa: E402
from evalkit.types import AudioRef, Request  # noqa: E402


@pytest.fixture(scope="module")
def tiny_clap_dir(tmp_path_factory) -> Path:
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizerFast

    d = tmp_path_factory.mktemp("tiny_clap")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for c in [chr(i) for i in range(33, 127)] + ["Ġ"]:
        vocab.setdefault(c, len(vocab))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = RobertaTokenizerFast(vocab_file=str(d / "vocab.json"), merges_file=str(d / "merges.txt"))
    proc = ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"), tokenizer=tok)
    torch.manual_seed(0)
    cfg = ClapConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=128),
        audio_config=dict(depths=[1, 1], num_attention_heads=[1, 2], patch_embeds_hidden_size=16, hidden_size=32,
                          window_size=8, spec_size=256, num_mel_bins=64, enable_fusion=False),
        projection_dim=16)
    model = ClapModel(cfg).eval()
    out = d / "model"
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def req(key, audio, text):
    return Request(key=key, messages=[{"role": "user", "content": [
        {"type": "audio", "audio": audio}, {"type": "text", "text": text}]}])


def tone(freq, seconds=1.0, sr=48000):
    t = np.arange(int(seconds * sr)) / sr
    return AudioRef(array=(0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sample_rate=sr)


def noise(seconds=1.0, sr=48000, seed=0):
    x = np.random.default_rng(seed).standard_normal(int(seconds * sr)).astype(np.float32) * 0.3
    return AudioRef(array=x, sample_rate=sr)


def test_parse_labels():
    assert parse_labels("Q?\n\nOptions:\n(A) dog barking\n(B) cat\n\nAnswer with the letter.") == (
        ["dog barking", "cat"], ["A", "B"])
    assert parse_labels("Choose one of:\n- home\n- cafe restaurant\n\nAnswer.") == (["home", "cafe restaurant"], None)
    assert parse_labels("no labels here") == ([], None)


def test_mcq_scene_and_tagging(tiny_clap_dir):
    m = CLAP.from_args({"path": str(tiny_clap_dir)})
    mcq = "What is this?\n\nOptions:\n(A) dog\n(B) cat\n(C) car\n\nAnswer with the letter of the correct option."
    scene = "Which acoustic scene is the background of this recording? Choose one of:\n- home\n- metro station\n"
    events = ("Which of the following sound events occur in the background?\n- dog\n- car\n- metro leaving\n"
              "- footsteps\n\nAnswer with the events present as a comma-separated list, or \"none\".")
    r_mcq, r_scene, r_tag, r_none, r_long = m.generate([
        req("m", tone(440), mcq), req("s", noise(), scene), req("t", noise(), events),
        req("n", noise(), "Describe the audio."), req("l", noise(seconds=23.0), events)])
    assert r_mcq.error is None and r_mcq.text in {"A", "B", "C"} and r_mcq.extra["mode"] == "mcq"
    assert sum(r_mcq.extra["label_scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert r_scene.extra["mode"] == "scene" and r_scene.text in {"home", "metro station"}
    assert r_tag.extra["mode"] == "tagging"
    assert set(r_tag.extra["label_scores"]) == {"dog", "car", "metro leaving", "footsteps"}
    assert r_tag.text and all(x in r_tag.extra["label_scores"] for x in r_tag.text.split(", "))
    assert r_none.error and "no candidate labels" in r_none.error  # fails alone, not the batch
    assert r_long.error is None  # > 10 s: averaged windows
    assert m.info()["model"] == str(tiny_clap_dir)


def test_audio_reaches_the_model(tiny_clap_dir):
    m = CLAP.from_args({"path": str(tiny_clap_dir), "mode": "tagging"})
    text = "Events:\n- dog\n- car\n- birds singing"
    a, b = m.generate([req("a", tone(300), text), req("b", noise(seed=3), text)])
    assert a.extra["label_scores"] != b.extra["label_scores"]


def test_sseu_scoring_uses_clap_scores(tiny_clap_dir, tmp_path, monkeypatch):
    """CLAP's label scores flow through the SSEU AT/ASC scorers (no text embedding needed)."""
    pytest.importorskip("sklearn")
    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(tmp_path / "cache"))
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_sseu_scoring import make_dataset, records_for

    from evalkit.tasks.sseu import SSEUASC, SSEUAT
    from evalkit.types import Presentation

    data = make_dataset(tmp_path / "sseu", per_scene=1, snrs=["0", "+inf"])
    m = CLAP.from_args({"path": str(tiny_clap_dir)})
    for cls, metric in ((SSEUAT, "map"), (SSEUASC, "macc")):
        task = cls.from_args({"data": str(data)})
        d = task.load()
        resp = {}
        reqs = [Request(key=s.id, messages=task.prompt(Presentation(key=s.id, sample=s))) for s in d.samples]
        for r in m.generate(reqs):
            assert r.error is None, r.error
            resp[r.key] = r
        recs = records_for(task, d, lambda s, resp=resp: resp[s.id].text, lambda s, resp=resp: resp[s.id].extra)
        res = task.aggregate(recs)
        assert res["metrics"][metric]["value"] is not None
        expected_mode = "tagging" if cls is SSEUAT else "scene"
        assert all(resp[s.id].extra["mode"] == expected_mode for s in d.samples)


def test_missing_weights_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CLAPModelError) as e:
        CLAP.from_args({})._load()
    assert "laion/clap-htsat-unfused" in str(e.value) and "-M path=" in str(e.value)
    with pytest.raises(CLAPModelError, match="config.json"):
        CLAP.from_args({"path": str(tmp_path)})._load()
    with pytest.raises(Exception):
        CLAP.from_args({"mode": "zero-shot"})  # typed: typo fails
