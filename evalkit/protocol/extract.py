"""Answer extraction for multiple-choice responses. It never guesses.

A response names a choice by letter ("B", "(B)", "B.", "B)", "**B**", fullwidth "（Ｂ）"),
by letter and text ("(B) Cat", "B. Cat"), or by an option's text ("Cat", "A piano" when
"A piano" is an option). Markdown emphasis and headings are removed and the text is NFKC
normalized first. Readings are tried in this order of precedence; the first level that
names anything decides, and the stage that decided is logged:

1. Explicit answer statements: "the answer is", "Answer:", "final/correct answer is",
   "the correct option is", "I choose (option)", "答案是", and every `\\boxed{...}`. The
   text right after each statement (up to the end of its line, or the next line when the
   statement ends a line) is read. Every readable statement must name the same choice:
   stage `answer_phrase`. Statements outrank everything else, so "Cow. The answer is (B)
   Cat." is B and "The answer is B. Option A would moo." is B; two statements that
   disagree fail (`ambiguous`).
2. Option lines: a line that is a label ("(A) Cow", "A.", "B) Cat", "C") or exactly one
   option's text. Two such lines naming different options fail as `option_list`: an echoed
   option list ("(A) Cow\\n(B) Cat\\n(C) Duck"), listed letters ("A\\nB\\nC\\nD"), or two
   answers on separate lines ("Cat\\n\\nDog"). A statement whose own answer starts such a
   list ("Answer:\\n(A) Cow\\n(B) Cat") is an echo too (`option_list`).
3. The leading answer: the whole response, or its first line, is a letter (`letter`), a
   letter with its text (`letter_with_text`), or one option's text, possibly followed by
   more words (`option_text`). A letter whose text names another option ("(B) Dog"), or a
   bare "D" when "D" is also another option's text ("D", "D. It is the root."), fails
   (`ambiguous`). Later lines are read as explanation ("B\\n\\nUnlike a dog, it meows." is
   B) unless they are option lines (level 2); a letter mentioned in the first line that
   disagrees ("B, or maybe (A)") fails.
4. Letter mentions in prose: "(B)", "[B]", "option B", "choice B", "it's B.", "it's B
   because", "B is/seems/would ...", "选项B". All must name the same choice: stage
   `letter_mention` ("I think it's B because it meows; however A could be right" fails).
   A bare capital elsewhere is not read as a letter ("A or B", "a cat", "I").
5. Option texts contained anywhere ("It sounds like a cat."): exactly one (by text) gives
   `option_text`; an option inside a longer found option drops out; several fail.
Failures (scored wrong and counted; FAILURE_STAGES): "empty", "ambiguous", "option_list",
"none" (nothing recoverable, e.g. "I cannot tell.", "The answer is E" with four options),
and "error" (set by the task for a record whose request failed).

Every step reads the response a bounded number of times (each statement reads only up to
the next statement or line end), so extraction is linear in the response length.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from evalkit.protocol.choices import LETTERS

FAILURE_STAGES = frozenset({"empty", "ambiguous", "option_list", "none", "error"})


@dataclass(frozen=True)
class Extraction:
    index: int | None
    stage: str

    @property
    def failed(self) -> bool:
        return self.index is None


_PROSE_PUNCT = re.compile(r"[.,;!?\"'`“”‘’\[\]{}。]+")


@functools.lru_cache(maxsize=64)  # a response is normalized by several levels; options once per run
def normalize_text(s: str) -> str:
    """Lowercase, unicode-normalized, prose punctuation and underscores to spaces,
    single-spaced. Symbols that carry meaning in options (# : / ( ) + -) are kept,
    so "C#:maj/1" and "C:maj/1" stay different."""
    # "*" and "`" go as _clean removes them from responses (markdown), so options match alike
    s = unicodedata.normalize("NFKC", s).lower().replace("_", " ").replace("*", "").replace("`", "")
    return " ".join(_PROSE_PUNCT.sub(" ", s).split())


# What may follow a bare capital for it to be a letter rather than a word ("B." "B)" "B:" "B。").
_SEPARATORS = ("", ".", ":", ")", "]", ",", ";", "。")
_LETTER = re.compile(r"\(\s*([A-Za-z])\s*\)|\[\s*([A-Za-z])\s*\]|([A-Z])(?=$|[\s.:)\],;。])")

# Explicit answer statements (level 1). One regex per phrase, each starting with a literal so
# the regex engine skips ahead to its occurrences (an alternation is tried at every position, 20x
# slower on a 1 MB response); a word boundary is a lookbehind after the literal for the same reason.
_STATEMENTS = tuple(re.compile(p) for p in (
    r"(?i)answer(?<!\wanswer)\s*(?:is\b|would\s+be\b|should\s+be\b|will\s+be\b|must\s+be\b|[:=\-])",
    *(rf"(?i){w}(?<!\w{w})\s+(?:option|choice)\s*(?:is\b|would\s+be\b|should\s+be\b|[:=\-])"
      for w in ("correct", "right", "best", "final")),
    r"I(?<!\wI)\s+(?i:choose|pick|select|go\s+with|(?:would|will|'d|’d)\s+(?:choose|pick|select|go\s+with))\b",
    r"正确(?:答案|选项)\s*(?:是|为|:)",
    r"答案\s*(?:应该是|是|为|:)",
))
# what may stand between a statement and its answer: "Answer: is", "likely", "option", "letter"
_STATEMENT_TAIL = re.compile(
    r"(?i)[ \t]*[:\-]?\s*(?:(?:most\s+)?(?:likely|probably|clearly|definitely)\s+)?(?:(?:option|choice|letter)\b\s*)?")
_BOXED = re.compile(r"\\boxed\s*\{(?:\\text(?:bf)?\s*\{)?([^{}\n]*)\}")

# Letter mentions in prose (level 4): forms where a capital cannot be an article or a pronoun.
# Same construction as _STATEMENTS (literal or character-class start); each has one group.
_MENTIONS = tuple(re.compile(p, re.M) for p in (
    r"[(\[][ \t]*([A-Z])[ \t]*[)\]]",
    *(rf"(?i){w}(?<!\w{w})[ \t]+(?-i:\(?([A-Z])(?![\w'’]))" for w in ("option", "choice", "letter")),
    r"选项\s*\(?([A-Z])(?![A-Za-z])",
    r"([A-HJ-Z])(?<![\w'’][A-HJ-Z])[ \t]+(?=(?:is|was|seems|sounds|would|could|might|must|fits|matches)\b)",
    r"(?i)it(?<!\wit)(?:'s|’s|[ \t]+is|[ \t]+was|[ \t]+would[ \t]+be)[ \t]+"
    r"(?-i:\(?([A-Z])\)?(?=[ \t]*(?:$|[.,;:!?。])|[ \t]+(?:because|since|as)\b))",
))

# An option line's label (level 2): "(A) ...", "[A] ...", "A", "A. ...", "A) ...", "A: ...", after
# optional list markers. [ \t], not \s: a newline run must not be rescanned from every line start.
_LABEL_FORMS = r"[-•+> \t]*(?:\([ \t]*([A-Za-z])[ \t]*\)|\[[ \t]*([A-Za-z])[ \t]*\]|([A-Z])(?=[ \t]*(?:$|[.:)。])))"
_LABEL = re.compile(_LABEL_FORMS, re.M)
_LABEL_LINE = re.compile("^" + _LABEL_FORMS, re.M)


def _clean(response: str) -> str:
    s = unicodedata.normalize("NFKC", response)  # fullwidth "（Ｂ）" reads as "(B)"
    s = re.sub(r"\*\*|__|[*`]", "", s)  # markdown emphasis and code; "tapping_on_glass" keeps its "_"
    if "#" in s:
        # [ \t]* (not \s*): a run of newlines must not be rescanned from every line start
        s = re.sub(r"^[ \t]*#+[ \t]*", "", s, flags=re.M)
    # NFKC again: removing markup can join a letter and a combining mark; the text must be NFKC
    # for _line_normalized to agree with normalize_text
    return unicodedata.normalize("NFKC", s).strip()


def _names(span: str, norm: list[str]) -> set[int]:
    """Options the span *is*: equal to the option, or the option followed by more words
    ("A dog growling, clearly"); the longest such option wins."""
    t = normalize_text(span)
    hits = [i for i, c in enumerate(norm) if c and (t == c or t.startswith(c + " "))]
    if not hits:
        return set()
    longest = max(len(norm[i]) for i in hits)
    return {i for i in hits if len(norm[i]) == longest}


def _letter_index(m: re.Match, n_choices: int) -> int | None:
    i = LETTERS.index(next(x for x in m.groups() if x).upper())
    return i if i < n_choices else None


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
        # a bare capital needs a separator ("B." "B)" "B:") unless an answer phrase precedes it;
        # "I think ..." is the pronoun even then
        sep = span[m.end():m.end() + 1]
        pronoun = bare and g == "I" and sep == " " and tail[:1].islower()
        if not pronoun and (not bare or after_phrase or sep in _SEPARATORS or not tail):
            letter = _letter_index(m, len(choices))
    if letter is None:
        return ("option_text", texts) if texts else ("", set())
    own = {j for j, c in enumerate(norm) if c == norm[letter]}
    tail = re.sub(r"^[.:)\]\-,;。]+\s*", "", tail)
    if tail:
        named = _names(tail, norm)
        if texts and not (texts & own):
            # "A piano" where "A piano" is an option: the article reading is the option text. When
            # the option's text is the letter itself ("D. It is the root." with options G, A#, D, E)
            # the span is letter D and option C's text "D" at once: ambiguous, never a guess
            article = bare and all(norm[t] != g.lower() for t in texts)
            return ("option_text", texts) if article else ("ambiguous", texts | {letter})
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


def _line_normalized(text: str) -> str:
    """normalize_text applied to every line of the cleaned (already NFKC) text at once, lines kept."""
    s = text.lower().replace("_", " ").replace("*", "").replace("`", "")
    s = _NON_NEWLINE_SPACE.sub(" ", _PROSE_PUNCT.sub(" ", s))
    return _LINE_EDGE_SPACE.sub("", s)


_NON_NEWLINE_SPACE = re.compile(r"[^\S\n]+")
_LINE_EDGE_SPACE = re.compile(r"^ | $", re.M)
_WHITESPACE = re.compile(r"\s*")
_NEXT_LINE = re.compile(r"[^\n]*\n\s*([^\n]*)")  # from inside a line: the next non-blank line


def _letter_indices(groups: set[tuple[str, ...]], n_choices: int) -> set[int]:
    """Choice indices from findall() tuples whose one non-empty group is a letter."""
    out = set()
    for g in groups:
        i = LETTERS.index(next(x for x in g if x).upper())
        if i < n_choices:
            out.add(i)
    return out


def _option_line(line: str, choices: list[str], norm_to_index: dict[str, int]) -> int | None:
    """The choice one option line names: by its label, or by being exactly one option's text."""
    m = _LABEL.match(line)
    if m:
        return _letter_index(m, len(choices))
    return norm_to_index.get(normalize_text(line))


def _is_option_list(text: str, choices: list[str], norm_to_index: dict[str, int]) -> bool:
    """Two or more option lines naming different options, found with whole-text regexes (no
    per-line Python). A line may be both a label and an option's text ("B:maj7/1", "D"): one line
    is never a list, and the leading-answer reading (level 3) judges it."""
    labels = _LABEL_LINE.findall(text)  # at most one match per line
    named = _letter_indices(set(labels), len(choices))
    texts: list[str] = []
    options = sorted((c for c in norm_to_index if c), key=len, reverse=True)
    if options:
        exact = re.compile("^(?:" + "|".join(map(re.escape, options)) + ")$", re.M)
        lined = _line_normalized(text)  # same lines as text: normalizing never adds or drops a "\n"
        texts = exact.findall(lined)
        named |= {norm_to_index[c] for c in set(texts)}
        if len(labels) == 1 and len(texts) == 1:
            label_line = text.count("\n", 0, _LABEL_LINE.search(text).start())
            text_line = lined.count("\n", 0, exact.search(lined).start())
            return label_line != text_line and not _same(named, choices)
    return len(labels) + len(texts) >= 2 and not _same(named, choices)


def _statements(text: str, choices: list[str], norm: list[str],
                norm_to_index: dict[str, int]) -> tuple[list[tuple[str, set[int]]], bool]:
    """Readings of every readable explicit statement, and whether one of them starts an echoed list."""
    spans: list[tuple[int, str]] = []
    found = sorted((m.start(), m.end()) for r in _STATEMENTS for m in r.finditer(text))
    matches = [(a, b) for k, (a, b) in enumerate(found) if k == 0 or a >= found[k - 1][1]]  # no overlaps
    for k, (_, phrase_end) in enumerate(matches):
        # read up to the next statement (so every character is read once) and the line's end;
        # a statement that ends its line ("Answer:\nB") is answered by the next line
        stop = matches[k + 1][0] if k + 1 < len(matches) else len(text)
        start = _WHITESPACE.match(text, _STATEMENT_TAIL.match(text, phrase_end, stop).end(), stop).end()
        end = text.find("\n", start, stop)
        spans.append((start, text[start:stop if end < 0 else end]))
    spans += [(m.start(1), m.group(1)) for m in _BOXED.finditer(text)]
    spans.sort()
    line_end = -1  # of the line holding the current span: found once per line, not per span
    readings: list[tuple[str, set[int]]] = []
    echo = False
    read: dict[str, tuple[str, set[int]]] = {}  # repeated spans are read once
    next_line: dict[int, int | None] = {}  # by line end: statements on one line share the scan
    for start, span in spans:
        if span not in read:
            read[span] = _read_span(span, choices, norm, after_phrase=True)
        stage, idx = read[span]
        if not stage:
            continue
        readings.append((stage, idx))
        if _LABEL.match(span):
            if start > line_end:
                line_end = text.find("\n", start) % (len(text) + 1)  # -1 (last line) -> len(text)
            eol = line_end
            if eol not in next_line:
                m = _NEXT_LINE.match(text, start) if eol < len(text) else None
                next_line[eol] = None if m is None else _option_line(m.group(1), choices, norm_to_index)
            nxt = next_line[eol]
            echo |= nxt is not None and not _same(idx | {nxt}, choices)
    return readings, echo


def _mentions(text: str, n_choices: int) -> set[int]:
    return _letter_indices({(g,) for r in _MENTIONS for g in set(r.findall(text))}, n_choices)


def extract_choice(response: str | None, choices: list[str]) -> Extraction:
    if response is None or not response.strip():
        return Extraction(None, "empty")
    norm = [normalize_text(c) for c in choices]
    norm_to_index: dict[str, int] = {}
    for i, c in enumerate(norm):
        norm_to_index.setdefault(c, i)  # identical texts are one option (is_correct compares texts)
    text = _clean(response)

    # 1. explicit statements
    readings, echo = _statements(text, choices, norm, norm_to_index)
    if echo:
        return Extraction(None, "option_list")
    if readings:
        union = set().union(*(idx for _, idx in readings))
        if any(s == "ambiguous" for s, _ in readings) or not _same(union, choices):
            return Extraction(None, "ambiguous")
        return Extraction(min(union), "answer_phrase")

    # 2. option lines naming different options
    if _is_option_list(text, choices, norm_to_index):
        return Extraction(None, "option_list")

    # 3. the leading answer; a letter mentioned in the same first line must agree. Both readings
    # are taken before either decides: "D\n\nIt is the root." reads as option C's text "D" as a
    # whole but as letter D or text "D" by its first line, and that doubt must not be skipped
    first = text.split("\n", 1)[0]  # text is stripped: its first line is not blank
    leading = [_read_span(span, choices, norm, after_phrase=False) for span in dict.fromkeys([text, first])]
    if any(stage == "ambiguous" for stage, _ in leading):
        return Extraction(None, "ambiguous")
    for stage, idx in leading:
        if stage and _same(idx, choices):
            if not _same(idx | _mentions(first, len(choices)), choices):
                return Extraction(None, "ambiguous")
            return Extraction(min(idx), stage)

    # 4. letter mentions in prose
    mentioned = _mentions(text, len(choices))
    if mentioned:
        return Extraction(min(mentioned), "letter_mention") if _same(mentioned, choices) \
            else Extraction(None, "ambiguous")

    # 5. option texts anywhere
    found = _contained(text, norm)
    if found:
        return Extraction(min(found), "option_text") if _same(found, choices) else Extraction(None, "ambiguous")
    return Extraction(None, "none")


def is_correct(extraction: Extraction, choices: list[str], gold: int) -> bool:
    """Identical option strings are indistinguishable, so correctness compares texts."""
    return extraction.index is not None and choices[extraction.index] == choices[gold]
