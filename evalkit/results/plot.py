"""Figures from run records (pure functions of run.json; matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.results.metrics import ci_bounds

SNR_ORDER = ["+inf", "10", "5", "0", "-5", "-10", "-inf"]


def group_order(keys: list[str]) -> list[str]:
    """Group values in reading order: SNRs from +inf down, then the rest sorted."""
    known = [k for k in SNR_ORDER if k in keys]
    return known + sorted(k for k in keys if k not in SNR_ORDER)


def legend_labels(runs: list[dict[str, Any]]) -> list[str]:
    """One legend entry per run: the model as the leaderboard names it (with its model/path argument) and
    the task; runs that would still share an entry are told apart by their run ids."""
    from evalkit.results.leaderboard import model_label

    labels = [f"{model_label(run)} on {run['task']['name']}" for run in runs]
    return [f"{lab} ({run['run_id'][:8]})" if labels.count(lab) > 1 else lab for lab, run in zip(labels, runs)]


def metric_by_group(runs: list[dict[str, Any]], metric: str, grouping: str, out: Path, title: str | None = None) -> Path:
    """One line per run: `metric` (with its 95% CI) for each value of `grouping`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = legend_labels(runs)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for run, label in zip(runs, labels):
        groups = run.get("groups", {}).get(grouping)
        if not groups:
            raise ValueError(f"run {run['run_id']} has no grouping {grouping!r}")
        keys = [k for k in group_order(list(groups)) if groups[k].get(metric, {}).get("value") is not None]
        if not keys:
            raise ValueError(f"run {run['run_id']} has no values of {metric!r} by {grouping!r}")
        vals = [groups[k][metric]["value"] for k in keys]
        # a group without an interval (too few samples or clusters) gets a point without error bars
        bounds = [ci_bounds(groups[k][metric]) or (v, v) for k, v in zip(keys, vals)]
        lo = [v - b[0] for v, b in zip(vals, bounds)]
        hi = [b[1] - v for v, b in zip(vals, bounds)]
        synthetic = " (synthetic data)" if run["task"].get("source", {}).get("synthetic") else ""
        ax.errorbar(keys, vals, yerr=[lo, hi], marker="o", capsize=3,
                    label=f"{label}{synthetic}")
    ax.set_xlabel(f"{grouping} (dB)" if grouping == "snr" else grouping)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title or f"{metric} by {grouping}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
