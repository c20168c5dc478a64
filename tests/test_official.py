"""Upstream scorers: unit behaviour and the figures measured upstream on mmau-test-mini."""
from __future__ import annotations

from pathlib import Path

import pytest

from evalkit.protocol.choices import LETTERS, present
from evalkit.tasks.official import (
    MMSU_UPSTREAM,
    mmau_official,
    mmsu_letter,
    mmsu_official,
    mmsu_upstream_fields,
    token_set_correct,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MMAU_JSON = SHARED / "mmau" / "mmau-test-mini.json"


# ---------------------------------------------------------------- token-set rule (MMAU / MMAR)

@pytest.mark.parametrize("pred,expected", [
    ("Man", True),
    ("man.", True),
    ("The speaker is a man", True),      # no wrong-choice token
    ("A man, not a woman", False),       # shares "woman"
    ("B", False),                        # no letter handling
    ("", False),
    ("   ", False),
    (None, False),
    ("Robot or Man", False),
])
def test_token_set_rule(pred, expected):
    assert token_set_correct(pred, ["Man", "Woman", "Child", "Robot"], "Man") is expected


def test_token_set_shared_words_and_duplicates():
    choices = ["an adult man", "a man", "a woman", "a man"]
    # "a man": tokens {a, man}; incorrect tokens = {adult, an} from choice 0 and {woman} from choice 2;
    # the duplicate "a man" has the answer's token set and contributes nothing
    assert token_set_correct("a man", choices, "a man")
    assert not token_set_correct("an adult man", choices, "a man")
    assert token_set_correct("man a", choices, "a man")  # order and repetition do not matter


def test_mmau_official_record_fields():
    rec = {"output": "Woman", "choices": ["Man", "Woman"], "answer": "Woman", "error": None}
    assert mmau_official(rec) == 1.0
    assert mmau_official({**rec, "output": None}) == 0.0
    assert mmau_official({**rec, "error": "timeout", "output": None}) == 0.0
    assert mmau_official({**rec, "output": "Man"}) == 0.0


# ---------------------------------------------------------------- reproduction on mmau-test-mini

@pytest.fixture(scope="module")
def mmau_original_records():
    if not MMAU_JSON.exists():
        pytest.skip(f"{MMAU_JSON} not present")
    from evalkit.tasks.mmau import MMAU

    task = MMAU.from_args({"data": str(MMAU_JSON)})
    samples = task.load().samples
    assert len(samples) == 1000
    recs = []
    for p in present(samples, "original", 0):
        recs.append({"key": p.key, "sample_id": p.sample.id, "rotation": None, "choices": p.choices,
                     "permutation": p.permutation, "gold": p.gold, "answer": p.choices[p.gold],
                     "metadata": p.sample.metadata, "cluster": p.sample.cluster(), "error": None})
    return task, recs


FIGURES = {  # PROTOCOLS.md, measured with the upstream script
    "gold text": (lambda r: r["answer"], 100.0),
    "bare letter": (lambda r: LETTERS[r["gold"]], 0.2),
    "(letter) text": (lambda r: f"({LETTERS[r['gold']]}) {r['answer']}", 96.7),
    "The answer is X.": (lambda r: f"The answer is {r['answer']}.", 90.7),
    "always first choice": (lambda r: r["choices"][0], 39.8),
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_mmau_official_reproduces_upstream_figures(mmau_original_records, name):
    task, recs = mmau_original_records
    make, expected = FIGURES[name]
    scored = [{**r, "output": make(r)} for r in recs]
    acc = 100 * sum(mmau_official(r) for r in scored) / len(scored)
    assert round(acc, 1) == expected
    # the same figure through the task's scorer and aggregate (accuracy_official)
    scored = [{**r, **task.score(r)} for r in scored]
    agg = task.aggregate(scored)
    assert agg["metrics"]["accuracy_official"]["value"] == pytest.approx(expected)
    assert agg["metrics"]["accuracy_official"]["n"] == 1000


def test_mmau_letter_uses_gold_position_not_first_duplicate(mmau_original_records):
    _, recs = mmau_original_records
    dup = [r for r in recs if len(set(r["choices"])) != len(r["choices"])]
    assert len(dup) == 27
    # the gold index is the first choice equal to the answer text
    assert all(r["choices"].index(r["answer"]) == r["gold"] for r in dup)


# ---------------------------------------------------------------- MMSU quirks

def _mmsu(output, choices=("cat", "dog", "bird", "fish"), answer="cat", error=None):
    """A record with every choice real (no padding), shown in upstream order."""
    row = {**dict(zip(("choice_a", "choice_b", "choice_c", "choice_d"), choices)), "answer_gt": answer}
    letters = "ABCD"[:len(choices)]
    return {"key": "k", "output": output, "choices": list(choices), "permutation": list(range(len(choices))),
            "answer": answer, "error": error, "metadata": {MMSU_UPSTREAM: mmsu_upstream_fields(row, letters)}}


@pytest.mark.parametrize("output,expected", [
    ("A", 1.0),
    ("B", 0.0),
    ("Answer: B", 1.0),           # p[0] == "A": scores as A
    ("According to the audio, B", 1.0),
    ("b", None),                  # lowercase: wrong format, left out
    ("The answer is B", None),    # no final period: wrong format
    ("The answer is A.", 1.0),    # p[-2]
    ("The answer is B.", 0.0),
    ("the answer is\nA.\n", 1.0),  # newlines removed before p[-2]
    ("The answer is A\n.", 1.0),   # ... and only then is p[-2] read
    ("", 0.0),
    ("   ", 0.0),
    ("None", 0.0),
    (None, None),                 # upstream's .strip() fails: left out
])
def test_mmsu_official_quirks(output, expected):
    assert mmsu_official(_mmsu(output)) == expected


def test_mmsu_official_letter_beyond_choices_and_errors():
    assert mmsu_official(_mmsu("C", choices=("yes", "no"), answer="yes")) == 0.0
    assert mmsu_official(_mmsu("A", error="boom")) is None  # an error is a null response upstream
    assert mmsu_official(_mmsu("D", choices=("a", "b", "c", "None"), answer="None")) == 1.0
    assert mmsu_letter("x") is None
    assert mmsu_letter("...is D.") == "D"


# ---------------------------------------------------------------- edges the mutation run found untested

def test_token_set_lowercases_as_upstream_does_not_casefold():
    """Upstream tokenizes `text.lower()`. "Straße".lower() keeps the ß while "STRASSE".lower() is
    "strasse": two different words, so "strasse" does not name the gold "Straße" (an upper-casing
    or case-folding tokenizer would merge them)."""
    assert not token_set_correct("strasse", ["Straße", "Weg"], "Straße")
    assert token_set_correct("STRASSE", ["Strasse", "Weg"], "Strasse")
    assert token_set_correct("straße", ["Straße", "Weg"], "Straße")


def test_mmau_official_a_model_error_is_wrong_whatever_the_output():
    """A record with an error scores 0.0 even when its output text would match the gold."""
    rec = {"output": "Woman", "choices": ["Man", "Woman"], "answer": "Woman"}
    assert mmau_official({**rec, "error": None}) == 1.0
    assert mmau_official({**rec, "error": "ModelFailure: timeout"}) == 0.0
    assert mmau_official({**rec, "choices": None, "error": None}) == 1.0  # no choices: no wrong tokens


def test_official_errors_name_the_sample_id_when_a_record_has_no_key():
    """Records straight from a run carry `sample_id` (exports add `key`): the messages name it."""
    with pytest.raises(TypeError, match=r"record 'clip-7': output is int"):
        mmau_official({"sample_id": "clip-7", "output": 3, "choices": ["3"], "answer": "3", "error": None})
    rec = {**_mmsu("A"), "sample_id": "s-9"}
    del rec["key"]
    with pytest.raises(NotImplementedError, match=r"record 's-9' has no metadata"):
        mmsu_official({**rec, "metadata": {}})
    fields = rec["metadata"][MMSU_UPSTREAM]
    broken = {k: v for k, v in fields.items() if k not in ("choice_d", "answer_gt")}
    with pytest.raises(ValueError, match=r"record 's-9': metadata\['mmsu_upstream'\] lacks choice_d, answer_gt$"):
        mmsu_official({**rec, "metadata": {MMSU_UPSTREAM: broken}})
    short = {**fields, "letters": ["A", "B"]}
    with pytest.raises(ValueError, match=r"record 's-9': 4 choices but 2 upstream letters \['A', 'B'\]"):
        mmsu_official({**rec, "metadata": {MMSU_UPSTREAM: short}})


def test_mmsu_upstream_fields_missing_answer_reads_as_empty():
    """upstream reads `record.get('answer_gt', '')`: a row without it stores "" (so a "" padding
    option would then match, as upstream's comparison does)."""
    fields = mmsu_upstream_fields({"choice_a": "x", "choice_b": "y"}, ["A", "B"])
    assert fields == {"choice_a": "x", "choice_b": "y", "choice_c": "", "choice_d": "", "answer_gt": "",
                      "letters": ["A", "B"]}


def test_mmsu_official_without_a_permutation_reads_the_upstream_order():
    """A record with no `permutation` (an `--choices original` log read back) maps shown letter
    k to upstream letter k."""
    rec = _mmsu("B", choices=("dog", "cat", "cow"), answer="cat")
    del rec["permutation"]
    assert mmsu_official(rec) == 1.0
    assert mmsu_official({**rec, "output": "A"}) == 0.0
    assert mmsu_official({**rec, "permutation": [1, 0, 2], "output": "A"}) == 1.0  # shown A is upstream B
