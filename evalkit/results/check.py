"""Regression checks CI can run: is a run worse than its baseline?

With `--tolerance X`, a metric fails when it drops by more than X (in the
metric's units, e.g. accuracy points). Without one, each metric that has
per-sample scores in both runs gets a one-sided paired test on the samples both
runs share (exact McNemar for 0/1 scores, a sign-flip permutation test
otherwise); a significant drop (p < alpha) fails. Metrics without per-sample
scores (corpus WER, mAP) or a baseline without samples fall back to the
baseline's 95% CI: the run fails when it lands beyond the bound on the worse side.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.engine.store import SAMPLES, latest_by_key, read_records
from evalkit.protocol.circular import collapse_rotations
from evalkit.results.leaderboard import load_run, model_label
from evalkit.results.metrics import paired_drop_pvalue

ALPHA = 0.05


def _per_sample(run_dir: Path | None) -> dict[str, dict[str, Any]] | None:
    if run_dir is None or not (run_dir / SAMPLES).exists():
        return None
    records = list(latest_by_key(read_records(run_dir / SAMPLES)).values())
    return {r["sample_id"]: r["scores"] for r in collapse_rotations(records)}


def _baseline(path: Path, run: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """(metrics dict, run dir or None) from a run dir, a run.json or a leaderboard JSON."""
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
                              "higher_is_better": r["higher_is_better"]}}, None
    if data.get("task", {}).get("name") != run["task"]["name"]:
        raise ValueError(f"{p}: baseline is task {data.get('task', {}).get('name')!r}, "
                         f"the run is {run['task']['name']!r}")
    return data["metrics"], (p if p.is_dir() else p.parent)


def check(run_path: Path, baseline_path: Path, tolerance: float | None = None,
          alpha: float = ALPHA) -> tuple[bool, list[dict[str, Any]]]:
    run = load_run(run_path)
    run_dir = Path(run_path) if Path(run_path).is_dir() else Path(run_path).parent
    base_metrics, base_dir = _baseline(baseline_path, run)
    new_scores = _per_sample(run_dir)
    old_scores = _per_sample(base_dir)
    rows, failed = [], False
    for name, base in base_metrics.items():
        new = run["metrics"].get(name)
        if new is None or new.get("value") is None or base.get("value") is None:
            continue
        hib = base.get("higher_is_better", True)
        drop = (base["value"] - new["value"]) if hib else (new["value"] - base["value"])
        row = {"metric": name, "baseline": base["value"], "value": new["value"],
               "drop": round(drop, 4), "p_value": None}
        if tolerance is not None:
            row["method"] = f"tolerance {tolerance}"
            bad = drop > tolerance
        else:
            shared = []
            if new_scores is not None and old_scores is not None:
                shared = [sid for sid in new_scores if sid in old_scores
                          and new_scores[sid].get(name) is not None and old_scores[sid].get(name) is not None]
            if shared:
                p = paired_drop_pvalue([new_scores[s][name] for s in shared],
                                       [old_scores[s][name] for s in shared], hib)
                row.update(method=f"paired test on {len(shared)} shared samples", p_value=round(p, 6))
                bad = drop > 0 and p < alpha
            else:
                lo, hi = base.get("ci", [None, None])
                bound = lo if hib else hi
                row["method"] = "baseline 95% CI"
                bad = bound is not None and ((new["value"] < bound) if hib else (new["value"] > bound))
        row["verdict"] = "FAIL" if bad else "ok"
        failed |= bad
        rows.append(row)
    if not rows:
        raise ValueError(f"no metric in common between {run_path} and {baseline_path}")
    return failed, rows
