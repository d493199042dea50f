"""Attention-head detectors (`workbench.methods.head_detectors.DETECTORS`: induction, previous-token
and duplicate-token) for every head, on repeated random tokens ([BOS] + r + r)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from workbench.errors import InputError
from workbench.experiments.core import Experiment, ExperimentConfig, ScriptBody, register
from workbench.experiments.figures import head_grid
from workbench.methods.head_detectors import DETECTORS, HeadScores, head_scores
from workbench.methods.prompts import repeated_tokens
from workbench.runs import RunResults


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


def compute(config: AttentionHeadsConfig, model, *, progress=None) -> dict[str, HeadScores]:
    """Every configured detector's HeadScores; `progress(done, total)` counts sequences."""
    ids = torch.tensor(config.token_ids["tokens"], device=model.device)
    return head_scores(model, ids, detectors=config.detectors, progress=progress)


def record(config: AttentionHeadsConfig, model, scores: dict[str, HeadScores]) -> RunResults:
    """values[detector]: [layer head] scores; table `scores`: one row per (detector, layer, head)."""
    table = pd.concat([s.to_frame() for s in scores.values()], ignore_index=True)
    lines = []
    for d, s in scores.items():
        top = ", ".join(f"L{layer}H{head} {score:.2f}" for layer, head, score in s.top(config.top_k))
        lines.append(f"{d:>15}: {top}")
    return RunResults(
        tensors={d: s.values for d, s in scores.items()},
        tables={"scores": table},
        figures={"head_scores": head_grid({d: s.values for d, s in scores.items()},
                                          title="Attention-head detector scores")},
        summary="Top heads per detector (mean attention to the expected position):\n" + "\n".join(lines),
    )


def run(config: AttentionHeadsConfig, model) -> RunResults:
    return record(config, model, compute(config, model))


def figures(tensors: dict, tables: dict) -> list:
    scores = {d: t for d, t in tensors.items() if d in DETECTORS}
    return [head_grid(scores, title="Head detector scores (recorded)")] if scores else []


def script(config: AttentionHeadsConfig) -> ScriptBody:
    """The exported script's library call (`workbench.experiments.exporting`)."""
    return ScriptBody(
        heading="Head detectors: each head's mean attention to the position each detector expects",
        imports=("from workbench.methods import head_scores",),
        code="""tokens = torch.tensor(config.token_ids["tokens"], device=model.device)
result = head_scores(model, tokens, detectors=config.detectors)""",
    )


EXPERIMENT = register(Experiment(
    name="attention_heads",
    config=AttentionHeadsConfig,
    tokens=tokens,
    run=run,
    description="induction, previous-token and duplicate-token scores for every head",
    compute=compute,
    record=record,
    figures=figures,
    script=script,
))
