"""The run loop: task -> samples -> protocol -> requests -> model -> records -> run.json.

One direction, no back and forth. The runner owns batching, audio prefetch
(decoding the next batch while the model works on this one), resume, the lock
and the run record; adapters only see Requests, tasks only see records.

What a run's status means (the CLI's exit codes follow it):
- "complete": every selected key has a record on disk that reached the model (records whose
  input could not be prepared, e.g. unreadable audio, do not count: they are asked again on resume);
- "incomplete": anything else; `stopped` in run.json says why (interrupted, the model failed, the
  adapter reported a cause that fails every request, inputs that could not be prepared).
Counts, metrics and run.json are computed from samples.jsonl as it is on disk, and metrics only
over records that reached the model.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from evalkit import __version__
from evalkit.engine.fingerprint import Fingerprints, combined, local_paths
from evalkit.engine.provenance import environment, git_commit, stable_hash
from evalkit.engine.secrets import mask_json, mask_text, redact_args
from evalkit.engine.store import RunStore, unserializable_field
from evalkit.engine.strategies import Driver, StrategyError, get_strategy, run_summary, score_record
from evalkit.jsonio import repair_surrogates
from evalkit.protocol.choices import gold_histogram, present
from evalkit.registry import get_model, get_task
from evalkit.results.diagnostics import run_diagnostics
from evalkit.types import GenerationConfig, Presentation, Request, Response

SCHEMA_VERSION = 1


#: consecutive responses flagged `extra["fatal"]` (a cause that fails every request: HTTP 401,
#: connection refused, unknown model) after which the run stops, resumably
FATAL_STOP_AFTER = 3
#: error_kind of a record whose request never reached the model (audio unreadable, prompt failed):
#: it does not count as done, and a resume asks again without --retry-errors
INPUT_ERROR = "input"
MODEL_ERROR = "model"


class RunConfigError(ValueError):
    """An impossible request, refused before any work starts."""


class RunStopped(RuntimeError):
    """The adapter reported a cause that fails every request (`Response.extra["fatal"]`): the run
    stops with everything finished saved and nothing recorded for the failed requests."""


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
    #: "silence" ablation: every clip is replaced by zeros of the same length and rate (the audio check)
    silence_audio: bool = False
    retry_errors: bool = False
    output: Path = Path("results/runs")
    #: inference-time strategy (evalkit/engine/strategies.py) and its -S options; part of the run id
    strategy: str | None = None
    strategy_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Values the CLI or an API caller could get wrong, refused before any work starts."""
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise RunConfigError(f"--limit {self.limit!r}: must be a positive number of samples")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise RunConfigError(f"--batch-size {self.batch_size!r}: must be a positive integer")
        if self.choices not in ("balanced", "original", "circular"):
            raise RunConfigError(f"--choices {self.choices!r}: use balanced, original or circular")
        g = self.generation
        if g.max_new_tokens < 1:
            raise RunConfigError(f"--max-new-tokens {g.max_new_tokens!r}: must be a positive integer")
        if not (g.temperature >= 0) or g.temperature != g.temperature:
            raise RunConfigError(f"--temperature {g.temperature!r}: must be >= 0")
        if self.strategy is None and self.strategy_options:
            raise RunConfigError(f"-S {', '.join(self.strategy_options)}: strategy options without --strategy")
        self.make_strategy()

    def make_strategy(self):
        """The run's strategy with validated options, or None (a bad -S value raises pydantic's ValidationError)."""
        if self.strategy is None:
            return None
        try:
            return get_strategy(self.strategy, self.strategy_options)
        except StrategyError as e:
            raise RunConfigError(str(e)) from None


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    run: dict[str, Any]
    calls: int  # model requests made in this invocation


class Progress:
    """Progress sink; the CLI renders it with rich, tests ignore it."""

    def start(self, task: str, total: int, done: int, errors: int = 0) -> None: ...
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
        self._content: dict[str, str] | None = None

    @property
    def model(self):
        if self._model is None:
            self._model = self.cls(self.config)
        return self._model

    def identity(self, fingerprints: Fingerprints | None = None) -> dict[str, Any]:
        """What identifies the adapter in the run id: its name, its arguments (secrets masked, volatile
        settings such as concurrency left out) and the content of every local file or folder an
        argument names (a model folder, a checkpoint, a predictions file), so that new bytes under an
        old path are a new run."""
        volatile = getattr(self.cls, "volatile_args", frozenset())
        args = {k: v for k, v in redact_args(self.config).items() if k not in volatile}
        if self._content is None and fingerprints is not None:
            paths = input_paths(self.cls, self.config.model_dump(mode="json"))
            self._content = {name: fingerprints.tree(path) for name, path in sorted(paths.items())}
        out: dict[str, Any] = {"name": self.name, "args": args}
        if self._content:
            out["content"] = self._content
        return out

    def close(self) -> None:
        if self._model is not None:
            self._model.close()


def input_paths(cls, args: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{arg name: local path} for the adapter arguments that name existing files or folders, leaving out
    the adapter's volatile arguments (caches, logs); a nested adapter spec ({"name", "args"}, as the
    cascade's captioner and LLM) is walked with that adapter's own volatile arguments."""
    volatile = getattr(cls, "volatile_args", frozenset())
    out: dict[str, str] = {}
    for name, value in args.items():
        if name in volatile:
            continue
        label = f"{prefix}{name}"
        if isinstance(value, dict) and isinstance(value.get("name"), str) and isinstance(value.get("args"), dict):
            try:
                inner = get_model(value["name"])
            except Exception:  # not an adapter spec after all
                inner = None
            if inner is not None:
                out.update(input_paths(inner, value["args"], f"{label}.args."))
                continue
        out.update(local_paths(value, label))
    return out


def _identity_options(task) -> dict[str, Any]:
    # data location is not identity: the data hash is
    return {k: v for k, v in task.options.model_dump(mode="json").items() if k not in ("data", "audio_root")}


def audio_digests(samples, fingerprints: Fingerprints) -> dict[str, str]:
    """sha256 of every audio file the task's samples name, keyed "sample id/part index" (not by path:
    the same bytes elsewhere are the same run). Embedded audio (hub bytes) is covered by the data hash."""
    named = {f"{s.id}/{i}": a.path for s in samples for i, a in enumerate(s.audio) if a.path is not None}
    by_path = fingerprints.files(named.values())
    return {k: by_path[os.fspath(p)] for k, p in named.items()}


def compute_run_id(model_identity: dict, task, data_hash: str, spec: RunSpec, audio_hash: str | None = None) -> str:
    task_identity = {"name": task.name, "version": task.version, "options": _identity_options(task), "data": data_hash}
    if audio_hash is not None:
        task_identity["audio"] = audio_hash
    return stable_hash({
        "evalkit": __version__,  # a release may change prompts or adapters: resume within one release only
        "model": model_identity,
        "task": task_identity,
        "protocol": {"choices": spec.choices if task.is_mcq else None, "seed": spec.seed, "no_audio": spec.no_audio,
                     **({"silence_audio": True} if spec.silence_audio else {})},
        "generation": spec.generation.to_dict(),
        # only when set, so that runs without a strategy keep their ids
        **({"strategy": spec.make_strategy().identity()} if spec.strategy else {}),
    })


def check_pairing(model, task, spec: RunSpec) -> None:
    caps = set(model.capabilities)
    if task.modality == "audio" and not spec.no_audio and "audio" not in caps:
        raise RunConfigError(
            f"model {spec.model!r} takes text only but task {task.name!r} needs audio; "
            "pass --no-audio for an explicit no-audio ablation")
    if task.modality == "text" and "text" not in caps:
        raise RunConfigError(f"model {spec.model!r} cannot answer text-only task {task.name!r}")
    missing = sorted(set(getattr(task, "required_capabilities", ())) - caps) if not spec.no_audio else []
    if missing:
        raise RunConfigError(f"model {spec.model!r} lacks {', '.join(missing)}, which task {task.name!r} needs"
                             + (" (several audio clips per request)" if "multi_audio" in missing else ""))


def silence_like(ref):
    """Zeros of the clip's length at its native rate, labelled so logs show what was sent."""
    import numpy as np

    from evalkit.types import AudioRef

    x, sr = ref.load(None)
    ref.release()
    return AudioRef(array=np.zeros(len(x), dtype=np.float32), sample_rate=sr, label=f"silence:{ref.describe()}")


def build_request(task, p: Presentation, spec: RunSpec) -> Request:
    messages = task.prompt(p)
    if spec.no_audio:
        messages = [{**m, "content": [c for c in m["content"] if c["type"] != "audio"]} for m in messages]
    elif spec.silence_audio:
        messages = [{**m, "content": [{**c, "audio": silence_like(c["audio"])} if c["type"] == "audio" else c
                                      for c in m["content"]]} for m in messages]
    return Request(key=p.key, messages=messages, generation=spec.generation)


def _audio_entry(sample, i: int, a, digests: dict[str, str] | None) -> dict[str, Any]:
    digest = (digests or {}).get(f"{sample.id}/{i}")
    if digest is None and a.path is None:
        digest = a.sha256()  # embedded bytes or an array: hashed in memory
    return {"ref": a.describe(), "sha256": digest}


def base_record(p: Presentation, req: Request | None, digests: dict[str, str] | None = None) -> dict[str, Any]:
    s = p.sample
    return {
        "key": p.key, "sample_id": s.id, "rotation": p.rotation,
        "prompt": req.rendered() if req is not None else None,
        "audio": [_audio_entry(s, i, a, digests) for i, a in enumerate(s.audio)],
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


def _stream(model, reqs: list[Request]):
    """The adapter's responses as each request completes (`generate_stream`; adapters without it answer
    the batch at once). Per-request failures come back as error responses and become error records. An
    exception means the model itself is broken (weights missing, CUDA OOM, server down): the run stops
    with everything finished so far saved, instead of filling the log with error records that a resume
    would not retry."""
    if not reqs:
        return
    stream = getattr(model, "generate_stream", None)
    try:
        yield from (stream(reqs) if stream is not None else model.generate(reqs))
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except Exception as e:
        raise ModelFailure(f"{type(e).__name__}: {e}") from e


def normalize_response(resp: Response) -> Response:
    """The last line of defence for replies of any shape: text that is not a string becomes an error
    response naming its type; surrogates (which no UTF-8 log can hold) are repaired by
    `evalkit.jsonio.repair_surrogates` and the repair is recorded in `extra`."""
    if resp.text is not None and not isinstance(resp.text, str):
        return Response(resp.key, error=f"adapter returned a {type(resp.text).__name__} as its output, not text",
                        latency_s=resp.latency_s, extra=dict(resp.extra or {}))
    if isinstance(resp.text, str):
        text, repaired = repair_surrogates(resp.text)
        if repaired:
            return Response(resp.key, text=text, error=resp.error, latency_s=resp.latency_s,
                            extra={**(resp.extra or {}), "text_repaired": "surrogates"})
    return resp


def _record(task, p: Presentation, req: Request | None, err: str | None, resp: Response | None,
            digests: dict[str, str] | None = None) -> dict[str, Any]:
    rec = base_record(p, req, digests)
    error = err if err is not None else resp.error
    if isinstance(error, str):
        error = mask_text(error)  # servers echo keys and URLs into error messages
    rec.update({"output": resp.text if resp else None,
                "error": error,
                "error_kind": None if error is None else (INPUT_ERROR if err is not None else MODEL_ERROR),
                "latency_s": resp.latency_s if resp else None,
                "extra": resp.extra if resp else {}})
    if rec["extra"] and "strategy" in rec["extra"]:  # a strategy's sub-calls: their own field, scored through it
        rec["extra"] = dict(rec["extra"])
        rec["strategy"] = rec["extra"].pop("strategy")
    rec.update(score_record(task, rec))
    bad = unserializable_field(rec)
    if bad is not None:  # never a crash, never a record that cannot be read back: an error record naming the field
        rec = base_record(p, req, digests)  # a plain error record: the strategy's part may be what could not be logged
        rec.update({"output": None, "error": f"the response could not be logged: {bad}", "error_kind": MODEL_ERROR,
                    "latency_s": resp.latency_s if resp else None, "extra": {}})
        rec.update(task.score(rec))
    return rec


def audio_seconds(req: Request, model) -> float | None:
    """Seconds of audio a request carried (summed over its clips), from the arrays decoded for the model;
    None for a request without audio or an adapter that decodes nothing itself."""
    clips = req.audio()
    if not clips:
        return None
    total = 0.0
    for a in clips:
        decoded = a._decoded.get(getattr(model, "sample_rate", None))
        if decoded is None:
            return None
        x, sr = decoded
        total += len(x) / sr
    return round(total, 3)


def long_audio_summary(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How much audio the model heard, over the records that say: truncated = fed < had."""
    known = [(r["extra"].get("audio_seconds"), r["extra"].get("audio_seconds_fed")) for r in records
             if isinstance(r.get("extra"), dict) and r["extra"].get("audio_seconds") is not None]
    if not known:
        return None
    measured = [(a, f) for a, f in known if f is not None]
    return {"records": len(known), "fed_known": len(measured),
            "truncated": sum(f < a - 1e-3 for a, f in measured),
            "longest_s": max(a for a, _ in known),
            "most_fed_s": max((f for _, f in measured), default=None)}


def reached_model(rec: dict[str, Any]) -> bool:
    return rec.get("error_kind") != INPUT_ERROR


@dataclass
class Tally:
    """Model calls asked and seconds spent inside the adapter. The caller owns it, so a session that
    stops part-way (a failure of every request, a broken adapter, Ctrl-C) still reports what it asked."""
    calls: int = 0
    model_s: float = 0.0


def _run_pending(task, model, spec: RunSpec, pending: list[Presentation], store: RunStore,
                 progress: Progress, tally: Tally, digests: dict[str, str] | None = None, strategy=None) -> None:
    """Ask the model for every pending presentation, batch by batch, while a pool decodes the
    audio of the next PREFETCH_BATCHES batches. Each record is appended and flushed as its request
    completes, so a crash loses at most the requests in flight. Model calls and seconds inside the
    adapter are added to `tally` as they happen."""
    bs = spec.batch_size or getattr(model, "preferred_batch_size", None) or model.default_batch_size
    batches = [pending[i:i + bs] for i in range(0, len(pending), bs)]
    decode = getattr(model, "needs_audio", True) and not spec.no_audio
    pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="evalkit-prep")
    submit = lambda b: [pool.submit(_prepare, task, p, spec, model, decode) for p in b]
    ahead: deque[list[Future]] = deque(submit(b) for b in batches[:PREFETCH_BATCHES])
    fatal_run: list[str] = []  # causes of consecutive fatal responses
    fatal_total, last_cause = 0, ""
    driver, answer = None, _stream
    session = contextlib.ExitStack()  # what a strategy changes in the model (steering hooks), undone on any exit
    if strategy is not None:  # each request becomes the strategy's sub-calls, asked through _stream
        driver = Driver(strategy, task, spec, store.dir, {p.key: p for p in pending},
                        lambda p: build_request(task, p, spec), _stream, normalize_response, model.sample_rate)
        answer = driver.stream
    try:
        if strategy is not None:
            try:
                session.enter_context(strategy.session(model, store.dir))
            except StrategyError as e:
                raise RunConfigError(str(e)) from None
        for bi in range(len(batches)):
            futures = ahead.popleft()
            if bi + PREFETCH_BATCHES < len(batches):
                ahead.append(submit(batches[bi + PREFETCH_BATCHES]))
            prepared = [f.result() for f in futures]
            failed = [_record(task, p, None, err, None, digests) for p, req, err in prepared if err is not None]
            if failed:
                store.append(failed)
                progress.advance(len(failed), len(failed))
            waiting = {req.key: (p, req) for p, req, err in prepared if err is None}
            reqs = [req for _, req in waiting.values()]
            t0 = time.perf_counter()
            tally.calls += len(reqs)
            try:
                for resp in answer(model, reqs):
                    if resp.key not in waiting:
                        raise ModelFailure(f"the adapter answered a request it was not asked ({resp.key!r}) "
                                           "or answered one twice")
                    p, req = waiting.pop(resp.key)
                    heard = audio_seconds(req, model)  # before the decoded arrays are released
                    for a in req.audio():
                        a.release()
                    cause = (resp.extra or {}).get("fatal")
                    if cause:  # never reached a model: nothing recorded, a resume asks again
                        fatal_run.append(str(cause))
                        fatal_total, last_cause = fatal_total + 1, str(cause)
                        progress.advance(0, 1)
                        if len(fatal_run) >= FATAL_STOP_AFTER:
                            break
                        continue
                    fatal_run.clear()
                    resp = normalize_response(resp)
                    if heard is not None:
                        fed = (resp.extra or {}).get("audio_seconds_fed")
                        if fed is None and getattr(model, "audio_fed", None) == "all":
                            fed = heard
                        resp.extra = {**(resp.extra or {}), "audio_seconds": heard, "audio_seconds_fed": fed}
                    rec = _record(task, p, req, None, resp, digests)
                    store.append([rec])
                    progress.advance(1, rec["error"] is not None)
            finally:
                tally.model_s += time.perf_counter() - t0
            if len(fatal_run) >= FATAL_STOP_AFTER:
                raise RunStopped(f"{len(fatal_run)} requests in a row failed in a way that fails every request: "
                                 f"{fatal_run[-1]}")
            if waiting:
                missing = [_record(task, p, req, None, Response(key=k, error="adapter returned no response for "
                                                                 "this request"), digests)
                           for k, (p, req) in waiting.items()]
                store.append(missing)
                progress.advance(len(missing), len(missing))
        if fatal_total:
            raise RunStopped(f"{fatal_total} requests failed in a way that would fail them again (last: {last_cause}); "
                             "they are not recorded")
    finally:
        session.close()
        pool.shutdown(wait=True, cancel_futures=True)
        if driver is not None:
            tally.calls = driver.calls  # a strategy's sub-calls are the model calls
            driver.close()


def _open_store(run_dir: Path) -> RunStore | None:
    """The run's store, locked; None when the folder cannot be written (a finished run may still be shown)."""
    store = RunStore(run_dir)
    try:
        store.acquire()
    except PermissionError:
        return None
    except OSError as e:
        if e.errno in (30, 13):  # EROFS, EACCES
            return None
        raise RunConfigError(f"cannot open the run directory {run_dir}: {e}") from None
    return store


def run_task(spec: RunSpec, holder: ModelHolder | None = None, progress: Progress | None = None) -> RunResult:
    """Run one (model, task) pair to completion, resuming whatever the run directory holds."""
    spec.validate()
    progress = progress or Progress()
    holder = holder or ModelHolder(spec.model, spec.model_args)
    task = get_task(spec.task).from_args(spec.task_args)
    check_pairing(holder.cls, task, spec)  # class capabilities first (before loading data); instance below
    strategy = spec.make_strategy()
    if strategy is not None:
        try:
            strategy.check(task, holder.cls, spec)
        except StrategyError as e:
            raise RunConfigError(str(e)) from None
    t_load = time.perf_counter()
    data = task.load()
    load_s = time.perf_counter() - t_load
    presentations = present(data.samples, spec.choices if task.is_mcq else "original", spec.seed)
    selected = select(presentations, spec.limit, spec.shard)
    check_protocol = getattr(holder.cls, "check_protocol", None)
    if check_protocol is not None:  # e.g. predictions made elsewhere refer to the upstream choice order
        check_protocol(holder.config, spec.choices if task.is_mcq else "original", selected)
    if strategy is not None:
        try:
            strategy.check_selected(selected, holder.cls)
        except StrategyError as e:
            raise RunConfigError(str(e)) from None
    with Fingerprints() as fingerprints:
        digests = audio_digests(data.samples, fingerprints)
        identity = holder.identity(fingerprints)
    audio_hash = combined(digests) if digests else None
    run_id = compute_run_id(identity, task, data.data_hash, spec, audio_hash)
    run_dir = Path(spec.output) / run_id
    existed = run_dir.exists()
    store = _open_store(run_dir)
    if store is None:
        return _show_read_only(run_dir, run_id, selected)
    with store:
        started = time.perf_counter()
        on_disk = store.load()
        previous = store.read_run()
        retry = lambda r: not reached_model(r) or (spec.retry_errors and r.get("error") is not None)
        pending = [p for p in selected if p.key not in on_disk or retry(on_disk[p.key])]
        progress.start(task.name, len(selected), len(selected) - len(pending),
                       sum(on_disk[p.key].get("error") is not None for p in selected
                           if p.key in on_disk and not retry(on_disk[p.key])))
        tally, stopped = Tally(), "interrupted"
        try:
            if pending:
                model = holder.model
                check_pairing(model, task, spec)
                if strategy is not None:  # the instance may narrow its class's capabilities (hf -M preset=...)
                    try:
                        strategy.check(task, model, spec)
                        strategy.check_selected(selected, model)
                    except StrategyError as e:
                        raise RunConfigError(str(e)) from None
                _run_pending(task, model, spec, pending, store, progress, tally, digests, strategy)
            stopped = None
        except RunStopped as e:
            stopped = f"stopped: {e}"
            raise
        except ModelFailure as e:
            stopped = f"the model failed: {e}"
            raise
        finally:  # also on Ctrl-C or a model failure: run.json says how far the run got, from what is on disk
            progress.stop()
            wall = time.perf_counter() - started
            if pending:  # what the file holds now (nothing was appended otherwise)
                on_disk = store.load()
            records = [on_disk[p.key] for p in selected if p.key in on_disk]
            unprepared = sum(not reached_model(r) for r in records)
            if stopped is None and unprepared:
                stopped = (f"{unprepared} of {len(selected)} requests could not be prepared (their input never "
                           "reached the model); fix the cause and run the same command again")
            status = "complete" if stopped is None and len(records) == len(selected) else "incomplete"
            if status == "complete" and spec.retry_errors:
                store.compact([p.key for p in selected])
            if not on_disk and previous is None and status != "complete" and not existed:
                store.release()  # a failed start leaves no empty run directory behind
                shutil.rmtree(run_dir, ignore_errors=True)
                run = None
            else:
                run = build_run_record(spec, task, data, holder, run_id, selected, records, status,
                                       {"load_s": round(load_s, 4), "wall_s": round(wall, 4),
                                        "model_s": round(tally.model_s, 4), "calls": tally.calls}, previous,
                                       identity=identity, audio_hash=audio_hash, stopped=stopped)
                store.write_run(run)
                if status == "complete" and (pending or (previous or {}).get("status") != "complete"):
                    task.export(records, run_dir)  # upstream-format files change only with the records
    return RunResult(run_id, run_dir, run, tally.calls)


def _show_read_only(run_dir: Path, run_id: str, selected: list[Presentation]) -> RunResult:
    """A finished run in a folder this process cannot write: shown as it is, nothing written."""
    from evalkit.engine.store import read_records

    store = RunStore(run_dir)
    run = store.read_run()
    on_disk = {r["key"]: r for r in read_records(store.samples_path)}
    missing = [p.key for p in selected if p.key not in on_disk or not reached_model(on_disk[p.key])]
    if run is None or missing:
        raise RunConfigError(f"cannot write to the run directory {run_dir} (read-only or no permission), and the "
                             f"run is not finished ({len(missing)} of {len(selected)} samples to do); pass "
                             "--output DIR to a writable folder")
    return RunResult(run_id, run_dir, run, 0)


def count_records(records: list[dict[str, Any]]) -> dict[str, int]:
    from evalkit.protocol.extract import FAILURE_STAGES

    return {
        "records": len(records),
        "samples": len({r["sample_id"] for r in records}),
        "errors": sum(r.get("error") is not None for r in records),
        "input_errors": sum(not reached_model(r) for r in records),
        "extraction_failures": sum((r.get("extraction_stage") in FAILURE_STAGES and r.get("error") is None)
                                   for r in records),
    }


def build_run_record(spec: RunSpec, task, data, holder: ModelHolder, run_id: str, selected: list[Presentation],
                     records: list[dict[str, Any]], status: str, timing: dict[str, Any],
                     previous: dict[str, Any] | None, identity: dict[str, Any] | None = None,
                     audio_hash: str | None = None, stopped: str | None = None) -> dict[str, Any]:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    answered = [r for r in records if reached_model(r)]  # figures only over samples that reached a model
    agg = task.aggregate(answered) if answered else {"metrics": {}, "groups": {}, "extra": {}}
    sessions = list((previous or {}).get("timings", {}).get("sessions", []))
    # each session's data location: a resume from another copy of the data is visible here
    sessions.append({"finished": now, **timing,
                     "task_options": {k: task.options.model_dump(mode="json").get(k) for k in ("data", "audio_root")},
                     "status": status, "stopped": stopped})
    model_info = {}
    if holder._model is not None:
        try:
            model_info = mask_json(holder.model.info())
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
        "stopped": stopped,
        "created": (previous or {}).get("created", now),
        "updated": now,
        "evalkit": {"version": __version__, **git_commit()},
        "environment": environment(),
        "task": {"name": task.name, "version": task.version, "options": task.options.model_dump(mode="json"),
                 "source": data.source, "data_hash": data.data_hash, "audio_hash": audio_hash,
                 "warnings": data.warnings,
                 "main_metric": task.main_metric, "modality": task.modality},
        "model": {**(identity or holder.identity()), "info": model_info},
        "generation": spec.generation.to_dict(),
        "protocol": {"choices": spec.choices if task.is_mcq else None, "seed": spec.seed, "limit": spec.limit,
                     "shard": f"{spec.shard[0] + 1}/{spec.shard[1]}" if spec.shard else None,
                     "no_audio": spec.no_audio, "silence_audio": spec.silence_audio,
                     "gold_positions": gold_histogram(selected) if task.is_mcq else None},
        "batch_size": spec.batch_size,
        "counts": counts,
        "timings": {"sessions": sessions,
                    "total_wall_s": round(sum(s["wall_s"] for s in sessions), 4)},
        "metrics": agg["metrics"],
        "groups": agg["groups"],
        "extra": agg.get("extra", {}),
        "long_audio": long_audio_summary(records),
        # position bias and extraction diagnostics; the audio check's entry (written after the run) is kept
        "diagnostics": {**(previous or {}).get("diagnostics", {}), **run_diagnostics(task, answered)},
        **({"strategy": {**(strat := spec.make_strategy()).identity(), **(run_summary(task, answered) or {}),
                         **strat.run_info(Path(spec.output) / run_id)}} if spec.strategy else {}),
    }


def score_records(task, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Re-extract, re-score and aggregate records through the task (`evalkit score`, `evalkit merge`):
    {"metrics", "groups", "extra", "counts"}; as in run.json, figures only over records that reached the model."""
    for r in records:
        r.update(score_record(task, r))
    answered = [r for r in records if reached_model(r)]
    agg = task.aggregate(answered) if answered else {"metrics": {}, "groups": {}, "extra": {}}
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
        run.setdefault("diagnostics", {}).update(run_diagnostics(task, [r for r in records if reached_model(r)]))
        store.rewrite(records)
        run.update(metrics=scored["metrics"], groups=scored["groups"], extra=scored["extra"])
        run["counts"].update(scored["counts"])
        run["rescored"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        store.write_run(run)
        return run
