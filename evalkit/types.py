"""The data that flows through evalkit: Sample -> Request -> Response -> record.

Kept free of heavy imports (numpy is imported lazily in `AudioRef.load`) so that
`import evalkit` stays cheap.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class AudioRef:
    """One audio input, decoded lazily.

    Exactly one of `path`, `data` (encoded bytes) or `array` (float32 mono
    samples at `sample_rate`) is set. `label` is what logs show instead of bytes.
    """

    path: Path | None = None
    data: bytes | None = None
    array: Any = None  # numpy.ndarray, float32 mono
    sample_rate: int | None = None
    label: str | None = None
    _decoded: dict[int | None, Any] = field(default_factory=dict, repr=False, compare=False)
    _sha256: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.path, self.data, self.array)) != 1:
            raise ValueError("AudioRef needs exactly one of path, data or array")
        if self.array is not None and not self.sample_rate:
            raise ValueError("AudioRef(array=...) needs sample_rate")
        if self.path is not None:
            self.path = Path(self.path)

    def load(self, sample_rate: int | None = None):
        """Mono float32 samples, resampled to `sample_rate` (None: native rate).

        Returns (array, rate). Decoded arrays are memoized per rate so that a
        prefetch thread can decode ahead of the model.
        """
        from evalkit.audio import decode_audio

        if sample_rate not in self._decoded:
            self._decoded[sample_rate] = decode_audio(self, sample_rate)
        return self._decoded[sample_rate]

    def release(self) -> None:
        """Drop decoded arrays once the model has consumed them."""
        self._decoded.clear()

    def sha256(self) -> str:
        if self._sha256 is None:
            h = hashlib.sha256()
            if self.path is not None:
                with open(self.path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            elif self.data is not None:
                h.update(self.data)
            else:
                import numpy as np

                h.update(np.ascontiguousarray(self.array, dtype=np.float32).tobytes())
                h.update(str(self.sample_rate).encode())
            self._sha256 = h.hexdigest()
        return self._sha256

    def describe(self) -> str:
        """How logs refer to this audio: a label or path, never the bytes."""
        if self.label:
            return self.label
        if self.path is not None:
            return str(self.path)
        return "sha256:" + self.sha256()[:16]


@dataclass
class Sample:
    """One benchmark item as the task loader read it.

    MCQ tasks set `choices` and `answer` (index into `choices`). Other tasks put
    their references in `target`. `group` names the unit that bootstrap CIs
    resample together (questions sharing one clip); it defaults to the audio.
    """

    id: str
    question: str = ""
    audio: list[AudioRef] = field(default_factory=list)
    choices: list[str] | None = None
    answer: int | None = None
    target: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    group: str | None = None

    def cluster(self) -> str:
        if self.group:
            return self.group
        if self.audio:
            return self.audio[0].describe()
        return self.id


@dataclass
class Presentation:
    """How one sample is shown to the model: the choice order actually used.

    `permutation[i]` is the original index of the choice shown at position i.
    `key` identifies the model call (sample id, plus the rotation for circular).
    """

    key: str
    sample: Sample
    permutation: list[int] | None = None
    rotation: int | None = None

    @property
    def choices(self) -> list[str] | None:
        if self.sample.choices is None or self.permutation is None:
            return self.sample.choices
        return [self.sample.choices[i] for i in self.permutation]

    @property
    def gold(self) -> int | None:
        if self.sample.answer is None:
            return None
        if self.permutation is None:
            return self.sample.answer
        return self.permutation.index(self.sample.answer)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0

    def to_dict(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed}


ContentPart = dict[str, Any]  # {"type": "text", "text": str} | {"type": "audio", "audio": AudioRef}


@dataclass
class Request:
    """What an adapter sees: OpenAI-style chat messages plus generation settings."""

    key: str
    messages: list[dict[str, Any]]  # {"role": str, "content": list[ContentPart]}
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def audio(self) -> list[AudioRef]:
        return [p["audio"] for m in self.messages for p in m["content"] if p["type"] == "audio"]

    def text(self) -> str:
        """The text of the last user turn, for adapters that take a plain prompt."""
        users = [m for m in self.messages if m["role"] == "user"]
        return "\n".join(p["text"] for p in users[-1]["content"] if p["type"] == "text") if users else ""

    def rendered(self) -> list[dict[str, Any]]:
        """JSON-safe messages: audio parts become references, never bytes."""
        out = []
        for m in self.messages:
            parts = []
            for p in m["content"]:
                if p["type"] == "audio":
                    parts.append({"type": "audio", "audio": p["audio"].describe()})
                else:
                    parts.append(dict(p))
            out.append({"role": m["role"], "content": parts})
        return out


@dataclass
class Response:
    key: str
    text: str | None = None
    error: str | None = None
    latency_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # adapter-specific log fields (e.g. caption)


Capability = Literal["audio", "text", "multi_audio", "multi_turn_audio", "steer"]
