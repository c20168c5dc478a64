"""evalkit.audio's decoding, resampling and WAV encoding against independent references: soundfile and
soxr called directly in the test, hand-built arrays, and the error messages users read."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import soxr

from evalkit.audio import AudioError, decode_audio, encode_wav, resample
from evalkit.types import AudioRef


def _tone(n=1600, sr=8000, f=440.0):
    return (0.5 * np.sin(2 * np.pi * f * np.arange(n) / sr)).astype(np.float32)


def test_array_source_is_float32_at_its_rate_and_copied_as_given():
    x = _tone().astype(np.float64)  # float64 in: float32 out, same samples
    y, sr = decode_audio(AudioRef(array=x, sample_rate=8000))
    assert y.dtype == np.float32 and sr == 8000 and isinstance(sr, int)
    np.testing.assert_array_equal(y, x.astype(np.float32))
    y2, sr2 = decode_audio(AudioRef(array=[[0.1, 0.2], [0.3, 0.4]], sample_rate=8000.0))
    assert sr2 == 8000 and isinstance(sr2, int)
    np.testing.assert_allclose(y2, [0.1, 0.2, 0.3, 0.4], rtol=1e-7)  # flattened, not averaged


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_file_and_bytes_sources_equal_soundfile(tmp_path, subtype):
    stereo = np.stack([_tone(), _tone(f=220.0)], axis=1)
    path = tmp_path / "s.wav"
    sf.write(path, stereo, 8000, subtype=subtype)
    ref_x, ref_sr = sf.read(path, dtype="float32", always_2d=True)
    want = ref_x.mean(axis=1)  # stereo -> the mean of the channels
    for ref in (AudioRef(path=path), AudioRef(data=path.read_bytes())):
        y, sr = decode_audio(ref)
        assert y.dtype == np.float32 and sr == ref_sr == 8000
        np.testing.assert_array_equal(y, want.astype(np.float32))
    mono = tmp_path / "m.wav"
    sf.write(mono, _tone(), 8000, subtype=subtype)
    np.testing.assert_array_equal(decode_audio(AudioRef(path=mono))[0], sf.read(mono, dtype="float32")[0])


def test_resampling_equals_soxr_and_is_skipped_at_the_native_rate(tmp_path):
    x = _tone(8000, 8000)
    y, sr = decode_audio(AudioRef(array=x, sample_rate=8000), 16000)
    assert sr == 16000 and y.dtype == np.float32
    np.testing.assert_allclose(y, soxr.resample(x, 8000, 16000, quality="HQ"), atol=1e-6)
    np.testing.assert_allclose(resample(x, 8000, 16000), y, atol=1e-6)
    same, sr = decode_audio(AudioRef(array=x, sample_rate=8000), 8000)
    np.testing.assert_array_equal(same, x)
    assert sr == 8000


@pytest.mark.parametrize("bad, message", [
    (np.zeros(0, np.float32), r"is empty \(0 samples\)"),
    (np.array([0.0, np.nan], np.float32), "contains NaN or infinite samples"),
    (np.array([0.0, np.inf], np.float32), "contains NaN or infinite samples"),
])
def test_bad_arrays_are_refused_naming_the_source(bad, message):
    with pytest.raises(AudioError, match=f"^audio clip-7.*{message}"):
        decode_audio(AudioRef(array=bad, sample_rate=16000, label="clip-7"))


def test_missing_and_undecodable_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match=r"^audio file not found: .*nope\.wav"):
        decode_audio(AudioRef(path=missing))
    garbage = tmp_path / "g.wav"
    garbage.write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioError, match=r"^cannot decode audio .*g\.wav: "):
        decode_audio(AudioRef(path=garbage))
    with pytest.raises(AudioError, match=r"^cannot decode audio "):
        decode_audio(AudioRef(data=b"RIFF0000WAVEjunk"))


def test_encode_wav_is_16_bit_pcm_that_soundfile_reads_back():
    x = _tone(1000, 16000)
    raw = encode_wav(x, 16000)
    info = sf.info(io.BytesIO(raw))
    assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == ("WAV", "PCM_16", 16000, 1, 1000)
    back, _ = sf.read(io.BytesIO(raw), dtype="float32")
    assert np.abs(back - x).max() <= 1 / 32768 + 1e-7  # one 16-bit step


def test_unsafe_paths_are_refused_with_what_and_why(tmp_path):
    from evalkit.audio import UnsafePathError, resolve_under

    with pytest.raises(UnsafePathError, match=r"^empty clip path$"):
        resolve_under(tmp_path, "  ", what="clip path")
    with pytest.raises(UnsafePathError, match=r"^audio path '/etc/passwd' is absolute; paths in data files must be "
                                              r"relative to "):
        resolve_under(tmp_path, "/etc/passwd")
    with pytest.raises(UnsafePathError, match=r"^audio path '\.\./x\.wav' escapes the data root "):
        resolve_under(tmp_path, "../x.wav")
