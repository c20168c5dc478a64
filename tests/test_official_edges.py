"""Official figures on edge cases, item for item against re-implementations of the upstream rules
written here from the upstream scripts (not from tasks/official.py):

- MMSU: dingdongwang/MMSU `mmsu_evaluation.py` @217d1d3 (`calculate_accuracy_per_task_and_category`);
- MMAU / MMAR: Sakshi113/MMAU `evaluation.py` @110127f and ddlBoJack/MMAR `code/evaluation.py`
  @3bce090 (`string_match` and the loop around it).

Records are made the way a run makes them: the `predictions` adapter reads an upstream-style
JSONL (so a JSON null or a number in `response` takes the adapter's real path), the runner's
`normalize_response` and `_record` build and score each record.
"""
from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evalkit.engine.runner import _record, normalize_response
from evalkit.protocol.choices import LETTERS, present
from evalkit.tasks.official import (
    MMSU_UPSTREAM,
    mmau_official,
    mmsu_official,
    mmsu_upstream_fields,
)
from evalkit.types import Request, Sample

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FIELDS = ("choice_a", "choice_b", "choice_c", "choice_d")


# ================================================================ MMSU: the upstream rule, re-implemented

def upstream_mmsu_item(row: dict[str, Any]) -> str:
    """"correct", "wrong" or "skipped" (left out of total_count), as the upstream loop decides."""
    response = row.get("response", "")
    try:
        text = response.strip().replace("\n", "")
    except Exception:  # upstream: bare except -> print('Error prediction!'); continue
        return "skipped"
    letter = None
    if text != "None" and text:
        if text[0] in ("A", "B", "C", "D"):
            letter = text[0]
        elif len(text) > 1:
            if text[-2] in ("A", "B", "C", "D"):
                letter = text[-2]
            else:
                return "skipped"  # 'Wrong format response'
        else:
            return "skipped"
    if letter is None:
        return "wrong"  # counted, never matched
    chosen = row.get({"A": "choice_a", "B": "choice_b", "C": "choice_c", "D": "choice_d"}[letter], "")
    return "correct" if chosen == row.get("answer_gt", "") else "wrong"


def upstream_mmsu_figure(rows: list[dict[str, Any]]) -> tuple[float, int]:
    """Overall accuracy in percent and total_count."""
    outcome = [upstream_mmsu_item(r) for r in rows]
    total = sum(o != "skipped" for o in outcome)
    return 100.0 * sum(o == "correct" for o in outcome) / total, total


def test_reference_reads_the_script_as_documented():
    """The reference itself, on the cases PROTOCOLS.md lists (so a slip in it shows up here)."""
    row = {"choice_a": "cat", "choice_b": "dog", "choice_c": "bird", "choice_d": "fish", "answer_gt": "cat"}
    cases = {"Answer: B": "correct", "b": "skipped", "The answer is B": "skipped", "The answer is A.": "correct",
             "According to it": "correct", "": "wrong", "None": "wrong", None: "skipped", 3: "skipped"}
    assert {k: upstream_mmsu_item({**row, "response": k}) for k in cases} == cases
    assert upstream_mmsu_item({k: v for k, v in row.items()}) == "wrong"  # no response key: '' -> counted


# ================================================================ MMSU: records as a run makes them

def is_padding(value: Any) -> bool:
    """tasks/mmsu.py's padding rule: a null or blank choice field."""
    return value is None or (isinstance(value, str) and value.strip() == "")


def mmsu_sample(row: dict[str, Any], layout: str) -> Sample:
    """The sample the MMSU loader makes of a dataset row, with `metadata[MMSU_UPSTREAM]`.

    layout "kept": every position, a padding value shown as upstream's prompt prints it
    (f"C. {None}" -> "C. None"), the layout `-T prompt=upstream` needs; "compact": padding
    dropped (the loader today)."""
    letters, choices = [], []
    for letter, f in zip("ABCD", FIELDS):
        v = row.get(f, "")
        if layout == "compact" and is_padding(v):
            continue
        letters.append(letter)
        choices.append("None" if v is None else str(v).strip())
    answer = str(row["answer_gt"]).strip()
    gold = next(i for i, c in enumerate(choices) if c == answer)  # probes only hold loadable rows
    return Sample(id=row["id"], question="Which?", choices=choices, answer=gold,
                  metadata={"category": row.get("category", "Perception"),
                            MMSU_UPSTREAM: mmsu_upstream_fields(row, letters)})


def mmsu_task():
    from evalkit.tasks.mmsu import MMSU

    return MMSU.from_args({"prompt": "upstream"})


def run_predictions(task, samples: list[Sample], mode: str, response, tmp_path: Path, seed: int = 0):
    """Records for `samples` presented in `mode`, the model's raw response per presentation given by
    `response(presentation)`, through the predictions adapter and the runner's record path."""
    from evalkit.models.predictions import PredictionsConfig, PredictionsFile

    presentations = present(samples, mode, seed)
    path = tmp_path / f"predictions-{mode}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for p in presentations:
            f.write(json.dumps({"id": p.key, "response": response(p)}) + "\n")
    model = PredictionsFile(PredictionsConfig(path=path))
    requests = [Request(key=p.key, messages=task.prompt(p)) for p in presentations]
    responses = model.generate(requests)
    return [_record(task, p, req, None, normalize_response(resp))
            for p, req, resp in zip(presentations, requests, responses)]


def official_figure(task, records) -> tuple[float | None, int, int]:
    agg = task.aggregate(records)
    m = agg["metrics"]["accuracy_official"]
    return m["value"], m["n"], agg["extra"]["official_excluded"]


def as_outcome(score: float | None) -> str:
    return {None: "skipped", 0.0: "wrong", 1.0: "correct"}[score]


def _four(i: int, gold: int) -> dict[str, Any]:
    row = {"id": f"q{i}", **{f: f"opt{i}{x}" for f, x in zip(FIELDS, "abcd")}}
    row["answer_gt"] = row[FIELDS[gold]]
    return row


# ---------------------------------------------------------------- hand-derived figures

def test_null_and_non_string_responses_leave_the_denominator(tmp_path):
    """14 right, 18 wrong, 8 null / non-string: upstream 14 / 32 = 43.75 (35.0 if they were counted)."""
    rows = []
    non_strings = [None, None, None, 7, 2.5, ["A"], {"answer": "A"}, True]
    for i in range(40):
        row = _four(i, gold=i % 4)
        if i < 14:
            row["response"] = LETTERS[i % 4]
        elif i < 32:
            row["response"] = LETTERS[(i + 1) % 4]
        else:
            row["response"] = non_strings[i - 32]
        rows.append(row)
    assert upstream_mmsu_figure(rows) == (43.75, 32)
    task = mmsu_task()
    by_id = {r["id"]: r for r in rows}
    records = run_predictions(task, [mmsu_sample(r, "kept") for r in rows], "original",
                              lambda p: by_id[p.key]["response"], tmp_path)
    assert official_figure(task, records) == (43.75, 32, 8)
    # evalkit's own accuracy counts them wrong: 14 / 40
    assert task.aggregate(records)["metrics"]["accuracy"]["value"] == 35.0


def _padded_middle(i: int) -> dict[str, Any]:
    return {"id": f"p{i}", "choice_a": f"a{i}", "choice_b": f"b{i}", "choice_c": None, "choice_d": f"d{i}",
            "answer_gt": f"d{i}"}


def test_padding_in_the_middle_keeps_letter_positions(tmp_path):
    """Choices A, B, None, D with gold D. Upstream-layout answers: 12 "D" (right), 2 "C" (the padding:
    wrong), 13 "A", 13 "B": 12 / 40 = 30.0 (5.0 if D became the third choice: only the 2 "C")."""
    answers = ["D"] * 12 + ["C"] * 2 + ["A"] * 13 + ["B"] * 13
    rows = [{**_padded_middle(i), "response": a} for i, a in enumerate(answers)]
    assert upstream_mmsu_figure(rows) == (30.0, 40)
    task = mmsu_task()
    by_id = {r["id"]: r for r in rows}
    kept = run_predictions(task, [mmsu_sample(r, "kept") for r in rows], "original",
                           lambda p: by_id[p.key]["response"], tmp_path)
    assert all(r["choices"] == [f"a{i}", f"b{i}", "None", f"d{i}"] for i, r in enumerate(kept))
    assert official_figure(task, kept) == (30.0, 40, 0)
    # the padding dropped (what the model then sees: A, B, C = d): the same picks by content are
    # "C" for d and a letter not shown ("D") for the padding: still 12 / 40
    shown = {"D": "C", "C": "D", "A": "A", "B": "B"}
    compact = run_predictions(task, [mmsu_sample(r, "compact") for r in rows], "original",
                              lambda p: shown[by_id[p.key]["response"]], tmp_path)
    assert all(len(r["choices"]) == 3 for r in compact)
    assert official_figure(task, compact) == (30.0, 40, 0)


def test_whitespace_is_compared_as_upstream_does(tmp_path):
    """Upstream compares choice_X == answer_gt unstripped. 40 items answered with the gold letter:
    10 whose gold choice and answer_gt differ only in whitespace (upstream: wrong), 30 that match
    exactly, 5 of those with the same leading space on both: 30 / 40 = 75.0. evalkit's own accuracy
    normalizes (strips) and gives 100.0."""
    rows = []
    for i in range(40):
        row = _four(i, gold=i % 4)
        g = FIELDS[i % 4]
        if i < 5:
            row["answer_gt"] = row[g] + " "
        elif i < 8:
            row[g] = row["answer_gt"] + "\n"
        elif i < 10:
            row["answer_gt"] = "\t" + row[g]
        elif i < 15:
            row[g] = row["answer_gt"] = " " + row[g]
        row["response"] = LETTERS[i % 4]
        rows.append(row)
    assert upstream_mmsu_figure(rows) == (75.0, 40)
    task = mmsu_task()
    by_id = {r["id"]: r for r in rows}
    records = run_predictions(task, [mmsu_sample(r, "kept") for r in rows], "original",
                              lambda p: by_id[p.key]["response"], tmp_path)
    assert official_figure(task, records) == (75.0, 40, 0)
    assert task.aggregate(records)["metrics"]["accuracy"]["value"] == 100.0


# ---------------------------------------------------------------- item for item

EDGE_ROWS = [
    {"choice_a": "cat", "choice_b": "dog", "choice_c": "bird", "choice_d": "fish", "answer_gt": "dog"},
    {"choice_a": "yes", "choice_b": "no", "choice_c": None, "choice_d": "", "answer_gt": "yes"},
    {"choice_a": "one", "choice_b": "None", "choice_c": "two", "choice_d": None, "answer_gt": "None"},
    {"choice_a": "low", "choice_b": "high", "choice_c": None, "choice_d": "mid", "answer_gt": "mid"},
    {"choice_a": "up", "choice_b": "  ", "choice_c": "down", "choice_d": "left", "answer_gt": "left "},
    {"choice_a": "same", "choice_b": "other", "choice_c": "same", "choice_d": "x", "answer_gt": "same"},
    {"choice_a": " red", "choice_b": "blue\n", "choice_c": "green", "choice_d": None, "answer_gt": "blue"},
]

EDGE_RESPONSES = [
    "A", "B", "C", "D", "Answer: B", "According to the audio, B", "b", "The answer is B", "The answer is A.",
    "The answer is C.", "I think it is D.", "the answer is\nD.\n", "", "   ", "\n", "None", " None \n", None, 3,
    ["B"], {"answer": "B"}, False, "x", "E.", "(B)", "B) dog", "**C**", "\nC", "c.", "Dog", "Fish", "AB", "D\n",
    "The answer is C\n.", "The answer is D\n\n.",
]


def edge_probe() -> list[dict[str, Any]]:
    rows = []
    for j, base in enumerate(EDGE_ROWS):
        for k, response in enumerate(EDGE_RESPONSES):
            rows.append({**base, "id": f"e{j}-{k}", "response": response})
    return rows


def random_probe(n: int = 400, seed: int = 20260401) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = ["cat", "dog", "None", "a b", "yes", "no", "Dog", "fish"]
    pads = [None, "", "  "]
    templates = ["{L}", "{L}.", "The answer is {L}.", "Answer: {L}", "({L}) text", "{l}", "The answer is {L}",
                 "\n{L}\n", "  {L} is right", "I pick {L}.\n"]
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"id": f"r{i}"}
        vals = rng.sample(words, 4)
        for j, f in enumerate(FIELDS):
            row[f] = rng.choice(pads) if j >= 2 and rng.random() < 0.3 else vals[j] + rng.choice(["", "", " "])
        real = [row[f] for f in FIELDS if not is_padding(row[f])]
        row["answer_gt"] = rng.choice(real).strip() + rng.choice(["", "", "", " "])
        r = rng.random()
        if r < 0.08:
            row["response"] = rng.choice([None, 1, [], {"x": "A."}, True])
        elif r < 0.15:
            row["response"] = rng.choice(["", " ", "None", "\nNone\n", "According to the audio", "Clearly"])
        else:
            letter = rng.choice("ABCD")
            row["response"] = rng.choice(templates).format(L=letter, l=letter.lower())
        rows.append(row)
    return rows


@pytest.mark.parametrize("probe", ["edges", "random"])
def test_upstream_layout_item_for_item(tmp_path, probe):
    """Every item of the probe, shown as upstream shows it (every position, original order): the
    official score equals the reference's outcome item for item, and so does the figure."""
    rows = edge_probe() if probe == "edges" else random_probe()
    assert len(rows) >= 40
    expected = {r["id"]: upstream_mmsu_item(r) for r in rows}
    assert {"correct", "wrong", "skipped"} <= set(expected.values())
    task = mmsu_task()
    by_id = {r["id"]: r for r in rows}
    records = run_predictions(task, [mmsu_sample(r, "kept") for r in rows], "original",
                              lambda p: by_id[p.key]["response"], tmp_path)
    got = {r["sample_id"]: as_outcome(r["scores"]["accuracy_official"]) for r in records}
    assert got == expected
    figure, total = upstream_mmsu_figure(rows)
    value, n, excluded = official_figure(task, records)
    assert (value, n, excluded) == (pytest.approx(figure, abs=5e-5), total, len(rows) - total)


@pytest.mark.parametrize("layout", ["kept", "compact"])
@pytest.mark.parametrize("mode", ["balanced", "circular"])
def test_shown_letters_map_back_to_upstream_letters(tmp_path, layout, mode):
    """In a permuted (or padding-dropped) presentation the model names the shown letter of the
    choice it picks; the official score is upstream's score of that choice's upstream letter."""
    rows = random_probe(120, seed=7)
    samples = [mmsu_sample(r, layout) for r in rows]
    rng = random.Random(11)
    picks: dict[str, str] = {}  # key -> upstream letter picked

    def respond(p):
        letters = p.sample.metadata[MMSU_UPSTREAM]["letters"]
        shown_upstream = [letters[i] for i in p.permutation]
        pick = rng.choice(shown_upstream)
        picks[p.key] = pick
        shown = LETTERS[shown_upstream.index(pick)]
        return rng.choice(["{}", "The answer is {}."]).format(shown)

    task = mmsu_task()
    records = run_predictions(task, samples, mode, respond, tmp_path, seed=3)
    by_id = {r["id"]: r for r in rows}
    assert any(r["permutation"] != sorted(r["permutation"]) for r in records)
    for r in records:
        expected = upstream_mmsu_item({**by_id[r["sample_id"]], "response": picks[r["key"]]})
        assert as_outcome(r["scores"]["accuracy_official"]) == expected, r["key"]


# ---------------------------------------------------------------- the scorer's own contract

def _record_for(row, output, layout="kept", error=None):
    s = mmsu_sample({**row, "id": "x"}, layout)
    return {"key": "x", "choices": s.choices, "permutation": list(range(len(s.choices))), "gold": s.answer,
            "answer": s.choices[s.answer], "metadata": s.metadata, "output": output, "error": error}


def test_mmsu_official_non_string_and_error_outputs():
    row = EDGE_ROWS[0]
    for output in (None, 3, 2.5, ["B"], {"a": "B."}, b"B"):
        assert mmsu_official(_record_for(row, output)) is None
    assert mmsu_official(_record_for(row, None, error="timeout")) is None  # a null response upstream
    assert mmsu_official(_record_for(row, "B")) == 1.0


def test_mmsu_official_needs_the_upstream_fields():
    rec = _record_for(EDGE_ROWS[0], "B")
    with pytest.raises(NotImplementedError, match="mmsu_upstream"):
        mmsu_official({**rec, "metadata": {}})
    broken = {k: v for k, v in rec["metadata"][MMSU_UPSTREAM].items() if k != "answer_gt"}
    with pytest.raises(ValueError, match="answer_gt"):
        mmsu_official({**rec, "metadata": {MMSU_UPSTREAM: broken}})
    short = {**rec["metadata"][MMSU_UPSTREAM], "letters": ["A", "B"]}
    with pytest.raises(ValueError, match="'x'.*4 choices"):
        mmsu_official({**rec, "metadata": {MMSU_UPSTREAM: short}})
    with pytest.raises(ValueError, match="letters"):
        mmsu_upstream_fields(EDGE_ROWS[0], ["A", "A"])
    # a missing field reads as "", as upstream's record.get(field, '')
    assert mmsu_upstream_fields({"choice_a": "x"}, ["A"])["choice_d"] == ""


# ---------------------------------------------------------------- through the MMSU loader

def _wav() -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(160, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _mmsu_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    """The rows as an HF-style MMSU parquet shard (string columns, audio struct)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"task_name": "t", "category": "Perception", "sub-category": "s", "sub-sub-category": "ss",
            "linguistics_sub_discipline": "l", "question": "Which?"}
    cols = ("id", *FIELDS, "answer_gt", *meta)
    table = {c: pa.array([r.get(c, meta.get(c)) for r in rows], type=pa.string()) for c in cols}
    table["audio"] = pa.array([{"bytes": _wav(), "path": f"{r['id']}.wav"} for r in rows],
                              type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table(table), path)
    return path


def test_mmsu_loader_default_prompt_item_for_item(tmp_path):
    """The loader's samples (padding dropped under the default prompt), presented balanced; the model
    picks a choice and names its shown letter, or answers null: the official score is upstream's
    score of that choice's upstream letter (or "skipped"), item for item."""
    from evalkit.tasks.mmsu import MMSU

    rows = random_probe(160, seed=5)
    task = MMSU.from_args({"data": str(_mmsu_parquet(rows, tmp_path / "mmsu.parquet"))})
    samples = task.load().samples
    assert [s.id for s in samples] == [r["id"] for r in rows]
    assert any(len(s.choices) < 4 for s in samples)
    rng = random.Random(2)
    picks: dict[str, Any] = {}

    def respond(p):
        if rng.random() < 0.1:
            picks[p.key] = None
            return None
        upstream = [p.sample.metadata[MMSU_UPSTREAM]["letters"][i] for i in p.permutation]
        picks[p.key] = rng.choice(upstream)
        return f"The answer is {LETTERS[upstream.index(picks[p.key])]}."

    records = run_predictions(task, samples, "balanced", respond, tmp_path, seed=9)
    by_id = {r["id"]: r for r in rows}
    expected = {r["key"]: upstream_mmsu_item({**by_id[r["sample_id"]], "response": picks[r["key"]]})
                for r in records}
    assert {"correct", "wrong", "skipped"} <= set(expected.values())
    assert {r["key"]: as_outcome(r["scores"]["accuracy_official"]) for r in records} == expected


def test_mmsu_loader_upstream_prompt_end_to_end(tmp_path):
    """The loader's samples under `-T prompt=upstream` (every position kept, as upstream shows them),
    the probes' upstream responses, the official figure item for item."""
    from evalkit.tasks.mmsu import MMSU

    rows = edge_probe() + [{**_padded_middle(i), "response": "D" if i % 3 else "C"} for i in range(12)]
    task = MMSU.from_args({"data": str(_mmsu_parquet(rows, tmp_path / "mmsu.parquet")), "prompt": "upstream"})
    samples = task.load().samples
    assert [s.id for s in samples] == [r["id"] for r in rows]
    by_id = {r["id"]: r for r in rows}
    records = run_predictions(task, samples, "original", lambda p: by_id[p.key]["response"], tmp_path)
    text = records[-1]["prompt"][0]["content"][-1]["text"]
    assert text.endswith("A. a11\nB. b11\nC. None\nD. d11")  # upstream prints the padding
    got = {r["sample_id"]: as_outcome(r["scores"]["accuracy_official"]) for r in records}
    assert got == {r["id"]: upstream_mmsu_item(r) for r in rows}
    figure, total = upstream_mmsu_figure(rows)
    assert official_figure(task, records)[:2] == (pytest.approx(figure, abs=5e-5), total)


# ================================================================ MMAU / MMAR: the upstream rule, re-implemented

def upstream_string_match(answer: str, prediction: str, choices: list[str]) -> bool:
    def words(text: str) -> set[str]:
        return {m.group(0) for m in re.finditer(r"\b\w+\b", text.lower())}

    pred, gold = words(prediction), words(answer)
    if len(pred) == 0:
        return False
    wrong: set[str] = set()
    for c in choices:
        if words(c) != gold:
            wrong |= words(c) - gold
    return gold.issubset(pred) and pred.isdisjoint(wrong)


def upstream_mmau_run(items: list[dict[str, Any]], key: str = "model_output") -> dict[str, int]:
    """id -> match for every item the upstream loop counts (items without `key` are skipped)."""
    return {str(it["id"]): int(upstream_string_match(it["answer"], it[key], it["choices"]))
            for it in items if key in it}


MMAU_EDGE_OUTPUTS = [
    lambda r: "", lambda r: "   ", lambda r: "...", lambda r: "\n\n", lambda r: None, lambda r: RuntimeError("boom"),
    lambda r: r["answer"], lambda r: r["answer"].upper(), lambda r: f"  {r['answer']}\n", lambda r: LETTERS[r["gold"]],
    lambda r: f"({LETTERS[r['gold']]}) {r['answer']}", lambda r: f"The answer is {r['answer']}.",
    lambda r: r["choices"][(r["gold"] + 1) % len(r["choices"])],
    lambda r: f"{r['answer']} or {r['choices'][(r['gold'] + 1) % len(r['choices'])]}",
    lambda r: r["answer"].replace(" ", "\n"), lambda r: f"«{r['answer']}»", lambda r: "答案",
]


def _mmau_records(task, samples, mode):
    """test_tasks.make_records with the edge outputs taken in turn, record by record."""
    from test_tasks import make_records

    turn = iter(range(1 << 30))
    return make_records(task, samples, lambda r: MMAU_EDGE_OUTPUTS[next(turn) % len(MMAU_EDGE_OUTPUTS)](r), mode, 5)


def test_mmau_official_matches_upstream_on_its_exported_file(tmp_path):
    """MMAU edge outputs (empty, blank, punctuation only, null, a model error, letters, prose, other
    scripts) on 170 test-mini items, balanced order; upstream's loop run on the file evalkit's
    `export` writes for it: the same match item for item and the same figure."""
    path = SHARED / "mmau" / "mmau-test-mini.json"
    if not path.exists():
        pytest.skip(f"{path} not present")
    from evalkit.tasks.mmau import MMAU

    task = MMAU.from_args({"data": str(path)})
    samples = task.load().samples[:170]
    records = _mmau_records(task, samples, "balanced")
    (name,) = task.export(records, tmp_path)
    items = json.loads((tmp_path / name).read_text(encoding="utf-8"))
    expected = upstream_mmau_run(items)
    got = {r["sample_id"]: int(r["scores"]["accuracy_official"]) for r in records}
    assert got == expected
    assert 0 < sum(got.values()) < len(got)
    figure = 100 * sum(expected.values()) / len(expected)
    m = task.aggregate(records)["metrics"]["accuracy_official"]
    assert (m["value"], m["n"]) == (pytest.approx(figure, abs=5e-5), len(expected))


def test_mmar_official_matches_upstream_rule(tmp_path):
    path = SHARED / "mmar" / "MMAR-meta.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not present")
    from evalkit.tasks.mmar import MMAR

    assert MMAR.official is mmau_official
    task = MMAR.from_args({"data": str(path)})
    samples = task.load().samples[:170]
    records = _mmau_records(task, samples, "circular")
    for r in records:
        # MMAR's file holds the upstream order; the token-set rule does not depend on it
        out = r["output"] if r["output"] is not None else ""
        assert r["scores"]["accuracy_official"] == float(upstream_string_match(r["answer"], out, r["choices"]))


def test_mmau_official_non_string_output_is_an_error():
    rec = {"key": "k1", "output": 3, "choices": ["3", "4"], "answer": "3", "error": None}
    with pytest.raises(AttributeError):
        upstream_string_match("3", 3, ["3", "4"])  # upstream cannot score it either
    with pytest.raises(TypeError, match="'k1'.*int"):
        mmau_official(rec)
