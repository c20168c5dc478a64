"""Mixture building speed in times-real-time on one core (standalone: `python bench/bench_mixing.py`).

Sources as the real builder meets them: 30 s of speech at 48 kHz (VCTK's rate; resampled to
44.1 kHz with soxr HQ through evalkit.audio.resample) and 10-s stereo backgrounds at 44.1 kHz
(downmixed, cut at an offset or looped). Each pair is mixed at all 7 SNR conditions.

Reported: audio-seconds produced / wall-seconds, for
  1. in memory: downmix + resample + fit background + events + mix at 7 SNRs (+ SNR check);
  2. the same plus encoding every clip as 16-bit FLAC (in memory, no disk).
Target: >= 200x for (1).
"""
from __future__ import annotations

import io
import math
import os
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402 (after the thread settings above)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from evalkit.audio import resample  # noqa: E402
from evalkit.tasks.sseu import mixing  # noqa: E402

SNRS = [math.inf, 10.0, 5.0, 0.0, -5.0, -10.0, -math.inf]
SR = 44100


def make_sources(seed: int = 0, n_utts: int = 10, utt_s: float = 3.0):
    rng = np.random.default_rng(seed)
    speech = []
    for k in range(n_utts):
        n = int(utt_s * 48000) + int(rng.integers(0, 4800))
        t = np.arange(n) / 48000
        syll = np.maximum(0, np.sin(2 * np.pi * 3.5 * t + k)) ** 2
        speech.append((0.3 * syll * (np.sin(2 * np.pi * 140 * t) + 0.3 * rng.standard_normal(n))).astype(np.float32))
    bgs = [(0.1 * rng.standard_normal((int(10 * SR), 2))).astype(np.float32) for _ in range(n_utts)]
    # every other background is short (2 s) so that looping is exercised too
    bgs = [b if i % 2 == 0 else b[: 2 * SR] for i, b in enumerate(bgs)]
    return speech, bgs


def build_all(speech, bgs, encode: bool) -> float:
    import soundfile as sf

    produced = 0.0
    events = [{"label": "car", "onset": 0.5, "offset": 1.7}, {"label": "footsteps", "onset": 1.2, "offset": 9.0}]
    for k, (s48, bg2) in enumerate(zip(speech, bgs)):
        s = np.asarray(resample(s48, 48000, SR), dtype=np.float64)
        bg = bg2.mean(axis=1, dtype=np.float64)
        seg, fit = mixing.fit_background(bg, s.shape[0], SR, offset_frac=(k * 0.37) % 1.0)
        mixing.fit_events(events, fit, s.shape[0], bg.shape[0], SR)
        for snr in SNRS:
            mix, info = mixing.mix_at_snr(s, seg, snr, SR)
            if encode:
                buf = io.BytesIO()
                sf.write(buf, mix, SR, format="FLAC", subtype="PCM_16")
            produced += mix.shape[0] / SR
    return produced


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    speech, bgs = make_sources()
    src_s = sum(x.shape[0] for x in speech) / 48000
    build_all(speech[:2], bgs[:2], encode=True)  # warm up (imports, soxr plans)
    for encode in (False, True):
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            produced = build_all(speech, bgs, encode)
            best = min(best, time.perf_counter() - t0)
        what = "mix + FLAC encode" if encode else "mix (in memory)  "
        print(f"{what}: {src_s:.1f} s of 48 kHz speech x 7 SNRs = {produced:.1f} audio-s in {best:.3f} s "
              f"-> {produced / best:.0f}x real time (1 core)")


if __name__ == "__main__":
    main()
