"""The vLLM adapter without vLLM: request building per model family (pure), the missing-extra
error, and the execution path against a fake `vllm` package (in-process and data parallel)."""
import importlib
import json
import sys
import textwrap

import numpy as np
import pytest
from fake_vllm import INTERFACE, install

from evalkit.types import AudioRef, GenerationConfig, Request

FAKE_VLLM = INTERFACE + textwrap.dedent('''
    # this fake LLM.generate echoes what reached it
    import multiprocessing
    import os


    class _Tok:
        def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=True):
            return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in msgs) + "<assistant>"


    class LLM:
        instances = []

        def __init__(self, model, **kw):
            self.kw = _engine_kwargs(model, kw)
            # vLLM starts its EngineCore in a child process (a daemonic parent may not have one)
            proc = multiprocessing.get_context("fork").Process(target=int)
            proc.start()
            proc.join()
            self.calls = []
            LLM.instances.append(self)
            mt = os.environ.get("FAKE_VLLM_MODEL_TYPE")
            self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(hf_config=SimpleNamespace(model_type=mt)))

        def get_tokenizer(self):
            return _Tok()

        # (vLLM's use_tqdm is keyword-only; test_adapter_contract.py's wrapper passes it by position)
        def generate(self, prompts, sampling_params=None, use_tqdm=True, *, lora_request=None, priority=None):
            inputs = list(prompts)
            params = list(sampling_params)
            assert len(params) == len(inputs) and all(isinstance(p, SamplingParams) for p in params)
            self.calls.append(len(inputs))
            if any("BOOM" in x.get("prompt", "") for x in inputs):
                raise ValueError("prompt longer than max_model_len")
            outs = []
            for x, p in zip(inputs, params):
                audio = x.get("multi_modal_data", {}).get("audio", [])
                desc = ";".join(f"{len(a)}@{sr}:{float(abs(a).max()):.2f}" for a, sr in audio)
                text = (f"audio=[{desc}] pid={os.getpid()} dev={os.environ.get('CUDA_VISIBLE_DEVICES')} "
                        f"temp={p.kw['temperature']} prompt={x.get('prompt', x.get('prompt_token_ids'))}")
                out = SimpleNamespace(index=0, text=text, token_ids=[1, 2, 3], finish_reason="stop")
                outs.append(SimpleNamespace(prompt_token_ids=[0] * 5, outputs=[out]))
            return outs
''')


def tone(sr=8000, seconds=0.5, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def req(key="s1", n_audio=1, text="Which sound? (A) dog (B) cat", system=None, gen=None):
    content = [{"type": "audio", "audio": AudioRef(array=tone(amp=0.1 * (i + 1)), sample_rate=8000,
                                                     label=f"c{i}.wav")} for i in range(n_audio)]
    content.append({"type": "text", "text": text})
    msgs = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    msgs.append({"role": "user", "content": content})
    return Request(key, msgs, gen or GenerationConfig())


@pytest.fixture
def va():
    return importlib.import_module("evalkit.models.vllm_audio")


@pytest.fixture
def fake_vllm(tmp_path):
    undo = install(tmp_path / "fakevllm", FAKE_VLLM)
    yield tmp_path / "fakevllm"
    undo()


# ---- no vllm -----------------------------------------------------------------------------
def test_import_does_not_need_vllm_and_missing_extra_is_clear(monkeypatch, va):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    mod = importlib.reload(va)
    assert "pip install 'evalkit[vllm]'" in mod.INSTALL_HINT
    with pytest.raises(ImportError, match=r"pip install 'evalkit\[vllm\]'"):
        mod.VLLMAudio(mod.VLLMConfig(model="Qwen/Qwen2-Audio-7B-Instruct"))
    # request building still works without vllm
    x = mod.build_vllm_input(req(), "qwen2_audio")
    assert x["multi_modal_data"]["audio"][0][1] == 16000


def test_config_typo_fails(va):
    with pytest.raises(Exception, match="tensor_paralel_size"):
        va.VLLMConfig(model="m", tensor_paralel_size=2)


# ---- families ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,mt,family", [
    ("Qwen/Qwen2-Audio-7B-Instruct", None, "qwen2_audio"),
    ("/ckpt/qwen2_audio_ft", None, "qwen2_audio"),
    ("Qwen/Qwen2.5-Omni-7B", None, "qwen2_5_omni"),
    ("fixie-ai/ultravox-v0_5-llama-3_2-1b", None, "ultravox"),
    ("nvidia/audio-flamingo-3-hf", None, "audio_flamingo_3"),
    ("/ckpt/af3", "audioflamingo3", "audio_flamingo_3"),
    ("mispeech/midashenglm-7b", None, "midashenglm"),
    ("/ckpt/my-model", "qwen2_audio", "qwen2_audio"),
    ("/ckpt/my-model", "llama", "generic"),
])
def test_detect_family(va, name, mt, family):
    assert va.detect_family(name, mt) == family


def test_qwen2_audio_prompt_and_audio(va):
    x = va.build_vllm_input(req(), "qwen2_audio")
    assert x["prompt"] == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                           "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
                           "Which sound? (A) dog (B) cat<|im_end|>\n<|im_start|>assistant\n")
    (a, sr), = x["multi_modal_data"]["audio"]
    assert sr == 16000 and a.dtype == np.float32 and a.shape == (8000,)  # 0.5 s at 8 kHz -> 16 kHz
    assert np.abs(a).max() > 0.05  # the actual samples, not silence


def test_qwen2_audio_two_clips_numbered(va):
    x = va.build_vllm_input(req(n_audio=2), "qwen2_audio", max_audio=2)
    assert "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nAudio 2: <|audio_bos|>" in x["prompt"]
    amps = [float(np.abs(a).max()) for a, _ in x["multi_modal_data"]["audio"]]
    assert amps[0] < amps[1]  # in placeholder order


def test_qwen2_5_omni_system_prompt(va):
    x = va.build_vllm_input(req(), "qwen2_5_omni")
    assert x["prompt"].startswith(f"<|im_start|>system\n{va.QWEN2_5_OMNI_SYSTEM}<|im_end|>\n")
    assert "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>\nWhich sound?" in x["prompt"]
    y = va.build_vllm_input(req(system="Answer tersely."), "qwen2_5_omni")
    assert y["prompt"].startswith("<|im_start|>system\nAnswer tersely.<|im_end|>\n")
    assert va.QWEN2_5_OMNI_SYSTEM not in y["prompt"]


def test_audio_flamingo_3_and_midashenglm_prompts(va):
    """As vLLM's audio example formats them (examples/generate/multimodal/audio_language_offline.py)."""
    x = va.build_vllm_input(req(), "audio_flamingo_3")
    assert x["prompt"] == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                           "<|im_start|>user\n<sound>Which sound? (A) dog (B) cat<|im_end|>\n<|im_start|>assistant\n")
    assert len(x["multi_modal_data"]["audio"]) == 1
    y = va.build_vllm_input(req(), "midashenglm")
    assert y["prompt"] == ("<|im_start|>system\nYou are a helpful language and speech assistant.<|im_end|>\n"
                           "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>Which sound? (A) dog (B) cat"
                           "<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture
def tekken_dir(tmp_path):
    """A local "Voxtral" snapshot folder holding only a tiny tekken.json (test_hf_audio_presets' tokenizer)."""
    pytest.importorskip("mistral_common")
    pytest.importorskip("soxr")
    from test_hf_audio_presets import _tiny_tekken

    d = tmp_path / "voxtral-tiny"
    d.mkdir()
    (d / "tekken.json").write_text(json.dumps(_tiny_tekken()))
    return d


def test_voxtral_prompt_token_ids_from_mistral_common(va, tekken_dir):
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    tok = MistralTokenizer.from_file(str(tekken_dir / "tekken.json"))
    x = va.build_vllm_input(req(n_audio=2), "voxtral", mistral_tokenizer=tok, max_audio=2)
    assert "prompt" not in x
    ids = x["prompt_token_ids"]
    assert ids.count(25) == 2 and ids.count(24) > 2  # [BEGIN_AUDIO] then an [AUDIO] run, per clip
    assert ids.index(25) < ids.index(24)
    text_ids = tok.instruct_tokenizer.tokenizer.encode("Which sound? (A) dog (B) cat", bos=False, eos=False)
    tail = ids[len(ids) - len(text_ids) - 1: -1]  # the question closes the user turn ([/INST] last)
    assert tail == text_ids
    (a0, sr0), (a1, sr1) = x["multi_modal_data"]["audio"]
    assert sr0 == sr1 == 16000 and float(np.abs(a0).max()) < float(np.abs(a1).max())  # in order
    y = va.build_vllm_input(req(n_audio=0), "voxtral", mistral_tokenizer=tok)
    assert "multi_modal_data" not in y and 24 not in y["prompt_token_ids"]
    with pytest.raises(va.VLLMRequestError, match="tekken"):
        va.build_vllm_input(req(), "voxtral")
    kw = va.engine_kwargs(va.VLLMConfig(model=str(tekken_dir), engine_args={"load_format": "auto"}))
    assert (kw["tokenizer_mode"], kw["config_format"], kw["load_format"]) == ("mistral", "mistral", "auto")


def test_voxtral_end_to_end_on_fake_vllm(fake_vllm, va, tekken_dir):
    m = va.VLLMAudio(va.VLLMConfig(model=str(tekken_dir)))  # family from the folder name
    out = m.generate([req("a"), req("b", n_audio=0)])
    assert m.family == "voxtral" and all(r.error is None for r in out)
    # the audio vLLM gets is mistral-common's encoding of the clip: 16 kHz, padded to its 30 s chunk
    assert out[0].text.startswith("audio=[480000@16000:0.10]") and out[1].text.startswith("audio=[]")
    assert sys.modules["vllm"].LLM.instances[-1].kw["tokenizer_mode"] == "mistral"
    bad = va.VLLMAudio(va.VLLMConfig(model=str(tekken_dir.parent / "voxtral-missing")))
    r, = bad.generate([req("c")])
    assert r.error and "mistral-common tokenizer" in r.error


def test_ultravox_uses_chat_template(va):
    seen = []

    def template(msgs):
        seen.append(msgs)
        return "T:" + msgs[-1]["content"]

    x = va.build_vllm_input(req(), "ultravox", chat_template=template)
    assert seen[0] == [{"role": "user", "content": "<|audio|>\nWhich sound? (A) dog (B) cat"}]
    assert x["prompt"] == "T:<|audio|>\nWhich sound? (A) dog (B) cat"
    with pytest.raises(va.VLLMRequestError, match="chat template"):
        va.build_vllm_input(req(), "ultravox")


def test_generic_needs_placeholder_for_audio(va):
    t = lambda msgs: "|".join(m["content"] for m in msgs)
    with pytest.raises(va.VLLMRequestError, match="audio_placeholder"):
        va.build_vllm_input(req(), "generic", chat_template=t)
    x = va.build_vllm_input(req(), "generic", chat_template=t, audio_placeholder="<audio>")
    assert x["prompt"] == "<audio>\nWhich sound? (A) dog (B) cat"
    y = va.build_vllm_input(req(n_audio=0), "generic", chat_template=t)  # text only: no mm data
    assert y == {"prompt": "Which sound? (A) dog (B) cat"}


def test_too_many_audios_is_request_error(va):
    with pytest.raises(va.VLLMRequestError, match="limit_mm_per_prompt"):
        va.build_vllm_input(req(n_audio=2), "qwen2_audio", max_audio=1)


def test_sampling_and_engine_kwargs(va):
    g = va.sampling_kwargs(GenerationConfig(max_new_tokens=7, temperature=0.0, seed=3))
    assert g == {"max_tokens": 7, "n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "seed": 3}
    s = va.sampling_kwargs(GenerationConfig(temperature=0.7, top_p=0.9, seed=None))
    assert s["temperature"] == 0.7 and s["top_p"] == 0.9 and "seed" not in s
    c = va.VLLMConfig(model="m", tensor_parallel_size=4, distributed_executor_backend="ray",
                      max_model_len=4096, engine_args={"max_num_seqs": 32})
    kw = va.engine_kwargs(c)
    assert kw["tensor_parallel_size"] == 4 and kw["distributed_executor_backend"] == "ray"
    assert kw["max_model_len"] == 4096 and kw["max_num_seqs"] == 32 and kw["trust_remote_code"] is False
    assert kw["limit_mm_per_prompt"] == {"audio": 1} and "revision" not in kw
    # Qwen2.5-Omni also takes images and videos: audio-only runs leave them at 0 unless asked otherwise
    omni = va.engine_kwargs(va.VLLMConfig(model="Qwen/Qwen2.5-Omni-7B"))
    assert omni["limit_mm_per_prompt"] == {"audio": 1, "image": 0, "video": 0}
    mine = va.engine_kwargs(va.VLLMConfig(model="/local/omni", family="qwen2_5_omni",
                                          limit_mm_per_prompt={"audio": 2, "image": 1}))
    assert mine["limit_mm_per_prompt"] == {"audio": 2, "image": 1, "video": 0}


# ---- execution against the fake vllm ----------------------------------------------------------
def test_generate_whole_batch_audio_reaches_engine(fake_vllm, va):
    m = va.VLLMAudio(va.VLLMConfig(model="Qwen/Qwen2-Audio-7B-Instruct"))
    assert m.preferred_batch_size >= 100000
    reqs = [req(f"s{i}") for i in range(5)] + [req("two", n_audio=2)]
    out = m.generate(reqs)
    llm = sys.modules["vllm"].LLM.instances[-1]
    assert llm.calls == [5]  # one engine call for the batch; the 2-audio request refused up front
    assert [r.key for r in out] == [r.key for r in reqs]
    for r in out[:5]:
        assert r.error is None and r.text.startswith("audio=[8000@16000:0.10]") and "temp=0.0" in r.text
        assert r.extra["completion_tokens"] == 3
    assert "limit_mm_per_prompt" in out[5].error
    assert m.info()["family"] == "qwen2_audio"
    m.close()


def test_failing_prompt_isolated(fake_vllm, va):
    m = va.VLLMAudio(va.VLLMConfig(model="Qwen/Qwen2-Audio-7B-Instruct"))
    out = m.generate([req("a"), req("b", text="BOOM"), req("c")])
    assert out[0].error is None and out[2].error is None
    assert "max_model_len" in out[1].error


def test_invalid_sampling_params_isolated(fake_vllm, va):
    m = va.VLLMAudio(va.VLLMConfig(model="Qwen/Qwen2-Audio-7B-Instruct"))
    out = m.generate([req("a"), req("hot", gen=GenerationConfig(temperature=3.0)), req("c")])
    assert out[0].error is None and out[2].error is None
    assert "temperature" in out[1].error
    assert sys.modules["vllm"].LLM.instances[-1].calls == [2]  # the others still go in one batch


def test_model_type_picks_family(fake_vllm, va, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODEL_TYPE", "ultravox")
    m = va.VLLMAudio(va.VLLMConfig(model="/ckpt/custom"))
    out = m.generate([req()])
    assert "prompt=<user><|audio|>\nWhich sound?" in out[0].text


def test_data_parallel_processes(fake_vllm, va, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    m = va.VLLMAudio(va.VLLMConfig(model="Qwen/Qwen2-Audio-7B-Instruct", data_parallel_size=2,
                                   tensor_parallel_size=2))
    try:
        out = m.generate([req(f"s{i}") for i in range(6)])
    finally:
        m.close()
    assert all(r.error is None for r in out)
    devs = [r.text.split("dev=")[1].split()[0] for r in out]
    assert devs == ["0,1", "2,3"] * 3  # round-robin over two engines with two GPUs each
    assert len({r.text.split("pid=")[1].split()[0] for r in out}) == 2
