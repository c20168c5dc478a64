"""The leaderboard: a pure function of run records (run.json files)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from evalkit.engine.provenance import stable_hash
from evalkit.results.metrics import NO_INTERVAL, ci_bounds

SPLIT_GROUPINGS = ("axis",)  # perception / reasoning, wherever a task defines it


def load_run(path: Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "run.json"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no run record here (expected a run directory or its run.json)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None


def model_label(run: dict[str, Any]) -> str:
    m = run["model"]
    args = m.get("args", {})
    for k in ("model", "path", "size", "checkpoint"):
        if args.get(k):
            return f"{m['name']}:{args[k]}"
    return m["name"]


def row(run: dict[str, Any]) -> dict[str, Any]:
    main = run["task"]["main_metric"]
    metric = run["metrics"].get(main, {})
    splits = {}
    for g in SPLIT_GROUPINGS:
        for value, ms in run.get("groups", {}).get(g, {}).items():
            if main in ms:
                splits[value] = ms[main]["value"]
    return {
        "model": model_label(run),
        "task": run["task"]["name"],
        "metric": main,
        "value": metric.get("value"),
        "ci": list(ci_bounds(metric) or NO_INTERVAL),
        "n": metric.get("n", 0),
        "higher_is_better": metric.get("higher_is_better", True),
        "splits": splits,
        "official": run["metrics"].get(f"{main}_official", {}).get("value"),
        "status": run.get("status"),
        "synthetic": bool(run["task"].get("source", {}).get("synthetic", False)),
        "run_id": run["run_id"],
        # the audio check's verdict (None: not run) and the samples cut to fit the model (None: not reported)
        "audio_reliance_flag": (run.get("diagnostics") or {}).get("audio_reliance", {}).get("flag"),
        "truncated_audio": (run.get("long_audio") or {}).get("truncated"),
        "superseded": [],
    }


def build(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row per (model configuration, task); when several runs share one, the most
    recently updated complete run wins and the others are listed as superseded."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    superseded = []
    order = lambda r: (r.get("status") == "complete", r.get("updated", ""), r["run_id"])
    for run in sorted(runs, key=order):
        r = row(run)
        key = (stable_hash(run["model"].get("args", {})), r["model"], r["task"])
        if key in best:
            superseded.append(best[key]["run_id"])
            r["superseded"] = sorted([*best[key]["superseded"], best[key]["run_id"]])
        best[key] = r
    rows = sorted(best.values(), key=lambda r: (r["task"], r["model"], r["run_id"]))
    return {"schema_version": 1, "rows": rows, "superseded_run_ids": sorted(superseded)}


def _fmt(v: Any) -> str:
    return "" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def _fmt_ci(ci: list | None) -> str:
    """"[lo, hi]", or "" where the metric has no interval (too few samples or clusters)."""
    bounds = ci_bounds({"ci": ci})
    return "" if bounds is None else f"[{_fmt(bounds[0])}, {_fmt(bounds[1])}]"


def _notes(r: dict[str, Any]) -> str:
    notes = []
    if r.get("audio_reliance_flag"):
        notes.append("audio check: answers barely depend on the audio")
    if r.get("truncated_audio"):
        notes.append(f"{r['truncated_audio']} samples' audio cut to fit the model")
    if r.get("superseded"):
        notes.append("supersedes " + ", ".join(r["superseded"]))
    return "; ".join(notes)


def render(board: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(board, indent=1, ensure_ascii=False) + "\n"
    cols = ["task", "model", "metric", "value", "ci", "n", "official", "splits", "status", "run_id", "notes"]
    table = [[r["task"], r["model"] + (" (synthetic data)" if r["synthetic"] else ""), r["metric"],
              _fmt(r["value"]), _fmt_ci(r["ci"]), str(r["n"]), _fmt(r["official"]),
              " ".join(f"{k}={_fmt(v)}" for k, v in r["splits"].items()), r["status"] or "", r["run_id"],
              _notes(r)] for r in board["rows"]]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows(table)
        return buf.getvalue()
    if fmt == "md":
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in t) + " |" for t in table]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r}; use json, md or csv")
