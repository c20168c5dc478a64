"""Upstream ("official") scorers, reproduced by behaviour, quirks included.

These give `accuracy_official`, the figure a benchmark's own script would
report for the same raw outputs. They are deliberately *not* fixed: a quirk
that changes the number upstream changes it here too. evalkit's own
`accuracy` (protocol extraction) is reported beside them.

Each scorer is a pure function of a sample record (docs/records.md): it reads
`output`, `error`, `choices` (in the order shown to the model) and `answer`
(the gold text). It returns 1.0 / 0.0, or None for "not counted" (the item
leaves the denominator, as upstream drops it).
"""
from __future__ import annotations

import re
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
    `model_prediction`); here it is the record's `output`. Upstream skips items
    without that key; evalkit always has a record, and a model error or a null
    output scores 0.0 (counted wrong, never dropped).
    """
    if record.get("error") is not None:
        return 0.0
    output = record.get("output")
    choices = record.get("choices") or []
    answer = record.get("answer")
    if output is None or answer is None:
        return 0.0
    return float(token_set_correct(output, list(choices), str(answer)))


_MMSU_LETTERS = "ABCD"


def mmsu_letter(response: str | None) -> str | None:
    """The letter MMSU's `mmsu_evaluation.py` reads from a response, "" for a
    response it counts wrong outright (empty or "None"), None for "Wrong format".

    p = response.strip() with newlines removed; if p[0] is A-D it is the
    letter; else if p[-2] is A-D (as in "... is B.") it is; otherwise the item
    is reported as "Wrong format" and left out of the denominator.
    """
    if response is None:
        return ""
    p = response.strip().replace("\n", "")
    if p == "" or p == "None":
        return ""
    if p[0] in _MMSU_LETTERS:
        return p[0]
    if len(p) >= 2 and p[-2] in _MMSU_LETTERS:
        return p[-2]
    return None


def mmsu_official(record: dict[str, Any]) -> float | None:
    """MMSU's official accuracy for one record (dingdongwang/MMSU `mmsu_evaluation.py`).

    Quirks reproduced on purpose:
    - "Answer: B" scores as A (p[0] is "A"), and so does any response starting
      with a capital A-D ("According to ...", "Based on ..." -> B, "Clearly" -> C);
    - "b" (lowercase) and "The answer is B" (no final period) are "Wrong
      format": None, left out of the denominator;
    - "... the answer is B." uses p[-2];
    - empty / "None" responses (and model errors) count as wrong (0.0);
    - correct iff the letter's choice text equals the gold text, compared on
      the choices in the order shown to the model; a letter beyond the shown
      choices (e.g. "C" on a two-option item) is wrong, as upstream compares
      it with the empty padding. The older MMSU_Bench copy reuses the previous
      item's letter for an empty response; that order-dependent bug is not
      reproduced.
    """
    if record.get("error") is not None:
        return 0.0
    letter = mmsu_letter(record.get("output"))
    if letter is None:
        return None
    if letter == "":
        return 0.0
    choices = record.get("choices") or []
    i = _MMSU_LETTERS.index(letter)
    if i >= len(choices):
        return 0.0
    return float(choices[i] == record.get("answer"))
