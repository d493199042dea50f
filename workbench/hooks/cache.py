"""`ActivationCache`: activations by hook name, with TransformerLens's shorthand and helpers.

The stacking helpers (`accumulated_resid`, `decompose_resid`, `stack_head_results`,
`get_full_resid_decomposition`, `stack_activation`) and `apply_ln_to_stack` / `logit_attrs` follow
TransformerLens 4.x: the same components, order, labels and LayerNorm conventions, so a ported
notebook gets the same numbers (tests/test_tl_cache.py compares them with TransformerLens's).

Two LayerNorm conventions exist for a stack of residual-stream pieces (`apply_ln=True`):

- cached scale: centre each piece and divide it by the scale (sqrt(var + eps)) that the LayerNorm
  computed from the whole stream in the forward pass, without its weight and bias. Linear in the
  pieces, so a decomposition stays a decomposition; what `decompose_resid`, `stack_head_results`,
  `get_full_resid_decomposition`, `logit_attrs` and `apply_ln_to_stack` use (as TransformerLens
  4.x does), and `accumulated_resid` before a block's ln1 / ln2.
- recomputed: run each piece through the model's `ln_final` (its own mean and scale, then the
  LayerNorm weight and bias), so the last row of a logit lens times W_U is the model's logits.
  TransformerLens 4.x's `accumulated_resid(apply_ln=True)` does this when the target is the final
  LayerNorm; older TransformerLens (before its pull request #1077, October 2025; the version ARENA's
  exercises pin) used the cached scale there too: `accumulated_resid(apply_ln=True, recompute_ln=False)` gives those numbers.

`pos_slice` takes TransformerLens's Slice inputs: None (every position), an int (that position;
the position axis is dropped), a tuple (`(k,)` is `:k`, `(a, b)` is `a:b`, `(a, b, s)` is
`a:b:s`), a `slice`, or a list / tensor of positions.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import einops
import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.errors import InputError, NotCachedError
from workbench.hooks.names import act_name, as_layer, derivable, derived_from, layer_of

PosSlice = int | slice | tuple | list | Tensor | np.ndarray | None
TokenSpec = str | int | Int[Tensor, "..."]  # one token, [batch], [pos] or [batch pos] ids


@runtime_checkable
class AttentionLayer(Protocol):
    """What a cache needs of one of the model's attention layers: its per-head outputs, to
    compute per-head results from hook_z when they are read."""

    n_head: int

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]: ...

    def head_results(self, z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos head d_model"]: ...


@runtime_checkable
class CacheModel(Protocol):
    """What a cache needs of its model: the attention layer of every block, in order (n_layer,
    n_head, per-head results); `ln_final` (recomputed LayerNorm) and `tokens_to_residual_directions`
    (`logit_attrs`), read when those helpers are called."""

    ln_final: Callable[[Tensor], Tensor]

    def attention_layers(self) -> Sequence[AttentionLayer]: ...

    def tokens_to_residual_directions(self, tokens: TokenSpec) -> Float[Tensor, "... d_model"]: ...


def _pos_index(pos_slice: PosSlice) -> int | slice | Tensor:
    """TransformerLens's Slice input as an index for one axis (see the module docstring)."""
    if isinstance(pos_slice, (bool, np.bool_)):
        raise InputError(f"pos_slice must be an int, tuple, slice, list or tensor of positions, got {pos_slice!r}")
    if pos_slice is None:
        return slice(None)
    if isinstance(pos_slice, (int, np.integer)):
        return int(pos_slice)
    if isinstance(pos_slice, tuple):
        return slice(*pos_slice)
    if isinstance(pos_slice, slice):
        return pos_slice
    index = torch.as_tensor(pos_slice) if not isinstance(pos_slice, Tensor) else pos_slice
    if index.ndim == 0 and not index.dtype.is_floating_point and index.dtype != torch.bool:
        return int(index)
    if index.ndim != 1 or index.dtype.is_floating_point:
        raise InputError(f"pos_slice must be an int, tuple, slice, or a 1-d list / tensor of positions, got {pos_slice!r}")
    return index


def _take(t: Tensor, index: int | slice | Tensor, dim: int) -> Tensor:
    """`t` indexed along axis `dim` (an int index drops the axis)."""
    if isinstance(index, Tensor):
        index = index.to(t.device)
    return t[(slice(None),) * (dim % t.ndim) + (index,)]


class ActivationCache(Mapping[str, Tensor]):
    """Activations of one forward pass, keyed by hook name (gradients as "<name>_grad").

    `cache["pattern", 3]` is shorthand for `cache["blocks.3.attn.hook_pattern"]`; a negative
    layer counts from the last (`cache["resid_post", -1]`). `model`: the model the activations
    came from, which gives the cache its n_layer and n_head, computes per-head results when they
    are read, and serves `ln_final` and the unembedding directions to the helpers that need them. `has_batch_dim`:
    whether activations have a leading batch axis (False after `remove_batch_dim`).
    """

    def __init__(
        self,
        cache_dict: dict[str, Tensor],
        model: CacheModel,
        has_batch_dim: bool = True,
        *,
        derived: Sequence[str] = (),
    ) -> None:
        self.cache_dict = cache_dict
        self.model = model
        self.attention = list(model.attention_layers())
        self.has_batch_dim = has_batch_dim
        # names computed on access (per-head results, from hook_z), listed among the keys
        self.derived = [n for n in derived if n not in cache_dict]

    # --------------------------------------------------------------- mapping protocol
    def __getitem__(self, key: str | tuple) -> Tensor:
        if isinstance(key, tuple):
            if len(key) > 1:
                key = (key[0], as_layer(key[1]), *key[2:])  # cache["attn", topk_index // n_heads]
            if len(key) > 1 and isinstance(key[1], int) and key[1] < 0:  # counted from the last layer
                if key[1] < -self.n_layer:
                    raise NotCachedError(f"layer {key[1]} is out of range for a cache of {self.n_layer} layers "
                                         f"(-{self.n_layer} to {self.n_layer - 1})")
                key = (key[0], key[1] + self.n_layer, *key[2:])
            name = act_name(*key)
        else:
            name = act_name(key)
        if name not in self.cache_dict and derivable(name):
            z_name = derived_from(name)
            if z_name in self.cache_dict:
                z = self.cache_dict[z_name]
                attn = self.attention[layer_of(name)]
                device = attn.W_O.device
                batched = z if self.has_batch_dim else z[None]
                with torch.no_grad():  # the model's own per-head outputs, an activation (no graph)
                    result = attn.head_results(batched.to(device)).to(z.device)
                return result if self.has_batch_dim else result[0]
        if name not in self.cache_dict:
            close = difflib.get_close_matches(name, self.cache_dict, n=5, cutoff=0.6)
            hint = f"; close matches: {close}" if close else ""
            raise NotCachedError(f"{name!r} is not in this cache ({len(self.cache_dict)} entries){hint}")
        return self.cache_dict[name]

    def __iter__(self) -> Iterator[str]:
        yield from self.cache_dict
        yield from self.derived

    def __len__(self) -> int:
        return len(self.cache_dict) + len(self.derived)

    def __contains__(self, key: object) -> bool:
        return key in self.cache_dict or key in self.derived

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations, {self.nbytes() / 2**20:.1f} MiB)"

    def nbytes(self) -> int:
        """Bytes of distinct tensor storage held by the cache."""
        seen: dict[int, int] = {}
        for t in self.cache_dict.values():  # derived activations hold no memory
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())

    def to(self, device: torch.device | str) -> ActivationCache:
        """Move every activation to `device`, in place (as TransformerLens); returns the cache."""
        self.cache_dict = {k: v.to(device) for k, v in self.cache_dict.items()}
        return self

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch axis (of size 1) from every activation, in place, as TransformerLens does;
        returns the cache itself, so `cache = cache.remove_batch_dim()` works too."""
        if not self.has_batch_dim:
            warnings.warn("remove_batch_dim: this cache has no batch axis any more; left unchanged", stacklevel=2)
            return self
        for name, t in self.cache_dict.items():
            if t.ndim == 0 or t.shape[0] != 1:
                raise InputError(f"remove_batch_dim needs batch size 1, but {name} has shape {tuple(t.shape)}")
        for name in list(self.cache_dict):
            self.cache_dict[name] = self.cache_dict[name][0]
        self.has_batch_dim = False
        return self

    def compute_head_results(self) -> None:
        """Store every block's per-head `hook_result` (computed from `hook_z`) in the cache, as
        TransformerLens's method of that name. Not needed to read results: a cache holding
        `hook_z` computes them when read; this trades memory for repeated reads."""
        for l in range(self.n_layer):
            name = act_name("result", l)
            if name not in self.cache_dict and derived_from(name) in self.cache_dict:
                self.cache_dict[name] = self[name]
        self.derived = [n for n in self.derived if n not in self.cache_dict]

    # --------------------------------------------------------------- residual stream views
    @property
    def n_layer(self) -> int:
        return len(self.attention)

    @property
    def n_head(self) -> int:
        return self.attention[0].n_head if self.attention else 0

    def _target_layer(self, layer: int | None) -> int:
        """The block whose input a stack is taken up to: None and -1 mean n_layer (ln_final's input)."""
        if layer is None or layer == -1:
            return self.n_layer
        if not 0 <= layer <= self.n_layer:
            raise InputError(f"layer must be in [0, {self.n_layer}], -1 or None, got {layer}")
        return layer

    def accumulated_resid(
        self,
        layer: int | None = None,
        *,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        mlp_input: bool = False,
        return_labels: bool = False,
        recompute_ln: bool | None = None,
    ) -> Float[Tensor, "layer ... d_model"] | tuple[Tensor, list[str]]:
        """The residual stream at each layer up to the input of block `layer`, stacked on a
        leading axis (TransformerLens 4.x's semantics and labels).

        `layer` L in [0, n_layer]: resid_pre of blocks 0..L ("0_pre" ... "L_pre"); L = n_layer,
        -1 or None: every resid_pre and the final resid_post ("final_post"), n_layer + 1 rows.
        `incl_mid`: also resid_mid of each block before L ("0_mid", ...). `mlp_input`: also block
        L's resid_mid (the stream its MLP reads), so the last row is that. `pos_slice`: positions
        to keep (module docstring; an int drops the pos axis).

        `apply_ln`: put each row through the LayerNorm that reads block L's input. `recompute_ln`
        chooses the convention (module docstring): None (default, TransformerLens 4.x) recomputes
        at the final LayerNorm (ln_final applied to each row, weight and bias included) and uses
        the cached scale of block L's ln1 (ln2 with `mlp_input`) otherwise; False uses the cached
        scale everywhere (older TransformerLens, as ARENA's exercises pin); True recomputes (final
        LayerNorm only).
        """
        layer = self._target_layer(layer)
        parts, labels = [], []
        for l in range(layer + 1):
            if l == self.n_layer:
                parts.append(self["resid_post", self.n_layer - 1])
                labels.append("final_post")
                continue
            parts.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        index = _pos_index(pos_slice)
        stack = torch.stack([_take(p, index, -2) for p in parts])
        if apply_ln:
            recompute = layer == self.n_layer if recompute_ln is None else recompute_ln
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                           has_batch_dim=self.has_batch_dim, recompute_ln=recompute)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        *,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Float[Tensor, "component ... d_model"] | tuple[Tensor, list[str]]:
        """The input of block `layer` (None, -1 or n_layer: of ln_final) split into the outputs that
        sum to it: embed, pos_embed, then each earlier block's attn_out and mlp_out ("0_attn_out",
        "0_mlp_out", ...); with `mlp_input`, also block `layer`'s attn_out (the MLP's input).
        `mode` "attn" or "mlp" keeps only those outputs. `apply_ln`: cached-scale LayerNorm of that
        block's ln1 (ln2 with `mlp_input`; ln_final at the end), linear, so the rows still sum to
        the normalised stream before the LayerNorm weight and bias. As TransformerLens 4.x."""
        if mode not in ("all", "attn", "mlp"):
            raise InputError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        layer = self._target_layer(layer)
        if mlp_input and layer == self.n_layer:
            raise InputError(f"mlp_input needs a block's layer (0 to {self.n_layer - 1}); layer {layer} is ln_final's input")
        parts, labels = [], []
        if incl_embeds:
            parts += [self["embed"], self["pos_embed"]]
            labels += ["embed", "pos_embed"]
        for l in range(layer):
            if mode != "mlp":
                parts.append(self["attn_out", l])
                labels.append(f"{l}_attn_out")
            if mode != "attn":
                parts.append(self["mlp_out", l])
                labels.append(f"{l}_mlp_out")
        if mlp_input and mode != "mlp":
            parts.append(self["attn_out", layer])
            labels.append(f"{layer}_attn_out")
        if not parts:
            raise InputError(f"nothing to decompose: layer {layer} with mode={mode!r} and incl_embeds=False has no components")
        index = _pos_index(pos_slice)
        stack = torch.stack([_take(p, index, -2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_head_results(
        self,
        layer: int | None = None,
        *,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: PosSlice = None,
        apply_ln: bool = False,
    ) -> Float[Tensor, "component ... d_model"] | tuple[Tensor, list[str]]:
        """Every head's output `hook_result` in blocks before `layer` (None, -1 or n_layer: all),
        stacked as components labelled "L{layer}H{head}" (computed from `hook_z` when results were
        not cached; the bias b_O belongs to no head). `incl_remainder`: a last row "remainder",
        resid_post of block layer - 1 minus the heads (as TransformerLens, layer 0 reads the
        final resid_post). `apply_ln`: cached-scale LayerNorm of block `layer`'s ln1 (ln_final
        at the end). As TransformerLens 4.x."""
        layer = self._target_layer(layer)
        index = _pos_index(pos_slice)
        parts = [
            einops.rearrange(_take(self["result", l], index, -3), "... head d_model -> head ... d_model")
            for l in range(layer)
        ]
        labels = [f"L{l}H{h}" for l in range(layer) for h in range(self.n_head)]
        if parts:
            stack = torch.cat(parts)
        else:
            like = _take(self["embed"], index, -2)
            stack = like.new_zeros((0, *like.shape))
        if incl_remainder:
            remainder = _take(self["resid_post", layer - 1], index, -2) - stack.sum(0)
            stack = torch.cat([stack, remainder[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        *,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        return_labels: bool = False,
    ) -> Float[Tensor, "component ... d_model"] | tuple[Tensor, list[str]]:
        """The input of block `layer` (None, -1 or n_layer: of ln_final) as a sum of its finest
        parts, in TransformerLens 4.x's order: every head's result ("L0H0", ...; with `mlp_input`
        block `layer`'s heads too), every neuron's output post * W_out ("L0N0", ...; or each
        mlp_out without the bias when not `expand_neurons`: "0_mlp_out", bias included), embed,
        pos_embed, and "bias", the sum of the attention output biases b_O (and MLP output biases
        with `expand_neurons`) that no head or neuron owns. Holds [layer d_mlp batch pos
        d_model] floats with `expand_neurons`: keep prompts short. `apply_ln`: cached scale."""
        layer = self._target_layer(layer)
        if mlp_input and layer == self.n_layer:
            raise InputError(f"mlp_input needs a block's layer (0 to {self.n_layer - 1}); layer {layer} is ln_final's input")
        index = _pos_index(pos_slice)
        heads, labels = self.stack_head_results(layer + int(mlp_input), pos_slice=pos_slice, return_labels=True)
        parts = [heads]
        blocks = self.model.blocks
        if layer > 0 and expand_neurons:
            for l in range(layer):
                post = _take(self["post", l], index, -2)
                neurons = einops.einsum(post, blocks[l].mlp.W_out.to(post.device), "... d_mlp, d_mlp d_model -> d_mlp ... d_model")
                parts.append(neurons)
                labels += [f"L{l}N{n}" for n in range(post.shape[-1])]
        elif layer > 0:
            mlp_outs, mlp_labels = self.decompose_resid(layer, pos_slice=pos_slice, mode="mlp", incl_embeds=False, return_labels=True)
            parts.append(mlp_outs)
            labels += mlp_labels
        parts += [_take(self["embed"], index, -2)[None], _take(self["pos_embed"], index, -2)[None]]
        labels += ["embed", "pos_embed"]
        bias = heads.new_zeros(heads.shape[-1])
        for l in range(layer + int(mlp_input)):
            if blocks[l].attn.b_O is not None:
                bias = bias + blocks[l].attn.b_O.to(bias.device)
            if expand_neurons and l < layer and blocks[l].mlp.b_out is not None:
                bias = bias + blocks[l].mlp.b_out.to(bias.device)
        parts.append(bias.detach().expand(1, *heads.shape[1:]))
        labels.append("bias")
        stack = torch.cat(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_activation(
        self, activation_name: str, layer: int | None = None, sublayer_type: str | None = None
    ) -> Float[Tensor, "layer ..."]:
        """`cache[activation_name, l, sublayer_type]` of every block before `layer` (None or -1:
        all), stacked on a leading layer axis; e.g. `stack_activation("pattern")`."""
        layer = self._target_layer(layer)
        return torch.stack([self[activation_name, l, sublayer_type] for l in range(layer)])

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "... d_model"],
        layer: int | None = None,
        *,
        mlp_input: bool = False,
        pos_slice: PosSlice = None,
        batch_slice: PosSlice = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Float[Tensor, "... d_model"]:
        """Treat each row of `residual_stack` ([component batch pos d_model], batch and pos as in
        the cache) as input to block `layer`'s ln1 (ln2 with `mlp_input`; layer None, -1 or n_layer:
        ln_final) and apply that LayerNorm the way TransformerLens 4.x does.

        Default, cached scale: centre each row and divide by the scale that LayerNorm computed from
        the whole stream in the forward pass; its weight and bias are not applied, so the rows
        still sum to the normalised stream up to that affine map. `recompute_ln` (final LayerNorm
        only): run each row through `ln_final` itself, its own statistics, weight and bias.
        `pos_slice`: the positions the stack already holds (applied to the cached scale);
        `batch_slice`: batch rows to take of both (axis 1 of the stack when `has_batch_dim`)."""
        layer = self._target_layer(layer)
        if has_batch_dim:
            residual_stack = _take(residual_stack, _pos_index(batch_slice), 1)
        if recompute_ln:
            if layer != self.n_layer:
                raise InputError(f"recompute_ln applies to the final LayerNorm (layer None, -1 or {self.n_layer}), got layer {layer}")
            ln_final = self.model.ln_final
            device = next(ln_final.parameters()).device
            flat = einops.rearrange(residual_stack, "... d_model -> 1 (...) d_model")
            normed = ln_final(flat.to(device)).to(residual_stack.device)
            return normed.reshape(residual_stack.shape)
        if layer == self.n_layer:
            scale = self["scale"]  # ln_final's
        else:
            scale = self["scale", layer, "ln2" if mlp_input else "ln1"]
        scale = _take(scale, _pos_index(pos_slice), -2)
        if self.has_batch_dim:
            scale = _take(scale, _pos_index(batch_slice), 0)
        if tuple(residual_stack.shape[-scale.ndim:-1]) != tuple(scale.shape[:-1]):
            # broadcasting would silently divide by the wrong positions' scales
            raise InputError(f"the stack's batch and position axes {tuple(residual_stack.shape[1:-1])} do not match the "
                             f"cached LayerNorm scale's {tuple(scale.shape[:-1])}: pass the pos_slice (and batch_slice) "
                             f"the stack was made with")
        centred = residual_stack - residual_stack.mean(-1, keepdim=True)
        return centred / scale

    # --------------------------------------------------------------- direct logit attribution
    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "component ... d_model"],
        tokens: TokenSpec,
        incorrect_tokens: TokenSpec | None = None,
        *,
        pos_slice: PosSlice = None,
        batch_slice: PosSlice = None,
        has_batch_dim: bool = True,
    ) -> Float[Tensor, "component ..."]:
        """Direct logit attribution: each row of `residual_stack` through the cached-scale final
        LayerNorm (`apply_ln_to_stack`), dotted with the unembedding column of `tokens` (with
        `incorrect_tokens`: of tokens minus incorrect_tokens, a logit difference). The LayerNorm
        weight and the unembedding bias are not included, as in TransformerLens 4.x.

        `tokens`: one token (text, id or 0-d tensor), a [batch] tensor (one per example, all
        positions; a 1-d tensor whose length is not the batch size is one per position), or
        [batch pos]; it must already match `pos_slice` / `batch_slice`, which say which positions
        and batch rows the stack holds."""
        directions = self.model.tokens_to_residual_directions(tokens)
        if incorrect_tokens is not None:
            if _token_shape(tokens) != _token_shape(incorrect_tokens):
                raise InputError(f"tokens and incorrect_tokens must have the same shape, got "
                                 f"{_token_shape(tokens)} and {_token_shape(incorrect_tokens)}")
            directions = directions - self.model.tokens_to_residual_directions(incorrect_tokens)
        scaled = self.apply_ln_to_stack(residual_stack, -1, pos_slice=pos_slice, batch_slice=batch_slice,
                                        has_batch_dim=has_batch_dim)
        batch_index = _pos_index(batch_slice)
        if (has_batch_dim and not isinstance(batch_index, int) and scaled.ndim == 4 and directions.ndim == 2
                and directions.shape[0] == scaled.shape[1]):
            directions = directions[:, None]  # one direction per example, broadcast over positions
        return (scaled * directions).sum(-1)


def _token_shape(tokens: TokenSpec) -> tuple[int, ...]:
    return tuple(tokens.shape) if isinstance(tokens, Tensor) else ()
