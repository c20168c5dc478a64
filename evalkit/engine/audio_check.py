"""Audio reliance: does the model's answer depend on the audio at all?

`evalkit run ... --audio-check` asks the run's first N selected items again, through the adapter's
normal path, with every clip replaced by silence of the same length and rate, and (when the adapter
also takes text-only requests) with no audio at all. Each variant is an ordinary resumable run with
its own run id. Reported in the main run's run.json under `diagnostics.audio_reliance`:
- the task's main metric with audio / with silence / without audio, each with its clustered 95% CI,
  over the same items;
- `unchanged_silence` / `unchanged_no_audio`: the fraction of items whose extracted answer is the
  same as with the audio;
- `flag`: True when `unchanged_silence` >= UNCHANGED_FLAG (0.9): the outputs barely depend on the
  audio (a processor that drops the audio, an adapter that never attaches it, a model that answers
  from the text alone). A model that listens changes most answers when its audio goes silent.
With --strategy, the main run's records are votes over several calls while the ablations are single
plain calls: the comparison is then made against a plain run of the same items with the audio
(`with_audio`, run id `with_audio_plain`; the strategy's own figure is `with_audio_strategy`), so that
sampling noise in the votes cannot hide a model that ignores its audio.
Imports the runner and the protocol only (tasks and adapters come through the runner's registry)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from evalkit.engine.runner import ModelHolder, RunResult, RunSpec, reached_model, run_task
from evalkit.engine.store import RunStore, latest_by_key, read_records
from evalkit.protocol.circular import collapse_rotations

UNCHANGED_FLAG = 0.9
DEFAULT_LIMIT = 100


def _answered(run_dir: Path, keys: set[str] | None = None) -> dict[str, dict[str, Any]]:
    records = [r for r in latest_by_key(read_records(Path(run_dir) / "samples.jsonl")).values()
               if reached_model(r) and (keys is None or r["sample_id"] in keys)]
    return {r["sample_id"]: r for r in collapse_rotations(records)}


def _main_metric(task, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not records:
        return None
    agg = task.aggregate(records)
    return agg["metrics"].get(task.main_metric)


def _unchanged(base: dict[str, dict], other: dict[str, dict]) -> float | None:
    shared = [sid for sid in base if sid in other]
    if not shared:
        return None
    same = sum(json.dumps(base[s].get("extracted"), sort_keys=True) == json.dumps(other[s].get("extracted"), sort_keys=True)
               and base[s].get("error") is None for s in shared)
    return same / len(shared)


def audio_check(main: RunResult, spec: RunSpec, holder: ModelHolder, limit: int | None = DEFAULT_LIMIT,
                progress=None) -> dict[str, Any]:
    """Run the ablations for `main` (a finished run made from `spec`) and record the comparison in its
    run.json. Returns the `audio_reliance` entry."""
    from evalkit.registry import get_task

    task = get_task(spec.task).from_args(spec.task_args)
    if task.modality != "audio":
        raise ValueError(f"--audio-check: task {task.name!r} has no audio to check")
    n = min(x for x in (limit, spec.limit) if x is not None) if (limit or spec.limit) else None
    plain = {"strategy": None, "strategy_options": {}}  # the ablations ask each item once, whatever the strategy
    variants: dict[str, RunResult] = {
        "silence": run_task(replace(spec, limit=n, silence_audio=True, **plain), holder, progress)}
    skipped = None
    if "text" in holder.cls.capabilities:
        variants["no_audio"] = run_task(replace(spec, limit=n, no_audio=True, **plain), holder, progress)
    else:
        skipped = "the adapter takes no text-only requests: the no-audio variant was not run"
    ids = set(_answered(variants["silence"].run_dir))
    # like with like: a strategy's record is a vote over several calls (sampled, reordered), the ablations
    # are single plain calls; a deaf model's sampled votes differ from its greedy answers on silence and
    # would hide it. With a strategy, the ablations are compared with a plain run of the same items.
    reference = main
    if spec.strategy:
        reference = variants["with_audio_plain"] = run_task(replace(spec, limit=n, **plain), holder, progress)
    base = _answered(reference.run_dir, ids)
    entry: dict[str, Any] = {
        "items": len(base), "limit": n, "threshold": UNCHANGED_FLAG, "metric": task.main_metric,
        "with_audio": _main_metric(task, list(base.values())),
        "compared_with": "plain single calls with the audio" if spec.strategy else "the run itself",
        "run_ids": {"with_audio": main.run_id, **{k: v.run_id for k, v in variants.items()}},
    }
    if spec.strategy:
        entry["with_audio_strategy"] = _main_metric(task, list(_answered(main.run_dir, ids).values()))
    for name, res in variants.items():
        if name == "with_audio_plain":
            continue
        other = _answered(res.run_dir, set(base))
        entry[name] = _main_metric(task, list(other.values()))
        entry[f"unchanged_{name}"] = _unchanged(base, other)
    if skipped:
        entry["no_audio_skipped"] = skipped
    u = entry.get("unchanged_silence")
    entry["flag"] = bool(u is not None and u >= UNCHANGED_FLAG)
    with RunStore(main.run_dir) as store:
        run = store.read_run() or main.run
        run.setdefault("diagnostics", {})["audio_reliance"] = entry
        store.write_run(run)
    main.run.setdefault("diagnostics", {})["audio_reliance"] = entry
    return entry
