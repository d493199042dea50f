"""Ablation: knock out heads, attention layers, MLP layers or MLP neurons, and sweep over heads.

One vocabulary, `Ablation`, says what is knocked out and how:

* "zero": the activation is set to 0;
* "mean": to its mean over a reference batch, position by position (the reference prompts have
  the prompts' length);
* "resample": to its value on a reference prompt drawn at random (seeded), one draw per prompt,
  the same draw for every ablated component.

A head is ablated at its output `hook_z` (so b_O stays), an attention layer at `hook_attn_out`, an
MLP layer at `hook_mlp_out` and a neuron at `mlp.hook_post`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import einops
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from workbench.errors import InputError
from workbench.hooks import act_name, act_names
from workbench.methods._checks import as_index, as_index_list, check_per_prompt, check_seed, check_sweep_options, shown
from workbench.methods._resume import (
    BaseRun, CellGroup, all_rows, base_names, cached_runs, entry_of, run_cells, through_W_O,
)
from workbench.methods.metrics import Metric, as_metric, scalar
from workbench.methods.planning import MemoryPlan, plan_sweep, show_plan
from workbench.methods.statistics import Bootstrap, by_group_frame, interval_columns
from workbench.models import GPT

METHODS = ("zero", "mean", "resample")


@dataclass(frozen=True)
class Ablation:
    """What to ablate and how: `method` is "zero", "mean" or "resample"; `heads` are (layer, head)
    pairs, `attn_layers` and `mlp_layers` layer indices, `neurons` (layer, neuron) pairs."""

    method: str = "zero"
    heads: Sequence[Sequence[int]] = ()  # stored as tuple[tuple[int, int], ...]
    attn_layers: Sequence[int] = ()
    mlp_layers: Sequence[int] = ()
    neurons: Sequence[Sequence[int]] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown ablation method {self.method!r}; allowed: {', '.join(METHODS)}")
        # Accept lists from callers and configs; store tuples so the ablation is hashable.
        object.__setattr__(self, "heads", _pairs(self.heads, "heads", "head"))
        object.__setattr__(self, "attn_layers", tuple(as_index_list(self.attn_layers, "attn_layers", "layer")))
        object.__setattr__(self, "mlp_layers", tuple(as_index_list(self.mlp_layers, "mlp_layers", "layer")))
        object.__setattr__(self, "neurons", _pairs(self.neurons, "neurons", "neuron"))
        if not (self.heads or self.attn_layers or self.mlp_layers or self.neurons):
            raise InputError("an Ablation needs something to ablate: heads, attn_layers, mlp_layers or neurons")

    def check(self, model: GPT) -> None:
        """Raise InputError for a layer, head or neuron the model does not have."""
        n_layer, n_head, d_mlp = model.cfg.n_layer, model.cfg.n_head, model.cfg.d_mlp
        layers = [l for l, _ in self.heads] + list(self.attn_layers) + list(self.mlp_layers) + [l for l, _ in self.neurons]
        for l in layers:
            if not 0 <= l < n_layer:
                raise InputError(f"layer {l} is out of range: the model has {n_layer} layers (0 to {n_layer - 1})")
        for l, h in self.heads:
            if not 0 <= h < n_head:
                raise InputError(f"head {h} (layer {l}) is out of range: the model has {n_head} heads (0 to {n_head - 1})")
        for l, n in self.neurons:
            if not 0 <= n < d_mlp:
                raise InputError(f"neuron {n} (layer {l}) is out of range: the MLP has {d_mlp} neurons (0 to {d_mlp - 1})")

    def sites(self) -> dict[str, list[int] | None]:
        """Hook name -> the head / neuron indices ablated there (None: the whole activation)."""
        out: dict[str, list[int] | None] = {}
        for l, h in self.heads:
            out.setdefault(act_name("z", l), []).append(h)
        for l in self.attn_layers:
            out[act_name("attn_out", l)] = None
        for l in self.mlp_layers:
            out[act_name("mlp_out", l)] = None
        for l, n in self.neurons:
            out.setdefault(act_name("post", l), []).append(n)
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row per ablated component: method, component (head / attn / mlp / neuron), layer, index."""
        rows = [("head", l, h) for l, h in self.heads] + [("attn", l, None) for l in self.attn_layers]
        rows += [("mlp", l, None) for l in self.mlp_layers] + [("neuron", l, n) for l, n in self.neurons]
        df = pd.DataFrame(rows, columns=["component", "layer", "index"])
        df["index"] = df["index"].astype("Int64")  # missing for whole layers
        df.insert(0, "method", self.method)
        return df


def _pairs(values: object, what: str, item: str) -> tuple[tuple[int, int], ...]:
    """(layer, index) pairs from a list of pairs or a [n 2] tensor."""
    if isinstance(values, (str, bytes, dict, set)) or not hasattr(values, "__iter__"):
        raise InputError(f"{what} must be a list of (layer, {item}) pairs, got {shown(values)}")
    pairs = []
    for pair in values:
        if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise InputError(f"each of {what} must be a (layer, index) pair, e.g. (0, 1), got {shown(pair)}")
        pairs.append((as_index(pair[0], f"the layer in {what}"), as_index(pair[1], f"the {item} in {what}")))
    return tuple(pairs)


def _replacement(
    method: str, reference_act: Tensor | None, batch: int, rows: Tensor | None, like: Tensor
) -> Tensor:
    """The ablated value of an activation [batch pos ...] (broadcastable)."""
    if method == "zero":
        return torch.zeros_like(like)
    if method == "mean":
        return einops.reduce(reference_act, "batch pos ... -> 1 pos ...", "mean").expand_as(like)
    return reference_act[rows]  # resample


def _check_reference(model: GPT, method: str, tokens: Tensor, reference) -> Tensor | None:
    if method == "zero":
        return None
    if reference is None:
        return tokens
    if isinstance(reference, Tensor) and reference.numel() == 0:
        given = f"a tensor of shape {tuple(reference.shape)}"
    elif isinstance(reference, (list, tuple)) and len(reference) == 0:
        given = f"an empty {type(reference).__name__}"
    else:
        given = None
    if given:
        raise InputError(
            f"{method} ablation needs a non-empty reference batch (token ids [batch pos], a prompt or a list "
            f"of prompts, or None for the prompts themselves), got {given}"
        )
    reference = model.prepare_tokens(reference, name="reference")
    if reference.shape[1] != tokens.shape[1]:
        raise InputError(
            f"the reference batch has {reference.shape[1]} positions but the prompts have {tokens.shape[1]}: "
            f"{method} ablation replaces activations position by position, so they must match"
        )
    return reference


def _resample_rows(n_reference: int, batch: int, seed: int) -> Tensor:
    return torch.randint(n_reference, (batch,), generator=torch.Generator().manual_seed(seed))


def ablation_hooks(
    model: GPT,
    ablation: Ablation,
    tokens: Tensor | str | Sequence[str],
    *,
    reference: Tensor | str | Sequence[str] | None = None,
    seed: int = 0,
) -> list[tuple[str, Callable]]:
    """The forward hooks that apply `ablation` to a run on `tokens` (for `model.hooks(...)`).

    `reference`: the prompts whose activations "mean" averages and "resample" draws from
    (default: `tokens` themselves)."""
    if not isinstance(ablation, Ablation):
        raise InputError(f"ablation must be an Ablation, e.g. Ablation('zero', heads=[(0, 1)]), got {shown(ablation)}")
    ablation.check(model)
    seed = check_seed(seed)
    tokens = model.prepare_tokens(tokens, name="tokens")
    reference = _check_reference(model, ablation.method, tokens, reference)
    sites = ablation.sites()
    cache = None
    rows = None
    if reference is not None:
        with torch.no_grad():
            _, cache = model.run_with_cache(reference, names_filter=list(sites))
        if ablation.method == "resample":
            rows = _resample_rows(reference.shape[0], tokens.shape[0], seed).to(tokens.device)

    def make(name: str, index: list[int] | None):
        def hook(x: Tensor, hook) -> Tensor:
            value = _replacement(ablation.method, None if cache is None else cache[name], x.shape[0], rows, x)
            if index is None:
                return value.to(x.dtype)
            x = x.clone()
            idx = torch.tensor(index, device=x.device)
            x[:, :, idx] = value[:, :, idx].to(x.dtype)
            return x

        return hook

    return [(name, make(name, index)) for name, index in sites.items()]


def ablate(
    model: GPT,
    tokens: Tensor | str | Sequence[str],
    ablation: Ablation,
    *,
    reference: Tensor | str | Sequence[str] | None = None,
    seed: int = 0,
) -> Float[Tensor, "batch pos d_vocab"]:
    """The logits of `tokens` with `ablation` applied (see `ablation_hooks` for `reference`)."""
    tokens = model.prepare_tokens(tokens, name="tokens")
    hooks = ablation_hooks(model, ablation, tokens, reference=reference, seed=seed)
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


@dataclass
class AblationResult:
    """values[layer, head] is the metric with that one head ablated; `baseline` without ablation.

    Per prompt (`ablation_sweep(..., per_prompt=True)`): `per_prompt[layer, head, prompt]` each
    prompt's value (mean over prompts: `values`), `prompt_baseline` [prompt] each prompt's
    unablated value, `groups` optional labels; `to_frame()` then adds bootstrap intervals over
    prompts (`bootstrap`), `to_frame(by_group=True)` per group."""

    values: Float[Tensor, "layer head"]
    baseline: float
    method: str
    metric: str
    seed: int | None = None
    memory_plan: MemoryPlan | None = None  # the sweep's memory plan
    per_prompt: Float[Tensor, "layer head prompt"] | None = None
    prompt_baseline: Float[Tensor, "prompt"] | None = None
    groups: list[str] | None = None
    bootstrap: Bootstrap = field(default_factory=Bootstrap)

    @property
    def effect(self) -> Float[Tensor, "layer head"]:
        """values - baseline: how much ablating each head moves the metric."""
        return self.values - self.baseline

    def for_prompts(self, keep: Tensor | Sequence[bool]) -> AblationResult:
        """The result on the prompts marked in `keep` alone (per-prompt results only)."""
        if self.per_prompt is None:
            raise InputError("this result has no per-prompt values: run the sweep with per_prompt=True")
        keep = torch.as_tensor(keep, dtype=torch.bool)
        per_prompt = self.per_prompt[..., keep]
        return replace(self, values=per_prompt.mean(-1), per_prompt=per_prompt,
                       baseline=float(self.prompt_baseline[keep].mean()), prompt_baseline=self.prompt_baseline[keep],
                       groups=None if self.groups is None else [g for g, k in zip(self.groups, keep) if k])

    def to_frame(self, *, by_group: bool = False) -> pd.DataFrame:
        """One row per head: layer, head, value, effect, method, metric; with per-prompt values also
        n, ci_low / ci_high and effect_ci_low / effect_ci_high (bootstrap over prompts, effects
        paired per prompt). `by_group`: a block of rows per group label (column `group`)."""
        if by_group:
            return by_group_frame(self)
        n_layer, n_head = self.values.shape
        frame = pd.DataFrame({
            "layer": [l for l in range(n_layer) for _ in range(n_head)],
            "head": [h for _ in range(n_layer) for h in range(n_head)],
            "value": self.values.flatten().tolist(),
            "effect": self.effect.flatten().tolist(),
            "method": self.method,
            "metric": self.metric,
        })
        if self.per_prompt is None:
            return frame
        return pd.concat([frame, interval_columns(self.per_prompt, self.prompt_baseline, self.bootstrap)], axis=1)


def ablation_sweep(
    model: GPT,
    tokens: Tensor | str | Sequence[str],
    metric: Metric | Callable[[Tensor], Tensor],
    *,
    method: str = "zero",
    reference: Tensor | str | Sequence[str] | None = None,
    seed: int = 0,
    max_batch: int | None = None,
    progress: bool | Callable[[int, int], None] = True,
    memory: int | float | str | None = None,
    per_prompt: bool = False,
    groups: Sequence[str] | None = None,
) -> AblationResult:
    """Ablate each head on its own (`Ablation(method, heads=[(layer, head)])`) and measure `metric`.

    Same numbers as one `ablate` forward per head, but the heads are packed into a few batched
    forwards, each resumed at the head's layer from cached residuals (`_resume.py`), in chunks
    sized to the memory budget `memory` (as in `activation_patching`).
    `per_prompt`: also keep each prompt's value (a workbench `Metric` only); `groups`: a label per
    prompt for per-group intervals. Returns values[layer, head]."""
    if method not in METHODS:
        raise InputError(f"unknown ablation method {method!r}; allowed: {', '.join(METHODS)}")
    check_sweep_options(max_batch, progress)
    seed = check_seed(seed)
    tokens = model.prepare_tokens(tokens, name="tokens")
    metric = as_metric(metric)
    groups = check_per_prompt(metric, per_prompt, groups, tokens.shape[0])
    reference = _check_reference(model, method, tokens, reference)
    n_layer, n_head, batch = model.cfg.n_layer, model.cfg.n_head, tokens.shape[0]
    read = metric.read_positions(tokens.shape[1])
    z_names = act_names("z", range(n_layer))
    separate = reference is not None and reference is not tokens  # mean / resample over other prompts
    runs = [tokens, reference] if separate else [tokens]
    names = z_names + base_names(n_layer)
    plan = plan_sweep(model, batch=batch, pos=tokens.shape[1], runs=len(runs), names=names, read=read,
                      swept_layers=n_layer, memory=memory)
    show_plan(plan, progress)
    results = cached_runs(model, runs, names, read, metric.vocab)
    base_logits, base_cache = results[0]
    reference_cache = None if reference is None else results[-1][1]
    rows = _resample_rows(reference.shape[0], batch, seed).to(tokens.device) if method == "resample" else None
    base = BaseRun(tokens, base_logits, base_cache, n_layer)
    baseline = float(scalar(metric.evaluate(base_logits), metric.name))

    values = torch.full((n_layer, n_head) + ((batch,) if per_prompt else ()), float("nan"))
    cells = []
    for l in range(n_layer):
        z = base_cache["z", l]
        z_new = _replacement(method, None if reference_cache is None else reference_cache["z", l], batch, rows, z)
        group = CellGroup(entry_of(l, "mid"), through_W_O(all_rows(z_new - z), model.blocks[l].attn))
        for h in range(n_head):
            group.add((None, h), (l, h), 0)
        cells.append(group)
    sizes = run_cells(model, base, cells, metric, values, max_batch=max_batch, progress=progress,
                      desc=f"{method}-ablating heads", plan=plan, per_prompt=per_prompt)
    plan = dataclasses.replace(plan, chunks=tuple(sizes))
    prompts = {}
    if per_prompt:
        prompts = dict(per_prompt=values, prompt_baseline=metric.per_prompt(base_logits).float().cpu(), groups=groups)
        values = einops.reduce(values, "layer head prompt -> layer head", "mean")
    return AblationResult(values, baseline, method, metric.name, seed if method == "resample" else None,
                          memory_plan=plan, **prompts)

