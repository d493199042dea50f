"""What a cache will hold, before running it: each activation's shape and the memory it keeps alive.

One source: a forward pass of a copy of the model on the meta device (no memory, no compute) with
every hook point recording what passes through it. Shapes, and which activations share one
buffer (q, k and v are views of one fused buffer; resid_pre of block l + 1 is resid_post of block l;
pos_embed is broadcast over the batch), are read off those tensors, so they follow the model's code
instead of a table kept beside it. Cached per (model class, config, batch, pos).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ActivationInfo:
    """One hook point's activation for a [batch pos] input: its shape, the buffer holding it
    (activations with the same `buffer` share storage) and that buffer's size in elements."""

    shape: tuple[int, ...]
    buffer: int
    buffer_elements: int


def activation_layout(model: nn.Module, batch: int, pos: int) -> dict[str, ActivationInfo]:
    """Every hook point's `ActivationInfo` for a [batch pos] input, in forward order.

    `model` is a `HookedRootModule` built from its config alone (`type(model)(model.cfg)`)."""
    return _layout(type(model), model.cfg, batch, pos)


def cache_bytes(model: nn.Module, batch: int, pos: int, names: Iterable[str], itemsize: int) -> int:
    """Bytes of distinct storage that caching `names` on a [batch pos] input keeps alive."""
    layout = activation_layout(model, batch, pos)
    held = {layout[n].buffer: layout[n].buffer_elements for n in names}
    return sum(held.values()) * itemsize


@functools.lru_cache(maxsize=8)
def _meta_twin(cls: type, cfg) -> nn.Module:
    with torch.device("meta"):
        return cls(cfg)


@functools.lru_cache(maxsize=64)
def _layout(cls: type, cfg, batch: int, pos: int) -> dict[str, ActivationInfo]:
    twin = _meta_twin(cls, cfg)
    seen: dict[str, Tensor] = {}

    def record(x: Tensor, hook) -> None:
        seen[hook.name] = x  # kept alive, so storage identities stay distinct until read

    tokens = torch.zeros(batch, pos, dtype=torch.long, device="meta")
    with torch.no_grad(), twin.hooks(fwd_hooks=[(lambda name: True, record)]):
        twin.forward(tokens)  # ids on the meta device: nothing to check, nothing to compute
    buffers: dict[int, int] = {}
    return {
        name: ActivationInfo(
            shape=tuple(x.shape),
            buffer=buffers.setdefault(x.untyped_storage()._cdata, len(buffers)),
            buffer_elements=x.untyped_storage().nbytes() // x.element_size(),
        )
        for name, x in seen.items()
    }
