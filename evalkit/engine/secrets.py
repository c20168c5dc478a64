"""What the logs may show of an adapter's settings: secrets masked. Imports nothing from evalkit."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SecretStr


def redact_args(config: BaseModel) -> dict[str, Any]:
    """Adapter args as logged (JSON-safe): SecretStr values and key-like names are masked."""
    secret = {name for name, value in config if isinstance(value, SecretStr)}
    out: dict[str, Any] = {}
    for name, value in config.model_dump(mode="json").items():
        if name in secret or any(s in name.lower() for s in ("key", "token", "secret", "password")):
            out[name] = "***" if value else None
        elif isinstance(getattr(config, name), BaseModel):
            out[name] = redact_args(getattr(config, name))
        else:
            out[name] = value
    return out
