"""Regression checks CI can run: is a run worse than its baseline?

Every metric is checked overall AND in every group of every grouping the baseline
reports (e.g. every SNR of SSEU), one output row per (metric, group); a regression
in any one row fails the check.

With `--tolerance X`, a row fails when its metric drops by more than X (in the
metric's units, e.g. accuracy points).

Without one, each row whose metric has per-sample data in both runs gets a
one-sided paired test on the samples both runs share (and, for a group, that the
baseline puts in the group):
- a mean metric (per-sample score of the same name): exact McNemar for 0/1 scores,
  a sign-flip permutation test otherwise;
- a corpus ratio metric M = sum(M_errors) / sum(M_words) (corpus WER: the run.json
  entry carries `total_errors`, the records per-sample `M_errors` and `M_words`): a
  paired permutation test that swaps each sample's (new, baseline) pair. The
  per-sample parts are used only when they reproduce the recorded value of the row
  (in both runs); otherwise the row falls back as below.

Multiple comparisons: one check runs many paired tests (the demo: WER overall and
at 6 SNRs), so a per-test alpha would flag a harmless re-run far more often than
alpha. The p-values of all paired tests of one check are Holm-adjusted together
(Holm-Bonferroni: the family-wise error rate over every row is at most alpha) and
a row fails when its drop is positive and its adjusted p < alpha. Rows carry both
`p_value` (adjusted, what the verdict uses) and `p_raw`.

Rows without per-sample data in both runs (mAP, a leaderboard JSON baseline) fall
back to the baseline's 95% CI: the row fails when the run lands beyond the bound on
the worse side. A baseline row without an interval (too few samples or clusters)
cannot be checked this way: its verdict is "untested" (listed, not failing).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.engine.store import SAMPLES, latest_by_key, read_records
from evalkit.protocol.circular import collapse_rotations
from evalkit.results.leaderboard import load_run, model_label
from evalkit.results.metrics import ci_bounds, paired_drop_pvalue, paired_ratio_drop_pvalue

ALPHA = 0.05
RATIO_PARTS = ("_errors", "_words")  # per-sample numerator and denominator of a corpus ratio metric


def _per_sample(run_dir: Path | None) -> dict[str, dict[str, Any]] | None:
    """sample id -> its (rotation-collapsed, latest) record; None without samples.jsonl."""
    if run_dir is None or not (run_dir / SAMPLES).exists():
        return None
    records = list(latest_by_key(read_records(run_dir / SAMPLES)).values())
    return {r["sample_id"]: r for r in collapse_rotations(records)}


def _baseline(path: Path, run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], Path | None]:
    """(metrics, groups, run dir or None) from a run dir, a run.json or a leaderboard JSON."""
    p = Path(path)
    data = load_run(p)
    if "rows" in data:  # leaderboard file
        task, model = run["task"]["name"], model_label(run)
        rows = [r for r in data["rows"] if r["task"] == task and r["model"] == model] or \
               [r for r in data["rows"] if r["task"] == task]
        if not rows:
            raise ValueError(f"{p}: leaderboard has no row for task {task!r}")
        r = rows[0]
        return {r["metric"]: {"value": r["value"], "ci": r["ci"], "n": r["n"],
                              "higher_is_better": r["higher_is_better"]}}, {}, None
    if data.get("task", {}).get("name") != run["task"]["name"]:
        raise ValueError(f"{p}: baseline is task {data.get('task', {}).get('name')!r}, "
                         f"the run is {run['task']['name']!r}")
    return data["metrics"], data.get("groups", {}), (p if p.is_dir() else p.parent)


def _in_group(record: dict[str, Any], grouping: str | None, key: str | None) -> bool:
    if grouping is None:
        return True
    value = (record.get("metadata") or {}).get(grouping)
    return value is not None and str(value) == key


def _ratio_parts(records: list[dict[str, Any]], name: str, stat: dict[str, Any]) -> dict[str, tuple] | None:
    """sample id -> (errors, words) when the records' parts reproduce `stat`'s value
    (100 * sum(errors) / sum(words)); None when the metric is not such a ratio."""
    if "total_errors" not in stat:
        return None
    num, den = (name + part for part in RATIO_PARTS)
    parts = {r["sample_id"]: (r["scores"][num], r["scores"][den]) for r in records
             if (r.get("scores") or {}).get(num) is not None and (r.get("scores") or {}).get(den) is not None}
    words = sum(w for _, w in parts.values())
    if not parts or words <= 0 or abs(100 * sum(e for e, _ in parts.values()) / words - stat["value"]) > 1e-3:
        return None
    return parts


def _paired_pvalue(name: str, grouping: str | None, key: str | None, new_stat: dict[str, Any],
                   base_stat: dict[str, Any], new_recs: dict | None, old_recs: dict | None,
                   higher_is_better: bool) -> tuple[float, int] | None:
    """(one-sided p, shared samples) of the row's paired test, or None where the row
    has no per-sample data in both runs."""
    if new_recs is None or old_recs is None:
        return None
    # the baseline decides group membership; a sample must be in both runs
    shared = [sid for sid, r in old_recs.items() if sid in new_recs and _in_group(r, grouping, key)]
    old_group = [old_recs[s] for s in shared]
    new_group = [new_recs[s] for s in shared]
    new_all = [r for r in new_recs.values() if _in_group(r, grouping, key)]
    old_all = [r for r in old_recs.values() if _in_group(r, grouping, key)]
    new_parts, old_parts = _ratio_parts(new_all, name, new_stat), _ratio_parts(old_all, name, base_stat)
    if new_parts is not None and old_parts is not None:
        both = [s for s in shared if s in new_parts and s in old_parts]
        if not both:
            return None
        p = paired_ratio_drop_pvalue([new_parts[s][0] for s in both], [new_parts[s][1] for s in both],
                                     [old_parts[s][0] for s in both], [old_parts[s][1] for s in both],
                                     higher_is_better)
        return p, len(both)
    pairs = [(n["scores"].get(name), o["scores"].get(name)) for n, o in zip(new_group, old_group)]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return None
    return paired_drop_pvalue([a for a, _ in pairs], [b for _, b in pairs], higher_is_better), len(pairs)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order): reject where adjusted < alpha."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [1.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def check(run_path: Path, baseline_path: Path, tolerance: float | None = None,
          alpha: float = ALPHA) -> tuple[bool, list[dict[str, Any]]]:
    """(failed, rows): one row per (metric, group) of the baseline that the run also reports."""
    run = load_run(run_path)
    run_dir = Path(run_path) if Path(run_path).is_dir() else Path(run_path).parent
    base_metrics, base_groups, base_dir = _baseline(baseline_path, run)
    new_recs = _per_sample(run_dir)
    old_recs = _per_sample(base_dir)
    cells: list[tuple[str | None, str | None, str, dict, dict]] = [
        (None, None, name, base, run["metrics"].get(name) or {}) for name, base in base_metrics.items()]
    for grouping, values in base_groups.items():
        for key, ms in values.items():
            new_ms = run.get("groups", {}).get(grouping, {}).get(key, {})
            cells += [(grouping, key, name, base, new_ms.get(name) or {}) for name, base in ms.items()]
    rows, tests = [], []
    for grouping, key, name, base, new in cells:
        if new.get("value") is None or base.get("value") is None:
            continue
        hib = base.get("higher_is_better", True)
        drop = (base["value"] - new["value"]) if hib else (new["value"] - base["value"])
        row = {"metric": name, "group": None if grouping is None else f"{grouping}={key}",
               "baseline": base["value"], "value": new["value"], "drop": round(drop, 4),
               "p_value": None, "p_raw": None}
        if tolerance is not None:
            row.update(method=f"tolerance {tolerance}", verdict="FAIL" if drop > tolerance else "ok")
        elif (paired := _paired_pvalue(name, grouping, key, new, base, new_recs, old_recs, hib)) is not None:
            row.update(method=f"paired test on {paired[1]} shared samples", p_raw=round(paired[0], 6))
            tests.append((row, paired[0]))
        elif (bounds := ci_bounds(base)) is not None:
            bound = bounds[0] if hib else bounds[1]
            bad = (new["value"] < bound) if hib else (new["value"] > bound)
            row.update(method="baseline 95% CI", verdict="FAIL" if bad else "ok")
        else:
            row.update(method="no per-sample scores and no baseline interval", verdict="untested")
        rows.append(row)
    for (row, _), adjusted in zip(tests, holm([p for _, p in tests])):
        row["p_value"] = round(adjusted, 6)
        if len(tests) > 1:
            row["method"] += f", Holm over {len(tests)} tests"
        row["verdict"] = "FAIL" if row["drop"] > 0 and adjusted < alpha else "ok"
    if not rows:
        raise ValueError(f"no metric in common between {run_path} and {baseline_path}")
    return any(r["verdict"] == "FAIL" for r in rows), rows
