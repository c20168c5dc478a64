"""evalkit.results.merge: shard runs -> one run equal to the unsharded run."""
import json

import pytest

from evalkit.engine.runner import RunSpec, run_task
from evalkit.engine.store import read_records
from evalkit.results.merge import MergeError, merge


def spec(toy, **kw):
    args = {"answers": str(toy / "key.json"), **kw.pop("model_args", {})}
    return RunSpec(model="scripted", task="toy-mcq", model_args=args,
                   task_args={"data": str(toy / "toy.json")}, **kw)


def _strip(r):
    return {k: v for k, v in r.items() if k != "latency_s"}


def test_three_shards_merge_equal_unsharded(toy):
    full = run_task(spec(toy, output=toy / "full", model_args={"wrong": False}))
    parts = [run_task(spec(toy, shard=(i, 3), output=toy / f"s{i}")) for i in range(3)]
    assert len({p.run_id for p in parts} | {full.run_id}) == 1
    out = merge([p.run_dir for p in reversed(parts)], toy / "merged" / full.run_id)
    got = read_records(out / "samples.jsonl")
    want = read_records(full.run_dir / "samples.jsonl")
    assert [_strip(r) for r in got] == [_strip(r) for r in want]  # same records, same order
    run = json.loads((out / "run.json").read_text())
    for k in ("metrics", "groups", "extra"):
        assert run[k] == full.run[k], k
    assert run["protocol"]["shard"] is None
    assert run["protocol"]["gold_positions"] == full.run["protocol"]["gold_positions"]
    assert run["status"] == "complete" and run["run_id"] == full.run_id
    for k in ("records", "samples", "errors", "extraction_failures", "selected_samples", "selected_calls",
              "task_samples"):
        assert run["counts"][k] == full.run["counts"][k], k
    assert len(run["merged_from"]) == 3 and len(run["timings"]["sessions"]) == 3


def test_missing_shard_is_incomplete(toy):
    parts = [run_task(spec(toy, shard=(i, 3), output=toy / f"s{i}")) for i in range(2)]
    out = merge([p.run_dir for p in parts], toy / "merged")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "incomplete" and run["counts"]["records"] == 16


def test_different_run_ids_refused(toy):
    a = run_task(spec(toy, shard=(0, 2), output=toy / "a"))
    b = run_task(spec(toy, shard=(1, 2), seed=1, output=toy / "b"))
    with pytest.raises(MergeError, match="different run ids") as e:
        merge([a.run_dir, b.run_dir], toy / "m")
    assert str(a.run_dir) in str(e.value) and str(b.run_dir) in str(e.value)


def test_conflicting_duplicates_refused(toy):
    a = run_task(spec(toy, shard=(0, 2), output=toy / "a"))
    b = run_task(spec(toy, shard=(0, 2), output=toy / "b"))
    assert merge([a.run_dir, b.run_dir], toy / "same").exists()  # identical duplicates are fine
    path = b.run_dir / "samples.jsonl"
    recs = read_records(path)
    recs[0]["output"] = "The answer is (Z)."
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(MergeError, match=recs[0]["key"]):
        merge([a.run_dir, b.run_dir], toy / "m")
