"""GPT-2 weights from the Hugging Face hub or its local cache, with every network wait bounded.

A hub that accepts connections and never answers (a captive portal, a stalled proxy) must cost seconds,
not minutes: when no file is cached, `hf_hub_download` retries a request that timed out for minutes
(recent huggingface_hub versions retry a 60 s metadata request five times). So the hub is asked once, with an HTTP
request under a hard deadline (`hub_problem`), and only a hub that answered is asked for files.

The environment is read at each call, not at import: `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`)
means never ask, `HF_ENDPOINT` is the hub's address, `HF_HUB_CACHE` / `HF_HOME` the cache.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from workbench.errors import ModelNotFoundError

HUB_TIMEOUT = 3.0  # seconds for the hub to answer one HEAD request, DNS and connection included
FILES = ("config.json", "model.safetensors")
TRUE = ("1", "true", "yes", "on")


def repo_of(name: str) -> str:
    """The hub repository of a GPT-2 size: "gpt2" -> "openai-community/gpt2"."""
    return f"openai-community/{name}"


def endpoint() -> str:
    """The hub's address: HF_ENDPOINT as set now, else what huggingface_hub read at import."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now; unset, what huggingface_hub read at import."""
    from huggingface_hub import constants

    values = [os.environ.get(v) for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(v)]
    if values:
        return any(v.strip().lower() in TRUE for v in values)
    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def cached(name: str) -> Path | None:
    """The cached snapshot folder holding config.json and model.safetensors of `name`, or None.
    Reads the local cache only."""
    from huggingface_hub import try_to_load_from_cache

    paths = [try_to_load_from_cache(repo_of(name), f) for f in FILES]
    return Path(paths[0]).parent if all(isinstance(p, str) for p in paths) else None


def hub_problem(name: str = "gpt2", *, timeout: float = HUB_TIMEOUT) -> str | None:
    """None if the hub answers a HEAD request for `name`'s config.json with an HTTP status below 400
    within `timeout` seconds; otherwise what went wrong, as a phrase for a message.

    A real HTTP request, not a TCP connect: a server that accepts and stays silent does not pass. The
    request runs in a daemon thread, so the deadline covers DNS as well and nothing waits on it later."""
    if offline():
        return "HF_HUB_OFFLINE is set, so the hub was not asked"
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import get_session

    hub = endpoint()
    url = hf_hub_url(repo_of(name), FILES[0], endpoint=hub)
    outcome: list[str | None] = []
    silent = f"the hub at {hub} did not answer within {timeout:g} s (one HEAD request for {url})"

    def ask() -> None:
        try:
            code = get_session().request("HEAD", url, timeout=timeout).status_code
            outcome.append(None if code < 400 else f"the hub at {hub} answered HTTP {code} to HEAD {url}")
        except Exception as e:  # DNS, refused, reset, TLS, timeout: all mean "no usable hub"
            # the client's own timeout can fire just before the join below gives up: same meaning
            timed_out = "timeout" in type(e).__name__.lower()
            outcome.append(silent if timed_out else f"the hub at {hub} could not be reached ({type(e).__name__}: {e})")

    thread = threading.Thread(target=ask, name="workbench-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else silent


def unavailable(name: str, problem: str) -> str:
    """The message for `name` neither cached nor downloadable: what was tried and how to fix it."""
    fixes = [
        "run once with network access to download it (it is cached afterwards)",
        f"or pass a local directory with config.json and model.safetensors: load_model('/path/to/{name}')",
    ]
    if offline():
        fixes.append("or unset HF_HUB_OFFLINE to let workbench download it")
    else:
        fixes.append("or set HF_HUB_OFFLINE=1 to use only cached and local models without asking the hub")
        if os.environ.get("HF_ENDPOINT"):
            fixes.append(f"and check HF_ENDPOINT={os.environ['HF_ENDPOINT']}")
    return (f"cannot load {name!r} ({repo_of(name)}): it is not in the local HF cache ({cache_dir()}), "
            f"and {problem}. To fix: {'; '.join(fixes)}")


def download(name: str, *, timeout: float = HUB_TIMEOUT, etag_timeout: float = 10.0) -> Path:
    """The folder with config.json and model.safetensors of GPT-2 size `name`: the local cache if it
    holds both (no network), else the hub once it has answered a probe within `timeout` seconds.

    Raises ModelNotFoundError saying what was tried and how to fix it."""
    if (folder := cached(name)) is not None:
        return folder
    if (problem := hub_problem(name, timeout=timeout)) is not None:
        raise ModelNotFoundError(unavailable(name, problem))
    from huggingface_hub import hf_hub_download

    try:
        paths = [hf_hub_download(repo_of(name), f, endpoint=endpoint(), etag_timeout=etag_timeout) for f in FILES]
    except Exception as e:  # HTTP error, a download cut off, a hub that stalled after answering
        problem = f"the hub at {endpoint()} answered, but the download failed ({type(e).__name__}: {e})"
        raise ModelNotFoundError(unavailable(name, problem)) from None
    return Path(paths[0]).parent
