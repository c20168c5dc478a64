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
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    d = tmp_path_factory.mktemp("tiny-qwen2")
    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "<eos>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS + ["?", ".", "(", ")", ":"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                eos_token="<eos>", additional_special_tokens=specials[2:4])
    fast.chat_template = TEMPLATE
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
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
    assert m.capabilities == frozenset({"text"})
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
