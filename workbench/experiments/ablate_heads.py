"""Ablate every attention head on its own (zero, mean or resample) on a prompt set (default: IOI)
and measure the logit difference answer - wrong answer; heads ranked by the size of the effect."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch

from workbench.errors import InputError
from workbench.experiments.core import Experiment, ExperimentConfig, register
from workbench.experiments.prompt_sets import PromptSetOptions, prompt_set_tokens, prompts_frame
from workbench.methods.ablation import METHODS, AblationResult, ablation_sweep
from workbench.methods.metrics import LogitDiff
from workbench.runs import RunResults


@dataclass
class AblateHeadsConfig(PromptSetOptions, ExperimentConfig):
    method: Literal[METHODS] = field(default="mean", metadata={  # type: ignore[valid-type]
        "help": "zero: the head's output set to 0; mean: to its mean over the reference batch, position by "
                "position; resample: to its value on a random reference prompt (seeded)"})
    reference: Literal["prompts", "corrupted"] = field(default="prompts", metadata={
        "help": "the reference batch for mean/resample: the prompts themselves, or their corrupted versions"})
    metric: Literal["logit_diff"] = field(default="logit_diff", metadata={
        "help": "logit[answer] - logit[wrong answer] at the last position, mean over prompts"})
    max_batch: int | None = field(default=None, metadata={
        "help": "most sequences per forward pass (default: as many as fit in the sweep budget, "
                "workbench.methods._resume.TOKEN_BUDGET token positions); part of the numerics"})
    top_k: int = field(default=10, metadata={"help": "heads listed in the summary"})

    def applies(self, name: str) -> bool:
        if name == "reference":
            return self.method != "zero"  # a zeroed head needs no reference batch
        return super().applies(name)

    def validate(self) -> None:
        if self.n_prompts < 1:
            raise InputError(f"n_prompts must be >= 1, got {self.n_prompts}")
        if self.max_batch is not None and self.max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.top_k < 1:
            raise InputError(f"top_k must be >= 1, got {self.top_k}")


def tokens(config: AblateHeadsConfig, model) -> dict[str, torch.Tensor]:
    config.validate()
    return prompt_set_tokens(config, model)


def run(config: AblateHeadsConfig, model) -> RunResults:
    """values[layer, head]: the metric with that head ablated; table `heads`: every head, largest
    |effect| first."""
    ids = {k: torch.tensor(v, device=model.device) for k, v in config.token_ids.items()}
    metric = LogitDiff(ids["answers"][:, 0], ids["wrong_answers"][:, 0], pos=-1)
    reference = ids["corrupted"] if config.reference == "corrupted" and config.method != "zero" else None
    result = ablation_sweep(model, ids["clean"], metric, method=config.method, reference=reference,
                            seed=config.seed, max_batch=config.max_batch, progress=False)
    heads = ranked_heads(result)
    return RunResults(
        tensors={"values": result.values, "baseline": torch.tensor(result.baseline)},
        tables={"heads": heads, "prompts": prompts_frame(config.token_ids, model)},
        figures={"ablation": ablation_figure(result)},
        summary=_summary(result, heads, config.top_k),
    )


def ranked_heads(result: AblationResult) -> pd.DataFrame:
    """`result.to_frame()` ordered by |effect| (ties: layer, head), with a `rank` column (1 = largest)."""
    frame = result.to_frame()
    frame["abs_effect"] = frame["effect"].abs()
    frame = frame.sort_values(["abs_effect", "layer", "head"], ascending=[False, True, True], kind="stable")
    frame = frame.drop(columns="abs_effect").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def _summary(result: AblationResult, heads: pd.DataFrame, top_k: int) -> str:
    lines = [f"{result.metric} without ablation: {result.baseline:.3f}; {result.method}-ablating each head:"]
    for _, r in heads.head(top_k).iterrows():
        lines.append(f"  {int(r['rank']):>3}. L{int(r['layer'])}H{int(r['head'])}: {r['value']:.3f} "
                     f"(effect {r['effect']:+.3f})")
    return "\n".join(lines)


def ablation_figure(result: AblationResult):
    """[layer x head] heatmap of the effect (ablated - baseline) on the metric."""
    import plotly.graph_objects as go

    n_layer, n_head = result.values.shape
    effect = result.effect.cpu()
    bound = float(effect.abs().max()) or 1.0
    fig = go.Figure(go.Heatmap(z=effect.tolist(), x=list(range(n_head)), y=list(range(n_layer)), colorscale="RdBu",
                               zmin=-bound, zmax=bound, colorbar={"title": "effect"},
                               hovertemplate="layer %{y}, head %{x}: %{z:+.4f}<extra></extra>"))
    fig.update_layout(title=f"{result.method}-ablating each head: change in {result.metric} "
                            f"(baseline {result.baseline:.3f})",
                      xaxis_title="head", yaxis_title="layer", yaxis_autorange="reversed")
    return fig


EXPERIMENT = register(Experiment(
    name="ablate_heads",
    config=AblateHeadsConfig,
    tokens=tokens,
    run=run,
    description="ablate every head (zero/mean/resample) on a prompt set (default: IOI), top heads first",
))
