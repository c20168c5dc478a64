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
# The release's row form (github.com/danielqwer/MUGEN data/README.md): instruction, answer "(X)",
# audio1..audio5 candidates (option (A) = audio1), reference_audio on the reference tasks, optional id,
# task-specific columns; splits test / test_2 / test_3 / test_4. Here: a reference task and a plain one.

LOUD = 0.5  # the loud candidate's amplitude; the others 0.05, the reference 0.9 (louder than all)


def mugen_dir(tmp_path: Path) -> Path:
    """DIR/<Task>/<split>.jsonl; in every row the gold candidate is the loudest clip."""
    root = tmp_path / "mugen"
    rng = np.random.default_rng(5)

    def clip(folder: Path, name: str, amp: float) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / name, (rng.standard_normal(800) * amp).astype("float32"), 16000)
        return name

    rows = {("Speaker_Verification", "test_3"): [(2, True), (0, True)],  # (gold candidate, has id)
            ("Key_Detection", "test_2"): [(1, True), (0, False)],
            ("Key_Detection", "test"): [(4, True)]}
    for task in ("Speaker_Verification", "Key_Detection"):  # every split's file, empty where no rows
        for split in ("test", "test_2", "test_3", "test_4"):
            (root / task).mkdir(parents=True, exist_ok=True)
            (root / task / f"{split}.jsonl").write_text("")
    for (task, split), items in rows.items():
        n = {"test": 5, "test_2": 2, "test_3": 3}[split]
        lines = []
        for r, (gold, has_id) in enumerate(items):
            rec: dict = {"instruction": f"{task}: which candidate? ({split} row {r})", "answer": f"({'ABCDE'[gold]})"}
            if has_id:
                rec["id"] = 10 + r
            for k in range(1, 6):
                rec[f"audio{k}"] = clip(root / task, f"{split}_{r}_{k}.wav", LOUD if k - 1 == gold else 0.05) \
                    if k <= n else None
            if task == "Speaker_Verification":
                rec["reference_audio"] = clip(root / task, f"{split}_{r}_ref.wav", 0.9)
            rec["audio1_key"] = "C major"  # a task-specific column, kept in metadata["upstream"]
            lines.append(json.dumps(rec))
        (root / task / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


class LoudestConfig(AdapterConfig):
    mode: str = "loudest"  # loudest | first
    log: str | None = None


class Loudest(Model):
    """Names the loudest candidate by its position ("Audio k"), reading the clips as the prompt
    introduces them; "first" always answers "Audio 1". Logs each request's parts."""

    name = "loudest"
    capabilities = frozenset({"audio", "text", "multi_audio"})
    Config = LoudestConfig
    sample_rate = None

    def generate(self, requests: list[Request]) -> list[Response]:
        out = []
        for r in requests:
            parts = [p for m in r.messages for p in m["content"]]
            cands, intros = [], []
            for prev, p in zip(parts, parts[1:]):
                if p["type"] == "audio":
                    intros.append(prev["text"])
                    if prev["text"].startswith("Audio "):
                        x = p["audio"].load(None)[0]
                        cands.append(float(np.sqrt(np.mean(x ** 2))))
            if self.config.log:
                with open(self.config.log, "a") as f:
                    f.write(json.dumps({"key": r.key, "intros": intros, "labels": [
                        p["audio"].label for p in parts if p["type"] == "audio"], "text": parts[-1]["text"]}) + "\n")
            k = 1 if self.config.mode == "first" else int(np.argmax(cands)) + 1
            out.append(Response(r.key, text=f"I think it is Audio {k}.", latency_s=0.0))
        return out


@pytest.fixture
def loudest(monkeypatch):
    from evalkit import registry

    monkeypatch.setenv("EVALKIT_MODELS", "loudest=test_new_tasks:Loudest,replies-single=test_new_tasks:RepliesSingle")
    registry._table.cache_clear()
    yield
    registry._table.cache_clear()


def mugen_run(tmp_path, root, name, strategy=None, **margs):
    res = run_task(RunSpec(model="loudest", task="mugen", output=tmp_path / name, model_args=margs,
                           task_args={"data": str(root), "tasks": "Speaker_Verification,Key_Detection",
                                      "split": "all"}, strategy=strategy))
    return res, {r["sample_id"]: r for r in read_records(res.run_dir / "samples.jsonl")}


def test_mugen_loads_the_release_row_form(tmp_path):
    from evalkit.tasks.mugen import Mugen

    root = mugen_dir(tmp_path)
    data = Mugen.from_args({"data": str(root), "tasks": "Speaker_Verification,Key_Detection", "split": "all"}).load()
    by_id = {s.id: s for s in data.samples}
    sv = by_id["Speaker_Verification/test_3/10"]
    assert sv.choices == ["Audio 1", "Audio 2", "Audio 3"] and sv.answer == 2  # "(C)"
    assert [a.label.split(":")[0] for a in sv.audio] == [
        "Speaker_Verification/test_3/10#reference", *(f"Speaker_Verification/test_3/10#audio{k}" for k in (1, 2, 3))]
    assert sv.metadata["option_clips"] == [1, 2, 3] and sv.metadata["reference"] is True
    assert sv.metadata["dimension"] == "Speaker & Demographics" and sv.metadata["n_clips"] == 3
    assert sv.metadata["upstream"] == {"id": 10, "audio1_key": "C major"}
    kd = by_id["Key_Detection/test_2/1"]  # no id column: the row index
    assert kd.metadata["option_clips"] == [0, 1] and kd.metadata["reference"] is False and kd.answer == 0
    assert by_id["Key_Detection/test/10"].metadata["n_clips"] == 5


def test_mugen_missing_split_and_bad_rows_named(tmp_path):
    from evalkit.tasks.mugen import Mugen

    root = mugen_dir(tmp_path)
    (root / "Speaker_Verification" / "test.jsonl").unlink()
    with pytest.raises(TaskDataError, match=r"no test\.jsonl or test\.json in .*Speaker_Verification"):
        Mugen.from_args({"data": str(root), "tasks": "Speaker_Verification"}).load()
    with pytest.raises(TaskDataError, match="unknown task.*No_Such_Task"):
        Mugen.from_args({"tasks": "Key_Detection,No_Such_Task"})
    with pytest.raises(TaskDataError, match="split=dev"):
        Mugen.from_args({"split": "dev"})
    path = root / "Key_Detection" / "test_2.jsonl"
    good = json.loads(path.read_text().splitlines()[0])
    for bad, message in (({**good, "audio1": None}, r"record 0 \(id '10'\): the candidates must be audio1..audioN"),
                         ({**good, "answer": "B"}, None),  # a bare letter is read too
                         ({**good, "answer": "Audio 2"}, "must be an option letter like")):
        path.write_text(json.dumps(bad) + "\n")
        task = Mugen.from_args({"data": str(root), "tasks": "Key_Detection", "split": "test_2"})
        if message is None:
            assert task.load().samples[0].answer == 1
        else:
            with pytest.raises(TaskDataError, match=message):
                task.load()
    path.write_text(json.dumps({**good, "answer": "(D)"}) + "\n")  # two candidates: (D) names none
    data = Mugen.from_args({"data": str(root), "tasks": "Key_Detection", "split": "test_2"}).load()
    assert data.samples == [] and "answer '(D)' names no candidate (the row has 2)" in data.warnings[0]


def test_mugen_end_to_end_clip_order_and_groups(tmp_path, loudest):
    root = mugen_dir(tmp_path)
    log = tmp_path / "log.jsonl"
    res, recs = mugen_run(tmp_path, root, "plain", mode="first", log=str(log))
    # "Audio 1" always: right on the two rows whose gold is (A) (SV row 1, KD test_2 row 1) of five
    m, g = res.run["metrics"], res.run["groups"]
    assert len(recs) == 5 and m["accuracy"]["value"] == 40.0
    assert g["n_clips"]["2"]["accuracy"]["value"] == 50.0 and g["n_clips"]["5"]["accuracy"]["value"] == 0.0
    assert g["dimension"]["Speaker & Demographics"]["accuracy"]["value"] == 50.0
    assert g["reference"]["True"]["accuracy"]["value"] == 50.0
    assert recs["Key_Detection/test_2/1"]["extraction_stage"] not in ("none", "ambiguous")
    logged = {x["key"]: x for x in map(json.loads, log.read_text().splitlines())}
    sv = logged["Speaker_Verification/test_3/10"]
    assert sv["intros"] == ["Reference audio:", "Audio 1:", "Audio 2:", "Audio 3:"]
    assert [x.split(":")[0].rsplit("#", 1)[1] for x in sv["labels"]] == ["reference", "audio1", "audio2", "audio3"]
    # the instruction, then the options; --choices balanced (the default) relabels them, "Audio k" stays the position
    assert sv["text"].startswith("Speaker_Verification: which candidate? (test_3 row 0)\n\nOptions:\n")
    assert sorted(re.findall(r"^\([A-C]\) (Audio \d)$", sv["text"], re.M)) == ["Audio 1", "Audio 2", "Audio 3"]


def test_mugen_audio_permutation_end_to_end(tmp_path, loudest):
    """APSC: the candidates in every order (2! and 3!; 5! capped at 24), the reference fixed first,
    each "Audio k" answer mapped back to its clip."""
    root = mugen_dir(tmp_path)
    res, recs = mugen_run(tmp_path, root, "apsc", strategy="audio-permutation")
    assert len(recs) == 5 and res.run["metrics"]["accuracy"]["value"] == 100.0
    for r in recs.values():
        calls = r["strategy"]["calls"]
        n = r["metadata"]["n_clips"]
        assert len(calls) == {2: 2, 3: 6, 5: 24}[n] and r["strategy"]["aggregate"]["agreement"] == 1.0
        orders = [c["audio_order"] for c in calls]
        assert len({tuple(o) for o in orders}) == len(orders) and orders[0] == sorted(orders[0])
        if r["metadata"]["reference"]:  # the reference (clip 0) never moves
            assert all(o[0] == 0 and sorted(o[1:]) == [1, 2, 3] for o in orders)
    # always "Audio 1": under the 3! orders of a 3-candidate item each candidate is first twice -> a tie
    biased, brecs = mugen_run(tmp_path, root, "biased", strategy="audio-permutation", mode="first")
    assert brecs["Speaker_Verification/test_3/10"]["strategy"]["aggregate"]["outcome"] == "tie"


def test_option_clips_may_leave_a_reference_out_but_never_repeat_a_clip():
    from evalkit.engine.strategies import StrategyError, _clip_orders, _option_clips
    from evalkit.types import AudioRef, Sample

    def sample(oc):
        return Sample(id="x", question="q", audio=[AudioRef(data=b"")] * 4, choices=["a", "b", "c"], answer=0,
                      metadata={"option_clips": oc})

    assert _option_clips(sample([1, 2, 3])) == [1, 2, 3]
    for bad in ([1, 1, 2], [1, 2, 4], [0, 1], None):
        with pytest.raises(StrategyError, match="option_clips"):
            _option_clips(sample(bad))
    # by hand: positions 1..3 in all 3! orders, position 0 fixed, identity first
    assert _clip_orders(4, [3, 1, 2]) == [[0, 1, 2, 3], [0, 1, 3, 2], [0, 2, 1, 3], [0, 2, 3, 1], [0, 3, 1, 2],
                                          [0, 3, 2, 1]]


def test_mugen_hub_rows(tmp_path, monkeypatch):
    """Hub rows (audio undecoded bytes): repo MUGEN-Benchmark/<Task>, the split asked, the revision
    requested, the resolved sha recorded; the reference clip first."""
    import io

    import evalkit.hub as hub
    from evalkit.tasks.mugen import Mugen

    def wav_bytes(seed):
        buf = io.BytesIO()
        sf.write(buf, np.random.default_rng(seed).standard_normal(400).astype("float32") * 0.1, 16000, format="WAV")
        return {"bytes": buf.getvalue(), "path": None}

    asked = []

    def rows(repo, revision, split, config=None):
        asked.append((repo, revision, split))
        return [{"id": 0, "instruction": "Which candidate has the reference's accent?", "answer": "(B)",
                 "reference_audio": wav_bytes(9), **{f"audio{k}": wav_bytes(k) for k in range(1, 6)},
                 "meta_ref_class": "us"}]

    monkeypatch.setattr(hub, "load_hub_rows", rows)
    monkeypatch.setattr(hub, "resolve_revision", lambda repo, revision: "e" * 40)
    data = Mugen.from_args({"tasks": "Accent_Identification", "revision": "abc123"}).load()
    assert asked == [("MUGEN-Benchmark/Accent_Identification", "abc123", "test")]
    assert data.source["tasks"]["Accent_Identification/test"]["resolved_revision"] == "e" * 40
    s = data.samples[0]
    assert s.id == "Accent_Identification/test/0" and len(s.audio) == 6 and s.answer == 1
    assert s.audio[0].data == wav_bytes(9)["bytes"] and s.audio[5].data == wav_bytes(5)["bytes"]
    assert s.metadata["option_clips"] == [1, 2, 3, 4, 5] and s.metadata["upstream"]["meta_ref_class"] == "us"


def test_mugen_refuses_single_audio_adapter_before_any_work(tmp_path, adapters):
    (tmp_path / "replies.json").write_text("{}")
    # the data folder does not exist: a refusal before any work raises RunConfigError, not a data error
    with pytest.raises(RunConfigError, match="multi_audio"):
        run_task(RunSpec(model="replies-single", task="mugen", task_args={"data": str(tmp_path / "absent")},
                         model_args={"replies": str(tmp_path / "replies.json")}, output=tmp_path / "runs"))


def test_mugen_declares_multi_audio_and_knows_the_35_tasks():
    from evalkit.tasks.mugen import REFERENCE_TASKS, TASKS, Mugen

    assert "multi_audio" in Mugen.required_capabilities
    assert len(TASKS) == 35 and len(REFERENCE_TASKS) == 10 and set(TASKS) >= REFERENCE_TASKS
    assert len(set(TASKS.values())) == 7


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
    assert list(t.entries) == ["SpoofDetection_ASVspoof2015", "SpoofDetection_ASVspoof2017"]
    # a family keeps only what evalkit scores; one with nothing scorable says so
    assert "HEARSpeakerCountIdentification_LibriCount-Fold1" not in DynamicSuperb.from_args(
        {"family": "HEARMusicSpeechClassification"}).entries
    with pytest.raises(TaskDataError, match="scores none of SuperbASR_LibriSpeech-TestClean.*generation"):
        DynamicSuperb.from_args({"family": "SuperbASR"})
    with pytest.raises(TaskDataError, match="no catalog task is named 'Nope_...'"):
        DynamicSuperb.from_args({"family": "Nope"})


def test_dynamic_superb_catalog_from_the_task_list():
    """Rows of DynamicSUPERB_ConfirmedTasks.csv (figisiwirf/dynamic-superb-utils@e05554c), read by hand:
    L2EnglishFluency_speechocean762-Scoring,...,54afc916...,Regression,,TRUE,FALSE,FALSE
    EnvironmentRecognition_ESC50,...,1c84a965...,Classification,,FALSE,FALSE,TRUE
    SuperbASR_LibriSpeech-TestClean,...,1832d234...,Text generation,,FALSE,FALSE,FALSE
    SoundPositionPrediction_binaural-sound-perception,DynamicSuperb/SoundPositionPrediction_Dataset,e48346d2...(64 hex)"""
    from evalkit.tasks.dynamic_superb import DynamicSuperb, generated_catalog

    cat = generated_catalog()
    assert len(cat) == 259 and sum("revision" in e for e in cat.values()) == 176
    t = DynamicSuperb.from_args({"tasks": "L2EnglishFluency_speechocean762-Scoring,EnvironmentRecognition_ESC50"})
    assert t.entries["L2EnglishFluency_speechocean762-Scoring"] == {
        "type": "regression", "metric": "mae", "domain": "speech", "clips": 1,
        "revision": "54afc9166f8c0bf128bfadce7d1d1e87d9c506ce"}
    assert t.entries["EnvironmentRecognition_ESC50"]["domain"] == "audio"
    assert t.entries["EnvironmentRecognition_ESC50"]["revision"] == "1c84a965845f0322d6958a706f5facc9949f7af9"
    with pytest.raises(TaskDataError, match="SuperbASR_LibriSpeech-TestClean.*text-generation task.*sequence"):
        DynamicSuperb.from_args({"tasks": "SuperbASR_LibriSpeech-TestClean"})
    with pytest.raises(TaskDataError, match="audio output"):
        DynamicSuperb.from_args({"tasks": "SuperbSE_VoiceBankDEMAND-Test"})
    assert DynamicSuperb.from_args({"tasks": "SoundPositionPrediction_Dataset"}).entries[
        "SoundPositionPrediction_Dataset"]["revision"] is None  # a 64-hex "Version" is no commit: not pinned
    # the Phase-1 tasks: in the list (Classification, no version, no flag); the domain is evalkit's
    assert DynamicSuperb.from_args({"tasks": "SpoofDetection_ASVspoof2017"}).entries[
        "SpoofDetection_ASVspoof2017"] == {"type": "classification", "metric": "accuracy", "domain": "speech",
                                           "clips": 1, "revision": None}


def test_dynamic_superb_loads_the_pinned_revision(monkeypatch):
    import evalkit.hub as hub
    from evalkit.tasks.dynamic_superb import DynamicSuperb

    asked = []
    monkeypatch.setattr(hub, "load_hub_rows", lambda repo, revision, split, config=None: asked.append(
        (repo, revision, split)) or [])
    monkeypatch.setattr(hub, "resolve_revision", lambda repo, revision: revision)
    DynamicSuperb.from_args({"tasks": "EnvironmentRecognition_ESC50,SpoofDetection_ASVspoof2017"}).load()
    assert asked == [("DynamicSuperb/EnvironmentRecognition_ESC50", "1c84a965845f0322d6958a706f5facc9949f7af9", "test"),
                     ("DynamicSuperb/SpoofDetection_ASVspoof2017", "main", "test")]


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
