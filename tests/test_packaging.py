"""The built wheel holds every module and data file of the source tree (an editable install hides a
missing subpackage: it imports from the tree)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> its import path inside the wheel
TREES = {"evalkit": "evalkit", "tasks": "evalkit/tasks", "models": "evalkit/models"}


@pytest.mark.slow
def test_wheel_contains_every_module_and_data_file(tmp_path):
    pytest.importorskip("setuptools")
    # build from a copy: setuptools' in-tree build/ folder would otherwise carry files from earlier builds
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*cache")
    # the top-level results/ (run output) stays behind; evalkit/results/ is a package
    shutil.copytree(ROOT, src, ignore=lambda d, names: set(skip(d, names)) | ({"results"} if Path(d) == ROOT else set()))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(src)], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel, = tmp_path.glob("evalkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for src, dst in TREES.items():
        for f in (ROOT / src).rglob("*"):
            rel = f.relative_to(ROOT / src)
            if f.is_file() and "__pycache__" not in rel.parts:  # modules and data files alike
                expected.add(f"{dst}/{rel.as_posix()}")
    expected = {n for n in expected if not n.endswith(".pyc")}
    assert {"evalkit/protocol/extract.py", "evalkit/models/eva/kimi.py", "evalkit/tasks/mmau.py",
            "evalkit/schemas/run.schema.json",
            "evalkit/tasks/sseu/synth/transcripts.tsv", "evalkit/tasks/sseu/synth/speech/s01.flac"} <= expected  # the walk itself found the tree
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel: {missing[:10]}"
