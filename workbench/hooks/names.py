"""The hook layout: how hook names are spelled, and the rules that depend on a name.

Every hook name outside the model's own modules is built here (`act_name`), and every rule that
reads a name (which layer it is in, where its position axis is, which activations share storage,
which ones a cache computes instead of storing) lives here too.
"""

from __future__ import annotations

import re

from torch import Tensor

from workbench.errors import UnknownHookError

_ATTN = {"q", "k", "v", "z", "result", "attn_scores", "pattern"}
_MLP = {"pre", "post"}
_LN = {"scale", "normalized"}
# TransformerLens's shorthand (utils.get_act_name), kept to its spelling
_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "query": "q",
    "key": "k",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_post": "post",
}
_LAYER_TYPES = {"a": "attn", "attention": "attn", "m": "mlp", "b": "", "block": "", "blocks": ""}
# which LayerNorm a layer type means for scale / normalized (TransformerLens would build
# "blocks.L.attn.hook_scale", a name no GPT-2 has)
_LN_OF = {"ln1": "ln1", "ln2": "ln2", "attn": "ln1", "mlp": "ln2"}


def as_layer(layer: int | str | Tensor | None) -> int | str | None:
    """A layer index as act_name spells it: a one-element integer tensor (e.g. `topk(...).indices //
    n_heads`, as notebooks pass it) is its int, as TransformerLens's f-string formats it."""
    if isinstance(layer, Tensor):
        if layer.numel() != 1 or layer.is_floating_point() or layer.is_complex():
            raise UnknownHookError(f"a layer given as a tensor must hold one integer, got shape "
                                   f"{tuple(layer.shape)} and dtype {layer.dtype}")
        return int(layer.item())
    return layer


def act_name(name: str, layer: int | str | Tensor | None = None, layer_type: str | None = None) -> str:
    """Full hook name from TransformerLens shorthand, as `transformer_lens.utils.get_act_name` builds it.

    ("pattern", 3) -> "blocks.3.attn.hook_pattern"; ("resid_pre", 0) -> "blocks.0.hook_resid_pre";
    "k6" -> "blocks.6.attn.hook_k"; "scale4ln1" -> "blocks.4.ln1.hook_scale"; ("scale", 2, "ln2") ->
    "blocks.2.ln2.hook_scale"; ("scale",) -> "ln_final.hook_scale"; ("embed",) -> "hook_embed";
    ("in", 3) -> "blocks.3.hook_in" (TransformerLens's newer name, which this model does not have:
    looking it up says which name it has instead). A full name passes through when no layer is given.
    The layer may be a one-element integer tensor, as in TransformerLens.

    Differences from TransformerLens, both where its name would not exist on a GPT-2: a LayerNorm
    activation in a block needs its LayerNorm ("ln1"/"ln2", or "a"/"attn" for ln1, "m"/"mlp" for
    ln2) and raises UnknownHookError without one; TransformerLens builds "blocks.L.hook_scale".
    """
    layer = as_layer(layer)
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = re.match(r"([a-z]+)(\d+)([a-z]?.*)", name)
    if match is not None:  # "k6", "scale4ln1": the first digits are the layer, the rest its type
        name, layer, layer_type = match.group(1), match.group(2), match.group(3) or None
    name = _ALIASES.get(name, name)
    if layer is None:
        if name in _LN:
            return f"ln_final.hook_{name}"
        return f"hook_{name}"
    if name in _ATTN:
        return f"blocks.{layer}.attn.hook_{name}"
    if name in _MLP:
        return f"blocks.{layer}.mlp.hook_{name}"
    layer_type = _LAYER_TYPES.get(layer_type, layer_type) if layer_type is not None else None
    if name in _LN:
        if layer_type not in _LN_OF:
            raise UnknownHookError(
                f"act_name({name!r}, {layer}, {layer_type!r}): say which LayerNorm of block {layer}: "
                f"layer_type 'ln1' (before attention) or 'ln2' (before the MLP), e.g. act_name({name!r}, {layer}, 'ln1')"
            )
        return f"blocks.{layer}.{_LN_OF[layer_type]}.hook_{name}"
    return f"blocks.{layer}.{layer_type + '.' if layer_type else ''}hook_{name}"


def act_names(name: str, layers: range | list[int], layer_type: str | None = None) -> list[str]:
    """`act_name(name, l)` for every l in `layers`."""
    return [act_name(name, l, layer_type) for l in layers]


def layer_of(name: str) -> int | None:
    """The block a hook name is in ("blocks.3.attn.hook_z" -> 3), None outside the blocks."""
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" else None


def kind_of(name: str) -> str:
    """The activation a hook name holds, without its block: "blocks.3.attn.hook_z" -> "z"."""
    return name.rsplit(".", 1)[-1].removeprefix("hook_")


def pos_axis(name: str) -> int:
    """The axis of an activation that indexes (query) positions: 2 for attention maps
    ([batch head query_pos key_pos]), 1 for everything else ([batch pos ...])."""
    return 2 if kind_of(name) in ("attn_scores", "pattern") else 1


def derivable(name: str) -> bool:
    """Whether a full cache computes this activation from another one when it is read instead of
    storing it: per-head results are einsum(hook_z, W_O), [batch pos head d_model] each."""
    return kind_of(name) == "result" and layer_of(name) is not None


def derived_from(name: str) -> str:
    """The stored activation a derivable one is computed from (attn.hook_result -> attn.hook_z)."""
    return act_name("z", layer_of(name))


# TransformerLens 4.x's newer names for the same activations (TransformerBridge's "hook_in"/"hook_out"
# style). This model has one name per hook point, the legacy one; these only point an error at it.
_NEWER_NAMES = {"hook_in": "hook_resid_pre", "hook_out": "hook_resid_post",
                "attn.hook_out": "hook_attn_out", "mlp.hook_out": "hook_mlp_out"}


def legacy_name(name: str) -> str | None:
    """The legacy name of a TransformerLens 4.x block hook name ("blocks.3.hook_in" ->
    "blocks.3.hook_resid_pre"), None for any other name."""
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] in _NEWER_NAMES:
        return f"blocks.{parts[1]}.{_NEWER_NAMES[parts[2]]}"
    return None
