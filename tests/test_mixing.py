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
