"""Answer extraction for multiple-choice responses. It never guesses.

The response is read as answer *spans*: the whole response, its first line, and the
text after each answer phrase ("Answer:", "The answer is", "the correct option is").
A span can name a choice by letter ("B", "(B)", "B.", "B)", "**B**"), by letter and
text ("(B) Dog", "B. Dog"), or by an option's text ("Dog", "A piano" when "A piano"
is an option). Stages, tried in order (the first that fires is logged):
  letter            the whole response (or its first line) is a letter
  letter_with_text  the response opens with a letter, a separator and text
  option_text       the response is one option's text, or names exactly one option
  answer_phrase     every answer phrase in the response names the same choice
Failures (scored wrong and counted): "empty"; "ambiguous" (two different answers,
e.g. "The answer is A. No, B.", a letter whose text names another option, or a
bare "D" when "D" is also the text of another option); "none".
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


_PROSE_PUNCT = re.compile(r"[.,;!?\"'`“”‘’\[\]{}]+")


def normalize_text(s: str) -> str:
    """Lowercase, unicode-normalized, prose punctuation and underscores to spaces,
    single-spaced. Symbols that carry meaning in options (# : / ( ) + -) are kept,
    so "C#:maj/1" and "C:maj/1" stay different."""
    # "*" and "`" go as _clean removes them from responses (markdown), so options match alike
    s = unicodedata.normalize("NFKC", s).lower().replace("_", " ").replace("*", "").replace("`", "")
    return " ".join(_PROSE_PUNCT.sub(" ", s).split())


_PHRASE = re.compile(r"(?i:\b(?:answer|option|choice)\b(?:\s+(?:is|would\s+be|should\s+be|will\s+be))?\s*[:\-]?\s*)")
_LETTER = re.compile(r"\(\s*([A-Za-z])\s*\)|\[\s*([A-Za-z])\s*\]|([A-Z])(?=$|[\s.:)\],;])")


def _clean(response: str) -> str:
    s = re.sub(r"\*\*|__|[*`]", "", response)  # markdown emphasis and code; "tapping_on_glass" keeps its "_"
    return re.sub(r"^\s*#+\s*", "", s, flags=re.M).strip()


def _names(span: str, norm: list[str]) -> set[int]:
    """Options the span *is*: equal to the option, or the option followed by more words
    ("A dog growling, clearly"); the longest such option wins."""
    t = normalize_text(span)
    hits = [i for i, c in enumerate(norm) if c and (t == c or t.startswith(c + " "))]
    if not hits:
        return set()
    longest = max(len(norm[i]) for i in hits)
    return {i for i in hits if len(norm[i]) == longest}


def _read_span(span: str, choices: list[str], norm: list[str], after_phrase: bool) -> tuple[str, set[int]]:
    """('letter'|'letter_with_text'|'option_text'|'ambiguous'|'', candidate indices)."""
    span = span.strip()
    texts = _names(span, norm)
    m = _LETTER.match(span)
    letter, tail, bare = None, "", False
    if m:
        g = next(x for x in m.groups() if x)
        tail = span[m.end():].strip()
        bare = m.group(3) is not None
        # a bare capital needs a separator ("B." "B)" "B:") unless an answer phrase precedes it
        sep = span[m.end():m.end() + 1]
        if not bare or after_phrase or sep in ("", ".", ":", ")", "]", ",", ";") or not tail:
            i = LETTERS.index(g.upper())
            letter = i if i < len(choices) else None
    if letter is None:
        return ("option_text", texts) if texts else ("", set())
    own = {j for j, c in enumerate(norm) if c == norm[letter]}
    tail = re.sub(r"^[.:)\]\-,;]+\s*", "", tail)
    if tail:
        named = _names(tail, norm)
        if texts and not (texts & own):
            # "A piano" where "A piano" is an option: the article reading is the option text
            return ("option_text", texts) if bare else ("ambiguous", texts | {letter})
        if named and not (named & own):
            if bare and span[0] == "A" and span[1:2] == " ":  # "A cat": an article, not option A
                return ("option_text", named)
            return ("ambiguous", named | {letter})
        return ("letter_with_text", {letter})
    if texts and not (texts & own):
        return ("ambiguous", texts | {letter})  # "D" is option C's text and letter D
    return ("letter", {letter})


def _same(indices: set[int], choices: list[str]) -> bool:
    return len({choices[i] for i in indices}) == 1


def _contained(text: str, norm: list[str]) -> set[int]:
    """Options whose text occurs in the response; options inside a longer found one drop out."""
    t = normalize_text(text)
    pattern = lambda c: rf"(?<![\w#]){re.escape(c)}(?![\w#])"
    found = {i for i, c in enumerate(norm) if c and re.search(pattern(c), t)}
    return {i for i in found
            if not any(norm[i] != norm[j] and re.search(pattern(norm[i]), norm[j]) for j in found)}


def extract_choice(response: str | None, choices: list[str]) -> Extraction:
    if response is None or not response.strip():
        return Extraction(None, "empty")
    norm = [normalize_text(c) for c in choices]
    text = _clean(response)
    lines = [line for line in text.splitlines() if line.strip()]
    for span in dict.fromkeys([text] + lines[:1]):
        stage, idx = _read_span(span, choices, norm, after_phrase=False)
        if stage == "ambiguous":
            return Extraction(None, "ambiguous")
        if stage and _same(idx, choices):
            return Extraction(min(idx), stage)

    readings = []
    for m in _PHRASE.finditer(text):
        span = text[m.end():].split("\n", 1)[0]
        stage, idx = _read_span(span, choices, norm, after_phrase=True)
        if stage:
            readings.append((stage, idx))
    if readings:
        union = set().union(*(idx for _, idx in readings))
        if any(s == "ambiguous" for s, _ in readings) or not _same(union, choices):
            return Extraction(None, "ambiguous")
        return Extraction(min(union), "answer_phrase")

    found = _contained(text, norm)
    if found:
        return Extraction(min(found), "option_text") if _same(found, choices) else Extraction(None, "ambiguous")
    return Extraction(None, "none")


def is_correct(extraction: Extraction, choices: list[str], gold: int) -> bool:
    """Identical option strings are indistinguishable, so correctness compares texts."""
    return extraction.index is not None and choices[extraction.index] == choices[gold]
