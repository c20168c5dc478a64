"""Secrets are masked by value wherever they appear; settings are never masked (evalkit.engine.secrets)."""
from __future__ import annotations

import json
import logging

import pytest
from pydantic import SecretStr

from evalkit.engine.secrets import (
    MASK,
    is_credential_name,
    mask_json,
    mask_text,
    mask_url,
    redact_args,
    register_secret,
)
from evalkit.models.base import AdapterConfig


# ---- names ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "api_key", "apiKey", "API-KEY", "x-api-key", "X-Goog-Api-Key", "Authorization", "Proxy-Authorization",
    "access_token", "token", "key", "sig", "signature", "client_secret", "password", "hf_token",
    "aws_secret_access_key", "Ocp-Apim-Subscription-Key", "openai_api_key", "refresh_token", "cookie"])
def test_credential_names(name):
    assert is_credential_name(name)


@pytest.mark.parametrize("name", [
    "caption_max_tokens", "max_tokens_param", "api_key_env", "max_tokens", "eos_token", "pad_token_id",
    "text_key", "cache_key", "sort_key", "keywords", "tokenizer", "num_tokens", "monkey", "model", "base_url",
    "reasoning_effort", "secretary"])
def test_setting_names_that_are_not_credentials(name):
    assert not is_credential_name(name)


# ---- settings: masked by value and by credential name, every other setting visible ------------
class Inner(AdapterConfig):
    token: SecretStr | None = None
    eos_token: str = "</s>"


class Config(AdapterConfig):
    model: str = "m"
    api_key: SecretStr | None = None
    api_key_env: str = "OPENAI_API_KEY"
    caption_max_tokens: int = 512
    max_tokens_param: str = "max_tokens"
    base_url: str = "http://127.0.0.1:8000/v1"
    headers: dict[str, str] = {}
    extra_body: dict = {}
    keys: dict[str, SecretStr] = {}
    inner: Inner = Inner()


def test_redact_args_masks_secrets_and_keeps_settings(monkeypatch):
    monkeypatch.setenv("EVALKIT_TEST_VAR_WITH_ODD_NAME", "value-of-odd-var-1234")
    c = Config(api_key="sk-fieldsecret-0001", api_key_env="EVALKIT_TEST_VAR_WITH_ODD_NAME", caption_max_tokens=64,
               base_url="https://bob:hunter22xx@gw.example:8443/v1?api-version=2024-06-01&api-key=q-secret-0001",
               headers={"Authorization": "Bearer b-secret-0001", "x-api-key": "h-secret-0001", "X-Trace": "t1"},
               extra_body={"reasoning_effort": "low", "api_key": "e-secret-0001",
                           "metadata": {"access_token": "n-secret-0001", "note": "uses value-of-odd-var-1234"}},
               keys={"a": "k-secret-0001"}, inner=Inner(token="i-secret-0001"))
    out = redact_args(c)
    assert out == {
        "model": "m", "api_key": MASK, "api_key_env": "EVALKIT_TEST_VAR_WITH_ODD_NAME", "caption_max_tokens": 64,
        "max_tokens_param": "max_tokens",
        "base_url": "https://***@gw.example:8443/v1?api-version=2024-06-01&api-key=***",
        "headers": {"Authorization": MASK, "x-api-key": MASK, "X-Trace": "t1"},
        # the value of the variable api_key_env names is a secret wherever it appears
        "extra_body": {"reasoning_effort": "low", "api_key": MASK,
                       "metadata": {"access_token": MASK, "note": "uses ***"}},
        "keys": {"a": MASK}, "inner": {"token": MASK, "eos_token": "</s>"}}
    # ... and in free text from then on (an error message echoing it)
    assert mask_text("field sk-fieldsecret-0001, inner i-secret-0001") == "field ***, inner ***"
    assert redact_args(Config(api_key=None)) ["api_key"] is None


def test_caption_max_tokens_changes_the_logged_args():
    """The setting that a name-based mask hid (so 64 vs 512 kept one run id): now visible and different."""
    from evalkit.models.cascade import CascadeConfig

    spec = {"name": "openai", "args": {"model": "m", "base_url": "http://127.0.0.1:9/v1"}}
    a = redact_args(CascadeConfig(captioner=spec, llm=spec, caption_max_tokens=64))
    b = redact_args(CascadeConfig(captioner=spec, llm=spec, caption_max_tokens=512))
    assert a["caption_max_tokens"] == 64 and b["caption_max_tokens"] == 512 and a != b
    assert a["captioner"]["args"]["model"] == "m"


def test_mask_url():
    assert mask_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert mask_url("https://tok3n@h/x") == "https://***@h/x"  # a bare user name can be a token itself
    assert mask_url("https://h/x?key=AIzaXYZ&alt=json") == "https://h/x?key=***&alt=json"
    assert mask_url("https://h/blob?sv=2021&sig=abc%2Fdef&se=1") == "https://h/blob?sv=2021&sig=***&se=1"
    assert mask_url("https://h/cb#access_token=zzz&state=1") == "https://h/cb#access_token=***&state=1"
    assert mask_url("https://h/x?max_tokens=5&token_budget=3") == "https://h/x?max_tokens=5&token_budget=3"


def test_mask_text_free_text(monkeypatch):
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "env-token-value-42")
    monkeypatch.setenv("SOME_SETTING", "not-a-secret-value")
    register_secret("abc")  # too short to mask by value: would garble text
    text = ("401 from http://u:p@h/v1?api-key=Q1 (Bearer zzzzzz) api-key: AAA token=BBB env-token-value-42 "
            "not-a-secret-value sk-proj-abcdefghijklmnopqrstuvwxyz max_tokens=512 abc")
    assert mask_text(text) == ("401 from http://***@h/v1?api-key=*** (Bearer ***) api-key: *** token=*** *** "
                               "not-a-secret-value sk-proj-*** max_tokens=512 abc")
    assert mask_json({"Authorization": None, "n": 3, "l": ["env-token-value-42"]}) == {
        "Authorization": None, "n": 3, "l": [MASK]}


# ---- a real run: secrets planted everywhere, found nowhere -------------------------------------
SECRETS = {
    "key": "KEYSECRET-0123456789",
    "urlpass": "URLPASSSECRET-0123",
    "urluser": "URLUSERSECRET-0123",
    "query": "QUERYSECRET-0123456",
    "header": "HEADERSECRET-012345",
    "body": "BODYSECRET-01234567",
    "nested": "NESTEDSECRET-012345",
}


def test_real_run_leaks_no_secret(toy, tmp_path, monkeypatch, capfd, caplog):
    pytest.importorskip("openai")
    from fake_openai_server import FakeOpenAIServer, Fault, text_of

    from evalkit.engine.runner import RunSpec, run_task

    caplog.set_level(logging.DEBUG)
    # a variable whose name says nothing: only the adapter's api_key_env knows it holds the key
    monkeypatch.setenv("EVALKIT_CREDS", SECRETS["key"])

    def faults(i, body):  # a hostile server echoing every credential it saw back in an error
        if "Question 3?" in text_of(body):
            return Fault(400, "rejected: " + " ".join(SECRETS.values()) + f" Bearer {SECRETS['key']}")
        return None

    with FakeOpenAIServer(reply=lambda body: "The answer is (A).", faults=faults) as srv:
        host = srv.url.split("://", 1)[1]
        url = (f"http://{SECRETS['urluser']}:{SECRETS['urlpass']}@{host}"
               f"?api-version=2024-06-01&api-key={SECRETS['query']}")
        args = {"base_url": url, "model": "fake-model", "api_key_env": "EVALKIT_CREDS", "timeout_s": 10,
                "max_retries": 0, "headers": {"x-api-key": SECRETS["header"], "X-Trace": "visible-header"},
                "extra_body": {"reasoning_effort": "low", "api_key": SECRETS["body"],
                               "metadata": {"access_token": SECRETS["nested"]}}}
        res = run_task(RunSpec(model="openai", task="toy-mcq", model_args=args,
                               task_args={"data": str(toy / "toy.json")}, limit=6, output=tmp_path / "runs"))
        received = list(srv.received)
    # the credentials did reach the server (the run really used them)
    assert len(received) == 6
    assert all(r.query == f"api-version=2024-06-01&api-key={SECRETS['query']}" for r in received)
    assert all(r.headers["x-api-key"] == SECRETS["header"] for r in received)
    assert all(r.body["api_key"] == SECRETS["body"] for r in received)
    records = [json.loads(line) for line in (res.run_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["error"] is not None for r in records].count(True) == 1  # the hostile reply is on record...
    assert "rejected: ***" in next(r["error"] for r in records if r["error"])  # ...masked
    # every file the run wrote, everything printed or logged
    out, err = capfd.readouterr()
    blob = "\n".join([p.read_text(errors="replace") for p in res.run_dir.rglob("*") if p.is_file()]
                     + [out, err, caplog.text, json.dumps(res.run)])
    leaked = [name for name, value in SECRETS.items() if value in blob]
    assert not leaked, f"secrets found in the run's output: {leaked}"
    # ...while every setting stays visible
    logged = res.run["model"]["args"]
    assert logged["api_key_env"] == "EVALKIT_CREDS" and logged["max_tokens_param"] == "max_tokens"
    assert logged["base_url"] == f"http://***@{host}?api-version=2024-06-01&api-key=***"
    assert logged["headers"] == {"x-api-key": MASK, "X-Trace": "visible-header"}
    assert logged["extra_body"] == {"reasoning_effort": "low", "api_key": MASK, "metadata": {"access_token": MASK}}
