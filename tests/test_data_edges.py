"""Data edge cases get a clear error naming the record, or faithful handling: colliding MMSU duplicate
ids, NaN in metadata (pandas/Python exports), more than 26 options, a NUL byte in a path, and JSONL
records holding raw U+2028/U+2029/U+0085."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from evalkit.errors import TaskDataError
from evalkit.protocol.choices import LETTERS, present
from evalkit.types import Sample


def wav_bytes() -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(160, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ---- MMSU duplicate ids --------------------------------------------------------------------------
@pytest.mark.parametrize("ids,expected", [
    (["x", "x"], ["x", "x#2"]),
    (["x", "x", "x"], ["x", "x#2", "x#3"]),
    (["x", "x", "x#2"], ["x", "x#3", "x#2"]),       # the data's own x#2 keeps its id
    (["x#2", "x", "x"], ["x#2", "x", "x#3"]),
    (["x", "x#2", "x", "x#2"], ["x", "x#2", "x#3", "x#2#2"]),
    (["a", "b"], ["a", "b"]),
])
def test_unique_ids_hand_derived(ids, expected):
    from evalkit.tasks.mmsu import unique_ids

    assert unique_ids(ids) == expected


def mmsu_parquet(path, rows, float_columns=()):
    """An MMSU parquet; `float_columns` are stored as float64 (where a writer keeps NaN as NaN)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    audio_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    arrays = {}
    for k in rows[0]:
        values = [r.get(k) for r in rows]
        if k == "audio":
            arrays[k] = pa.array(values, type=audio_t)
        elif k in float_columns:
            arrays[k] = pa.array(values, type=pa.float64(), from_pandas=False)  # NaN stays NaN
        else:
            arrays[k] = pa.array(values, type=pa.string())
    pq.write_table(pa.table(arrays), path)
    return path


def mmsu_row(rid, **kw):
    return {"id": rid, "task_name": "t", "audio": {"bytes": wav_bytes(), "path": f"{rid}.wav"}, "question": "Q?",
            "choice_a": "yes", "choice_b": "no", "choice_c": "maybe", "choice_d": "never", "answer_gt": "no",
            "category": "Perception", "sub-category": "s", "sub-sub-category": "ss",
            "linguistics_sub_discipline": "l", **kw}


def test_mmsu_renaming_never_collides(tmp_path):
    from evalkit.tasks.mmsu import MMSU

    f = mmsu_parquet(tmp_path / "mmsu.parquet", [mmsu_row("x"), mmsu_row("x"), mmsu_row("x#2")])
    data = MMSU.from_args({"data": str(f)}).load()
    assert [s.id for s in data.samples] == ["x", "x#3", "x#2"]
    assert len({s.id for s in data.samples}) == 3
    assert data.warnings == [f"{f}: record 1 (id 'x'): duplicate id 'x'; renamed to 'x#3'"]
    again = MMSU.from_args({"data": str(f)}).load()  # deterministic across loads
    assert [s.id for s in again.samples] == ["x", "x#3", "x#2"]


# ---- NaN in metadata -----------------------------------------------------------------------------
def test_mmsu_float_nan_is_missing_not_nan(tmp_path):
    """A float NaN option is padding (not an option "nan"), NaN metadata is None (not a "nan" group),
    and the sample's record stays writable by the run log (allow_nan=False)."""
    from evalkit.tasks.mmsu import MMSU

    rows = [mmsu_row("m1", choice_d=math.nan, **{"sub-category": math.nan, "sub-sub-category": 1.5}),
            mmsu_row("m2", choice_d=math.nan, **{"sub-category": math.inf, "sub-sub-category": 2.0})]
    f = mmsu_parquet(tmp_path / "mmsu.parquet", rows, float_columns=("choice_d", "sub-category",
                                                                     "sub-sub-category"))
    s = MMSU.from_args({"data": str(f)}).load().samples
    assert [x.choices for x in s] == [["yes", "no", "maybe"]] * 2
    assert [x.metadata["sub-category"] for x in s] == [None, None]
    assert [x.metadata["sub-sub-category"] for x in s] == [1.5, 2.0]   # finite numbers are kept
    json.dumps([x.metadata for x in s], allow_nan=False)


def test_json_nan_constants_read_as_none(tmp_path):
    """Python's json.dumps writes NaN/Infinity for float nan/inf; they are missing values."""
    from evalkit.tasks.mmau import MMAU

    items = [{"id": "q1", "audio_id": "./a/q1.wav", "question": "Who?", "choices": ["Man", "Woman"],
              "answer": "Woman", "task": "sound", "category": math.nan, "sub-category": math.inf,
              "difficulty": -math.inf, "dataset": "d"}]
    f = tmp_path / "mmau.json"
    f.write_text(json.dumps(items))  # allow_nan=True: NaN, Infinity, -Infinity literals
    assert "NaN" in f.read_text()
    (s,) = MMAU.from_args({"data": str(f)}).load().samples
    assert {k: s.metadata[k] for k in ("category", "sub-category", "difficulty", "axis")} == dict.fromkeys(
        ("category", "sub-category", "difficulty", "axis"))
    json.dumps(s.metadata, allow_nan=False)
    # a NaN among the options is refused, naming the record and the item
    items[0]["choices"] = ["Man", math.nan, "Woman"]
    f.write_text(json.dumps(items))
    with pytest.raises(TaskDataError, match=r"mmau\.json: record 0 \(id 'q1'\): field 'choices'.*item 1 is null or NaN"):
        MMAU.from_args({"data": str(f)}).load()


def test_mmau_hub_nan_in_row_and_other_attributes():
    from evalkit.tasks.mmau import _hub_row_to_item

    row = {"id": "h1", "instruction": "Q?", "choices": ["(A) a", "(B) b"], "answer": "(B) b",
           "difficulty": math.nan, "other_attributes": json.dumps({"category": math.nan, "task": "sound"})}
    item = _hub_row_to_item(row, "hf:x", 0)
    assert item["difficulty"] is None and item["category"] is None and item["task"] == "sound"


def test_akb_nan_category_and_subcategory(tmp_path):
    from evalkit.tasks.akb2000 import AKB2000

    rec = {"id": "k1", "question": "Q?", "choices": ["a", "b", "c", "d"], "answer": "B", "category": "Sound",
           "subcategory": math.nan}
    f = tmp_path / "akb.json"
    f.write_text(json.dumps([rec]))
    (s,) = AKB2000.from_args({"data": str(f)}).load().samples
    assert s.metadata == {"category": "Sound", "subcategory": None}
    f.write_text(json.dumps([{**rec, "category": math.nan}]))
    with pytest.raises(TaskDataError, match=r"record 0 \(id 'k1'\): missing field 'category'"):
        AKB2000.from_args({"data": str(f)}).load()


# ---- more than 26 options ------------------------------------------------------------------------
def test_more_options_than_letters_names_the_record(tmp_path):
    from evalkit.tasks.mmau import MMAU

    def items(k):
        return [{"id": "wide", "audio_id": "./a/w.wav", "question": "Which?", "choices": [f"c{j}" for j in range(k)],
                 "answer": f"c{k - 1}", "task": "sound", "category": "Reasoning"}]

    f = tmp_path / "mmau.json"
    f.write_text(json.dumps(items(len(LETTERS))))
    (s,) = MMAU.from_args({"data": str(f)}).load().samples  # 26 options: each has a letter
    assert len(s.choices) == 26 and len(present([s], "balanced", 0)[0].choices) == 26
    f.write_text(json.dumps(items(27)))
    with pytest.raises(TaskDataError, match=r"mmau\.json: record 0 \(id 'wide'\): field 'choices': 27 options.*A-Z"):
        MMAU.from_args({"data": str(f)}).load()


@pytest.mark.parametrize("mode", ["balanced", "original", "circular"])
def test_present_refuses_more_options_than_letters(mode):
    """Whatever a task's loader checked, the protocol refuses options it cannot label."""
    ok = Sample(id="ok", choices=["a", "b"], answer=0)
    wide = Sample(id="wide", choices=[str(j) for j in range(27)], answer=3)
    with pytest.raises(TaskDataError, match=r"sample 'wide': 27 options"):
        present([ok, wide], mode, 0)
    unanswered = Sample(id="test-split", choices=[str(j) for j in range(27)])  # withheld answer, still shown
    with pytest.raises(TaskDataError, match=r"sample 'test-split': 27 options"):
        present([unanswered], mode, 0)


# ---- a NUL byte in a path ------------------------------------------------------------------------
def test_nul_byte_in_audio_path_names_the_record(tmp_path):
    from evalkit.tasks.mmau import MMAU

    items = [{"id": "q1", "audio_id": "./a/q1\x00.wav", "question": "Who?", "choices": ["Man", "Woman"],
              "answer": "Woman", "task": "sound"}]
    f = tmp_path / "mmau.json"
    f.write_text(json.dumps(items))
    with pytest.raises(TaskDataError, match=r"mmau\.json: record 0 \(id 'q1'\): field 'audio_id': .*NUL byte"):
        MMAU.from_args({"data": str(f)}).load()


def test_resolve_under_refuses_nul_bytes(tmp_path):
    from evalkit.audio import UnsafePathError, resolve_under

    assert resolve_under(tmp_path, "a/b.wav") == (tmp_path / "a" / "b.wav").resolve()
    with pytest.raises(UnsafePathError, match="audio path 'a\\\\x00b.wav' contains a NUL byte"):
        resolve_under(tmp_path, "a\x00b.wav")
    with pytest.raises(UnsafePathError, match="data root .* contains a NUL byte"):
        resolve_under(f"{tmp_path}\x00x", "a.wav")


def test_resolve_under_messages_and_the_filesystem_root(tmp_path):
    """Refusals say what is wrong with which path; a data root of "/" holds every relative path
    (its prefix is "/", not "//")."""
    import os
    import re

    from evalkit.audio import UnsafePathError, resolve_under

    with pytest.raises(UnsafePathError, match="^empty clip path$"):
        resolve_under(tmp_path, "  ", what="clip path")
    with pytest.raises(UnsafePathError, match=f"^audio path '/etc/passwd' is absolute; paths in data files must be "
                                              f"relative to {re.escape(os.path.realpath(tmp_path))}$"):
        resolve_under(tmp_path, "/etc/passwd")
    assert resolve_under("/", "tmp/x.wav") == Path(os.path.realpath("/tmp")) / "x.wav"


# ---- JSONL lines ---------------------------------------------------------------------------------
SEPARATORS = ["\u2028", "\u2029", "\x85"]


def test_jsonl_records_hold_raw_line_separators(tmp_path):
    """json.dumps(ensure_ascii=False) writes these raw; str.splitlines() would split the record."""
    from evalkit.tasks.loaders import read_json_records

    rows = [{"id": f"r{i}", "question": f"before{sep}after"} for i, sep in enumerate(SEPARATORS)]
    f = tmp_path / "data.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows) + "\n\n", encoding="utf-8")
    assert all(sep in f.read_text(encoding="utf-8") for sep in SEPARATORS)
    assert read_json_records(f) == rows


def test_jsonl_line_numbers_count_newlines_only(tmp_path):
    from evalkit.tasks.loaders import read_json_records

    f = tmp_path / "data.jsonl"
    f.write_text('{"id": "a", "q": "x\u2028y"}\n\n{"id": \n', encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"data\.jsonl: line 3 \(record 1\) is not valid JSON"):
        read_json_records(f)


def test_mmar_jsonl_with_raw_separator_loads(tmp_path):
    from evalkit.tasks.mmar import MMAR

    rec = {"id": "m1", "audio_path": "./audio/m1.wav", "question": "Which\u2028one?", "choices": ["a", "b"],
           "answer": "b", "modality": "sound", "category": "Signal Layer"}
    f = tmp_path / "MMAR-meta.jsonl"
    f.write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    (s,) = MMAR.from_args({"data": str(f)}).load().samples
    assert s.question == "Which\u2028one?" and s.metadata["axis"] == "perception"


def test_hub_rows_nan_is_missing(monkeypatch, tmp_path):
    """Hub rows (datasets) keep a float column's NaN as a float: MMAR's and AKB's hub paths read it as None."""
    import evalkit.hub as hub
    from evalkit.tasks.akb2000 import AKB2000
    from evalkit.tasks.mmar import MMAR

    mmar = [{"id": "m1", "audio_path": "./audio/m1.wav", "question": "Q?", "choices": ["a", "b"], "answer": "b",
             "modality": "sound", "category": "Signal Layer", "sub-category": math.nan, "language": math.nan}]
    akb = [{"id": "k1", "question": "Q?", "choices": ["a", "b", "c", "d"], "answer": "A", "category": "Music",
            "subcategory": math.nan}]
    monkeypatch.setattr(hub, "resolve_revision", lambda repo, rev: None)
    monkeypatch.setattr(hub, "load_hub_rows", lambda repo, rev, split, config=None: mmar)
    (s,) = MMAR.from_args({"audio_root": str(tmp_path)}).load().samples
    assert s.metadata["sub-category"] is None and s.metadata["language"] is None
    monkeypatch.setattr(hub, "load_hub_rows", lambda repo, rev, split, config=None: akb)
    (s,) = AKB2000.from_args({"data": "hf:someone/akb@abc"}).load().samples
    assert s.metadata == {"category": "Music", "subcategory": None}


def test_mmsu_upstream_letters_follow_the_padding(tmp_path):
    """The loader records each shown option's upstream letter for mmsu_official: with padding dropped
    (evalkit's prompt) a middle padding shifts the letters; under -T prompt=upstream every position stays."""
    from evalkit.tasks.mmsu import MMSU
    from evalkit.tasks.official import MMSU_UPSTREAM

    rows = [mmsu_row("p1", choice_b=None, answer_gt="maybe"), mmsu_row("p2", choice_d="")]
    f = mmsu_parquet(tmp_path / "mmsu.parquet", rows)
    compact = {s.id: s for s in MMSU.from_args({"data": str(f)}).load().samples}
    assert compact["p1"].choices == ["yes", "maybe", "never"] and compact["p1"].answer == 1
    assert compact["p1"].metadata[MMSU_UPSTREAM]["letters"] == ["A", "C", "D"]
    assert compact["p2"].metadata[MMSU_UPSTREAM]["letters"] == ["A", "B", "C"]
    assert compact["p1"].metadata[MMSU_UPSTREAM]["choice_b"] is None  # the raw value upstream compares
    kept = {s.id: s for s in MMSU.from_args({"data": str(f), "prompt": "upstream"}).load().samples}
    assert kept["p1"].choices == ["yes", "None", "maybe", "never"] and kept["p1"].answer == 2
    assert kept["p2"].choices == ["yes", "no", "maybe", ""] and kept["p2"].answer == 1
    assert kept["p1"].metadata[MMSU_UPSTREAM]["letters"] == ["A", "B", "C", "D"]
    # a row with fewer than two real options is still refused, padding kept or not
    f = mmsu_parquet(tmp_path / "one.parquet", [mmsu_row("p3", choice_b=None, choice_c=None, choice_d=None,
                                                         answer_gt="yes")])
    for prompt in ("default", "upstream"):
        with pytest.raises(TaskDataError, match=r"record 0 \(id 'p3'\).*fewer than two options"):
            MMSU.from_args({"data": str(f), "prompt": prompt}).load()


def test_symlinks_cannot_lead_out_of_the_data_root(tmp_path):
    from evalkit.audio import UnsafePathError, resolve_under

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "clips").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.wav").write_bytes(b"x")
    (root / "clips" / "real.wav").write_bytes(b"x")
    (root / "clips" / "to_outside.wav").symlink_to(outside / "secret.wav")  # a file symlink
    (root / "linked_dir").symlink_to(outside)  # a folder symlink
    (root / "alias.wav").symlink_to(root / "clips" / "real.wav")  # stays inside: fine
    assert resolve_under(root, "clips/real.wav") == (root / "clips" / "real.wav").resolve()
    assert resolve_under(root, "alias.wav") == (root / "clips" / "real.wav").resolve()
    for bad in ("clips/to_outside.wav", "linked_dir/secret.wav", "../outside/secret.wav", "clips/../../outside/secret.wav"):
        with pytest.raises(UnsafePathError, match="escapes"):
            resolve_under(root, bad)
    # the folder cache does not make a second look at the same folder any less strict
    with pytest.raises(UnsafePathError, match="escapes"):
        resolve_under(root, "linked_dir/secret.wav")


def test_a_relative_root_follows_the_working_directory(tmp_path, monkeypatch):
    from evalkit.audio import resolve_under

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.wav").write_bytes(b"x")
        monkeypatch.chdir(tmp_path / name)
        assert resolve_under(".", "x.wav") == (tmp_path / name / "x.wav").resolve()
