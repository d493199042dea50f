"""`HookedRootModule`: the mixin that gives a model named hook points, hooks and caching."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Union

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.errors import HookTypeError, HookUsageError, InputError, UnknownHookError
from workbench.hooks.accounting import activation_layout, cache_bytes
from workbench.hooks.cache import ActivationCache, AttentionLayer
from workbench.hooks.hook_point import Direction, HookFn, HookPoint
from workbench.hooks.names import act_name, derivable, derived_from, legacy_name, pos_axis

NameOrPredicate = Union[str, Callable[[str], bool]]
HookSpec = Sequence[tuple[NameOrPredicate, HookFn]]
NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]
ReturnType = Union[str, None]  # "logits", "loss", "both" or None (checked in _run, with a message)
RETURN_TYPES = ("logits", "loss", "both", None)


def next_token_loss(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], per_token: bool = False
) -> Float[Tensor, ""] | Float[Tensor, "batch pos-1"]:
    """Next-token cross-entropy in nats: -log p(tokens[:, i + 1] | logits[:, i]), averaged over every
    batch row and position (TransformerLens's `lm_cross_entropy_loss` without an attention mask:
    padding counts too); `per_token` gives the [batch pos-1] values instead."""
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None].to(logits.device))[..., 0]
    return -logprobs if per_token else -logprobs.mean()


def _check_return_type(return_type: object) -> None:
    if return_type not in RETURN_TYPES:
        raise InputError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")


class _Stopped(Exception):
    """Raised by the stop_at_layer hook to end a forward early, carrying the residual stream."""

    def __init__(self, resid: Tensor) -> None:
        self.resid = resid


class HookedRootModule(nn.Module):
    """Give every `HookPoint` submodule its dotted name and add hook and cache methods.

    Subclasses call `self.setup()` at the end of `__init__`, can be built from their config
    alone (`type(model)(model.cfg)`, for the meta-device shape pass), check inputs in
    `prepare_tokens` and list their attention layers in `attention_layers` (for the cache).

    Inputs are checked once, at the entry points (`model(...)`, `run_with_hooks`,
    `run_with_cache`); `forward` takes checked ids and never synchronises with the host.
    """

    _hook_dict: dict[str, HookPoint]
    context_level: int  # how many `hooks(...)` blocks are open (TransformerLens's name)

    def setup(self) -> None:
        """Name every hook point by its path and index them (TransformerLens's `setup()`); call at
        the end of `__init__`."""
        self._hook_dict = {}
        self.context_level = 0
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

    def prepare_tokens(self, tokens, *, name: str = "tokens", prepend_bos: bool | None = None,
                       padding_side: str | None = None) -> Tensor:
        """Check (and, for text, tokenize) a model input; subclasses override."""
        return tokens

    def attention_layers(self) -> list[AttentionLayer]:
        """The attention layer of every block, in order (what a cache needs for per-head results)."""
        return []

    def __call__(
        self,
        input,
        return_type: ReturnType = "logits",
        *,
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        stop_at_layer: int | None = None,
    ):
        """Check the input once (text is tokenized, with a BOS token unless `prepend_bos=False`),
        then run `forward` on the ids. As TransformerLens's `model(...)`:

        - return_type "logits" [batch pos d_vocab], "loss" (`loss_fn`, mean next-token
          cross-entropy, or [batch pos-1] with `loss_per_token`), "both" (logits, loss), or None
          (runs the hooks, returns None);
        - `stop_at_layer=k`: the residual stream entering block k [batch pos d_model], before any
          hook on blocks.k.hook_resid_pre runs (as TransformerLens), whatever return_type says;
          k = n_layer gives the residual stream before ln_final; negative k counts from the end.
        """
        tokens = self.prepare_tokens(input, name="input", prepend_bos=prepend_bos, padding_side=padding_side)
        return self._run(tokens, return_type=return_type, loss_per_token=loss_per_token, stop_at_layer=stop_at_layer)

    def _forward_checked(self, tokens: Tensor) -> Tensor:
        # nn.Module's own __call__ (torch's module hooks included) on ids already checked
        return super().__call__(tokens)

    def _run(self, tokens: Tensor, *, return_type: ReturnType = "logits", loss_per_token: bool = False,
             stop_at_layer: int | None = None):
        """Run checked ids and return what `return_type` asks for (see `__call__`)."""
        _check_return_type(return_type)
        if stop_at_layer is not None:
            return self._run_until(tokens, stop_at_layer)
        return self._outputs(self._forward_checked(tokens), tokens, return_type, loss_per_token)

    @staticmethod
    def _outputs(logits: Tensor, tokens: Tensor, return_type: ReturnType, loss_per_token: bool):
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = next_token_loss(logits, tokens, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def loss_fn(
        self, logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], per_token: bool = False
    ) -> Tensor:
        """Mean next-token cross-entropy of `logits` on `tokens` (nats); [batch pos-1] with `per_token`."""
        return next_token_loss(logits, tokens, per_token)

    def _run_until(self, tokens: Tensor, stop_at_layer: int) -> Tensor:
        n_layer = len(self.attention_layers())
        if not -n_layer <= stop_at_layer <= n_layer or isinstance(stop_at_layer, bool):
            raise InputError(f"stop_at_layer must be an integer in [{-n_layer}, {n_layer}], got {stop_at_layer!r}")
        stop = stop_at_layer % n_layer if stop_at_layer < 0 else stop_at_layer
        name = act_name("resid_pre", stop) if stop < n_layer else act_name("resid_post", n_layer - 1)

        def stop_here(resid: Tensor, hook: HookPoint) -> None:
            raise _Stopped(resid)

        # before the hooks on resid_pre of block k (TransformerLens never runs them), after those on
        # the last resid_post (which TransformerLens runs)
        try:
            with self.hooks():
                self.add_hook(name, stop_here, level=self.context_level, prepend=stop < n_layer)
                self._forward_checked(tokens)
        except _Stopped as stopped:
            return stopped.resid
        raise AssertionError(f"the forward pass never reached {name}")  # unreachable: every forward does

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
        if (legacy := legacy_name(name)) in self._hook_dict:  # TransformerLens 4.x's newer spelling
            hint = f"; this model names that activation {legacy!r} (TransformerLens's legacy name; one name per hook point)"
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
    def add_hook(
        self,
        name: NameOrPredicate,
        hook: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Attach `hook` to the hook point `name` (or every one a predicate on names selects) until
        `reset_hooks()`; a permanent hook stays until `reset_hooks(including_permanent=True)`.
        `prepend` runs it before the hooks already there."""
        for hp in self.resolve_hooks(name):
            hp.add_hook(hook, dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def add_perma_hook(self, name: NameOrPredicate, hook: HookFn, dir: Direction = "fwd") -> None:
        """`add_hook(name, hook, dir, is_permanent=True)`."""
        self.add_hook(name, hook, dir, is_permanent=True)

    def remove_all_hook_fns(
        self,
        direction: str = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Detach hooks from every hook point: all but the permanent ones unless `including_permanent`,
        only those attached by the `hooks(...)` block of context `level` if given."""
        for hp in self._hook_dict.values():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        """Empty every hook point's `ctx` dict."""
        for hp in self._hook_dict.values():
            hp.clear_context()

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: str = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Detach every hook but the permanent ones (those too with `including_permanent`) and, by
        default, clear every hook point's `ctx`, as TransformerLens's `reset_hooks`."""
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level)

    @contextlib.contextmanager
    def hooks(
        self,
        fwd_hooks: HookSpec = (),
        bwd_hooks: HookSpec = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator[HookedRootModule]:
        """Attach hooks for the duration of the block; with `reset_hooks_end` (the default) they
        are detached however it exits (permanent ones and those added by `add_hook` stay), and
        with `clear_contexts` every hook point's `ctx` is emptied then too.

        Backward hooks are attached to the activations of forwards run inside the block, so a
        `.backward()` called after the block still runs them.
        """
        self.context_level += 1
        level = self.context_level
        try:
            for spec, dir in ((fwd_hooks, "fwd"), (bwd_hooks, "bwd")):
                for target, fn in spec:
                    for hp in self.resolve_hooks(target):
                        hp.add_hook(fn, dir, level=level)
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, "both", including_permanent=False, level=level)
            self.context_level -= 1

    def run_with_hooks(
        self,
        input,
        return_type: ReturnType = "logits",
        *,
        fwd_hooks: HookSpec = (),
        bwd_hooks: HookSpec = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        stop_at_layer: int | None = None,
    ):
        """Run the model with hooks attached (see `hooks`); returns what `model(input, ...)` returns."""
        tokens = self.prepare_tokens(input, name="input", prepend_bos=prepend_bos, padding_side=padding_side)
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self._run(tokens, return_type=return_type, loss_per_token=loss_per_token,
                             stop_at_layer=stop_at_layer)

    # ----------------------------------------------------------------- caching
    def run_with_cache(
        self,
        input,
        return_type: ReturnType = "logits",
        *,
        names_filter: NamesFilter = None,
        device: torch.device | str | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        loss_fn: Callable[[Tensor], Tensor] | None = None,
        pos_slice: slice | int | Sequence[int] | None = None,
        fwd_hooks: HookSpec = (),
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        stop_at_layer: int | None = None,
    ) -> tuple[object, ActivationCache]:
        """Run the model and keep the activations named by `names_filter`.

        Returns (output, cache), output being what `model(input, return_type, ...)` returns
        (logits by default; the residual stream entering block `stop_at_layer` if given, and the
        cache then holds the activations up to there). A full cache (names_filter=None) holds each
        activation once: per-head `hook_result` is computed from `hook_z` when read (the same
        einsum the model runs), not stored. `device` moves cached tensors (e.g. "cpu" to keep GPU
        memory free); `remove_batch_dim` drops the batch axis (batch size 1 only, else InputError);
        `pos_slice` keeps only those positions (query positions for attention patterns).
        With `incl_bwd`, backpropagates `loss_fn(logits)` (default: mean next-token loss) and
        also stores each gradient under `"<name>_grad"`; parameter `.grad`s are not touched.
        `fwd_hooks` run before the cache reads, so the cache shows edited activations.
        """
        names = self.names_matching(names_filter)
        derived: list[str] = []
        if names_filter is None:  # a full cache stores each activation once: derivable ones are computed on access
            derived = [n for n in names if derivable(n)]
            names = [n for n in names if n not in derived]
        tokens = self.prepare_tokens(input, name="input", prepend_bos=prepend_bos, padding_side=padding_side)
        _check_return_type(return_type)
        if remove_batch_dim and tokens.shape[0] != 1:
            raise InputError(f"remove_batch_dim=True needs a batch of one sequence, got {tokens.shape[0]}")
        if incl_bwd and stop_at_layer is not None:
            raise InputError("incl_bwd=True needs the logits; it cannot be combined with stop_at_layer")
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
                    logits = self._forward_checked(tokens)
                    loss = loss_fn(logits) if loss_fn else next_token_loss(logits, tokens)
                    if loss.ndim != 0:
                        raise HookUsageError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
                    if not grad_roots:
                        raise HookUsageError("incl_bwd=True needs parameters that require grad; none of this "
                                             "model's do (requires_grad_(True) on the ones to differentiate)")
                    torch.autograd.grad(loss, grad_roots, allow_unused=True)
                output = self._outputs(logits.detach(), tokens, return_type, loss_per_token)
            else:
                output = self._run(tokens, return_type=return_type, loss_per_token=loss_per_token,
                                   stop_at_layer=stop_at_layer)
        store.update(grad_store)
        derived = [n for n in derived if derived_from(n) in store]  # not those past stop_at_layer
        cache = ActivationCache(store, self, derived=derived)
        if remove_batch_dim:
            cache.remove_batch_dim()  # in place, as TransformerLens
        return output, cache


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


