"""Score model outputs produced elsewhere: a JSONL file (one object per line), a JSON list
(e.g. the MMAU benchmark JSON with each item's `model_output` filled in), or an evalkit
`samples.jsonl` from an earlier run.

    evalkit run --model predictions -M path=outputs.jsonl --task mmau --choices original
    evalkit run --model predictions -M path=results/runs/<run>/samples.jsonl --task mmau

Each record needs an id (`id_field`, default "id") and a prediction (`response_field`;
default auto: the first of "response", "output", "model_output", "answer_prediction",
"model_prediction", "prediction" present in the record). The adapter never decodes audio
(`needs_audio = False`, `sample_rate = None`): the runner can skip decoding entirely.
An id missing from the file becomes an error Response naming the id and the file. Malformed
lines, records without an id or prediction, and duplicate ids fail at load, naming the file
and line (or item). Lines are split on "\\n" only (a raw U+2028 inside a JSON string is text,
not a line break); NaN/Infinity constants read as null (no prediction).

Choice order. An output letter ("(B)") is read against the order of the options the model saw.
Predictions made elsewhere saw the upstream order, so they are scored only with
`--choices original` (`choice_order`): `check_protocol` refuses `balanced` and `circular`
for them, since with the default `balanced` order a file of correct letters would score near
chance (MMAU test-mini: 27.4% instead of 100%), with exit 0.

An evalkit samples.jsonl (records with "key" and "permutation") records the order each output
answered. It is read by "key" (the sample id, or "<id>#rot<r>" in circular runs) and "output"
(or `response_field`); a later record of a key supersedes an earlier one, as in the run log.
`check_protocol` refuses the run unless every presented key the file holds carries the same
permutation (and choices) as the run will present, so it takes the --choices and --seed of the
run that wrote it. A record the earlier run logged as an error becomes an error Response
quoting that error.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from evalkit.jsonio import jsonl_lines, loads_json
from evalkit.models.base import AdapterConfig, Model
from evalkit.types import Presentation, Request, Response

RESPONSE_FIELDS = ("response", "output", "model_output", "answer_prediction", "model_prediction", "prediction")
#: the fields that mark an evalkit samples.jsonl, and the one it is keyed by
SAMPLES_MARK, SAMPLES_KEY, SAMPLES_OUTPUT = "permutation", "key", "output"
#: mismatching keys quoted in a refusal
QUOTED = 3


class PredictionsError(ValueError):
    """A predictions file that cannot be used; the message names the file (and line)."""


class PredictionsConfig(AdapterConfig):
    path: Path
    id_field: str = "id"
    #: None: auto-detect per record from RESPONSE_FIELDS ("output" in an evalkit samples.jsonl)
    response_field: str | None = None


@dataclass
class Predictions:
    """A predictions file as read: the prediction per key and, for an evalkit samples.jsonl, the
    choice order (and choices) each one answered."""

    path: Path
    sha256: str
    evalkit_samples: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)
    #: evalkit samples only: the error the earlier run recorded, the permutation and choices shown
    errors: dict[str, str] = field(default_factory=dict)
    permutations: dict[str, list[int] | None] = field(default_factory=dict)
    choices: dict[str, list[str] | None] = field(default_factory=dict)
    keys_of_sample: dict[str, list[str]] = field(default_factory=dict)
    fields_used: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, config: PredictionsConfig) -> Predictions:
        path = Path(config.path).expanduser()
        if not path.is_file():
            raise PredictionsError(f"predictions file not found: {path}")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise PredictionsError(f"{path}: not UTF-8 text ({e})") from None
        items: list[tuple[str, Any]] = []
        if text.lstrip().startswith("["):
            try:
                listed = loads_json(text)
            except json.JSONDecodeError as e:
                raise PredictionsError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
            items = [(f"{path} item {i}", item) for i, item in enumerate(listed)]
        else:
            for lineno, line in jsonl_lines(text):
                try:
                    items.append((f"{path} line {lineno}", loads_json(line)))
                except json.JSONDecodeError as e:
                    raise PredictionsError(f"{path} line {lineno}: malformed JSON ({e.msg} at column {e.colno})") \
                        from None
        out = cls(path=path, sha256=hashlib.sha256(raw).hexdigest(),
                  evalkit_samples=any(isinstance(item, dict) and SAMPLES_MARK in item for _, item in items))
        if out.evalkit_samples and "id_field" in config.model_fields_set:
            raise PredictionsError(f"{path} is an evalkit samples.jsonl (its records carry {SAMPLES_MARK!r}): it is "
                                   f"read by {SAMPLES_KEY!r}, so drop id_field=")
        for where, item in items:
            if not isinstance(item, dict):
                raise PredictionsError(f"{where}: expected a JSON object, got {type(item).__name__}")
            if out.evalkit_samples:
                out._add_sample_record(item, where, config.response_field or SAMPLES_OUTPUT)
            else:
                out._add(item, where, config)
        if not out.outputs:
            raise PredictionsError(f"{path}: no predictions (expected JSONL or a JSON list of objects)")
        return out

    def _add(self, item: dict[str, Any], where: str, config: PredictionsConfig) -> None:
        id_field = config.id_field
        if item.get(id_field) is None:
            raise PredictionsError(f"{where}: no {id_field!r} field (set id_field=... to name the id field)")
        key = str(item[id_field])
        name = config.response_field
        if name is None:
            name = next((f for f in RESPONSE_FIELDS if f in item), None)
            if name is None:
                raise PredictionsError(
                    f"{where}: no prediction field (looked for {', '.join(RESPONSE_FIELDS)}); "
                    "set response_field=...")
        elif name not in item:
            raise PredictionsError(f"{where}: no {name!r} field")
        if key in self.outputs:
            raise PredictionsError(f"{where}: duplicate id {key!r} in {self.path}")
        self.outputs[key] = item[name]
        self.fields_used.add(name)

    def _add_sample_record(self, item: dict[str, Any], where: str, name: str) -> None:
        key, perm = item.get(SAMPLES_KEY), item.get(SAMPLES_MARK)
        for needed in (SAMPLES_KEY, SAMPLES_MARK):
            if needed not in item or (needed == SAMPLES_KEY and not (isinstance(key, str) and key)):
                raise PredictionsError(f"{where}: no {needed!r} field, but other records carry {SAMPLES_MARK!r} "
                                       f"(an evalkit samples.jsonl has {SAMPLES_KEY!r} and {SAMPLES_MARK!r} in "
                                       f"every record)")
        if perm is not None and not (isinstance(perm, list) and all(type(i) is int for i in perm)):
            raise PredictionsError(f"{where}: key {key!r}: field {SAMPLES_MARK!r} must be a list of option "
                                   f"indices (or null for a task without options), got {perm!r}")
        if name not in item:
            raise PredictionsError(f"{where}: key {key!r}: no {name!r} field")
        # a later record of a key supersedes an earlier one (a retried error), as in the run log
        self.outputs[key] = item[name]
        self.permutations[key] = perm
        self.choices[key] = item.get("choices")
        if item.get("error") is not None:
            self.errors[key] = str(item["error"])
        else:
            self.errors.pop(key, None)
        sample_id = str(item.get("sample_id", key))
        keys = self.keys_of_sample.setdefault(sample_id, [])
        if key not in keys:
            keys.append(key)
        self.fields_used.add(name)

    # ---- the choice protocol ----------------------------------------------------------
    def check_protocol(self, choices: str, presentations: list[Presentation]) -> None:
        if self.evalkit_samples:
            self._check_recorded_order(presentations)
        elif choices != "original" and any(p.permutation is not None for p in presentations):
            raise PredictionsError(
                f"--choices {choices} with --model predictions: {self.path} holds predictions made elsewhere, "
                f"which use the upstream choice order, while --choices {choices} shows the options permuted, so "
                f"their letters would be read against the wrong order. Pass --choices original, or give an "
                f"evalkit samples.jsonl (it records the order each output answered)")

    def _check_recorded_order(self, presentations: list[Presentation]) -> None:
        problems: list[str] = []
        for p in presentations:
            if p.key in self.outputs:
                recorded = self.permutations[p.key]
                if recorded != p.permutation:
                    problems.append(f"key {p.key!r}: recorded permutation {recorded}, this run presents "
                                    f"{p.permutation}")
                elif self.choices[p.key] is not None and p.choices is not None and self.choices[p.key] != p.choices:
                    problems.append(f"key {p.key!r}: recorded choices {self.choices[p.key]}, this run presents "
                                    f"{p.choices} (the task data differs)")
            elif p.sample.id in self.keys_of_sample:
                problems.append(f"key {p.key!r}: the file holds sample {p.sample.id!r} only under "
                                f"{self.keys_of_sample[p.sample.id]} (another --choices mode)")
        if problems:
            more = f" (and {len(problems) - QUOTED} more)" if len(problems) > QUOTED else ""
            raise PredictionsError(
                f"{self.path}: the evalkit samples.jsonl answered another choice order than this run presents, "
                f"in {len(problems)} of {len(presentations)} requests: {'; '.join(problems[:QUOTED])}{more}. "
                f"Run with the --choices and --seed of the run that wrote it (see its run.json \"protocol\")")


class PredictionsFile(Model):
    name: ClassVar[str] = "predictions"
    description: ClassVar[str] = ("score outputs produced elsewhere (JSONL or JSON list with id + prediction, "
                                  "or an evalkit samples.jsonl)")
    source: ClassVar[str] = "local file"
    capabilities: ClassVar[frozenset[str]] = frozenset({"audio", "text", "multi_audio"})
    Config: ClassVar[type[AdapterConfig]] = PredictionsConfig
    sample_rate: ClassVar[int | None] = None
    #: the runner may skip audio decoding for this adapter
    needs_audio: ClassVar[bool] = False
    default_batch_size: ClassVar[int] = 256
    #: the --choices these predictions are scored with when none is given: predictions made elsewhere
    #: answer the upstream order (an evalkit samples.jsonl needs its own run's mode: check_protocol says so)
    choice_order: ClassVar[str] = "original"

    config: PredictionsConfig

    def __init__(self, config: PredictionsConfig):
        super().__init__(config)
        self.preferred_batch_size = self.default_batch_size
        self.predictions = Predictions.read(config)
        self.path = self.predictions.path

    @classmethod
    def check_protocol(cls, config: AdapterConfig, choices: str, presentations: list[Presentation]) -> None:
        Predictions.read(config).check_protocol(choices, presentations)

    # ---- the contract -----------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[Response]:
        preds = self.predictions
        out = []
        for req in requests:
            if req.key not in preds.outputs:
                what = "key" if preds.evalkit_samples else "id"
                out.append(Response(req.key, error=f"no prediction for {what} {req.key!r} in {self.path}"))
            elif req.key in preds.errors:
                out.append(Response(req.key, error=f"{self.path} records an error for key {req.key!r}: "
                                                   f"{preds.errors[req.key]}"))
            elif (value := preds.outputs[req.key]) is None:
                out.append(Response(req.key, error=f"prediction for id {req.key!r} is null in {self.path}"))
            else:
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                out.append(Response(req.key, text=text))
        return out

    def info(self) -> dict[str, Any]:
        preds = self.predictions
        return {
            "path": str(self.path),
            "sha256": preds.sha256,
            "format": "evalkit samples.jsonl" if preds.evalkit_samples else "predictions",
            "id_field": SAMPLES_KEY if preds.evalkit_samples else self.config.id_field,
            "response_field": self.config.response_field or sorted(preds.fields_used),
            "n_predictions": len(preds.outputs),
        }
