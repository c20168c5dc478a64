import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import shared_data

from evalkit.tasks.sseu import build as sb
from evalkit.tasks.sseu import mixing

ROW_KEYS = {"id", "audio", "snr", "snr_db", "transcript", "scene", "events", "speech_source", "background_source",
            "speaker", "gains", "measured_snr_db", "sample_rate", "duration_s", "synthetic"}


def _rows(out):
    return [json.loads(line) for line in (Path(out) / "manifest.jsonl").read_text().splitlines()]


def _digest(out):
    out = Path(out)
    h = hashlib.sha256((out / "manifest.jsonl").read_bytes())
    for p in sorted((out / "clips").glob("*.flac")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------ synthetic set


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = sb.build_synthetic(out, seed=0, n_pairs=12, stems=True)
    return out, summary


def test_synthetic_manifest_and_metadata(synth):
    out, summary = synth
    rows = _rows(out)
    meta = json.loads((out / "sseu.json").read_text())
    assert summary["n_clips"] == len(rows) == 12 * 7 == meta["n_clips"]
    assert meta["synthetic"] is True and meta["name"] == "sseu-synth"
    assert meta["snrs"] == sb.SNR_LABELS and meta["scenes"] == sb.SCENES and len(meta["events"]) == 18
    assert {"seed", "event_class_source", "sample_rate", "builder_version", "power_definition"} <= set(meta)
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["scene"] for r in rows} == set(sb.SCENES)
    modes = set()
    for r in rows:
        assert set(r) >= ROW_KEYS
        assert r["synthetic"] is True and r["id"].startswith("synth-")
        assert r["id"].endswith("_snr" + r["snr"]) and r["snr"] in sb.SNR_LABELS
        assert r["sample_rate"] == 44100
        assert (out / r["audio"]).is_file()
        if r["snr"] == "+inf":
            assert r["events"] == [] and r["snr_db"] is None and r["transcript"]
        elif r["snr"] == "-inf":
            assert r["transcript"] == "" and r["snr_db"] is None and r["events"]
        else:
            assert r["snr_db"] == float(r["snr"]) and r["transcript"]
        for e in r["events"]:
            assert e["label"] in meta["events"]
            assert 0.0 <= e["onset"] < e["offset"] <= r["duration_s"] + 1e-3
        modes.add(r["background_segment"]["mode"])
    assert {"cut", "loop"} <= modes  # both a longer and a shorter background occur


def test_synthetic_clips_snr_gain_clipping(synth):
    out, _ = synth
    any_common = False
    for r in _rows(out):
        mix, sr = sf.read(out / r["audio"], dtype="float64")
        sp, _ = sf.read(out / "clips" / "stems" / f"{r['id']}.speech.wav", dtype="float64")
        bg, _ = sf.read(out / "clips" / "stems" / f"{r['id']}.background.wav", dtype="float64")
        assert sr == 44100 and mix.shape == sp.shape == bg.shape
        assert mix.shape[0] / sr == pytest.approx(r["duration_s"], abs=1e-4)
        assert np.max(np.abs(mix)) <= 1.0
        np.testing.assert_allclose(mix, sp + bg, atol=2 / 32768)  # mixture = components (16-bit)
        g = r["gains"]
        assert 0 < g["common"] <= 1.0
        any_common |= g["common"] < 1.0
        if r["snr"] == "+inf":
            assert not np.any(bg) and g["background"] == 0.0
        elif r["snr"] == "-inf":
            assert not np.any(sp) and g["speech"] == 0.0
        else:
            measured = mixing.measure_snr(sp, bg, sr)
            assert abs(measured - r["snr_db"]) < 0.1, (r["id"], measured)
            assert abs(r["measured_snr_db"] - r["snr_db"]) < 0.1
            # the mixture itself, minus the speech stem, gives the same SNR within 0.1 dB
            assert abs(mixing.measure_snr(sp, mix - sp, sr) - r["snr_db"]) < 0.1
    assert any_common  # the -10 dB clips of loud scenes needed the common gain


def test_synthetic_determinism(synth, tmp_path):
    out, _ = synth
    a = tmp_path / "a"
    sb.build_synthetic(a, seed=0, n_pairs=12)
    assert _digest(a) == _digest(out)  # the stems do not change the clips or the manifest
    c = tmp_path / "c"
    sb.build_synthetic(c, seed=1, n_pairs=12)
    assert _digest(c) != _digest(a)
    assert (a / "manifest.jsonl").read_text() != (c / "manifest.jsonl").read_text()


class _Stop(Exception):
    pass


def test_resume_after_interruption(synth, tmp_path):
    out, _ = synth
    part = tmp_path / "part"
    count = {"n": 0}

    def hook(row):
        count["n"] += 1
        if count["n"] == 17:
            raise _Stop()

    with pytest.raises(_Stop):
        sb.build_synthetic(part, seed=0, n_pairs=12, on_clip=hook)
    assert len(_rows(part)) == 17
    # a torn manifest line and a leftover temp clip, as a kill mid-write would leave them
    with open(part / "manifest.jsonl", "a") as f:
        f.write('{"id": "synth-00002_snr5", "aud')
    (part / "clips" / "synth-00002_snr5.partial.flac").write_bytes(b"junk")
    summary = sb.build_synthetic(part, seed=0, n_pairs=12)
    assert summary["n_built"] == 84 - 17 and summary["n_clips"] == 84
    ids = [r["id"] for r in _rows(part)]
    assert len(ids) == len(set(ids)) == 84
    assert not list((part / "clips").glob("*.partial.*"))
    assert _digest(part) == _digest(out)
    # a finished build resumes to a no-op
    assert sb.build_synthetic(part, seed=0, n_pairs=12)["n_built"] == 0


def test_resume_refuses_changed_args(tmp_path):
    out = tmp_path / "o"
    sb.build_synthetic(out, seed=0, n_pairs=2, snrs=["0"])
    with pytest.raises(sb.SSEUBuildError, match="different plan.*seed"):
        sb.build_synthetic(out, seed=3, n_pairs=2, snrs=["0"])
    with pytest.raises(sb.SSEUBuildError, match="different plan"):
        sb.build_synthetic(out, seed=0, n_pairs=2, snrs=["0", "5"])
    assert len(_rows(out)) == 2  # nothing lost


@pytest.mark.parametrize("bad, msg", [
    (["10", "10"], "duplicate"),
    (["inf", "+inf"], "duplicate"),
    (["10dB", "+10"], "duplicate"),
    (["abc"], "cannot parse 'abc'"),
    (["nan"], "not a number"),
    ([], "no SNR"),
])
def test_bad_snr(bad, msg):
    with pytest.raises(sb.SSEUBuildError, match=msg) as e:
        sb.parse_snrs(bad)
    assert "--snr" in str(e.value)


def test_parse_snrs_canonical():
    assert sb.parse_snrs(None) == [(lab, float(lab)) for lab in sb.SNR_LABELS]
    assert [lab for lab, _ in sb.parse_snrs("-inf,0,+10,inf,2.5")] == ["+inf", "10", "2.5", "0", "-inf"]


def test_event_class_candidates(tmp_path):
    a, amap, _ = sb.load_event_classes("A")
    b, bmap, _ = sb.load_event_classes("B")
    assert len(a) == len(b) == 18
    assert "Speech" not in a and "cutlery and dishes" in a and amap.get("people talking") is None
    assert "Speech" in b and bmap["cutlery and dishes"] == "Dishes" and bmap["children voices"] == "Speech"
    t = tmp_path / "classes.tsv"
    t.write_text("class\tsource_labels\nDishes\tDishes|cutlery and dishes\ncar\t\n")
    c, cmap, src = sb.load_event_classes(t)
    assert c == ["Dishes", "car"] and cmap == {"Dishes": "Dishes", "cutlery and dishes": "Dishes", "car": "car"}
    with pytest.raises(sb.SSEUBuildError, match="neither A, B nor a TSV"):
        sb.load_event_classes("C")


def test_derived_class_table_matches_shared():
    tsv = shared_data("sseu_sources", "sseu_event_classes_derived.tsv")
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    want_a = [r["class"] for r in rows if r["in_candidate_A"] == "yes"]
    want_b = [r["class"] for r in rows if r["in_candidate_B"].startswith("yes")]
    assert sb.load_event_classes("A")[0] == want_a
    assert sb.load_event_classes("B")[0] == want_b


# ------------------------------------------------------------------ real layouts (fixture trees)

PUBLIC_TSV = """filename\tonset\toffset\tevent_label
1Ro0FgMWTUE_120_130.wav\t0.000\t2.081\tSpeech
1Ro0FgMWTUE_120_130.wav\t3.847\t10.000\tFrying
AAAdog_30_40.wav\t1.000\t2.500\tDog
AAAdog_30_40.wav\t6.000\t10.300\tDishes
BBBcat_0_10.wav\t0.000\t10.000\tCat
"""
GT_DEV = """filename\tonset\toffset\tevent_label
city_center_01.wav\t0.0\t1.0\tcar
city_center_01.wav\t1.0\t2.0\tcar
city_center_01.wav\t1.0\t2.0\tpeople talking
city_center_01.wav\t12.0\t13.0\tbrakes_squeaking
city_center_01.wav\t13.0\t14.0\tbrakes_squeaking
"""
SOFT_CAFE = "0.0\t1.0\tcutlery and dishes\t0.22607917138849756\n0.0\t1.0\tfootsteps\t0.12977944582818704\n" \
            "0.0\t1.0\tfurniture dragging\t0.3863415649633261\n3.0\t4.0\tcutlery and dishes\t0.9\n" \
            "4.0\t5.0\tcutlery and dishes\t0.7\n"


def _wav(path, seconds, sr=44100, channels=1, seed=0, subtype="PCM_16", data=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        rng = np.random.default_rng(seed)
        data = 0.1 * rng.standard_normal((int(seconds * sr), channels))
    sf.write(str(path), data, sr, subtype=subtype, format="FLAC" if path.suffix == ".flac" else "WAV")


def _speech_sig(seconds, sr, seed):
    t = np.arange(int(seconds * sr)) / sr
    return 0.3 * np.maximum(0, np.sin(2 * np.pi * 3 * t + seed)) * np.sin(2 * np.pi * (120 + 10 * seed) * t)


def make_tree(root: Path, vctk_version="0.92", public_tsv=PUBLIC_TSV, gt_dev=GT_DEV):
    """Small trees shaped like VCTK 0.92/0.80, DESED public eval and MAESTRO-Real development."""
    vctk = root / "VCTK-Corpus-0.92"
    texts = {("p225", "001"): "Please call Stella.", ("p225", "002"): "Ask her to bring these things with her from the store.",
             ("p226", "003"): "Six spoons of fresh snow peas, five thick slabs of blue cheese.",
             ("p376", "295"): '"What are you not good at ?"'}
    for i, ((spk, utt), text) in enumerate(sorted(texts.items())):
        sig = _speech_sig(1.5 + 0.2 * i, 48000, i)
        if vctk_version == "0.92":
            _wav(vctk / "wav48_silence_trimmed" / spk / f"{spk}_{utt}_mic1.flac", 0, sr=48000, data=sig)
            _wav(vctk / "wav48_silence_trimmed" / spk / f"{spk}_{utt}_mic2.flac", 0, sr=48000, data=sig * 0.5)
        else:
            _wav(vctk / "wav48" / spk / f"{spk}_{utt}.wav", 0, sr=48000, data=sig)
        (vctk / "txt" / spk).mkdir(parents=True, exist_ok=True)
        (vctk / "txt" / spk / f"{spk}_{utt}.txt").write_text(text + "\n")
    # p315: audio but no text folder ("Text unavailable") -> skipped
    if vctk_version == "0.92":
        _wav(vctk / "wav48_silence_trimmed" / "p315" / "p315_001_mic1.flac", 0, sr=48000, data=_speech_sig(1.0, 48000, 9))
    else:
        _wav(vctk / "wav48" / "p315" / "p315_001.wav", 0, sr=48000, data=_speech_sig(1.0, 48000, 9))
    (vctk / "speaker-info.txt").write_text("ID  AGE  GENDER  ACCENTS  REGION COMMENTS \np225  23  F    English    Southern  England\n")

    desed = root / "DESED" / "dataset"
    (desed / "metadata" / "eval").mkdir(parents=True)
    (desed / "metadata" / "eval" / "public.tsv").write_text(public_tsv)
    names = sorted({line.split("\t")[0] for line in public_tsv.splitlines()[1:] if line.strip()})
    for k, fn in enumerate(names):
        _wav(desed / "audio" / "eval" / "public" / fn, 10.0, channels=2 if k % 2 else 1, seed=k)

    maestro = root / "MAESTRO"
    _wav(maestro / "development_audio" / "city_center" / "city_center_01.wav", 25.0, channels=2, seed=11)
    _wav(maestro / "development_audio" / "cafe_restaurant" / "cafe_restaurant_14.wav", 12.0, channels=2, seed=12)
    (maestro / "gt_dev.csv").write_text(gt_dev)
    soft = maestro / "development_annotation" / "soft_labels_cafe_restaurant"
    soft.mkdir(parents=True)
    (soft / "cafe_restaurant_14.txt").write_text(SOFT_CAFE)
    return vctk, root / "DESED", maestro


def test_readers_on_real_layouts(tmp_path):
    vctk, desed, maestro = make_tree(tmp_path)
    speech, skipped = sb.read_vctk(vctk)
    assert skipped == ["p315"]
    assert [s.rel for s in speech][:2] == ["wav48_silence_trimmed/p225/p225_001_mic1.flac",
                                           "wav48_silence_trimmed/p225/p225_002_mic1.flac"]
    assert all("mic2" not in s.rel for s in speech)
    assert sb.read_transcript(speech[0].transcript_path) == "Please call Stella."
    bgs = sb.read_desed(desed)  # the parent of dataset/ is accepted
    assert [b.rel for b in bgs] == ["audio/eval/public/AAAdog_30_40.wav", "audio/eval/public/BBBcat_0_10.wav"]
    assert all(b.scene == "home" for b in bgs)
    m = sb.read_maestro(maestro)
    cc = [b for b in m if b.scene == "city center"]
    cafe = [b for b in m if b.scene == "restaurant"]
    assert len(cc) == 2 and len(cafe) == 1  # 25 s -> two 10-s windows, 12 s -> one
    assert {(e["label"], e["onset"], e["offset"]) for e in cc[0].events} == {("car", 0.0, 2.0), ("people talking", 1.0, 2.0)}
    assert cc[1].events == [{"label": "brakes_squeaking", "onset": 2.0, "offset": 4.0}]
    assert cafe[0].events == [{"label": "cutlery and dishes", "onset": 3.0, "offset": 5.0}]  # soft > 0.5 only


@pytest.mark.parametrize("version", ["0.92", "0.80"])
def test_build_real_layout(tmp_path, version):
    vctk, desed, maestro = make_tree(tmp_path, vctk_version=version)
    out = tmp_path / "out"
    summary = sb.build(vctk, desed, maestro, out, snrs=["+inf", "0", "-inf"], seed=0, limit=None, progress=False,
                       stems=True)
    rows = _rows(out)
    meta = json.loads((out / "sseu.json").read_text())
    assert meta["synthetic"] is False and meta["name"] == "sseu-bench" and meta["snrs"] == ["+inf", "0", "-inf"]
    assert summary["n_pairs"] == 5 and len(rows) == 15 == meta["n_clips"]
    assert summary["skipped_speakers"] == ["p315"]
    assert {r["scene"] for r in rows} == {"home", "city center", "restaurant"}
    # pairs are interleaved over scenes so that --limit stays balanced
    assert [r["scene"] for r in rows[::3]][:3] == ["home", "restaurant", "city center"]
    texts = {"p225", "p226", "p376"}
    for r in rows:
        assert set(r) >= ROW_KEYS and r["synthetic"] is False and r["sample_rate"] == 44100
        assert r["speaker"] in texts and "1Ro0FgMWTUE" not in r["background_source"]  # the Speech clip is excluded
        assert (vctk / r["speech_source"]).is_file()
        assert r["speech_source"].startswith("wav48_silence_trimmed/" if version == "0.92" else "wav48/")
        mix, sr = sf.read(out / r["audio"])
        assert sr == 44100 and mix.ndim == 1 and np.max(np.abs(mix)) <= 1.0
        for e in r["events"]:
            assert e["label"] not in ("people talking", "Speech")
        if r["snr"] == "0":
            assert abs(r["measured_snr_db"]) < 0.1
            sp, _ = sf.read(out / "clips" / "stems" / f"{r['id']}.speech.wav")
            bg, _ = sf.read(out / "clips" / "stems" / f"{r['id']}.background.wav")
            assert abs(mixing.measure_snr(sp, bg, sr)) < 0.1
    by_bg = {r["background_source"]: r for r in rows if r["snr"] == "0"}
    dog = by_bg["audio/eval/public/AAAdog_30_40.wav"]
    assert dog["transcript"] and dog["background_segment"]["mode"] in ("cut", "exact")
    # events are shifted by the cut offset and clipped to the clip
    off = dog["background_segment"]["offset_s"]
    for e in dog["events"]:
        assert e["label"] in ("Dog", "Dishes") and 0 <= e["onset"] < e["offset"] <= dog["duration_s"] + 1e-3
    exp = [(lab, max(a - off, 0), min(b, 10.0) - off) for lab, a, b in [("Dog", 1.0, 2.5), ("Dishes", 6.0, 10.3)]
           if b - off > 0 and a - off < dog["duration_s"]]
    assert len(dog["events"]) == len(exp)
    # limit: a prefix of the same plan
    out2 = tmp_path / "out2"
    sb.build(vctk, desed, maestro, out2, snrs=["+inf", "0", "-inf"], seed=0, limit=2, progress=False)
    rows2 = _rows(out2)
    assert [r["id"] for r in rows2] == [r["id"] for r in rows[:6]]
    assert [r["speech_source"] for r in rows2] == [r["speech_source"] for r in rows[:6]]


def test_real_layout_determinism_and_seed(tmp_path):
    vctk, desed, maestro = make_tree(tmp_path)
    d = []
    for name, seed in (("a", 0), ("b", 0), ("c", 5)):
        sb.build(vctk, desed, maestro, tmp_path / name, snrs=["5"], seed=seed, limit=None, progress=False)
        d.append(_digest(tmp_path / name))
    assert d[0] == d[1] and d[0] != d[2]


def test_missing_transcript_names_file(tmp_path):
    vctk, desed, maestro = make_tree(tmp_path)
    (vctk / "txt" / "p226" / "p226_003.txt").unlink()  # p226 keeps its txt folder, only this file is gone
    with pytest.raises(sb.SSEUBuildError, match=r"missing transcript file .*p226_003\.txt"):
        sb.build(vctk, desed, maestro, tmp_path / "out", snrs=["0"], seed=0, limit=None, progress=False)
    (vctk / "txt" / "p226" / "p226_003.txt").write_text("\n")
    with pytest.raises(sb.SSEUBuildError, match=r"empty transcript file .*p226_003\.txt"):
        sb.build(vctk, desed, maestro, tmp_path / "out", snrs=["0"], seed=0, limit=None, progress=False)


@pytest.mark.parametrize("kind, msg", [("nan", "NaN"), ("empty", "empty"), ("garbage", "cannot decode"),
                                       ("silent", "silent")])
def test_bad_audio_names_file_and_keeps_progress(tmp_path, kind, msg):
    vctk, desed, maestro = make_tree(tmp_path)
    bad = desed / "dataset" / "audio" / "eval" / "public" / "BBBcat_0_10.wav"
    good = bad.read_bytes()
    if kind == "nan":
        x = np.full((44100, 1), 0.1)
        x[100] = np.nan
        sf.write(str(bad), x, 44100, subtype="FLOAT")
    elif kind == "empty":
        sf.write(str(bad), np.zeros((0, 1)), 44100)
    elif kind == "silent":
        sf.write(str(bad), np.zeros((44100, 1)), 44100)
    else:
        bad.write_bytes(b"RIFF garbage, not audio")
    out = tmp_path / "out"
    with pytest.raises(sb.SSEUBuildError, match=msg) as e:
        sb.build(vctk, desed, maestro, out, snrs=["0", "-5"], seed=0, limit=None, progress=False)
    assert "BBBcat_0_10.wav" in str(e.value)
    before = _rows(out) if (out / "manifest.jsonl").exists() else []
    bad.write_bytes(good)  # fix the file, build again: everything built before is kept
    sb.build(vctk, desed, maestro, out, snrs=["0", "-5"], seed=0, limit=None, progress=False)
    after = _rows(out)
    assert after[: len(before)] == before and len(after) == 10
    ref = tmp_path / "ref"
    sb.build(vctk, desed, maestro, ref, snrs=["0", "-5"], seed=0, limit=None, progress=False)
    assert _digest(ref) == _digest(out)


def test_missing_background_and_bad_dirs(tmp_path):
    vctk, desed, maestro = make_tree(tmp_path)
    with pytest.raises(sb.SSEUBuildError, match="--vctk"):
        sb.build(tmp_path / "nope", desed, maestro, tmp_path / "o", progress=False)
    with pytest.raises(sb.SSEUBuildError, match="--desed"):
        sb.build(vctk, tmp_path, None, tmp_path / "o", progress=False)
    with pytest.raises(sb.SSEUBuildError, match="--limit"):
        sb.build(vctk, desed, maestro, tmp_path / "o", limit=0, progress=False)
    with pytest.raises(sb.SSEUBuildError, match="--snr"):
        sb.build(vctk, desed, maestro, tmp_path / "o", snrs=["0", "0.0"], progress=False)
    (desed / "dataset" / "audio" / "eval" / "public" / "AAAdog_30_40.wav").unlink()
    with pytest.raises(sb.SSEUBuildError, match="AAAdog_30_40.wav"):
        sb.build(vctk, desed, None, tmp_path / "o2", snrs=["0"], progress=False)


def test_short_background_is_looped(tmp_path):
    vctk, desed, maestro = make_tree(tmp_path)
    # a 1-s DESED clip under 1.5-2.1 s speech must be looped
    for k, fn in enumerate(["AAAdog_30_40.wav", "BBBcat_0_10.wav"]):
        _wav(desed / "dataset" / "audio" / "eval" / "public" / fn, 1.0, seed=k)
    out = tmp_path / "out"
    sb.build(vctk, desed, None, out, snrs=["0"], seed=0, limit=None, progress=False, stems=True)
    rows = _rows(out)
    assert rows and all(r["background_segment"]["mode"] == "loop" for r in rows)
    for r in rows:
        bg, sr = sf.read(out / "clips" / "stems" / f"{r['id']}.background.wav")
        assert r["duration_s"] > 1.0 and np.any(bg[-2000:])
        period = 44100 - int(round(mixing.CROSSFADE_S * 44100))
        np.testing.assert_allclose(bg[period:], bg[:-period], atol=1e-7)
        assert abs(r["measured_snr_db"]) < 0.1
    by_bg = {r["background_source"].rsplit("/", 1)[-1]: r for r in rows}
    # Cat covers the whole 1-s source, so the looped clip is one Cat event from start to end
    cat = by_bg["BBBcat_0_10.wav"]
    assert cat["events"] == [{"label": "Cat", "onset": 0.0, "offset": cat["duration_s"]}]
    # Dog starts at 1.0 s in a 1.0-s file: clipped away; Dishes too
    assert by_bg["AAAdog_30_40.wav"]["events"] == []


# ------------------------------------------------------------------ the real shared annotation files


def test_real_desed_public_tsv(tmp_path):
    tsv = shared_data("sseu_sources", "desed", "public.tsv")
    root = tmp_path / "dataset"
    (root / "metadata" / "eval").mkdir(parents=True)
    (root / "metadata" / "eval" / "public.tsv").write_bytes(tsv.read_bytes())
    (root / "audio" / "eval" / "public").mkdir(parents=True)
    items = sb.read_desed(root)
    assert len(items) == 378  # the paper's number of DESED backgrounds
    labels = {e["label"] for it in items for e in it.events}
    assert "Speech" not in labels and labels <= set(sb.load_event_classes("A")[1])


def test_real_maestro_gt_dev(tmp_path):
    src = shared_data("sseu_sources", "maestro_real")
    meta = {}
    with open(src / "development_metadata.csv") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            meta[r["filename"]] = float(r["duration"])
    root = tmp_path / "maestro"
    root.mkdir()
    (root / "gt_dev.csv").write_bytes((src / "gt_dev.csv").read_bytes())
    # a short stand-in recording for two real file names (the labels of their first 30 s are used)
    assert "city_center_04" in meta and "metro_station_04" in meta
    for stem in ("city_center_04", "metro_station_04"):
        _wav(root / "development_audio" / stem.rsplit("_", 1)[0] / f"{stem}.wav", 30.0, sr=8000, channels=2)
    items = sb.read_maestro(root)
    assert {it.scene for it in items} <= {"city center", "metro station"} and len(items) % 3 == 0
    _, amap, _ = sb.load_event_classes("A")
    hard = {"birds_singing", "car", "people talking", "footsteps", "children voices", "wind_blowing",
            "brakes_squeaking", "large_vehicle", "cutlery and dishes", "metro approaching", "metro leaving"}
    for it in items:
        for e in it.events:
            assert e["label"] in hard and 0 <= e["onset"] < e["offset"] <= 10.0
    # every 1-s row of the first window is covered by the merged events
    with open(src / "gt_dev.csv") as f:
        first = [r for r in csv.DictReader(f, delimiter="\t")
                 if r["filename"] == "city_center_04.wav" and float(r["offset"]) <= 10.0]
    assert first  # the real file has labels in the first window
    cc0 = next(it for it in items if it.key == "maestro:city_center_04:0")
    for r in first:
        assert any(e["label"] == r["event_label"] and e["onset"] <= float(r["onset"]) and float(r["offset"]) <= e["offset"]
                   for e in cc0.events)


def test_real_vctk_transcripts_shape_fixture(tmp_path):
    fl = shared_data("sseu_sources", "vctk", "vits_vctk_audio_sid_text_test_filelist.txt")
    lines = fl.read_text().splitlines()[:6]
    vctk = tmp_path / "vctk"
    for i, line in enumerate(lines):
        path, _, text = line.split("|", 2)
        spk, utt = Path(path).stem.split("_")
        _wav(vctk / "wav48_silence_trimmed" / spk / f"{spk}_{utt}_mic1.flac", 0, sr=48000, data=_speech_sig(1.0, 48000, i))
        (vctk / "txt" / spk).mkdir(parents=True, exist_ok=True)
        (vctk / "txt" / spk / f"{spk}_{utt}.txt").write_text(text + "\n")
    items, skipped = sb.read_vctk(vctk)
    assert len(items) == 6 and not skipped
    got = {it.rel.split("/")[-1].replace("_mic1.flac", ""): sb.read_transcript(it.transcript_path) for it in items}
    want = {Path(line.split("|")[0]).stem: line.split("|", 2)[2].strip() for line in lines}
    assert got == want


def test_cli_build_then_score_ground_truth(tmp_path):
    """`evalkit data build sseu` on the real layouts, then an sseu-asr run scored from a
    predictions file holding the ground truth: WER 0 at every scored SNR."""
    import subprocess
    import sys

    vctk, desed, maestro = make_tree(tmp_path / "src")
    out = tmp_path / "built"
    cmd = [sys.executable, "-m", "evalkit.cli", "data", "build", "sseu", "--vctk", str(vctk), "--desed", str(desed),
           "--maestro", str(maestro), "--out", str(out), "--snr", "+inf", "--snr", "0", "--snr", "-inf", "--limit", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = _rows(out)
    assert {row["snr"] for row in rows} == {"+inf", "0", "-inf"} and len(rows) == 6
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": row["id"], "response": row["transcript"]}) + "\n" for row in rows))
    r = subprocess.run([sys.executable, "-m", "evalkit.cli", "run", "--model", "predictions", "-M", f"path={preds}",
                        "--task", "sseu-asr", "-T", f"data={out}", "--output", str(tmp_path / "runs"), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    run = json.loads(next((tmp_path / "runs").iterdir()).joinpath("run.json").read_text())
    assert run["metrics"]["wer"]["value"] == 0.0 and run["metrics"]["wer"]["n"] == 4
    assert run["groups"]["snr"]["-inf"]["wer"]["value"] is None  # no speech: not scored
    bad = subprocess.run(cmd[:-4] + ["--snr", "+inf", "--snr", "+inf"], capture_output=True, text=True)
    assert bad.returncode == 2 and "snr" in bad.stderr.lower()
