"""evalkit's statistics against references it did not compute: scipy's bootstrap and
permutation test, hand-derived bootstrap distributions, the binomial tail summed by
hand, and a coverage simulation with a known true mean."""
import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from evalkit.results.metrics import (
    Bootstrap,
    MetricSpec,
    aggregate_scores,
    ci_bounds,
    mean_with_ci,
    paired_drop_pvalue,
    paired_ratio_drop_pvalue,
)

# ------------------------------------------------------------ bootstrap vs scipy


def test_unclustered_bootstrap_matches_scipy_percentile():
    """One sample per cluster is the classical bootstrap: the interval must match
    scipy.stats.bootstrap(method="percentile") within Monte Carlo error."""
    rng = np.random.default_rng(7)
    x = rng.gamma(2.0, 1.0, size=150)  # skewed, so a symmetric (normal) interval would differ
    ours = mean_with_ci(x, [f"c{i}" for i in range(len(x))], scale=1.0, seed=3, n_boot=40000)
    ref = stats.bootstrap((x,), np.mean, confidence_level=0.95, n_resamples=40000, method="percentile",
                          random_state=np.random.default_rng(11)).confidence_interval
    se = x.std(ddof=0) / math.sqrt(len(x))  # sd of the bootstrap distribution of the mean
    # Monte Carlo sd of a 2.5% quantile from 40k resamples: sqrt(.025*.975/40000)/phi(1.96)*se ~= 0.013 se
    # for each side; 0.08 se is > 4 sd of the difference of two such estimates
    assert ours["value"] == pytest.approx(x.mean(), abs=1e-4)
    assert ours["ci"][0] == pytest.approx(ref.low, abs=0.08 * se)
    assert ours["ci"][1] == pytest.approx(ref.high, abs=0.08 * se)
    # and the 95% (not 90%) interval: scipy's 90% interval lies ~0.3 se inside
    ref90 = stats.bootstrap((x,), np.mean, confidence_level=0.90, n_resamples=40000, method="percentile",
                            random_state=np.random.default_rng(11)).confidence_interval
    assert ours["ci"][0] < ref90.low - 0.2 * se and ours["ci"][1] > ref90.high + 0.2 * se


# ------------------------------------------------------------ hand-derived clustered case


def _binomial_clusters(m: int, size: int):
    """m clusters of `size` identical scores, half all-1 and half all-0, interleaved in sample order."""
    values, clusters = [], []
    for c in range(m):
        values += [float(c % 2)] * size
        clusters += [f"clip{c}"] * size
    order = np.random.default_rng(0).permutation(len(values))  # sample order must not matter
    return [values[i] for i in order], [clusters[i] for i in order]


def test_clustered_bootstrap_distribution_is_hand_derived():
    """16 equal clusters of 3 identical scores, half 1 and half 0. A resample draws 16
    clusters with replacement, each all-1 with probability 1/2, so the resampled mean is
    exactly Binomial(16, 1/2) / 16. Its 2.5% quantile is 4 (P(X<=3) = 0.0106 < 0.025 <
    P(X<=4) = 0.0384) and its 97.5% quantile 12: the 95% interval is [25, 75] percent.
    (At 90% it would be [31.25, 68.75]; resampling the 48 samples singly would give about
    [36, 64].)"""
    cdf = lambda k: sum(math.comb(16, i) for i in range(k + 1)) / 2 ** 16  # noqa: E731
    assert cdf(3) < 0.025 < cdf(4) < 0.05  # the hand derivation above (and 90% differs)
    values, clusters = _binomial_clusters(16, 3)
    out = mean_with_ci(values, clusters, seed=5, n_boot=20000)
    assert out == {"value": 50.0, "ci": [25.0, 75.0], "n": 48}
    singly = mean_with_ci(values, [f"s{i}" for i in range(48)], seed=5, n_boot=20000)
    assert 33 < singly["ci"][0] < 40 and 60 < singly["ci"][1] < 67  # Binomial(48, 1/2)/48: [35.4, 64.6]


def _ratio_quantile(levels, m_total: int, m_group: int):
    """Exact quantiles of a group's resampled mean when the group holds m_group of m_total
    equal clusters, half all-1 and half all-0: a resample draws N ~ Binomial(m_total,
    m_group / m_total) of the group's clusters (N = 0 leaves the group out, so it is
    conditioned away) and X ~ Binomial(N, 1/2) of them are all-1; the mean is X / N."""
    q = m_group / m_total
    atoms: dict[float, float] = {}
    for n in range(1, m_total + 1):
        pn = math.comb(m_total, n) * q ** n * (1 - q) ** (m_total - n)
        for x in range(n + 1):
            atoms[x / n] = atoms.get(x / n, 0.0) + pn * math.comb(n, x) / 2 ** n
    points = sorted(atoms)
    cdf = np.cumsum([atoms[v] for v in points]) / sum(atoms.values())
    return [points[int(np.searchsorted(cdf, level))] for level in levels]


def test_group_interval_resamples_the_whole_dataset_restricted_to_the_group():
    """16 equal clusters of the group (half all-1, half all-0) beside 30 other clusters:
    evalkit's group interval must lie where the hand-derived distribution puts the 2.5%
    and 97.5% quantiles, within Monte Carlo error of the quantile level."""
    values, clusters = _binomial_clusters(16, 3)
    values += [1.0] * 30
    clusters += [f"other{i}" for i in range(30)]
    in_group = np.array([c.startswith("clip") for c in clusters])
    n_boot = 20000
    band = 4 * math.sqrt(0.025 * 0.975 / n_boot)  # 4 sd of an empirical 2.5% level
    lo_min, lo_max, hi_min, hi_max = _ratio_quantile(
        [0.025 - band, 0.025 + band, 0.975 - band, 0.975 + band], 46, 16)
    assert (lo_min, hi_max) != (0.25, 0.75)  # not the Binomial(16)/16 of the group alone
    out = Bootstrap(clusters, seed=1, n_boot=n_boot).mean_ci(values, in_group)
    assert out["value"] == 50.0 and out["n"] == 48
    assert 100 * lo_min <= out["ci"][0] <= 100 * lo_max and 100 * hi_min <= out["ci"][1] <= 100 * hi_max

    records = [{"scores": {"acc": v}, "cluster": c, "metadata": {"part": "a" if g else "b"}}
               for v, c, g in zip(values, clusters, in_group)]
    _, groups = aggregate_scores(records, [MetricSpec("acc")], ["part"])
    a = groups["part"]["a"]["acc"]
    band = 4 * math.sqrt(0.025 * 0.975 / 1000)  # aggregate_scores draws the default 1000 resamples
    lo_min, lo_max, hi_min, hi_max = _ratio_quantile(
        [0.025 - band, 0.025 + band, 0.975 - band, 0.975 + band], 46, 16)
    assert 100 * lo_min <= a["ci"][0] <= 100 * lo_max and 100 * hi_min <= a["ci"][1] <= 100 * hi_max
    assert groups["part"]["b"]["acc"]["ci"] == [100.0, 100.0]  # 30 clusters, all correct: a real interval


# ------------------------------------------------------------ no interval where nothing can be resampled


@pytest.mark.parametrize("values,clusters", [
    ([1.0], ["c0"]),                       # n = 1
    ([1.0, 0.0, 1.0, 1.0], ["c0"] * 4),    # one cluster
])
def test_no_interval_from_one_sample_or_one_cluster(values, clusters):
    out = mean_with_ci(values, clusters)
    assert out["value"] == pytest.approx(100 * np.mean(values)) and out["n"] == len(values)
    assert out["ci"] == [None, None] and ci_bounds(out) is None


def test_group_in_one_cluster_has_no_interval_but_overall_does():
    records = [{"scores": {"acc": float(i % 2)}, "cluster": f"c{i}", "metadata": {"snr": "0"}} for i in range(10)]
    records += [{"scores": {"acc": 1.0}, "cluster": "lonely", "metadata": {"snr": "5"}} for _ in range(3)]
    records += [{"scores": {"acc": 1.0}, "cluster": "c0", "metadata": {"snr": "10"}}]
    metrics, groups = aggregate_scores(records, [MetricSpec("acc")], ["snr"])
    assert ci_bounds(metrics["acc"]) is not None
    assert groups["snr"]["5"]["acc"] == {"value": 100.0, "ci": [None, None], "n": 3, "higher_is_better": True}
    assert groups["snr"]["10"]["acc"]["ci"] == [None, None]  # n = 1
    assert ci_bounds(groups["snr"]["0"]["acc"]) is not None


def test_scores_and_clusters_of_different_length_are_refused():
    with pytest.raises(ValueError, match="3 scores for 4 cluster labels"):
        Bootstrap(["a", "b", "c", "d"]).mean_ci([1.0, 0.0, 1.0])


def test_ci_bounds_reads_every_form_of_no_interval():
    assert ci_bounds(None) is None and ci_bounds({}) is None and ci_bounds({"ci": None}) is None
    assert ci_bounds({"ci": [None, None]}) is None and ci_bounds({"ci": [1, 2]}) == (1.0, 2.0)


# ------------------------------------------------------------ coverage: clustering matters


def simulate_coverage(n_sets: int, n_clusters: int, cluster_size: int, icc: float, n_boot: int,
                      seed: int = 0) -> tuple[float, float]:
    """Coverage of the true mean by evalkit's clustered and by the unclustered 95% interval.

    Each dataset: per-cluster accuracy p_c ~ Beta(a, b) with mean 0.6 and intra-cluster
    correlation icc = 1 / (a + b + 1); each question is Bernoulli(p_c). Shared with
    bench/bench_coverage.py."""
    mean = 0.6
    total = 1.0 / icc - 1.0
    a, b = mean * total, (1 - mean) * total
    rng = np.random.default_rng(seed)
    clusters = [f"clip{c}" for c in range(n_clusters) for _ in range(cluster_size)]
    singles = [f"q{i}" for i in range(len(clusters))]
    hit_clustered = hit_single = 0
    for k in range(n_sets):
        p = rng.beta(a, b, size=n_clusters)
        y = (rng.random((n_clusters, cluster_size)) < p[:, None]).astype(float).ravel()
        lo, hi = mean_with_ci(y, clusters, scale=1.0, seed=k, n_boot=n_boot)["ci"]
        hit_clustered += lo <= mean <= hi
        lo, hi = mean_with_ci(y, singles, scale=1.0, seed=k, n_boot=n_boot)["ci"]
        hit_single += lo <= mean <= hi
    return hit_clustered / n_sets, hit_single / n_sets


def test_clustered_interval_covers_and_unclustered_does_not():
    """400 datasets of 40 clips x 5 questions, ICC 0.3 (the full figure: bench/bench_coverage.py).
    The sd of a coverage estimate from 400 sets is 1.1 points; the seeds are fixed."""
    clustered, single = simulate_coverage(400, 40, 5, 0.3, n_boot=400)
    assert 0.91 <= clustered <= 0.98, clustered
    assert single < 0.85, single  # design effect 1 + 4 * 0.3 = 2.2: the naive interval is ~1.5x too narrow


# ------------------------------------------------------------ paired tests


def _binomial_upper_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), summed by hand."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n


@pytest.mark.parametrize("case", range(40))
def test_mcnemar_exact_on_random_binary_cases(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(5, 80))
    base = (rng.random(n) < rng.uniform(0.3, 0.9)).astype(float)
    flip = rng.random(n) < rng.uniform(0.05, 0.5)
    new = np.where(flip, 1 - base, base)
    higher_is_better = bool(case % 2)
    worse = int(((new < base) if higher_is_better else (new > base)).sum())
    discordant = int(flip.sum())
    expected = 1.0 if discordant == 0 else _binomial_upper_tail(worse, discordant)
    assert paired_drop_pvalue(new, base, higher_is_better) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_mcnemar_ignores_concordant_pairs():
    """3 worse, 0 better among 3 discordant pairs: p = 1/8, however many pairs agree."""
    for agree in (0, 10, 1000):
        new = [0.0] * 3 + [1.0] * agree
        base = [1.0] * 3 + [1.0] * agree
        assert paired_drop_pvalue(new, base) == pytest.approx(0.125)


@pytest.mark.parametrize("case", range(12))
def test_sign_flip_matches_scipy_exact_permutation(case):
    """Non-binary scores: evalkit's Monte Carlo sign-flip p-value agrees with scipy's
    exact paired permutation test (all 2^n sign flips) within Monte Carlo error."""
    rng = np.random.default_rng(100 + case)
    n = int(rng.integers(6, 13))
    base = rng.uniform(0, 1, n)
    new = np.clip(base + rng.normal(-0.08 * (case % 3), 0.15, n), 0, 1)
    new[0] = 0.37  # certainly not 0/1 scores
    higher_is_better = case % 4 != 3
    ref = stats.permutation_test((new, base), lambda x, y, axis: np.mean(x - y, axis=axis),
                                 permutation_type="samples", n_resamples=np.inf,
                                 alternative="less" if higher_is_better else "greater").pvalue
    ours = paired_drop_pvalue(new, base, higher_is_better, seed=case, n_perm=20000)
    # Monte Carlo sd <= sqrt(.25 / 20000) = 0.0035; +1 correction adds 5e-5
    assert ours == pytest.approx(ref, abs=0.015)


def test_paired_test_without_differences_is_one():
    assert paired_drop_pvalue([1.0, 0.0, 0.5], [1.0, 0.0, 0.5]) == 1.0
    assert paired_drop_pvalue([], []) == 1.0


def _exact_swap_pvalue(nn, nd, bn, bd, higher_is_better):
    """P(resampled <= observed) over all 2^n ways of swapping (new, base) pairs, by enumeration."""
    sign = 1 if higher_is_better else -1
    stat = lambda n_num, n_den, b_num, b_den: sign * (sum(n_num) / sum(n_den) - sum(b_num) / sum(b_den))  # noqa: E731
    observed = stat(nn, nd, bn, bd)
    hits = 0
    for swap in itertools.product((False, True), repeat=len(nn)):
        pick = lambda x, y, swap=swap: [yi if s else xi for xi, yi, s in zip(x, y, swap)]  # noqa: E731
        hits += stat(pick(nn, bn), pick(nd, bd), pick(bn, nn), pick(bd, nd)) <= observed + 1e-12
    return hits / 2 ** len(nn)


@pytest.mark.parametrize("case", range(8))
def test_ratio_paired_test_matches_exact_enumeration(case):
    """Corpus WER (errors / words): the paired swap test against all 2^n swaps. Even cases
    share each sample's word count between runs (one reference); odd ones do not."""
    rng = np.random.default_rng(200 + case)
    n = 11
    words = rng.integers(3, 15, n).astype(float)
    base_err = rng.binomial(words.astype(int), 0.3).astype(float)
    new_err = np.maximum(0, base_err + rng.integers(-2, 4 if case % 3 else 2, n))
    new_words = words if case % 2 == 0 else words + rng.integers(0, 3, n)
    ref = _exact_swap_pvalue(new_err, new_words, base_err, words, higher_is_better=False)
    ours = paired_ratio_drop_pvalue(new_err, new_words, base_err, words, higher_is_better=False,
                                    seed=case, n_perm=20000)
    assert ours == pytest.approx(ref, abs=0.015)


def test_ratio_paired_test_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="one entry per shared sample"):
        paired_ratio_drop_pvalue([1, 2], [3, 3], [1], [3])


# ------------------------------------------------------------ edges the mutation run found untested


def test_empty_cell_two_cluster_cell_and_rounding():
    boot = Bootstrap(["a", "a", "b", "c"], n_boot=500)
    assert boot.mean_ci([float("nan")] * 4) == {"value": None, "ci": [None, None], "n": 0}
    two = boot.mean_ci([1.0, 1.0, 0.0, 0.0], np.array([True, True, True, False]))  # clusters a and b only
    assert two["n"] == 3 and ci_bounds(two) is not None  # two clusters are enough to resample
    third = mean_with_ci([1.0, 0.0, 0.0], ["a", "b", "c"], n_boot=200)
    assert third["value"] == 33.3333  # reported to 4 decimals
    assert all(round(b, 4) == b for b in third["ci"])


def test_ci_bounds_with_one_missing_end_is_no_interval():
    assert ci_bounds({"ci": [None, 2.0]}) is None and ci_bounds({"ci": [1.0, None]}) is None


def test_aggregate_scores_is_seeded_honours_scale_and_tolerates_missing_metadata():
    rng = np.random.default_rng(0)
    records = [{"scores": {"acc": float(rng.random() < 0.6)}, "cluster": f"c{i // 3}"} for i in range(90)]
    a = aggregate_scores(records, [MetricSpec("acc", scale=1.0)], ["snr"])
    b = aggregate_scores(records, [MetricSpec("acc", scale=1.0)], ["snr"])
    assert a == b and a[1] == {}  # reproducible (a fixed seed); no metadata means no groups
    assert 0 < a[0]["acc"]["value"] < 1 and a[0]["acc"]["ci"][1] <= 1  # scale 1: a fraction, not percent
    assert mean_with_ci([r["scores"]["acc"] for r in records], [r["cluster"] for r in records]) == \
        mean_with_ci([r["scores"]["acc"] for r in records], [r["cluster"] for r in records])


def test_ratio_paired_test_identical_runs_and_floor():
    assert paired_ratio_drop_pvalue([1, 2], [5, 5], [1, 2], [5, 5]) == 1.0
    n_perm = 2000
    worse = paired_ratio_drop_pvalue([3.0] * 30, [5.0] * 30, [1.0] * 30, [5.0] * 30, higher_is_better=False,
                                     n_perm=n_perm)
    assert worse == pytest.approx(1 / (n_perm + 1))  # no swap pattern is as bad (2^-30), the +1 remains


def test_ratio_paired_test_over_several_memory_chunks_matches_normal_approximation():
    """1000 samples: the resamples come in chunks; with equal denominators the swap
    distribution of the difference is ~ normal with sd sqrt(sum d^2) / W."""
    from scipy.stats import norm

    rng = np.random.default_rng(5)
    words = rng.integers(5, 12, 1000).astype(float)
    base = rng.binomial(words.astype(int), 0.3).astype(float)
    new = np.maximum(0, base + rng.integers(-1, 2, 1000))
    d = new - base
    expected = norm.cdf(-d.sum() / math.sqrt((d ** 2).sum()))  # fewer errors is better: orient by -d
    ours = paired_ratio_drop_pvalue(new, words, base, words, higher_is_better=False, n_perm=20000)
    # p ~ 0.33 here; counting only the last of 5 chunks would give ~0.07
    assert 0.2 < expected < 0.5 and ours == pytest.approx(expected, abs=0.02)


# ------------------------------------------------------------ seeded streams recomputed with numpy alone


def _numpy_cluster_bootstrap_ci(values, clusters, seed: int, n_boot: int) -> tuple[float, float]:
    """The documented cluster bootstrap from its seed, with numpy alone: resample b draws m
    cluster indices (default_rng(seed).integers(0, m) as int32, row by row), the resampled
    mean is sum(drawn clusters' sums) / sum(drawn clusters' sizes), the interval is the
    2.5% and 97.5% percentiles of those means, in percent."""
    ids: dict[str, int] = {}
    cid = np.array([ids.setdefault(str(c), len(ids)) for c in clusters])
    m = len(ids)
    draws = np.random.default_rng(seed).integers(0, m, size=(n_boot, m), dtype=np.int32)
    times_drawn = np.stack([np.bincount(row, minlength=m) for row in draws])
    sums = np.bincount(cid, weights=np.asarray(values, dtype=float), minlength=m)
    sizes = np.bincount(cid, minlength=m)
    lo, hi = np.percentile(times_drawn @ sums / (times_drawn @ sizes), [2.5, 97.5])
    return 100 * lo, 100 * hi


def _continuous_clustered_data(seed: int = 9, n: int = 60, n_clusters: int = 17):
    rng = np.random.default_rng(seed)
    return list(rng.uniform(0, 1, n)), [f"clip{int(c)}" for c in rng.integers(0, n_clusters, n)]


# float32 resampled means: 1e-7 relative of 100, plus the 4-decimal rounding
CI_ROUNDING = 2e-4


def test_bootstrap_interval_is_recomputable_from_its_seed_with_numpy_alone():
    """A stored run's intervals can be reproduced from its seed: every entry point, with its
    default seed (0) and resample count (1000) and with explicit ones."""
    values, clusters = _continuous_clustered_data()
    records = [{"scores": {"acc": v}, "cluster": c} for v, c in zip(values, clusters)]
    default = _numpy_cluster_bootstrap_ci(values, clusters, seed=0, n_boot=1000)
    seeded = _numpy_cluster_bootstrap_ci(values, clusters, seed=5, n_boot=300)
    assert np.abs(np.subtract(default, seeded)).min() > 10 * CI_ROUNDING  # the seed is visible
    for ci in (mean_with_ci(values, clusters)["ci"], Bootstrap(clusters).mean_ci(values)["ci"],
               aggregate_scores(records, [MetricSpec("acc")])[0]["acc"]["ci"]):
        assert ci == pytest.approx(default, abs=CI_ROUNDING)
    assert mean_with_ci(values, clusters, seed=5, n_boot=300)["ci"] == pytest.approx(seeded, abs=CI_ROUNDING)
    assert Bootstrap(clusters, seed=5, n_boot=300).mean_ci(values)["ci"] == pytest.approx(seeded, abs=CI_ROUNDING)
    seed5 = _numpy_cluster_bootstrap_ci(values, clusters, seed=5, n_boot=1000)
    assert aggregate_scores(records, [MetricSpec("acc")], seed=5)[0]["acc"]["ci"] == \
        pytest.approx(seed5, abs=CI_ROUNDING)


def test_bootstrap_weights_count_each_resample_s_draws():
    """weights[b, c] = how often cluster c was drawn in resample b: m draws per row, every
    cluster drawn about once per resample on average; one cluster gives no weights at all."""
    m, n_boot = 7, 4000
    w = Bootstrap([f"c{i % m}" for i in range(30)], n_boot=n_boot).weights
    assert w.shape == (n_boot, m) and (w.sum(axis=1) == m).all() and (w == np.round(w)).all()
    # Binomial(m, 1/m) per cell: mean 1, sd sqrt(1 - 1/m) / sqrt(n_boot) for each column's average
    assert np.abs(w.mean(axis=0) - 1).max() < 4 * math.sqrt(1 - 1 / m) / math.sqrt(n_boot)
    assert Bootstrap(["only"] * 5).weights is None


def test_two_clusters_are_enough_for_an_interval():
    """Two one-sample clusters, scores 1 and 0: a resample's mean is Binomial(2, 1/2) / 2,
    0 with probability 1/4, so the 95% interval is [0, 100]."""
    assert mean_with_ci([1.0, 0.0], ["a", "b"]) == {"value": 50.0, "ci": [0.0, 100.0], "n": 2}


def test_mean_ci_many_defaults_to_percent_and_needs_one_scale_per_column():
    boot = Bootstrap(["a", "b", "c", "d"])
    (out,) = boot.mean_ci_many([([1.0, 0.0, 0.0, 1.0], None)])
    assert out["value"] == 50.0
    with pytest.raises(ValueError):
        boot.mean_ci_many([([1.0, 0.0, 0.0, 1.0], None)] * 2, [100.0])


def test_none_scores_are_not_counted():
    out = Bootstrap(["a", "b", "c", "d"], n_boot=200).mean_ci([1.0, None, 0.0, 1.0])
    assert out["n"] == 3 and out["value"] == 66.6667


def test_scalar_scores_are_refused_with_a_message():
    with pytest.raises(ValueError, match="^column 0: a scalar scores for 2 cluster labels; pass one score per sample$"):
        Bootstrap(["a", "b"]).mean_ci(1.0)


def test_rarely_drawn_group_gives_an_interval_without_warnings():
    """A group of 2 of 40 clusters is missing from about (38/40)^40 = 13% of resamples:
    those are left out, silently (0 / 0 there is expected, not a user's problem)."""
    clusters = [f"c{i}" for i in range(40)]
    values = [float(i % 3 == 0) for i in range(40)]
    group = np.array([i < 2 for i in range(40)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = Bootstrap(clusters).mean_ci(values, group)
    assert out["n"] == 2 and out["ci"] == [0.0, 100.0]  # cluster 0 scores 1, cluster 1 scores 0


def test_every_reported_number_has_four_decimals():
    values, clusters = _continuous_clustered_data(seed=3)
    rng = np.random.default_rng(4)
    columns = [(np.asarray(values) ** k, rng.random(len(values)) < 0.7) for k in range(1, 7)]
    for out in Bootstrap(clusters).mean_ci_many(columns, 1.0):
        for x in (out["value"], *out["ci"]):
            assert round(x, 4) == x


def test_group_keys_are_the_exact_metadata_strings_and_missing_values_join_none():
    """A record without the grouping key (or with None) is in no group, not even in the group
    of an empty-string or "None" value; keys are compared as exact strings (a trailing NUL
    does not vanish as it would in a fixed-width numpy string array)."""
    tagged = {"": 1.0, "None": 0.0, "x": 1.0, "x\x00": 0.0}
    records = [{"scores": {"acc": v}, "cluster": f"c{i}", "metadata": {"snr": k}}
               for i, (k, v) in enumerate(tagged.items())]
    records += [{"scores": {"acc": 0.5}, "cluster": "u", "metadata": {"snr": None}},
                {"scores": {"acc": 0.5}, "cluster": "v", "metadata": {}}]
    _, groups = aggregate_scores(records, [MetricSpec("acc")], ["snr"])
    assert sorted(groups["snr"]) == sorted(tagged)
    for k, v in tagged.items():
        assert (groups["snr"][k]["acc"]["n"], groups["snr"][k]["acc"]["value"]) == (1, 100 * v), k


# ------------------------------------------------------------ paired tests: seeded streams, edges, ties


def _numpy_swap_pvalue(nn, nd, bn, bd, higher_is_better: bool, seed: int, n_perm: int) -> float:
    """The documented swap test from its seed, with numpy alone: resample r swaps pair i where
    default_rng(seed).random() < 1/2 (row by row), p = (1 + #{resampled <= observed}) / (1 + n_perm)."""
    nn, nd, bn, bd = (np.asarray(x, dtype=float) for x in (nn, nd, bn, bd))
    sign = 1 if higher_is_better else -1
    swap = np.random.default_rng(seed).random((n_perm, len(nn))) < 0.5
    new_side = np.where(swap, bn, nn).sum(1) / np.where(swap, bd, nd).sum(1)
    base_side = np.where(swap, nn, bn).sum(1) / np.where(swap, nd, bd).sum(1)
    observed = sign * (nn.sum() / nd.sum() - bn.sum() / bd.sum())
    return (1 + int(np.sum(sign * (new_side - base_side) <= observed + 1e-12))) / (1 + n_perm)


def _integer_wer_counts(seed: int, n: int):
    """Integer error and word counts (exact sums, so ties are decided the same way everywhere)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(3, 15, n)
    base = rng.binomial(words, 0.3)
    return np.maximum(0, base + rng.integers(-2, 3, n)), words, base, words + rng.integers(0, 2, n)


def test_ratio_paired_test_is_recomputable_from_its_seed_with_numpy_alone():
    """Defaults (higher is better, seed 0, 10000 resamples) and explicit arguments; 500
    samples split the resamples into memory chunks of 8000."""
    new, new_words, base, base_words = _integer_wer_counts(21, 15)
    expected = _numpy_swap_pvalue(new, new_words, base, base_words, True, seed=0, n_perm=10000)
    assert paired_ratio_drop_pvalue(new, new_words, base, base_words) == pytest.approx(expected, rel=1e-12)
    expected = _numpy_swap_pvalue(new, new_words, base, base_words, False, seed=4, n_perm=37)
    assert paired_ratio_drop_pvalue(new, new_words, base, base_words, False, seed=4, n_perm=37) == \
        pytest.approx(expected, rel=1e-12)
    rng = np.random.default_rng(22)
    words = rng.integers(3, 15, 500)
    new, base = rng.binomial(words, 0.3), rng.binomial(words, 0.3)  # no true difference: p in the middle
    expected = _numpy_swap_pvalue(new, words, base, words, False, seed=2, n_perm=10000)
    assert 0.01 < expected < 0.99
    assert paired_ratio_drop_pvalue(new, words, base, words, False, seed=2) == \
        pytest.approx(expected, rel=1e-12)


def test_sign_flip_test_is_recomputable_from_its_seed_with_numpy_alone():
    rng = np.random.default_rng(23)
    base = rng.integers(0, 5, 14) / 4  # quarters: exact sums
    new = np.clip(base + rng.integers(-1, 2, 14) / 4, 0, 1)
    ones = np.ones(14)
    assert paired_drop_pvalue(new, base) == pytest.approx(_numpy_swap_pvalue(new, ones, base, ones, True, 0, 10000),
                                                          rel=1e-12)
    assert paired_drop_pvalue(new, base, False, seed=6, n_perm=41) == \
        pytest.approx(_numpy_swap_pvalue(new, ones, base, ones, False, 6, 41), rel=1e-12)


def test_paired_test_refuses_runs_of_different_length_with_a_message():
    with pytest.raises(ValueError, match="^paired test: 3 new scores against 2 baseline scores$"):
        paired_drop_pvalue([1.0, 0.0, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"one entry per shared sample \(got 2, 2, 1, 2\)$"):
        paired_ratio_drop_pvalue([1, 2], [3, 3], [1], [3, 3])


def test_one_differing_sample_is_tested():
    """McNemar with one discordant pair, worse: P(X >= 1), X ~ Binomial(1, 1/2) = 1/2. The
    swap test with one sample: the observed or its mirror, half the resamples each."""
    assert paired_drop_pvalue([0.0], [1.0]) == pytest.approx(0.5)
    assert paired_drop_pvalue([0.25], [0.75], n_perm=4000) == pytest.approx(0.5, abs=0.04)
    assert paired_ratio_drop_pvalue([3], [5], [1], [5], higher_is_better=False, n_perm=4000) == \
        pytest.approx(0.5, abs=0.04)


def test_binary_against_non_binary_scores_is_the_sign_flip_test():
    """McNemar needs 0/1 scores on both sides; one side with partial credit is compared by
    scipy's exact paired permutation test instead."""
    binary = np.array([1.0, 0, 0, 1, 0, 0, 1, 0, 0, 1])
    partial = np.array([0.5, 0.5, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 1, 0.5])
    for new, base in ((binary, partial), (partial, binary)):
        ref = stats.permutation_test((new, base), lambda x, y, axis: np.mean(x - y, axis=axis),
                                     permutation_type="samples", n_resamples=np.inf, alternative="less").pvalue
        assert paired_drop_pvalue(new, base, n_perm=20000) == pytest.approx(ref, abs=0.015)


def test_bool_numerators_count_as_zero_one():
    """Per-sample correct flags as numpy booleans (pred == gold): the ratio test is that of 0/1 scores."""
    rng = np.random.default_rng(8)
    base = rng.random(11) < 0.7
    new = np.where(rng.random(11) < 0.3, ~base, base)
    ones = [1.0] * 11
    ref = _exact_swap_pvalue(new.astype(float), ones, base.astype(float), ones, higher_is_better=True)
    assert paired_ratio_drop_pvalue(new, np.ones(11, bool), base, np.ones(11, bool), n_perm=20000) == \
        pytest.approx(ref, abs=0.015)


def test_ratio_paired_test_without_samples_or_without_differences_is_one():
    assert paired_ratio_drop_pvalue([], [], [], []) == 1.0
    assert paired_ratio_drop_pvalue([0, 0], [0, 0], [0, 0], [0, 0]) == 1.0  # identical, even with no words


@pytest.mark.parametrize("new_den,base_den", [([0, 0], [4, 4]), ([4, 4], [0, 0]), ([0, 0], [0, 0])])
def test_ratio_paired_test_refuses_a_run_without_denominator(new_den, base_den):
    with pytest.raises(ValueError, match="^paired test: a ratio metric needs a positive total denominator in both "
                                         "runs$"):
        paired_ratio_drop_pvalue([1, 0], new_den, [0, 1], base_den)


@pytest.mark.parametrize("nn,nd,bn,bd,expected", [
    # one sample's words on each side: swapping it alone leaves one side 0 / 0 (undefined, not
    # counted); no swap and both swaps tie: p ~ 2/4
    ([1, 0], [1, 0], [0, 1], [0, 1], 0.5),
    # swapping sample 1 alone gives new 1/0 (inf, not counted), sample 2 alone base 1/0 (-inf,
    # counted), with none and both counted: p ~ 3/4
    ([1, 1], [1, 0], [0, 0], [0, 1], 0.75),
])
def test_resamples_with_an_empty_denominator_pass_silently(nn, nd, bn, bd, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = paired_ratio_drop_pvalue(nn, nd, bn, bd, n_perm=4000)
    assert p == pytest.approx(expected, abs=0.04)  # 4000 resamples: sd <= 0.008


@pytest.mark.parametrize("a,eps,higher_is_better,tie", [
    (0.0, 1e-12, True, True),     # exactly at the tolerance 1e-12 (observed 0): still a tie
    (1.0, 0.7e-12, True, True),   # |observed| ~ 0.5: tolerance 1e-12
    (1.0, 0.7e-12, False, True),
    (1.0, 1.5e-12, True, False),  # beyond the tolerance: a resample less extreme than observed
    (4.0, 1.5e-12, True, True),   # |observed| ~ 2: tolerance 2e-12 (relative)
])
def test_round_off_ties_count_as_extreme(a, eps, higher_is_better, tie):
    """Two samples, one word each; sample 2's swap moves the statistic by +eps (less extreme)
    and sample 1's by about -a. A move within 1e-12 * max(1, |observed|) is float round-off
    and counts as a tie: all 4 swap patterns count (p = 1); beyond it 3 of 4 do (p ~ 3/4).
    With a = 0 the runs are [eps, 0] and [0, eps]: observed 0, sample 2's swap gives exactly 1e-12."""
    new, base = [a if a else eps, 0.0], [0.0, eps]
    if not higher_is_better:  # the same statistics with the runs' roles exchanged
        new, base = base, new
    p = paired_ratio_drop_pvalue(new, [1, 1], base, [1, 1], higher_is_better, n_perm=4000)
    if tie:
        assert p == 1.0
    else:
        assert p == pytest.approx(0.75, abs=0.04)
