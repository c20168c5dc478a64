"""Offline hub access fails in seconds and names the download command (not minutes of client retries)."""
from __future__ import annotations

import socket
import time

import pytest

from evalkit import hub


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    hub.hub_reachable.cache_clear()
    yield
    hub.hub_reachable.cache_clear()


def test_reachable_follows_the_endpoint(monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub.hub_reachable() is True
    listener.close()
    hub.hub_reachable.cache_clear()
    t0 = time.perf_counter()
    assert hub.hub_reachable() is False  # nothing listens there now
    assert time.perf_counter() - t0 < 5


def test_offline_variables_mean_unreachable(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_reachable() is False


def test_unreachable_hub_loads_from_the_cache_only_and_names_the_command(monkeypatch):
    from evalkit.models import hf_common as hc

    monkeypatch.setattr(hc, "hub_reachable", lambda: False)
    seen = {}

    class Loader:
        @staticmethod
        def from_pretrained(source, **kw):
            seen.update(kw)
            raise OSError("not in the cache")

    with pytest.raises(hc.HFLoadError) as e:
        hc.load_pretrained(Loader, "org/model", what="model", hub_id="org/model", revision="0123abc",
                           trust_remote_code=None, local_path=False)
    assert seen["local_files_only"] is True  # no network round trips to wait for
    msg = str(e.value)
    assert "hf download org/model --revision 0123abc" in msg and "HF_HUB_OFFLINE=1" in msg and "-M path=" in msg
