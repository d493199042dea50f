"""Circuit faithfulness: how much of the model's behaviour a set of edges reproduces alone.

A circuit is a set of edges. Its run is the clean run in which every edge outside the circuit
carries its node's corrupted output (`forward.circuit_forward`, removed = not in the circuit):
each downstream input reads its in-circuit nodes' outputs as computed in this run and the other
nodes' outputs from the corrupted run (as Hanna et al. 2024 evaluate circuits). Then

    faithfulness = (m(circuit) - m(corrupted)) / (m(clean) - m(corrupted))

is 1 for the full graph (the clean run) and 0 for the empty circuit (every input reads the
corrupted run's nodes: the corrupted run). It is undefined when m(clean) = m(corrupted).
`faithfulness_curve` evaluates the top-k edges of a ranking for k on a log grid, many circuits per
forward; with `exact_top` it first re-ranks the top edges by their exact effect (`edge_patching`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench.errors import InputError
from workbench.methods._checks import as_index, check_per_prompt, shown
from workbench.methods._resume import TOKEN_BUDGET
from workbench.methods.circuit.attribution import EdgeScores
from workbench.methods.circuit.forward import circuit_forward, reference_run
from workbench.methods.circuit.graph import CircuitGraph
from workbench.methods.circuit.patching import EdgePatchingResult, edge_patching
from workbench.methods.metrics import Metric, as_metric, clean_beats_corrupted
from workbench.methods.patching import check_pair
from workbench.methods.statistics import Bootstrap, by_group_frame, interval_columns, prompts_subset
from workbench.models import GPT


@dataclass
class Faithfulness:
    """values[cell]: the metric of circuit `cell`'s run; `n_edges` [cell] its size; `circuits`
    [cell edge] which edges it holds. `faithfulness` = (values - corrupted) / (clean - corrupted).
    `ranking` (a curve's): the edge order its circuits are the top-k of (after any exact re-ranking).

    Per prompt (`per_prompt=True`): `per_prompt[cell, prompt]` each prompt's metric in the circuit's
    run (mean over prompts: `values`), `prompt_clean`, `prompt_corrupted` [prompt] the two runs',
    `groups[prompt]` optional labels; `to_frame()` then adds bootstrap intervals over prompts of
    each value and of its faithfulness (`bootstrap`), `to_frame(by_group=True)` per group."""

    graph: CircuitGraph
    circuits: torch.Tensor
    values: Float[Tensor, "cell"]
    metric: str
    clean_value: float
    corrupted_value: float
    ranking: Int[Tensor, "edge"] | None = None
    exact: EdgePatchingResult | None = None
    per_prompt: Float[Tensor, "cell prompt"] | None = None
    prompt_clean: Float[Tensor, "prompt"] | None = None
    prompt_corrupted: Float[Tensor, "prompt"] | None = None
    groups: list[str] | None = None
    bootstrap: Bootstrap = field(default_factory=Bootstrap)

    @property
    def n_edges(self) -> Int[Tensor, "cell"]:
        return self.circuits.sum(-1)

    @property
    def faithfulness(self) -> Float[Tensor, "cell"]:
        return (self.values - self.corrupted_value) / (self.clean_value - self.corrupted_value)

    @property
    def clean_beats_corrupted(self) -> bool:
        """Whether clean - corrupted >= `metrics.MIN_GAP`; if not, faithfulness divides by noise."""
        return clean_beats_corrupted(self.clean_value, self.corrupted_value)

    def smallest(self, target: float) -> int | None:
        """The fewest edges among these circuits whose faithfulness reaches `target` (None: none does)."""
        reach = (self.faithfulness >= target).nonzero().flatten()
        return None if len(reach) == 0 else int(self.n_edges[reach].min())

    def for_prompts(self, keep: Tensor | Sequence[bool]) -> Faithfulness:
        """The circuits' runs on the prompts marked in `keep` alone (per-prompt results only; the
        exact re-ranking, if any, stays the whole set's)."""
        return prompts_subset(self, keep, how="evaluate the circuits with per_prompt=True")

    def to_frame(self, *, by_group: bool = False) -> pd.DataFrame:
        """One row per circuit: n_edges, value (the metric of the circuit's run), faithfulness, metric.
        With per-prompt values also n, ci_low / ci_high (the bootstrap interval of value over
        prompts) and faithfulness_ci_low / faithfulness_ci_high (of the ratio mean(circuit -
        corrupted) / mean(clean - corrupted), numerator and denominator from the same resampled
        prompts: `statistics.bootstrap_ratio_ci`).
        `by_group`: a block of rows per group label (column `group`), each from its prompts alone."""
        if by_group:
            return by_group_frame(self)
        frame = pd.DataFrame({"n_edges": self.n_edges.tolist(), "value": self.values.tolist(),
                              "faithfulness": self.faithfulness.tolist()})
        if self.per_prompt is not None:
            ci = interval_columns(self.per_prompt, None, self.bootstrap)
            ratio = self.bootstrap.ratio_interval(self.per_prompt - self.prompt_corrupted,
                                                  self.prompt_clean - self.prompt_corrupted)
            ci["faithfulness_ci_low"], ci["faithfulness_ci_high"] = ratio.low.tolist(), ratio.high.tolist()
            frame = pd.concat([frame, ci], axis=1)
        frame["metric"] = self.metric
        return frame


def check_gap(clean_value: float, corrupted_value: float, metric: str) -> None:
    if not math.isfinite(clean_value - corrupted_value) or abs(clean_value - corrupted_value) < 1e-6 * max(1.0, abs(clean_value)):
        raise InputError(
            f"faithfulness is undefined: the clean and corrupted runs give the same {metric} ({clean_value:.6g} "
            f"and {corrupted_value:.6g}), so there is no behaviour for a circuit to reproduce; use prompts whose "
            "clean and corrupted runs differ on the metric"
        )


def log_grid(n_edges: int, points: int) -> list[int]:
    """About `points` circuit sizes from 1 to `n_edges`, evenly spaced in log scale (distinct integers)."""
    if points < 1:
        raise InputError(f"points must be a positive number of circuit sizes, got {points}")
    if points == 1:
        return [n_edges]
    grid = torch.logspace(0, math.log10(n_edges), points, dtype=torch.float64).round().long().tolist()
    return sorted(set(grid))


def circuit_faithfulness(
    model: GPT,
    clean_tokens: Tensor | str | Sequence[str],
    corrupted_tokens: Tensor | str | Sequence[str],
    metric: Metric | Callable[[Tensor], Tensor],
    circuit: Sequence[str | int] | Tensor,
    *,
    graph: CircuitGraph | None = None,
    per_prompt: bool = False,
    groups: Sequence[str] | None = None,
) -> Faithfulness:
    """The faithfulness of one circuit (edge labels, graph indices or an [edge] mask; module
    docstring). Raises `InputError` for edges the graph does not have and when the clean and
    corrupted metric agree (faithfulness undefined). `per_prompt`, `groups`: as in
    `evaluate_circuits`."""
    graph = CircuitGraph.of_model(model) if graph is None else graph
    mask = graph.edge_mask(circuit)
    return evaluate_circuits(model, clean_tokens, corrupted_tokens, metric, mask[None], graph=graph,
                             per_prompt=per_prompt, groups=groups)


def evaluate_circuits(
    model: GPT,
    clean_tokens: Tensor | str | Sequence[str],
    corrupted_tokens: Tensor | str | Sequence[str],
    metric: Metric | Callable[[Tensor], Tensor],
    circuits: torch.Tensor,
    *,
    graph: CircuitGraph | None = None,
    progress: bool = False,
    per_prompt: bool = False,
    groups: Sequence[str] | None = None,
) -> Faithfulness:
    """The faithfulness of each of `circuits` [cell edge] (boolean masks), many per forward.
    `per_prompt`: also keep each prompt's metric in every circuit's run (`Faithfulness.per_prompt`
    [cell prompt]; a workbench `Metric`, a mean over prompts), from the same forwards; `groups`: a
    label per prompt for per-group intervals."""
    clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens)
    metric = as_metric(metric)
    groups = check_per_prompt(metric, per_prompt, groups, clean.shape[0])
    evaluate = metric.per_prompt if per_prompt else metric.evaluate
    graph = CircuitGraph.of_model(model) if graph is None else graph
    if circuits.ndim != 2 or circuits.shape[1] != len(graph) or circuits.dtype != torch.bool:
        raise InputError(f"circuits must be a boolean [cell edge] mask with {len(graph)} edges, got "
                         f"{circuits.dtype} of shape {tuple(circuits.shape)}")
    read = metric.read_positions(clean.shape[1])
    with torch.no_grad():
        references = reference_run(model, model.embed_input(corrupted), model.embed_input(clean), read=read,
                                   vocab=metric.vocab)
        corrupted_value, clean_value = (float(v) for v in metric.evaluate(references.logits))
        check_gap(clean_value, corrupted_value, metric.name)
        # circuits per forward: as for 3 n_head + 1 residual streams each (a block's inputs); a circuit's
        # node changes (`forward._Circuits`) take up to one stream per node off the corrupted run
        per_forward = max(1, TOKEN_BUDGET // (clean.numel() * (3 * graph.n_head + 1)))
        values = []
        for start in tqdm(range(0, len(circuits), per_forward), desc="circuits", disable=not progress, leave=False):
            chunk = circuits[start : start + per_forward].to(references.final.device)
            kept = torch.zeros(len(chunk), len(graph.upstream), len(graph.downstream), dtype=torch.bool,
                               device=chunk.device)
            kept[:, graph.edge_upstream, graph.edge_downstream] = chunk
            values.append(evaluate(circuit_forward(model, graph, references, kept)).float().cpu())
        prompts = {}
        if per_prompt:
            prompt_corrupted, prompt_clean = metric.per_prompt(references.logits).float().cpu()
            prompts = dict(per_prompt=torch.cat(values), prompt_clean=prompt_clean, prompt_corrupted=prompt_corrupted,
                           groups=groups)
    values = torch.cat(values)
    return Faithfulness(graph=graph, circuits=circuits.cpu(), values=values.mean(-1) if per_prompt else values,
                        metric=metric.name, clean_value=clean_value, corrupted_value=corrupted_value, **prompts)


def faithfulness_curve(
    model: GPT,
    clean_tokens: Tensor | str | Sequence[str],
    corrupted_tokens: Tensor | str | Sequence[str],
    metric: Metric | Callable[[Tensor], Tensor],
    ranking: EdgeScores | Sequence[str | int] | Tensor,
    *,
    points: int = 20,
    sizes: Sequence[int] | None = None,
    exact_top: int = 0,
    graph: CircuitGraph | None = None,
    progress: bool | Callable[[int, int], None] = False,
    per_prompt: bool = False,
    groups: Sequence[str] | None = None,
) -> Faithfulness:
    """Faithfulness of the top-k edges of `ranking` (`EdgeScores`, largest |score| first, or edges
    in order: labels or graph indices, all of the graph's edges or a prefix) for k on a log grid
    of `points` sizes from 1 to the ranking's length (or the given `sizes`). `exact_top`: first
    re-rank the top `exact_top` edges by |exact effect| (`edge_patching`, kept in `.exact`).
    `progress`: True for console bars, or a callback progress(done, total) for the exact patching.
    `per_prompt`, `groups`: keep each prompt's values, of the curve's circuits and of the exact
    patching (as `evaluate_circuits`, `edge_patching`)."""
    if isinstance(ranking, EdgeScores):
        graph, order = ranking.graph, ranking.ranking()
    else:
        graph = CircuitGraph.of_model(model) if graph is None else graph
        order = graph.edge_index(ranking)
        if len(set(order.tolist())) != len(order):
            raise InputError("ranking lists an edge more than once")
    exact_top = as_index(exact_top, "exact_top")
    if not 0 <= exact_top <= len(order):
        raise InputError(f"exact_top must be between 0 and the ranking's {len(order)} edges, got {exact_top}")
    exact = None
    if exact_top:
        exact = edge_patching(model, clean_tokens, corrupted_tokens, metric, order[:exact_top], graph=graph,
                              progress=progress, per_prompt=per_prompt, groups=groups)
        top = order[:exact_top][torch.sort(exact.effect.abs(), descending=True, stable=True).indices]
        order = torch.cat([top, order[exact_top:]])
    if sizes is None:
        sizes = log_grid(len(order), as_index(points, "points"))
    else:
        sizes = [as_index(k, "each of sizes") for k in sizes]
        if any(not 0 <= k <= len(order) for k in sizes):
            raise InputError(f"sizes must lie in [0, {len(order)}] (the ranking's length), got {shown(sizes)}")
    circuits = torch.zeros(len(sizes), len(graph), dtype=torch.bool)
    for c, k in enumerate(sizes):
        circuits[c, order[:k]] = True
    result = evaluate_circuits(model, clean_tokens, corrupted_tokens, metric, circuits, graph=graph,
                               progress=progress is True, per_prompt=per_prompt, groups=groups)
    result.ranking, result.exact = order, exact
    return result


def smallest_circuit(
    model: GPT,
    clean_tokens: Tensor | str | Sequence[str],
    corrupted_tokens: Tensor | str | Sequence[str],
    metric: Metric | Callable[[Tensor], Tensor],
    curve: Faithfulness,
    target: float,
) -> tuple[int, float] | None:
    """The fewest top-k edges of `curve.ranking` whose faithfulness reaches `target`: the first size of
    the curve that reaches it, narrowed by bisection down towards the curve's size before it (one circuit
    run per step). Faithfulness need not grow with k, so this is the smallest k found on that search
    path, not a guarantee that no smaller circuit reaches it. (k, its faithfulness), or None when no
    size of the curve reaches the target."""
    if curve.ranking is None:
        raise InputError("smallest_circuit needs a curve from faithfulness_curve (it has the ranking)")
    sizes, reach = curve.n_edges.tolist(), (curve.faithfulness >= target).tolist()
    if not any(reach):
        return None
    i = reach.index(True)
    lo, hi, best = (sizes[i - 1] if i else 0), sizes[i], float(curve.faithfulness[i])

    def faithfulness_of(k: int) -> float:
        mask = torch.zeros(len(curve.graph), dtype=torch.bool)
        mask[curve.ranking[:k]] = True
        return float(evaluate_circuits(model, clean_tokens, corrupted_tokens, metric, mask[None],
                                       graph=curve.graph).faithfulness[0])

    while hi - lo > 1:
        mid = (lo + hi) // 2
        f = faithfulness_of(mid)
        if f >= target:
            hi, best = mid, f
        else:
            lo = mid
    return hi, best
