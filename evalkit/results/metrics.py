"""Aggregation and statistics: means with clustered bootstrap CIs, paired tests.

Per-sample scores are floats; None means "not counted for this metric" (e.g.
MMSU's official scorer leaves "wrong format" responses out of the denominator).
Bootstrap CIs resample clusters (questions sharing one audio clip together), so
the interval is honest about correlated questions. The interval is the 95%
percentile bootstrap (the `method="percentile"` of `scipy.stats.bootstrap`).

No interval: a cell with fewer than two samples, or whose samples all lie in
one cluster, has nothing to resample, so its `ci` is `[None, None]` (the same
shape as an empty cell's; run.schema.json requires two items). A degenerate
`[v, v]` would read as certainty. `ci_bounds()` is how consumers read a `ci`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

N_BOOTSTRAP = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool = True
    scale: float = 100.0  # per-sample scores are in [0, 1]; reported in percent


NO_INTERVAL: list[None] = [None, None]


def ci_bounds(stat: dict[str, Any] | None) -> tuple[float, float] | None:
    """(low, high) of a metric's interval, or None where it has none (missing,
    null, [None, None]: too few samples or clusters to resample)."""
    ci = (stat or {}).get("ci")
    if not ci or ci[0] is None or ci[1] is None:
        return None
    return float(ci[0]), float(ci[1])


class Bootstrap:
    """Cluster bootstrap weights drawn once and shared by every metric and group.

    `weights[b, c]` = how often cluster c was drawn in resample b (classical
    bootstrap: m draws with replacement from m clusters). Resampled means of many
    (metric, group) columns are then one matrix product, so CIs for dozens of
    metrics and groups over 10,000 samples cost milliseconds. A group's CI uses
    the same whole-dataset resamples restricted to its clusters.
    """

    def __init__(self, clusters: Sequence[str], seed: int = 0, n_boot: int = N_BOOTSTRAP):
        import numpy as np

        labels = [str(c) for c in clusters]
        index: dict[str, int] = {}
        self.cid = np.fromiter((index.setdefault(c, len(index)) for c in labels), dtype=np.int64, count=len(labels))
        self.m = len(index)
        self.weights = None
        if self.m >= 2:
            rng = np.random.default_rng(seed)
            draws = rng.integers(0, self.m, size=(n_boot, self.m), dtype=np.int32).astype(np.int64)
            draws += (np.arange(n_boot, dtype=np.int64) * self.m)[:, None]
            self.weights = np.bincount(draws.ravel(), minlength=n_boot * self.m).reshape(n_boot, self.m)
            self.weights = self.weights.astype(np.float32)

    def mean_ci_many(self, columns: list[tuple[Any, Any]], scale: float | Sequence[float] = 100.0) -> list[dict]:
        """Mean and 95% percentile CI for each (values, mask) pair; NaN = not counted."""
        import numpy as np

        scales = [scale] * len(columns) if isinstance(scale, (int, float)) else list(scale)
        out: list[dict[str, Any]] = [None] * len(columns)  # type: ignore[list-item]
        sums, counts, where = [], [], []
        for j, (values, mask) in enumerate(columns):
            v = np.asarray(values, dtype=np.float64)
            if v.shape != self.cid.shape:
                raise ValueError(f"column {j}: {v.shape[0] if v.ndim else 'a scalar'} scores for "
                                 f"{self.cid.shape[0]} cluster labels; pass one score per sample")
            keep = ~np.isnan(v) if mask is None else (mask & ~np.isnan(v))
            n = int(keep.sum())
            if n == 0:
                out[j] = {"value": None, "ci": list(NO_INTERVAL), "n": 0}
                continue
            value = float(v[keep].mean())
            out[j] = {"value": value, "ci": list(NO_INTERVAL), "n": n}
            c = np.bincount(self.cid[keep], minlength=self.m)
            if self.weights is not None and np.count_nonzero(c) >= 2:  # n >= 2 follows
                sums.append(np.bincount(self.cid[keep], weights=v[keep], minlength=self.m))
                counts.append(c)
                where.append(j)
        if where:
            w = self.weights
            with np.errstate(invalid="ignore", divide="ignore"):
                boot = (w @ np.stack(sums, 1).astype(np.float32)) / (w @ np.stack(counts, 1).astype(np.float32))
            alpha = (1 - CONFIDENCE) / 2
            q = np.nanquantile(boot.astype(np.float64), [alpha, 1 - alpha], axis=0)
            for col, j in enumerate(where):
                if np.isfinite(q[:, col]).all():  # NaN only if no resample drew any of the cell's clusters
                    out[j]["ci"] = [float(q[0, col]), float(q[1, col])]
        for o, s in zip(out, scales, strict=True):
            if o["n"]:
                o["value"] = round(o["value"] * s, 4)
            if o["ci"][0] is not None:
                o["ci"] = [round(o["ci"][0] * s, 4), round(o["ci"][1] * s, 4)]
        return out

    def mean_ci(self, values, mask=None, scale: float = 100.0) -> dict[str, Any]:
        return self.mean_ci_many([(values, mask)], scale)[0]


def mean_with_ci(values: Sequence[float], clusters: Sequence[str], scale: float = 100.0,
                 seed: int = 0, n_boot: int = N_BOOTSTRAP) -> dict[str, Any]:
    """Mean and 95% percentile-bootstrap CI, resampling whole clusters."""
    return Bootstrap(clusters, seed, n_boot).mean_ci(values, scale=scale)


def aggregate_scores(records: Iterable[dict[str, Any]], specs: Sequence[MetricSpec],
                     groupings: Sequence[str] = (), seed: int = 0) -> tuple[dict, dict]:
    """Overall metrics and per-group metrics from records with `scores`,
    `cluster` and `metadata`. Returns (metrics, groups)."""
    import numpy as np

    records = list(records)
    boot = Bootstrap([r["cluster"] for r in records], seed)
    nan = float("nan")
    columns = {s.name: np.array([nan if (x := r["scores"].get(s.name)) is None else x for r in records],
                                dtype=np.float64) for s in specs}
    cells: list[tuple[str | None, str | None, MetricSpec, Any]] = [(None, None, s, None) for s in specs]
    for g in groupings:
        # None (key missing) matches no key, not even "": a record without the key is in no group.
        # Compared as Python strings: numpy would turn k into a numpy string, which drops a trailing NUL
        labels = [None if (v := r.get("metadata", {}).get(g)) is None else str(v) for r in records]
        for k in sorted({label for label in labels if label is not None}):
            mask = np.array([label == k for label in labels], dtype=bool)
            cells += [(g, k, s, mask) for s in specs]
    stats = boot.mean_ci_many([(columns[s.name], mask) for _, _, s, mask in cells], [s.scale for _, _, s, _ in cells])
    metrics: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for (g, k, spec, _), st in zip(cells, stats):
        st["higher_is_better"] = spec.higher_is_better
        if g is None:
            metrics[spec.name] = st
        else:
            groups.setdefault(g, {}).setdefault(k, {})[spec.name] = st
    return metrics, groups


def paired_drop_pvalue(new: Sequence[float], base: Sequence[float], higher_is_better: bool = True,
                       seed: int = 0, n_perm: int = 10000) -> float:
    """One-sided p-value that `new` is worse than `base` on the same samples.

    Binary scores: exact McNemar (binomial test on discordant pairs). Otherwise a
    sign-flip permutation test on the paired differences of the mean.
    """
    import numpy as np

    a = np.asarray(new, dtype=np.float64)
    b = np.asarray(base, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired test: {a.shape[0]} new scores against {b.shape[0]} baseline scores")
    if len(a) == 0 or not np.any(a != b):
        return 1.0
    binary = np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()
    if binary:
        from scipy.stats import binomtest

        d = (a - b) if higher_is_better else (b - a)  # negative = worse
        worse = int((d < 0).sum())
        better = int((d > 0).sum())
        return float(binomtest(worse, worse + better, 0.5, alternative="greater").pvalue)
    ones = np.ones_like(a)
    return paired_ratio_drop_pvalue(a, ones, b, ones, higher_is_better, seed, n_perm)


def paired_ratio_drop_pvalue(new_num: Sequence[float], new_den: Sequence[float],
                             base_num: Sequence[float], base_den: Sequence[float],
                             higher_is_better: bool = True, seed: int = 0, n_perm: int = 10000) -> float:
    """One-sided p-value that the ratio metric sum(num) / sum(den) (a corpus WER:
    errors over reference words) is worse in `new` than in `base` on the same samples.

    Paired permutation: under "no difference" each sample's (new, base) pair is
    exchangeable, so each resample swaps every pair with probability 1/2 and recomputes
    the difference of the two ratios. With every denominator 1 this is the sign-flip
    test on the mean difference. p = (1 + #{resampled <= observed}) / (1 + n_perm).
    """
    import numpy as np

    arrays = [np.asarray(x, dtype=np.float64) for x in (new_num, new_den, base_num, base_den)]
    if len({x.shape for x in arrays}) != 1:
        raise ValueError("paired test: numerators and denominators of both runs must have one entry per "
                         f"shared sample (got {', '.join(str(x.shape[0]) for x in arrays)})")
    nn, nd, bn, bd = arrays
    if len(nn) == 0 or (np.array_equal(nn, bn) and np.array_equal(nd, bd)):
        return 1.0
    if nd.sum() <= 0 or bd.sum() <= 0:
        raise ValueError("paired test: a ratio metric needs a positive total denominator in both runs")
    sign = 1.0 if higher_is_better else -1.0  # oriented so that negative = worse
    total_num, total_den = nn.sum() + bn.sum(), nd.sum() + bd.sum()
    observed = sign * (nn.sum() / nd.sum() - bn.sum() / bd.sum())
    rng = np.random.default_rng(seed)
    hits, chunk = 0, max(1, min(n_perm, 4_000_000 // len(nn)))  # bounded memory for large runs
    for start in range(0, n_perm, chunk):
        swap = rng.random((min(chunk, n_perm - start), len(nn))) < 0.5
        num = nn.sum() + swap @ (bn - nn)  # the "new" side's sums after swapping pairs
        den = nd.sum() + swap @ (bd - nd)
        with np.errstate(invalid="ignore", divide="ignore"):
            stat = sign * (num / den - (total_num - num) / (total_den - den))
        # a resample as extreme as the observed one counts, including float round-off ties
        hits += int(np.sum(stat <= observed + 1e-12 * max(1.0, abs(observed))))
    return float((hits + 1) / (n_perm + 1))
