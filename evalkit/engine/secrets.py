"""What logs may show: credentials masked by value, every other setting visible. Imports nothing from evalkit.

One masking policy serves everyone (run.json, sample records, error messages, printed output):
  - `redact_args(config)`: an adapter's settings as logged (and hashed into the run id). SecretStr fields,
    fields and dict keys whose NAME is a credential name (`api_key`, `token`, `authorization`,
    `x-api-key`, `client_secret`, ...; see `is_credential_name`), URL userinfo and credential query
    parameters inside any string, and known secret values are masked. A setting that merely
    contains "key" or "token" in its name (`caption_max_tokens`, `max_tokens_param`, `api_key_env`,
    `eos_token`, `text_key`) is NOT a credential and keeps its value: masking it would also hide it
    from the run id, so changing it would silently resume the old run.
  - `mask_json(obj)`: the same rules for any JSON-like structure (adapter `info()`, headers dicts).
  - `mask_text(s)`: any string (an error message, a log line): known secret values (registered with
    `register_secret`, SecretStr fields seen by `redact_args`, the value of the variable an
    `*_key_env`-style setting names, and the values of environment variables whose names are
    credential names, e.g. $OPENAI_API_KEY, $HF_TOKEN), URL credentials and `Bearer ...` tokens.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

MASK = "***"
#: what pydantic's JSON dump writes for a SecretStr (nested inside a dict or list field)
_PYDANTIC_SECRET = "**********"
#: shorter values are not masked by value: replacing "abc" in every message would garble text
#: without protecting anything worth protecting
MIN_SECRET_CHARS = 8

# A name is split into lower-case words on punctuation and on a lower-to-upper case change
# ("x-api-key" -> x api key, "apiKey" -> api key, "OPENAI_API_KEY" -> openai api key).
_EXACT = {  # the whole name (words joined) is a credential name
    "key", "token", "apikey", "apitoken", "accesskey", "accesstoken", "authtoken", "authkey", "auth",
    "authorization", "proxyauthorization", "password", "passwd", "pwd", "pass", "secret", "secretkey",
    "clientsecret", "privatekey", "sig", "signature", "sas", "sastoken", "cookie", "setcookie",
    "sessiontoken", "refreshtoken", "idtoken", "bearer", "bearertoken", "credential", "credentials",
    "subscriptionkey", "ocpapimsubscriptionkey", "xapikey", "xgoogapikey", "xauthtoken", "xapitoken",
}
_LAST_WORD = {"secret", "password", "passwd", "credential", "credentials", "signature", "authorization",
              "cookie", "apikey"}
_LAST_TWO = {("api", "key"), ("access", "key"), ("secret", "key"), ("private", "key"), ("subscription", "key"),
             ("account", "key"), ("master", "key"), ("signing", "key"), ("auth", "key"), ("access", "token"),
             ("auth", "token"), ("api", "token"), ("bearer", "token"), ("refresh", "token"),
             ("session", "token"), ("id", "token"), ("sas", "token"), ("hf", "token"), ("hub", "token"),
             ("github", "token"), ("gh", "token"), ("client", "secret"), ("security", "token")}
#: environment variables: a name ending in one of these words holds a secret (OPENAI_API_KEY, HF_TOKEN,
#: AWS_SECRET_ACCESS_KEY, DB_PASSWORD); applied to variable names only, where the convention is firm
_ENV_LAST_WORD = {"key", "token", "secret", "password", "passwd", "pwd", "credentials", "pat"}

_registered: set[str] = set()
_registered_lock = threading.Lock()


def _words(name: str) -> list[str]:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_credential_name(name: str) -> bool:
    """True for the name of a setting, header, query parameter or dict key that holds a credential.

    >>> [n for n in ("api_key", "x-api-key", "Authorization", "access_token", "sig", "client_secret")
    ...  if is_credential_name(n)] == ["api_key", "x-api-key", "Authorization", "access_token", "sig",
    ...                                 "client_secret"]
    True
    >>> [n for n in ("caption_max_tokens", "max_tokens_param", "api_key_env", "eos_token", "text_key")
    ...  if is_credential_name(n)]
    []
    """
    words = _words(name)
    if not words:
        return False
    if "".join(words) in _EXACT or words[-1] in _LAST_WORD:
        return True
    return len(words) >= 2 and (words[-2], words[-1]) in _LAST_TWO


def _is_env_credential_name(name: str) -> bool:
    words = _words(name)
    return bool(words) and (words[-1] in _ENV_LAST_WORD or is_credential_name(name))


def register_secret(value: str | None) -> None:
    """Mask this value wherever `mask_text` / `redact_args` / `mask_json` later see it (an adapter's API
    key read from a variable of any name). Values shorter than MIN_SECRET_CHARS are ignored."""
    if isinstance(value, str) and len(value) >= MIN_SECRET_CHARS:
        with _registered_lock:
            _registered.add(value)


def secret_values() -> list[str]:
    """Every value masked by `mask_text`, longest first (so a secret containing another is masked whole)."""
    found = {v for k, v in os.environ.items() if len(v) >= MIN_SECRET_CHARS and _is_env_credential_name(k)}
    with _registered_lock:
        found |= _registered
    return sorted(found, key=len, reverse=True)


_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]{4,}")
# "api-key: VALUE", "token=VALUE", '"authorization": "Bearer x"' in free text (server error bodies echo them)
_NAMED_VALUE = re.compile(
    r"(?i)(?<![A-Za-z0-9_\-])((?:x-)?api[-_]?key|access[-_]?token|auth[-_]?token|authorization|api[-_]?token"
    r"|client[-_]?secret|password|token|key|sig)([\"']?\s*[:=]\s*[\"']?)(?!\*\*\*)([^\s\"'&,;}]+)")
# well-known key formats, masked even when the value was never registered (a server echoing someone's key)
_KEY_FORMATS = re.compile(r"\b(sk-(?:proj-|ant-)?|hf_|gh[pousr]_|xox[abpr]-|AIza)[A-Za-z0-9_\-]{16,}")


def _mask_query(query: str) -> str:
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(is_credential_name(k) for k, _ in pairs):
        return query
    for k, v in pairs:
        if is_credential_name(k):
            register_secret(v)
    return urlencode([(k, MASK if is_credential_name(k) and v else v) for k, v in pairs], safe="*")


def mask_url(url: str) -> str:
    """The URL with its userinfo (user and password: a user name can itself be a token) and every credential
    query / fragment parameter masked; everything else unchanged.

    >>> mask_url("https://me:pw@host:8443/v1?api-version=2024&api-key=abc")
    'https://***@host:8443/v1?api-version=2024&api-key=***'
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            for part in userinfo.split(":", 1):
                register_secret(part)
            netloc = MASK + "@" + host
        query, fragment = _mask_query(parts.query), _mask_query(parts.fragment)
        if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
            return url  # nothing to mask: byte for byte as given
        return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
    except ValueError:  # unparseable: keep only what cannot hold a credential
        return re.sub(r"[/@?#].*", "/" + MASK, url.split("://", 1)[-1]) if "://" in url else MASK


def _mask_values_and_urls(text: str) -> str:
    for value in secret_values():
        if value in text:
            text = text.replace(value, MASK)
    if "://" in text:
        text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    return _KEY_FORMATS.sub(lambda m: m.group(1) + MASK, text)


def mask_text(text: str) -> str:
    """`text` with every known secret value, URL credential, bearer token and credential-named value
    ("api-key: X", "token=X") masked. For free text: the runner applies it to error messages before they are
    written, adapters to anything a server echoes. Settings go through `redact_args` / `mask_json`, which do
    not apply the free-text patterns: two prompts differing only after "key=" must keep different run ids."""
    if not isinstance(text, str) or not text:
        return text
    text = _mask_values_and_urls(text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    return _NAMED_VALUE.sub(lambda m: m.group(1) + m.group(2) + MASK, text)


def mask_json(obj: Any, name: str | None = None) -> Any:
    """A JSON-like value as logs may show it: the value under a credential name masked (None stays None),
    known secret values, URL credentials and well-known key formats masked inside every string; keys, numbers
    and structure unchanged."""
    if name is not None and is_credential_name(name) and not isinstance(obj, (dict, list)):
        if isinstance(obj, str):
            register_secret(obj)  # from now on masked by value wherever it appears (SDK debug logs, errors)
        return None if obj is None else MASK
    if isinstance(obj, dict):
        return {k: mask_json(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_json(v) for v in obj]
    if isinstance(obj, str):
        return MASK if obj == _PYDANTIC_SECRET else _mask_values_and_urls(obj)
    return obj


class MaskingFilter(logging.Filter):
    """A logging filter that passes every record through `mask_text` (the HTTP client logs full request
    URLs at INFO, the SDK whole request bodies at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return True
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_FILTER = MaskingFilter()


def mask_logs(*prefixes: str) -> None:
    """Attach the masking filter to every logger existing now whose name is one of `prefixes` or below it
    (a logger's filters see only its own records, so each one gets it). Call after importing the library."""
    names = [n for n in list(logging.Logger.manager.loggerDict) if n.split(".", 1)[0] in prefixes]
    for name in set(names) | set(prefixes):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def _register_secrets_of(config: BaseModel) -> None:
    """SecretStr values anywhere in the config, and the value of the variable a `*_env` setting names when the
    rest of its name is a credential name (`api_key_env=OPENAI_API_KEY`, `token_env=MY_TOKEN`)."""
    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            register_secret(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for field, v in value:
                words = _words(field)
                if isinstance(v, str) and len(words) >= 2 and words[-1] == "env" and \
                        is_credential_name("_".join(words[:-1])):
                    register_secret(os.environ.get(v))
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple, set)):
            for v in value:
                walk(v)

    walk(config)


def redact_args(config: BaseModel) -> dict[str, Any]:
    """Adapter args as logged and hashed into the run id (JSON-safe): SecretStr fields and credentials (by
    name of the setting or dict key, inside URLs, by known value) masked, every other setting as given."""
    _register_secrets_of(config)
    out: dict[str, Any] = {}
    for name, value in config.model_dump(mode="json").items():
        attr = getattr(config, name, None)
        if isinstance(attr, SecretStr):
            out[name] = MASK if attr.get_secret_value() else None
        elif isinstance(attr, BaseModel):
            out[name] = redact_args(attr)
        else:
            out[name] = mask_json(value, name)
    return out


__all__ = ["MASK", "MaskingFilter", "is_credential_name", "mask_logs", "mask_json", "mask_text", "mask_url", "redact_args", "register_secret",
           "secret_values"]
