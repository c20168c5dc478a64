"""Task loaders (real upstream metadata + synthetic fixtures), scoring and aggregation."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from evalkit.protocol.choices import LETTERS, present
from evalkit.tasks.base import TaskDataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def wav_bytes(seconds: float = 0.1, sr: int = 16000, freq: float = 440.0) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def make_records(task, samples, output_fn, mode="balanced", seed=0):
    """Records shaped like docs/records.md, scored by the task (no model)."""
    recs = []
    for p in present(samples, mode, seed):
        task.render_prompt(p)
        choices, gold = p.choices, p.gold
        r = {"key": p.key, "sample_id": p.sample.id, "rotation": p.rotation,
             "prompt": [{"role": "user", "content": [{"type": "text", "text": task.render_prompt(p)}]}],
             "choices": choices, "permutation": p.permutation, "gold": gold,
             "answer": choices[gold] if gold is not None else None, "target": p.sample.target,
             "metadata": p.sample.metadata, "cluster": p.sample.cluster(),
             "output": None, "error": None, "latency_s": 0.0, "extra": {}}
        out = output_fn(r)
        if isinstance(out, Exception):
            r["error"] = str(out)
        else:
            r["output"] = out
        r.update(task.score(r))
        recs.append(r)
    return recs


def gold_letter(r):
    return LETTERS[r["gold"]]


# ================================================================ MMAU

MMAU_JSON = SHARED / "mmau" / "mmau-test-mini.json"


@pytest.fixture(scope="module")
def mmau_loaded():
    from evalkit.tasks.mmau import MMAU

    task = MMAU.from_args({"data": str(need(MMAU_JSON))})
    return task, task.load()


def test_mmau_test_mini_real(mmau_loaded):
    task, data = mmau_loaded
    stats = json.loads((SHARED / "mmau" / "mmau-test-mini.stats.json").read_text())
    raw = json.loads(MMAU_JSON.read_text())
    s = data.samples
    assert len(s) == 1000 and not data.warnings
    assert data.data_hash.startswith("sha256:") and data.source["kind"] == "local"
    # categories normalized (13 list-valued upstream)
    assert sum(isinstance(r["category"], list) for r in raw) == 13
    assert all(isinstance(x.metadata["category"], str) for x in s)
    assert Counter(x.metadata["category"] for x in s) == stats["category_counts_normalized"]
    assert Counter(x.metadata["axis"] for x in s) == {"perception": 323, "reasoning": 677}
    # choice counts and gold positions match the stats file
    assert Counter(str(len(x.choices)) for x in s) == stats["n_choices_counts"]
    assert Counter(LETTERS[x.answer] for x in s) == stats["answer_position_counts"]
    assert Counter(x.metadata["task"] for x in s) == stats["task_counts"]
    # 27 items with duplicate choice strings: gold is the first index of the answer text
    by_id = {r["id"]: r for r in raw}
    dup = [x for x in s if len(set(x.choices)) != len(x.choices)]
    assert len(dup) == stats["items_with_duplicate_choice_strings"] == 27
    for x in dup:
        assert x.choices[x.answer] == by_id[x.id]["answer"]
        assert x.answer == by_id[x.id]["choices"].index(by_id[x.id]["answer"])
    # audio resolves under the JSON's folder (files are not checked at load time)
    assert s[0].audio[0].path == (MMAU_JSON.parent / "test-mini-audios" / f"{s[0].id}.wav").resolve()
    assert set(task.groupings) == {"task", "difficulty", "category", "sub-category", "axis"}


def test_mmau_score_aggregate_export(mmau_loaded, tmp_path):
    task, data = mmau_loaded
    recs = make_records(task, data.samples, gold_letter)  # balanced order, bare letters
    agg = task.aggregate(recs)
    # a bare letter that is also the text of another option ("C" among C, Gm, Cm7b5) is ambiguous
    clash = [r for r in recs if any(c == r["extracted"] or c == "ABCDEFGH"[r["gold"]] for c in r["choices"])]
    failed = [r for r in recs if r["scores"]["accuracy"] == 0]
    assert failed and all(r["extraction_stage"] == "ambiguous" for r in failed)
    assert {r["key"] for r in failed} <= {r["key"] for r in clash}
    assert agg["metrics"]["accuracy"]["value"] == 100.0 * (1 - len(failed) / 1000)
    assert agg["metrics"]["extraction_failure"]["value"] == 100.0 * len(failed) / 1000
    assert agg["metrics"]["accuracy_official"]["value"] < 5  # token-set rule ignores letters
    assert set(agg["groups"]["axis"]) == {"perception", "reasoning"}
    assert agg["groups"]["axis"]["perception"]["accuracy"]["n"] == 323
    names = task.export(recs, tmp_path)
    assert names == ["mmau-test-mini-submission.json"]
    items = json.loads((tmp_path / names[0]).read_text())
    raw = {r["id"]: r for r in json.loads(MMAU_JSON.read_text())}
    assert len(items) == 1000
    for it in items[:50]:
        assert it["choices"] == raw[it["id"]]["choices"]  # upstream order, not the balanced one
        assert it["model_output"] in LETTERS
    # without the loaded data (new process), the item is rebuilt from the record
    from evalkit.tasks.mmau import MMAU

    fresh = MMAU.from_args({"data": str(MMAU_JSON)})
    fresh.export(recs[:3], tmp_path / "fresh")
    items = json.loads((tmp_path / "fresh" / names[0]).read_text())
    for it in items:
        assert it["choices"] == raw[it["id"]]["choices"] and it["answer"] == raw[it["id"]]["answer"]
        assert it["audio_id"] == raw[it["id"]]["audio_id"]


def _mmau_items():
    return [
        {"id": "q1", "audio_id": "./test-mini-audios/q1.wav", "question": "Who speaks?",
         "choices": ["Man", "Woman", "Child", "Robot"], "answer": "Woman", "dataset": "x", "task": "sound",
         "split": "test-mini", "category": ["Reasoning"], "sub-category": "s", "difficulty": "easy"},
        {"id": "q2", "audio_id": "./test-mini-audios/q2.wav", "question": "Which?",
         "choices": ["one", "two"], "answer": "three", "task": "music", "category": "Information Extraction",
         "sub-category": "t", "difficulty": "hard"},
    ]


def test_mmau_synthetic_warning_and_paths(tmp_path):
    from evalkit.tasks.mmau import MMAU

    f = tmp_path / "mmau.json"
    f.write_text(json.dumps(_mmau_items()))
    data = MMAU.from_args({"data": str(f), "audio_root": str(tmp_path / "audio")}).load()
    assert [s.id for s in data.samples] == ["q1"]
    assert data.samples[0].metadata["category"] == "Reasoning" and data.samples[0].metadata["axis"] == "reasoning"
    assert data.samples[0].audio[0].path == (tmp_path / "audio" / "test-mini-audios" / "q1.wav").resolve()
    assert len(data.warnings) == 1 and "q2" in data.warnings[0] and "three" in data.warnings[0]


@pytest.mark.parametrize("bad,needle", [
    ({"audio_id": "../../etc/passwd"}, "escapes"),
    ({"audio_id": "/etc/passwd"}, "absolute"),
    ({"question": None}, "question"),
    ({"choices": "Man"}, "choices"),
    ({"answer": None}, "answer"),
])
def test_mmau_bad_records(tmp_path, bad, needle):
    from evalkit.tasks.mmau import MMAU

    items = _mmau_items()
    items[0].update(bad)
    f = tmp_path / "mmau.json"
    f.write_text(json.dumps(items))
    with pytest.raises(TaskDataError) as e:
        MMAU.from_args({"data": str(f)}).load()
    msg = str(e.value)
    assert str(f) in msg and "record 0" in msg and "q1" in msg and needle in msg


def test_mmau_missing_and_malformed_file(tmp_path):
    from evalkit.tasks.mmau import MMAU

    with pytest.raises(TaskDataError, match="not found"):
        MMAU.from_args({"data": str(tmp_path / "nope.json")}).load()
    f = tmp_path / "broken.json"
    f.write_text('[{"id": "q1", ')
    with pytest.raises(TaskDataError, match=r"broken\.json.*malformed JSON"):
        MMAU.from_args({"data": str(f)}).load()


def test_mmau_test_split_without_answers(tmp_path):
    from evalkit.tasks.mmau import MMAU

    items = _mmau_items()
    for it in items:
        it.pop("answer")
        it["split"] = "test"
    f = tmp_path / "mmau-test.json"
    f.write_text(json.dumps(items))
    task = MMAU.from_args({"data": str(f), "split": "test"})
    data = task.load()
    assert [s.answer for s in data.samples] == [None, None] and not data.warnings
    recs = make_records(task, data.samples, lambda r: "B")
    assert all(r["permutation"] is None for r in recs)  # upstream order
    assert recs[0]["extracted"] == "B" and recs[0]["scores"]["accuracy"] is None
    agg = task.aggregate(recs)
    assert agg["metrics"]["accuracy"]["n"] == 0
    names = task.export(recs, tmp_path / "run")
    assert names == ["mmau-test-submission.json"]
    out = json.loads((tmp_path / "run" / names[0]).read_text())
    assert [(o["id"], o["model_output"]) for o in out] == [("q1", "B"), ("q2", "B")]
    assert "answer" not in out[0] and out[0]["question"] == "Who speaks?"


def test_mmau_hub_rows_normalized(monkeypatch):
    """Hub rows (gamma-lab-umd/MMAU-test-mini schema) without a network: load_hub_rows is faked."""
    import evalkit.hub as hub
    from evalkit.tasks.mmau import HUB_REVISIONS, MMAU

    rows = [{"context": {"bytes": wav_bytes(), "path": None}, "instruction": "Who speaks?",
             "choices": ["(A) Man", "(B) Woman"], "answer": "(B) Woman",
             "other_attributes": json.dumps({"id": "h1", "task": "speech", "category": ["Reasoning"],
                                             "sub-category": "s", "difficulty": "easy", "dataset": "d"})}]
    calls = []
    monkeypatch.setattr(hub, "load_hub_rows", lambda repo, rev, split, config=None: calls.append((repo, rev, split))
                        or rows)
    monkeypatch.setattr(hub, "resolve_revision", lambda repo, rev: None)
    data = MMAU().load()
    assert calls == [("gamma-lab-umd/MMAU-test-mini", HUB_REVISIONS["test-mini"], "test")]
    (s,) = data.samples
    assert s.id == "h1" and s.choices == ["Man", "Woman"] and s.answer == 1
    assert s.metadata["category"] == "Reasoning" and s.metadata["axis"] == "reasoning"
    x, sr = s.audio[0].load()
    assert sr == 16000 and len(x) == 1600
    assert data.source["kind"] == "hub" and data.source["revision"] == HUB_REVISIONS["test-mini"]


# ================================================================ MMAR

MMAR_DIR = SHARED / "mmar"


def test_mmar_jsonl_real():
    from evalkit.tasks.mmar import MMAR

    data = MMAR.from_args({"data": str(need(MMAR_DIR / "MMAR-meta.jsonl"))}).load()
    stats = json.loads((MMAR_DIR / "MMAR-meta.stats.json").read_text())
    s = data.samples
    assert len(s) == 1000 and not data.warnings
    assert Counter(str(len(x.choices)) for x in s) == stats["n_choices_counts"]
    assert Counter(LETTERS[x.answer] for x in s) == stats["answer_position_counts"]
    assert Counter(x.metadata["modality"] for x in s) == stats["modality_counts"]
    assert Counter(x.metadata["category"] for x in s) == stats["category_counts"]
    assert Counter(x.metadata["axis"] for x in s) == {"perception": 447, "reasoning": 553}
    assert s[0].audio[0].path == (MMAR_DIR / "audio" / f"{s[0].id}.wav").resolve()


def test_mmar_v1_json_warns_for_answers_not_in_choices():
    from evalkit.tasks.mmar import MMAR

    data = MMAR.from_args({"data": str(need(MMAR_DIR / "MMAR-meta.v1-2025-05-11.json"))}).load()
    # Six v1 answers differ from their choices byte for byte. "2040" vs the choice "2040 " matches
    # once spaces are stripped (kept); three paraphrase/truncate a choice and two list several
    # choices on separate lines: five skipped, each with a warning naming the id and the answer.
    not_among = {"BV1NX4y1p7Xq_00-33-16_00-33-45", "BV16j411E7Z9_00-00-13_00-00-34", "BV1P4411677K_0-00_0-20"}
    multi = {"BV1NtQuYTELJ_00-00-00_00-00-26", "BV1mifMY4Ebq_00-02-41_00-03-10"}
    assert len(data.samples) == 995 and len(data.warnings) == 5
    for rid in not_among:
        assert any(rid in w and "not among the choices" in w for w in data.warnings)
    for rid in multi:
        assert any(rid in w and "multi-answer" in w for w in data.warnings)
    s2040 = next(s for s in data.samples if s.id == "Txj3Qv1lJgs_00-00-00_00-00-16")
    assert s2040.choices[s2040.answer] == "2040"


def test_mmar_score_aggregate():
    from evalkit.tasks.mmar import MMAR

    task = MMAR.from_args({"data": str(need(MMAR_DIR / "MMAR-meta.jsonl"))})
    samples = task.load().samples[:200]
    recs = make_records(task, samples, lambda r: r["answer"])  # gold text
    agg = task.aggregate(recs)
    assert agg["metrics"]["accuracy_official"]["value"] == 100.0
    assert agg["metrics"]["accuracy"]["value"] >= 95  # option-text extraction
    assert set(agg["groups"]) >= {"modality", "category", "axis"}


def test_mmar_escaping_audio(tmp_path):
    from evalkit.tasks.mmar import MMAR

    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps({"id": "x1", "audio_path": "../outside.wav", "question": "q", "choices": ["a", "b"],
                             "answer": "a", "category": "Signal Layer"}) + "\n")
    with pytest.raises(TaskDataError) as e:
        MMAR.from_args({"data": str(f)}).load()
    assert str(f) in str(e.value) and "x1" in str(e.value) and "audio_path" in str(e.value)
    with pytest.raises(TaskDataError, match="audio_root"):
        MMAR().load()  # hub rows need the audio archive


# ================================================================ MMSU

def _mmsu_table(rows):
    import pyarrow as pa

    audio_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cols = {k: [r.get(k) for r in rows] for k in rows[0] if k != "audio"}
    arrays = {k: pa.array(v, type=pa.string()) for k, v in cols.items()}
    arrays["audio"] = pa.array([r["audio"] for r in rows], type=audio_t)
    return pa.table(arrays)


def _mmsu_rows():
    base = {"task_name": "stress", "category": "Perception", "sub-category": "phonetics",
            "sub-sub-category": "stress", "linguistics_sub_discipline": "phonology"}
    return [
        {**base, "id": "m1", "audio": {"bytes": wav_bytes(), "path": "m1.wav"}, "question": "Which word?",
         "choice_a": "cat", "choice_b": "dog", "choice_c": "bird", "choice_d": "fish", "answer_gt": "dog"},
        {**base, "id": "m2", "audio": {"bytes": wav_bytes(freq=220), "path": "m2.wav"}, "question": "Yes or no?",
         "choice_a": "yes", "choice_b": "no", "choice_c": None, "choice_d": "", "answer_gt": "yes",
         "category": "Reasoning"},
        {**base, "id": "m3", "audio": {"bytes": wav_bytes(freq=330), "path": "m3.wav"}, "question": "Which?",
         "choice_a": "one", "choice_b": "None", "choice_c": "two", "choice_d": None, "answer_gt": "None"},
        {**base, "id": "m4", "audio": {"bytes": wav_bytes(), "path": "m4.wav"}, "question": "Which?",
         "choice_a": "one", "choice_b": "two", "choice_c": None, "choice_d": None, "answer_gt": "three"},
    ]


def test_mmsu_parquet_file_and_shards(tmp_path):
    import pyarrow.parquet as pq

    from evalkit.tasks.mmsu import MMSU

    rows = _mmsu_rows()
    f = tmp_path / "mmsu.parquet"
    pq.write_table(_mmsu_table(rows), f)
    data = MMSU.from_args({"data": str(f)}).load()
    s = {x.id: x for x in data.samples}
    assert list(s) == ["m1", "m2", "m3"]
    assert s["m2"].choices == ["yes", "no"]                         # None / "" padding dropped
    assert s["m3"].choices == ["one", "None", "two"] and s["m3"].answer == 1  # literal "None" kept
    assert s["m1"].metadata["axis"] == "perception" and s["m2"].metadata["axis"] == "reasoning"
    assert s["m1"].metadata["task_name"] == "stress"
    assert len(data.warnings) == 1 and "m4" in data.warnings[0] and "three" in data.warnings[0]
    x, sr = s["m1"].audio[0].load()
    assert sr == 16000 and len(x) == 1600
    assert data.data_hash.startswith("sha256:")
    # a folder of shards
    shards = tmp_path / "snap" / "data"
    shards.mkdir(parents=True)
    pq.write_table(_mmsu_table(rows[:2]), shards / "train-00000-of-00002.parquet")
    pq.write_table(_mmsu_table(rows[2:]), shards / "train-00001-of-00002.parquet")
    data2 = MMSU.from_args({"data": str(tmp_path / "snap")}).load()
    assert [x.id for x in data2.samples] == ["m1", "m2", "m3"]


def test_mmsu_prompts_score_aggregate(tmp_path):
    import pyarrow.parquet as pq

    from evalkit.tasks.mmsu import MMSU

    f = tmp_path / "mmsu.parquet"
    pq.write_table(_mmsu_table(_mmsu_rows()), f)
    task = MMSU.from_args({"data": str(f), "prompt": "upstream"})
    samples = task.load().samples
    (p,) = present(samples[:1], "original", 0)
    text = task.render_prompt(p)
    assert text == ("Choose the most suitable answer from options A, B, C, and D. You must respond with only A, B, "
                    "C, or D.\n\nQuestion: Which word?\n\nA. cat\nB. dog\nC. bird\nD. fish")
    outputs = {"m1": lambda r: f"Answer: {gold_letter(r)}", "m2": lambda r: "b", "m3": lambda r: gold_letter(r)}
    recs = make_records(task, samples, lambda r: outputs[r["sample_id"]](r))
    by = {r["sample_id"]: r for r in recs}
    assert by["m1"]["scores"]["accuracy"] == 1.0
    assert by["m1"]["scores"]["accuracy_official"] == float(by["m1"]["choices"][0] == "dog")  # read as "A"
    assert by["m2"]["scores"]["accuracy_official"] is None  # lowercase: wrong format
    assert by["m3"]["scores"]["accuracy_official"] == 1.0
    agg = task.aggregate(recs)
    assert agg["extra"]["official_excluded"] == 1
    assert agg["metrics"]["accuracy_official"]["n"] == 2
    assert set(agg["groups"]["axis"]) == {"perception", "reasoning"}
    with pytest.raises(TaskDataError, match="prompt"):
        MMSU.from_args({"prompt": "nope"})


def test_mmsu_bad_input(tmp_path):
    import pyarrow.parquet as pq

    from evalkit.tasks.mmsu import MMSU

    rows = _mmsu_rows()[:2]
    rows[1]["question"] = None
    f = tmp_path / "bad.parquet"
    pq.write_table(_mmsu_table(rows), f)
    with pytest.raises(TaskDataError) as e:
        MMSU.from_args({"data": str(f)}).load()
    assert str(f) in str(e.value) and "record 1" in str(e.value) and "m2" in str(e.value) \
        and "question" in str(e.value)
    rows = _mmsu_rows()[:1]
    rows[0]["audio"] = {"bytes": None, "path": "../../x.wav"}
    pq.write_table(_mmsu_table(rows), f)
    with pytest.raises(TaskDataError, match="escapes"):
        MMSU.from_args({"data": str(f)}).load()
    with pytest.raises(TaskDataError, match="not found"):
        MMSU.from_args({"data": str(tmp_path / "none")}).load()


# ================================================================ CochlScene

def _cochl_tree(root: Path, per_class: dict[str, int], split="Test"):
    import soundfile as sf

    for cls, n in per_class.items():
        d = root / "CochlScene" / split / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            sf.write(d / f"{cls}_{i}.wav", np.zeros(441, dtype=np.float32), 44100)
    return root / "CochlScene"


def test_cochlscene_load_score_aggregate(tmp_path):
    from evalkit.tasks.cochlscene import CHOICES, CLASSES, CochlScene

    labels = SHARED / "cochlscene" / "labels.txt"
    if labels.exists():
        assert list(CLASSES) == labels.read_text().split()
    root = _cochl_tree(tmp_path, {"Bus": 2, "Cafe": 2, "Park": 1})
    _cochl_tree(tmp_path, {"Bus": 1}, split="Val")
    task = CochlScene.from_args({"data": str(root)})
    data = task.load()
    assert len(data.samples) == 5 and data.samples[0].choices == CHOICES and len(CHOICES) == 13
    assert data.samples[0].question == "Identify the acoustic scene in the audio."
    assert {s.metadata["class"] for s in data.samples} == {"Bus", "Cafe", "Park"}
    assert all(s.metadata["split"] == "Test" for s in data.samples)
    assert any("missing" in w for w in data.warnings)
    assert CochlScene.from_args({"data": str(tmp_path), "split": "Val"}).load().samples[0].metadata["split"] == "Val"
    # same listing -> same hash; a new file changes it
    h = data.data_hash
    assert CochlScene.from_args({"data": str(root)}).load().data_hash == h
    _cochl_tree(tmp_path, {"Park": 2})
    assert CochlScene.from_args({"data": str(root)}).load().data_hash != h
    samples = CochlScene.from_args({"data": str(root)}).load().samples  # Bus 2, Cafe 2, Park 2

    def answer(r):
        cls = r["metadata"]["class"]
        if cls == "Bus":
            return gold_letter(r)                       # right
        if cls == "Cafe":
            return "(" + LETTERS[r["choices"].index("bus")] + ")"  # says bus
        return "I cannot tell."                         # extraction failure

    recs = make_records(task, samples, answer)
    agg = task.aggregate(recs)
    assert agg["metrics"]["accuracy"]["value"] == pytest.approx(100 * 2 / 6, abs=1e-3)
    assert agg["metrics"]["macro_accuracy"]["value"] == pytest.approx(100 / 3, abs=1e-3)
    cm = agg["extra"]["confusion_matrix"]
    assert cm["columns"][-1] == "none" and cm["labels"] == list(CLASSES)
    row = lambda c: dict(zip(cm["columns"], cm["matrix"][cm["labels"].index(c)]))
    assert row("Bus")["Bus"] == 2 and row("Cafe")["Bus"] == 2 and row("Park")["none"] == 2
    pc = agg["extra"]["per_class"]
    assert pc["Bus"]["recall"] == 100.0 and pc["Bus"]["precision"] == 50.0 and pc["Cafe"]["recall"] == 0.0
    assert agg["extra"]["per_class_accuracy"]["Bus"] == 100.0


def test_cochlscene_without_data():
    from evalkit.tasks.cochlscene import CochlScene

    with pytest.raises(TaskDataError, match="7080122"):
        CochlScene().load()
    with pytest.raises(TaskDataError, match="not found"):
        CochlScene.from_args({"data": "/nonexistent/CochlScene"}).load()


# ================================================================ AKB-2000

AKB_ROWS = [
    {"id": "k1", "question": "Which instrument has frets?", "option_a": "violin", "option_b": "guitar",
     "option_c": "trumpet", "option_d": "flute", "answer": "B", "category": "Music", "subcategory": "instruments"},
    {"id": "k2", "question": "Unit of loudness?", "option_a": "hertz", "option_b": "decibel", "option_c": "watt",
     "option_d": "ohm", "answer": "decibel", "category": "Audio Quality", "subcategory": "levels"},
    {"id": "k3", "question": "A vowel?", "option_a": "p", "option_b": "t", "option_c": "a", "option_d": "k",
     "answer": "(C)", "category": "Phonetic", "subcategory": "vowels"},
]


def _write_akb(tmp_path, fmt, rows=AKB_ROWS):
    if fmt == "csv":
        f = tmp_path / "akb.csv"
        with open(f, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return f
    as_lists = [{"id": r["id"], "question": r["question"],
                 "options": [r["option_a"], r["option_b"], r["option_c"], r["option_d"]],
                 "answer": r["answer"], "category": r["category"], "subcategory": r["subcategory"]} for r in rows]
    if fmt == "jsonl":
        f = tmp_path / "akb.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in as_lists))
    else:
        f = tmp_path / "akb.json"
        f.write_text(json.dumps([{**{k: v for k, v in r.items() if k != "options"}, "choices": r["options"]}
                                 for r in as_lists]))
    return f


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_akb_formats(tmp_path, fmt):
    from evalkit.tasks.akb2000 import AKB2000

    task = AKB2000.from_args({"data": str(_write_akb(tmp_path, fmt))})
    data = task.load()
    assert [(s.id, s.answer) for s in data.samples] == [("k1", 1), ("k2", 1), ("k3", 2)]
    assert all(not s.audio for s in data.samples) and task.modality == "text"
    assert data.samples[1].metadata == {"category": "Audio Quality", "subcategory": "levels"}
    recs = make_records(task, data.samples, lambda r: gold_letter(r) if r["sample_id"] != "k2" else "Z")
    msgs = task.prompt(present(data.samples[:1], "original", 0)[0])
    assert all(part["type"] == "text" for m in msgs for part in m["content"])
    agg = task.aggregate(recs)
    assert agg["metrics"]["accuracy"]["value"] == pytest.approx(200 / 3, abs=1e-3)  # micro average
    assert set(agg["groups"]["category"]) == {"Music", "Audio Quality", "Phonetic"}
    assert "accuracy_official" not in agg["metrics"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_akb_malformed(tmp_path, fmt):
    from evalkit.tasks.akb2000 import AKB2000

    rows = [dict(r) for r in AKB_ROWS]
    rows[1]["answer"] = "zebra"
    f = _write_akb(tmp_path, fmt, rows)
    with pytest.raises(TaskDataError) as e:
        AKB2000.from_args({"data": str(f)}).load()
    assert str(f) in str(e.value) and "record 1" in str(e.value) and "k2" in str(e.value) \
        and "answer" in str(e.value)
    rows = [dict(r) for r in AKB_ROWS]
    rows[2]["question"] = ""
    f = _write_akb(tmp_path, fmt, rows)
    with pytest.raises(TaskDataError, match=r"record 2 .*question"):
        AKB2000.from_args({"data": str(f)}).load()


def test_akb_without_data_and_hub(monkeypatch, tmp_path):
    from evalkit.tasks.akb2000 import AKB2000

    with pytest.raises(TaskDataError, match="not published"):
        AKB2000().load()
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(TaskDataError, match=r"x\.json.*malformed"):
        AKB2000.from_args({"data": str(bad)}).load()
    # the hub form goes through evalkit.hub; a failing download names the repo, revision and the offline way
    import datasets

    def fail(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(TaskDataError) as e:
        AKB2000.from_args({"data": "hf:someone/akb@abc123"}).load()
    msg = str(e.value)
    assert "someone/akb" in msg and "abc123" in msg and "-T data=PATH -T audio_root=DIR" in msg \
        and "HF_HUB_OFFLINE" in msg


# ================================================================ hub helpers and import weight

def test_hub_import_error(monkeypatch):
    import evalkit.hub as hub

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(TaskDataError, match=r"pip install 'evalkit\[hub\]'"):
        hub.load_hub_rows("a/b", "main", "test")


def test_audio_from_hub_forms(tmp_path):
    from evalkit.audio import UnsafePathError
    from evalkit.hub import audio_from_hub

    data = wav_bytes()
    assert audio_from_hub({"bytes": data, "path": "a.wav"}).data == data
    ref = audio_from_hub({"array": [0.0, 0.5, -0.5], "sampling_rate": 8000})
    assert ref.sample_rate == 8000 and ref.load()[0].dtype == np.float32
    (tmp_path / "a.wav").write_bytes(data)
    assert audio_from_hub({"bytes": None, "path": "a.wav"}, root=tmp_path).path == (tmp_path / "a.wav").resolve()
    with pytest.raises(UnsafePathError):
        audio_from_hub({"bytes": None, "path": "../a.wav"}, root=tmp_path / "sub")
    with pytest.raises(ValueError):
        audio_from_hub({"path": None, "bytes": None})
    with pytest.raises(ValueError, match="NUL"):  # an absolute hub path without a root is checked too
        audio_from_hub({"bytes": None, "path": "/data/a\0.wav"})


def test_task_modules_import_light():
    code = ("import sys\n"
            "import evalkit.tasks.mmau, evalkit.tasks.mmar, evalkit.tasks.mmsu, evalkit.tasks.cochlscene, "
            "evalkit.tasks.akb2000, evalkit.tasks.official, evalkit.hub\n"
            "from evalkit.registry import get_task\n"
            "for n in ('mmau', 'mmar', 'mmsu', 'cochlscene', 'akb2000'):\n"
            "    t = get_task(n); assert t.name == n and t.source and t.main_metric == 'accuracy', n\n"
            "heavy = [m for m in ('torch', 'datasets', 'sklearn', 'pyarrow', 'pandas') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)
