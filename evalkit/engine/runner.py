"""The run loop: task -> samples -> protocol -> requests -> model -> records -> run.json.

One direction, no back and forth. The runner owns batching, audio prefetch
(decoding the next batch while the model works on this one), resume, the lock
and the run record; adapters only see Requests, tasks only see records.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from evalkit import __version__
from evalkit.engine.provenance import environment, git_commit, stable_hash
from evalkit.engine.secrets import redact_args
from evalkit.engine.store import RunStore
from evalkit.protocol.choices import gold_histogram, present
from evalkit.registry import get_model, get_task
from evalkit.types import GenerationConfig, Presentation, Request, Response

SCHEMA_VERSION = 1


class RunConfigError(ValueError):
    """An impossible request, refused before any work starts."""


@dataclass
class RunSpec:
    model: str
    task: str
    model_args: dict[str, Any] = field(default_factory=dict)
    task_args: dict[str, Any] = field(default_factory=dict)
    choices: Literal["balanced", "original", "circular"] = "balanced"
    seed: int = 0
    limit: int | None = None
    shard: tuple[int, int] | None = None  # (index, count), 0-based index
    batch_size: int | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    no_audio: bool = False  # "no audio" ablation: audio parts are dropped from every request
    retry_errors: bool = False
    output: Path = Path("results/runs")


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    run: dict[str, Any]
    calls: int  # model requests made in this invocation


class Progress:
    """Progress sink; the CLI renders it with rich, tests ignore it."""

    def start(self, task: str, total: int, done: int) -> None: ...
    def advance(self, n: int, errors: int) -> None: ...
    def stop(self) -> None: ...


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """"I/N" with 1 <= I <= N (1-based on the command line)."""
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise RunConfigError(f"--shard {text!r}: expected I/N, e.g. 1/4") from None
    if not (1 <= i <= n):
        raise RunConfigError(f"--shard {text!r}: need 1 <= I <= N")
    return (i - 1, n)


def select(presentations: list[Presentation], limit: int | None, shard: tuple[int, int] | None) -> list[Presentation]:
    """--limit takes the first N samples in task order, --shard every N-th sample;
    all rotations of a sample stay together."""
    order: list[str] = []
    for p in presentations:
        if not order or order[-1] != p.sample.id:
            order.append(p.sample.id)
    keep = order[:limit] if limit is not None else order
    if shard is not None:
        i, n = shard
        keep = keep[i::n]
    wanted = set(keep)
    return [p for p in presentations if p.sample.id in wanted]


class ModelHolder:
    """Creates the adapter on first need, so a finished run never loads a model."""

    def __init__(self, name: str, args: dict[str, Any]):
        self.name, self.args = name, args
        self.cls = get_model(name)
        self.config = self.cls.Config(**args)  # validates -M now (typo fails at load)
        self.cls.preflight(self.config)  # an adapter that cannot run says so before any data loads
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = self.cls(self.config)
        return self._model

    def identity(self) -> dict[str, Any]:
        volatile = getattr(self.cls, "volatile_args", frozenset())
        args = {k: v for k, v in redact_args(self.config).items() if k not in volatile}
        return {"name": self.name, "args": args}

    def close(self) -> None:
        if self._model is not None:
            self._model.close()


def _identity_options(task) -> dict[str, Any]:
    # data location is not identity: the data hash is
    return {k: v for k, v in task.options.model_dump(mode="json").items() if k not in ("data", "audio_root")}


def compute_run_id(model_identity: dict, task, data_hash: str, spec: RunSpec) -> str:
    return stable_hash({
        "evalkit": __version__,  # a release may change prompts or adapters: resume within one release only
        "model": model_identity,
        "task": {"name": task.name, "version": task.version, "options": _identity_options(task), "data": data_hash},
        "protocol": {"choices": spec.choices if task.is_mcq else None, "seed": spec.seed, "no_audio": spec.no_audio},
        "generation": spec.generation.to_dict(),
    })


def check_pairing(model, task, spec: RunSpec) -> None:
    caps = set(model.capabilities)
    if task.modality == "audio" and not spec.no_audio and "audio" not in caps:
        raise RunConfigError(
            f"model {spec.model!r} takes text only but task {task.name!r} needs audio; "
            "pass --no-audio for an explicit no-audio ablation")
    if task.modality == "text" and "text" not in caps:
        raise RunConfigError(f"model {spec.model!r} cannot answer text-only task {task.name!r}")


def build_request(task, p: Presentation, spec: RunSpec) -> Request:
    messages = task.prompt(p)
    if spec.no_audio:
        messages = [{**m, "content": [c for c in m["content"] if c["type"] != "audio"]} for m in messages]
    return Request(key=p.key, messages=messages, generation=spec.generation)


def base_record(p: Presentation, req: Request | None) -> dict[str, Any]:
    s = p.sample
    return {
        "key": p.key, "sample_id": s.id, "rotation": p.rotation,
        "prompt": req.rendered() if req is not None else None,
        "audio": [{"ref": a.describe()} for a in s.audio],
        "choices": p.choices, "permutation": p.permutation, "gold": p.gold,
        "answer": s.choices[s.answer] if s.choices is not None and s.answer is not None else None,
        "target": s.target, "metadata": s.metadata, "cluster": s.cluster(),
    }


PREFETCH_BATCHES = 2  # batches prepared ahead of the model


def _prepare(task, p: Presentation, spec: RunSpec, model, decode: bool) -> tuple[Presentation, Request | None, str | None]:
    """Build one request and decode its audio (runs in the prefetch pool; soundfile
    and soxr release the GIL, so clips decode in parallel with the model)."""
    try:
        req = build_request(task, p, spec)
        if decode:
            for a in req.audio():
                a.load(model.sample_rate)
        return (p, req, None)
    except Exception as e:  # a sample-level failure becomes an error record
        return (p, None, f"{type(e).__name__}: {e}")


class ModelFailure(RuntimeError):
    """The adapter raised instead of returning error responses: the run stops (resumable)."""


def _generate(model, reqs: list[Request]) -> list[Response]:
    """Per-request failures come back as error responses and become error records. An
    exception means the model itself is broken (weights missing, CUDA OOM, server down):
    the run stops with everything finished so far saved, instead of filling the log with
    error records that a resume would not retry."""
    if not reqs:
        return []
    try:
        responses = model.generate(reqs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        raise ModelFailure(f"{type(e).__name__}: {e}") from e
    by_key = {r.key: r for r in responses}
    return [by_key.get(r.key) or Response(key=r.key, error="adapter returned no response for this request")
            for r in reqs]


def _record(task, p: Presentation, req: Request | None, err: str | None, resp: Response | None) -> dict[str, Any]:
    rec = base_record(p, req)
    rec.update({"output": resp.text if resp else None,
                "error": err if err is not None else resp.error,
                "latency_s": resp.latency_s if resp else None,
                "extra": resp.extra if resp else {}})
    rec.update(task.score(rec))
    return rec


def _run_pending(task, model, spec: RunSpec, pending: list[Presentation], store: RunStore,
                 done: dict[str, dict[str, Any]], progress: Progress) -> tuple[int, float]:
    """Ask the model for every pending presentation, batch by batch, while a pool decodes the
    audio of the next PREFETCH_BATCHES batches. Each batch's records are appended and flushed
    before the next batch starts. Returns (model calls, seconds inside generate)."""
    bs = spec.batch_size or getattr(model, "preferred_batch_size", None) or model.default_batch_size
    batches = [pending[i:i + bs] for i in range(0, len(pending), bs)]
    decode = getattr(model, "needs_audio", True) and not spec.no_audio
    pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="evalkit-prep")
    submit = lambda b: [pool.submit(_prepare, task, p, spec, model, decode) for p in b]
    ahead: deque[list[Future]] = deque(submit(b) for b in batches[:PREFETCH_BATCHES])
    calls, model_s = 0, 0.0
    try:
        for bi in range(len(batches)):
            futures = ahead.popleft()
            if bi + PREFETCH_BATCHES < len(batches):
                ahead.append(submit(batches[bi + PREFETCH_BATCHES]))
            prepared = [f.result() for f in futures]
            reqs = [req for _, req, err in prepared if err is None]
            t0 = time.perf_counter()
            responses = {r.key: r for r in _generate(model, reqs)}
            model_s += time.perf_counter() - t0
            calls += len(reqs)
            finished = [_record(task, p, req, err, responses.get(p.key) if err is None else None)
                        for p, req, err in prepared]
            for (_, req, _), rec in zip(prepared, finished):
                done[rec["key"]] = rec
                for a in req.audio() if req is not None else ():
                    a.release()
            store.append(finished)
            progress.advance(len(prepared), sum(r["error"] is not None for r in finished))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return calls, model_s


def run_task(spec: RunSpec, holder: ModelHolder | None = None, progress: Progress | None = None) -> RunResult:
    """Run one (model, task) pair to completion, resuming whatever the run directory holds."""
    progress = progress or Progress()
    holder = holder or ModelHolder(spec.model, spec.model_args)
    task = get_task(spec.task).from_args(spec.task_args)
    check_pairing(holder.cls, task, spec)  # class capabilities first (before loading data); instance below
    t_load = time.perf_counter()
    data = task.load()
    load_s = time.perf_counter() - t_load
    presentations = present(data.samples, spec.choices if task.is_mcq else "original", spec.seed)
    selected = select(presentations, spec.limit, spec.shard)
    run_id = compute_run_id(holder.identity(), task, data.data_hash, spec)
    run_dir = Path(spec.output) / run_id
    store = RunStore(run_dir)
    with store:
        started = time.perf_counter()
        done = store.load()
        previous = store.read_run()
        retry = lambda r: spec.retry_errors and r.get("error") is not None
        pending = [p for p in selected if p.key not in done or retry(done[p.key])]
        progress.start(task.name, len(selected), len(selected) - len(pending))
        calls, model_s, status = 0, 0.0, "incomplete"
        try:
            if pending:
                model = holder.model
                check_pairing(model, task, spec)
                calls, model_s = _run_pending(task, model, spec, pending, store, done, progress)
            status = "complete"
        finally:  # also on Ctrl-C or a model failure: run.json says how far the run got
            progress.stop()
            wall = time.perf_counter() - started
            if status == "complete" and spec.retry_errors:
                store.compact([p.key for p in selected])
            records = [done[p.key] for p in selected if p.key in done]
            run = build_run_record(spec, task, data, holder, run_id, selected, records, status,
                                   {"load_s": round(load_s, 4), "wall_s": round(wall, 4),
                                    "model_s": round(model_s, 4), "calls": calls}, previous)
            store.write_run(run)
            if status == "complete":
                task.export(records, run_dir)
    return RunResult(run_id, run_dir, run, calls)


def count_records(records: list[dict[str, Any]]) -> dict[str, int]:
    from evalkit.protocol.extract import FAILURE_STAGES

    return {
        "records": len(records),
        "samples": len({r["sample_id"] for r in records}),
        "errors": sum(r.get("error") is not None for r in records),
        "extraction_failures": sum((r.get("extraction_stage") in FAILURE_STAGES and r.get("error") is None)
                                   for r in records),
    }


def build_run_record(spec: RunSpec, task, data, holder: ModelHolder, run_id: str, selected: list[Presentation],
                     records: list[dict[str, Any]], status: str, timing: dict[str, Any],
                     previous: dict[str, Any] | None) -> dict[str, Any]:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    agg = task.aggregate(records) if records else {"metrics": {}, "groups": {}, "extra": {}}
    sessions = list((previous or {}).get("timings", {}).get("sessions", []))
    sessions.append({"finished": now, **timing})
    model_info = {}
    if holder._model is not None:
        try:
            model_info = holder.model.info()
        except Exception as e:  # info is best effort; never lose a run over it
            model_info = {"error": str(e)}
    elif previous:
        model_info = previous.get("model", {}).get("info", {})
    counts = count_records(records)
    counts["selected_samples"] = len({p.sample.id for p in selected})
    counts["selected_calls"] = len(selected)
    counts["task_samples"] = len(data.samples)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": status,
        "created": (previous or {}).get("created", now),
        "updated": now,
        "evalkit": {"version": __version__, **git_commit()},
        "environment": environment(),
        "task": {"name": task.name, "version": task.version, "options": task.options.model_dump(mode="json"),
                 "source": data.source, "data_hash": data.data_hash, "warnings": data.warnings,
                 "main_metric": task.main_metric, "modality": task.modality},
        "model": {**holder.identity(), "info": model_info},
        "generation": spec.generation.to_dict(),
        "protocol": {"choices": spec.choices if task.is_mcq else None, "seed": spec.seed, "limit": spec.limit,
                     "shard": f"{spec.shard[0] + 1}/{spec.shard[1]}" if spec.shard else None,
                     "no_audio": spec.no_audio,
                     "gold_positions": gold_histogram(selected) if task.is_mcq else None},
        "batch_size": spec.batch_size,
        "counts": counts,
        "timings": {"sessions": sessions,
                    "total_wall_s": round(sum(s["wall_s"] for s in sessions), 4)},
        "metrics": agg["metrics"],
        "groups": agg["groups"],
        "extra": agg.get("extra", {}),
    }


def score_records(task, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Re-extract, re-score and aggregate records through the task (`evalkit score`, `evalkit merge`):
    {"metrics", "groups", "extra", "counts"}."""
    for r in records:
        r.update(task.score(r))
    agg = task.aggregate(records) if records else {"metrics": {}, "groups": {}, "extra": {}}
    return {"metrics": agg["metrics"], "groups": agg["groups"], "extra": agg.get("extra", {}),
            "counts": count_records(records)}


def rescore(run_dir: Path) -> dict[str, Any]:
    """Re-run extraction and scoring on a run's raw outputs; no model calls."""
    store = RunStore(run_dir)
    with store:
        run = store.read_run()
        if run is None:
            raise RunConfigError(f"{run_dir}: no run.json; is this a run directory?")
        task = get_task(run["task"]["name"]).from_args(run["task"]["options"])
        records = list(store.load().values())
        scored = score_records(task, records)
        store.rewrite(records)
        run.update(metrics=scored["metrics"], groups=scored["groups"], extra=scored["extra"])
        run["counts"].update(scored["counts"])
        run["rescored"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        store.write_run(run)
        return run
