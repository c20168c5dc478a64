"""The adapter contract: one required method, batched `generate`.

An adapter reads like a page: a typed `Config` (pydantic, extra="forbid", so a
typo in `-M key=value` fails at load), declared `capabilities` (the runner
refuses impossible pairings before any work starts), and `generate`.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from evalkit.types import Presentation, Request, Response


class AdapterConfig(BaseModel):
    """Base for adapter configs. Fields typed SecretStr never reach logs."""

    model_config = ConfigDict(extra="forbid")


class Model:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: "audio": accepts audio parts; "text": accepts text-only requests;
    #: "multi_audio": more than one audio part per request; "multi_turn_audio": a conversation whose
    #: earlier turns (assistant replies included) reach the model and whose later user turns carry audio
    #: too (what --strategy relisten sends; implies "multi_audio").
    #: "steer": the steering protocol of --strategy steer (evalkit.models.hf_common.Steerable:
    #: decoder_layers, hidden_size, last_token_activations, steering).
    capabilities: ClassVar[frozenset[str]] = frozenset({"text"})
    Config: ClassVar[type[AdapterConfig]] = AdapterConfig
    #: rate the runner decodes audio to before `generate` (None: native rate)
    sample_rate: ClassVar[int | None] = 16000
    default_batch_size: ClassVar[int] = 8
    #: how much of each clip the model hears, for the long-audio accounting (records carry
    #: `extra.audio_seconds` and `extra.audio_seconds_fed`; run.json `long_audio` counts truncations):
    #: "all" (every second is heard: windows, chunks, an API taking the file); "reported" (the adapter
    #: measures it where audio is cut and puts `audio_seconds_fed` in each response's extra); None: unknown
    audio_fed: ClassVar[str | None] = None
    #: for `evalkit list models`
    source: ClassVar[str] = ""

    def __init__(self, config: AdapterConfig):
        self.config = config

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Model:
        return cls(cls.Config(**args))

    @classmethod
    def capabilities_for(cls, config: AdapterConfig) -> frozenset[str]:
        """The capabilities an instance built from `config` will have, known without building it (no weights
        loaded), so that an impossible pairing is refused before any work. Default: the class's."""
        return cls.capabilities

    @classmethod
    def preflight(cls, config: AdapterConfig) -> None:
        """Cheap checks of the arguments alone (no weights, no network), run when a run starts, before any
        data loads: an adapter that cannot run at all says so first. Raise with a message naming the argument."""

    @classmethod
    def check_protocol(cls, config: AdapterConfig, choices: str,
                       presentations: list[Presentation] | None = None) -> None:
        """Refuse a choice protocol this adapter cannot answer faithfully, before any request is made.

        Called by the runner once the task's presentations are known: `choices` is the run's
        --choices mode ("original" for tasks without options) and `presentations` the choice order
        each selected request will show. An adapter whose answers refer to an order fixed elsewhere
        (predictions made outside evalkit refer to the upstream order) raises ValueError naming the
        fix, instead of letting its letters be read against another order. Default: any protocol."""

    def generate(self, requests: list[Request]) -> list[Response]:
        """One Response per Request, same keys. A failure of one request should be a
        Response with `error` set, not an exception (an exception fails the batch)."""
        raise NotImplementedError

    def generate_stream(self, requests: list[Request]) -> Iterator[Response]:
        """The same responses as `generate`, each yielded as soon as it is ready (any order). The
        runner logs every response as it arrives, so a crash loses only the requests in flight:
        adapters that answer requests concurrently (network backends) override this; the default
        answers the batch at once."""
        yield from self.generate(requests)

    def info(self) -> dict[str, Any]:
        """Resolved identity for run.json (hub id, revision, dtype...), no secrets."""
        return {}

    def close(self) -> None:
        pass


def single_audio(request: Request):
    """The one audio clip of a request, for adapters without the "multi_audio" capability:
    a second clip is refused rather than silently dropped."""
    parts = request.audio()
    if len(parts) != 1:
        raise ValueError(f"this adapter takes exactly one audio clip per request; got {len(parts)}")
    return parts[0]


