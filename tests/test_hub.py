"""The hub is asked once, under a deadline: a hub that accepts connections and never answers costs
seconds, with one message; a hub that answers still serves GPT-2, and its files are then used offline.

Both hubs are local servers started by the tests; nothing here touches the real network."""

import hashlib
import http.server
import json
import logging
import socket
import threading
import time

import pytest

import workbench
from workbench.errors import ModelNotFoundError, WorkbenchError
from workbench.models import hub

# The target of issue 12: no usable hub costs at most this many seconds more than HF_HUB_OFFLINE=1.
EXTRA_S = 5.0


@pytest.fixture
def no_offline_flag(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE unset, also in huggingface_hub's import-time copy, and an empty HF cache."""
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


@pytest.fixture
def silent_hub(monkeypatch, no_offline_flag):
    """HF_ENDPOINT -> a local server that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    yield url
    server.close()
    for conn in held:
        conn.close()


def timed(fn, *, limit: float):
    """(result or exception, seconds) of fn(), run in a thread so that a hang fails the test after
    `limit` seconds instead of blocking it for minutes."""
    box = []

    def call():
        try:
            box.append(fn())
        except Exception as e:
            box.append(e)

    t = time.perf_counter()
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(limit)
    assert box, f"still waiting after {limit:g} s"
    return box[0], time.perf_counter() - t


def offline_seconds(monkeypatch, fn) -> tuple[object, float]:
    with monkeypatch.context() as m:
        m.setenv("HF_HUB_OFFLINE", "1")
        return timed(fn, limit=60)


def test_default_model_with_a_silent_hub_falls_back_within_seconds_with_one_notice(
        silent_hub, monkeypatch, capsys, caplog):
    load = lambda: workbench.load_default_model(device="cpu")  # noqa: E731
    offline_model, offline_s = offline_seconds(monkeypatch, load)
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        model, seconds = timed(load, limit=offline_s + EXTRA_S + 5)
    assert seconds <= offline_s + EXTRA_S, (seconds, offline_s)
    assert model.name == offline_model.name == "shakespeare-2l"
    out = capsys.readouterr()
    assert out.err == "" and out.out.count("\n") == 1, out  # one notice, nothing else
    assert f"the hub at {silent_hub} did not answer within" in out.out
    assert "using the bundled model 'shakespeare-2l'" in out.out
    assert not [r for r in caplog.records if r.name.startswith(("huggingface_hub", "httpx", "httpcore"))
                and r.levelno >= logging.WARNING]  # no retry warnings


def test_explicit_gpt2_with_a_silent_hub_fails_within_seconds_saying_what_was_tried(silent_hub, monkeypatch):
    load = lambda: workbench.load_model("gpt2", device="cpu")  # noqa: E731
    offline_error, offline_s = offline_seconds(monkeypatch, load)
    assert isinstance(offline_error, ModelNotFoundError)
    assert "HF_HUB_OFFLINE is set, so the hub was not asked" in str(offline_error)
    error, seconds = timed(load, limit=offline_s + EXTRA_S + 5)
    assert seconds <= offline_s + EXTRA_S, (seconds, offline_s)
    assert isinstance(error, WorkbenchError), error
    message = str(error)
    for part in ("cannot load 'gpt2' (openai-community/gpt2)",  # what
                 "not in the local HF cache", f"the hub at {silent_hub} did not answer within 3 s",  # tried
                 "run once with network access", "load_model('/path/to/gpt2')", "HF_HUB_OFFLINE=1",  # fixes
                 f"HF_ENDPOINT={silent_hub}"):
        assert part in message, (part, message)


def test_probe_is_an_http_request_not_a_tcp_connect(silent_hub):
    """The old probe, a bare TCP connect, passed on this server; an HTTP request must not."""
    with socket.create_connection(("127.0.0.1", int(silent_hub.rsplit(":", 1)[1])), timeout=1):
        pass  # the server does accept
    problem, seconds = timed(lambda: hub.hub_problem("gpt2", timeout=1.0), limit=5)
    assert problem is not None and "did not answer within 1 s" in problem
    assert seconds < 2.5


def test_refused_connection_is_reported_at_once(no_offline_flag, monkeypatch):
    with socket.socket() as s:  # a free port, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    problem, seconds = timed(lambda: hub.hub_problem("gpt2"), limit=10)
    assert "could not be reached" in problem and seconds < hub.HUB_TIMEOUT


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Just enough of the hub's /resolve/ endpoint for hf_hub_download: HEAD with the commit and etag
    headers, GET with the bytes."""
    files: dict[str, bytes] = {}

    def _answer(self, body: bool):
        name = self.path.rsplit("/", 1)[-1]
        if "/resolve/main/" not in self.path or name not in self.files:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def log_message(self, *args):
        pass


def test_a_hub_that_answers_serves_gpt2_and_the_cache_is_used_offline_afterwards(
        no_offline_flag, monkeypatch, tiny_model_dir):
    FakeHub.files = {f: (tiny_model_dir / f).read_bytes() for f in ("config.json", "model.safetensors")}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert workbench.resolve_default_model()[0] == "gpt2"
        model = workbench.load_model("gpt2", device="cpu")
    finally:
        server.shutdown()
        server.server_close()
    reference = workbench.load_model(tiny_model_dir, device="cpu")
    assert json.loads((hub.cached("gpt2") / "config.json").read_text()) == json.loads(FakeHub.files["config.json"])
    for key, value in reference.state_dict().items():
        assert value.equal(model.state_dict()[key]), key
    # the hub is gone; offline, the cached files load and the default is GPT-2 from the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert workbench.resolve_default_model() == ("gpt2", "Using GPT-2 124M (gpt2) from the local Hugging Face cache.")
    again = workbench.load_model("gpt2", device="cpu")
    assert all(v.equal(again.state_dict()[k]) for k, v in reference.state_dict().items())
