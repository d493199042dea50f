"""The hook layout: how hook names are spelled, and the rules that depend on a name.

Every hook name outside the model's own modules is built here (`act_name`), and every rule that
reads a name (which layer it is in, where its position axis is, which activations share storage,
which ones a cache computes instead of storing) lives here too.
"""

from __future__ import annotations

_ATTN = {"q", "k", "v", "z", "result", "attn_scores", "pattern"}
_MLP = {"pre", "post"}
_LN = {"scale", "normalized"}
_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "query": "q",
    "key": "k",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_post": "post",
}


def act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Full hook name from TransformerLens shorthand: ("pattern", 3) -> "blocks.3.attn.hook_pattern".

    ("resid_pre", 0) -> "blocks.0.hook_resid_pre"; ("scale", 2, "ln1") -> "blocks.2.ln1.hook_scale";
    ("scale",) -> "ln_final.hook_scale"; ("embed",) -> "hook_embed". A full name passes through.
    """
    if "." in name or name.startswith("hook_"):
        return name
    name = _ALIASES.get(name, name)
    if layer is None:
        if name in _LN:
            return f"ln_final.hook_{name}"
        return f"hook_{name}"
    if name in _ATTN:
        return f"blocks.{layer}.attn.hook_{name}"
    if name in _MLP:
        return f"blocks.{layer}.mlp.hook_{name}"
    if name in _LN:
        ln = {None: "ln1", "a": "ln1", "attn": "ln1", "m": "ln2", "mlp": "ln2"}.get(layer_type, layer_type)
        return f"blocks.{layer}.{ln}.hook_{name}"
    return f"blocks.{layer}.hook_{name}"


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
