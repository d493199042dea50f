"""`HookPoint`: an identity module that hooks can read, cache or overwrite.

A forward hook is `fn(activation, hook) -> Tensor | None`; returning a tensor replaces the
activation (TransformerLens semantics). A backward hook has the same signature and receives the
gradient of the activation; returning a tensor replaces that gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from workbench.errors import HookShapeError, HookTypeError, HookUsageError
from workbench.hooks.names import layer_of

HookFn = Callable[..., "Tensor | None"]
Direction = Literal["fwd", "bwd"]


@dataclass(frozen=True, eq=False)
class Hook:
    """One attachment of a hook function: permanent hooks survive `reset_hooks()` unless asked;
    `level` is the `model.hooks(...)` context that attached it (None outside any)."""

    fn: HookFn
    is_permanent: bool = False
    level: int | None = None

    def matches(self, including_permanent: bool, level: int | None) -> bool:
        return (including_permanent or not self.is_permanent) and (level is None or self.level == level)


class HookPoint(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""  # set by HookedRootModule.setup
        self.fwd_hooks: list[Hook] = []
        self.bwd_hooks: list[Hook] = []
        self.ctx: dict = {}  # scratch space for hooks (TransformerLens's hook.ctx); cleared by reset_hooks

    @property
    def has_hooks(self) -> bool:
        return bool(self.fwd_hooks or self.bwd_hooks)

    def add_hook(
        self,
        fn: HookFn,
        dir: Direction = "fwd",
        *,
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> Callable[[], None]:
        """Attach `fn` (first, with `prepend`); returns a function that detaches exactly this attachment."""
        hooks = self._hooks_for(dir)
        entry = Hook(fn, is_permanent, level)
        hooks.insert(0, entry) if prepend else hooks.append(entry)

        def remove() -> None:
            for i, h in enumerate(hooks):
                if h is entry:
                    del hooks[i]
                    return

        return remove

    def remove_hooks(
        self,
        dir: Literal["fwd", "bwd", "both"] = "fwd",
        *,
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Detach hooks in direction `dir` (TransformerLens's default: "fwd"): all but the permanent
        ones, all of them with `including_permanent`, only those of context `level` if given."""
        if dir not in ("fwd", "bwd", "both"):
            raise HookUsageError(f"hook direction must be 'fwd', 'bwd' or 'both', got {dir!r}")
        for d in ("fwd", "bwd"):
            if dir in (d, "both"):
                hooks = self._hooks_for(d)
                hooks[:] = [h for h in hooks if not h.matches(including_permanent, level)]

    def clear_context(self) -> None:
        self.ctx = {}

    def _hooks_for(self, dir: str) -> list[Hook]:
        if dir == "fwd":
            return self.fwd_hooks
        if dir == "bwd":
            return self.bwd_hooks
        raise HookUsageError(f"hook direction must be 'fwd' or 'bwd', got {dir!r}")

    def layer(self) -> int | None:
        """The block index this hook point lives in (None outside the blocks)."""
        return layer_of(self.name)

    def forward(self, x: Tensor) -> Tensor:
        if self.fwd_hooks:
            for h in list(self.fwd_hooks):  # a copy: a hook may attach or detach hooks
                out = h.fn(x, hook=self)
                if out is not None:
                    x = self._checked(out, x, h.fn)
        if self.bwd_hooks and x.requires_grad:
            for h in self.bwd_hooks:
                x.register_hook(self._grad_hook(h.fn))
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


def run_and_detect_edit(point: HookPoint, x: Tensor) -> tuple[Tensor, bool]:
    """`point(x)` and whether a hook changed it: returned another tensor, or edited `x` in place
    (its version counter moved). What the fused paths use to know that hooks only read (caching), so
    they may compute the rest without the hooked tensor. Edits that bypass the version counter
    (through `.data` or `.numpy()`) are not seen."""
    version = x._version
    out = point(x)
    return out, out is not x or x._version != version
