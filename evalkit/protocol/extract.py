"""Answer extraction for multiple-choice responses. It never guesses.

Stages, tried in order (the first that fires is logged as `extraction_stage`):
  letter            the whole response (or its first line) is a letter: "B", "(B)", "B.", "B)", "**B**"
  answer_phrase     "Answer: B", "The answer is B", "the correct option is (B) Dog"
  letter_with_text  the response opens with a letter and a separator: "B. Dog", "(B) Dog"
  option_text       the response names exactly one option's text
Failures (scored wrong and counted): "empty", "ambiguous" (two different answers
found, e.g. "A or B", or a letter whose text names another option), "none".
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from evalkit.protocol.choices import LETTERS

FAILURE_STAGES = frozenset({"empty", "ambiguous", "none", "error"})


@dataclass(frozen=True)
class Extraction:
    index: int | None
    stage: str

    @property
    def failed(self) -> bool:
        return self.index is None


def normalize_text(s: str) -> str:
    """Lowercase, unicode-normalized, punctuation to spaces, single-spaced."""
    s = unicodedata.normalize("NFKC", s).lower()
    s = re.sub(r"[^\w\s]", " ", s)
    return " ".join(s.split())


_BARE = re.compile(r"^\s*(?:\(\s*([A-Za-z])\s*\)|\[\s*([A-Za-z])\s*\]|([A-Z]))\s*[.:)]?\s*$")
_PHRASE = re.compile(
    r"(?i:\b(?:answer|option|choice)\b(?:\s+(?:is|would\s+be|should\s+be|will\s+be))?\s*[:\-]?\s*)"
    r"(?:\(\s*([A-Za-z])\s*\)|([A-Z])(?![\w'’]))"
    r"(?=\s*[.:)\-]?\s*([^\n]*))")  # the tail is looked at, not consumed: a later answer still matches
_LEADING = re.compile(r"^\s*(?:\(\s*([A-Za-z])\s*\)|([A-Z])\s*[.:)])\s*(.*)$", re.S)


def _clean(response: str) -> str:
    return re.sub(r"[*_`#]+", "", response).strip()


def _letter(groups: tuple, n: int) -> int | None:
    for g in groups:
        if g:
            i = LETTERS.index(g.upper())
            return i if i < n else None
    return None


def _text_matches(text: str, choices: list[str]) -> set[str]:
    """Normalized option texts that `text` names, longest-match wins."""
    t = normalize_text(text)
    if not t:
        return set()
    norm = [normalize_text(c) for c in choices]
    exact = {c for c in norm if c and c == t}
    if exact:
        return exact
    found = {c for c in norm if c and re.search(rf"(?<!\w){re.escape(c)}(?!\w)", t)}
    # drop options contained in a longer matched option ("man" inside "an adult man")
    return {c for c in found if not any(c != o and re.search(rf"(?<!\w){re.escape(c)}(?!\w)", o) for o in found)}


def _consistent(index: int, tail: str, choices: list[str]) -> bool:
    """A letter directly followed by an option's text must name its own option
    ("(B) Dog" with B = Cat is ambiguous); an explanation after it is fine."""
    t = normalize_text(tail)
    named = {c for c in (normalize_text(x) for x in choices) if c and (t == c or t.startswith(c + " "))}
    return not named or normalize_text(choices[index]) in named


def extract_choice(response: str | None, choices: list[str]) -> Extraction:
    n = len(choices)
    if response is None or not response.strip():
        return Extraction(None, "empty")
    text = _clean(response)
    first_line = text.splitlines()[0] if text else ""
    for candidate in (text, first_line):
        m = _BARE.match(candidate)
        if m:
            i = _letter(m.groups(), n)
            return Extraction(i, "letter") if i is not None else Extraction(None, "none")

    hits = [(_letter(m.groups()[:2], n), m.group(3) or "") for m in _PHRASE.finditer(text)]
    hits = [(i, tail) for i, tail in hits if i is not None]
    if hits:
        letters = {i for i, _ in hits}
        if len(letters) > 1 or not all(_consistent(i, t, choices) for i, t in hits):
            return Extraction(None, "ambiguous")
        return Extraction(hits[0][0], "answer_phrase")

    m = _LEADING.match(text)
    if m:
        i = _letter(m.groups()[:2], n)
        if i is not None:
            if not _consistent(i, m.group(3), choices):
                return Extraction(None, "ambiguous")
            return Extraction(i, "letter_with_text")

    names = _text_matches(text, choices)
    if len(names) == 1:
        (name,) = names
        return Extraction(next(j for j, c in enumerate(choices) if normalize_text(c) == name), "option_text")
    if len(names) > 1:
        return Extraction(None, "ambiguous")
    return Extraction(None, "none")


def is_correct(extraction: Extraction, choices: list[str], gold: int) -> bool:
    """Identical option strings are indistinguishable, so correctness compares texts."""
    return extraction.index is not None and choices[extraction.index] == choices[gold]
