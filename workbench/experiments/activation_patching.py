"""Activation patching on clean/corrupted prompt pairs (default: IOI), metric: logit difference
answer - wrong answer at the last position, for any target of `workbench.methods.patching`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from workbench.errors import InputError
from workbench.experiments.core import Experiment, ExperimentConfig, register
from workbench.experiments.prompt_sets import PromptSetOptions, prompt_set_tokens, prompts_frame
from workbench.methods.metrics import LogitDiff
from workbench.methods.patching import DIRECTIONS, TARGETS, activation_patching
from workbench.runs import RunResults

Target = Literal[TARGETS]  # type: ignore[valid-type]
Direction = Literal[DIRECTIONS]  # type: ignore[valid-type]


@dataclass
class ActivationPatchingConfig(PromptSetOptions, ExperimentConfig):
    metric: Literal["logit_diff"] = field(default="logit_diff", metadata={
        "help": "logit[answer] - logit[wrong answer] at the last position, mean over prompts"})
    target: Target = field(default="resid_pre", metadata={"help": "what to patch"})
    direction: Direction = field(default="denoise", metadata={
        "help": "denoise: clean activations into the corrupted run; noise: the reverse"})
    layers: list[int] | None = field(default=None, metadata={"help": "layers to sweep (default: all)"})
    max_batch: int | None = field(default=None, metadata={
        "help": "most sequences per forward pass (default: as many as fit in the sweep budget, "
                "workbench.methods._resume.TOKEN_BUDGET token positions); part of the numerics"})

    def validate(self) -> None:
        if self.n_prompts < 1:
            raise InputError(f"n_prompts must be >= 1, got {self.n_prompts}")
        if self.max_batch is not None and self.max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {self.max_batch}")


def tokens(config: ActivationPatchingConfig, model) -> dict[str, torch.Tensor]:
    config.validate()
    return prompt_set_tokens(config, model)


def run(config: ActivationPatchingConfig, model) -> RunResults:
    """values: the metric with each cell patched, axes per target ([layer pos] or [layer head] ...)."""
    ids = {k: torch.tensor(v, device=model.device) for k, v in config.token_ids.items()}
    metric = LogitDiff(ids["answers"][:, 0], ids["wrong_answers"][:, 0], pos=-1)
    result = activation_patching(model, ids["clean"], ids["corrupted"], metric, target=config.target,
                                 direction=config.direction, layers=config.layers, max_batch=config.max_batch,
                                 progress=False)
    frame = result.to_frame()
    scale = torch.tensor([result.clean_value, result.corrupted_value])
    return RunResults(
        tensors={"values": result.values, "clean_corrupted": scale},
        tables={"patching": frame, "prompts": prompts_frame(config.token_ids, model)},
        figures={"patching": patching_figure(result)},
        summary=_summary(result, frame),
    )


def _summary(result, frame) -> str:
    axes = [d for d in result.dims if d in frame]
    top = frame.reindex(frame["effect"].abs().sort_values(ascending=False).index).head(5)
    cells = ", ".join(
        " ".join(f"{a}={int(r[a])}" for a in axes) + (f" {r['token']!r}" if "token" in r else "") + f": {r['effect']:+.3f}"
        for _, r in top.iterrows()
    )
    return (f"{result.metric}: clean {result.clean_value:.3f}, corrupted {result.corrupted_value:.3f} "
            f"({result.direction}, target {result.target})\nlargest effects: {cells}")


def patching_figure(result):
    """A heatmap of the normalized metric (0 = corrupted, 1 = clean) over the target's cells."""
    import plotly.graph_objects as go

    try:
        z = result.normalized()
        title = "normalized metric (0 = corrupted, 1 = clean)"
    except InputError:
        z, title = result.values, result.metric
    if z.ndim == 3:  # [layer pos head]: sum over heads for the overview; the table has every cell
        z, dims = z.sum(-1), ("layer", "pos")
    else:
        dims = result.dims
    x = [f"{p} {t!r}" for p, t in enumerate(result.str_tokens)] if dims[1] == "pos" else list(range(z.shape[1]))
    fig = go.Figure(go.Heatmap(z=z.cpu().tolist(), x=x, y=result.layers, colorscale="RdBu", zmid=0,
                               colorbar={"title": "value"}))
    fig.update_layout(title=f"Activation patching ({result.target}, {result.direction}): {title}",
                      xaxis_title=dims[1], yaxis_title="layer", yaxis_autorange="reversed")
    return fig


EXPERIMENT = register(Experiment(
    name="activation_patching",
    config=ActivationPatchingConfig,
    tokens=tokens,
    run=run,
    description="activation patching on clean/corrupted prompt pairs (default: IOI), any patching target",
))
