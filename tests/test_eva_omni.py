"""EvA on the Qwen2.5-Omni backbone (models/eva/omni.py) with a tiny random thinker and a tiny CED.

The thinker and its processor come from tests/test_hf_audio_presets.py (`build_tiny_omni`, saved
like the real checkpoint and loaded with the stock thinker class; where torchvision cannot load, as
beside this project's CPU torch, the processor is built through that file's test-only patch, and where it
works the real video processor is used: with torch 2.14.1 + torchvision 0.29.1 these tests and the preset
tests pass unpatched); the CED encoder and ced_processor are the tiny ones of tests/test_eva_model.py.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from test_eva_model import tiny_ced, tiny_processor, wave  # noqa: E402
from test_hf_audio_presets import _omni_without_torchvision, build_tiny_omni  # noqa: E402

from evalkit.models.eva import EvA, EvAWeightsError  # noqa: E402
from evalkit.models.eva.align import align_to_tokens  # noqa: E402
from evalkit.models.eva.fusion import CEDProcessor, processor_state_dict  # noqa: E402
from evalkit.models.eva.omni import (  # noqa: E402
    OMNI_PREFIX,
    OmniEvA,
    load_omni_processor_weights,
    omni_processor_state_dict,
    omni_step,
    tower_output_lengths,
)
from evalkit.types import AudioRef, GenerationConfig, Request  # noqa: E402

torch.set_num_threads(1)
H = 32  # the tiny thinker's hidden size


@pytest.fixture(scope="module")
def omni_dir(tmp_path_factory):
    with _omni_without_torchvision():
        yield build_tiny_omni(tmp_path_factory.mktemp("omni_eva"))


def load_thinker(path):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def parts(omni_dir):
    from transformers import AutoProcessor

    with _omni_without_torchvision():
        proc = AutoProcessor.from_pretrained(str(omni_dir))
    model = OmniEvA(load_thinker(omni_dir), proc, tiny_ced(), tiny_processor(H)).eval()
    plain = load_thinker(omni_dir)  # the backbone alone: same weights, no hook
    return model, plain


@pytest.fixture
def model(parts):
    m = parts[0]
    m.ced_processor.enabled, m.ced_processor.gate_override = True, None
    m.ced_processor.audio_aggregator.zero_bands = ()
    return m


def ref(seconds: float, seed: int) -> AudioRef:
    return AudioRef(array=wave(seconds, seed), sample_rate=16000)


def req(key: str, audios: list[AudioRef], text: str = "What is it?", n: int = 5) -> Request:
    content = [{"type": "audio", "audio": a} for a in audios] + [{"type": "text", "text": text}]
    return Request(key=key, messages=[{"role": "user", "content": content}],
                   generation=GenerationConfig(max_new_tokens=n))


def prepared(m: OmniEvA, reqs: list[Request]):
    from evalkit.models.hf_common import to_conversation

    convs = [to_conversation(r, 16000) for r in reqs]
    inputs = m.encode_inputs([c for c, _ in convs], [a for _, a in convs])
    clips = m.encode([torch.from_numpy(a.load(16000)[0]) for r in reqs for a in r.audio()])
    return inputs, clips


def embeds_into_llm(m: OmniEvA, inputs, clips) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_embeds reaching the text model, logits) of one prompt forward."""
    seen = []
    lm = m.thinker.model.language_model
    h = lm.register_forward_pre_hook(lambda mod, a, kw: seen.append(kw["inputs_embeds"].detach().clone()),
                                     with_kwargs=True)
    try:
        logits = m.forward_logits(inputs, clips)
    finally:
        h.remove()
    return seen[0], logits


# ----------------------------------------------------------------------------- timeline
def test_omni_token_rate_and_alignment_step():
    # transformers' Qwen2.5-Omni audio encoder: 10 ms mel frames -> conv stride 2 -> pool 2 = 40 ms
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

    mel = torch.tensor([1, 3, 4, 100, 250, 1001, 3000])
    want = Qwen2_5OmniAudioEncoder._get_feat_extract_output_lengths(None, mel)[1]
    assert torch.equal(tower_output_lengths(mel), want)
    assert tower_output_lengths(torch.tensor([3000])).item() == 750  # 30 s -> 750 tokens (25 Hz)
    assert omni_step(3000, 750) == (4, 2) and omni_step(250, 62) == (4, 2)
    assert omni_step(3, 1) == (3, 1) and omni_step(0, 0) == (1, 0)


# ----------------------------------------------------------------------------- fusion
def test_shapes_and_evidence_only_at_audio_positions(model):
    r = req("a", [ref(2.5, 1)])
    inputs, clips = prepared(model, [r])
    e_on, logits_on = embeds_into_llm(model, inputs, clips)
    ids = inputs["input_ids"][0]
    is_audio = ids == model.audio_token_id
    t_mel = int(inputs["feature_attention_mask"].sum())
    n = int(tower_output_lengths(torch.tensor([t_mel])))
    assert int(is_audio.sum()) == n == 62 and t_mel == 250
    assert e_on.shape == (1, ids.shape[0], H) and logits_on.shape[:2] == (1, ids.shape[0])
    ev = model.last_evidence[0]
    assert ev.shape == (n, H) and ev.dtype == torch.float32
    # the added term is exactly the ced_processor output aligned with step 4 / centre 2 on T_mel
    c = clips[0]
    proc = model.ced_processor(*[h.reshape(1, -1, h.shape[-1]) for h in c.ced],
                               valid_lengths=torch.tensor([c.ced_valid]))[0]
    assert torch.allclose(ev, align_to_tokens(proc, n, t_mel=t_mel, step_mel=4, centre_mel=2), atol=1e-6)
    e_off, logits_off = embeds_into_llm(model, inputs, None)  # no CED: the thinker's own embeddings
    assert torch.equal(e_on[0, ~is_audio], e_off[0, ~is_audio])  # text positions untouched
    assert torch.allclose(e_on[0, is_audio] - e_off[0, is_audio], ev, atol=1e-5)
    assert float(ev.abs().min(dim=-1).values.max()) > 0 and not torch.allclose(logits_on, logits_off)


def test_bf16_thinker_with_fp32_evidence(omni_dir, parts, model):
    """The CUDA precision setting on the CPU: thinker in bf16, CED and ced_processor in fp32; the evidence is
    added in the embedding dtype and the result stays within bf16 rounding of the fp32 model."""
    r = req("a", [ref(2.5, 1)], n=3)
    inputs, clips = prepared(model, [r])
    e32, _ = embeds_into_llm(model, inputs, clips)
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(str(omni_dir), dtype=torch.bfloat16).eval()
    m16 = OmniEvA(thinker, model.processor, model.ced, model.ced_processor)
    try:
        e16, logits = embeds_into_llm(m16, inputs, clips)
        assert e16.dtype == logits.dtype == torch.bfloat16
        assert m16.last_evidence[0].dtype == torch.float32 and model.ced_processor.alpha.dtype == torch.float32
        assert (e16.float() - e32).abs().max().item() < 0.02 * e32.abs().max().item()
        texts, _ = m16.generate([to_conv(r)[0]], [to_conv(r)[1]], [clips], r.generation)
        assert len(texts) == 1 and isinstance(texts[0], str)
    finally:
        m16.remove_hook()


def to_conv(r: Request):
    from evalkit.models.hf_common import to_conversation

    return to_conversation(r, 16000)


def test_off_and_gate_zero_equal_the_plain_thinker(parts, model):
    _, plain = parts
    r = req("a", [ref(1.7, 3)])
    inputs, clips = prepared(model, [r])
    kw = {k: v for k, v in inputs.items() if k != "num_audio_tokens"}
    with torch.no_grad():
        base = plain(**kw, use_audio_in_video=False).logits
    assert not torch.equal(model.forward_logits(inputs, clips), base)
    model.ced_processor.gate_override = 0.0
    assert torch.equal(model.forward_logits(inputs, clips), base)
    model.ced_processor.gate_override = None
    model.ced_processor.enabled = False
    off_clips = model.encode([torch.from_numpy(r.audio()[0].load(16000)[0])])
    assert off_clips[0].ced is None
    assert torch.equal(model.forward_logits(inputs, off_clips), base)
    # no pending clips (e.g. a plain call on the wrapped thinker): the hook does nothing
    model.ced_processor.enabled = True
    with torch.no_grad():
        assert torch.equal(model.thinker(**kw, use_audio_in_video=False).logits, base)


def test_bands_ablation_changes_the_evidence(model):
    inputs, clips = prepared(model, [req("a", [ref(1.5, 4)])])
    model.forward_logits(inputs, clips)
    full = model.last_evidence[0].clone()
    model.ced_processor.audio_aggregator.zero_bands = (0, 3)
    model.forward_logits(inputs, clips)
    assert not torch.allclose(model.last_evidence[0], full)


def test_two_audios_in_one_request_each_get_their_own(model):
    a, b = ref(1.0, 5), ref(2.0, 6)
    inputs, clips = prepared(model, [req("ab", [a, b])])
    embeds_into_llm(model, inputs, clips)
    ev = model.last_evidence
    lens = inputs["feature_attention_mask"].sum(-1)
    assert [x.shape[0] for x in ev] == tower_output_lengths(lens).tolist()
    inputs_b, clips_b = prepared(model, [req("b", [b])])
    model.forward_logits(inputs_b, clips_b)
    assert torch.allclose(ev[1], model.last_evidence[0], atol=1e-6)


def test_batch_equals_alone(model):
    reqs = [req("a", [ref(0.6, 7)], "Hi?"), req("b", [ref(2.2, 8)], "Which sound is the loudest one here?"),
            req("c", [ref(1.3, 9)], "Name it.")]
    inputs, clips = prepared(model, reqs)
    mask = inputs["attention_mask"]
    assert mask[:, 0].min() == 0 and mask[:, -1].min() == 1  # left padded
    lb = model.forward_logits(inputs, clips)[:, -1]
    for i, r in enumerate(reqs):
        ii, cc = prepared(model, [r])
        assert torch.allclose(lb[i], model.forward_logits(ii, cc)[0, -1], atol=1e-4, rtol=1e-4)
    eva = EvA.from_args({"backbone": "qwen2.5-omni", "checkpoint": "unused", "max_batch": 4}).attach(model, None, None)
    calls = []
    h = model.audio_tower.register_forward_hook(lambda *a: calls.append(1))
    try:
        model.last_evidence = []
        out = eva.generate(reqs + [Request(key="t", messages=[{"role": "user", "content": [
            {"type": "text", "text": "hello"}]}], generation=GenerationConfig(max_new_tokens=5))])
    finally:
        h.remove()
    # one tower call for the audio batch (prefill only; decode steps never re-add the evidence)
    assert calls == [1] and len(model.last_evidence) == 3 and all(e is not None for e in model.last_evidence)
    assert [o.key for o in out] == ["a", "b", "c", "t"] and all(o.error is None for o in out), out
    for r, o in zip(reqs, out):
        assert eva.generate([r])[0].text == o.text
    info = eva.info()
    assert info["backbone"] == "qwen2.5-omni" and info["generation"]["do_sample"] is False


# ----------------------------------------------------------------------------- weights + adapter
def test_fusion_weights_load_with_the_release_names(tmp_path):
    from safetensors.torch import save_file

    p = tiny_processor(H)
    sd = omni_processor_state_dict(p)
    assert all(k.startswith("ced_processor.") for k in sd) and OMNI_PREFIX == "ced_processor."
    assert {"ced_processor.alpha", "ced_processor.aggregator_projection.0.weight",
            "ced_processor.audio_aggregator.gate.3.weight",
            "ced_processor.audio_aggregator.aggregator_layer_1.crossattention.in_proj_weight"} <= set(sd)
    # an exported Qwen2.5-Omni-EvA folder: bf16, sharded, with the thinker's own weights beside them
    export = tmp_path / "export"
    export.mkdir()
    bf = {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}
    keys = sorted(bf)
    save_file({**{k: bf[k] for k in keys[:5]}, "model.layers.0.mlp.up_proj.weight": torch.zeros(2, 2)},
              str(export / "model-00001-of-00002.safetensors"))
    save_file({**{k: bf[k] for k in keys[5:]}, "audio_tower.proj.weight": torch.zeros(2, 2)},
              str(export / "model-00002-of-00002.safetensors"))
    torch.save({**sd, "lm_head.weight": torch.zeros(2, 2)}, tmp_path / "eva_omni.pt")
    for src, tol in ((export, 1e-2), (tmp_path / "eva_omni.pt", 0.0)):
        q = CEDProcessor(H, input_dim=32, n_heads=4, d_ff=64)
        load_omni_processor_weights(q, src)
        assert q.alpha.dtype == torch.float32 and all(v.dtype == torch.float32 for v in q.state_dict().values())
        for k, v in p.state_dict().items():
            assert torch.allclose(q.state_dict()[k], v, atol=tol, rtol=tol), k
    # Kimi's names are refused (that checkpoint was trained on the other backbone)
    save_file({k: v.contiguous() for k, v in processor_state_dict(p).items()}, str(tmp_path / "kimi.safetensors"))
    with pytest.raises(ValueError, match="backbone=kimi"):
        load_omni_processor_weights(CEDProcessor(H, input_dim=32, n_heads=4, d_ff=64), tmp_path / "kimi.safetensors")
    with pytest.raises(ValueError, match="missing"):
        load_omni_processor_weights(CEDProcessor(H, input_dim=32, n_heads=4, d_ff=64),
                                    {"ced_processor.alpha": torch.tensor(0.5)})


def test_adapter_requires_checkpoint_and_snapshots(tmp_path, model):
    with pytest.raises(EvAWeightsError, match="not published upstream"):
        EvA.from_args({"backbone": "qwen2.5-omni"})
    eva = EvA.from_args({"backbone": "qwen2.5-omni", "checkpoint": "x"})
    with pytest.raises(EvAWeightsError, match="-M omni_path=") as e:
        eva.generate([])
    assert "-M ced_path=" in str(e.value) and "Qwen2.5-Omni" in str(e.value)
    eva = EvA.from_args({"backbone": "qwen2.5-omni", "checkpoint": str(tmp_path / "none.safetensors"),
                         "omni_path": str(tmp_path), "ced_path": str(tmp_path)})
    with pytest.raises(EvAWeightsError, match="no such file"):
        eva.generate([])
    with pytest.raises(ValueError, match="backbone=kimi but got a qwen2.5-omni"):
        EvA.from_args({"checkpoint": "x"}).attach(model, None, None)


def _load_tiny_eva(tmp_path, args: dict):
    """EvA.from_args(args) + one generate through the real loading code, with the tiny CED and
    ced_processor shapes patched in (tiny CED weights saved as ced_path)."""
    from safetensors.torch import save_file

    import evalkit.models.eva.omni as omni_mod
    from evalkit.models.eva import ced as ced_mod

    ced = tiny_ced()
    save_file({k: v.contiguous() for k, v in ced.state_dict().items()}, str(tmp_path / "ced.safetensors"))
    real_load_ced = ced_mod.load_ced

    def tiny_load(path, device="cpu"):
        return real_load_ced(path, cfg=ced.cfg, device=device)

    mp = pytest.MonkeyPatch()
    mp.setattr(ced_mod, "load_ced", tiny_load)
    mp.setattr(omni_mod, "CEDProcessor", lambda hidden: CEDProcessor(hidden, input_dim=32, n_heads=4, d_ff=64))
    try:
        with _omni_without_torchvision():
            eva = EvA.from_args({"backbone": "qwen2.5-omni", "ced_path": str(tmp_path / "ced.safetensors"),
                                 "dtype": "float32", "device": "cpu", **args})
            out = eva.generate([req("a", [ref(1.0, 2)], n=3)])
    finally:
        mp.undo()
    assert out[0].error is None, out[0].error
    return eva


def test_load_omni_eva_from_snapshots(omni_dir, tmp_path):
    """The loading path: the tiny full Qwen2.5-Omni checkpoint (thinker only), CED and fusion files."""
    from safetensors.torch import save_file

    from evalkit.models.eva.ced import CEDEncoder

    p = tiny_processor(H)
    save_file({k: v.contiguous() for k, v in omni_processor_state_dict(p).items()}, str(tmp_path / "eva.safetensors"))
    eva = _load_tiny_eva(tmp_path, {"checkpoint": str(tmp_path / "eva.safetensors"), "omni_path": str(omni_dir),
                                    "gate": 0.5})
    m = eva._model
    assert isinstance(m, OmniEvA) and type(m.thinker).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    assert m.ced_processor.gate_override == 0.5 and isinstance(m.ced, CEDEncoder)
    assert all(torch.equal(m.ced_processor.state_dict()[k], v) for k, v in p.state_dict().items())
    ref_sd = torch.load(omni_dir / "thinker_reference.pt")
    assert all(torch.equal(m.thinker.state_dict()[k], v) for k, v in ref_sd.items())
    info = eva.info()
    assert info["backbone"] == "qwen2.5-omni" and info["generation"]["do_sample"] is False


# ----------------------------------------------------------------------------- the release's LoRA adapter
QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")


def write_release_adapter(out, n_layers: int, thinker, r: int = 4, alpha: int = 8, seed: int = 0,
                          extra: dict | None = None, processor_pt: dict | None = None):
    """A LoRA export shaped like the release's (peft save_pretrained from its thinker-level class: targets and
    keys named `model.layers.N.self_attn.*`; modules_to_save=["ced_processor"]). Returns {release name: (A, B)}."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from evalkit.models.eva.omni import text_layers_prefix

    layers = text_layers_prefix(thinker)
    mods = dict(thinker.named_modules())
    targets = [f"model.layers.{i}.self_attn.{n}" for i in range(n_layers) for n in QKVO]
    LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, modules_to_save=["ced_processor"],
               task_type="CAUSAL_LM").save_pretrained(str(out))
    g = torch.Generator().manual_seed(seed)
    ab, sd = {}, {}
    for t in targets:
        lin = mods[layers + t[len("model.layers."):]]
        a = torch.randn(r, lin.in_features, generator=g) * 0.2
        b = torch.randn(lin.out_features, r, generator=g) * 0.2
        ab[t] = (a, b)
        sd[f"base_model.model.{t}.lora_A.weight"], sd[f"base_model.model.{t}.lora_B.weight"] = a, b
    sd.update(extra or {})
    save_file(sd, str(out / "adapter_model.safetensors"))
    if processor_pt is not None:
        torch.save(processor_pt, out / "ced_processor.pt")
    return ab


def test_lora_adapter_merges_into_the_stock_thinker(omni_dir, tmp_path):
    from evalkit.models.eva.omni import apply_lora_adapter, text_layers_prefix

    plain = load_thinker(omni_dir)
    layers = text_layers_prefix(plain)
    assert layers in ("model.language_model.layers.", "model.layers.")  # transformers 5 / 4 layout
    n_layers = plain.config.text_config.num_hidden_layers
    ab = write_release_adapter(tmp_path, n_layers, plain)
    merged = apply_lora_adapter(load_thinker(omni_dir), tmp_path)
    assert type(merged).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    assert not any("lora_" in n for n, _ in merged.named_parameters())  # merged, no peft wrappers left
    before, after = plain.state_dict(), merged.state_dict()
    assert set(before) == set(after)
    scale = 8 / 4  # lora_alpha / r
    for t, (a, b) in ab.items():
        k = layers + t[len("model.layers."):] + ".weight"
        assert torch.allclose(after[k], before[k] + scale * b @ a, atol=1e-5), k
        assert not torch.allclose(after[k], before[k])
    touched = {layers + t[len("model.layers."):] + ".weight" for t in ab}
    for k, v in before.items():  # everything else (the audio tower's q/k/v/o included) is untouched
        if k not in touched:
            assert torch.equal(after[k], v), k


def test_lora_adapter_refuses_weights_for_missing_modules(omni_dir, tmp_path):
    from evalkit.models.eva.omni import apply_lora_adapter

    thinker = load_thinker(omni_dir)
    stray = {"base_model.model.model.layers.99.self_attn.q_proj.lora_A.weight": torch.zeros(4, H)}
    write_release_adapter(tmp_path, 1, thinker, extra=stray)
    with pytest.raises(ValueError, match="layers.99"):
        apply_lora_adapter(thinker, tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        apply_lora_adapter(thinker, tmp_path / "nowhere")


def test_adapter_processor_weights_take_the_trained_copy(tmp_path):
    from evalkit.models.eva.omni import adapter_processor_weights

    frozen, trained = tiny_processor(H).state_dict(), tiny_processor(H).state_dict()
    trained = {k: v + 1 for k, v in trained.items()}
    wrapped = {**{"original_module." + k: v for k, v in frozen.items()},
               **{"modules_to_save.default." + k: v for k, v in trained.items()}}
    (tmp_path / "a").mkdir()
    torch.save(wrapped, tmp_path / "a" / "ced_processor.pt")
    got = adapter_processor_weights(tmp_path / "a")
    assert set(got) == {OMNI_PREFIX + k for k in trained}
    assert all(torch.equal(got[OMNI_PREFIX + k], v) for k, v in trained.items())
    # without ced_processor.pt: peft's own modules_to_save copy in adapter_model.safetensors
    from safetensors.torch import save_file

    (tmp_path / "b").mkdir()
    save_file({**{"base_model.model.ced_processor." + k: v.contiguous() for k, v in trained.items()},
               "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, H)},
              str(tmp_path / "b" / "adapter_model.safetensors"))
    got = adapter_processor_weights(tmp_path / "b")
    assert set(got) == {OMNI_PREFIX + k for k in trained}
    (tmp_path / "c").mkdir()
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, H)},
              str(tmp_path / "c" / "adapter_model.safetensors"))
    assert adapter_processor_weights(tmp_path / "c") == {}


def test_load_omni_eva_with_the_release_lora_adapter(omni_dir, tmp_path):
    """-M adapter_path alone (no checkpoint): LoRA merged, ced_processor from the adapter's ced_processor.pt."""
    plain = load_thinker(omni_dir)
    trained = {k: v * 0.5 for k, v in tiny_processor(H).state_dict().items()}
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    ab = write_release_adapter(adapter, plain.config.text_config.num_hidden_layers, plain,
                               processor_pt={"modules_to_save.default." + k: v for k, v in trained.items()})
    eva = _load_tiny_eva(tmp_path, {"omni_path": str(omni_dir), "adapter_path": str(adapter)})
    m = eva._model
    assert all(torch.equal(m.ced_processor.state_dict()[k], v) for k, v in trained.items())
    from evalkit.models.eva.omni import text_layers_prefix

    t = next(iter(ab))
    k = text_layers_prefix(plain) + t[len("model.layers."):] + ".weight"
    assert torch.allclose(m.thinker.state_dict()[k], plain.state_dict()[k] + 2 * ab[t][1] @ ab[t][0], atol=1e-5)
    assert eva.info()["adapter_path"] == str(adapter)
    # an adapter without fusion weights and no checkpoint: a clear error at load
    bare = tmp_path / "bare"
    bare.mkdir()
    write_release_adapter(bare, 1, plain)
    with pytest.raises(ValueError, match="holds no ced_processor weights"):
        _load_tiny_eva(tmp_path, {"omni_path": str(omni_dir), "adapter_path": str(bare)})


def test_adapter_path_is_for_the_omni_backbone_only():
    with pytest.raises(EvAWeightsError, match="merges Kimi-Audio's LoRA into its export"):
        EvA.from_args({"checkpoint": "x", "adapter_path": "y"})
