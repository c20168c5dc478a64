"""Circular evaluation (`--choices circular`): one score per sample over its rotations.

Imports nothing from evalkit: it works on plain sample records."""
from __future__ import annotations

from collections import defaultdict
from typing import Any


def collapse_rotations(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per sample: a circular sample scores the minimum over its
    rotations (correct only if all are). None (not counted) is skipped unless
    every rotation is None."""
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_id[r["sample_id"]].append(r)
    out = []
    for sid, rs in by_id.items():
        if len(rs) == 1:
            out.append(rs[0])
            continue
        names = {k for r in rs for k in r["scores"]}
        scores = {}
        for k in names:
            vals = [r["scores"].get(k) for r in rs if r["scores"].get(k) is not None]
            scores[k] = (max(vals) if k == "extraction_failure" else min(vals)) if vals else None
        out.append({**rs[0], "key": sid, "scores": scores})
    return out
