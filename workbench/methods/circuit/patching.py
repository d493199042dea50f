"""Exact edge patching: the metric when one edge alone carries the corrupted node output.

For edge (u, d), the clean run is repeated with downstream input d reading
resid_d + (corrupted_u - clean_u); every other reader of u keeps the clean output, and d's node
(a head through its q, k or v; an MLP; the logits) passes its changed output on to everything
after it as usual. Edges are cells of the packed patching engine (`methods/_resume.py`): each
edge's change of its downstream node's output is computed for that node alone (one head's
attention with one of q, k, v recomputed from its own LayerNorm'd input; one MLP; or the final
residual), added to the residual stream after that node, and the run resumes there from the clean
run's cache, many edges per forward, positions before the first differing token skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import einops
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.methods._checks import check_per_prompt, check_sweep_options
from workbench.methods._resume import BaseRun, CellGroup, base_names, cached_runs, entry_of, run_cells
from workbench.hooks import act_name
from workbench.methods.circuit.graph import CircuitGraph, cache_names, node_output_diff
from workbench.methods.metrics import Metric, as_metric, scalar
from workbench.methods.patching import check_pair, first_difference
from workbench.methods.statistics import Bootstrap, by_group_frame, interval_columns, prompts_subset
from workbench.models import GPT


@dataclass
class EdgePatchingResult:
    """values[i] is the metric of the clean run with edge `edges[i]` (a graph index) alone
    corrupted; `effect` = values - clean_value.

    Per prompt (`edge_patching(..., per_prompt=True)`): `per_prompt[edge, prompt]` each prompt's
    value (mean over prompts: `values`), `prompt_clean`, `prompt_corrupted` [prompt] the two runs'
    values, `groups[prompt]` optional labels; `to_frame()` then adds bootstrap intervals over
    prompts (`bootstrap`), `to_frame(by_group=True)` per group."""

    graph: CircuitGraph
    edges: Int[Tensor, "edge"]
    values: Float[Tensor, "edge"]
    metric: str
    clean_value: float
    corrupted_value: float
    per_prompt: Float[Tensor, "edge prompt"] | None = None
    prompt_clean: Float[Tensor, "prompt"] | None = None
    prompt_corrupted: Float[Tensor, "prompt"] | None = None
    groups: list[str] | None = None
    bootstrap: Bootstrap = field(default_factory=Bootstrap)

    @property
    def effect(self) -> Float[Tensor, "edge"]:
        return self.values - self.clean_value

    def for_prompts(self, keep: Tensor | Sequence[bool]) -> EdgePatchingResult:
        """The result on the prompts marked in `keep` alone (per-prompt results only)."""
        return prompts_subset(self, keep, how="run edge_patching with per_prompt=True")

    def to_frame(self, *, by_group: bool = False) -> pd.DataFrame:
        """One row per patched edge: the graph's columns, value (patched metric), effect, metric. With
        per-prompt values also n, ci_low / ci_high (the bootstrap interval of value) and
        effect_ci_low / effect_ci_high (of each prompt's value - its clean value), as
        `PatchingResult.to_frame()`. `by_group`: a block of rows per group label (column `group`)."""
        if by_group:
            return by_group_frame(self)
        df = self.graph.to_frame().iloc[self.edges.tolist()].reset_index(drop=True)
        df["value"] = self.values.tolist()
        df["effect"] = self.effect.tolist()
        if self.per_prompt is not None:
            df = pd.concat([df, interval_columns(self.per_prompt, self.prompt_clean, self.bootstrap)], axis=1)
        df["metric"] = self.metric
        return df


def edge_patching(
    model: GPT,
    clean_tokens: Tensor | str | Sequence[str],
    corrupted_tokens: Tensor | str | Sequence[str],
    metric: Metric | Callable[[Tensor], Tensor],
    edges: Sequence[str | int] | Tensor | None = None,
    *,
    graph: CircuitGraph | None = None,
    max_batch: int | None = None,
    progress: bool | Callable[[int, int], None] = True,
    per_prompt: bool = False,
    groups: Sequence[str] | None = None,
) -> EdgePatchingResult:
    """The exact effect of each of `edges` (labels "L0H1->L1H0.k", graph indices or an [edge] mask;
    None: every edge of the graph) on `metric`, one edge corrupted at a time (module docstring).
    `max_batch`, `progress`, `per_prompt` (each prompt's value too, from the same forwards),
    `groups`: as in `activation_patching`. Returns an `EdgePatchingResult`."""
    check_sweep_options(max_batch, progress)
    clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens)
    metric = as_metric(metric)
    groups = check_per_prompt(metric, per_prompt, groups, clean.shape[0])
    graph = CircuitGraph.of_model(model) if graph is None else graph
    index = torch.arange(len(graph)) if edges is None else graph.edge_index(edges)
    n_layer = model.cfg.n_layer
    read = metric.read_positions(clean.shape[1])
    names = base_names(n_layer) + cache_names(n_layer) + [act_name("q", l) for l in range(n_layer)]
    (clean_logits, clean_cache), (corrupted_logits, corrupted_cache) = cached_runs(
        model, [clean, corrupted], names, read, metric.vocab
    )
    with torch.no_grad():
        diff = node_output_diff(corrupted_cache, clean_cache, n_layer)
    base = BaseRun(clean, clean_logits, clean_cache, n_layer, other_logits=(corrupted_logits,))
    first = first_difference(clean, corrupted)
    cell_groups: dict[tuple[int, str], CellGroup] = {}  # by entry and kind (the last MLP enters where the logits do)
    ed = graph.edge_downstream[index]
    for i, (e, d) in enumerate(zip(index.tolist(), ed.tolist())):
        layer = graph.layer_of_downstream(d)
        if layer == n_layer:
            key, make = (entry_of(n_layer - 1, "post"), "logits"), lambda: _logits_delta(graph, diff)
        elif d == graph.mlp_input(layer):
            key, make = (entry_of(layer, "post"), "mlp"), lambda: _mlp_delta(model, graph, layer, diff, clean_cache,
                                                                               first, read)
        else:
            key, make = (entry_of(layer, "mid"), "heads"), lambda: _head_delta(model, graph, layer, diff, clean_cache)
        if key not in cell_groups:
            cell_groups[key] = CellGroup(key[0], make())
        cell_groups[key].add(e, (i,), first)
    values = torch.full((len(index),) + ((clean.shape[0],) if per_prompt else ()), float("nan"))
    run_cells(model, base, list(cell_groups.values()), metric, values, max_batch=max_batch, progress=progress,
              desc="edge patching", per_prompt=per_prompt)
    prompts = {}
    if per_prompt:
        prompts = dict(per_prompt=values, prompt_clean=metric.per_prompt(clean_logits).float().cpu(),
                       prompt_corrupted=metric.per_prompt(corrupted_logits).float().cpu(), groups=groups)
        values = einops.reduce(values, "edge prompt -> edge", "mean")
    return EdgePatchingResult(
        graph=graph, edges=index, values=values, metric=metric.name,
        clean_value=float(scalar(metric.evaluate(clean_logits), metric.name)),
        corrupted_value=float(scalar(metric.evaluate(corrupted_logits), metric.name)), **prompts,
    )


# Each maker returns delta(edge indices) -> the change of the residual stream after the edge's
# downstream node, [cell batch pos d_model].
def _logits_delta(graph: CircuitGraph, diff: Float[Tensor, "upstream batch pos d_model"]):
    def delta(keys: list[int]) -> Float[Tensor, "cell batch pos d_model"]:
        return diff[graph.edge_upstream[keys]]

    return delta


def _mlp_delta(model: GPT, graph: CircuitGraph, layer: int, diff: Float[Tensor, "upstream batch pos d_model"], cache,
               first: int, read: list[int]):
    """The MLP recomputed from resid_mid + diff at positions from `first` (where the two runs start
    to differ) to the last one the metric reads, the last MLP only at those it reads (the engine
    reads no others), minus the clean run's mlp_out; zeros elsewhere."""
    block = model.blocks[layer]
    stop = max(read) + 1
    last = layer == model.cfg.n_layer - 1
    at = torch.tensor(sorted(p for p in set(read) if p >= first) if last else range(first, stop), device=diff.device)
    resid_mid, clean_out = (cache[name, layer][:, at] for name in ("resid_mid", "mlp_out"))

    def delta(keys: list[int]) -> Float[Tensor, "cell batch pos d_model"]:
        x = einops.rearrange(resid_mid[None] + diff[graph.edge_upstream[keys]][:, :, at],
                             "cell batch pos d_model -> (cell batch) pos d_model")
        out = einops.rearrange(block.mlp(block.ln2(x)), "(cell batch) pos d_model -> cell batch pos d_model",
                               cell=len(keys))
        full = out.new_zeros(len(keys), out.shape[1], stop, out.shape[-1])
        full[:, :, at] = out - clean_out[None]
        return full

    return delta


def _head_delta(model: GPT, graph: CircuitGraph, layer: int, diff: Float[Tensor, "upstream batch pos d_model"], cache):
    """One head per edge: its q, k or v recomputed from resid_pre + diff (its own LayerNorm), the
    other two and every other head as in the clean run; the change of that head's output z W_O
    (from the clean run's z)."""
    block, attn, H = model.blocks[layer], model.blocks[layer].attn, graph.n_head
    resid_pre = cache["resid_pre", layer]
    clean_qkv = torch.stack([cache[kind, layer] for kind in ("q", "k", "v")])  # [three batch pos head d_head]
    clean_z = cache["z", layer]  # [batch pos head d_head]
    W, b = (attn.W_Q, attn.W_K, attn.W_V), (attn.b_Q, attn.b_K, attn.b_V)  # [head d_model d_head], [head d_head]
    start = graph.head_inputs(layer).start

    def z_of(qkv: Float[Tensor, "three cell batch pos d_head"]) -> Float[Tensor, "cell batch pos d_head"]:
        q, k, v = einops.rearrange(qkv, "three cell batch pos d_head -> three (cell batch) pos 1 d_head")
        z = attn.attend(q, k, v)
        return einops.rearrange(z, "(cell batch) pos 1 d_head -> cell batch pos d_head", cell=qkv.shape[1])

    def delta(keys: list[int]) -> Float[Tensor, "cell batch pos d_model"]:
        slot = graph.edge_downstream[keys] - start
        kind, head = slot // H, slot % H
        x = resid_pre[None] + diff[graph.edge_upstream[keys]]
        normed = block.ln1(einops.rearrange(x, "cell batch pos d_model -> (cell batch) pos d_model"))
        normed = einops.rearrange(normed, "(cell batch) pos d_model -> cell batch pos d_model", cell=len(keys))
        pairs = list(zip(kind.tolist(), head.tolist()))
        new = einops.einsum(normed, torch.stack([W[i][h] for i, h in pairs]),
                            "cell batch pos d_model, cell d_model d_head -> cell batch pos d_head")
        new = new + torch.stack([b[i][h] for i, h in pairs])[:, None, None]
        old = einops.rearrange(clean_qkv[:, :, :, head], "three batch pos cell d_head -> three cell batch pos d_head")
        cells = torch.arange(len(keys))
        patched = old.clone()
        patched[kind, cells] = new
        dz = z_of(patched) - einops.rearrange(clean_z[:, :, head], "batch pos cell d_head -> cell batch pos d_head")
        return einops.einsum(dz, attn.W_O[head], "cell batch pos d_head, cell d_head d_model -> cell batch pos d_model")

    return delta
