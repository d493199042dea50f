"""`ActivationCache`: activations by hook name, with TransformerLens's shorthand and helpers."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from workbench.errors import InputError, NotCachedError
from workbench.hooks.names import act_name, derivable, derived_from, layer_of


@runtime_checkable
class AttentionLayer(Protocol):
    """What a cache needs of one of the model's attention layers: its per-head outputs, to
    compute per-head results from hook_z when they are read."""

    n_head: int

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]: ...

    def head_results(self, z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos head d_model"]: ...


class ActivationCache(Mapping[str, Tensor]):
    """Activations of one forward pass, keyed by hook name (gradients as "<name>_grad").

    `cache["pattern", 3]` is shorthand for `cache["blocks.3.attn.hook_pattern"]`. `attention`:
    the model's attention layer of every block, in order (`model.attention_layers()`), which gives
    the cache its n_layer and n_head and computes per-head results when they are read.
    """

    def __init__(
        self, cache_dict: dict[str, Tensor], attention: Sequence[AttentionLayer], *, derived: Sequence[str] = ()
    ) -> None:
        self.cache_dict = cache_dict
        self.attention = list(attention)
        # names computed on access (per-head results, from hook_z), listed among the keys
        self.derived = [n for n in derived if n not in cache_dict]

    # --------------------------------------------------------------- mapping protocol
    def __getitem__(self, key: str | tuple) -> Tensor:
        name = act_name(*key) if isinstance(key, tuple) else act_name(key)
        if name not in self.cache_dict and derivable(name):
            z_name = derived_from(name)
            if z_name in self.cache_dict:
                z = self.cache_dict[z_name]
                attn = self.attention[layer_of(name)]
                device = attn.W_O.device
                with torch.no_grad():  # the model's own per-head outputs, an activation (no graph)
                    return attn.head_results(z.to(device)).to(z.device)
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
        return ActivationCache({k: v.to(device) for k, v in self.cache_dict.items()}, self.attention, derived=self.derived)

    def remove_batch_dim(self) -> ActivationCache:
        """Drop a batch axis of size 1 from every activation."""
        for name, t in self.cache_dict.items():
            if t.shape[0] != 1:
                raise InputError(f"remove_batch_dim needs batch size 1, but {name} has shape {tuple(t.shape)}")
        full = {**self.cache_dict, **{n: self[n] for n in self.derived}}
        return ActivationCache({k: v[0] for k, v in full.items()}, self.attention)

    # --------------------------------------------------------------- residual stream views
    @property
    def n_layer(self) -> int:
        return len(self.attention)

    @property
    def n_head(self) -> int:
        return self.attention[0].n_head if self.attention else 0

    def _layers(self, layer: int | None) -> int:
        if layer is None or layer == -1:
            return self.n_layer + 1
        if not 0 <= layer <= self.n_layer:
            raise InputError(f"layer must be in [0, {self.n_layer}] or -1, got {layer}")
        return layer

    def accumulated_resid(
        self,
        layer: int | None = None,
        *,
        incl_mid: bool = False,
        apply_ln: bool = False,
        return_labels: bool = False,
    ) -> Float[Tensor, "layer batch pos d_model"] | tuple[Tensor, list[str]]:
        """The residual stream before each of the first `layer` blocks (None = all, plus the final
        resid_post: n_layer + 1 points, labelled "0_pre" ... "final_post"), stacked on a leading
        `layer` axis; with `incl_mid` also each block's resid_mid ("0_mid", ...)."""
        stop = self._layers(layer)
        parts, labels = [], []
        for l in range(min(stop, self.n_layer)):
            parts.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if incl_mid:
                parts.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        if stop == self.n_layer + 1:
            parts.append(self["resid_post", self.n_layer - 1])
            labels.append("final_post")
        return self._stacked(parts, labels, layer, apply_ln=apply_ln, return_labels=return_labels)

    def decompose_resid(
        self,
        layer: int | None = None,
        *,
        mode: str = "all",
        apply_ln: bool = False,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Float[Tensor, "component batch pos d_model"] | tuple[Tensor, list[str]]:
        """The residual stream before block `layer` (None = the final one) split into the outputs
        that sum to it: embed, pos_embed, then each block's attn_out and mlp_out.
        `mode` is "all", "attn" or "mlp"."""
        if mode not in ("all", "attn", "mlp"):
            raise InputError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        stop = min(self._layers(layer), self.n_layer)
        parts, labels = [], []
        if incl_embeds:
            parts += [self["embed"], self["pos_embed"]]
            labels += ["embed", "pos_embed"]
        for l in range(stop):
            if mode in ("all", "attn"):
                parts.append(self["attn_out", l])
                labels.append(f"{l}_attn_out")
            if mode in ("all", "mlp"):
                parts.append(self["mlp_out", l])
                labels.append(f"{l}_mlp_out")
        return self._stacked(parts, labels, layer, apply_ln=apply_ln, return_labels=return_labels)

    def stack_head_results(
        self,
        layer: int | None = None,
        *,
        apply_ln: bool = False,
        return_labels: bool = False,
    ) -> Float[Tensor, "component batch pos d_model"] | tuple[Tensor, list[str]]:
        """Every head's output `hook_result` for blocks before `layer` (None = all), stacked as
        components labelled "L{layer}H{head}". Computed from `hook_z` when results were not cached;
        the bias b_O is not part of any head."""
        stop = min(self._layers(layer), self.n_layer)
        parts = []
        for l in range(stop):
            result = self["result", l]  # stored, or computed from hook_z
            parts += einops.rearrange(result, "batch pos head d_model -> head batch pos d_model").unbind(0)
        labels = [f"L{l}H{h}" for l in range(stop) for h in range(self.n_head)]
        return self._stacked(parts, labels, layer, apply_ln=apply_ln, return_labels=return_labels)

    def _stacked(
        self, parts: list[Tensor], labels: list[str], layer: int | None, *, apply_ln: bool, return_labels: bool
    ) -> Tensor | tuple[Tensor, list[str]]:
        """The parts stacked on a leading axis, LayerNorm-scaled for `layer` with `apply_ln`, with labels if asked."""
        stack = torch.stack(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "*stack batch pos d_model"],
        layer: int | None = None,
        *,
        mlp_input: bool = False,
    ) -> Float[Tensor, "*stack batch pos d_model"]:
        """Centre each component and divide by the cached LayerNorm scale of the full residual
        stream that feeds `ln_final` (layer None or n_layer) or block `layer`'s ln1 (ln2 with
        `mlp_input`). As in TransformerLens the LayerNorm weight and bias are not applied, so the
        components sum to the normalised stream only up to that affine map."""
        if layer is None or layer == -1 or layer == self.n_layer:
            scale = self["scale"]  # ln_final's
        else:
            scale = self["scale", layer, "ln2" if mlp_input else "ln1"]
        centred = residual_stack - residual_stack.mean(-1, keepdim=True)
        return centred / scale
