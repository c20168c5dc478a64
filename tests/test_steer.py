"""--strategy steer on tiny random models loaded through the real adapters: a Qwen2 text model (text -M
backend=hf) and a Qwen2-Audio (hf_audio), both with 3 decoder layers, hidden size 32, built from config.

The vector is checked against an independent computation: the HF model run here with output_hidden_states
(hidden_states[i + 1] is decoder layer i's output; layers 0 and 1 are steered, so the last layer, whose entry
transformers puts after the final norm, is not involved), on prompts rendered here with the tokenizer's own
chat template; mean over the positive texts minus mean over the negative ones at the last token."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
st = pytest.importorskip("safetensors.numpy")

from test_hf_audio import build_tiny_qwen2_audio  # noqa: E402
from test_text_llm import build_tiny_qwen2  # noqa: E402

from evalkit.engine.runner import ModelFailure, ModelHolder, RunConfigError, RunSpec, run_task  # noqa: E402
from evalkit.engine.strategies import CALLS, STEER_VECTOR  # noqa: E402
from evalkit.types import GenerationConfig  # noqa: E402

LAYERS = [0, 1]
#: large enough that greedy decoding changes on every item of these random models
BIG = 64.0
PAIRS = [{"positive": "yes yes yes", "negative": "no no no"},
         {"positive": "the dog is the answer", "negative": "the cat is the answer"},
         {"prompt": "dog or cat ?", "positive": "dog . yes", "negative": "cat . no"}]  # a prompt and two replies


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {"text": build_tiny_qwen2(tmp_path_factory.mktemp("steer-qwen2"), layers=3),
            "qwen2-audio": build_tiny_qwen2_audio(tmp_path_factory.mktemp("steer-qwen2-audio"), layers=3)}


@pytest.fixture
def pairs(tmp_path) -> Path:
    p = tmp_path / "pairs.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in PAIRS) + "\n\n")
    return p


def make_spec(kind: str, models, toy: Path, out: Path, strategy=None, sopts=None, **kw) -> RunSpec:
    margs = {"path": str(models[kind]), "device": "cpu", **({"dtype": "float32"} if kind != "text" else {})}
    kw.setdefault("limit", 4)
    return RunSpec(model=kind, task="toy-mcq", model_args={**margs, **kw.pop("margs", {})},
                   task_args={"data": str(toy / "toy.json")}, output=out, no_audio=kind == "text",
                   generation=GenerationConfig(max_new_tokens=6), strategy=strategy,
                   strategy_options=sopts or {}, **kw)


def outputs(res) -> dict[str, str]:
    recs = [json.loads(x) for x in (res.run_dir / "samples.jsonl").read_text().splitlines()]
    assert recs and all(r["error"] is None for r in recs), [r["error"] for r in recs]
    return {r["key"]: r["output"] for r in recs}


def steer(pairs: Path, alpha: float, layers=LAYERS) -> dict:
    return {"from": str(pairs), "alpha": str(alpha), "layers": ",".join(map(str, layers))}


def no_hooks(holder: ModelHolder) -> bool:
    return all(not layer._forward_hooks for layer in holder.model.decoder_layers())


class Logits:
    """The next-token logits of each request's prompt (the first lm_head call of each adapter `generate`, a row
    per request), by presentation key ("s0#steer0" -> "s0"): an exact observable of what the model computed,
    finer than the greedy text of a random model."""

    def __init__(self, monkeypatch, cls):
        self.by_key: dict[str, torch.Tensor] = {}
        real = cls.generate

        def generate(model, requests):
            keys, first = [r.key.split("#")[0] for r in requests], [True]

            def hook(mod, args, out):
                if first[0]:
                    first[0] = False
                    assert out.shape[0] == len(keys)  # one batch per generate call here
                    self.by_key.update(zip(keys, out[:, -1].detach().clone()))

            h = model._steer_model().lm_head.register_forward_hook(hook)
            try:
                return real(model, requests)
            finally:
                h.remove()

        monkeypatch.setattr(cls, "generate", generate)

    def take(self) -> dict[str, torch.Tensor]:
        out, self.by_key = self.by_key, {}
        return out


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a and sorted(a) == sorted(b)
    return all(torch.equal(a[k], b[k]) for k in a)


def adapter_class(kind: str):
    from evalkit.models.hf_audio import HFAudioLM
    from evalkit.models.text_llm import TextLLM

    return TextLLM if kind == "text" else HFAudioLM


# ---------------------------------------------------------------------------- the independent reference
def reference_vector(kind: str, model_dir: Path, layers: list[int]) -> dict[int, np.ndarray]:
    """mean(positive) - mean(negative) of hidden_states[i + 1] at the last token, every prompt rendered with
    the checkpoint's own chat template (a user turn; the reply appended after the generation prompt)."""
    if kind == "text":
        tok = transformers.AutoTokenizer.from_pretrained(model_dir)
        model = transformers.Qwen2ForCausalLM.from_pretrained(model_dir).eval()

        def ids(user, reply):
            text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                           add_generation_prompt=True) + reply
            return tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    else:
        proc = transformers.AutoProcessor.from_pretrained(model_dir)
        model = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(model_dir).eval()

        def ids(user, reply):
            conv = [{"role": "user", "content": [{"type": "text", "text": user}]}]
            text = proc.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) + reply
            return proc.tokenizer(text, return_tensors="pt")["input_ids"]

    def last(user, reply):
        with torch.no_grad():
            hs = model(input_ids=ids(user, reply), output_hidden_states=True).hidden_states
        assert len(hs) == 4  # embeddings + 3 layers
        return np.stack([hs[i + 1][0, -1].numpy() for i in layers])

    acts = {side: np.stack([last(p.get("prompt", p[side]), p[side] if "prompt" in p else "") for p in PAIRS])
            for side in ("positive", "negative")}
    diff = acts["positive"].mean(0) - acts["negative"].mean(0)
    return {i: diff[j] for j, i in enumerate(layers)}


# ---------------------------------------------------------------------------- the vector
@pytest.mark.parametrize("kind", ["text", "qwen2-audio"])
def test_vector_equals_an_independent_computation(kind, models, toy, pairs):
    res = run_task(make_spec(kind, models, toy, toy / "runs", "steer", steer(pairs, 2.0), limit=1))
    saved = st.load_file(str(res.run_dir / STEER_VECTOR))
    ref = reference_vector(kind, models[kind], LAYERS)
    assert sorted(saved) == [f"layer.{i}" for i in LAYERS]
    for i in LAYERS:
        assert saved[f"layer.{i}"].dtype == np.float32 and saved[f"layer.{i}"].shape == (32,)
        np.testing.assert_allclose(saved[f"layer.{i}"], ref[i], rtol=1e-4, atol=1e-5)
        assert np.linalg.norm(ref[i]) > 1e-3  # the pairs do differ
    s = res.run["strategy"]
    assert s["name"] == "steer" and s["layers"] == LAYERS and s["alpha"] == 2.0
    assert s["source"] == {"kind": "pairs", "path": str(pairs), "pairs": 3,
                           "sha256": hashlib.sha256(pairs.read_bytes()).hexdigest()}
    h = hashlib.sha256()  # the documented recipe: "layer.<i>:<size>\n" + float32 little-endian bytes, by layer
    for i in LAYERS:
        h.update(f"layer.{i}:32\n".encode() + saved[f"layer.{i}"].astype("<f4").tobytes())
    assert s["vector"]["sha256"] == h.hexdigest() and s["vector"]["file"] == STEER_VECTOR
    for i in LAYERS:
        assert s["vector"]["norms"][str(i)] == pytest.approx(float(np.linalg.norm(ref[i])), rel=1e-4)


# ---------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("kind", ["text", "qwen2-audio"])
def test_alpha_zero_is_the_plain_model_and_alpha_changes_outputs(kind, models, toy, pairs, monkeypatch):
    logits = Logits(monkeypatch, adapter_class(kind))
    plain = run_task(make_spec(kind, models, toy, toy / "runs"))
    plain_logits = logits.take()
    zero = run_task(make_spec(kind, models, toy, toy / "runs", "steer", steer(pairs, 0.0)))
    assert same(logits.take(), plain_logits)  # exactly: adding 0 * v changes no value
    run_task(make_spec(kind, models, toy, toy / "runs", "steer", steer(pairs, 0.5)))
    small = logits.take()
    assert all(not torch.equal(small[k], plain_logits[k]) for k in plain_logits)
    big = run_task(make_spec(kind, models, toy, toy / "runs", "steer", steer(pairs, BIG)))
    base = outputs(plain)
    assert outputs(zero) == base
    changed = [k for k, v in outputs(big).items() if v != base[k]]
    assert len(changed) == len(base), (outputs(big), base)
    assert len({plain.run_id, zero.run_id, big.run_id}) == 3  # alpha is in the run id
    one_layer = run_task(make_spec(kind, models, toy, toy / "runs", "steer", steer(pairs, BIG, [1])))
    assert one_layer.run_id != big.run_id and one_layer.run["strategy"]["layers"] == [1]
    recs = [json.loads(x) for x in (big.run_dir / "samples.jsonl").read_text().splitlines()]
    for r in recs:  # the record's sub-call, as every strategy logs it
        assert [c["key"] for c in r["strategy"]["calls"]] == [r["key"] + "#steer0"]
        assert r["strategy"]["calls"][0]["output"] == r["output"]
    assert len((big.run_dir / CALLS).read_text().splitlines()) == len(recs)


def test_hooks_are_removed_after_a_run_and_after_an_interrupted_one(models, toy, pairs, monkeypatch):
    """One holder (one model in memory, as the CLI keeps it across tasks): a plain run after a steered run, and
    after a steered run stopped by Ctrl-C in the middle, answers exactly as the plain run before them."""
    from evalkit.models.text_llm import TextLLM

    logits = Logits(monkeypatch, TextLLM)
    holder = ModelHolder("text", {"path": str(models["text"]), "device": "cpu"})
    before = outputs(run_task(make_spec("text", models, toy, toy / "a"), holder))
    before_logits = logits.take()
    steered = run_task(make_spec("text", models, toy, toy / "b", "steer", steer(pairs, BIG)), holder)
    assert no_hooks(holder)
    assert set(outputs(steered).values()) != set(before.values()) and not same(logits.take(), before_logits)
    assert outputs(run_task(make_spec("text", models, toy, toy / "c"), holder)) == before
    assert same(logits.take(), before_logits)

    real = TextLLM.generate

    def interrupted(self, requests):
        real(self, requests[:1])  # steered, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(TextLLM, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_task(make_spec("text", models, toy, toy / "d", "steer", steer(pairs, BIG)), holder)
    # checked while the traceback still holds the run's frames: removed by the run itself, not by the collector
    assert stopped.value is not None and no_hooks(holder)
    monkeypatch.setattr(TextLLM, "generate", real)
    logits.take()
    assert outputs(run_task(make_spec("text", models, toy, toy / "e"), holder)) == before
    assert same(logits.take(), before_logits)


def test_resume_of_a_steered_run_asks_no_finished_call_and_steers_the_rest(models, toy, pairs, monkeypatch):
    from evalkit.models.text_llm import TextLLM

    logits = Logits(monkeypatch, TextLLM)
    whole = outputs(run_task(make_spec("text", models, toy, toy / "whole", "steer", steer(pairs, 2.0), limit=6,
                                       batch_size=1)))
    whole_logits = logits.take()
    asked: list[str] = []
    real = TextLLM.generate

    def crash_on_the_fourth(self, requests):
        if len(asked) == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        asked.extend(r.key for r in requests)
        return real(self, requests)

    monkeypatch.setattr(TextLLM, "generate", crash_on_the_fourth)
    s = make_spec("text", models, toy, toy / "runs", "steer", steer(pairs, 2.0), limit=6, batch_size=1)
    with pytest.raises(ModelFailure):
        run_task(s)
    logits.take()
    run_dir = next((toy / "runs").iterdir())
    finished = {json.loads(x)["key"] for x in (run_dir / CALLS).read_text().splitlines()}
    assert finished == set(asked) and len(finished) == 3
    vector = (run_dir / STEER_VECTOR).read_bytes()

    def log(self, requests):
        asked.extend(r.key for r in requests)
        return real(self, requests)

    monkeypatch.setattr(TextLLM, "generate", log)
    res = run_task(s)
    assert res.run_dir == run_dir and res.run["status"] == "complete"
    second = asked[3:]
    assert len(second) == 3 and not set(second) & finished
    assert (run_dir / STEER_VECTOR).read_bytes() == vector  # the resume steers with the run's own vector
    resumed = logits.take()  # the calls it asked are steered exactly as in an uninterrupted run
    assert same(resumed, {k: whole_logits[k] for k in resumed}) and len(resumed) == 3
    assert outputs(res) == whole


def test_a_resume_steers_with_the_vector_in_the_run_directory(models, toy, pairs, monkeypatch):
    """The run's file, not a recomputation (a resume on another device must not change the vector mid-run): a
    zero vector put there with the same source makes the remaining calls answer as the plain model."""
    from evalkit.models.text_llm import TextLLM

    plain = outputs(run_task(make_spec("text", models, toy, toy / "plain", limit=2, batch_size=1)))
    real, asked = TextLLM.generate, []

    def crash_on_the_second(self, requests):
        if asked:
            raise RuntimeError("simulated")
        asked.extend(r.key for r in requests)
        return real(self, requests)

    monkeypatch.setattr(TextLLM, "generate", crash_on_the_second)
    s = make_spec("text", models, toy, toy / "runs", "steer", steer(pairs, BIG), limit=2, batch_size=1)
    with pytest.raises(ModelFailure):
        run_task(s)
    monkeypatch.setattr(TextLLM, "generate", real)
    (run_dir,) = (toy / "runs").iterdir()
    path = str(run_dir / STEER_VECTOR)
    with __import__("safetensors").safe_open(path, framework="numpy") as f:
        meta = f.metadata()
    st.save_file({k: np.zeros_like(v) for k, v in st.load_file(path).items()}, path, metadata=meta)
    got = outputs(run_task(s))
    first, second = sorted(plain)
    assert got[first] != plain[first] and got[second] == plain[second]


def test_composes_with_circular_choices(models, toy, pairs):
    plain = outputs(run_task(make_spec("text", models, toy, toy / "runs", choices="circular", limit=2)))
    zero = run_task(make_spec("text", models, toy, toy / "runs", "steer", steer(pairs, 0.0), choices="circular",
                              limit=2))
    got = outputs(zero)
    assert len(got) == len(plain) > 2  # every rotation is a record with its own steered call
    assert got == plain


# ---------------------------------------------------------------------------- a saved vector
def test_a_saved_vector_reproduces_the_run_and_its_content_is_the_identity(models, toy, pairs, tmp_path):
    first = run_task(make_spec("text", models, toy, toy / "runs", "steer", steer(pairs, BIG)))
    vec = first.run_dir / STEER_VECTOR
    again = run_task(make_spec("text", models, toy, toy / "runs", "steer", {"from": str(vec), "alpha": str(BIG)}))
    assert outputs(again) == outputs(first)
    assert again.run["strategy"]["source"]["kind"] == "vector"
    assert again.run["strategy"]["vector"]["sha256"] == first.run["strategy"]["vector"]["sha256"]
    assert again.run["strategy"]["source"]["sha256"] == first.run["strategy"]["vector"]["sha256"]
    tensors = st.load_file(str(vec))
    relabelled = tmp_path / "other.safetensors"  # same numbers, other metadata, other place: the same run
    st.save_file(tensors, str(relabelled), metadata={"note": "copied"})
    assert run_task(make_spec("text", models, toy, toy / "runs", "steer",
                              {"from": str(relabelled), "alpha": str(BIG)})).run_id == again.run_id
    changed = dict(tensors)
    changed["layer.1"] = changed["layer.1"] * 2
    st.save_file(changed, str(tmp_path / "changed.safetensors"))
    other = run_task(make_spec("text", models, toy, toy / "runs", "steer",
                               {"from": str(tmp_path / "changed.safetensors"), "alpha": str(BIG)}))
    assert other.run_id != again.run_id
    just0 = run_task(make_spec("text", models, toy, toy / "runs", "steer",
                               {"from": str(vec), "alpha": str(BIG), "layers": "0"}))
    assert just0.run["strategy"]["layers"] == [0] and just0.run_id != again.run_id


# ---------------------------------------------------------------------------- refusals, before any work
def test_an_adapter_without_the_capability_is_refused_before_any_work(models, toy, pairs, monkeypatch):
    from evalkit.models.text_llm import TextLLM

    log = toy / "calls.log"
    with pytest.raises(RunConfigError, match="'scripted' lacks the steer capability"):
        run_task(RunSpec(model="scripted", task="toy-mcq", model_args={"answers": str(toy / "key.json"),
                                                                       "calls_log": str(log)},
                         task_args={"data": str(toy / "toy.json")}, output=toy / "runs", strategy="steer",
                         strategy_options=steer(pairs, 1.0)))
    assert not log.exists() and not (toy / "runs").exists()

    def built(self, config):
        raise AssertionError("the adapter was built")

    monkeypatch.setattr(TextLLM, "__init__", built)  # refused from the -M arguments alone, never built
    with pytest.raises(RunConfigError, match="'text' lacks the steer capability"):
        run_task(RunSpec(model="text", task="toy-mcq", model_args={"backend": "openai", "model": "m"},
                         task_args={"data": str(toy / "toy.json")}, output=toy / "runs", no_audio=True,
                         strategy="steer", strategy_options=steer(pairs, 1.0)))
    assert not (toy / "runs").exists()


def test_a_bad_layer_is_refused_naming_the_option(models, toy, pairs, monkeypatch, tmp_path):
    from pydantic import ValidationError

    from evalkit.models.text_llm import TextLLM

    def never(self, requests):
        raise AssertionError("a request was made")

    monkeypatch.setattr(TextLLM, "generate", never)
    with pytest.raises(RunConfigError, match=r"-S layers=1,3: the model has 3 decoder layers \(0\.\.2\); no layer 3"):
        run_task(make_spec("text", models, toy, toy / "runs", "steer", steer(pairs, 1.0, [3, 1])))
    assert not any((toy / "runs").glob("*"))  # nothing left behind, no vector written
    for bad in ("a", "-1", "1,1", "1.5"):
        with pytest.raises(ValidationError, match="layer"):
            run_task(make_spec("text", models, toy, toy / "runs", "steer", {**steer(pairs, 1.0), "layers": bad}))
    with pytest.raises(RunConfigError, match="needs -S layers"):
        run_task(make_spec("text", models, toy, toy / "runs", "steer", {"from": str(pairs)}))
    with pytest.raises(RunConfigError, match="needs -S from"):
        run_task(make_spec("text", models, toy, toy / "runs", "steer", {"layers": "1"}))
    bad_pairs = tmp_path / "bad.jsonl"
    bad_pairs.write_text('{"positive": "yes"}\n')
    with pytest.raises(RunConfigError, match="line 1"):
        run_task(make_spec("text", models, toy, toy / "runs", "steer", steer(bad_pairs, 1.0)))
    st.save_file({"layer.0": np.ones(8, np.float32)}, str(tmp_path / "narrow.safetensors"))
    with pytest.raises(RunConfigError, match="hidden size is 32"):
        run_task(make_spec("text", models, toy, toy / "runs", "steer", {"from": str(tmp_path / "narrow.safetensors")}))
    with pytest.raises(RunConfigError, match=r"no vector for layer\(s\) \[2\]"):
        run_task(make_spec("text", models, toy, toy / "runs", "steer",
                           {"from": str(tmp_path / "narrow.safetensors"), "layers": "2"}))
    assert not any((toy / "runs").glob("*"))


def test_cli_runs_a_steered_evaluation(models, toy, pairs):
    from typer.testing import CliRunner

    from evalkit.cli import app

    base = ["run", "-m", "text", "-M", f"path={models['text']}", "-M", "device=cpu", "-t", "toy-mcq", "-T",
            f"data={toy / 'toy.json'}", "--no-audio", "--limit", "2", "--max-new-tokens", "4",
            "--output", str(toy / "runs"), "-q", "--strategy", "steer"]
    out = CliRunner().invoke(app, [*base, "-S", "fromm=x"])
    assert out.exit_code == 2 and "did you mean -S from=" in out.output
    out = CliRunner().invoke(app, [*base, "-S", f"from={pairs}", "-S", "layers=1", "-S", "alpha=4"])
    assert out.exit_code == 0, out.output
    (run_dir,) = (toy / "runs").iterdir()
    run = json.loads((run_dir / "run.json").read_text())
    assert run["strategy"]["layers"] == [1] and run["strategy"]["alpha"] == 4.0 and (run_dir / STEER_VECTOR).exists()


def test_pairs_file_is_split_on_newlines_only(tmp_path):
    """A pair's text may hold U+2028 (JSON allows it raw): the file is split on "\\n" only, as every
    JSONL evalkit reads (evalkit.jsonio.jsonl_lines), so the pair is read whole, not refused."""
    import json

    from evalkit.engine.strategies import read_pairs

    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"positive": "calm\u2028and kind", "negative": "rude"}, ensure_ascii=False) + "\r\n\n",
                 encoding="utf-8")
    assert read_pairs(f) == [{"positive": "calm\u2028and kind", "negative": "rude"}]
