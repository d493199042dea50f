"""Attribution patching: the linear (gradient) approximation of activation patching.

For a cell with base activation a, source activation a' and metric gradient g = d metric / d a at
the base run, patching a' in changes the metric by about g . (a' - a). One clean forward and one
corrupted forward + backward give every cell of every layer at once (Nanda 2023, "Attribution
patching"). Targets, axes and directions are those of `activation_patching`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import einops
import torch
from torch import Tensor

from workbench.hooks import act_name
from workbench.methods._checks import check_per_prompt
from workbench.methods.metrics import Metric, scalar
from workbench.methods.patching import (
    LAYER_POS_TARGETS,
    PatchingResult,
    check_inputs,
    target_dims,
    target_hook,
)
from workbench.models import GPT

# How g * (a' - a) is summed down to the target's axes, by activation layout.
_REDUCE = {
    ("resid", False): "batch pos d_model -> pos",
    ("head", False): "batch pos head d_head -> head",
    ("head", True): "batch pos head d_head -> pos head",
    ("pattern", False): "batch head query_pos key_pos -> head",
    ("pattern", True): "batch head query_pos key_pos -> query_pos head",
}


def attribution_patching(
    model: GPT,
    clean_tokens: Tensor | str | Sequence[str],
    corrupted_tokens: Tensor | str | Sequence[str],
    metric: Metric | Callable[[Tensor], Tensor],
    *,
    target: str = "resid_pre",
    direction: str = "denoise",
    layers: Sequence[int] | None = None,
    per_prompt: bool = False,
    groups: Sequence[str] | None = None,
) -> PatchingResult:
    """Estimate `activation_patching` for every cell from gradients.

    Denoising: values = corrupted metric + grad_corrupted . (clean - corrupted activation), the
    gradient taken on the corrupted run; noising swaps the runs. `effect` is the estimated change,
    summed over the batch and over the activation's other axes (d_model, d_head, key_pos).
    `per_prompt`: also keep each prompt's estimate (a workbench `Metric`, a mean over prompts: the
    gradient of the mean is 1/batch that of each prompt's value, so prompt b's estimate is its
    unpatched value + batch * its share of the sum); `groups`: a label per prompt.
    Returns a `PatchingResult` with `method="attribution"`, axes as in `activation_patching`.
    """
    target, direction, clean, corrupted, metric, layers = check_inputs(
        model, clean_tokens, corrupted_tokens, metric, target=target, direction=direction, layers=layers
    )
    groups = check_per_prompt(metric, per_prompt, groups, clean.shape[0])
    base_tokens, source_tokens = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    names = [target_hook(target, l) for l in layers]

    with torch.no_grad():
        source_logits, source_cache = model.run_with_cache(source_tokens, names_filter=names)
    base_logits, base_cache = model.run_with_cache(
        base_tokens,
        names_filter=names,
        incl_bwd=True,
        loss_fn=lambda logits: scalar(metric(logits), metric.name),
        # Gradients flow even when the model's parameters are frozen.
        fwd_hooks=[(act_name("embed"), _requires_grad)],
    )
    base_value = float(metric(base_logits))
    source_value = float(scalar(metric(source_logits), metric.name))
    clean_value, corrupted_value = (source_value, base_value) if direction == "denoise" else (base_value, source_value)

    if target in LAYER_POS_TARGETS:
        layout = "resid"
    else:
        layout = "pattern" if target.startswith("head_pattern") else "head"
    pattern = _REDUCE[(layout, target.endswith("_by_pos"))]
    if per_prompt:
        pattern += " batch"  # keep each prompt's share: [... prompt]
    effects = []
    for name in names:
        grad, base_act, source_act = base_cache[name + "_grad"], base_cache[name], source_cache[name]
        effects.append(einops.reduce(grad * (source_act - base_act), pattern, "sum"))
    effect = torch.stack(effects).detach().float().cpu()
    prompts = {}
    if per_prompt:
        with torch.no_grad():
            base_prompt = metric.per_prompt(metric.select(base_logits)).detach().float().cpu()
            source_prompt = metric.per_prompt(metric.select(source_logits)).float().cpu()
        per_prompt_values = effect * clean.shape[0] + base_prompt
        clean_prompt, corrupted_prompt = (source_prompt, base_prompt) if direction == "denoise" else (base_prompt, source_prompt)
        prompts = dict(per_prompt=per_prompt_values, prompt_clean=clean_prompt, prompt_corrupted=corrupted_prompt,
                       groups=groups)
        values = einops.reduce(per_prompt_values, "... prompt -> ...", "mean")
    else:
        values = effect + base_value
    return PatchingResult(
        values=values, dims=target_dims(target), target=target, direction=direction, method="attribution",
        metric=metric.name, clean_value=clean_value, corrupted_value=corrupted_value, layers=layers,
        str_tokens=model.to_str_tokens(clean[0]), **prompts,
    )


def _requires_grad(x: Tensor, hook) -> Tensor:
    return x if x.requires_grad else x.detach().requires_grad_(True)
