"""sakura, mugen, dynamic-superb: fixtures in the upstream formats (written here), loaders,
scorers and end-to-end runs through run_task with a scripted adapter, figures by hand."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from evalkit.engine.runner import RunConfigError, RunSpec, rescore, run_task
from evalkit.engine.store import read_records
from evalkit.models.base import AdapterConfig, Model
from evalkit.tasks.base import TaskDataError
from evalkit.types import Request, Response

# ---------------------------------------------------------------- a scripted adapter


class RepliesConfig(AdapterConfig):
    replies: str  # JSON {sample_id: "option:<text>" (answer that option's letter) | raw reply text}
    log: str | None = None  # JSONL: per request, the order of its content parts (text / audio label)


class Replies(Model):
    name = "replies"
    capabilities = frozenset({"audio", "text", "multi_audio"})
    Config = RepliesConfig
    sample_rate = None

    def __init__(self, config):
        super().__init__(config)
        self.replies = json.loads(Path(config.replies).read_text())

    def generate(self, requests: list[Request]) -> list[Response]:
        out = []
        for r in requests:
            if self.config.log:
                parts = [p["audio"].describe() if p["type"] == "audio" else "text:" + p["text"]
                         for m in r.messages for p in m["content"]]
                with open(self.config.log, "a") as f:
                    f.write(json.dumps({"key": r.key, "parts": parts}) + "\n")
            for a in r.audio():
                assert a.load(None)[0].size > 0
            reply = self.replies[r.key.split("#rot")[0]]
            if reply.startswith("option:"):
                options = dict((v, k) for k, v in re.findall(r"^\(([A-Z])\) (.*)$", r.text(), re.M))
                reply = f"The answer is ({options[reply[len('option:'):]]})."
            out.append(Response(r.key, text=reply, latency_s=0.0))
        return out


class RepliesSingle(Replies):
    name = "replies-single"
    capabilities = frozenset({"audio", "text"})


@pytest.fixture
def adapters(monkeypatch):
    from evalkit import registry

    monkeypatch.setenv("EVALKIT_MODELS", "replies=test_new_tasks:Replies,replies-single=test_new_tasks:RepliesSingle")
    registry._table.cache_clear()
    yield
    registry._table.cache_clear()


def wav(path: Path, seed: int, n: int = 1600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(seed).standard_normal(n).astype("float32") * 0.1, 16000)


def run(tmp_path, task, task_args, replies, model="replies", **model_args):
    (tmp_path / "replies.json").write_text(json.dumps(replies))
    res = run_task(RunSpec(model=model, task=task, task_args=task_args, output=tmp_path / "runs",
                           model_args={"replies": str(tmp_path / "replies.json"), **model_args}))
    return res, {r["sample_id"]: r for r in read_records(res.run_dir / "samples.jsonl")}


# ---------------------------------------------------------------- SAKURA

SAKURA_COLUMNS = ["file", "attribute_label", "single_instruction", "single_answer", "multi_instruction",
                  "multi_answer"]
GENDER = [  # upstream metadata.csv rows (options inline in the instruction, answer "(x) text")
    ["g0.wav", "female", "Please identify the gender of the speaker. (a) Female (b) Male", "(a) Female",
     "Which term of address fits people of the same gender as this speaker? (a) Ms. (b) Mr.", "(a) Ms."],
    ["g1.wav", "male", "What is the speaker's gender in this audio? (a) Female (b) Male", "(b) Male",
     "Which label fits people of the same gender as the speaker? (a) Mother (b) Father", "(b) Father"],
    ["g2.wav", "female", "Identify the speaker's gender. (a) Female (b) Male", "(a) Female",
     "Which term fits people of the same gender as the speaker? (a) Uncle (b) Aunt", "(b) Aunt"],
]
ANIMAL = [
    ["dog0.wav", "dog", "Identify the animal in this clip. (a) cat (b) dog (c) cow (d) frog", "(b) dog",
     "What physical feature does the animal in the audio have? (a) feathers (b) fur (c) scales (d) a shell",
     "(b) fur"],
    ["cat0.wav", "cat", "Which animal makes this sound? (a) cat (b) dog (c) cow (d) frog", "(a) cat",
     "What does the animal in the audio have? (a) whiskers (b) a beak (c) gills (d) hooves", "(a) whiskers"],
    ["frog0.wav", "frog", "Which animal is this? (a) cat (b) dog (c) cow (d) frog", "(d) frog",
     "Where does the animal in the audio usually lay eggs? (a) in trees (b) in water (c) in sand (d) in nests",
     "(b) in water"],
]


def sakura_dir(tmp_path: Path) -> Path:
    root = tmp_path / "SAKURA" / "data"
    for track, rows in (("Gender", GENDER), ("Animal", ANIMAL)):
        (root / track).mkdir(parents=True)
        with open(root / track / "metadata.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(SAKURA_COLUMNS)
            w.writerows(rows)
        for i, row in enumerate(rows):
            wav(root / track / "audio" / row[0], i)
    return root


def test_sakura_loader_splits_inline_options(tmp_path):
    from evalkit.tasks.sakura import Sakura

    data = Sakura.from_args({"data": str(sakura_dir(tmp_path)), "tracks": "gender,animal"}).load()
    by_id = {s.id: s for s in data.samples}
    assert len(by_id) == 12 and not data.warnings
    s = by_id["gender/multi/g2.wav"]
    assert s.question == "Which term fits people of the same gender as the speaker?"
    assert s.choices == ["Uncle", "Aunt"] and s.answer == 1
    assert by_id["animal/multi/frog0.wav"].choices[s.answer] == "in water"
    # both hops of one clip are one bootstrap cluster (the pair)
    assert by_id["gender/single/g2.wav"].cluster() == s.cluster() == "gender/g2.wav"
    assert s.metadata == {"attribute": "gender", "hop": "multi", "cell": "gender/multi", "file": "g2.wav",
                          "attribute_label": "female"}


def test_sakura_answer_not_its_letters_option_is_skipped_with_warning(tmp_path):
    from evalkit.tasks.sakura import Sakura

    root = sakura_dir(tmp_path)
    rows = [GENDER[0][:5] + ["(a) Mr."]]  # letter (a) is "Ms."; the text says otherwise
    with open(root / "Gender" / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([SAKURA_COLUMNS] + rows)
    data = Sakura.from_args({"data": str(root), "tracks": "gender"}).load()
    assert [s.id for s in data.samples] == ["gender/single/g0.wav"]
    assert "multi_answer '(a) Mr.'" in data.warnings[0] and "row 1" in data.warnings[0]


def test_sakura_bad_input_named(tmp_path):
    from evalkit.tasks.sakura import Sakura

    with pytest.raises(TaskDataError, match="unknown track"):
        Sakura.from_args({"tracks": "gender,colour"})
    with pytest.raises(TaskDataError, match="-T data=DIR"):
        Sakura.from_args({}).load()
    root = sakura_dir(tmp_path)
    with open(root / "Gender" / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([SAKURA_COLUMNS, ["g0.wav", "female", "Gender? Female or male", "(a) Female",
                                                  "x (a) y (b) z", "(a) y"]])
    with pytest.raises(TaskDataError, match=r"row 1: column single_instruction has no"):
        Sakura.from_args({"data": str(root), "tracks": "gender"}).load()


def _gap_records(single, multi):
    recs = []
    for i, (s, m) in enumerate(zip(single, multi)):
        for hop, v in (("single", s), ("multi", m)):
            recs.append({"cluster": f"clip{i}", "metadata": {"hop": hop}, "scores": {"accuracy": float(v)}})
    return recs


def test_sakura_gap_is_paired():
    """Single and multi correct on exactly the same clips: every per-clip difference is 0, so the
    paired bootstrap gives [0, 0]; independent bootstraps of two 50% accuracies would not."""
    from evalkit.tasks.sakura import hop_gap

    g = hop_gap(_gap_records([1, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 0]))
    assert g["value"] == 0.0 and g["ci"] == [0.0, 0.0] and g["n"] == 6


def test_sakura_gap_hand_derived_interval():
    """Two clips, differences d = (+1, 0): the resampled mean is 1 with p 1/4, 1/2 with p 1/2, 0 with
    p 1/4, so the 2.5% and 97.5% percentiles are 0 and 100 points; the gap is 50."""
    from evalkit.tasks.sakura import hop_gap

    g = hop_gap(_gap_records([0, 1], [1, 1]))
    assert g["value"] == 50.0 and g["ci"] == [0.0, 100.0] and g["higher_is_better"] is True


def test_sakura_gap_only_over_clips_with_both_hops():
    from evalkit.tasks.sakura import hop_gap

    recs = _gap_records([1, 1, 0], [0, 1, 0])
    recs = [r for r in recs if not (r["cluster"] == "clip2" and r["metadata"]["hop"] == "multi")]
    assert hop_gap(recs)["value"] == -50.0 and hop_gap(recs)["n"] == 2


def test_sakura_end_to_end(tmp_path, adapters):
    root = sakura_dir(tmp_path)
    answers = {  # gender: single 3/3, multi 1/3; animal: single 2/3 (frog wrong), multi 2/3 (fur wrong)
        "gender/single/g0.wav": "Female", "gender/single/g1.wav": "Male", "gender/single/g2.wav": "Female",
        "gender/multi/g0.wav": "Ms.", "gender/multi/g1.wav": "Mother", "gender/multi/g2.wav": "Uncle",
        "animal/single/dog0.wav": "dog", "animal/single/cat0.wav": "cat", "animal/single/frog0.wav": "cow",
        "animal/multi/dog0.wav": "scales", "animal/multi/cat0.wav": "whiskers", "animal/multi/frog0.wav": "in water",
    }
    res, recs = run(tmp_path, "sakura", {"data": str(root), "tracks": "gender,animal"}, {k: "option:" + v for k, v in answers.items()})
    m, g = res.run["metrics"], res.run["groups"]
    assert res.run["status"] == "complete" and len(recs) == 12
    assert m["accuracy"]["value"] == pytest.approx(100 * 8 / 12, abs=1e-4)
    assert g["cell"]["gender/single"]["accuracy"]["value"] == 100.0
    assert g["cell"]["gender/multi"]["accuracy"]["value"] == pytest.approx(100 / 3, abs=1e-4)
    assert g["hop"]["multi"]["accuracy"]["value"] == 50.0
    # per-clip differences: gender (0, -1, -1), animal (-1, 0, +1)
    assert g["attribute"]["gender"]["gap_multi_minus_single"]["value"] == pytest.approx(-200 / 3, abs=1e-4)
    assert g["attribute"]["animal"]["gap_multi_minus_single"]["value"] == 0.0
    assert m["gap_multi_minus_single"]["value"] == pytest.approx(-100 / 3, abs=1e-4)
    assert m["gap_multi_minus_single"]["n"] == 6
    lo, hi = m["gap_multi_minus_single"]["ci"]
    assert lo <= -100 / 3 <= hi
    again = rescore(res.run_dir)
    assert again["metrics"] == m and again["groups"] == g


# ---------------------------------------------------------------- MUGEN

MUGEN_ITEMS = [
    {"id": "q1", "audios": ["clips/a.wav", "clips/b.wav"], "question": "Which clip is louder?",
     "choices": ["Audio 1", "Audio 2"], "answer": "Audio 2", "task": "loudness", "domain": "audio"},
    {"id": "q2", "audios": ["clips/c.wav", "clips/a.wav"], "question": "Which clip is speech?",
     "choices": ["Audio 1", "Audio 2"], "answer": "Audio 1", "task": "speech detection", "domain": "speech"},
    {"id": "q3", "audios": ["clips/b.wav", "clips/c.wav", "clips/d.wav"], "question": "Which clip is music?",
     "choices": ["Audio 1", "Audio 2", "Audio 3"], "answer": "Audio 3", "task": "music detection", "domain": "music"},
    {"id": "q4", "audios": ["clips/d.wav", "clips/b.wav", "clips/a.wav"], "question": "Which clip is shortest?",
     "choices": ["Audio 1", "Audio 2", "Audio 3"], "answer": "Audio 1", "task": "duration", "domain": "audio"},
]


def mugen_file(tmp_path: Path) -> Path:
    for i, name in enumerate("abcd"):
        wav(tmp_path / "clips" / f"{name}.wav", i, 800 * (i + 1))
    path = tmp_path / "mugen.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in MUGEN_ITEMS))
    return path


def test_mugen_end_to_end_by_clip_count_and_clip_order(tmp_path, adapters):
    path = mugen_file(tmp_path)
    replies = {"q1": "option:Audio 2", "q2": "option:Audio 2", "q3": "option:Audio 3", "q4": "option:Audio 1"}
    res, recs = run(tmp_path, "mugen", {"data": str(path)}, replies, log=str(tmp_path / "log.jsonl"))
    m, g = res.run["metrics"], res.run["groups"]
    assert m["accuracy"]["value"] == 75.0
    assert g["n_clips"]["2"]["accuracy"]["value"] == 50.0 and g["n_clips"]["3"]["accuracy"]["value"] == 100.0
    assert g["domain"]["audio"]["accuracy"]["value"] == 100.0
    logged = {x["key"]: x["parts"] for x in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())}
    for item in MUGEN_ITEMS:  # clips in upstream order, each introduced by its number, labelled with its identity
        parts = logged[item["id"]]
        expect = []
        for k, clip in enumerate(item["audios"], 1):
            expect += [f"text:Audio {k}:", f"{item['id']}#clip{k}:{clip}"]
        assert parts[:-1] == expect
        assert recs[item["id"]]["metadata"]["clips"] == item["audios"]
        assert recs[item["id"]]["metadata"]["n_clips"] == len(item["audios"])


def test_mugen_bad_items_named(tmp_path):
    from evalkit.tasks.mugen import Mugen

    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"id": "x", "audios": ["a.wav"], "question": "q", "choices": ["A1", "A2"],
                                 "answer": "A1"}]))
    with pytest.raises(TaskDataError, match=r"record 0 \(id 'x'\): field 'audios' must list at least two"):
        Mugen.from_args({"data": str(path)}).load()
    mugen_file(tmp_path)
    path.write_text(json.dumps([{**MUGEN_ITEMS[0], "answer": "Audio 9"}]))
    data = Mugen.from_args({"data": str(path), "audio_root": str(tmp_path)}).load()
    assert data.samples == [] and "answer 'Audio 9' is not among the choices" in data.warnings[0]


def test_mugen_refuses_single_audio_adapter_before_any_work(tmp_path, adapters):
    (tmp_path / "replies.json").write_text("{}")
    # the data file does not exist: a refusal before any work raises RunConfigError, not a data error
    with pytest.raises(RunConfigError, match="multi_audio"):
        run_task(RunSpec(model="replies-single", task="mugen", task_args={"data": str(tmp_path / "absent.json")},
                         model_args={"replies": str(tmp_path / "replies.json")}, output=tmp_path / "runs"))


def test_mugen_declares_multi_audio():
    from evalkit.tasks.mugen import Mugen

    assert "multi_audio" in Mugen.required_capabilities


# ---------------------------------------------------------------- Dynamic-SUPERB

CATALOG = {
    "SNRPrediction_Fixture": {"type": "regression", "metric": "mae", "domain": "audio"},
    "ASR_Fixture": {"type": "sequence", "metric": "wer", "domain": "speech"},
    "AudioCaptioning_Fixture": {"type": "judge", "metric": "llm_judge", "domain": "audio"},
    "Translation_Fixture": {"type": "sequence", "metric": "bleu", "domain": "speech"},
}
DS_ROWS = {
    "SpoofDetection_ASVspoof2017": [("s0.wav", "bonafide"), ("s1.wav", "spoof"), ("s2.wav", "spoof"),
                                    ("s3.wav", "bonafide")],
    "SNRPrediction_Fixture": [("n0.wav", "10"), ("n1.wav", "5"), ("n2.wav", "0")],
    "ASR_Fixture": [("a0.wav", "hello world"), ("a1.wav", "the cat sat")],
}
DS_REPLIES = {
    "SpoofDetection_ASVspoof2017/s0.wav": "bonafide",  # exact: right
    "SpoofDetection_ASVspoof2017/s1.wav": "The recording is spoof.",  # one label: right
    "SpoofDetection_ASVspoof2017/s2.wav": "It could be bonafide or spoof.",  # two labels: ambiguous, wrong
    "SpoofDetection_ASVspoof2017/s3.wav": "spoof",  # wrong
    "SNRPrediction_Fixture/n0.wav": "About 12 dB.",  # |12 - 10| = 2
    "SNRPrediction_Fixture/n1.wav": "The SNR is 5.5",  # 0.5
    "SNRPrediction_Fixture/n2.wav": "between 1 and 3",  # two numbers: ambiguous, not in the MAE
    "ASR_Fixture/a0.wav": "hello word",  # 1 substitution / 2 words
    "ASR_Fixture/a1.wav": "the cat sat down",  # 1 insertion / 3 words
}


def ds_dir(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "dsb"
    for task, rows in DS_ROWS.items():
        (root / task).mkdir(parents=True)
        with open(root / task / "metadata.jsonl", "w") as f:
            for i, (file, label) in enumerate(rows):
                wav(root / task / file, i)
                f.write(json.dumps({"file": file, "instruction": f"Instruction for {task}.", "label": label}) + "\n")
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG))
    return root, tmp_path / "catalog.json"


def test_dynamic_superb_end_to_end(tmp_path, adapters):
    root, catalog = ds_dir(tmp_path)
    res, recs = run(tmp_path, "dynamic-superb", {"data": str(root), "catalog": str(catalog),
                                                 "tasks": ",".join(DS_ROWS)}, DS_REPLIES)
    m, g = res.run["metrics"], res.run["groups"]
    assert res.run["status"] == "complete" and len(recs) == 9
    assert m["accuracy"]["value"] == 50.0 and m["accuracy"]["n"] == 4
    assert m["mae"]["value"] == 1.25 and m["mae"]["n"] == 2 and m["mae"]["higher_is_better"] is False
    assert m["extraction_failure"]["value"] == pytest.approx(100 * 2 / 7, abs=1e-4)  # s2 and n2
    assert m["wer"]["value"] == 40.0 and m["wer"]["n"] == 2 and m["wer"]["higher_is_better"] is False
    assert g["task"]["ASR_Fixture"]["wer"]["value"] == 40.0
    assert g["task"]["SpoofDetection_ASVspoof2017"]["accuracy"]["value"] == 50.0
    assert g["domain"]["audio"]["mae"]["value"] == 1.25
    assert g["domain"]["speech"]["accuracy"]["value"] == 50.0 and g["domain"]["speech"]["wer"]["value"] == 40.0
    assert recs["SpoofDetection_ASVspoof2017/s2.wav"]["extraction_stage"] == "ambiguous"
    assert recs["SNRPrediction_Fixture/n1.wav"]["extracted"] == 5.5
    # `evalkit score RUN_DIR` re-scores from the records alone: the same figures
    again = rescore(res.run_dir)
    assert again["metrics"] == m and again["groups"] == g


def test_dynamic_superb_refusals_before_loading(tmp_path):
    from evalkit.tasks.dynamic_superb import DynamicSuperb

    _, catalog = ds_dir(tmp_path)
    with pytest.raises(TaskDataError, match="AudioCaptioning_Fixture.*LLM judge"):
        DynamicSuperb.from_args({"tasks": "AudioCaptioning_Fixture", "catalog": str(catalog)})
    with pytest.raises(TaskDataError, match="metric 'bleu' for type 'sequence' is not implemented"):
        DynamicSuperb.from_args({"tasks": "Translation_Fixture", "catalog": str(catalog)})
    with pytest.raises(TaskDataError, match="no catalog entry for NoSuchTask_X"):
        DynamicSuperb.from_args({"tasks": "NoSuchTask_X"})
    with pytest.raises(TaskDataError, match="exactly one of"):
        DynamicSuperb.from_args({"tasks": "SpoofDetection_ASVspoof2017", "family": "SpoofDetection"})


def test_dynamic_superb_family_selects_catalog_tasks(tmp_path):
    from evalkit.tasks.dynamic_superb import DynamicSuperb

    t = DynamicSuperb.from_args({"family": "SpoofDetection"})
    assert list(t.entries) == ["SpoofDetection_ASVspoof2017"]
    with pytest.raises(TaskDataError, match="no catalog task is named 'Nope_...'"):
        DynamicSuperb.from_args({"family": "Nope"})


def test_label_matching_never_guesses():
    from evalkit.tasks.dynamic_superb import match_label

    labels = ["no", "no speech", "yes"]
    assert match_label("No speech.", labels) == ("no speech", "label_exact")
    assert match_label("There is no speech here", labels) == ("no speech", "label_mention")  # "no" inside it
    assert match_label("Yes, and also no", labels) == (None, "ambiguous")
    assert match_label("B", labels) == (None, "none")  # no letters: the options were never lettered
    assert match_label("nothing", labels) == (None, "none")  # "no" is not a prefix match
    assert match_label("  ", labels) == (None, "empty")


def test_number_parsing():
    from evalkit.tasks.dynamic_superb import parse_number

    assert parse_number("About 1,200 Hz") == (1200.0, "number")
    assert parse_number("-3.5 dB, so -3.5") == (-3.5, "number")
    assert parse_number("3, 4") == (None, "ambiguous")
    assert parse_number("an mp3 file") == (None, "none")


def test_transcript_error_parts_by_hand():
    from evalkit.tasks.loaders import transcript_error_parts

    assert transcript_error_parts("Hello, World!", "hello word") == (1, 2)
    assert transcript_error_parts("abc", "abd", unit="char") == (1, 3)
    assert transcript_error_parts("the cat", "") == (2, 2)
    assert transcript_error_parts("", "x") is None


def test_sakura_reads_metadata_json_when_no_csv(tmp_path):
    """The upstream metadata.json form: an object keyed by "data/<Track>/audio/<file>"."""
    from evalkit.tasks.sakura import Sakura

    root = sakura_dir(tmp_path)
    (root / "Gender" / "metadata.csv").unlink()
    entries = {f"data/Gender/audio/{r[0]}": dict(zip(SAKURA_COLUMNS[1:], r[1:])) for r in GENDER}
    (root / "Gender" / "metadata.json").write_text(json.dumps(entries, indent=4))
    data = Sakura.from_args({"data": str(root), "tracks": "gender"}).load()
    by_id = {s.id: s for s in data.samples}
    assert len(by_id) == 6 and by_id["gender/multi/g1.wav"].choices == ["Mother", "Father"]
    assert by_id["gender/multi/g1.wav"].answer == 1
    assert by_id["gender/single/g1.wav"].audio[0].path == (root / "Gender" / "audio" / "g1.wav").resolve()


def test_dynamic_superb_hub_rows(tmp_path, monkeypatch):
    """Hub rows (columns file, audio, audio2, instruction, label; audio undecoded bytes): both clips
    in order, the repo DynamicSuperb/<task> at the requested revision, its resolved sha recorded."""
    import io

    import evalkit.hub as hub
    from evalkit.tasks.dynamic_superb import DynamicSuperb

    def flac(seed):
        buf = io.BytesIO()
        sf.write(buf, np.random.default_rng(seed).standard_normal(400).astype("float32") * 0.1, 16000, format="WAV")
        return {"bytes": buf.getvalue(), "path": f"clip{seed}.wav"}

    asked = []

    def rows(repo, revision, split, config=None):
        asked.append((repo, revision, split))
        return [{"file": "u1.wav", "audio": flac(1), "audio2": flac(2), "instruction": "Same speaker? yes or no.",
                 "label": "yes"},
                {"file": "u2.wav", "audio": flac(3), "audio2": flac(4), "instruction": "Same speaker? yes or no.",
                 "label": "no"}]

    monkeypatch.setattr(hub, "load_hub_rows", rows)
    monkeypatch.setattr(hub, "resolve_revision", lambda repo, revision: "f" * 40)
    data = DynamicSuperb.from_args({"tasks": "SuperbSV_SuperbHiddenSet", "revision": "abc123"}).load()
    assert asked == [("DynamicSuperb/SuperbSV_SuperbHiddenSet", "abc123", "test")]
    assert data.source["tasks"]["SuperbSV_SuperbHiddenSet"]["resolved_revision"] == "f" * 40
    s = data.samples[0]
    assert s.id == "SuperbSV_SuperbHiddenSet/u1.wav" and len(s.audio) == 2
    assert s.audio[0].data == rows("", "", "")[0]["audio"]["bytes"]
    assert s.audio[1].data == rows("", "", "")[0]["audio2"]["bytes"]
    assert s.target == {"type": "classification", "metric": "accuracy", "label": "yes", "labels": ["no", "yes"]}
    assert s.metadata["domain"] == "speech"


def test_sakura_upstream_prompt_reproduces_the_instruction(tmp_path):
    from evalkit.protocol.choices import present
    from evalkit.tasks.sakura import Sakura

    task = Sakura.from_args({"data": str(sakura_dir(tmp_path)), "tracks": "gender,animal", "prompt": "upstream"})
    rows = {f"{attr}/{hop}/{r[0]}": r[SAKURA_COLUMNS.index(f"{hop}_instruction")]
            for attr, table in (("gender", GENDER), ("animal", ANIMAL)) for r in table for hop in ("single", "multi")}
    for p in present(task.load().samples, "original", 0):
        assert task.render_prompt(p) == rows[p.sample.id]


def test_dynamic_superb_two_clip_tasks_need_multi_audio(tmp_path):
    from evalkit.tasks.dynamic_superb import DynamicSuperb

    assert "multi_audio" in DynamicSuperb.from_args({"tasks": "SuperbSV_SuperbHiddenSet"}).required_capabilities
    assert "multi_audio" not in DynamicSuperb.from_args({"tasks": "SpoofDetection_ASVspoof2017"}).required_capabilities
    root, _ = ds_dir(tmp_path)
    (root / "SpoofDetection_ASVspoof2017" / "metadata.jsonl").write_text(json.dumps(
        {"file": "s0.wav", "audio2": "s1.wav", "instruction": "i", "label": "spoof"}) + "\n")
    with pytest.raises(TaskDataError, match=r"record 0 \(file 's0.wav'\): the catalog says 1 clip\(s\)"):
        DynamicSuperb.from_args({"tasks": "SpoofDetection_ASVspoof2017", "data": str(root)}).load()
