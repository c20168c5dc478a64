"""EvA's vLLM path without vLLM: a FAKE `vllm` package (put on sys.path, as in test_vllm_requests.py)
records what reaches it; the Qwen2 subclass logic runs on a tiny torch embedding."""
from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fake_vllm import INTERFACE, install  # noqa: E402
from test_eva_model import TOK, enc_text, request, semantic, tiny_kimi, wave  # noqa: E402

from evalkit.models.eva import EvA  # noqa: E402
from evalkit.models.eva import vllm_path as vp  # noqa: E402
from evalkit.models.eva.kimi import TEXT_BLANK, KimiTokens, run_vllm, vllm_prompts  # noqa: E402
from evalkit.types import AudioRef, Request  # noqa: E402

torch.set_num_threads(1)

FAKE_VLLM = INTERFACE + textwrap.dedent('''
    # this fake records registrations, engine kwargs and generate inputs


    class _Registry:
        def __init__(self):
            self.calls = []

        def register_model(self, model_arch, model_cls):
            if not isinstance(model_arch, str):
                raise TypeError(model_arch)
            if isinstance(model_cls, str) and len(model_cls.split(":")) != 2:
                raise ValueError("Expected a string in the format `<module>:<class>`")
            self.calls.append((model_arch, model_cls))

        def get_supported_archs(self):
            return {a for a, _ in self.calls}


    ModelRegistry = _Registry()


    class LLM:
        instances = []

        def __init__(self, model, **kw):
            self.kw = _engine_kwargs(model, kw)
            self.calls = []
            LLM.instances.append(self)

        def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None):
            inputs = list(prompts)
            params = list(sampling_params)
            assert len(params) == len(inputs) and all(isinstance(p, SamplingParams) for p in params)
            self.calls.append((inputs, params))
            outs = []
            for x, p in zip(inputs, params):
                if not self.kw.get("enable_prompt_embeds"):
                    raise ValueError("You must set `--enable-prompt-embeds` to input `prompt_embeds`.")
                e = x["prompt_embeds"]
                if e.ndim == 3:  # a batch of one is squeezed, as vLLM's renderer does
                    e = e.squeeze(0)
                if e.ndim != 2:
                    raise ValueError("prompt_embeds must be of shape (seq_len, hidden_size).")
                if e.shape[0] == 13:  # the "bad" prompt
                    raise ValueError("prompt longer than max_model_len")
                ids = [e.shape[0], 3, 4] + list(p.kw["stop_token_ids"][:1]) + [99]
                out = SimpleNamespace(index=0, token_ids=ids, finish_reason="stop", text="")
                outs.append(SimpleNamespace(prompt_token_ids=None, outputs=[out]))
            return outs
''')

FAKE_QWEN2 = textwrap.dedent('''
    """A stand-in for vllm.model_executor.models.qwen2 (vLLM 0.33): the parts the EvA subclass relies on."""
    import torch
    from torch import nn


    class Qwen2Model(nn.Module):
        def __init__(self, *, vllm_config, prefix=""):
            super().__init__()
            config = vllm_config.model_config.hf_config.get_text_config()
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)

        def embed_input_ids(self, input_ids):  # the plain embedding (no text blank)
            return self.embed_tokens(input_ids)

        def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
            if inputs_embeds is not None:
                return inputs_embeds
            return self.embed_input_ids(input_ids)


    class Qwen2ForCausalLM(nn.Module):
        def __init__(self, *, vllm_config, prefix=""):
            super().__init__()
            self.config = vllm_config.model_config.hf_config.get_text_config()
            self.model = Qwen2Model(vllm_config=vllm_config, prefix="model")
            self.seen = []

        def embed_input_ids(self, input_ids):
            return self.model.embed_input_ids(input_ids)

        def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
            hidden = self.model(input_ids, positions, intermediate_tensors, inputs_embeds)
            self.seen.append(hidden)
            return hidden

        def load_weights(self, weights):  # AutoWeightsLoader: the set of loaded parameter names
            return {name for name, _ in weights}
''')


@pytest.fixture
def fake_vllm(tmp_path):
    undo = install(tmp_path / "fakevllm", FAKE_VLLM, {"model_executor/models/qwen2.py": FAKE_QWEN2})
    yield importlib.import_module("vllm")
    undo()


def eva_vllm(**kw) -> tuple[EvA, object]:
    model = tiny_kimi()
    args = {"checkpoint": "unused", "engine": "vllm", "kimi_path": "/snap/kimi", "max_batch": 2}
    args.update(kw)
    eva = EvA.from_args(args)
    eva.attach(model, enc_text, lambda ids: " ".join(map(str, ids)), semantic_fn=semantic)
    return eva, model


# ----------------------------------------------------------------------------- no vllm
def test_missing_vllm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'evalkit\[vllm\]'"):
        EvA.from_args({"checkpoint": "unused", "engine": "vllm"})
    EvA.from_args({"checkpoint": "unused"})  # the default engine needs no vllm
    with pytest.raises(ImportError, match=r"pip install 'evalkit\[vllm\]'"):
        vp.EvAVLLMEngine("/snap/kimi")


def test_import_needs_no_vllm_or_torch():
    import subprocess

    code = ("import sys, evalkit.models.eva.vllm_path; "
            "assert 'torch' not in sys.modules and 'vllm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_vllm_without_engine_says_how():
    prompts, params = vllm_prompts([torch.randn(3, 8)], tokens=TOK)
    with pytest.raises(ValueError, match="EvAVLLMEngine"):
        run_vllm(prompts, params)


# ----------------------------------------------------------------------------- pure pieces
def test_decode_embedding_adds_text_blank():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(200, 16)
    ids = torch.tensor([5, 7, 199])
    got = vp.decode_embeddings(emb, ids, text_blank=42)
    assert got.shape == (3, 16)
    assert torch.equal(got, emb(ids) + emb.weight[42])
    # the transformers decode loop's step input, for the same ids
    step = emb(ids.unsqueeze(1)) + emb(torch.tensor([42]))
    assert torch.equal(got, step[:, 0])
    assert vp.TEXT_BLANK == TEXT_BLANK == 151666


def test_weight_filter_keeps_only_llm_tensors():
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.27.mlp.up_proj.weight",
             "model.norm.weight", "lm_head.weight", "model.mimo_layers.0.self_attn.q_proj.weight", "model.mimo_norm.weight",
             "mimo_output.weight", "model.vq_adaptor.layers.0.weight", "model.ced_processor.alpha",
             "whisper_model.encoder.conv1.weight", "ced_model.blocks.0.attn.qkv.weight",
             "model.layers.0.self_attn.rotary_emb.inv_freq"]
    kept = [n for n, _ in vp.filter_llm_weights((n, None) for n in names)]
    assert kept == names[:5]
    tied = [n for n, _ in vp.filter_llm_weights(((n, None) for n in names), tie_word_embeddings=True)]
    assert tied == names[:4]


def test_engine_and_sampling_kwargs():
    kw = vp.engine_kwargs("/snap/kimi", tensor_parallel_size=4, max_model_len=4096, gpu_memory_utilization=0.7,
                          dtype="bfloat16", trust_remote_code=True)
    assert kw["enable_prompt_embeds"] is True and kw["model"] == "/snap/kimi"
    assert (kw["tensor_parallel_size"], kw["max_model_len"], kw["gpu_memory_utilization"]) == (4, 4096, 0.7)
    assert kw["hf_overrides"] == {"architectures": [vp.EVA_ARCH], "eva_text_blank_id": 151666}
    assert "max_model_len" not in vp.engine_kwargs("/snap/kimi")
    _, params = vllm_prompts([torch.zeros(2, 4)], max_new_tokens=7, temperature=0.0, top_p=0.5, seed=3)
    sp = vp.sampling_kwargs(params)
    assert sp["temperature"] == 0.0 and sp["top_p"] == 1.0 and sp["max_tokens"] == 7 and sp["seed"] == 3
    assert sp["stop_token_ids"] == sorted(KimiTokens().stops) == [151648, 151667]
    assert sp["detokenize"] is False


# ----------------------------------------------------------------------------- against the fake vllm
def test_subclass_registration_and_decode_embedding(fake_vllm):
    cls = vp.register_eva_model(fake_vllm)
    archs = [a for a, _ in fake_vllm.ModelRegistry.calls]
    assert archs == ["EvAKimiaForCausalLM"]
    assert all(c is cls for _, c in fake_vllm.ModelRegistry.calls)
    from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

    assert issubclass(cls, Qwen2ForCausalLM)
    vp.register_eva_model(fake_vllm)  # idempotent
    assert len(fake_vllm.ModelRegistry.calls) == 1

    from types import SimpleNamespace

    class HfConfig(SimpleNamespace):  # hf_overrides land on the hf config; Qwen2 reads get_text_config()
        def get_text_config(self):
            return self

    def vllm_config(**hf):
        return SimpleNamespace(model_config=SimpleNamespace(hf_config=HfConfig(**hf)))

    torch.manual_seed(0)
    m = cls(vllm_config=vllm_config(vocab_size=64, hidden_size=8, tie_word_embeddings=False, eva_text_blank_id=40))
    emb = m.model.embed_tokens
    ids = torch.tensor([1, 2, 3])
    want = emb(ids) + emb.weight[40]
    assert torch.equal(m.embed_input_ids(ids), want)  # vLLM >= 0.11.1 name
    assert torch.equal(m.get_input_embeddings(ids), want)  # older name
    # what vLLM's GPU model runner does with prompt embeds enabled: it embeds the (generated) token ids with
    # model.embed_input_ids(input_ids=...), then calls forward with input_ids=None and inputs_embeds
    step = m.embed_input_ids(input_ids=ids)
    assert torch.equal(m(input_ids=None, positions=torch.arange(3), intermediate_tensors=None,
                         inputs_embeds=step), want)
    # forward with token ids only (never with prompt embeds enabled): the blank is still added
    assert torch.equal(m(ids, torch.arange(3)), want)
    # prefill with prompt embeddings: used unchanged
    pe = torch.randn(5, 8)
    assert torch.equal(m(None, torch.arange(5), inputs_embeds=pe), pe)
    # weights: only the LLM's reach Qwen2's loader
    loaded = m.load_weights([("model.layers.0.mlp.up_proj.weight", 0), ("model.mimo_layers.0.x", 0),
                             ("model.vq_adaptor.layers.0.weight", 0), ("lm_head.weight", 0), ("mimo_output.weight", 0)])
    assert loaded == {"model.layers.0.mlp.up_proj.weight", "lm_head.weight"}
    # without the override the confirmed text blank id is used
    m2 = cls(vllm_config=vllm_config(vocab_size=151670, hidden_size=2))
    assert m2._eva_text_blank() == 151666


def test_adapter_vllm_engine_end_to_end(fake_vllm):
    eva, model = eva_vllm(tensor_parallel_size=2, max_model_len=2048, gpu_memory_utilization=0.6,
                          vllm_engine_args={"max_num_seqs": 64})
    assert eva.preferred_batch_size == 512
    r1 = AudioRef(array=wave(1.0, 1), sample_rate=16000)
    r2 = AudioRef(array=wave(0.6, 2), sample_rate=16000)
    reqs = [request("a", r1, "what"), request("b", r1, "which sound"), request("c", r2, "why"),
            Request(key="d", messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}]),
            Request(key="x", messages=[{"role": "tool", "content": [{"type": "text", "text": "?"}]}])]
    for r in reqs:
        r.generation.max_new_tokens = 5
    out = eva.generate(reqs)
    assert [o.key for o in out] == ["a", "b", "c", "d", "x"]
    assert all(o.error is None for o in out[:4]) and out[4].error and "roles" in out[4].error

    llm, = fake_vllm.LLM.instances
    assert llm.kw["enable_prompt_embeds"] is True and llm.kw["model"] == "/snap/kimi"
    assert (llm.kw["tensor_parallel_size"], llm.kw["max_model_len"], llm.kw["gpu_memory_utilization"]) == (2, 2048, 0.6)
    assert llm.kw["hf_overrides"]["eva_text_blank_id"] == TOK.text_blank and llm.kw["max_num_seqs"] == 64
    assert llm.kw["dtype"] == "float32" and llm.kw["skip_tokenizer_init"] is True
    assert [a for a, _ in fake_vllm.ModelRegistry.calls] == ["EvAKimiaForCausalLM"]

    # one generate call for all four good requests, max_batch=2 notwithstanding
    (inputs, params), = llm.calls
    assert len(inputs) == 4
    # exactly the tensors vllm_prompts() builds from the transformers-path embeddings
    from evalkit.models.eva.kimi import build_prompt

    ok = reqs[:4]
    clips = eva._encode_clips([a for r in ok for a in r.audio()])
    prompts = [build_prompt(r.messages, enc_text, semantic, model.tokens) for r in ok]
    clip_lists = [[clips[a.sha256()] for a in r.audio()] for r in ok]
    ref = model.embed(prompts[:2], clip_lists[:2]) + model.embed(prompts[2:], clip_lists[2:])  # max_batch=2 chunks
    ref_prompts, _ = vllm_prompts(ref, 5, 0.0, 1.0, 0, model.tokens)
    for x, y in zip(inputs, ref_prompts):
        assert x["prompt_embeds"].dtype == y["prompt_embeds"].dtype == model.dtype
        assert x["prompt_embeds"].shape == y["prompt_embeds"].shape
        assert torch.equal(x["prompt_embeds"], y["prompt_embeds"])
        assert set(x) == {"prompt_embeds"}
    for p in params:
        assert p.kw["temperature"] == 0.0 and p.kw["max_tokens"] == 5 and p.kw["detokenize"] is False
        assert p.kw["stop_token_ids"] == sorted(TOK.stops)
    # decoded token ids stop before the first stop token
    assert out[0].text == f"{ref[0].shape[0]} 3 4"
    assert eva.info()["engine"] == "vllm"


def test_engine_errors_become_per_request_errors(fake_vllm):
    eva, _ = eva_vllm()
    # a prompt whose embedding has 13 rows makes the fake engine raise: only that request fails
    from evalkit.models.eva.kimi import build_prompt

    def text_req(key, text):
        return Request(key=key, messages=[{"role": "user", "content": [{"type": "text", "text": text}]}])

    def n(t):
        return len(build_prompt(text_req("k", t).messages, enc_text, semantic, TOK).text_ids)

    bad = next("y" * k for k in range(1, 20) if n("y" * k) == 13)
    reqs = [text_req("ok1", "hi"), text_req("bad", bad), text_req("ok2", "hello there")]
    out = eva.generate(reqs)
    assert out[0].error is None and out[2].error is None
    assert out[1].error and "max_model_len" in out[1].error
    llm, = fake_vllm.LLM.instances
    assert [len(c[0]) for c in llm.calls] == [3, 1, 1, 1]  # the batch, then one at a time

    # an embedding failure (bad clip) is that request's error; the others still run
    eva2, model2 = eva_vllm()
    embed = model2.embed

    def flaky(prompts, clips):
        if any(p.text_ids[-3] == enc_text("!")[0] for p in prompts):
            raise RuntimeError("bad clip")
        return embed(prompts, clips)

    model2.embed = flaky
    ref = AudioRef(array=wave(0.5, 0), sample_rate=16000)
    out2 = eva2.generate([request("p", ref, "fine"), request("q", ref, "boom!")])
    assert out2[0].error is None and out2[1].error and "bad clip" in out2[1].error


def test_run_prompts_isolates_refused_sampling_params(fake_vllm):
    prompts, params = vllm_prompts([torch.randn(4, 8), torch.randn(5, 8), torch.randn(6, 8)], tokens=TOK,
                                   max_new_tokens=4)
    llm = fake_vllm.LLM("/snap/kimi", enable_prompt_embeds=True)
    hot = dict(params, temperature=5.0)  # vLLM refuses temperature > 2 when SamplingParams is built
    out = vp.run_prompts(llm, prompts, [params, hot, params], vllm=fake_vllm)
    assert "error" not in out[0] and "error" not in out[2]
    assert "temperature" in out[1]["error"]
    assert out[0]["token_ids"][0] == 4 and out[2]["token_ids"][0] == 6  # each result is its own prompt's
    assert [len(c[0]) for c in llm.calls] == [2]  # the valid two still go in one call
    assert vp.run_prompts(llm, prompts[:1], [hot], vllm=fake_vllm)[0]["error"]


def test_vllm_plugin_registers_lazily_and_never_raises(fake_vllm, caplog):
    vp.vllm_plugin()
    assert fake_vllm.ModelRegistry.calls == [(vp.EVA_ARCH, "evalkit.models.eva.vllm_path:EvAKimiaForCausalLM")]
    assert "vllm.model_executor.models.qwen2" not in sys.modules  # nothing imported for other vLLM users
    vp.vllm_plugin()  # vLLM calls plugins once per process, possibly many times on a machine
    assert len(fake_vllm.ModelRegistry.calls) == 1
    module, name = fake_vllm.ModelRegistry.calls[0][1].split(":")
    cls = getattr(importlib.import_module(module), name)  # what vLLM does when a run asks for the arch
    from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

    assert issubclass(cls, Qwen2ForCausalLM) and cls is vp.model_class(fake_vllm)
    assert vp.register_eva_model(fake_vllm) is cls  # in-process registration: the same class object
    with pytest.raises(AttributeError):
        vp.NotAModel  # noqa: B018

    def broken(*a, **k):
        raise RuntimeError("registry exploded")

    fake_vllm.ModelRegistry.get_supported_archs = lambda: set()
    fake_vllm.ModelRegistry.register_model = broken
    with caplog.at_level("WARNING"):
        vp.vllm_plugin()  # logged, not raised: vLLM start-up must not break
    assert "registry exploded" in caplog.text


def test_vllm_plugin_entry_point_is_installed():
    from importlib.metadata import entry_points

    eps = [e for e in entry_points(group="vllm.general_plugins") if e.name == "evalkit_eva"]
    assert len(eps) == 1 and eps[0].load() is vp.vllm_plugin


def test_embed_only_keeps_embeddings_identical():
    model = tiny_kimi()
    pr = [__import__("evalkit.models.eva.kimi", fromlist=["x"]).build_prompt(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], enc_text, semantic, TOK)]
    before = model.embed(pr, [[]])[0]
    vp.embed_only(model)
    assert sum(p.numel() for p in model.llm.parameters()) == model.llm.embed_tokens.weight.numel()
    assert torch.equal(model.embed(pr, [[]])[0], before)
    with pytest.raises(RuntimeError, match="vLLM"):
        model.llm(inputs_embeds=before[None])
