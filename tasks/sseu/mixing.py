"""Speech + background mixing at a controlled SNR (pure numpy, vectorized).

Power definition (used by both `mix_at_snr` and `measure_snr`)
---------------------------------------------------------------
SNR = 10*log10(P_speech / P_background), where both powers are measured over the
*active region of the speech*:

1. The speech component is cut into non-overlapping frames of `frame_s` (20 ms).
   A frame is active when its energy (mean square) lies within `vad_db` (40 dB) of
   the loudest frame's energy. The trailing partial frame belongs to the region
   when its own energy passes the same test.
2. P_speech = mean of speech**2 over the samples of the active frames.
3. P_background = mean of background**2 over the SAME samples (the background as
   it sits in the mixture window, i.e. after looping / cutting).

So the SNR describes what a listener hears while someone is talking; silences
inside or around the utterance do not dilute the speech power. The region comes
from the speech alone, so it is identical for every SNR of one (speech,
background) pair. When the background is silent over the region (all zeros) a
finite SNR is undefined and `mix_at_snr` refuses; silent speech likewise (the
region is empty).

Levels
------
The speech is scaled to an active level of `speech_level_dbfs` (-25 dBFS by
default: P_speech = 10**(-25/10)); the background is scaled so that the SNR is
exactly `snr_db`. For snr_db = +inf the background gain is 0 (speech only). For
snr_db = -inf the speech gain is 0 and the background keeps the level it would
have at 0 dB SNR, so background-only clips are as loud as the 0 dB mixtures.

Clipping
--------
After the two scaled components are summed, ONE common gain
`common = min(1, peak_limit / max|mixture|)` is applied to the mixture (that is,
to both components), so the SNR is unchanged; it is returned in `info["gains"]`.

Backgrounds of the wrong length
-------------------------------
`fit_background(bg, n, ...)`: a background longer than the speech is cut at an
offset (chosen by the caller from a seeded generator: `offset_frac` in [0, 1)
maps onto the valid start positions); a background shorter than the speech is
looped. The loop unit is the clip with its last `crossfade` samples (50 ms by
default, at most a quarter of the clip) cross-faded into its first ones with an
equal-power (sin/cos) fade, so that tiling the unit has no click at the seam;
the loop period is len(bg) - crossfade. The loop starts at `offset_frac` of the
period. Event annotations are mapped through the same cut/loop by
`fit_events`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

FRAME_S = 0.02
VAD_DB = 40.0
SPEECH_LEVEL_DBFS = -25.0
PEAK_LIMIT = 0.98
CROSSFADE_S = 0.05


class MixingError(ValueError):
    pass


def _frame_energies(x: np.ndarray, flen: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum of squares, sample count) per frame; the trailing partial frame is its own frame."""
    n = x.shape[0]
    nfull = n // flen
    sq = np.square(x, dtype=np.float64)
    sums = sq[: nfull * flen].reshape(nfull, flen).sum(axis=1)
    counts = np.full(nfull, flen, dtype=np.int64)
    if n - nfull * flen:
        sums = np.append(sums, sq[nfull * flen:].sum())
        counts = np.append(counts, n - nfull * flen)
    return sums, counts


def _active_frames(sums: np.ndarray, counts: np.ndarray, vad_db: float) -> np.ndarray:
    if sums.size == 0:
        return np.zeros(0, dtype=bool)
    e = sums / counts
    emax = float(e.max())
    if emax <= 0.0:
        return np.zeros(e.shape, dtype=bool)
    return e >= emax * 10.0 ** (-vad_db / 10.0)


def active_mask(speech: np.ndarray, sample_rate: int, frame_s: float = FRAME_S,
                vad_db: float = VAD_DB) -> np.ndarray:
    """Boolean per-sample mask of the speech's active region (frame-energy VAD,
    frames within `vad_db` of the loudest frame). All False for silent input."""
    x = np.asarray(speech)
    flen = max(1, int(round(frame_s * sample_rate)))
    sums, counts = _frame_energies(x, flen)
    return np.repeat(_active_frames(sums, counts, vad_db), counts)


def powers(speech: np.ndarray, background: np.ndarray, sample_rate: int,
           frame_s: float = FRAME_S, vad_db: float = VAD_DB) -> tuple[float, float]:
    """(P_speech, P_background) under the module's power definition."""
    speech = np.asarray(speech)
    background = np.asarray(background)
    if speech.shape != background.shape:
        raise MixingError(f"speech ({speech.shape}) and background ({background.shape}) differ in length")
    flen = max(1, int(round(frame_s * sample_rate)))
    s_sums, counts = _frame_energies(speech, flen)
    b_sums, _ = _frame_energies(background, flen)
    act = _active_frames(s_sums, counts, vad_db)
    if act.any():
        n_act = float(counts[act].sum())
        return float(s_sums[act].sum() / n_act), float(b_sums[act].sum() / n_act)
    n = float(max(1, counts.sum()))
    return 0.0, float(b_sums.sum() / n)


def measure_snr(speech_component: np.ndarray, background_component: np.ndarray,
                sample_rate: int, frame_s: float = FRAME_S, vad_db: float = VAD_DB) -> float:
    """SNR in dB of two mixture components under the module's power definition.
    +inf when the background is silent over the region, -inf when the speech is silent."""
    ps, pb = powers(speech_component, background_component, sample_rate, frame_s, vad_db)
    if ps == 0.0 and pb == 0.0:
        return float("nan")
    if pb == 0.0:
        return float("inf")
    if ps == 0.0:
        return float("-inf")
    return 10.0 * math.log10(ps / pb)


def _crossfaded_unit(bg: np.ndarray, xf: int) -> np.ndarray:
    """Loop unit of length len(bg) - xf whose tiling is seamless."""
    if xf <= 0:
        return bg
    period = bg.shape[0] - xf
    unit = bg[:period].copy()
    t = (np.arange(xf, dtype=np.float64) + 0.5) / xf
    fade_in = np.sin(0.5 * np.pi * t)
    fade_out = np.cos(0.5 * np.pi * t)
    unit[:xf] = bg[:xf] * fade_in + bg[period:] * fade_out
    return unit


def loop_params(n_bg: int, sample_rate: int, crossfade_s: float = CROSSFADE_S) -> tuple[int, int]:
    """(crossfade samples, loop period) used when a clip of n_bg samples is looped."""
    xf = min(int(round(crossfade_s * sample_rate)), n_bg // 4)
    return xf, n_bg - xf


def fit_background(bg: np.ndarray, n: int, sample_rate: int, offset_frac: float = 0.0,
                   crossfade_s: float = CROSSFADE_S) -> tuple[np.ndarray, dict[str, Any]]:
    """Cut or loop `bg` to exactly n samples. Returns (segment, info) where info
    records how (`mode` "cut"/"loop"/"exact", `offset` in samples, loop `period`)."""
    bg = np.asarray(bg, dtype=np.float64)
    m = bg.shape[0]
    if m == 0:
        raise MixingError("background is empty")
    if not 0.0 <= offset_frac < 1.0:
        raise MixingError(f"offset_frac must be in [0, 1), got {offset_frac}")
    if m == n:
        return bg.copy(), {"mode": "exact", "offset": 0, "period": None, "crossfade": 0}
    if m > n:
        off = int(offset_frac * (m - n + 1))
        return bg[off: off + n].copy(), {"mode": "cut", "offset": off, "period": None, "crossfade": 0}
    xf, period = loop_params(m, sample_rate, crossfade_s)
    unit = _crossfaded_unit(bg, xf)
    off = int(offset_frac * period)
    reps = -(-(off + n) // period)
    seg = np.tile(unit, reps)[off: off + n]
    return seg, {"mode": "loop", "offset": off, "period": period, "crossfade": xf}


def fit_events(events: Iterable[dict[str, Any]], fit: dict[str, Any], n: int, n_bg: int,
               sample_rate: int) -> list[dict[str, Any]]:
    """Map background events ({label, onset, offset} in seconds of the source clip)
    into the fitted window of n samples; overlapping same-label pieces are merged."""
    sr = float(sample_rate)
    win = (fit["offset"], fit["offset"] + n)  # in samples of the (looped) source
    pieces: dict[str, list[tuple[float, float]]] = {}
    for ev in events:
        a = max(0.0, float(ev["onset"])) * sr
        b = min(float(ev["offset"]) * sr, float(n_bg))
        if b <= a:
            continue
        spans = [(a, b)]
        if fit["mode"] == "loop":
            period = fit["period"]
            # the tail [period, n_bg) of the source is folded into [0, crossfade)
            spans = []
            if a < period:
                spans.append((a, min(b, period)))
            if b > period:
                spans.append((max(a, period) - period, b - period))
            reps = -(-(win[1]) // period) + 1
            spans = [(s + k * period, e + k * period) for k in range(reps) for s, e in spans]
        for s, e in spans:
            s2, e2 = max(s, win[0]), min(e, win[1])
            if e2 > s2:
                pieces.setdefault(ev["label"], []).append(((s2 - win[0]) / sr, (e2 - win[0]) / sr))
    out = []
    for label, spans in pieces.items():
        spans.sort()
        merged = [list(spans[0])]
        for s, e in spans[1:]:
            if s <= merged[-1][1] + 1e-9:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        out.extend({"label": label, "onset": round(s, 3), "offset": round(e, 3)} for s, e in merged)
    out.sort(key=lambda d: (d["onset"], d["offset"], d["label"]))
    return out


def mix_at_snr(speech: np.ndarray, background: np.ndarray, snr_db: float, sample_rate: int = 44100,
               *, speech_level_dbfs: float | None = SPEECH_LEVEL_DBFS, peak_limit: float = PEAK_LIMIT,
               frame_s: float = FRAME_S, vad_db: float = VAD_DB) -> tuple[np.ndarray, dict[str, Any]]:
    """Mix `speech` and `background` (same length; see `fit_background`) at `snr_db`.

    snr_db may be float('inf') (speech only) or float('-inf') (background only).
    `speech_level_dbfs=None` keeps the speech at its own level. Returns
    (mixture float32, info) with info = {"gains": {"speech", "background",
    "common"}, "speech_component", "background_component" (float64, after the
    common gain), "measured_snr_db", "peak"}. See the module docstring for the
    power definition and the clipping rule.
    """
    s = np.asarray(speech, dtype=np.float64)
    b = np.asarray(background, dtype=np.float64)
    if s.ndim != 1 or b.ndim != 1:
        raise MixingError("mix_at_snr takes mono 1-D arrays")
    if s.shape != b.shape:
        raise MixingError(f"speech ({s.shape[0]} samples) and background ({b.shape[0]} samples) differ in length; "
                          "fit the background first")
    if s.size == 0:
        raise MixingError("empty input")
    if not (np.isfinite(s).all() and np.isfinite(b).all()):
        raise MixingError("input contains NaN or infinite samples")
    snr_db = float(snr_db)
    if math.isnan(snr_db):
        raise MixingError("snr_db is NaN")
    ps, pb = powers(s, b, sample_rate, frame_s, vad_db)
    if ps == 0.0 and snr_db != float("-inf"):
        raise MixingError("speech is silent: cannot set an SNR")
    if ps == 0.0:
        # background only with silent speech: no reference level; the background keeps its own level
        # (gain 1: its power over the region is the 0-dB target). Was target_ps = 0, a silent mixture.
        g_ref, target_ps = 0.0, pb
    else:
        g_ref = 1.0 if speech_level_dbfs is None else math.sqrt(10.0 ** (speech_level_dbfs / 10.0) / ps)
        target_ps = ps * g_ref * g_ref
    if snr_db == float("inf"):
        gs, gb = g_ref, 0.0
    else:
        if pb == 0.0:
            raise MixingError("background is silent: cannot set a finite SNR")
        ref_snr = 0.0 if snr_db == float("-inf") else snr_db
        gb = math.sqrt(target_ps / (pb * 10.0 ** (ref_snr / 10.0)))
        gs = 0.0 if snr_db == float("-inf") else g_ref
    sc = s * gs
    bc = b * gb
    mix = sc + bc
    peak = float(np.max(np.abs(mix))) if mix.size else 0.0
    common = 1.0 if peak <= peak_limit or peak == 0.0 else peak_limit / peak
    if common != 1.0:
        mix *= common
        sc *= common
        bc *= common
    if math.isinf(snr_db):
        measured = None
    else:
        measured = measure_snr(sc, bc, sample_rate, frame_s, vad_db)
    info = {
        "gains": {"speech": gs, "background": gb, "common": common},
        "speech_component": sc,
        "background_component": bc,
        "measured_snr_db": measured,
        "peak": float(np.max(np.abs(mix))),
    }
    return mix.astype(np.float32), info
