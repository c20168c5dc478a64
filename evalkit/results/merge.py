"""Merge shard runs (`evalkit run ... --shard I/N` on several machines) into one run directory.

    evalkit merge results/runs/<id>-host1 results/runs/<id>-host2 ... --out results/runs/<id>

All inputs must have the same run id (same model identity, task, data, protocol and generation
settings; shard and limit are not part of the id). The merged directory holds the union of the
records (one per key; the same key twice must carry the same output, else it is an error naming
the key and both directories), re-scored and aggregated through the task exactly as
`evalkit score` (evalkit.engine.runner.rescore) does, and a run.json with `protocol.shard = null`,
counts and the gold-position histogram recomputed from the merged records, the timing sessions
of every shard, and `merged_from` listing the inputs. When the inputs are the shards 1/N..N/N of
one selection, records are written in the unsharded run's order, so the merged samples.jsonl
equals an unsharded run's. Status is "complete" only when every input is complete and the
shards cover 1..N (or an input was unsharded).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evalkit.engine.store import RunStore, latest_by_key, read_records

#: record fields that may legitimately differ between two copies of one result
VOLATILE_FIELDS = ("latency_s", "extra")


class MergeError(ValueError):
    pass


def _comparable(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k not in VOLATILE_FIELDS}


def _sample_runs(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Records grouped by consecutive sample id (rotations of one sample stay together)."""
    out: list[list[dict[str, Any]]] = []
    for r in records:
        if out and out[-1][0]["sample_id"] == r["sample_id"]:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    i, n = (int(x) for x in str(text).split("/"))
    return i - 1, n


def _presentations(records: list[dict[str, Any]]):
    """Minimal Presentations rebuilt from records (for the gold-position histogram)."""
    from evalkit.types import Presentation, Sample

    out = []
    for r in records:
        choices, gold, perm = r.get("choices"), r.get("gold"), r.get("permutation")
        if choices is None or gold is None:
            continue
        if perm is not None:
            original = [None] * len(choices)
            for i, orig in enumerate(perm):
                original[orig] = choices[i]
            answer = perm[gold]
        else:
            original, answer = list(choices), gold
        out.append(Presentation(r["key"], Sample(id=r["sample_id"], choices=original, answer=answer), perm,
                                r.get("rotation")))
    return out


def merge(run_dirs: list[Path], out: Path) -> Path:
    from evalkit.engine.runner import score_records
    from evalkit.protocol.choices import gold_histogram
    from evalkit.registry import get_task

    run_dirs = [Path(d) for d in run_dirs]
    out = Path(out)
    if not run_dirs:
        raise MergeError("nothing to merge: give the shard run directories")
    runs: list[dict[str, Any]] = []
    for d in run_dirs:
        p = d / "run.json"
        if not p.is_file():
            raise MergeError(f"{d}: no run.json; is this a run directory?")
        runs.append(json.loads(p.read_text(encoding="utf-8")))
    ids = {r["run_id"] for r in runs}
    if len(ids) > 1:
        listing = "; ".join(f"{d} -> {r['run_id']}" for d, r in zip(run_dirs, runs))
        raise MergeError(
            "cannot merge runs with different run ids (different model, task, data, protocol or generation "
            f"settings): {listing}")
    run_id = ids.pop()

    # ---- records: union, one per key ---------------------------------------------------------
    per_dir = [list(latest_by_key(read_records(d / "samples.jsonl")).values()) for d in run_dirs]
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[str, Path] = {}
    for d, recs in zip(run_dirs, per_dir):
        for r in recs:
            k = r["key"]
            if k in merged:
                if _comparable(merged[k]) != _comparable(r):
                    raise MergeError(
                        f"conflicting records for key {k!r}: {origin[k]} and {d} hold different results "
                        "(overlapping shards of different runs?); remove one of them")
                continue
            merged[k] = r
            origin[k] = d

    # ---- order: the unsharded order when the inputs are the shards 1/N..N/N -------------------
    shards = [_parse_shard(r.get("protocol", {}).get("shard")) for r in runs]
    ns = {s[1] for s in shards if s is not None}
    complete_shards = (None in shards) or (len(ns) == 1 and {s[0] for s in shards if s} == set(range(ns.pop())))
    order: list[dict[str, Any]] = []
    if all(s is not None for s in shards) and complete_shards and len({s[0] for s in shards}) == len(shards):
        n = shards[0][1]  # type: ignore[index]
        by_index = {s[0]: _sample_runs(recs) for s, recs in zip(shards, per_dir)}  # type: ignore[index]
        longest = max(len(v) for v in by_index.values())
        seen: set[str] = set()
        for j in range(longest):
            for i in range(n):
                runs_i = by_index.get(i, [])
                if j < len(runs_i):
                    for r in runs_i[j]:
                        if r["key"] not in seen:
                            seen.add(r["key"])
                            order.append(merged[r["key"]])
        order += [r for k, r in merged.items() if k not in seen]
    else:
        order = list(merged.values())

    # ---- re-score and aggregate through the task (as rescore does) ----------------------------
    first = runs[0]
    task = get_task(first["task"]["name"]).from_args(first["task"]["options"])
    agg = score_records(task, order)

    statuses = [r.get("status") for r in runs]
    status = "complete" if all(s == "complete" for s in statuses) and complete_shards else "incomplete"
    counts = agg["counts"]
    counts["selected_samples"] = sum(r.get("counts", {}).get("selected_samples", 0) for r in runs)
    counts["selected_calls"] = sum(r.get("counts", {}).get("selected_calls", 0) for r in runs)
    if None in shards:  # an unsharded input already selected everything
        unsharded = [r for r, s in zip(runs, shards) if s is None]
        counts["selected_samples"] = max(r["counts"].get("selected_samples", 0) for r in unsharded)
        counts["selected_calls"] = max(r["counts"].get("selected_calls", 0) for r in unsharded)
    counts["task_samples"] = first.get("counts", {}).get("task_samples")

    sessions = []
    for d, r, s in zip(run_dirs, runs, shards):
        for sess in r.get("timings", {}).get("sessions", []):
            sessions.append({**sess, "shard": f"{s[0] + 1}/{s[1]}" if s else None, "from": str(d)})
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    limits = {r.get("protocol", {}).get("limit") for r in runs}
    protocol = dict(first.get("protocol", {}))
    protocol.update(shard=None, limit=limits.pop() if len(limits) == 1 else None)
    if task.is_mcq:
        protocol["gold_positions"] = gold_histogram(_presentations(order))
    model = dict(first.get("model", {}))
    model["info"] = next((r["model"]["info"] for r in runs if r.get("model", {}).get("info")), {})

    run = {
        **first,
        "run_id": run_id,
        "status": status,
        "created": min(r.get("created", now) for r in runs),
        "updated": now,
        "model": model,
        "protocol": protocol,
        "counts": counts,
        "timings": {"sessions": sessions, "total_wall_s": round(sum(s.get("wall_s", 0) for s in sessions), 4),
                    "max_shard_wall_s": round(max((r.get("timings", {}).get("total_wall_s", 0) for r in runs),
                                                  default=0), 4)},
        "metrics": agg["metrics"],
        "groups": agg["groups"],
        "extra": agg.get("extra", {}),
        "merged_from": [{"dir": str(d), "shard": r.get("protocol", {}).get("shard"), "status": r.get("status"),
                         "records": len(recs)} for d, r, recs in zip(run_dirs, runs, per_dir)],
        "merged": now,
    }

    # ---- write (locked, atomic) -----------------------------------------------------------------
    existing = out / "run.json"
    if existing.is_file():
        old = json.loads(existing.read_text(encoding="utf-8"))
        if old.get("run_id") != run_id and out.resolve() not in {d.resolve() for d in run_dirs}:
            raise MergeError(f"{out} already holds run {old.get('run_id')}, not {run_id}; choose another --out")
    store = RunStore(out)
    with store:
        store.rewrite(order)
        store.write_run(run)
        if status == "complete":
            task.export(order, out)
    return out


__all__ = ["MergeError", "merge"]
