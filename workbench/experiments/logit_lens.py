"""Logit lens on one prompt: every layer's residual stream read through ln_final and the
unembedding, layers x positions: the top tokens and the rank of a target token."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.errors import InputError
from workbench.experiments.core import Experiment, ExperimentConfig, ScriptBody, register
from workbench.experiments.figures import lens_figure_from_frame
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
        if not self.prompt.strip():
            raise InputError("prompt has no text: give a prompt that is not empty")
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


def compute(config: LogitLensConfig, model) -> LogitLensResult:
    """The LogitLensResult of a config with its token ids (see `core.with_tokens`)."""
    prompt = torch.tensor(config.token_ids["prompt"], device=model.device)
    target = int(config.token_ids["target"][0][0]) if "target" in config.token_ids else None
    return logit_lens(model, prompt, targets=target, top_k=config.top_k)


def record(config: LogitLensConfig, model, result: LogitLensResult) -> RunResults:
    """Tensors [layer batch pos k] top tokens and probabilities, [layer batch pos] target rank and
    probability (the full [layer batch pos d_vocab] log-probs are not stored: too large)."""
    tensors = {"top_tokens": result.top_tokens, "top_probs": result.top_probs}
    if result.target_rank is not None:
        tensors.update(target_rank=result.target_rank, target_prob=result.target_prob)
    frame = result.to_frame()
    return RunResults(
        tensors=tensors,
        tables={"logit_lens": frame, "top_k": result.top_k_frame()},
        figures={"logit_lens": lens_figure_from_frame(frame)},
        summary=_summary(result, config.target),
    )


def run(config: LogitLensConfig, model) -> RunResults:
    return record(config, model, compute(config, model))


def _summary(result: LogitLensResult, target: str | None) -> str:
    lines = [f"Top tokens at the last position ({result.str_tokens[0][-1]!r}), by layer:"]
    for l, label in enumerate(result.layers):
        tops = ", ".join(f"{s!r} {float(p):.2f}" for s, p in zip(result.top_strs[l][0][-1], result.top_probs[l, 0, -1]))
        rank = f"  | {target!r} rank {int(result.target_rank[l, 0, -1])}" if result.target_rank is not None else ""
        lines.append(f"  {label:>10}: {tops}{rank}")
    return "\n".join(lines)


def figures(tensors: dict, tables: dict) -> list:
    return [lens_figure_from_frame(tables["logit_lens"])] if "logit_lens" in tables else []


def script(config: LogitLensConfig) -> ScriptBody:
    """The exported script's library call (`workbench.experiments.exporting`)."""
    target = 'config.token_ids["target"][0][0]' if config.target is not None else "None"
    return ScriptBody(
        heading="The logit lens: every layer's residual stream read through ln_final and the unembedding",
        imports=("from workbench.methods import logit_lens",),
        code=f"""prompt = torch.tensor(config.token_ids["prompt"], device=model.device)
result = logit_lens(model, prompt, targets={target}, top_k=config.top_k)""",
    )


EXPERIMENT = register(Experiment(
    name="logit_lens",
    config=LogitLensConfig,
    tokens=tokens,
    run=run,
    description="logit lens on a prompt: top tokens and a target token's rank, layers x positions",
    compute=compute,
    record=record,
    figures=figures,
    script=script,
))
