"""Circuit discovery on clean/corrupted prompt pairs of a task the model can do (default: IOI on
GPT-2, induction on other models): rank every edge by EAP-IG (or EAP), verify the top `exact_top`
edges by exact edge patching and re-rank them by it, draw the faithfulness curve of the top-k edges
on a log grid, and find the smallest circuit on that ranking reaching `target` faithfulness. Each
prompt's values are kept: scores, exact effects and the curve's metric come with bootstrap intervals
over prompts (and per group when the prompts carry group labels)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch

from workbench.errors import InputError
from workbench.experiments.core import Experiment, ExperimentConfig, register
from workbench.experiments.figures import circuit_figure, faithfulness_figure
from workbench.experiments.prompt_sets import (
    PromptSetOptions,
    bootstrap,
    interval_note,
    prompt_set_metric,
    prompt_set_tokens,
    prompts_frame,
    resolve_prompt_set,
    sweep_options,
)
from workbench.methods.circuit import (
    EdgeScores, Faithfulness, edge_attribution, faithfulness_curve, smallest_circuit,
)
from workbench.methods.metrics import no_signal_message
from workbench.runs import RunResults


@dataclass
class CircuitConfig(PromptSetOptions, ExperimentConfig):
    keeps_per_prompt = True  # per-prompt values and bootstrap intervals (PromptSetOptions)
    method: Literal["eap-ig", "eap"] = field(default="eap-ig", metadata={
        "help": "edge ranking: eap-ig (gradients averaged over `steps` inputs between corrupted and clean) or eap"})
    steps: int = field(default=5, metadata={"help": "EAP-IG's interpolation points"})
    exact_top: int = field(default=50, metadata={
        "help": "verify the top N edges of the ranking by exact edge patching and re-rank them by |exact effect|"})
    points: int = field(default=20, metadata={"help": "circuit sizes on the faithfulness curve (log grid)"})
    target: float = field(default=0.8, metadata={
        "help": "faithfulness the smallest circuit must reach (0 = corrupted, 1 = clean)"})

    def validate(self) -> None:
        self.validate_prompt_set()
        if self.steps < 1:
            raise InputError(f"steps must be >= 1, got {self.steps}")
        if self.exact_top < 0:
            raise InputError(f"exact_top must be >= 0 (0: no exact verification), got {self.exact_top}")
        if self.points < 1:
            raise InputError(f"points must be >= 1, got {self.points}")

    def applies(self, name: str) -> bool:
        if name == "steps":
            return self.method == "eap-ig"
        return super().applies(name)


@dataclass
class CircuitDiscovery:
    """What the experiment found: the gradient ranking (`scores`), the faithfulness curve over the
    (exactly re-ranked) ranking (`curve`, with `curve.exact` the exact effects of the top edges), and
    the smallest circuit reaching `target` (`smallest`: (edges, faithfulness) or None)."""

    scores: EdgeScores
    curve: Faithfulness
    target: float
    smallest: tuple[int, float] | None

    def edges_frame(self) -> pd.DataFrame:
        """One row per edge: the graph's columns, score (gradient estimate), rank (by |score|), with
        per-prompt values n, ci_low, ci_high (the score's bootstrap interval over prompts), exact
        (exact effect, for the verified top edges; NaN for the others) and exact_ci_low /
        exact_ci_high (its interval, paired per prompt), final_rank (the ranking the curve uses),
        in_smallest (part of the smallest circuit)."""
        df = self.scores.to_frame()
        exact = torch.full((len(df),), float("nan"))
        if self.curve.exact is not None:
            exact[self.curve.exact.edges] = self.curve.exact.effect
        df["exact"] = exact.tolist()
        if self.curve.exact is not None and self.curve.exact.per_prompt is not None:
            verified = self.curve.exact.to_frame()
            for end in ("low", "high"):
                column = torch.full((len(df),), float("nan"))
                column[self.curve.exact.edges] = torch.tensor(verified[f"effect_ci_{end}"].to_numpy(), dtype=torch.float)
                df[f"exact_ci_{end}"] = column.tolist()
        final = torch.empty(len(df), dtype=torch.long)
        final[self.curve.ranking] = torch.arange(len(self.curve.ranking))
        df["final_rank"] = final.tolist()
        df["in_smallest"] = df["final_rank"] < (self.smallest[0] if self.smallest else 0)
        return df


def tokens(config: CircuitConfig, model) -> dict[str, torch.Tensor]:
    config.validate()
    return prompt_set_tokens(config, model)


def compute(config: CircuitConfig, model, *, progress=False) -> CircuitDiscovery:
    """The CircuitDiscovery of a resolved config with its token ids (see `core.with_tokens`)."""
    ids = {k: torch.tensor(v, device=model.device) for k, v in config.token_ids.items()}
    metric = prompt_set_metric(config, ids, d_vocab=model.cfg.vocab_size)
    clean, corrupted = ids["clean"], ids["corrupted"]
    options = sweep_options(config)  # per_prompt, groups
    scores = edge_attribution(model, clean, corrupted, metric, method=config.method, steps=config.steps,
                              groups=options["groups"])
    curve = faithfulness_curve(model, clean, corrupted, metric, scores, points=config.points,
                               exact_top=min(config.exact_top, len(scores.graph)), progress=progress, **options)
    smallest = smallest_circuit(model, clean, corrupted, metric, curve, config.target)
    # the intervals' resamples, seed and confidence (none for a record made before per-prompt values)
    scores.bootstrap = bootstrap(config) if options["per_prompt"] else None
    for result in (curve, curve.exact):
        if result is not None:
            result.bootstrap = bootstrap(config)
    return CircuitDiscovery(scores=scores, curve=curve, target=config.target, smallest=smallest)


def record(config: CircuitConfig, model, result: CircuitDiscovery) -> RunResults:
    """scores [edge] and per_prompt_scores [batch edge]: the gradient estimates; exact_edges: the
    verified top edges (graph indices); curve_n_edges: the curve's circuit sizes; smallest_n_edges
    (-1: none reached the target). What depends on the ranking's order (exact effects, the curve's
    values, the smallest circuit's faithfulness) is in the tables, which replay in another dtype
    reports without requiring (a near-tie reorders the ranking and so changes which circuits run).
    With per-prompt values the edges and curve tables hold bootstrap intervals over prompts, the
    tables exact_per_prompt and curve_per_prompt each prompt's values (one row per cell and prompt),
    and with group labels edges_by_group and curve_by_group the same per group."""
    edges = result.edges_frame()
    curve = result.curve.to_frame()
    exact = result.curve.exact
    tensors = {
        "scores": result.scores.scores,
        "per_prompt_scores": result.scores.per_prompt,
        "clean_corrupted": torch.tensor([result.curve.clean_value, result.curve.corrupted_value]),
        "curve_n_edges": result.curve.n_edges,
        "smallest_n_edges": torch.tensor(result.smallest[0] if result.smallest else -1),
    }
    if exact is not None:
        tensors["exact_edges"] = exact.edges
    smallest = pd.DataFrame({"target": [result.target],
                             "n_edges": [result.smallest[0] if result.smallest else None],
                             "faithfulness": [result.smallest[1] if result.smallest else None]})
    tables = {"edges": edges, "curve": curve, "smallest": smallest,
              "prompts": prompts_frame(config.token_ids, model, config.prompt_groups)}
    if result.curve.per_prompt is not None:
        # order-dependent like the curve (module docstring): tables, not tensors
        tables["curve_per_prompt"] = _per_prompt_table(result.curve.n_edges.tolist(), "n_edges", result.curve.per_prompt)
        if exact is not None:
            tables["exact_per_prompt"] = _per_prompt_table(exact.to_frame()["edge"].tolist(), "edge", exact.per_prompt)
        if result.curve.groups is not None:
            tables["edges_by_group"] = result.scores.to_frame(by_group=True)
            tables["curve_by_group"] = result.curve.to_frame(by_group=True)
    return RunResults(
        tensors=tensors,
        tables=tables,
        figures=dict(zip(("circuit", "faithfulness"), draw(edges, curve, model.cfg.n_layer, model.cfg.n_head,
                                                           result.target))),
        summary=summary(result, edges, config),
    )


def _per_prompt_table(cells: list, name: str, per_prompt: torch.Tensor) -> pd.DataFrame:
    """One row per (cell, prompt) of a [cell prompt] tensor: the cell's label `name`, batch, value."""
    n = per_prompt.shape[1]
    return pd.DataFrame({name: [c for c in cells for _ in range(n)], "batch": list(range(n)) * len(cells),
                         "value": per_prompt.flatten().tolist()})


def draw(edges: pd.DataFrame, curve: pd.DataFrame, n_layer: int, n_head: int, target: float | None) -> list:
    """The graph of the top 50 edges (exact effects where verified) and the faithfulness curve."""
    shown = "exact" if edges["exact"].notna().any() else "score"
    return [circuit_figure(edges, n_layer=n_layer, n_head=n_head, score=shown, top=50),
            faithfulness_figure(curve, target=target)]


def run(config: CircuitConfig, model) -> RunResults:
    return record(config, model, compute(config, model))


def summary(result: CircuitDiscovery, edges: pd.DataFrame, config: CircuitConfig | None = None) -> str:
    curve, scores = result.curve, result.scores
    lines = [f"{curve.metric}: clean {curve.clean_value:.3f}, corrupted {curve.corrupted_value:.3f}; "
             f"{len(edges)} edges ranked by {scores.method}" + (f" ({scores.steps} steps)" if scores.method == "eap-ig" else "")]
    warning = no_signal_message(curve.clean_value, curve.corrupted_value, curve.metric)
    if warning:
        lines.append(f"WARNING: {warning}")
    if curve.exact is not None:
        verified = edges[edges["exact"].notna()]
        corr = verified[["score", "exact"]].corr().iloc[0, 1] if len(verified) > 1 else float("nan")
        lines.append(f"top {len(verified)} edges verified by exact patching (correlation of gradient and exact "
                     f"effects {corr:.3f})")
    top = edges.sort_values("final_rank").head(5)
    lines.append("top edges: " + ", ".join(f"{r.edge} ({r.score:+.3f})" for r in top.itertuples()))
    if result.smallest is None:
        lines.append(f"no circuit on the curve reaches faithfulness {result.target:g} "
                     f"(best {float(curve.faithfulness.max()):.3f})")
    else:
        lines.append(f"smallest circuit reaching faithfulness {result.target:g}: {result.smallest[0]} edges "
                     f"(faithfulness {result.smallest[1]:.3f})")
    if curve.per_prompt is not None and config is not None:
        frame = curve.to_frame()
        reach = frame[frame["faithfulness"] >= result.target]
        if len(reach):
            r = reach.iloc[0]
            lines.append(f"first size on the curve reaching {result.target:g}: {int(r['n_edges'])} edges, faithfulness "
                         f"{r['faithfulness']:.3f} [{r['faithfulness_ci_low']:.3f}, {r['faithfulness_ci_high']:.3f}]")
        lines.append(interval_note(config, curve.per_prompt.shape[1]) + " (faithfulness: a ratio of means, "
                     "both resampled together)")
    return "\n".join(lines)


def figures(tensors: dict, tables: dict) -> list:
    if "edges" not in tables or "curve" not in tables:
        return []
    edges = tables["edges"]
    n_layer = int(edges["downstream_layer"].max())
    n_head = int(edges["downstream_head"].max()) + 1
    target = tables["smallest"]["target"].iloc[0] if "smallest" in tables else None
    return draw(edges, tables["curve"], n_layer, n_head, target)


EXPERIMENT = register(Experiment(
    name="circuit",
    config=CircuitConfig,
    tokens=tokens,
    run=run,
    description="circuit discovery: EAP-IG edge ranking, exact verification of the top edges, faithfulness curve, "
                "smallest circuit reaching a target faithfulness (default task: the one the model can do)",
    compute=compute,
    record=record,
    resolve=resolve_prompt_set,
    figures=figures,
))
