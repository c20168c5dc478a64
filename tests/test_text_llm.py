"""TextLLM: hf backend on a tiny random Qwen2 + a locally built tokenizer, openai backend against
the fake server, vllm backend against the fake vllm package."""
import sys

import pytest

from evalkit.types import AudioRef, GenerationConfig, Request

WORDS = ["what", "is", "the", "answer", "a", "b", "c", "d", "option", "question", "sound", "dog", "cat", "user", "assistant", "system", "be", "brief", "yes", "no", "one", "two", "three"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


def build_tiny_qwen2(d, layers: int = 2):
    """A tiny random Qwen2ForCausalLM (hidden 32, `layers` decoder layers) + a word-level tokenizer with a chat
    template, saved to d."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "<eos>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS + ["?", ".", "(", ")", ":"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                eos_token="<eos>", additional_special_tokens=specials[2:4])
    fast.chat_template = TEMPLATE
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"], tie_word_embeddings=True)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(d)
    return d


def treq(key, text, gen=None, system=None):
    msgs = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    msgs.append({"role": "user", "content": [{"type": "text", "text": text}]})
    return Request(key, msgs, gen or GenerationConfig(max_new_tokens=6))


def audio_req(key="au"):
    import numpy as np

    return Request(key, [{"role": "user", "content": [
        {"type": "audio", "audio": AudioRef(array=np.zeros(800, "float32"), sample_rate=8000)},
        {"type": "text", "text": "what sound ?"}]}])


# ---- config -------------------------------------------------------------------------------
def test_config_checks():
    from evalkit.models.text_llm import TextLLMConfig

    with pytest.raises(Exception, match="model"):
        TextLLMConfig(backend="hf")
    with pytest.raises(Exception, match="backend=vllm only"):
        TextLLMConfig(backend="hf", model="x", vllm={"tensor_parallel_size": 2})
    with pytest.raises(Exception, match="tensor_paralel_size"):
        TextLLMConfig(backend="vllm", model="x", vllm={"tensor_paralel_size": 2})
    with pytest.raises(Exception, match="max_retrys"):
        TextLLMConfig(backend="openai", model="x", openai={"max_retrys": 2})


# ---- hf ----------------------------------------------------------------------------------------
def test_hf_backend_batched_equals_single(tiny_model):
    from evalkit.models.text_llm import TextLLM

    m = TextLLM.from_args({"path": str(tiny_model), "batch_size": 4, "device": "cpu"})
    assert m.capabilities == frozenset({"text", "steer"})  # steer: backend=hf (tests/test_steer.py)
    texts = ["what is the answer ?", "dog or cat ?", "be brief : one two three question sound", "yes"]
    batched = m.generate([treq(f"k{i}", t) for i, t in enumerate(texts)])
    assert [r.key for r in batched] == ["k0", "k1", "k2", "k3"]
    assert all(r.error is None and isinstance(r.text, str) for r in batched)
    single = [m.generate([treq(f"k{i}", t)])[0] for i, t in enumerate(texts)]
    assert [r.text for r in batched] == [r.text for r in single]  # left padding does not change greedy output
    assert m.generate([treq("k0", texts[0])])[0].text == batched[0].text  # deterministic
    info = m.info()
    assert info["backend"] == "hf" and info["device"] == "cpu"
    # the chat template is applied: a system prompt changes the rendered prompt
    rendered = m._backend.render(treq("s", "yes", system="be brief"))
    assert rendered == "<|im_start|>system be brief<|im_end|> <|im_start|>user yes<|im_end|> <|im_start|>assistant "
    bad = m.generate([audio_req(), treq("ok", "yes")])
    assert "--no-audio" in bad[0].error and bad[1].error is None
    m.close()


# ---- openai ---------------------------------------------------------------------------------------
def test_openai_backend_against_fake_server():
    pytest.importorskip("openai")
    from fake_openai_server import FakeOpenAIServer, audio_parts, text_of

    from evalkit.models.text_llm import TextLLM

    with FakeOpenAIServer(reply=lambda body: "AUDIO" if audio_parts(body) else "(B) " + text_of(body)) as srv:
        m = TextLLM.from_args({"backend": "openai", "base_url": srv.url, "model": "tiny-text",
                               "system_prompt": "be brief", "concurrency": 2})
        try:
            out = m.generate([treq("a", "what is two ?"), audio_req("au"), treq("b", "yes ?")])
        finally:
            m.close()
        assert out[0].text == "(B) be brief\nwhat is two ?" and out[2].error is None
        assert "--no-audio" in out[1].error
        assert srv.count == 2  # the audio request was never sent
        assert all(b["model"] == "tiny-text" and b["temperature"] == 0.0 for b in srv.bodies)


# ---- vllm ----------------------------------------------------------------------------------------
def test_vllm_backend_text_prompts(tmp_path, monkeypatch):
    from fake_vllm import install
    from test_vllm_requests import FAKE_VLLM

    undo = install(tmp_path / "fv", FAKE_VLLM)
    try:
        from evalkit.models.text_llm import TextLLM

        m = TextLLM.from_args({"backend": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct",
                               "vllm": {"max_model_len": 2048}})
        out = m.generate([treq("a", "what is two ?"), audio_req("au")])
        llm = sys.modules["vllm"].LLM.instances[-1]
        assert llm.kw["max_model_len"] == 2048 and llm.kw["limit_mm_per_prompt"] == {"audio": 0}
        assert out[0].text.endswith("prompt=<user>what is two ?</user><assistant>") and "audio=[]" in out[0].text
        assert "--no-audio" in out[1].error
        assert llm.calls == [1]
    finally:
        undo()


# ---- no chat template: the plain format with the tokenizer's special tokens ----------------------
@pytest.fixture(scope="module")
def tiny_plain_model(tmp_path_factory):
    """A tiny random Llama whose tokenizer has no chat template and, like Gemma's or Llama-2's,
    puts <bos> before a sequence (and, to show it is left off, <eos> after it)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    d = tmp_path_factory.mktemp("tiny-llama-plain")
    specials = ["<unk>", "<pad>", "<bos>", "<eos>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS + ["?", ".", "(", ")", ":"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                bos_token="<bos>", eos_token="<eos>")
    assert not fast.chat_template
    fast.save_pretrained(d)
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   bos_token_id=vocab["<bos>"], eos_token_id=vocab["<eos>"],
                                   pad_token_id=vocab["<pad>"], tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return d, vocab


def _spy_generate(m):
    """Record the input_ids every model.generate call receives."""
    seen = []
    model = m._backend.model
    real = model.generate

    def spy(*a, **kw):
        seen.append(kw["input_ids"].tolist())
        return real(*a, **kw)

    model.generate = spy
    return seen


def test_plain_prompt_starts_with_bos(tiny_plain_model):
    from evalkit.models.text_llm import TextLLM

    d, vocab = tiny_plain_model
    m = TextLLM.from_args({"path": str(d), "batch_size": 4, "device": "cpu", "system_prompt": "be brief"})
    seen = _spy_generate(m)
    # the documented plain format: texts in order, no role names, blank line between, final newline
    assert m._backend.render(treq("s", "what is the answer ?", system="be brief")) == "be brief\n\nwhat is the answer ?\n"
    out = m.generate([treq("a", "what is the answer ?")])
    assert out[0].error is None
    ids = seen[-1][0]
    words = [vocab[w] for w in ["be", "brief", "what", "is", "the", "answer", "?"]]
    assert ids == [vocab["<bos>"], *words]  # <bos> first, no <eos> closing the prompt
    info = m.info()
    assert info["prompt_format"] == "plain+special_tokens" and info["prompt_prefix_tokens"] == ["<bos>"]
    # in a left-padded batch every row starts with <bos> right after its padding
    texts = ["what is the answer ?", "yes", "dog or cat ? be brief : one two three", "no"]
    batched = m.generate([treq(f"k{i}", t) for i, t in enumerate(texts)])
    pad = vocab["<pad>"]
    for row in seen[-1]:
        real = [t for t in row if t != pad]
        assert real[0] == vocab["<bos>"] and real[-1] != vocab["<eos>"] and row[:len(row) - len(real)] == [pad] * (len(row) - len(real))
    single = [m.generate([treq(f"k{i}", t)])[0] for i, t in enumerate(texts)]
    assert [r.text for r in batched] == [r.text for r in single]
    m.close()


def test_prompt_format_option(tiny_model, tiny_plain_model):
    from evalkit.models.text_llm import TextLLM

    with pytest.raises(ValueError, match="no chat template"):
        TextLLM.from_args({"path": str(tiny_plain_model[0]), "device": "cpu", "prompt_format": "chat_template"})
    m = TextLLM.from_args({"path": str(tiny_model), "device": "cpu", "prompt_format": "plain"})
    assert m._backend.render(treq("s", "yes", system="be brief")) == "be brief\n\nyes\n"
    assert m.info()["prompt_format"] == "plain+special_tokens" and m.info()["prompt_prefix_tokens"] == []
    m.close()
    m = TextLLM.from_args({"path": str(tiny_model), "device": "cpu"})
    assert m.info()["prompt_format"] == "chat_template" and "prompt_prefix_tokens" not in m.info()
    m.close()


# ---- GGUF -----------------------------------------------------------------------------------------
def test_gguf_config_checks():
    from evalkit.models.text_llm import TextLLMConfig

    with pytest.raises(Exception, match="backend=hf only"):
        TextLLMConfig(backend="openai", model="x", gguf_file="m.gguf")
    for bad in ("../m.gguf", "/abs/m.gguf", "m.bin"):
        with pytest.raises(Exception, match="gguf_file"):
            TextLLMConfig(path="/x", gguf_file=bad)
    assert TextLLMConfig(path="/x", gguf_file="sub/m.Q4_1.gguf").gguf_file == "sub/m.Q4_1.gguf"


def test_gguf_missing_file_and_missing_package(tiny_model, monkeypatch):
    pytest.importorskip("gguf")
    from evalkit.models.hf_common import HFLoadError
    from evalkit.models.text_llm import TextLLM

    (tiny_model / "other.Q8_0.gguf").write_bytes(b"")
    try:
        with pytest.raises(HFLoadError, match=r"gguf_file=m\.gguf: no such file.*other\.Q8_0\.gguf"):
            TextLLM.from_args({"path": str(tiny_model), "device": "cpu", "gguf_file": "m.gguf"})
    finally:
        (tiny_model / "other.Q8_0.gguf").unlink()
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(HFLoadError, match=r"needs the gguf package: pip install 'gguf>=0\.10'"):
        TextLLM.from_args({"path": str(tiny_model), "device": "cpu", "gguf_file": "m.gguf"})


def test_gguf_unloadable_file_says_transformers_dequantizes(tiny_model, tmp_path):
    pytest.importorskip("gguf")
    from evalkit.models.hf_common import HFLoadError
    from evalkit.models.text_llm import TextLLM

    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\x00" * 60)  # a header and nothing a reader can use
    with pytest.raises(HFLoadError) as e:
        TextLLM.from_args({"path": str(tmp_path), "device": "cpu", "gguf_file": "broken.gguf"})
    msg = str(e.value)
    assert "gguf_file=broken.gguf" in msg and "dequantizes every tensor to float" in msg
    assert "Q4_1" in msg and "Q8_0" in msg and "llama" in msg  # the loadable types and architectures


def test_gguf_note_lists_what_gguf_py_dequantizes():
    gguf_quants = pytest.importorskip("gguf.quants")
    import numpy as np
    from gguf import GGMLQuantizationType as T

    from evalkit.models.hf_common import gguf_dequantizable_types

    types = gguf_dequantizable_types()
    # checked against gguf-py itself: each listed type dequantizes a block of zeros, and a type it
    # cannot dequantize (Q8_1: llama.cpp's internal dot-product format) is not listed
    for name in types:
        if name in ("F32", "F16"):
            continue
        qt = T[name]
        block, size = gguf_quants.GGML_QUANT_SIZES[qt]
        assert gguf_quants.dequantize(np.zeros((1, size), "uint8"), qt).shape[-1] == block
    assert "Q8_1" not in types and {"F32", "F16", "Q4_0", "Q4_1", "Q8_0", "Q4_K"} <= set(types)
    with pytest.raises(NotImplementedError):
        gguf_quants.dequantize(np.zeros((1, 36), "uint8"), T.Q8_1)
