"""Answer extraction on adversarial long responses: seconds per call, which must grow linearly.

Each input repeats a pattern that makes some stage of a naive extractor re-read the rest of the
response at every occurrence (an answer phrase every 20 characters, a newline run before a
heading marker, bracketed letters, option words, whitespace runs). A linear extractor takes
about 5x longer for 5x the input; a quadratic one about 25x (before the fix, "the answer is
maybe" took 0.9 s at 40 KB and 41 s at 200 KB).
Prints wall and CPU seconds (the CPU figure is steadier on a shared machine).
Usage: python bench/bench_extract.py [SIZE_KB ...]   (default: 40 200 1000)
"""
from __future__ import annotations

import sys
import time

from evalkit.protocol.extract import extract_choice

CHOICES = ["Dog", "Cat", "Bird", "Horse"]

PATTERNS = {  # name: (repeated pattern, text around the repetition)
    "answer phrases": ("the answer is maybe ", "{}"),
    "newline run": ("\n", "#x{}x"),  # a "#" so the heading rule runs over the run
    "spaces after 'answer'": ("Answer" + " " * 50, "{}"),
    "one 'answer', spaces": (" ", "Answer{}x"),
    "bracketed letters": ("(B) ", "{}"),
    "option words": ("option ", "{}"),
    "option text": ("cat ", "{}"),
    "label lines": ("B. Cat\n", "{}"),
    "statements, blank run": ("Answer: (B) ", "{}" + "\n" * 1000 + "(C) Duck"),
    "boxed": ("\\boxed{B} ", "{}"),
    "punctuation": (".,;!?", "{}"),
}


def adversarial(pattern: str, frame: str, n_bytes: int) -> str:
    return frame.format((pattern * (n_bytes // len(pattern) + 1))[:n_bytes])


def main() -> None:
    sizes_kb = [int(a) for a in sys.argv[1:]] or [40, 200, 1000]
    print(f"{'input':<24}" + "".join(f"{str(kb) + ' KB wall (cpu)':>23}" for kb in sizes_kb) + "   stage")
    for name, (pattern, frame) in PATTERNS.items():
        cells, stage = [], ""
        for kb in sizes_kb:
            text = adversarial(pattern, frame, kb * 1000)
            t0, c0 = time.perf_counter(), time.process_time()
            stage = extract_choice(text, CHOICES).stage
            cells.append(f"{time.perf_counter() - t0:>7.3f}s ({time.process_time() - c0:.3f}s cpu)")
        print(f"{name:<24}" + "".join(cells) + f"   {stage}")


if __name__ == "__main__":
    main()
