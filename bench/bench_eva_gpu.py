"""EvA at real size with random weights on one GPU: fusion cost vs backbone prefill, generation
throughput at batch 1, 8, 32 on 10 s clips, peak memory.

Architecture: Whisper-large-v3 encoder (bf16), CED-Base (fp32), ced_processor (fp32 alpha), vq_adaptor
and a 7B Qwen2-shaped LLM (hidden 3584, 28 layers, 28 heads, 4 KV heads, vocab 168448) in bf16, SDPA.
Weights are random: the figures are costs, not quality. Exits with a message without CUDA.
Run: python bench/bench_eva_gpu.py [--batches 1 8 32] [--new-tokens 32]
`--tiny` runs the same code path with tiny widths on whatever device there is (CPU here): a check that the
script works before GPU time is spent on it, not a measurement (tests/test_eva_model.py runs it).
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--layers", type=int, default=28, help="LLM depth (28 = Kimi-Audio-7B)")
    ap.add_argument("--tiny", action="store_true", help="tiny widths, any device: checks the script, measures nothing")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("bench_eva_gpu: torch is not installed")
        return 1
    if not torch.cuda.is_available() and not args.tiny:
        print("bench_eva_gpu: no CUDA device; this benchmark needs a GPU (about 20 GB for the bf16 7B LLM)")
        return 0
    from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from evalkit.models.eva.ced import CEDConfig, CEDEncoder
    from evalkit.models.eva.fusion import CEDProcessor
    from evalkit.models.eva.kimi import (
        KimiEvA,
        KimiPrompt,
        KimiTokens,
        VQAdaptor,
        WhisperFrontEnd,
    )

    cuda = torch.cuda.is_available()
    dev, bf = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    torch.manual_seed(0)
    # real sizes (Whisper-large-v3, CED-Base, Kimi-Audio-7B's LLM) or, with --tiny, the same shapes scaled down
    w_dim, w_layers, w_heads = (64, 2, 4) if args.tiny else (1280, 32, 20)
    hidden, inter, heads, kv, layers = (64, 128, 4, 2, 2) if args.tiny else (3584, 18944, 28, 4, args.layers)
    ced_cfg = CEDConfig(embed_dim=32, depth=3, num_heads=4, layers=(0, 1, 2)) if args.tiny else CEDConfig()
    wcfg = WhisperConfig(d_model=w_dim, encoder_layers=w_layers, encoder_attention_heads=w_heads,
                         encoder_ffn_dim=4 * w_dim, num_mel_bins=128, max_source_positions=1500)
    whisper = WhisperFrontEnd(WhisperEncoder(wcfg).to(dev, bf).eval())
    ced = CEDEncoder(ced_cfg).to(dev).eval()
    qcfg = Qwen2Config(vocab_size=168448, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=8192,
                       rms_norm_eps=1e-6, tie_word_embeddings=False)
    qcfg._attn_implementation = "sdpa"
    with torch.device(dev):
        llm = Qwen2ForCausalLM(qcfg).to(bf).eval()
    proc = CEDProcessor(hidden, input_dim=ced_cfg.embed_dim, n_heads=ced_cfg.num_heads,
                        d_ff=4 * ced_cfg.embed_dim).to(dev).eval()
    vq = VQAdaptor(4 * w_dim, hidden, 1e-6).to(dev, bf).eval()
    model = KimiEvA(llm, whisper, ced, proc, vq, KimiTokens()).eval()
    n = int(args.seconds * 16000)
    n_tok = (n - 1) // 1280 + 1

    def prompt() -> KimiPrompt:
        tk = model.tokens
        pr = KimiPrompt()
        pr.add(tk.user_msg_start, tk.text_blank)
        pr.add(tk.media_begin, tk.text_blank)
        for k in range(n_tok):
            pr.add(tk.semantic_offset + k % 16384, tk.text_blank, True)
        pr.add(tk.media_end, tk.text_blank)
        pr.add(tk.speech_ct, tk.text_blank)
        for k in range(30):  # a 30-token question
            pr.add(tk.text_blank, 1000 + k)
        pr.add(tk.msg_end, tk.text_blank)
        pr.add(tk.assistant_msg_start, tk.text_blank)
        pr.audio_slots.append(n_tok)
        return pr

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(fn, reps=3):
        with torch.no_grad():
            fn()
            sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                out = fn()
            sync()
        return (time.perf_counter() - t0) / reps, out

    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"device: {name}{' (--tiny: widths scaled down, not a measurement)' if args.tiny else ''}; "
          f"clip {args.seconds:.1f} s -> {n_tok} audio tokens; LLM layers {layers}")
    for B in args.batches:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        waves = [torch.randn(n, device=dev) * 0.1 for _ in range(B)]
        prompts = [prompt() for _ in range(B)]
        t_wh, _ = timed(lambda: model.whisper(waves))
        t_ced, _ = timed(lambda: model.ced(waves))
        clips = model.encode(waves)
        t_fuse, _ = timed(lambda: model.ced_tokens(clips, [n_tok] * B))
        t_embed, embeds = timed(lambda: model.embed(prompts, [[c] for c in clips]))
        x = torch.stack(embeds)
        # logits for the last position only, as generate's prefill computes them
        t_prefill, _ = timed(lambda: llm(inputs_embeds=x, use_cache=False, logits_to_keep=1))
        t_gen, ids = timed(lambda: model.generate_from_embeds(embeds, max_new_tokens=args.new_tokens,
                                                               temperature=1.0), reps=1)
        toks = sum(len(s) for s in ids)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        print(f"B={B:3d}  whisper {t_wh * 1e3:7.1f} ms  CED {t_ced * 1e3:7.1f} ms  "
              f"ced_processor+align {t_fuse * 1e3:6.1f} ms ({t_fuse / t_prefill:.1%} of prefill)  "
              f"embed {t_embed * 1e3:6.1f} ms  prefill {t_prefill * 1e3:7.1f} ms  "
              f"generate {toks / t_gen:7.1f} tok/s ({toks} tokens)  peak {peak:5.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
