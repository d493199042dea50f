"""`HookedRootModule`: the mixin that gives a model named hook points, hooks and caching."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Union

import torch
from torch import Tensor, nn

from workbench.errors import HookTypeError, HookUsageError, UnknownHookError
from workbench.hooks.accounting import activation_layout, cache_bytes
from workbench.hooks.cache import ActivationCache, AttentionLayer
from workbench.hooks.hook_point import Direction, HookFn, HookPoint
from workbench.hooks.names import derivable, pos_axis

NameOrPredicate = Union[str, Callable[[str], bool]]
HookSpec = Sequence[tuple[NameOrPredicate, HookFn]]
NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]


def _next_token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    logprobs = logits[:, :-1].log_softmax(-1)
    return -logprobs.gather(-1, tokens[:, 1:, None]).mean()


class HookedRootModule(nn.Module):
    """Give every `HookPoint` submodule its dotted name and add hook and cache methods.

    Subclasses call `self.setup_hooks()` at the end of `__init__`, can be built from their config
    alone (`type(model)(model.cfg)`, for the meta-device shape pass), check inputs in
    `prepare_tokens` and list their attention layers in `attention_layers` (for the cache).

    Inputs are checked once, at the entry points (`model(...)`, `run_with_hooks`,
    `run_with_cache`); `forward` takes checked ids and never synchronises with the host.
    """

    _hook_dict: dict[str, HookPoint]

    def setup_hooks(self) -> None:
        self._hook_dict = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self._hook_dict[name] = module

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        """Every hook point by its TransformerLens name, in forward order."""
        return self._hook_dict

    def hook_names(self) -> list[str]:
        return list(self._hook_dict)

    def prepare_tokens(self, tokens, *, name: str = "tokens") -> Tensor:
        """Check (and, for text, tokenize) a model input; subclasses override."""
        return tokens

    def attention_layers(self) -> list[AttentionLayer]:
        """The attention layer of every block, in order (what a cache needs for per-head results)."""
        return []

    def __call__(self, tokens, *args, **kwargs) -> Tensor:
        """Check the input once (text is tokenized), then run `forward` on the ids."""
        return self._forward_checked(self.prepare_tokens(tokens), *args, **kwargs)

    def _forward_checked(self, tokens: Tensor, *args, **kwargs) -> Tensor:
        # nn.Module's own __call__ (torch's module hooks included) on ids already checked
        return super().__call__(tokens, *args, **kwargs)

    # ----------------------------------------------------------------- shapes and cache sizes
    def activation_shapes(self, batch: int, pos: int) -> dict[str, tuple[int, ...]]:
        """The shape of every hook point's activation for a [batch pos] input (from a meta-device forward)."""
        return {name: info.shape for name, info in activation_layout(self, batch, pos).items()}

    def cache_size(self, tokens: Tensor | tuple[int, int], names_filter: NamesFilter = None) -> int:
        """Bytes a `run_with_cache(tokens, names_filter=...)` cache will hold, before running it.

        Counts distinct storage: q, k and v share one buffer, and resid_pre of block l+1 is
        resid_post of block l, so those are counted once; a full cache stores no derivable
        activation (per-head results)."""
        batch, pos = tokens if isinstance(tokens, tuple) else self.prepare_tokens(tokens).shape
        names = self.names_matching(names_filter)
        if names_filter is None:
            names = [n for n in names if not derivable(n)]
        return cache_bytes(self, batch, pos, names, self.dtype.itemsize)

    # ----------------------------------------------------------------- resolving names
    def unknown_hook_error(self, name: str) -> UnknownHookError:
        close = difflib.get_close_matches(name, self._hook_dict, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return UnknownHookError(
            f"unknown hook name {name!r}{hint} (model.hook_names() lists all {len(self._hook_dict)})"
        )

    def resolve_hooks(self, name_or_predicate: NameOrPredicate) -> list[HookPoint]:
        """The hook points named by an exact name or selected by a predicate on names."""
        if isinstance(name_or_predicate, str):
            if name_or_predicate not in self._hook_dict:
                raise self.unknown_hook_error(name_or_predicate)
            return [self._hook_dict[name_or_predicate]]
        if callable(name_or_predicate):
            return [hp for name, hp in self._hook_dict.items() if name_or_predicate(name)]
        raise HookTypeError(
            f"a hook target must be a hook name or a predicate on names, got {type(name_or_predicate).__name__}"
        )

    def names_matching(self, names_filter: NamesFilter) -> list[str]:
        """Resolve a `names_filter` (None = all, a name, a list of names, or a predicate)."""
        if names_filter is None:
            return list(self._hook_dict)
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if callable(names_filter):
            return [n for n in self._hook_dict if names_filter(n)]
        for n in names_filter:
            if n not in self._hook_dict:
                raise self.unknown_hook_error(n)
        wanted = set(names_filter)
        return [n for n in self._hook_dict if n in wanted]

    # ----------------------------------------------------------------- attaching hooks
    def add_hook(self, name: NameOrPredicate, fn: HookFn, dir: Direction = "fwd") -> None:
        """Attach a hook that stays until `reset_hooks()`."""
        for hp in self.resolve_hooks(name):
            hp.add_hook(fn, dir)

    def reset_hooks(self) -> None:
        """Detach every hook from every hook point."""
        for hp in self._hook_dict.values():
            hp.remove_hooks("both")

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: HookSpec = (), bwd_hooks: HookSpec = ()) -> Iterator[HookedRootModule]:
        """Attach hooks for the duration of the block; they are detached however it exits.

        Backward hooks are attached to the activations of forwards run inside the block, so a
        `.backward()` called after the block still runs them.
        """
        removers: list[Callable[[], None]] = []
        try:
            for spec, dir in ((fwd_hooks, "fwd"), (bwd_hooks, "bwd")):
                for target, fn in spec:
                    for hp in self.resolve_hooks(target):
                        removers.append(hp.add_hook(fn, dir))
            yield self
        finally:
            for remove in reversed(removers):
                remove()

    def run_with_hooks(
        self, tokens, *, fwd_hooks: HookSpec = (), bwd_hooks: HookSpec = (), **forward_kwargs
    ) -> Tensor:
        """Run the forward pass with hooks attached; returns what `forward` returns."""
        tokens = self.prepare_tokens(tokens)
        with self.hooks(fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks):
            return self._forward_checked(tokens, **forward_kwargs)

    # ----------------------------------------------------------------- caching
    def run_with_cache(
        self,
        tokens,
        *,
        names_filter: NamesFilter = None,
        device: torch.device | str | None = None,
        incl_bwd: bool = False,
        loss_fn: Callable[[Tensor], Tensor] | None = None,
        pos_slice: slice | int | Sequence[int] | None = None,
        fwd_hooks: HookSpec = (),
        **forward_kwargs,
    ) -> tuple[Tensor, ActivationCache]:
        """Run the model and keep the activations named by `names_filter`.

        Returns (logits, cache). A full cache (names_filter=None) holds each activation once:
        per-head `hook_result` is computed from `hook_z` when read (the same einsum the model runs),
        not stored. `device` moves cached tensors (e.g. "cpu" to keep GPU memory
        free); `pos_slice` keeps only those positions (query positions for attention patterns).
        With `incl_bwd`, backpropagates `loss_fn(logits)` (default: mean next-token loss) and
        also stores each gradient under `"<name>_grad"`; parameter `.grad`s are not touched.
        `fwd_hooks` run before the cache reads, so the cache shows edited activations.
        """
        names = self.names_matching(names_filter)
        derived: list[str] = []
        if names_filter is None:  # a full cache stores each activation once: derivable ones are computed on access
            derived = [n for n in names if derivable(n)]
            names = [n for n in names if n not in derived]
        tokens = self.prepare_tokens(tokens)
        store: dict[str, Tensor] = {}
        grad_store: dict[str, Tensor] = {}
        grad_roots: list[Tensor] = []
        keep = _position_selector(pos_slice)

        def save_fwd(x: Tensor, hook: HookPoint) -> None:
            if incl_bwd and x.requires_grad:
                grad_roots.append(x)
            store[hook.name] = keep(hook.name, x.detach()).to(device) if device else keep(hook.name, x.detach())

        def save_bwd(g: Tensor, hook: HookPoint) -> None:
            g = keep(hook.name, g.detach())
            grad_store[hook.name + "_grad"] = g.to(device) if device else g

        cache_fwd = [(n, save_fwd) for n in names]
        cache_bwd = [(n, save_bwd) for n in names] if incl_bwd else []
        with self.hooks(fwd_hooks=[*fwd_hooks, *cache_fwd], bwd_hooks=cache_bwd):
            if incl_bwd:
                with torch.enable_grad():
                    logits = self._forward_checked(tokens, **forward_kwargs)
                    loss = loss_fn(logits) if loss_fn else _next_token_loss(logits, tokens)
                    if loss.ndim != 0:
                        raise HookUsageError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
                    if not grad_roots:
                        raise HookUsageError("incl_bwd=True needs parameters that require grad; none of this "
                                             "model's do (requires_grad_(True) on the ones to differentiate)")
                    torch.autograd.grad(loss, grad_roots, allow_unused=True)
                logits = logits.detach()
            else:
                logits = self._forward_checked(tokens, **forward_kwargs)
        store.update(grad_store)
        return logits, ActivationCache(store, self, derived=derived)


def _position_selector(pos_slice) -> Callable[[str, Tensor], Tensor]:
    if pos_slice is None:
        return lambda name, x: x
    if isinstance(pos_slice, int):
        index = slice(pos_slice, pos_slice + 1 or None)  # -1 -> slice(-1, None)
    elif isinstance(pos_slice, slice):
        index = pos_slice
    else:
        index = torch.as_tensor(list(pos_slice), dtype=torch.long)

    def keep(name: str, x: Tensor) -> Tensor:
        axis = pos_axis(name)
        if x.ndim <= axis:
            return x
        idx = index.to(x.device) if isinstance(index, Tensor) else index
        return x[(slice(None),) * axis + (idx,)].clone() if isinstance(idx, slice) else x.index_select(axis, idx)

    return keep


