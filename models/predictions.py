"""Score model outputs produced elsewhere: a JSONL file (one object per line) or a JSON
list (e.g. the MMAU benchmark JSON with each item's `model_output` filled in).

    evalkit run --model predictions -M path=outputs.jsonl --task mmau --choices original

Each record needs an id (`id_field`, default "id") and a prediction (`response_field`;
default auto: the first of "response", "output", "model_output", "answer_prediction",
"model_prediction", "prediction" present in the record). The adapter never decodes audio
(`needs_audio = False`, `sample_rate = None`): the runner can skip decoding entirely.

Lookup is by the request key: the sample id, or "<id>#rot<r>" in circular runs, falling
back to the plain id when the file has no per-rotation entry. An id missing from the file
becomes an error Response naming the id and the file. Malformed lines, records without
an id or prediction, and duplicate ids fail at load, naming the file and line (or item).

CAVEAT: choice order. With `--choices balanced` (the default) evalkit shows the choices
in a permuted order, and MCQ extraction reads an output letter ("(B)") against the order
the model saw. Predictions produced elsewhere were produced with the upstream order, so
their letters would be read against the wrong order. Run predictions files with
`--choices original`. Outputs that state the answer text rather than a letter are
order-independent, but `--choices original` is still the safe setting. Likewise
`--choices circular` is meaningless here unless the file holds "<id>#rot<r>" entries
produced with evalkit's rotations (the plain-id fallback returns the same output for
every rotation).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, ClassVar

from evalkit.models.base import AdapterConfig, Model
from evalkit.types import Request, Response

RESPONSE_FIELDS = ("response", "output", "model_output", "answer_prediction", "model_prediction", "prediction")
_ROT = re.compile(r"^(?P<id>.*)#rot\d+$")


class PredictionsError(ValueError):
    """A predictions file that cannot be used; the message names the file (and line)."""


class PredictionsConfig(AdapterConfig):
    path: Path
    id_field: str = "id"
    #: None: auto-detect per record from RESPONSE_FIELDS
    response_field: str | None = None


class PredictionsFile(Model):
    name: ClassVar[str] = "predictions"
    description: ClassVar[str] = "score outputs produced elsewhere (JSONL or JSON list with id + prediction)"
    source: ClassVar[str] = "local file"
    capabilities: ClassVar[frozenset[str]] = frozenset({"audio", "text", "multi_audio"})
    Config: ClassVar[type[AdapterConfig]] = PredictionsConfig
    sample_rate: ClassVar[int | None] = None
    #: the runner may skip audio decoding for this adapter
    needs_audio: ClassVar[bool] = False
    default_batch_size: ClassVar[int] = 256

    config: PredictionsConfig

    def __init__(self, config: PredictionsConfig):
        super().__init__(config)
        self.preferred_batch_size = self.default_batch_size
        self.path = Path(config.path).expanduser()
        self._predictions: dict[str, Any] = {}
        self._fields_used: set[str] = set()
        self._sha256 = ""
        self._load()

    # ---- loading ----------------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.is_file():
            raise PredictionsError(f"predictions file not found: {self.path}")
        raw = self.path.read_bytes()
        self._sha256 = hashlib.sha256(raw).hexdigest()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise PredictionsError(f"{self.path}: not UTF-8 text ({e})") from None
        stripped = text.lstrip()
        if stripped.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise PredictionsError(f"{self.path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
            for i, item in enumerate(items):
                self._add(item, f"{self.path} item {i}")
        else:
            for lineno, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PredictionsError(
                        f"{self.path} line {lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
                self._add(item, f"{self.path} line {lineno}")
        if not self._predictions:
            raise PredictionsError(f"{self.path}: no predictions (expected JSONL or a JSON list of objects)")

    def _add(self, item: Any, where: str) -> None:
        if not isinstance(item, dict):
            raise PredictionsError(f"{where}: expected a JSON object, got {type(item).__name__}")
        id_field = self.config.id_field
        if item.get(id_field) is None:
            raise PredictionsError(f"{where}: no {id_field!r} field (set id_field=... to name the id field)")
        key = str(item[id_field])
        field = self.config.response_field
        if field is None:
            field = next((f for f in RESPONSE_FIELDS if f in item), None)
            if field is None:
                raise PredictionsError(
                    f"{where}: no prediction field (looked for {', '.join(RESPONSE_FIELDS)}); "
                    "set response_field=...")
        elif field not in item:
            raise PredictionsError(f"{where}: no {field!r} field")
        if key in self._predictions:
            raise PredictionsError(f"{where}: duplicate id {key!r} in {self.path}")
        self._predictions[key] = item[field]
        self._fields_used.add(field)

    # ---- the contract -----------------------------------------------------------------
    def _lookup(self, key: str) -> tuple[bool, Any]:
        if key in self._predictions:
            return True, self._predictions[key]
        m = _ROT.match(key)
        if m and m.group("id") in self._predictions:
            return True, self._predictions[m.group("id")]
        return False, None

    def generate(self, requests: list[Request]) -> list[Response]:
        out = []
        for req in requests:
            found, value = self._lookup(req.key)
            if not found:
                sid = _ROT.match(req.key).group("id") if _ROT.match(req.key) else req.key
                out.append(Response(req.key, error=f"no prediction for id {sid!r} in {self.path}"))
            elif value is None:
                out.append(Response(req.key, error=f"prediction for id {req.key!r} is null in {self.path}"))
            else:
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                out.append(Response(req.key, text=text))
        return out

    def info(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self._sha256,
            "id_field": self.config.id_field,
            "response_field": self.config.response_field or sorted(self._fields_used),
            "n_predictions": len(self._predictions),
        }
