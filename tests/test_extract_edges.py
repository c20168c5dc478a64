"""Edge cases of evalkit.protocol.extract, each checked against a hand-derived expectation (issue 11: mutation kill rate).

The expected (index, stage) pairs follow the precedence documented in evalkit/protocol/extract.py; each
comment says which reading decides and why the others do not.
"""
from __future__ import annotations

import pytest

from evalkit.protocol.extract import Extraction, extract_choice

ANIMALS = ["Cow", "Cat", "Duck", "Horse"]  # (A) Cow (B) Cat (C) Duck (D) Horse
PETS = ["Dog", "Cat", "Bird", "Horse"]
# ten options, so "I" is a letter (the ninth option) and not only the pronoun
INSTRUMENTS = ["Piano", "Guitar", "Drums", "Flute", "Cello", "Harp", "Organ", "Trumpet", "Violin", "Banjo"]


def read(response: str, choices: list[str]) -> tuple[int | None, str]:
    e = extract_choice(response, choices)
    assert isinstance(e, Extraction)
    return e.index, e.stage


# ---------------------------------------------------------------- an option's text followed by more words


@pytest.mark.parametrize("response,expected", [
    # the leading answer is "Cat" followed by words; the later mention of another option is explanation
    ("Cat, not Dog.", (1, "option_text")),
    ("Cat because a dog would bark", (1, "option_text")),
    # the same after an answer statement: the statement's span starts with the option's text
    ("The answer is Cat, not Dog.", (1, "answer_phrase")),
    # "Cat" inside a word is not the option "Cat" followed by words
    ("Catfish, not Dog.", (0, "option_text")),
])
def test_leading_option_text_followed_by_words(response, expected):
    assert read(response, PETS) == expected


# ---------------------------------------------------------------- letters beyond the options


@pytest.mark.parametrize("response", [
    "Option E",            # a fifth letter with four options names nothing
    "It's (E).",
    "The answer is E.",
])
def test_a_letter_past_the_last_option_names_nothing(response):
    assert read(response, ANIMALS) == (None, "none")


def test_options_whose_text_is_only_punctuation_are_chosen_by_letter():
    # both options normalize to "" (no option text can be matched), so only letters name them
    assert read("B", ["?", "!"]) == (1, "letter")
    assert read("The answer is A.", ["...", "?!"]) == (0, "answer_phrase")
    assert read("A\nB", ["?", "!"]) == (None, "option_list")


# ---------------------------------------------------------------- option lines that mix labels and texts


@pytest.mark.parametrize("response", [
    "(A) Cow\nCat",               # a labelled line and a line that is another option's text
    "Cat\n(A) Cow",               # the same, text first
    "...\n(A) Cow\nCat",          # a first line that normalizes to nothing still counts as a line
    "A. Cow\nB. Cat\n\nCat",      # an echoed list, then an answer by text: still an echo
    "A\nB\nCat",
    "Answer:\nA. Cow\nCat",       # a statement whose answer starts a list continued by an option's text
])
def test_label_and_text_lines_naming_different_options_are_a_list(response):
    assert read(response, ANIMALS) == (None, "option_list")


@pytest.mark.parametrize("response,expected", [
    ("(B) Cat\nCat", (1, "letter_with_text")),     # label and text lines agree: one answer, not a list
    ("Cat\n\nB", (1, "option_text")),
])
def test_label_and_text_lines_naming_one_option_are_an_answer(response, expected):
    assert read(response, ANIMALS) == expected


# ---------------------------------------------------------------- "I": the pronoun or the ninth letter


@pytest.mark.parametrize("response,expected", [
    ("The answer is I.", (8, "answer_phrase")),
    ("The answer is I (the ninth option).", (8, "answer_phrase")),
    # "I think ..." after a statement is the pronoun: the statement is unreadable, the mention decides
    ("Answer: I think it is (C).", (2, "letter_mention")),
    ("Answer: I would say violin", (8, "option_text")),
])
def test_capital_i_after_a_statement(response, expected):
    assert read(response, INSTRUMENTS) == expected


# ---------------------------------------------------------------- a letter that is also (part of) an option's text

CHORDS = ["E:min7/1", "A:7/1", "D:maj7(11)/4", "G:maj7/1"]
NOTES = ["G", "A#", "D", "E"]
# statement-combination options: "(a) only" starts like the label "(A)"
STATEMENTS = ["(a) and (b)", "(a) only", "(b) only", "neither"]


@pytest.mark.parametrize("response,choices,expected", [
    ("A:7/1", CHORDS, (1, "option_text")),         # a chord label, not letter A with text "7/1"
    ("D:maj7(11)/4", CHORDS, (2, "option_text")),  # D is a letter too (option 4), but the text is option 3's
    ("G:maj7/1", CHORDS, (3, "option_text")),      # G is no letter among four options
    ("(A) only", STATEMENTS, (None, "ambiguous")),  # letter A, or the text "(a) only" (option B)
    ("The answer is (A) only.", STATEMENTS, (None, "ambiguous")),
    ("B. Dog", PETS, (None, "ambiguous")),          # letter B with option A's text
    ("The answer is B Dog.", PETS, (None, "ambiguous")),
])
def test_letter_against_option_text(response, choices, expected):
    assert read(response, choices) == expected


@pytest.mark.parametrize("response", [
    "D",                                 # letter D (option 4) or option 3's text "D"
    "D. It is the root.",                # the explanation after it does not settle which
    "D\n\nIt is the root.",              # read as a whole it starts with option 3's text; by its first line it is doubtful
    "The answer is D. It is the root.",
    "**D**\n\nThe root of the chord.",
])
def test_a_letter_that_is_another_options_text_is_never_guessed(response):
    assert read(response, NOTES) == (None, "ambiguous")


@pytest.mark.parametrize("response,expected", [
    ("(D)", (3, "letter")),                # a bracketed capital is a label, not option text "D"
    ("E. It is the fifth.", (3, "option_text")),  # E is no letter among four options
    ("A#\n\nSharp of A.", (1, "option_text")),
])
def test_a_letter_that_is_another_options_text_when_the_form_settles_it(response, expected):
    assert read(response, NOTES) == expected


@pytest.mark.parametrize("response,choices,expected", [
    ("The answer is A piano", ["A piano", "A violin", "Drums", "Bass"], (0, "answer_phrase")),
    ("The answer is A piano.\nIt is bright.", ["Drums", "A piano", "Bass", "A violin"], (1, "answer_phrase")),
])
def test_an_article_after_a_statement_reads_the_option_text(response, choices, expected):
    assert read(response, choices) == expected


@pytest.mark.parametrize("response,choices", [
    # a statement whose own answer is already ambiguous, then option lines: the list decides the stage
    ("The answer is D\nA. G\nB. A#", NOTES),          # bare D: letter D or option C's text "D"
    ("Answer: (A) only\n(B) only", STATEMENTS),       # letter A or option B's text, then option B
    ("Answer: (B) Dog\n(A) Cow", ANIMALS),            # letter B with option A's text, then option A
])
def test_ambiguous_statement_starting_a_list_is_an_echo(response, choices):
    assert read(response, choices) == (None, "option_list")


# ---------------------------------------------------------------- statements that touch each other


@pytest.mark.parametrize("response,choices,expected", [
    # no space between two statements: the first ("Answer:") has no answer of its own, the second decides
    ("Answer:I choose B.", ANIMALS, (1, "answer_phrase")),
    # "I Choose" is a statement, so its "I" is not read as the ninth letter answering "Answer:"
    ("Answer: I Choose B", INSTRUMENTS, (1, "answer_phrase")),
])
def test_adjacent_statements(response, choices, expected):
    assert read(response, choices) == expected


# ---------------------------------------------------------------- a statement reads its own line only


@pytest.mark.parametrize("response", [
    # the explanation lines start with another option's word ("Dog ..."), but the statement reads
    # only its line (or, when it ends a line, the next one)
    "The answer is (B).\nDog barks sound different.\nThis is a meow.",
    "Answer:\n(B)\nDog barks sound different.\nThis is a meow.",
])
def test_statement_answer_ends_at_its_line(response):
    assert read(response, PETS) == (1, "answer_phrase")


# ---------------------------------------------------------------- echoes started by a statement, and what follows


@pytest.mark.parametrize("response,choices,expected", [
    # the statement starts an echoed list: a later statement does not rescue it
    ("Answer:\n(A) Cow\n(B) Cat\n\nThe answer is (B).", ANIMALS, (None, "option_list")),
    # the second statement starts the list; the first one's next line is prose
    ("The answer is (B).\nIt meows.\nAnswer: (B)\n(A) Cow\n(C) Duck", ANIMALS, (None, "option_list")),
    # duplicate options: the next line names the same text, so it is no list
    ("Answer: (B) Cat\n(C) Cat", ["Dog", "Cat", "Cat", "Bird"], (1, "answer_phrase")),
])
def test_statement_followed_by_option_lines(response, choices, expected):
    assert read(response, choices) == expected


def test_later_lines_of_a_leading_letter_are_explanation():
    # only the first line is the leading answer; "option A" on the third line is explanation
    assert read("B\nIt meows.\nA cow would moo, so it is not option A.", ANIMALS) == (1, "letter")


def test_near_duplicate_option_texts_are_told_apart_by_a_letter():
    # "Dog barking" names options A and B (same normalized text, different strings); the letter decides
    assert read("Dog barking (B)", ["Dog barking", "dog barking.", "Cat", "Bird"]) == (1, "letter_mention")


@pytest.mark.parametrize("response,expected", [
    ("# B", (1, "letter")),                            # a markdown heading is markup, not text
    ("### (B) Cat", (1, "letter_with_text")),
    ("It meows.\n## Cat\n## Cow", (None, "option_list")),  # headings on every line, not only the first
])
def test_markdown_headings_are_removed(response, expected):
    assert read(response, ANIMALS) == expected


# ---------------------------------------------------------------- a statement reading a letter with another option's text


@pytest.mark.parametrize("response", [
    # "(B) Cow": letter B with option A's text, ambiguous by itself; its next line is an option line, so
    # the statement starts an echoed list, whichever option that line names (the doubt holds both A and B)
    "Answer: (B) Cow\n(C) Duck",
    "Answer: B. Cow\n(B) Cat",
])
def test_letter_with_another_options_text_starting_option_lines_is_an_echo(response):
    assert read(response, ANIMALS) == (None, "option_list")


def test_a_statement_on_the_last_line_has_no_next_line():
    # the first statement "(D)." is letter D, and its next line "D" names D too: no echo. The second
    # statement ("Answer:" ends its line) is answered by that last line, a bare "D": letter D or option
    # C's text "D". Nothing follows the last line, so it starts no list: the doubt decides
    assert read("The answer is (D). Answer:\nD", NOTES) == (None, "ambiguous")
