"""Test-only task and adapter, registered through EVALKIT_TASKS / EVALKIT_MODELS.

`toy-mcq` reads a JSON list of {id, audio, question, choices, answer(text)};
`scripted` answers from an answer key, optionally slowly, logs every call to a
file (so tests can count model calls across processes) and refuses requests
whose audio did not arrive.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from evalkit.audio import resolve_under
from evalkit.models.base import AdapterConfig, Model
from evalkit.tasks.base import LoadedData, MCQTask, TaskDataError, hash_files
from evalkit.types import AudioRef, Request, Response, Sample


class ToyMCQ(MCQTask):
    name = "toy-mcq"
    description = "test fixture"
    source = "-T data=FILE"
    groupings = ("axis",)

    def load(self) -> LoadedData:
        path = Path(self.options.data)
        root = Path(self.options.audio_root or path.parent)
        samples = []
        for i, r in enumerate(json.loads(path.read_text())):
            if r["answer"] not in r["choices"]:
                raise TaskDataError(f"{path}: record {i}: answer not among choices")
            audio = [AudioRef(path=resolve_under(root, r["audio"]))] if r.get("audio") else []
            samples.append(Sample(id=r["id"], question=r["question"], choices=r["choices"],
                                  answer=r["choices"].index(r["answer"]), audio=audio,
                                  metadata={"axis": r.get("axis", "perception")}))
        return LoadedData(samples, {"kind": "local", "path": str(path)}, hash_files([path]))


class ScriptedConfig(AdapterConfig):
    answers: str  # JSON {sample_id: gold text}
    delay_s: float = 0.0
    calls_log: str | None = None
    require_audio: bool = True
    wrong: bool = False  # answer the first non-gold option
    concurrency: int = 1
    raise_on: str | None = None  # raise (a broken model) when this key is asked


class Scripted(Model):
    name = "scripted"
    description = "test adapter"
    capabilities = frozenset({"audio", "text"})
    Config = ScriptedConfig
    volatile_args = frozenset({"delay_s", "calls_log", "concurrency", "raise_on"})
    default_batch_size = 4

    def __init__(self, config):
        super().__init__(config)
        self.key = json.loads(Path(config.answers).read_text())

    def generate(self, requests: list[Request]) -> list[Response]:
        out = []
        for r in requests:
            if r.key == self.config.raise_on:
                raise RuntimeError("CUDA out of memory (simulated)")
            if self.config.calls_log:
                with open(self.config.calls_log, "a") as f:
                    f.write(r.key + "\n")
            if self.config.delay_s:
                time.sleep(self.config.delay_s)
            audio = r.audio()
            if self.config.require_audio and (not audio or audio[0].load(self.sample_rate)[0].size == 0):
                out.append(Response(r.key, error="no audio reached the model"))
                continue
            options = dict(re.findall(r"^\(([A-Z])\) (.*)$", r.text(), re.M))
            gold = self.key[r.key.split("#rot")[0]]
            pick = [k for k, v in options.items() if (v != gold) == self.config.wrong][0]
            out.append(Response(r.key, text=f"The answer is ({pick}).", latency_s=0.0))
        return out


def install(monkeypatch) -> None:
    from evalkit import registry

    monkeypatch.setenv("EVALKIT_TASKS", "toy-mcq=plugins:ToyMCQ")
    monkeypatch.setenv("EVALKIT_MODELS", "scripted=plugins:Scripted")
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    registry._table.cache_clear()
