"""One registry for tasks and models, with lazy imports.

Built-in entries are "module:attribute" strings, imported only when asked for.
Third-party plugins register through the `evalkit.tasks` / `evalkit.models` /
`evalkit.builders` entry-point groups; during development, without packaging, the
environment variables EVALKIT_TASKS / EVALKIT_MODELS / EVALKIT_BUILDERS
("name=module:attr,...") do the same. A name registered twice is an error.

This module is the engine's only way to tasks, adapters and data builders: it
imports them by name, never by an import statement.
"""
from __future__ import annotations

import importlib
import os
from functools import cache
from importlib.metadata import entry_points
from typing import Any

BUILTIN_TASKS: dict[str, str] = {
    "mmau": "evalkit.tasks.mmau:MMAU",
    "mmar": "evalkit.tasks.mmar:MMAR",
    "mmsu": "evalkit.tasks.mmsu:MMSU",
    "cochlscene": "evalkit.tasks.cochlscene:CochlScene",
    "akb2000": "evalkit.tasks.akb2000:AKB2000",
    "sseu-asr": "evalkit.tasks.sseu:SSEUASR",
    "sseu-asc": "evalkit.tasks.sseu:SSEUASC",
    "sseu-at": "evalkit.tasks.sseu:SSEUAT",
    "sseu-joint": "evalkit.tasks.sseu:SSEUJoint",
    "sseu-joint-cot": "evalkit.tasks.sseu:SSEUJointCoT",
    "sakura": "evalkit.tasks.sakura:Sakura",
    "mugen": "evalkit.tasks.mugen:Mugen",
    "dynamic-superb": "evalkit.tasks.dynamic_superb:DynamicSuperb",
}

BUILTIN_MODELS: dict[str, str] = {
    "predictions": "evalkit.models.predictions:PredictionsFile",
    "openai": "evalkit.models.openai_compat:OpenAICompatible",
    "whisper": "evalkit.models.whisper_asr:WhisperASR",
    "clap": "evalkit.models.clap:CLAP",
    "hf": "evalkit.models.hf_audio:HFAudioLM",
    "qwen2-audio": "evalkit.models.hf_audio:Qwen2AudioHF",
    "qwen2.5-omni": "evalkit.models.hf_audio:Qwen25OmniHF",
    "audio-flamingo-3": "evalkit.models.hf_audio:AudioFlamingo3HF",
    "voxtral-mini": "evalkit.models.hf_audio:VoxtralMiniHF",
    "vllm": "evalkit.models.vllm_audio:VLLMAudio",
    "text": "evalkit.models.text_llm:TextLLM",
    "cascade": "evalkit.models.cascade:Cascade",
    "tagger": "evalkit.models.tagger:Tagger",
    "eva": "evalkit.models.eva:EvA",
    "desta2.5": "evalkit.models.desta:DeSTA25Audio",
}


#: `evalkit data build NAME`: builders of a benchmark's data from its source corpora
BUILTIN_BUILDERS: dict[str, str] = {
    "sseu": "evalkit.tasks.sseu.build:SSEUBuilder",
    "sseu-synth": "evalkit.tasks.sseu.build:SSEUSynthBuilder",
}

_KINDS = {"task": (BUILTIN_TASKS, "evalkit.tasks", "EVALKIT_TASKS"),
          "model": (BUILTIN_MODELS, "evalkit.models", "EVALKIT_MODELS"),
          "builder": (BUILTIN_BUILDERS, "evalkit.builders", "EVALKIT_BUILDERS")}


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


@cache
def _table(kind: str) -> dict[str, str]:
    builtin, group, env_var = _KINDS[kind]
    table = dict(builtin)
    for ep in entry_points(group=group):
        if ep.name in table and table[ep.name] != ep.value:
            raise RegistryError(
                f"duplicate {kind} name {ep.name!r}: plugin {ep.value} clashes with {table[ep.name]}")
        table[ep.name] = ep.value
    env = os.environ.get(env_var, "")
    for item in filter(None, (x.strip() for x in env.split(","))):
        name, sep, target = item.partition("=")
        if not sep or ":" not in target:
            raise RegistryError(f"bad plugin entry {item!r}: expected name=module:attr")
        if name in table and table[name] != target:
            raise RegistryError(f"duplicate {kind} name {name!r}: {target} clashes with {table[name]}")
        table[name] = target
    return table


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def names(kind: str) -> list[str]:
    return sorted(_table(kind))


def get(kind: str, name: str) -> Any:
    table = _table(kind)
    if name not in table:
        raise RegistryError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
    return _load(table[name])


def get_task(name: str) -> Any:
    return get("task", name)


def get_model(name: str) -> Any:
    return get("model", name)


def get_builder(name: str) -> Any:
    return get("builder", name)
