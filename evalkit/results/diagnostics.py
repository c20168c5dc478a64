"""Run diagnostics computed from sample records alone: position bias and extraction failures.

`run_diagnostics(task, records)` is the one entry point (run.json's `diagnostics`, refreshed by
`evalkit score`); the functions below are pure functions of sample records (see docs/records.md).
Pass the records that reached the model (`error_kind != "input"`), as the metrics are.

Position bias (`diagnostics.position_bias`, MCQ tasks only). Per choice count k:
- `gold`: how often the gold answer was shown at each position (A, B, ...);
- `predicted`: how often the model's extracted answer was at each position (records with an
  extracted answer; `unextracted` counts the others: model errors and extraction failures);
- `accuracy_by_gold_position`: the task's per-record `accuracy` for the records whose gold sat at
  each position, with the clustered bootstrap CI every metric uses;
- `chi_square`: Pearson's goodness-of-fit test (`scipy.stats.chisquare`) of the predicted-position
  counts against the counts expected if the model picked positions as often as the gold sits there:
  expected[j] = n * (gold_extracted[j] / n) = gold_extracted[j], with `gold_extracted` the gold
  histogram of the n records that have an extracted answer, so that failing to answer is not read as avoiding a
  position. Degrees of freedom k - 1. Undefined (statistic and p None, `reason` says why) when
  fewer than two records have an answer, or when the gold never sits at a position among them
  (an expected count of 0). `min_expected` < 5 marks the chi-square approximation as rough.
`combined`: the sum of the per-k statistics against the chi-square with the summed degrees of
freedom. The per-k tests use disjoint records (each record has one choice count), so under the
null their statistics are independent chi-square variables and their sum is chi-square with the
summed degrees of freedom (the additivity of independent chi-square variables).

Why balanced choices make the test well posed: `--choices balanced` puts the gold at every
position equally often for each k (within one), so the gold distribution is uniform. A model with
no position preference then predicts every position equally often in expectation *whatever its
accuracy*: its right answers follow the (uniform) gold, and its wrong answers, spread over the
other positions, are uniform too. Any departure from the expected counts is a preference for
positions. Under a skewed gold (`--choices original`: upstream answer keys lean to some letters)
an unbiased but imperfect model's histogram is a mix of the gold and its complement, so the test
would confound accuracy with bias. `gold_balanced` (per k: gold counts differ by at most one) says
which case a run is; the statistic is reported either way and the report warns when unbalanced.
A `--limit`/`--shard` subset of a balanced run is near-uniform but not exactly balanced.

Extraction (`diagnostics.extraction`): over records without a model error, the count and rate of
each extraction stage, the failure rate (stages in `FAILURE_STAGES`, as `counts.extraction_failures`
counts them), and up to `EXAMPLES` failing records (key, stage, output cut to `EXAMPLE_CHARS`),
taken round-robin over the failure stages so each kind of failure shows.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from evalkit.protocol.choices import LETTERS
from evalkit.protocol.extract import FAILURE_STAGES

EXAMPLES = 5
EXAMPLE_CHARS = 300
#: the textbook validity condition of the chi-square approximation
MIN_EXPECTED = 5.0


def _is_mcq(r: dict[str, Any]) -> bool:
    return r.get("choices") is not None and r.get("gold") is not None


def predicted_position(r: dict[str, Any]) -> int | None:
    """The position (0-based, in the order shown) of the record's extracted answer, or None."""
    x = r.get("extracted")
    if not isinstance(x, str) or len(x) != 1 or x not in LETTERS:
        return None
    i = LETTERS.index(x)
    if i >= len(r["choices"]):
        raise ValueError(f"record {r.get('key')!r}: extracted {x!r} but only {len(r['choices'])} choices were shown")
    return i


def chi_square_vs_gold(predicted: list[int], gold: list[int]) -> dict[str, Any]:
    """Pearson's test of `predicted` position counts against the counts expected under the
    positions' gold frequencies `gold` (both over the same records, one count per position)."""
    from scipy.stats import chisquare

    k, n = len(gold), sum(predicted)
    if len(predicted) != k:
        raise ValueError(f"chi_square_vs_gold: {len(predicted)} predicted counts for {k} positions")
    if sum(gold) != n:
        raise ValueError(f"chi_square_vs_gold: {n} predictions but {sum(gold)} gold counts; use the same records")
    out: dict[str, Any] = {"statistic": None, "p_value": None, "df": k - 1, "n": n, "min_expected": None}
    if n < 2:
        return {**out, "reason": f"{n} record(s) with an extracted answer: nothing to test"}
    empty = [LETTERS[j] for j in range(k) if gold[j] == 0]
    if empty:
        return {**out, "reason": f"the gold never sits at {', '.join(empty)} among the answered records "
                                 "(expected count 0): the test is undefined"}
    # n * (gold[j] / n): the gold histogram of the same records is the expected count itself
    expected = [float(g) for g in gold]
    res = chisquare(predicted, expected)
    out.update(statistic=float(res.statistic), p_value=float(res.pvalue), min_expected=min(expected))
    if min(expected) < MIN_EXPECTED:
        out["note"] = f"an expected count below {MIN_EXPECTED:g}: the chi-square approximation is rough"
    return out


def position_bias(records: list[dict[str, Any]], seed: int = 0) -> dict[str, Any] | None:
    """Predicted vs gold position histograms, accuracy by gold position and the chi-square test
    (module docstring). None when no record is multiple choice."""
    import numpy as np
    from scipy.stats import chi2

    from evalkit.results.metrics import Bootstrap

    mcq = [r for r in records if _is_mcq(r)]
    if not mcq:
        return None
    by_k: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in mcq:
        gold = r["gold"]
        if not (isinstance(gold, int) and 0 <= gold < len(r["choices"])):
            raise ValueError(f"record {r.get('key')!r}: gold {gold!r} is not a position among "
                             f"{len(r['choices'])} choices")
        by_k[len(r["choices"])].append(r)
    per_k: dict[str, Any] = {}
    total_stat, total_df, tested = 0.0, 0, 0
    for k in sorted(by_k):
        rs = by_k[k]
        letters = list(LETTERS[:k])
        gold = [0] * k
        gold_answered = [0] * k
        pred = [0] * k
        for r in rs:
            gold[r["gold"]] += 1
            p = predicted_position(r)
            if p is not None:
                pred[p] += 1
                gold_answered[r["gold"]] += 1
        test = chi_square_vs_gold(pred, gold_answered)
        if test["statistic"] is not None:
            total_stat += test["statistic"]
            total_df += test["df"]
            tested += 1
        missing = next((r.get("key") for r in rs if r.get("cluster") is None), None)
        if missing is not None:  # the CI resamples clusters: never guess one
            raise ValueError(f"record {missing!r} has no cluster; its CI cannot be computed")
        boot = Bootstrap([str(r["cluster"]) for r in rs], seed)
        acc = np.array([np.nan if (v := (r.get("scores") or {}).get("accuracy")) is None else float(v) for r in rs])
        gold_pos = np.array([r["gold"] for r in rs])
        stats = boot.mean_ci_many([(acc, gold_pos == j) for j in range(k)])
        per_k[str(k)] = {
            "records": len(rs),
            "gold": dict(zip(letters, gold)),
            "predicted": dict(zip(letters, pred)),
            "unextracted": len(rs) - sum(pred),
            "gold_balanced": max(gold) - min(gold) <= 1,
            "accuracy_by_gold_position": dict(zip(letters, stats)),
            "chi_square": test,
        }
    combined: dict[str, Any] = {"statistic": None, "p_value": None, "df": total_df, "choice_counts_tested": tested}
    if tested:
        combined.update(statistic=total_stat, p_value=float(chi2.sf(total_stat, total_df)))
    return {"test": "scipy.stats.chisquare of predicted-position counts against the gold histogram of the "
                    "same records, per choice count; combined = sum of statistics and of degrees of freedom",
            "by_choice_count": per_k, "combined": combined,
            "gold_balanced": all(v["gold_balanced"] for v in per_k.values())}


def extraction_diagnostics(records: list[dict[str, Any]], examples: int = EXAMPLES,
                           chars: int = EXAMPLE_CHARS) -> dict[str, Any]:
    """Extraction stage counts and rates, the failure rate and a few failing records (module docstring)."""
    scored = [r for r in records if r.get("error") is None]
    n = len(scored)
    stages = Counter(str(r.get("extraction_stage") or "unscored") for r in scored)
    failures = [r for r in scored if r.get("extraction_stage") in FAILURE_STAGES]
    rate = lambda c: (c / n) if n else None
    by_stage = {s: {"count": c, "rate": rate(c), "failure": s in FAILURE_STAGES}
                for s, c in sorted(stages.items(), key=lambda kv: (-kv[1], kv[0]))}
    queues: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in failures:
        queues[r["extraction_stage"]].append(r)
    order = sorted(queues, key=lambda s: (-len(queues[s]), s))
    picked: list[dict[str, Any]] = []
    depth = 0
    while len(picked) < examples and any(depth < len(queues[s]) for s in order):
        for s in order:
            if depth < len(queues[s]) and len(picked) < examples:
                picked.append(queues[s][depth])
        depth += 1
    cut = lambda t: None if t is None else (t if len(t) <= chars else t[:chars] + "…")
    return {
        "records": n,
        "model_errors": len(records) - n,
        "failures": len(failures),
        "failure_rate": rate(len(failures)),
        "by_stage": by_stage,
        "examples": [{"key": r.get("key"), "stage": r.get("extraction_stage"), "output": cut(r.get("output"))}
                     for r in picked],
    }


def run_diagnostics(task, records: list[dict[str, Any]]) -> dict[str, Any]:
    """run.json's `diagnostics` entries that records alone determine: {"extraction", and for MCQ
    tasks "position_bias"}. `records`: those that reached the model. Other entries of
    `diagnostics` (the audio check's `audio_reliance`) are not touched: merge, do not replace."""
    out: dict[str, Any] = {"extraction": extraction_diagnostics(records)}
    if getattr(task, "is_mcq", False):
        bias = position_bias(records)
        if bias is not None:
            out["position_bias"] = bias
    return out
