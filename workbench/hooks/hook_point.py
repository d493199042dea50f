"""`HookPoint`: an identity module that hooks can read, cache or overwrite.

A forward hook is `fn(activation, hook) -> Tensor | None`; returning a tensor replaces the
activation (TransformerLens semantics). A backward hook has the same signature and receives the
gradient of the activation; returning a tensor replaces that gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from workbench.errors import HookShapeError, HookTypeError, HookUsageError
from workbench.hooks.names import layer_of

HookFn = Callable[..., "Tensor | None"]
Direction = Literal["fwd", "bwd"]


class HookPoint(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""  # set by HookedRootModule.setup_hooks
        self.fwd_hooks: list[HookFn] = []
        self.bwd_hooks: list[HookFn] = []

    @property
    def has_hooks(self) -> bool:
        return bool(self.fwd_hooks or self.bwd_hooks)

    def add_hook(self, fn: HookFn, dir: Direction = "fwd") -> Callable[[], None]:
        """Attach `fn`; returns a function that detaches exactly this attachment."""
        hooks = self._hooks_for(dir)
        hooks.append(fn)

        def remove() -> None:
            for i, h in enumerate(hooks):
                if h is fn:
                    del hooks[i]
                    return

        return remove

    def remove_hooks(self, dir: Literal["fwd", "bwd", "both"] = "both") -> None:
        if dir in ("fwd", "both"):
            self.fwd_hooks.clear()
        if dir in ("bwd", "both"):
            self.bwd_hooks.clear()

    def _hooks_for(self, dir: str) -> list[HookFn]:
        if dir == "fwd":
            return self.fwd_hooks
        if dir == "bwd":
            return self.bwd_hooks
        raise HookUsageError(f"hook direction must be 'fwd' or 'bwd', got {dir!r}")

    def layer(self) -> int | None:
        """The block index this hook point lives in (None outside the blocks)."""
        return layer_of(self.name)

    def forward(self, x: Tensor) -> Tensor:
        for fn in self.fwd_hooks:
            out = fn(x, hook=self)
            if out is not None:
                x = self._checked(out, x, fn)
        if self.bwd_hooks and x.requires_grad:
            for fn in self.bwd_hooks:
                x.register_hook(self._grad_hook(fn))
        return x

    def _grad_hook(self, fn: HookFn) -> Callable[[Tensor], Tensor | None]:
        def run(grad: Tensor) -> Tensor | None:
            out = fn(grad, hook=self)
            return None if out is None else self._checked(out, grad, fn, what="gradient")

        return run

    def _checked(self, out: object, like: Tensor, fn: HookFn, what: str = "activation") -> Tensor:
        name = getattr(fn, "__name__", repr(fn))
        if not isinstance(out, torch.Tensor):
            raise HookTypeError(
                f"hook {name!r} on {self.name!r} returned {type(out).__name__}; "
                f"a hook must return None or a Tensor shaped like the {what} {tuple(like.shape)}"
            )
        if out.shape != like.shape:
            raise HookShapeError(
                f"hook {name!r} on {self.name!r} returned shape {tuple(out.shape)}, "
                f"but the {what} has shape {tuple(like.shape)}"
            )
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}"
