"""Default model resolution: GPT-2 when at hand, else the bundled model; never hangs on the network."""

import socket
import time

import workbench
from workbench.models import default


def test_offline_without_cache_picks_bundled_model_and_says_how_to_get_gpt2(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(default, "_gpt2_cached", lambda: False)
    name, notice = workbench.resolve_default_model()
    assert name == "shakespeare-2l"
    assert "shakespeare-2l" in notice and "load_model('gpt2')" in notice


def test_cached_gpt2_is_preferred(monkeypatch):
    monkeypatch.setattr(default, "_gpt2_cached", lambda: True)
    assert workbench.resolve_default_model()[0] == "gpt2"


def test_unreachable_hub_is_detected_quickly(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")  # nothing listens there
    monkeypatch.setattr(default, "_gpt2_cached", lambda: False)
    t = time.time()
    assert workbench.resolve_default_model()[0] == "shakespeare-2l"
    assert time.time() - t < 3


def test_a_hanging_network_is_cut_off_at_the_timeout(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(default, "_gpt2_cached", lambda: False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(30))
    t = time.time()
    assert workbench.resolve_default_model(timeout=1.0)[0] == "shakespeare-2l"
    assert time.time() - t < 2.5
