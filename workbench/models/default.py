"""The default model: GPT-2 124M when its weights are at hand, otherwise the bundled model."""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor, TimeoutError

import torch

from workbench.models.bundled import DEFAULT_BUNDLED
from workbench.models.gpt import GPT

GPT2_REPO = "openai-community/gpt2"
GET_GPT2 = (
    "To use GPT-2 124M, run once with network access: python -c \"import workbench; workbench.load_model('gpt2')\" "
    "(it is then cached), or pass --model /path/to/a/gpt2/directory."
)


def _gpt2_cached() -> bool:
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(GPT2_REPO, f), str) for f in ("config.json", "model.safetensors"))


def _hub_reachable(timeout: float) -> bool:
    """A TCP connection to the hub within `timeout` seconds (never hangs longer)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    host, _, port = endpoint.partition(":")

    def connect() -> bool:
        try:
            with socket.create_connection((host, int(port or 443)), timeout=timeout):
                return True
        except OSError:
            return False

    # A thread bounds the DNS lookup too, which socket timeouts do not cover.
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout)
    except TimeoutError:
        return False
    finally:
        pool.shutdown(wait=False)


def resolve_default_model(*, timeout: float = 3.0) -> tuple[str, str]:
    """(name, notice): "gpt2" if its weights are cached or the hub answers within `timeout`
    seconds (HF_HUB_OFFLINE=1 means it never asks), otherwise the bundled model."""
    if _gpt2_cached():
        return "gpt2", "Using GPT-2 124M (gpt2) from the local Hugging Face cache."
    if _hub_reachable(timeout):
        return "gpt2", "Using GPT-2 124M (gpt2), downloading it from the Hugging Face hub."
    return DEFAULT_BUNDLED, (
        f"GPT-2 weights are not cached and the Hugging Face hub is not reachable: using the bundled "
        f"model {DEFAULT_BUNDLED!r} (2 layers, trained on Tiny Shakespeare). {GET_GPT2}"
    )


def load_default_model(
    *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, verbose: bool = True
) -> GPT:
    """Load the model `resolve_default_model` picks; prints its notice unless `verbose=False`.

    Falls back to the bundled model if downloading GPT-2 fails part-way."""
    from workbench.errors import ModelNotFoundError
    from workbench.models.loading import load_model

    name, notice = resolve_default_model()
    try:
        model = load_model(name, device=device, dtype=dtype)
    except ModelNotFoundError:
        if name == DEFAULT_BUNDLED:
            raise
        name, notice = DEFAULT_BUNDLED, f"Could not get GPT-2: using the bundled model {DEFAULT_BUNDLED!r}. {GET_GPT2}"
        model = load_model(name, device=device, dtype=dtype)
    model.notice = notice
    if verbose:
        print(notice)
    return model
