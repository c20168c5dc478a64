"""Upstream ("official") scorers, reproduced by behaviour, quirks included.

These give `accuracy_official`, the figure a benchmark's own script would
report for the same raw outputs. They are deliberately *not* fixed: a quirk
that changes the number upstream changes it here too. evalkit's own
`accuracy` (protocol extraction) is reported beside them.

Each scorer is a pure function of a sample record (docs/records.md): it reads
`output`, `error`, `choices` (in the order shown to the model) and `answer`
(the gold text); MMSU's also reads `permutation` and the raw upstream fields
the loader keeps in `metadata` (`mmsu_upstream_fields`). It returns 1.0 / 0.0,
or None for "not counted" (the item leaves the denominator, as upstream drops
it).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_WORD = re.compile(r"\b\w+\b")


def _tokens(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def token_set_correct(prediction: str | None, choices: list[str], answer: str) -> bool:
    """The MMAU / MMAR `string_match` rule (Sakshi113/MMAU `evaluation.py`,
    ddlBoJack/MMAR `code/evaluation.py`).

    - tokens = the set of lowercase `\\b\\w+\\b` words (so punctuation and order
      do not matter, and repeated words count once);
    - an empty prediction is wrong;
    - the "incorrect tokens" are, for every choice whose token set differs from
      the answer's, that choice's tokens minus the answer's tokens;
    - correct iff every answer token is in the prediction and the prediction
      shares no incorrect token.

    Quirks (measured on mmau-test-mini, see tests/test_official.py):
    - there is no letter handling: a bare "B" is wrong unless the gold text
      itself contains the token "b" (0.2% of test-mini is scored correct this way);
    - a letter prefix "(A) gold" is penalized whenever "a" (etc.) is a word in a
      wrong choice: 96.7% instead of 100%;
    - any wrong-choice word in surrounding prose makes it wrong
      ("The answer is X." scores 90.7%: "the", "is" appear in other choices);
    - choices that share all words with the answer never penalize, and a
      choice identical to the answer (duplicates) contributes nothing.
    """
    if prediction is None or not prediction.strip():
        return False
    pred = _tokens(prediction)
    if not pred:
        return False
    gold = _tokens(answer)
    incorrect: set[str] = set()
    for c in choices:
        ct = _tokens(c)
        if ct != gold:
            incorrect |= ct - gold
    return gold <= pred and not (pred & incorrect)


def mmau_official(record: dict[str, Any]) -> float:
    """MMAU's official accuracy for one record (also used for MMAR).

    Upstream reads the raw text under `model_output` (MMAU; its README says
    `model_prediction`, but the script reads `model_output`) or
    `answer_prediction` (MMAR's current script; the May-2025 one read
    `model_prediction`); here it is the record's `output`.

    Edge cases, as upstream scores the file evalkit writes for it (MMAU's
    `export`, which writes "" for a null output):
    - an empty, blank or punctuation-only response has no tokens: wrong;
    - a model error or a null output scores 0.0 (counted wrong, never
      dropped). Upstream skips an item whose key is absent and crashes on a
      JSON null (its tokenizer calls `.lower()`), so neither has a figure to
      match; counting it wrong keeps a failing model from gaining;
    - a non-string output is a TypeError naming the record: upstream cannot
      score it either, and no adapter should produce one.
    """
    if record.get("error") is not None:
        return 0.0
    output = record.get("output")
    choices = record.get("choices") or []
    answer = record.get("answer")
    if output is None or answer is None:
        return 0.0
    if not isinstance(output, str):
        raise TypeError(f"mmau_official: record {record.get('key', record.get('sample_id'))!r}: output is "
                        f"{type(output).__name__}, not text; upstream's token-set rule cannot score it")
    return float(token_set_correct(output, list(choices), str(answer)))


_MMSU_LETTERS = "ABCD"
#: sample-metadata key under which the MMSU loader keeps what upstream's scorer reads (mmsu_upstream_fields)
MMSU_UPSTREAM = "mmsu_upstream"
MMSU_CHOICE_FIELDS = ("choice_a", "choice_b", "choice_c", "choice_d")


def mmsu_upstream_fields(row: Mapping[str, Any], letters: Sequence[str]) -> dict[str, Any]:
    """What the MMSU loader stores in `sample.metadata[MMSU_UPSTREAM]` for `mmsu_official`.

    - `choice_a`..`choice_d` and `answer_gt` exactly as the dataset row holds
      them: upstream compares them unstripped ("dog " is not "dog") and a null
      padding option stays null; a missing field reads as "", as upstream's
      `record.get(field, '')` does;
    - `letters`: the upstream letter (A-D) of each entry of the sample's
      `choices`, in that order: ["A", "B", "D"] when the loader drops a padding
      option C, "ABCD" when it keeps every position.
    """
    letters = list(letters)
    if len(set(letters)) != len(letters) or any(x not in _MMSU_LETTERS for x in letters):
        raise ValueError(f"mmsu_upstream_fields: letters must be distinct letters from A-D, got {letters}")
    fields = {f: row.get(f, "") for f in MMSU_CHOICE_FIELDS}
    return {**fields, "answer_gt": row.get("answer_gt", ""), "letters": letters}


def mmsu_letter(response: object) -> str | None:
    """The letter MMSU's `mmsu_evaluation.py` reads from a response, "" for a
    response it counts wrong outright (empty or "None"), None for a response it
    leaves out of the denominator.

    Upstream: a response that is not a string (JSON null, a number, a list)
    fails `response.strip()` and is skipped ("Error prediction!"). Otherwise
    p = response.strip() with newlines removed; if p[0] is A-D it is the
    letter; else if p[-2] is A-D (as in "... is B.") it is; otherwise the item
    is reported as "Wrong format" and skipped.
    """
    if not isinstance(response, str):
        return None
    p = response.strip().replace("\n", "")
    if p == "" or p == "None":
        return ""
    if p[0] in _MMSU_LETTERS:
        return p[0]
    if len(p) >= 2 and p[-2] in _MMSU_LETTERS:
        return p[-2]
    return None


def _mmsu_upstream(record: dict[str, Any]) -> dict[str, Any]:
    key = record.get("key", record.get("sample_id"))
    fields = (record.get("metadata") or {}).get(MMSU_UPSTREAM)
    if fields is None:
        raise NotImplementedError(
            f"mmsu_official: record {key!r} has no metadata[{MMSU_UPSTREAM!r}] (the raw choice_a..choice_d, "
            f"answer_gt and the upstream letter of each choice, which upstream's scorer compares); the MMSU loader "
            f"(tasks/mmsu.py) must store mmsu_upstream_fields(row, letters) for every sample")
    missing = [f for f in (*MMSU_CHOICE_FIELDS, "answer_gt", "letters") if f not in fields]
    if missing:
        raise ValueError(f"mmsu_official: record {key!r}: metadata[{MMSU_UPSTREAM!r}] lacks {', '.join(missing)}")
    if len(fields["letters"]) != len(record["choices"]):
        raise ValueError(f"mmsu_official: record {key!r}: {len(record['choices'])} choices but "
                         f"{len(fields['letters'])} upstream letters {fields['letters']}")
    return fields


def mmsu_official(record: dict[str, Any]) -> float | None:
    """MMSU's official accuracy for one record (dingdongwang/MMSU `mmsu_evaluation.py`).

    The response's letter is read as upstream reads it (`mmsu_letter`), taken
    as the choice shown at that position, mapped through the record's
    `permutation` to that choice's upstream letter, and scored as upstream
    scores that letter: correct iff the raw `choice_<letter>` equals the raw
    `answer_gt` (metadata[MMSU_UPSTREAM], unstripped; evalkit's own `accuracy`
    compares stripped text). So with every position kept (choices A, B, None, D
    shown as upstream shows them) "D" is D; with the padding dropped the model
    saw three options and "C" names upstream's D.

    Quirks reproduced on purpose:
    - "Answer: B" scores as A (p[0] is "A"), and so does any response starting
      with a capital A-D ("According to ...", "Based on ..." -> B, "Clearly" -> C);
    - "b" (lowercase) and "The answer is B" (no final period) are "Wrong
      format": None, left out of the denominator;
    - "... the answer is B." uses p[-2];
    - a null or non-string response is left out (upstream's `.strip()` fails
      and it skips the item); so is a model error, whose output is null: an
      error is what a null response is in upstream's input file (the
      `predictions` adapter turns a null prediction into an error). evalkit's
      own `accuracy` counts both wrong; `extra.official_excluded` counts them;
    - empty / "None" responses count as wrong (0.0);
    - a letter the model was not shown (e.g. "C" on a two-option item with the
      padding dropped) is wrong; with the padding kept, upstream compares the
      padding value (null or "") with answer_gt, which is wrong too.
    The older MMSU_Bench copy reuses the previous item's letter for an empty
    response; that order-dependent bug is not reproduced.
    """
    fields = _mmsu_upstream(record)
    if record.get("error") is not None:
        return None
    letter = mmsu_letter(record.get("output"))
    if letter is None:
        return None
    if letter == "":
        return 0.0
    shown = _MMSU_LETTERS.index(letter)
    n = len(record["choices"])
    if shown >= n:
        return 0.0
    permutation = record.get("permutation") or list(range(n))
    upstream_letter = fields["letters"][permutation[shown]]
    return float(fields[f"choice_{upstream_letter.lower()}"] == fields["answer_gt"])
