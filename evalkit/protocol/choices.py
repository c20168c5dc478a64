"""Choice order: balanced (default), original, circular.

Balanced: within each choice count k, samples are ranked by sha256(seed, id) and
the gold answer goes to position rank % k, so across the task every position
holds the gold equally often (within one). The other choices are shuffled by a
generator seeded from the same hash. Ranking uses the whole task (before
--limit/--shard), so a sample's order does not depend on which subset runs,
and shards merge into exactly the unsharded run.
Choices are tracked by index, never by text (MMAU test-mini has duplicates).
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from typing import Literal

from evalkit.errors import TaskDataError
from evalkit.types import Presentation, Sample

ChoiceMode = Literal["balanced", "original", "circular"]
#: the labels options are shown and read back with; a question can have at most this many options
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def check_choice_count(n: int, where: str) -> None:
    """Refuse more options than there are letters to label them (`where` names the record)."""
    if n > len(LETTERS):
        raise TaskDataError(f"{where}: {n} options, but evalkit labels options A-Z, so at most "
                            f"{len(LETTERS)}; split the question or drop options")


def _digest(seed: int, sample_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{sample_id}".encode()).digest()[:8], "big")


def _balanced(samples: list[Sample], seed: int) -> dict[str, list[int]]:
    by_k: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_k[len(s.choices)].append(s)
    perms: dict[str, list[int]] = {}
    for k, group in by_k.items():
        for rank, s in enumerate(sorted(group, key=lambda s: (_digest(seed, s.id), s.id))):
            target = rank % k
            rest = [i for i in range(k) if i != s.answer]
            random.Random(_digest(seed, s.id)).shuffle(rest)
            perms[s.id] = rest[:target] + [s.answer] + rest[target:]
    return perms


def present(samples: list[Sample], mode: ChoiceMode, seed: int) -> list[Presentation]:
    """One Presentation per model call, in sample order."""
    mcq = [s for s in samples if s.choices is not None and s.answer is not None]
    for s in samples:  # every task's samples pass here, whatever its loader checked
        if s.choices is not None:
            check_choice_count(len(s.choices), f"sample {s.id!r}")
    perms = _balanced(mcq, seed) if mode == "balanced" else {}
    out: list[Presentation] = []
    for s in samples:
        if s.choices is None or s.answer is None:
            out.append(Presentation(key=s.id, sample=s))
        elif mode == "circular":
            k = len(s.choices)
            for r in range(k):
                out.append(Presentation(key=f"{s.id}#rot{r}", sample=s,
                                        permutation=[(i + r) % k for i in range(k)], rotation=r))
        elif mode == "balanced":
            out.append(Presentation(key=s.id, sample=s, permutation=perms[s.id]))
        elif mode == "original":
            out.append(Presentation(key=s.id, sample=s, permutation=list(range(len(s.choices)))))
        else:
            raise ValueError(f"unknown --choices mode {mode!r}; use balanced, original or circular")
    return out


def gold_histogram(presentations: list[Presentation]) -> dict[str, dict[str, dict[str, int]]]:
    """Gold-letter counts per choice count, before (upstream order) and after."""
    before: dict[str, Counter] = defaultdict(Counter)
    after: dict[str, Counter] = defaultdict(Counter)
    seen: set[str] = set()
    for p in presentations:
        s = p.sample
        if s.choices is None or s.answer is None:
            continue
        k = str(len(s.choices))
        if s.id not in seen:
            seen.add(s.id)
            before[k][LETTERS[s.answer]] += 1
        after[k][LETTERS[p.gold]] += 1
    fmt = lambda d: {k: dict(sorted(c.items())) for k, c in sorted(d.items(), key=lambda kv: int(kv[0]))}
    return {"before": fmt(before), "after": fmt(after)}
