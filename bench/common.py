"""Shared by the benchmarks: a JSON-backed MCQ task and in-process registration."""
from __future__ import annotations

import json
from pathlib import Path

from evalkit import registry
from evalkit.tasks.base import LoadedData, MCQTask, hash_files
from evalkit.types import AudioRef, Sample


class JsonMCQ(MCQTask):
    """Rows {"id", "q", "c": [choices], "a": gold index, "audio"?: path next to the file, "meta"?: {...}}."""

    name = "bench-json-mcq"
    description = "synthetic MCQ for benchmarks"
    groupings = ("axis", "category")

    def load(self) -> LoadedData:
        path = Path(self.options.data)
        samples = [Sample(id=r["id"], question=r["q"], choices=r["c"], answer=r["a"],
                          audio=[AudioRef(path=path.parent / r["audio"])] if r.get("audio") else [],
                          metadata=r.get("meta", {})) for r in json.loads(path.read_text())]
        return LoadedData(samples, {"kind": "local", "path": str(path)}, hash_files([path]))


class TextJsonMCQ(JsonMCQ):
    name = "bench-json-text-mcq"
    modality = "text"


def register(tasks: dict[str, str] | None = None, models: dict[str, str] | None = None) -> None:
    """Make benchmark-local classes ("module:attr") runnable by name, in this process only."""
    registry.BUILTIN_TASKS.update(tasks or {})
    registry.BUILTIN_MODELS.update(models or {})
    registry._table.cache_clear()
