import math

import numpy as np
import pytest

from evalkit.tasks.sseu import mixing

SR = 44100


def _speech(n=SR * 2, seed=0, lead_silence=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = 0.2 * np.maximum(0, np.sin(2 * np.pi * 3 * t)) * (np.sin(2 * np.pi * 150 * t) + 0.2 * rng.standard_normal(n))
    if lead_silence:
        x = np.concatenate([np.zeros(lead_silence), x])
    return x


def _noise(n, seed=1, scale=0.1):
    return scale * np.random.default_rng(seed).standard_normal(n)


@pytest.mark.parametrize("snr", [20.0, 10.0, 5.0, 0.0, -5.0, -10.0, 2.5])
def test_mix_hits_target_snr(snr):
    s = _speech()
    b = _noise(s.size)
    mix, info = mixing.mix_at_snr(s, b, snr, SR)
    sc, bc = info["speech_component"], info["background_component"]
    assert mixing.measure_snr(sc, bc, SR) == pytest.approx(snr, abs=1e-6)
    assert info["measured_snr_db"] == pytest.approx(snr, abs=1e-6)
    np.testing.assert_allclose(mix, (sc + bc).astype(np.float32), atol=1e-6)
    assert np.max(np.abs(mix)) <= 1.0


def test_infinite_snrs():
    s, b = _speech(), _noise(SR * 2)
    mix, info = mixing.mix_at_snr(s, b, math.inf, SR)
    assert not np.any(info["background_component"])
    assert info["gains"]["background"] == 0.0
    np.testing.assert_allclose(mix, info["speech_component"].astype(np.float32))
    mix0, info0 = mixing.mix_at_snr(s, b, 0.0, SR)
    mixn, infon = mixing.mix_at_snr(s, b, -math.inf, SR)
    assert not np.any(infon["speech_component"])
    assert infon["gains"]["speech"] == 0.0
    # background-only keeps the 0-dB background level
    assert infon["gains"]["background"] == pytest.approx(info0["gains"]["background"])
    assert info["measured_snr_db"] is None and infon["measured_snr_db"] is None


def test_common_gain_prevents_clipping_and_keeps_snr():
    s = _speech()
    b = _noise(s.size, scale=1.0)
    b[1000] = 50.0  # a spike forces clipping at -10 dB
    mix, info = mixing.mix_at_snr(s, b, -10.0, SR)
    assert info["gains"]["common"] < 1.0
    assert np.max(np.abs(mix)) <= mixing.PEAK_LIMIT + 1e-6
    assert mixing.measure_snr(info["speech_component"], info["background_component"], SR) == pytest.approx(-10.0, abs=1e-6)


def test_speech_level_and_vad_ignore_silence():
    s = _speech()
    padded = np.concatenate([np.zeros(SR), s, np.zeros(SR)])
    b1 = _noise(s.size)
    b2 = np.concatenate([_noise(SR, seed=5), b1, _noise(SR, seed=6)])
    _, i1 = mixing.mix_at_snr(s, b1, 0.0, SR)
    _, i2 = mixing.mix_at_snr(padded, b2, 0.0, SR)
    # the silences around the utterance change neither the speech gain nor the background gain
    assert i1["gains"]["speech"] == pytest.approx(i2["gains"]["speech"], rel=1e-3)
    assert i1["gains"]["background"] == pytest.approx(i2["gains"]["background"], rel=0.05)
    ps, _ = mixing.powers(i1["speech_component"], i1["background_component"], SR)
    assert 10 * math.log10(ps) == pytest.approx(mixing.SPEECH_LEVEL_DBFS, abs=1e-6)


def test_active_mask_threshold():
    x = np.concatenate([np.zeros(4410), np.ones(4410), 1e-3 * np.ones(4410)])  # -60 dB tail
    m = mixing.active_mask(x, SR)
    assert m.shape == x.shape
    assert not m[:4410].any() and m[4410:8820].all() and not m[8820:].any()


def test_background_cut_at_offset():
    bg = np.arange(1000, dtype=float)
    seg, fit = mixing.fit_background(bg, 100, SR, offset_frac=0.5)
    assert fit["mode"] == "cut" and seg.size == 100
    np.testing.assert_array_equal(seg, bg[fit["offset"]:fit["offset"] + 100])
    assert fit["offset"] == int(0.5 * 901)
    seg0, fit0 = mixing.fit_background(bg, 100, SR, offset_frac=0.0)
    assert fit0["offset"] == 0


def test_background_shorter_is_looped_with_crossfade():
    n_bg = SR // 2
    t = np.arange(n_bg) / SR
    bg = np.sin(2 * np.pi * 100.3 * t)  # not periodic in the clip: a plain tile would click
    n = SR * 2
    seg, fit = mixing.fit_background(bg, n, SR, offset_frac=0.25)
    assert fit["mode"] == "loop" and seg.size == n
    period, xf = fit["period"], fit["crossfade"]
    assert xf == int(round(mixing.CROSSFADE_S * SR)) and period == n_bg - xf
    np.testing.assert_allclose(seg[: n - period], seg[period:])  # periodic with the loop period
    # no click at the seam: the largest sample step stays near the sine's own
    assert np.max(np.abs(np.diff(seg))) < 3 * np.max(np.abs(np.diff(bg)))
    # outside the crossfade the source is copied verbatim
    j = (xf - fit["offset"]) % period
    np.testing.assert_allclose(seg[j: j + 1000], bg[xf: xf + 1000])


def test_fit_events_loop_and_cut():
    sr = 1000
    evs = [{"label": "Dog", "onset": 0.2, "offset": 0.4}]
    bg = np.ones(1000)
    seg, fit = mixing.fit_background(bg, 2500, sr, offset_frac=0.0, crossfade_s=0.0)
    out = mixing.fit_events(evs, fit, 2500, 1000, sr)
    assert [(e["onset"], e["offset"]) for e in out] == [(0.2, 0.4), (1.2, 1.4), (2.2, 2.4)]
    seg, fit = mixing.fit_background(np.ones(5000), 1000, sr, offset_frac=0.0)
    out = mixing.fit_events([{"label": "car", "onset": 0.5, "offset": 3.0}], fit, 1000, 5000, sr)
    assert out == [{"label": "car", "onset": 0.5, "offset": 1.0}]


def test_bad_inputs():
    s = _speech()
    with pytest.raises(mixing.MixingError, match="differ in length"):
        mixing.mix_at_snr(s, _noise(s.size - 1), 0.0, SR)
    bad = s.copy()
    bad[10] = np.nan
    with pytest.raises(mixing.MixingError, match="NaN"):
        mixing.mix_at_snr(bad, _noise(s.size), 0.0, SR)
    with pytest.raises(mixing.MixingError, match="background is silent"):
        mixing.mix_at_snr(s, np.zeros(s.size), 0.0, SR)
    with pytest.raises(mixing.MixingError, match="speech is silent"):
        mixing.mix_at_snr(np.zeros(s.size), _noise(s.size), 0.0, SR)
    with pytest.raises(mixing.MixingError, match="NaN"):
        mixing.mix_at_snr(s, _noise(s.size), float("nan"), SR)


# ---------------------------------------------------------------- the power definition, against a loop
# reference written from the module docstring (frames, trailing partial frame, the VAD threshold)


def _ref_frames(x, flen):
    """[(start, stop, energy)] of the non-overlapping frames, the trailing partial frame its own."""
    x = [float(v) for v in x]
    out = []
    for start in range(0, len(x), flen):
        part = x[start:start + flen]
        out.append((start, start + len(part), sum(v * v for v in part) / len(part)))
    return out


def _ref_mask(x, flen, vad_db):
    frames = _ref_frames(x, flen)
    mask = [False] * len(x)
    emax = max((e for _, _, e in frames), default=0.0)
    if emax > 0:
        for a, b, e in frames:
            if e >= emax * 10 ** (-vad_db / 10):
                mask[a:b] = [True] * (b - a)
    return mask


def _ref_powers(s, b, flen, vad_db):
    mask = _ref_mask(s, flen, vad_db)
    idx = [i for i, m in enumerate(mask) if m]
    if not idx:
        return 0.0, sum(float(v) ** 2 for v in b) / max(1, len(b))
    return (sum(float(s[i]) ** 2 for i in idx) / len(idx), sum(float(b[i]) ** 2 for i in idx) / len(idx))


@pytest.mark.parametrize("sr,frame_s,vad_db", [(100, 0.02, 40.0), (100, 0.05, 10.0), (50, 0.02, 20.0),
                                               (1000, 0.007, 30.0), (44100, 0.02, 40.0)])
def test_active_mask_and_powers_match_the_loop_reference(sr, frame_s, vad_db):
    rng = np.random.default_rng(sr)
    flen = max(1, round(frame_s * sr))
    for n in (1, flen, 3 * flen + max(1, flen // 2), 7 * flen + 1):
        # frame levels spread over 60 dB so the threshold cuts some frames
        s = rng.standard_normal(n) * np.repeat(10 ** rng.uniform(-3, 0, size=n // flen + 1), flen)[:n]
        b = rng.standard_normal(n)
        assert mixing.active_mask(s, sr, frame_s, vad_db).tolist() == _ref_mask(s, flen, vad_db)
        ps, pb = mixing.powers(s, b, sr, frame_s, vad_db)
        rps, rpb = _ref_powers(s, b, flen, vad_db)
        assert (ps, pb) == (pytest.approx(rps, rel=1e-12), pytest.approx(rpb, rel=1e-12))
        if rps > 0 and rpb > 0:
            assert mixing.measure_snr(s, b, sr, frame_s, vad_db) == pytest.approx(10 * math.log10(rps / rpb),
                                                                                  abs=1e-9)


def test_vad_threshold_edges():
    """vad_db=0 keeps exactly the loudest frames (>=, not >); at 40 dB a frame 39 dB down is in
    and one 41 dB down is out; a partial last frame is judged by its own mean energy."""
    x = np.array([2.0, 2.0, 1.0, 1.0, 2.0, 2.0])
    assert mixing.active_mask(x, 100, 0.02, 0.0).tolist() == [True, True, False, False, True, True]
    a39, a41 = 10 ** (-39 / 20), 10 ** (-41 / 20)
    x = np.array([1.0, 1.0, a39, a39, a41, a41])
    assert mixing.active_mask(x, 100, 0.02, 40.0).tolist() == [True] * 4 + [False] * 2
    # 5 samples in frames of 2: the last frame is the single sample 1.0 (energy 1, not 1/2)
    x = np.array([1.0, 1.0, 0.0, 0.0, 1.0])
    assert mixing.active_mask(x, 100, 0.02, 0.0).tolist() == [True, True, False, False, True]


def test_integer_pcm_is_squared_without_overflow():
    """int16 PCM at full scale: 30000**2 overflows int16, so energies are float64."""
    x = np.array([30000, -30000, 100, 100], dtype=np.int16)
    assert mixing.active_mask(x, 100, 0.02, 40.0).tolist() == [True, True, False, False]
    ps, pb = mixing.powers(x, x, 100, 0.02, 40.0)
    assert ps == pb == 30000.0 ** 2


def test_silent_and_empty_inputs():
    for x in (np.zeros(0), np.zeros(7)):
        m = mixing.active_mask(x, 100, 0.02)
        assert m.dtype == bool and m.shape == x.shape and not m.any()
    assert mixing.powers(np.zeros(0), np.zeros(0), 100) == (0.0, 0.0)
    assert mixing.powers(np.zeros(1), np.ones(1), 100) == (0.0, 1.0)  # no region: the clip's own power
    assert mixing.powers(np.zeros(4), np.array([1.0, 1.0, 3.0, 3.0]), 100) == (0.0, 5.0)
    with pytest.raises(mixing.MixingError, match=r"speech \(\(3,\)\) and background \(\(2,\)\) differ in length"):
        mixing.powers(np.ones(3), np.ones(2), 100)
    assert math.isnan(mixing.measure_snr(np.zeros(4), np.zeros(4), 100))
    assert mixing.measure_snr(np.ones(4), np.zeros(4), 100) == math.inf
    assert mixing.measure_snr(np.zeros(4), np.ones(4), 100) == -math.inf


# ---------------------------------------------------------------- fitting the background


def _ref_unit(bg, xf):
    """The loop unit of the docstring: the last xf samples faded (cos) into the first xf (sin)."""
    period = len(bg) - xf
    unit = [float(v) for v in bg[:period]]
    for k in range(xf):
        t = (k + 0.5) / xf
        unit[k] = bg[k] * math.sin(math.pi / 2 * t) + bg[period + k] * math.cos(math.pi / 2 * t)
    return unit


def test_loop_params_are_integers():
    assert mixing.loop_params(10, 1000, 0.05) == (2, 8)      # a quarter of 10 samples, floored
    assert mixing.loop_params(21, 1000, 0.05) == (5, 16)     # 21 // 4 = 5 < 50
    assert mixing.loop_params(400, 1000, 0.05) == (50, 350)  # 50 ms
    assert all(isinstance(v, int) for v in mixing.loop_params(10, 1000, 0.05))


@pytest.mark.parametrize("m,n,sr,cs,frac", [(10, 37, 1000, 0.05, 0.0), (10, 37, 1000, 0.05, 0.5),
                                             (12, 30, 1000, 0.001, 0.3), (9, 50, 1000, 0.0, 0.9)])
def test_looped_background_matches_the_reference_unit(m, n, sr, cs, frac):
    bg = np.arange(1, m + 1, dtype=np.int16) * 100  # integer PCM: the fade must not truncate
    seg, info = mixing.fit_background(bg, n, sr, offset_frac=frac, crossfade_s=cs)
    xf = min(round(cs * sr), m // 4)
    period = m - xf
    off = int(frac * period)
    unit = _ref_unit([float(v) for v in bg], xf)
    assert info == {"mode": "loop", "offset": off, "period": period, "crossfade": xf}
    assert seg.dtype == np.float64
    np.testing.assert_allclose(seg, [unit[(off + j) % period] for j in range(n)], rtol=1e-12)


def test_exact_and_cut_backgrounds():
    bg = np.arange(10, dtype=np.int16)
    seg, info = mixing.fit_background(bg, 10, 100)  # default offset_frac 0
    assert info == {"mode": "exact", "offset": 0, "period": None, "crossfade": 0}
    assert seg.dtype == np.float64 and seg.tolist() == list(range(10))
    seg, info = mixing.fit_background(bg, 4, 100, offset_frac=0.5)
    assert info == {"mode": "cut", "offset": 3, "period": None, "crossfade": 0}  # int(0.5 * 7)
    assert seg.dtype == np.float64 and seg.tolist() == [3, 4, 5, 6]
    seg, info = mixing.fit_background(np.array([0.5]), 3, 100)  # one sample, looped
    assert seg.tolist() == [0.5, 0.5, 0.5] and info["period"] == 1
    with pytest.raises(mixing.MixingError, match="^background is empty$"):
        mixing.fit_background(np.zeros(0), 3, 100)
    for frac in (1.0, 1.5, -0.1):
        with pytest.raises(mixing.MixingError, match=r"offset_frac must be in \[0, 1\), got"):
            mixing.fit_background(bg, 4, 100, offset_frac=frac)


# ---------------------------------------------------------------- events through the fit, against a
# sample mask: a source sample k carries a label when an event covers it; a looped unit sample k < xf
# also carries what source sample period + k carried (the folded tail); output runs are the events


def _ref_events(events, info, n, n_bg):
    by_label = {}
    for ev in events:
        src = by_label.setdefault(ev["label"], [False] * n_bg)
        for k in range(max(0, round(ev["onset"] * 1000)), min(n_bg, round(ev["offset"] * 1000))):
            src[k] = True
    out = []
    for label, src in by_label.items():
        if info["mode"] == "loop":
            period = info["period"]
            unit = [src[k] or (period + k < n_bg and src[period + k] and k < info["crossfade"]) for k in range(period)]
            mask = [unit[(info["offset"] + j) % period] for j in range(n)]
        else:
            mask = [src[info["offset"] + j] for j in range(n)]
        j = 0
        while j < n:
            if mask[j]:
                e = j
                while e < n and mask[e]:
                    e += 1
                out.append({"label": label, "onset": j / 1000, "offset": e / 1000})
                j = e
            else:
                j += 1
    return sorted(out, key=lambda d: (d["onset"], d["offset"], d["label"]))


def test_fit_events_match_the_sample_mask_reference():
    rng = np.random.default_rng(3)
    for trial in range(60):
        n_bg = int(rng.integers(40, 200))
        n = int(rng.integers(20, 600))
        events = []
        for _ in range(int(rng.integers(1, 6))):
            a = int(rng.integers(-20, n_bg))
            b = a + int(rng.integers(0, n_bg // 2 + 2))  # some empty, some past the clip's end
            events.append({"label": str(rng.choice(["dog", "car"])), "onset": a / 1000, "offset": b / 1000})
        frac = float(rng.uniform(0, 0.999))
        _, info = mixing.fit_background(np.ones(n_bg), n, 1000, offset_frac=frac, crossfade_s=0.01)
        got = mixing.fit_events(events, info, n, n_bg, 1000)
        assert got == _ref_events(events, info, n, n_bg), (trial, events, info)


def test_fit_events_hand_cases():
    sr = 1000
    # a window starting exactly where an event ends gets no zero-length piece of it; an empty
    # event before a real one does not stop the scan
    _, info = mixing.fit_background(np.ones(1000), 300, sr, offset_frac=400 / 701)
    assert info["offset"] == 400
    evs = [{"label": "dog", "onset": 0.2, "offset": 0.4}, {"label": "dog", "onset": 0.9, "offset": 0.9},
           {"label": "car", "onset": 0.5, "offset": 0.6}]
    assert mixing.fit_events(evs, info, 300, 1000, sr) == [{"label": "car", "onset": 0.1, "offset": 0.2}]
    # a whole-clip event looped touches itself at every seam: one event over the whole window
    _, info = mixing.fit_background(np.ones(100), 350, sr, crossfade_s=0.0)
    assert mixing.fit_events([{"label": "hum", "onset": 0.0, "offset": 0.1}], info, 350, 100, sr) == [
        {"label": "hum", "onset": 0.0, "offset": 0.35}]
    # a same-label event inside another: the outer end is kept
    _, info = mixing.fit_background(np.ones(1000), 1000, sr)
    evs = [{"label": "dog", "onset": 0.1, "offset": 0.5}, {"label": "dog", "onset": 0.2, "offset": 0.3}]
    assert mixing.fit_events(evs, info, 1000, 1000, sr) == [{"label": "dog", "onset": 0.1, "offset": 0.5}]
    # times are rounded to the millisecond
    evs = [{"label": "dog", "onset": 0.12345, "offset": 0.45678}]
    assert mixing.fit_events(evs, info, 1000, 1000, sr) == [{"label": "dog", "onset": 0.123, "offset": 0.457}]


# ---------------------------------------------------------------- mix_at_snr's remaining rules


def test_background_only_with_silent_speech_keeps_the_background_level():
    """Docstring: -inf with silent speech uses the background's own level (gain 1); it was a
    silent mixture (target speech power 0 gave background gain 0)."""
    b = _noise(SR // 2)
    mix, info = mixing.mix_at_snr(np.zeros(b.size), b, -math.inf, SR)
    assert info["gains"] == {"speech": 0.0, "background": 1.0, "common": 1.0}
    np.testing.assert_array_equal(mix, b.astype(np.float32))
    with pytest.raises(mixing.MixingError, match="^background is silent: cannot set a finite SNR$"):
        mixing.mix_at_snr(np.zeros(4), np.zeros(4), -math.inf, SR)


def test_speech_level_none_keeps_the_speech_gain_one():
    s, b = _speech(SR // 2), _noise(SR // 2)
    ps, pb = mixing.powers(s, b, SR)
    _, info = mixing.mix_at_snr(s, b, 6.0, SR, speech_level_dbfs=None)
    assert info["gains"]["speech"] == 1.0
    assert info["gains"]["background"] == pytest.approx(math.sqrt(ps / (pb * 10 ** 0.6)), rel=1e-12)


def test_peak_of_exactly_one_is_limited():
    s = np.array([0.5, 1.0, -0.25, 0.5] * 100)
    mix, info = mixing.mix_at_snr(s, np.zeros(s.size), math.inf, SR, speech_level_dbfs=None)
    assert info["gains"]["common"] == pytest.approx(mixing.PEAK_LIMIT)
    assert info["peak"] == pytest.approx(mixing.PEAK_LIMIT) == float(np.max(np.abs(mix)))


def test_float32_input_is_mixed_in_float64():
    s, b = _speech(SR // 2).astype(np.float32), _noise(SR // 2).astype(np.float32)
    mix, info = mixing.mix_at_snr(s, b, 3.0, SR)
    assert info["speech_component"].dtype == info["background_component"].dtype == np.float64
    assert mix.dtype == np.float32
    assert info["measured_snr_db"] == pytest.approx(3.0, abs=1e-9)


def test_vad_db_reaches_the_power_and_the_measurement():
    """Speech with a part 20 dB down: at vad_db=10 that part is out of the region, at the default
    40 it is in; the background is louder there, so the two regions give different powers."""
    n = SR // 2
    s = _speech(n)
    s[n // 2:] *= 0.1
    b = _noise(n)
    b[n // 2:] *= 3.0
    _, info = mixing.mix_at_snr(s, b, 0.0, SR, vad_db=10.0)
    sc, bc = info["speech_component"], info["background_component"]
    assert info["measured_snr_db"] == pytest.approx(0.0, abs=1e-9)
    rps, rpb = _ref_powers(sc, bc, round(0.02 * SR), 10.0)
    assert 10 * math.log10(rps / rpb) == pytest.approx(0.0, abs=1e-9)
    assert abs(mixing.measure_snr(sc, bc, SR)) > 1.0  # the default region disagrees


def test_input_errors_name_the_problem():
    one = np.ones(8)
    cases = [((np.ones((2, 4)), one), 0.0, "^mix_at_snr takes mono 1-D arrays$"),
             ((one, np.ones((2, 4))), 0.0, "^mix_at_snr takes mono 1-D arrays$"),
             ((one, np.ones(5)), 0.0, r"^speech \(8 samples\) and background \(5 samples\) differ in length; "
                                      "fit the background first$"),
             ((np.zeros(0), np.zeros(0)), 0.0, "^empty input$"),
             ((np.array([1.0, np.inf]), np.ones(2)), 0.0, "^input contains NaN or infinite samples$"),
             ((one, one), math.nan, "^snr_db is NaN$"),
             ((np.zeros(8), one), 0.0, "^speech is silent: cannot set an SNR$")]
    for (s, b), snr, msg in cases:
        with pytest.raises(mixing.MixingError, match=msg):
            mixing.mix_at_snr(s, b, snr, SR)
    mix, _ = mixing.mix_at_snr(np.ones(1), np.ones(1), 0.0, SR)  # one sample is not empty
    assert mix.shape == (1,)
