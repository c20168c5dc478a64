"""Aggregation and statistics: means with clustered bootstrap CIs, paired tests.

Per-sample scores are floats; None means "not counted for this metric" (e.g.
MMSU's official scorer leaves "wrong format" responses out of the denominator).
Bootstrap CIs resample clusters (questions sharing one audio clip together), so
the interval is honest about correlated questions.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

N_BOOTSTRAP = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool = True
    scale: float = 100.0  # per-sample scores are in [0, 1]; reported in percent


def mean_with_ci(values: Sequence[float], clusters: Sequence[str], scale: float = 100.0,
                 seed: int = 0, n_boot: int = N_BOOTSTRAP) -> dict[str, Any]:
    """Mean and 95% percentile-bootstrap CI, resampling whole clusters."""
    import numpy as np

    n = len(values)
    if n == 0:
        return {"value": None, "ci": [None, None], "n": 0}
    v = np.asarray(values, dtype=np.float64)
    _, cid = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    sums = np.bincount(cid, weights=v)
    counts = np.bincount(cid).astype(np.float64)
    m = len(sums)
    value = float(v.mean())
    if m < 2:
        lo = hi = value
    else:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, m, size=(n_boot, m))
        boot = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
        alpha = (1 - CONFIDENCE) / 2
        lo, hi = (float(x) for x in np.quantile(boot, [alpha, 1 - alpha]))
    r = lambda x: round(x * scale, 4)
    return {"value": r(value), "ci": [r(lo), r(hi)], "n": n}


def aggregate_scores(records: Iterable[dict[str, Any]], specs: Sequence[MetricSpec],
                     groupings: Sequence[str] = (), seed: int = 0) -> tuple[dict, dict]:
    """Overall metrics and per-group metrics from records with `scores`,
    `cluster` and `metadata`. Returns (metrics, groups)."""
    records = list(records)

    def compute(recs: list[dict]) -> dict[str, Any]:
        out = {}
        for spec in specs:
            pairs = [(r["scores"].get(spec.name), r["cluster"]) for r in recs]
            pairs = [(v, c) for v, c in pairs if v is not None]
            stats = mean_with_ci([v for v, _ in pairs], [c for _, c in pairs], spec.scale, seed)
            stats["higher_is_better"] = spec.higher_is_better
            out[spec.name] = stats
        return out

    metrics = compute(records)
    groups: dict[str, dict[str, Any]] = {}
    for g in groupings:
        buckets: dict[str, list[dict]] = defaultdict(list)
        for r in records:
            value = r.get("metadata", {}).get(g)
            if value is not None:
                buckets[str(value)].append(r)
        if buckets:
            groups[g] = {k: compute(v) for k, v in sorted(buckets.items())}
    return metrics, groups


def paired_drop_pvalue(new: Sequence[float], base: Sequence[float], higher_is_better: bool = True,
                       seed: int = 0, n_perm: int = 10000) -> float:
    """One-sided p-value that `new` is worse than `base` on the same samples.

    Binary scores: exact McNemar (binomial test on discordant pairs). Otherwise a
    sign-flip permutation test on the paired differences.
    """
    import numpy as np

    a = np.asarray(new, dtype=np.float64)
    b = np.asarray(base, dtype=np.float64)
    d = (a - b) if higher_is_better else (b - a)  # negative = worse
    if len(d) == 0 or not np.any(d):
        return 1.0
    binary = np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()
    if binary:
        from scipy.stats import binomtest

        worse = int((d < 0).sum())
        better = int((d > 0).sum())
        return float(binomtest(worse, worse + better, 0.5, alternative="greater").pvalue)
    rng = np.random.default_rng(seed)
    observed = d.mean()
    signs = rng.choice((-1.0, 1.0), size=(n_perm, len(d)))
    perm = (signs * np.abs(d)).mean(axis=1)
    return float((np.sum(perm <= observed) + 1) / (n_perm + 1))
