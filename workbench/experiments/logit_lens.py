"""Logit lens on one prompt: every layer's residual stream read through ln_final and the
unembedding, layers x positions: the top tokens and the rank of a target token."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.errors import InputError
from workbench.experiments.core import Experiment, ExperimentConfig, register
from workbench.methods.logit_lens import LogitLensResult, logit_lens
from workbench.runs import RunResults

DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"


@dataclass
class LogitLensConfig(ExperimentConfig):
    prompt: str = field(default=DEFAULT_PROMPT, metadata={"help": "the prompt"})
    target: str | None = field(default=" Mary", metadata={
        "help": "a single-token string whose rank and probability are tracked at every layer and position"})
    top_k: int = field(default=5, metadata={"help": "top tokens kept per layer and position"})
    prepend_bos: bool = field(default=True, metadata={"help": "start the prompt with the BOS token"})

    def validate(self) -> None:
        if not self.prompt:
            raise InputError("prompt is empty")
        if self.top_k < 1:
            raise InputError(f"top_k must be >= 1, got {self.top_k}")


def tokens(config: LogitLensConfig, model) -> dict[str, torch.Tensor]:
    """{"prompt": [1 pos]} and, with a target, {"target": [1 1]}."""
    config.validate()
    out = {"prompt": model.to_tokens(config.prompt, prepend_bos=config.prepend_bos)}
    if config.target is not None:
        try:
            out["target"] = torch.tensor([[model.to_single_token(config.target)]])
        except InputError as e:
            raise InputError(f"target {config.target!r}: {e}") from None
    return out


def run(config: LogitLensConfig, model) -> RunResults:
    """Tensors [layer batch pos k] top tokens and probabilities, [layer batch pos] target rank and
    probability (the full [layer batch pos d_vocab] log-probs are not stored: too large)."""
    prompt = torch.tensor(config.token_ids["prompt"], device=model.device)
    target = int(config.token_ids["target"][0][0]) if "target" in config.token_ids else None
    result = logit_lens(model, prompt, targets=target, top_k=config.top_k)
    tensors = {"top_tokens": result.top_tokens, "top_probs": result.top_probs}
    if target is not None:
        tensors.update(target_rank=result.target_rank, target_prob=result.target_prob)
    return RunResults(
        tensors=tensors,
        tables={"logit_lens": result.to_frame(), "top_k": result.top_k_frame()},
        figures={"logit_lens": logit_lens_figure(result, target_str=config.target)},
        summary=_summary(result, config.target),
    )


def _summary(result: LogitLensResult, target: str | None) -> str:
    lines = [f"Top tokens at the last position ({result.str_tokens[0][-1]!r}), by layer:"]
    for l, label in enumerate(result.layers):
        tops = ", ".join(f"{s!r} {float(p):.2f}" for s, p in zip(result.top_strs[l][0][-1], result.top_probs[l, 0, -1]))
        rank = f"  | {target!r} rank {int(result.target_rank[l, 0, -1])}" if result.target_rank is not None else ""
        lines.append(f"  {label:>10}: {tops}{rank}")
    return "\n".join(lines)


def logit_lens_figure(result: LogitLensResult, *, target_str: str | None = None):
    """Layers x positions: colour = probability of the top token (text: the token); with a target,
    a second panel colours by the target's rank (log scale)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    x = [f"{p} {t!r}" for p, t in enumerate(result.str_tokens[0])]
    panels = 2 if result.target_rank is not None else 1
    titles = ["top token (colour: its probability)"]
    if panels == 2:
        titles.append(f"rank of {target_str!r} (0 = top)")
    fig = make_subplots(rows=panels, cols=1, subplot_titles=titles, vertical_spacing=0.12)
    top_text = [[result.top_strs[l][0][p][0] for p in range(len(x))] for l in range(len(result.layers))]
    fig.add_trace(go.Heatmap(z=result.top_probs[:, 0, :, 0].cpu().tolist(), x=x, y=result.layers, text=top_text,
                             texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=1,
                             colorbar={"title": "p", "len": 1 / panels, "y": 1 - 0.5 / panels},
                             hovertemplate="layer %{y}, pos %{x}: %{text} (p=%{z:.3f})<extra></extra>"), row=1, col=1)
    if panels == 2:
        rank = result.target_rank[:, 0].cpu()
        fig.add_trace(go.Heatmap(z=torch.log10(rank.float() + 1).tolist(), x=x, y=result.layers,
                                 text=rank.tolist(), texttemplate="%{text}", colorscale="Viridis_r",
                                 colorbar={"title": "log10(rank+1)", "len": 0.5, "y": 0.25},
                                 hovertemplate="layer %{y}, pos %{x}: rank %{text}<extra></extra>"), row=2, col=1)
    fig.update_yaxes(title_text="layer", autorange="reversed")
    fig.update_xaxes(title_text="pos")
    fig.update_layout(title="Logit lens", height=250 + 40 * len(result.layers) * panels)
    return fig


EXPERIMENT = register(Experiment(
    name="logit_lens",
    config=LogitLensConfig,
    tokens=tokens,
    run=run,
    description="logit lens on a prompt: top tokens and a target token's rank, layers x positions",
))
