"""Checks of the options the methods share: each bad value is an `InputError` that names the option,
says what it got and what is allowed."""

from __future__ import annotations

import operator
from typing import Any

from torch import Tensor

from workbench.errors import InputError


def shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def as_index(value: Any, what: str) -> int:
    """An integer index (int, or a NumPy / 0-d tensor integer); bools and floats are refused."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise InputError(f"{what} must be an integer, got {shown(value)}")


def as_index_list(values: Any, what: str, item: str) -> list[int]:
    """A list, tuple, range or 1-d tensor of integer indices (`what` names the option, `item` one entry)."""
    if isinstance(values, (str, bytes, dict, set)) or not hasattr(values, "__iter__") or (
        isinstance(values, Tensor) and values.ndim != 1
    ):
        raise InputError(f"{what} must be a list of {item} indices, got {shown(values)}")
    return [as_index(v, f"each of {what}") for v in values]


def check_seed(seed: Any) -> int:
    return as_index(seed, "seed")


def check_sweep_options(max_batch: Any, progress: Any) -> None:
    """`max_batch`: None or a positive integer; `progress`: True, False or a callable(done, total)."""
    if max_batch is not None and (as_index(max_batch, "max_batch") < 1):
        raise InputError(f"max_batch must be a positive number of sequences per forward or None, got {max_batch}")
    if not isinstance(progress, bool) and not callable(progress):
        raise InputError(
            f"progress must be True (a console bar), False (none) or a callable progress(done, total), "
            f"got {shown(progress)}"
        )


def check_per_prompt(metric: Any, per_prompt: Any, groups: Any, batch: int) -> list[str] | None:
    """`per_prompt` a bool, and when True a metric with per-prompt values (not a plain callable);
    `groups` None or one label per prompt (and only with per_prompt). Returns the labels as strings."""
    from workbench.methods.metrics import no_per_prompt_message

    if not isinstance(per_prompt, bool):
        raise InputError(f"per_prompt must be True or False, got {shown(per_prompt)}")
    if per_prompt and not metric.has_per_prompt:
        raise InputError(no_per_prompt_message(metric.name))
    if groups is not None and not per_prompt:
        raise InputError("groups label prompts for per-group results: pass per_prompt=True with them")
    return check_groups(groups, batch)


def check_groups(groups: Any, batch: int) -> list[str] | None:
    """`groups` None or one label per prompt; returns the labels as strings."""
    if groups is None:
        return None
    if isinstance(groups, (str, bytes)) or not hasattr(groups, "__len__") or len(groups) != batch:
        raise InputError(f"groups must be one label per prompt ({batch}), got {shown(groups)}")
    return [str(g) for g in groups]
