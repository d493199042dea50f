"""TransformerLens's `patching.get_act_patch_*` functions, backed by our batched engine.

Each takes TransformerLens's arguments `(model, corrupted_tokens, clean_cache, patching_metric)`:
it runs `corrupted_tokens`, restores one activation of the clean run (read from `clean_cache`, e.g.
`model.run_with_cache(clean_tokens)[1]`) at a time, and returns `patching_metric(patched logits)`
for every cell, a tensor in TransformerLens's shape and axis order:

* `resid_pre`, `resid_mid`, `attn_out`, `mlp_out`: [layer pos]
* `attn_head_{out,q,k,v,pattern}_all_pos` (each head at every position): [layer head]
* `attn_head_{out,q,k,v}_by_pos`: [layer pos head]; `attn_head_pattern_by_pos`: [layer head pos]
  (pos is the query position: one row of the pattern), as TransformerLens orders it
* `block_every`: [3 layer pos] (resid_pre, attn_out, mlp_out); `attn_head_all_pos_every`:
  [5 layer head] and `attn_head_by_pos_every`: [5 layer pos head] (out, q, k, v, pattern)

`patching_metric` is any callable logits [batch pos d_vocab] -> scalar, or a `workbench.methods`
`Metric` (which makes the sweep faster: logits only where it reads). The work is
`workbench.methods.activation_patching(model, None, corrupted_tokens, metric, clean_cache=...)`,
whose `PatchingResult` also carries the clean and corrupted metric and a `to_frame()`.
TransformerLens's keyword options (`reduce`, `baseline`, `index_df`, `return_index_df`) are not
taken; `get_act_patch_attn_head_pattern_dest_src_pos` and `get_act_patch_direct_path` are not provided.
"""

from __future__ import annotations

from collections.abc import Callable

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.errors import InputError
from workbench.methods.patching import activation_patching


def _sweep(model, corrupted_tokens, clean_cache, patching_metric, target: str, options: dict) -> Tensor:
    if options:
        raise InputError(
            f"workbench.patching takes (model, corrupted_tokens, clean_cache, patching_metric) only, not "
            f"{', '.join(sorted(options))}; for per-example values, layers or noising use "
            "workbench.methods.activation_patching"
        )
    result = activation_patching(model, None, corrupted_tokens, patching_metric, clean_cache=clean_cache, target=target)
    return result.values.to(model.cfg.device)


def get_act_patch_resid_pre(
    model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric: Callable, **options
) -> Float[Tensor, "layer pos"]:
    """The metric with `blocks.L.hook_resid_pre` at one position restored from the clean run."""
    return _sweep(model, corrupted_tokens, clean_cache, patching_metric, "resid_pre", options)


def get_act_patch_resid_mid(
    model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric: Callable, **options
) -> Float[Tensor, "layer pos"]:
    """The metric with `blocks.L.hook_resid_mid` at one position restored from the clean run."""
    return _sweep(model, corrupted_tokens, clean_cache, patching_metric, "resid_mid", options)


def get_act_patch_attn_out(
    model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric: Callable, **options
) -> Float[Tensor, "layer pos"]:
    """The metric with `blocks.L.hook_attn_out` at one position restored from the clean run."""
    return _sweep(model, corrupted_tokens, clean_cache, patching_metric, "attn_out", options)


def get_act_patch_mlp_out(
    model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric: Callable, **options
) -> Float[Tensor, "layer pos"]:
    """The metric with `blocks.L.hook_mlp_out` at one position restored from the clean run."""
    return _sweep(model, corrupted_tokens, clean_cache, patching_metric, "mlp_out", options)


_ACT = {"out": "z", "q": "q", "k": "k", "v": "v", "pattern": "pattern"}  # act_name's short names


def _head_all_pos(kind: str):
    def sweep(
        model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric: Callable, **options
    ) -> Float[Tensor, "layer head"]:
        return _sweep(model, corrupted_tokens, clean_cache, patching_metric, f"head_{kind}", options)

    sweep.__doc__ = f"The metric with one head's {_ACT[kind]!r} activation restored from the clean run at every position: [layer head]."
    sweep.__name__ = sweep.__qualname__ = f"get_act_patch_attn_head_{kind}_all_pos"
    return sweep


def _head_by_pos(kind: str):
    def sweep(
        model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric: Callable, **options
    ) -> Float[Tensor, "layer pos head"]:
        return _sweep(model, corrupted_tokens, clean_cache, patching_metric, f"head_{kind}_by_pos", options)

    sweep.__doc__ = f"The metric with one head's {_ACT[kind]!r} activation at one position restored from the clean run: [layer pos head]."
    sweep.__name__ = sweep.__qualname__ = f"get_act_patch_attn_head_{kind}_by_pos"
    return sweep


get_act_patch_attn_head_out_all_pos = _head_all_pos("out")
get_act_patch_attn_head_q_all_pos = _head_all_pos("q")
get_act_patch_attn_head_k_all_pos = _head_all_pos("k")
get_act_patch_attn_head_v_all_pos = _head_all_pos("v")
get_act_patch_attn_head_pattern_all_pos = _head_all_pos("pattern")
get_act_patch_attn_head_out_by_pos = _head_by_pos("out")
get_act_patch_attn_head_q_by_pos = _head_by_pos("q")
get_act_patch_attn_head_k_by_pos = _head_by_pos("k")  # pos: the key position
get_act_patch_attn_head_v_by_pos = _head_by_pos("v")  # pos: the key position


def get_act_patch_attn_head_pattern_by_pos(
    model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric: Callable, **options
) -> Float[Tensor, "layer head pos"]:
    """The metric with one head's attention pattern row (query position `pos`) restored from the
    clean run: [layer head pos], TransformerLens's order for this one sweep."""
    values = _sweep(model, corrupted_tokens, clean_cache, patching_metric, "head_pattern_by_pos", options)
    return einops.rearrange(values, "layer pos head -> layer head pos")


def get_act_patch_block_every(
    model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric: Callable, **options
) -> Float[Tensor, "3 layer pos"]:
    """resid_pre, attn_out and mlp_out sweeps stacked: [3 layer pos]."""
    return torch.stack([
        _sweep(model, corrupted_tokens, clean_cache, patching_metric, target, options)
        for target in ("resid_pre", "attn_out", "mlp_out")
    ])


def get_act_patch_attn_head_all_pos_every(
    model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric: Callable, **options
) -> Float[Tensor, "5 layer head"]:
    """Each head's out (z), q, k, v and pattern restored at every position, stacked: [5 layer head]."""
    return torch.stack([
        _sweep(model, corrupted_tokens, clean_cache, patching_metric, f"head_{kind}", options)
        for kind in ("out", "q", "k", "v", "pattern")
    ])


def get_act_patch_attn_head_by_pos_every(
    model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric: Callable, **options
) -> Float[Tensor, "5 layer pos head"]:
    """Each head's out (z), q, k, v and pattern restored at one position, stacked: [5 layer pos head]
    (the pattern sweep in [layer pos head] order here, as TransformerLens stacks it)."""
    return torch.stack([
        _sweep(model, corrupted_tokens, clean_cache, patching_metric, f"head_{kind}_by_pos", options)
        for kind in ("out", "q", "k", "v", "pattern")
    ])
