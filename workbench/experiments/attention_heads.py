"""Attention-head detectors: induction, previous-token and duplicate-token scores for every head,
on repeated random tokens ([BOS] + r + r)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from workbench.errors import InputError
from workbench.experiments.core import Experiment, ExperimentConfig, register
from workbench.methods.head_detectors import (
    DETECTORS,
    HeadScores,
    duplicate_token_scores,
    induction_scores,
    previous_token_scores,
)
from workbench.methods.prompts import repeated_tokens
from workbench.runs import RunResults

_SCORERS = {
    "induction": lambda model, tokens: induction_scores(model, tokens),
    "previous_token": previous_token_scores,
    "duplicate_token": duplicate_token_scores,
}


@dataclass
class AttentionHeadsConfig(ExperimentConfig):
    detectors: list[str] = field(default_factory=lambda: list(DETECTORS), metadata={
        "help": f"which detectors to run ({', '.join(DETECTORS)})"})
    n_seqs: int = field(default=8, metadata={"help": "number of repeated random sequences"})
    seq_len: int = field(default=20, metadata={"help": "length of each random half (tokens: 1 + 2 seq_len)"})
    top_k: int = field(default=5, metadata={"help": "heads listed per detector in the summary"})

    def validate(self) -> None:
        unknown = [d for d in self.detectors if d not in DETECTORS]
        if unknown or not self.detectors:
            raise InputError(f"detectors must be a non-empty subset of {', '.join(DETECTORS)}, got {self.detectors}")
        if self.top_k < 1:
            raise InputError(f"top_k must be >= 1, got {self.top_k}")


def tokens(config: AttentionHeadsConfig, model) -> dict[str, torch.Tensor]:
    """[BOS] + r + r for `n_seqs` random r of `seq_len` tokens, seeded by `config.seed`."""
    config.validate()
    return {"tokens": repeated_tokens(n_seqs=config.n_seqs, seq_len=config.seq_len, seed=config.seed,
                                      vocab_size=model.cfg.vocab_size)}


def run(config: AttentionHeadsConfig, model) -> RunResults:
    """values[detector]: [layer head] scores; table `scores`: one row per (detector, layer, head)."""
    ids = torch.tensor(config.token_ids["tokens"], device=model.device)
    scores: dict[str, HeadScores] = {d: _SCORERS[d](model, ids) for d in config.detectors}
    table = pd.concat([s.to_frame() for s in scores.values()], ignore_index=True)
    lines = []
    for d, s in scores.items():
        top = ", ".join(f"L{layer}H{head} {score:.2f}" for layer, head, score in s.top(config.top_k))
        lines.append(f"{d:>15}: {top}")
    return RunResults(
        tensors={d: s.values for d, s in scores.items()},
        tables={"scores": table},
        figures={"head_scores": head_scores_figure(scores)},
        summary="Top heads per detector (mean attention to the expected position):\n" + "\n".join(lines),
    )


def head_scores_figure(scores: dict[str, HeadScores]):
    """One [layer x head] heatmap per detector, on a shared 0..1 colour scale."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(scores), subplot_titles=list(scores), horizontal_spacing=0.08)
    for i, (d, s) in enumerate(scores.items(), start=1):
        n_layer, n_head = s.values.shape
        fig.add_trace(go.Heatmap(
            z=s.values.cpu().tolist(), x=list(range(n_head)), y=list(range(n_layer)), zmin=0, zmax=1,
            colorscale="Blues", showscale=i == len(scores),
            hovertemplate="layer %{y}, head %{x}: %{z:.3f}<extra>" + d + "</extra>"), row=1, col=i)
        fig.update_xaxes(title_text="head", row=1, col=i)
        fig.update_yaxes(title_text="layer", autorange="reversed", row=1, col=i)
    fig.update_layout(title="Attention-head detector scores", height=300 + 20 * s.values.shape[0])
    return fig


EXPERIMENT = register(Experiment(
    name="attention_heads",
    config=AttentionHeadsConfig,
    tokens=tokens,
    run=run,
    description="induction, previous-token and duplicate-token scores for every head",
))
