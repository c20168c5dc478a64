import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_data(*parts: str) -> Path:
    p = SHARED.joinpath("data", *parts)
    if not p.exists():
        pytest.skip(f"{p} not present (../shared is absent)")
    return p


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A 24-item toy MCQ task with real WAV files, plus the scripted adapter."""
    import plugins
    import soundfile as sf

    plugins.install(monkeypatch)
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    items, key = [], {}
    rng = np.random.default_rng(0)
    for i in range(24):
        k = [2, 3, 4, 5][i % 4]
        choices = [f"option {j} of item {i}" for j in range(k)]
        ans = choices[i % k]
        sf.write(audio_dir / f"a{i // 2}.wav", rng.standard_normal(1600).astype("float32") * 0.1, 16000)
        items.append({"id": f"s{i}", "audio": f"audio/a{i // 2}.wav", "question": f"Question {i}?",
                      "choices": choices, "answer": ans, "axis": "perception" if i % 3 else "reasoning"})
        key[f"s{i}"] = ans
    (tmp_path / "toy.json").write_text(json.dumps(items))
    (tmp_path / "key.json").write_text(json.dumps(key))
    return tmp_path
