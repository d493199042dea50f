"""Activation patching: restore one activation of one run inside another and measure a metric.

Targets and the axes of their values:

* `resid_pre`, `resid_mid`, `resid_post`, `attn_out`, `mlp_out`: [layer pos]
* `head_out` (the head's output, i.e. its `hook_z`), `head_q`, `head_k`, `head_v`, `head_pattern`,
  each head patched at every position: [layer head]
* the same per position, `head_out_by_pos`, ..., `head_pattern_by_pos`: [layer pos head]
  (for `head_pattern_by_pos`, pos is the query position: one row of the pattern).

Denoising (TransformerLens's convention) runs the corrupted prompt and restores a clean
activation; noising runs the clean prompt and patches in a corrupted activation.

Speed: instead of one full forward per cell, cells are packed into the batch of a few forwards,
each resumed at the patched layer from the base run's cached residual stream, recomputing only the
positions the patch can change and unembedding only the positions the metric reads (see
`workbench/methods/_resume.py`). A cell whose patch is a no-op because clean and corrupted agree
there (positions before the first differing token) gets the base run's metric without a forward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import einops
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from workbench.errors import InputError
from workbench.hooks import ActivationCache, act_name, act_names
from workbench.methods._checks import as_index_list, check_per_prompt, check_sweep_options
from workbench.methods._resume import (
    BaseRun, CellGroup, ZDiff, all_rows, base_names, cached_runs, entry_of, run_cells, through_W_O, unembed,
)
from workbench.methods.metrics import Metric, as_metric, clean_beats_corrupted, normalize, scalar
from workbench.methods.planning import MemoryPlan, plan_sweep, show_plan
from workbench.methods.statistics import Bootstrap, by_group_frame, interval_columns, prompts_subset
from workbench.models import GPT
from workbench.models.attention import Attention

LAYER_POS_TARGETS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_TARGETS = ("head_out", "head_q", "head_k", "head_v", "head_pattern")
TARGETS = LAYER_POS_TARGETS + HEAD_TARGETS + tuple(f"{t}_by_pos" for t in HEAD_TARGETS)
DIRECTIONS = ("denoise", "noise")

# The activation each target patches (`act_name` shorthand), and where its change enters the residual stream.
_HOOK = {
    "resid_pre": "resid_pre", "resid_mid": "resid_mid", "resid_post": "resid_post",
    "attn_out": "attn_out", "mlp_out": "mlp_out",
    "head_out": "z", "head_q": "q", "head_k": "k", "head_v": "v", "head_pattern": "pattern",
}
_STAGE = {"resid_pre": "pre", "resid_mid": "mid", "attn_out": "mid", "resid_post": "post", "mlp_out": "post"}


def target_hook(target: str, layer: int) -> str:
    """The hook name that `target` patches in block `layer` (e.g. head_q -> blocks.l.attn.hook_q)."""
    return act_name(_HOOK[target.removesuffix("_by_pos")], layer)


def target_dims(target: str) -> tuple[str, ...]:
    if target in LAYER_POS_TARGETS:
        return ("layer", "pos")
    return ("layer", "pos", "head") if target.endswith("_by_pos") else ("layer", "head")


@dataclass
class PatchingResult:
    """values[cell] is the metric of the base run with that one cell patched; its axes are `dims`
    (("layer", "pos"), ("layer", "head") or ("layer", "pos", "head")), with `layers` labelling the
    layer axis and `str_tokens` the positions (the clean prompt, first row).

    For attribution patching (`method="attribution"`) values are the linear estimate
    baseline + gradient . (source - base activation).

    Per prompt (a sweep run with `per_prompt=True`): `per_prompt[..., prompt]` is each prompt's
    value, whose mean over the prompt axis is `values`; `prompt_clean`, `prompt_corrupted` [prompt]
    the unpatched runs' values; `groups[prompt]` optional labels. `to_frame()` then adds the
    bootstrap interval over prompts (`bootstrap`, `methods.statistics`) and `to_frame(by_group=True)`
    gives it per group."""

    values: Float[Tensor, "layer ..."]
    dims: tuple[str, ...]
    target: str
    direction: str
    method: str
    metric: str
    clean_value: float
    corrupted_value: float
    layers: list[int]
    str_tokens: list[str]
    memory_plan: MemoryPlan | None = None  # the sweep's memory plan (activation patching)
    per_prompt: Float[Tensor, "layer ... prompt"] | None = None
    prompt_clean: Float[Tensor, "prompt"] | None = None
    prompt_corrupted: Float[Tensor, "prompt"] | None = None
    groups: list[str] | None = None
    bootstrap: Bootstrap = field(default_factory=Bootstrap)

    @property
    def baseline(self) -> float:
        """The metric of the unpatched base run (corrupted when denoising, clean when noising)."""
        return self.corrupted_value if self.direction == "denoise" else self.clean_value

    @property
    def effect(self) -> Float[Tensor, "layer ..."]:
        """values - baseline: how much each patch moves the metric."""
        return self.values - self.baseline

    @property
    def clean_beats_corrupted(self) -> bool:
        """Whether the clean run is clearly better on the metric (`metrics.clean_beats_corrupted`,
        gap >= `metrics.MIN_GAP`); if not, the normalised values divide by noise."""
        return clean_beats_corrupted(self.clean_value, self.corrupted_value)

    def normalized(self) -> Float[Tensor, "layer ..."]:
        """values on the 0 = corrupted, 1 = clean scale."""
        return normalize(self.values, self.clean_value, self.corrupted_value)

    def for_prompts(self, keep: Tensor | Sequence[bool]) -> PatchingResult:
        """The result on the prompts marked in `keep` alone (per-prompt results only)."""
        return prompts_subset(self, keep, how="run the sweep with per_prompt=True")

    def to_frame(self, *, by_group: bool = False) -> pd.DataFrame:
        """One row per cell: the axis columns (layer, pos, head), token, value, effect, normalized.

        With per-prompt values also n (prompts), ci_low / ci_high (the bootstrap interval of value),
        effect_ci_low / effect_ci_high (of each prompt's value - its unpatched value) and
        normalized_ci_low / normalized_ci_high. `by_group`: one block of rows per group label
        (column `group`), each from that group's prompts alone."""
        if by_group:
            return by_group_frame(self)
        grids = torch.meshgrid(*[torch.arange(n) for n in self.values.shape], indexing="ij")
        frame = {dim: g.flatten().tolist() for dim, g in zip(self.dims, grids)}
        frame["layer"] = [self.layers[i] for i in frame["layer"]]
        if "pos" in frame:
            frame["token"] = [self.str_tokens[p] for p in frame["pos"]]
        frame["value"] = self.values.flatten().tolist()
        frame["effect"] = self.effect.flatten().tolist()
        try:
            frame["normalized"] = self.normalized().flatten().tolist()
        except InputError:  # clean and corrupted metric equal: no scale
            frame["normalized"] = float("nan")
        df = pd.DataFrame(frame)
        if self.per_prompt is not None:
            df = pd.concat([df, patching_intervals(self, self.per_prompt)], axis=1)
        df["target"], df["method"], df["direction"], df["metric"] = self.target, self.method, self.direction, self.metric
        return df


def patching_intervals(result, per_prompt: Float[Tensor, "... prompt"]) -> pd.DataFrame:
    """The interval columns of a patching-style result's cells (`per_prompt`, one row per cell in
    row-major order): `interval_columns` with effects against the unpatched run (the corrupted one
    when denoising, the clean one when noising), then normalized_ci_low / normalized_ci_high, the
    interval on the 0 = corrupted, 1 = clean scale (NaN when the two runs agree: no scale)."""
    base = result.prompt_corrupted if result.direction == "denoise" else result.prompt_clean
    ci = interval_columns(per_prompt, base, result.bootstrap)
    try:
        ends = [normalize(torch.tensor(ci[c].to_numpy()), result.clean_value, result.corrupted_value)
                for c in ("ci_low", "ci_high")]
        ci["normalized_ci_low"], ci["normalized_ci_high"] = torch.minimum(*ends).tolist(), torch.maximum(*ends).tolist()
    except InputError:  # clean and corrupted metric equal: no scale
        ci["normalized_ci_low"] = ci["normalized_ci_high"] = float("nan")
    return ci


# ---------------------------------------------------------------------- input checks (shared)


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise InputError(f"unknown patching target {target!r}; allowed: {', '.join(TARGETS)}")
    return target


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be 'denoise' (clean into corrupted) or 'noise', got {direction!r}")
    return direction


def check_pair(model: GPT, clean_tokens, corrupted_tokens) -> tuple[Tensor, Tensor]:
    """Both prompts as [batch pos] ids; they must have the same shape."""
    clean = model.prepare_tokens(clean_tokens, name="clean_tokens")
    corrupted = model.prepare_tokens(corrupted_tokens, name="corrupted_tokens")
    if clean.shape[1] != corrupted.shape[1]:
        raise InputError(
            f"clean and corrupted prompts must have the same length: clean has {clean.shape[1]} tokens, "
            f"corrupted has {corrupted.shape[1]}"
        )
    if clean.shape[0] != corrupted.shape[0]:
        raise InputError(
            f"clean and corrupted must have the same batch size: clean has {clean.shape[0]} prompts, "
            f"corrupted has {corrupted.shape[0]}"
        )
    return clean, corrupted


def check_layers(model: GPT, layers: Sequence[int] | None) -> list[int]:
    n_layer = model.cfg.n_layer
    if layers is None:
        return list(range(n_layer))
    layers = as_index_list(layers, "layers", "layer")
    if not layers:
        raise InputError("layers is empty: give at least one layer, or None for all")
    for l in layers:
        if not 0 <= l < n_layer:
            raise InputError(f"layer {l} is out of range: the model has {n_layer} layers (0 to {n_layer - 1})")
    return layers


class PatchingInputs(NamedTuple):
    """The checked inputs of a patching method: prompts as [batch pos] ids, metric as a `Metric`,
    layers as a list."""

    target: str
    direction: str
    clean: Tensor
    corrupted: Tensor
    metric: Metric
    layers: list[int]


def check_inputs(model, clean_tokens, corrupted_tokens, metric, *, target, direction, layers) -> PatchingInputs:
    """The checks activation and attribution patching share; raises InputError naming the bad option."""
    target, direction = check_target(target), check_direction(direction)
    clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens)
    return PatchingInputs(target, direction, clean, corrupted, as_metric(metric), check_layers(model, layers))


def first_difference(clean: Tensor, corrupted: Tensor) -> int:
    """The first position where any clean and corrupted prompt differ (n_pos if none). Before it
    the two runs are identical (attention is causal), so patching there changes nothing."""
    differs = (clean != corrupted).any(0).nonzero()
    return int(differs[0]) if len(differs) else clean.shape[1]


# ---------------------------------------------------------------------- activation patching


def activation_patching(
    model: GPT,
    clean_tokens: Tensor | str | Sequence[str] | None,
    corrupted_tokens: Tensor | str | Sequence[str],
    metric: Metric | Callable[[Tensor], Tensor],
    *,
    target: str = "resid_pre",
    direction: str = "denoise",
    layers: Sequence[int] | None = None,
    max_batch: int | None = None,
    progress: bool | Callable[[int, int], None] = True,
    clean_cache: ActivationCache | Mapping[str, Tensor] | None = None,
    memory: int | float | str | None = None,
    per_prompt: bool = False,
    groups: Sequence[str] | None = None,
) -> PatchingResult:
    """Run one prompt, restore one activation from the other, and measure `metric`, for every cell.

    `clean_tokens`, `corrupted_tokens`: [batch pos] ids of the same shape (or text).
    `metric`: a `Metric` (e.g. `LogitDiff(answer, wrong)`; computes logits only where it reads) or
    any callable logits [batch pos d_vocab] -> scalar. `target`: see the module docstring.
    `direction`: "denoise" patches clean activations into the corrupted run, "noise" the reverse.
    `layers`: sweep only these layers (default all). `max_batch`: most sequences (cells x batch)
    in one forward (default: as many as fit in `_resume.TOKEN_BUDGET` token positions, the
    memory budget every forward keeps to).
    `progress`: True for a console bar, False for none, or a callback `progress(done, total)`
    called with the number of cells done after each forward (e.g. to drive a dashboard's bar).
    `clean_cache`: the clean run's activations (e.g. `model.run_with_cache(clean_tokens)[1]`, batch
    axis kept) in place of `clean_tokens`, which must then be None: TransformerLens's `get_act_patch_*`
    calling convention (`workbench.patching`). Denoising only. The cache must hold the patched
    activations and the last block's `hook_resid_post` (for `clean_value`); every cell is run, since
    where the prompts agree is unknown, and `str_tokens` are the corrupted prompt's.
    `memory`: the memory budget (bytes, or a size such as "2GiB"; default half the device's free
    memory): chunks are sized to fit it (`planning.plan_sweep`; `result.memory_plan`) and
    a budget that cannot hold the cached runs and one cell is a `MemoryBudgetError`.
    `per_prompt`: also keep each prompt's value (`PatchingResult.per_prompt`, [... prompt]; the
    metric must be a workbench `Metric`, which is a mean over prompts), from the same forwards;
    `groups`: a label per prompt for per-group intervals.

    Returns a `PatchingResult` whose values[layer, pos] / [layer, head] / [layer, pos, head] is
    the metric of the patched run (TransformerLens's `get_act_patch_*` numbers).
    """
    check_sweep_options(max_batch, progress)
    if clean_cache is None:
        target, direction, clean, corrupted, metric, layers = check_inputs(
            model, clean_tokens, corrupted_tokens, metric, target=target, direction=direction, layers=layers
        )
    else:
        if clean_tokens is not None:
            raise InputError("give clean_tokens or clean_cache, not both (clean_tokens=None with a clean_cache)")
        if check_direction(direction) != "denoise":
            raise InputError("clean_cache patches clean activations into the corrupted run: direction must be 'denoise'")
        target, metric, layers = check_target(target), as_metric(metric), check_layers(model, layers)
        clean, corrupted = None, model.prepare_tokens(corrupted_tokens, name="corrupted_tokens")
    groups = check_per_prompt(metric, per_prompt, groups, corrupted.shape[0])
    base_tokens, source_tokens = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    hooks = [target_hook(target, l) for l in layers]
    if target.startswith(("head_q", "head_k", "head_v", "head_pattern")):  # patched z needs q, k, v, pattern
        hooks += [act_name(n, l) for l in layers for n in ("q", "k", "v", "z", "pattern")]
    elif target.startswith("head_out"):
        hooks += [act_name("z", l) for l in layers]
    read = metric.read_positions(base_tokens.shape[1])
    names = hooks + base_names(model.cfg.n_layer)
    plan = plan_sweep(model, batch=base_tokens.shape[0], pos=base_tokens.shape[1], runs=2 if clean_cache is None else 1,
                      names=names, read=read, swept_layers=len(layers), memory=memory)
    show_plan(plan, progress)
    if clean_cache is None:
        (base_logits, base_cache), (source_logits, source_cache) = cached_runs(
            model, [base_tokens, source_tokens], names, read, metric.vocab
        )
        d = first_difference(clean, corrupted)
    else:
        ((base_logits, base_cache),) = cached_runs(model, [base_tokens], names, read, metric.vocab)
        source_cache = _from_clean_cache(model, clean_cache, hooks, base_tokens)
        final = source_cache["resid_post", model.cfg.n_layer - 1]
        with torch.no_grad():
            source_logits = unembed(model, final[:, read], metric.vocab)
        d = 0
    base = BaseRun(base_tokens, base_logits, base_cache, model.cfg.n_layer, other_logits=(source_logits,))
    clean_logits, corrupted_logits = (source_logits, base_logits) if direction == "denoise" else (base_logits, source_logits)
    clean_value = float(scalar(metric.evaluate(clean_logits), metric.name))
    corrupted_value = float(scalar(metric.evaluate(corrupted_logits), metric.name))

    n_pos, n_head = base_tokens.shape[1], model.cfg.n_head
    dims = target_dims(target)
    shape = [len(layers)] + [{"pos": n_pos, "head": n_head}[dim] for dim in dims[1:]]
    values = torch.full(shape + ([base_tokens.shape[0]] if per_prompt else []), float("nan"))
    cells = [
        _cell_group(model, target, layer, i, base_cache, source_cache, d, n_pos)
        for i, layer in enumerate(layers)
    ]
    sizes = run_cells(model, base, cells, metric, values, max_batch=max_batch, progress=progress,
                      desc=f"patching {target}", plan=plan, per_prompt=per_prompt)
    plan = dataclasses.replace(plan, chunks=tuple(sizes))
    prompts = {}
    if per_prompt:
        prompts = dict(per_prompt=values, prompt_clean=metric.per_prompt(clean_logits).float().cpu(),
                       prompt_corrupted=metric.per_prompt(corrupted_logits).float().cpu(), groups=groups)
        values = einops.reduce(values, "... prompt -> ...", "mean")
    return PatchingResult(
        values=values, dims=dims, target=target, direction=direction, method="activation", metric=metric.name,
        clean_value=clean_value, corrupted_value=corrupted_value, layers=layers,
        str_tokens=model.to_str_tokens((corrupted if clean is None else clean)[0]), memory_plan=plan, **prompts,
    )


def _from_clean_cache(
    model: GPT, clean_cache: ActivationCache | Mapping[str, Tensor], hooks: list[str], corrupted: Tensor
) -> ActivationCache:
    """The activations a sweep reads from the source run, taken from a given clean cache."""
    if not getattr(clean_cache, "has_batch_dim", True):
        raise InputError("clean_cache has no batch axis (remove_batch_dim): run run_with_cache without it")
    out, patterns = {}, set(act_names("pattern", range(model.cfg.n_layer)))
    for name in dict.fromkeys(hooks + [act_name("resid_post", model.cfg.n_layer - 1)]):
        try:
            x = clean_cache[name]
        except KeyError:
            raise InputError(f"clean_cache does not hold {name!r}, which this sweep patches or reads; "
                             "cache the clean run with model.run_with_cache(clean_tokens)") from None
        pos_axis = -1 if name in patterns else 1  # pattern: [batch head query_pos key_pos]
        if x.ndim < 2 or x.shape[0] != corrupted.shape[0] or x.shape[pos_axis] != corrupted.shape[1]:
            raise InputError(f"clean_cache[{name!r}] has shape {tuple(x.shape)}, but the corrupted tokens are "
                             f"[batch pos] = {tuple(corrupted.shape)}: the clean run must have the same batch and length")
        out[name] = x.detach().to(corrupted.device)
    return ActivationCache(out, model)


def _cell_group(model: GPT, target: str, layer: int, i: int, base, source, d: int, n_pos: int) -> CellGroup:
    """The cells of one layer: their entry point, first changed position and residual deltas."""
    noop = n_pos  # a `first` past every position: the cell gets the base metric
    if target in LAYER_POS_TARGETS:
        name = target_hook(target, layer)
        diff = source[name] - base[name]
        group = CellGroup(entry_of(layer, _STAGE[target]), _at_positions(diff))
        for p in range(n_pos):
            group.add(p, (i, p), p if p >= d else noop)
        return group

    kind = target.removesuffix("_by_pos")
    attn = model.blocks[layer].attn
    if kind == "head_k" and target.endswith("_by_pos"):
        z_diff = _k_by_pos(attn, layer, base, source)
    elif kind == "head_v" and target.endswith("_by_pos"):
        z_diff = _v_by_pos(layer, base, source)
    else:
        # The head's output with the patched input, at every position: row p only depends on
        # query p, so by-position q / out / pattern cells take row p of it.
        z_diff = _patched_z(attn, kind, layer, base, source) - base["z", layer]
        z_diff = _row_only(z_diff) if target.endswith("_by_pos") else all_rows(z_diff)
    group = CellGroup(entry_of(layer, "mid"), through_W_O(z_diff, attn))
    n_head = model.cfg.n_head
    if target.endswith("_by_pos"):
        for p in range(n_pos):
            for h in range(n_head):
                group.add((p, h), (i, p, h), p if p >= d else noop)
    else:
        for h in range(n_head):
            group.add((None, h), (i, h), d if d < n_pos else noop)
    return group


def _at_positions(diff: Float[Tensor, "batch pos d_model"]):
    """Deltas for layer-position cells: `diff` at the cell's position, zero elsewhere."""

    def delta(keys: list[int]) -> Float[Tensor, "cell batch pos d_model"]:
        onehot = torch.zeros(len(keys), diff.shape[1], dtype=diff.dtype, device=diff.device)
        onehot[torch.arange(len(keys)), torch.tensor(keys)] = 1
        return einops.einsum(onehot, diff, "cell pos, batch pos d_model -> cell batch pos d_model")

    return delta


def _row_only(z_diff: Float[Tensor, "batch pos head d_head"]) -> ZDiff:
    def take(keys: list[tuple]) -> Float[Tensor, "cell batch pos d_head"]:
        pos = torch.tensor([k[0] for k in keys])
        heads = torch.tensor([k[1] for k in keys])
        rows = einops.rearrange(z_diff[:, pos, heads], "batch cell d_head -> cell batch d_head")
        onehot = torch.zeros(len(keys), z_diff.shape[1], dtype=z_diff.dtype, device=z_diff.device)
        onehot[torch.arange(len(keys)), pos] = 1
        return einops.einsum(onehot, rows, "cell pos, cell batch d_head -> cell batch pos d_head")

    return take


def _patched_z(attn: Attention, kind: str, layer: int, base, source) -> Float[Tensor, "batch pos head d_head"]:
    """Every head's output at every position when its `kind` input comes from the source run."""
    if kind == "head_out":
        return source["z", layer]

    def get(name: str) -> Tensor:
        return (source if kind == f"head_{name}" else base)[name, layer]

    if kind in ("head_q", "head_k"):
        return attn.attend(get("q"), get("k"), get("v"))
    return attn.mix(get("pattern"), get("v"))  # head_v, head_pattern


def _v_by_pos(layer: int, base, source) -> ZDiff:
    """Patching v at key position p changes z by pattern[:, p] (x) (v_source - v_base)[p] (linear in v)."""
    pattern = einops.rearrange(base["pattern", layer], "batch head query_pos key_pos -> head key_pos batch query_pos")
    v_diff = source["v", layer] - base["v", layer]

    def take(keys: list[tuple]) -> Float[Tensor, "cell batch pos d_head"]:
        pos = torch.tensor([k[0] for k in keys])
        heads = torch.tensor([k[1] for k in keys])
        weights = pattern[heads, pos]  # [cell batch query_pos]: how much each query reads key `pos`
        vd = einops.rearrange(v_diff[:, pos, heads], "batch cell d_head -> cell batch d_head")
        return einops.einsum(weights, vd, "cell batch query_pos, cell batch d_head -> cell batch query_pos d_head")

    return take


def _k_by_pos(attn: Attention, layer: int, base, source) -> ZDiff:
    """Patching k at key position p: the head attends again with key p from the source run. Each
    cell is one head of a batched attention (the head axis indexes cells)."""
    q, k, v, z = (base[n, layer] for n in ("q", "k", "v", "z"))
    k_source = source["k", layer]

    def take(keys: list[tuple]) -> Float[Tensor, "cell batch pos d_head"]:
        pos = torch.tensor([key[0] for key in keys])
        heads = torch.tensor([key[1] for key in keys])
        cell_k = k[:, :, heads].clone()  # [batch key_pos cell d_head]
        cell_k[:, pos, torch.arange(len(keys))] = k_source[:, pos, heads]
        z_diff = attn.attend(q[:, :, heads], cell_k, v[:, :, heads]) - z[:, :, heads]
        return einops.rearrange(z_diff, "batch pos cell d_head -> cell batch pos d_head")

    return take
