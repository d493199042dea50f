"""The default model: GPT-2 124M when its weights are at hand, otherwise the bundled model."""

from __future__ import annotations

import torch

from workbench.models import hub
from workbench.models.bundled import DEFAULT_BUNDLED
from workbench.models.gpt import GPT

GET_GPT2 = (
    "To use GPT-2 124M, run once with network access: python -c \"import workbench; workbench.load_model('gpt2')\" "
    "(it is then cached), or pass --model /path/to/a/gpt2/directory."
)


def _gpt2_cached() -> bool:
    return hub.cached("gpt2") is not None


def resolve_default_model(*, timeout: float = hub.HUB_TIMEOUT, get_gpt2: str = GET_GPT2) -> tuple[str, str]:
    """(name, notice): "gpt2" if its weights are cached or the hub answers an HTTP request within
    `timeout` seconds (HF_HUB_OFFLINE=1 means it never asks), otherwise the bundled model.
    `get_gpt2`: how to get GPT-2, ending the bundled model's notice (the dashboard names its own ways)."""
    if _gpt2_cached():
        return "gpt2", "Using GPT-2 124M (gpt2) from the local Hugging Face cache."
    if (problem := hub.hub_problem("gpt2", timeout=timeout)) is None:
        return "gpt2", "Using GPT-2 124M (gpt2), downloading it from the Hugging Face hub."
    return DEFAULT_BUNDLED, (
        f"GPT-2 weights are not in the local Hugging Face cache and {problem}: using the bundled model "
        f"{DEFAULT_BUNDLED!r} (2 layers, trained on Tiny Shakespeare). {get_gpt2}"
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
    except ModelNotFoundError as e:
        if name == DEFAULT_BUNDLED:
            raise
        name, notice = DEFAULT_BUNDLED, f"{e}. Using the bundled model {DEFAULT_BUNDLED!r} instead."
        model = load_model(name, device=device, dtype=dtype)
    model.notice = notice
    if verbose:
        print(notice)
    return model
