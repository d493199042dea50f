"""Edge attribution: every edge's effect on a metric from gradients (EAP, EAP-IG).

EAP (Syed et al. 2023, "Attribution patching outperforms automated circuit discovery"): corrupting
edge (u, d) changes input d's residual by corrupted_u - clean_u, so to first order it moves the
metric by

    score(u, d) = (corrupted_u - clean_u) . d metric / d resid_d       (summed over pos and d_model)

with the gradient taken on the clean run, each downstream input differentiated separately
(`forward.graph_forward`). One corrupted forward, one clean forward and one backward give every edge.

EAP-IG (Hanna et al. 2024, "Have faith in faithfulness"): the same with the gradient averaged
over `steps` runs whose input embeddings lie between the corrupted and the clean ones,
corrupted + (k / steps) (clean - corrupted) for k = 1 .. steps (so steps=1 is EAP); the node
outputs in the difference are still those of the clean and corrupted runs. The steps run as
batches of cells: one forward and one backward for as many as fit in `_resume.TOKEN_BUDGET`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import einops
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.errors import InputError
from workbench.methods._checks import as_index, check_groups, shown
from workbench.methods._resume import TOKEN_BUDGET
from workbench.methods.circuit.forward import graph_forward
from workbench.methods.circuit.graph import CircuitGraph
from workbench.methods.metrics import Metric, as_metric
from workbench.methods.patching import check_pair
from workbench.methods.statistics import Bootstrap, by_group_frame, interval_columns
from workbench.models import GPT

METHODS = ("eap", "eap-ig")


@dataclass
class EdgeScores:
    """Gradient estimates of every edge's effect: `scores` [edge] is the estimated change of the
    metric (a mean over prompts) when the edge alone carries the corrupted output; `per_prompt`
    [batch edge] the same for each prompt's own metric (exact for metrics that average over
    prompts, as every workbench `Metric` does: scores = per_prompt.mean(0)). `clean_value`,
    `corrupted_value`: the metric of the two runs. `to_frame()` reports each score with a seeded
    bootstrap interval over prompts (`bootstrap`, `methods.statistics`; None: no interval columns),
    `groups[batch]` optional labels and `to_frame(by_group=True)` the same per group."""

    graph: CircuitGraph
    scores: Float[Tensor, "edge"]
    per_prompt: Float[Tensor, "batch edge"]
    method: str
    steps: int
    metric: str
    clean_value: float
    corrupted_value: float
    prompt_clean: Float[Tensor, "batch"] | None = None  # each prompt's value in the two runs (a Metric's)
    prompt_corrupted: Float[Tensor, "batch"] | None = None
    groups: list[str] | None = None
    bootstrap: Bootstrap | None = field(default_factory=Bootstrap)

    def ranking(self) -> Int[Tensor, "edge"]:
        """Edge indices, largest |score| first (ties in graph order)."""
        return torch.sort(self.scores.abs(), descending=True, stable=True).indices

    def top(self, n: int) -> list[str]:
        """The labels of the `n` edges of largest |score|."""
        return [self.graph.edges[i] for i in self.ranking()[:n].tolist()]

    def for_prompts(self, keep: Tensor | Sequence[bool]) -> EdgeScores:
        """The scores on the prompts marked in `keep` alone."""
        keep = torch.as_tensor(keep, dtype=torch.bool)
        per_prompt = self.per_prompt[keep]
        runs = {}
        if self.prompt_clean is not None:
            runs = dict(clean_value=float(self.prompt_clean[keep].mean()), prompt_clean=self.prompt_clean[keep],
                        corrupted_value=float(self.prompt_corrupted[keep].mean()),
                        prompt_corrupted=self.prompt_corrupted[keep])
        return replace(self, scores=per_prompt.mean(0), per_prompt=per_prompt, **runs,
                       groups=None if self.groups is None else [g for g, k in zip(self.groups, keep) if k])

    def to_frame(self, *, by_group: bool = False) -> pd.DataFrame:
        """One row per edge: the graph's columns (edge, upstream, downstream, layers, heads, input),
        score (estimated metric change), abs_score, rank (0 = largest |score|), with intervals n,
        ci_low, ci_high (the bootstrap interval of score over prompts), then method, metric.
        `by_group`: one block of rows per group label (column `group`), each from its prompts alone."""
        if by_group:
            return by_group_frame(self)
        df = self.graph.to_frame()
        df["score"] = self.scores.tolist()
        df["abs_score"] = self.scores.abs().tolist()
        rank = torch.empty(len(self.scores), dtype=torch.long)
        rank[self.ranking()] = torch.arange(len(self.scores))
        df["rank"] = rank.tolist()
        if self.bootstrap is not None:
            ci = interval_columns(einops.rearrange(self.per_prompt, "batch edge -> edge batch"), None, self.bootstrap)
            df = pd.concat([df, ci], axis=1)
        df["method"], df["metric"] = self.method, self.metric
        return df


def check_steps(steps: object) -> int:
    steps = as_index(steps, "steps")
    if steps < 1:
        raise InputError(f"steps must be a positive number of interpolation points (EAP-IG), got {steps}")
    return steps


def edge_attribution(
    model: GPT,
    clean_tokens: Tensor | str | Sequence[str],
    corrupted_tokens: Tensor | str | Sequence[str],
    metric: Metric | Callable[[Tensor], Tensor],
    *,
    method: str = "eap",
    steps: int = 5,
    graph: CircuitGraph | None = None,
    groups: Sequence[str] | None = None,
) -> EdgeScores:
    """Score every edge of the model's `CircuitGraph` by EAP or EAP-IG (module docstring).

    `clean_tokens`, `corrupted_tokens`: [batch pos] ids of the same shape (or text). `metric`: a
    `Metric` or a callable logits -> scalar (a mean over prompts). `method`: "eap" or "eap-ig";
    `steps`: EAP-IG's interpolation points (>= 1; not used by EAP). Every prompt's scores are kept
    (`per_prompt`, from the same backward); `groups`: a label per prompt for per-group intervals.
    Returns `EdgeScores` (scores [edge], per_prompt [batch edge])."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {shown(method)}")
    steps = check_steps(steps)
    clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens)
    metric = as_metric(metric)
    groups = check_groups(groups, clean.shape[0])
    graph = CircuitGraph.of_model(model) if graph is None else graph
    read = metric.read_positions(clean.shape[1])
    with torch.no_grad():
        emb_clean, emb_corrupted = model.embed_input(clean), model.embed_input(corrupted)
        corrupted_run = graph_forward(model, graph, emb_corrupted[None], read=read, vocab=metric.vocab)
    n = 1 if method == "eap" else steps
    alpha = torch.arange(1, n + 1, device=emb_clean.device, dtype=emb_clean.dtype) / n
    # interpolation steps per forward: each holds 3 n_head + 1 copies of the residual stream per block
    per_forward = max(1, TOKEN_BUDGET // (clean.numel() * (3 * graph.n_head + 1)))
    grad, values = 0, []
    for chunk in alpha.split(per_forward):
        embeds = (emb_corrupted + chunk[:, None, None, None] * (emb_clean - emb_corrupted)).detach().requires_grad_(True)
        with torch.enable_grad():
            run = graph_forward(model, graph, embeds, read=read, vocab=metric.vocab)
            value = metric.evaluate(run.logits)  # [cell]
            grads = torch.autograd.grad(value.sum(), run.inputs)
        grad = grad + einops.reduce(torch.cat(grads).float(), "downstream cell batch pos d_model -> downstream batch pos d_model",
                                    "sum") / n
        values.append(value.detach())
    clean_out = run.outputs[:, -1].detach()  # the last step (alpha = 1) is the clean run
    diff = corrupted_run.outputs[:, 0] - clean_out
    # score[b, u, d] over all (node, input) pairs, then the graph's edges; x batch: each prompt's own metric.
    pairs = einops.einsum(diff.float(), grad, "upstream batch pos d_model, downstream batch pos d_model -> batch upstream downstream")
    per_prompt = (pairs[:, graph.edge_upstream, graph.edge_downstream] * clean.shape[0]).cpu()
    runs = {}
    if metric.has_per_prompt:  # each prompt's value in the clean run (the last step, alpha = 1) and the corrupted one
        runs = dict(prompt_clean=metric.per_prompt(run.logits[-1].detach()).float().cpu(),
                    prompt_corrupted=metric.per_prompt(corrupted_run.logits[0]).float().cpu())
    return EdgeScores(
        graph=graph, scores=per_prompt.mean(0), per_prompt=per_prompt, method=method, steps=n, metric=metric.name,
        clean_value=float(values[-1][-1]), corrupted_value=float(metric.evaluate(corrupted_run.logits)[0]),
        groups=groups, **runs,
    )
