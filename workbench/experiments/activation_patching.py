"""Activation patching on clean/corrupted prompt pairs of a task the model can do (default: IOI on
GPT-2, induction on other models), for any target of `workbench.methods.patching`; or its gradient
estimate, attribution patching (`method="attribution"`, `workbench.methods.attribution`), on the
same prompts, targets, metric and per-prompt intervals. The record says which (config `method`,
and the patching table's `method` column)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from workbench.errors import InputError
from workbench.experiments.core import Experiment, ExperimentConfig, ScriptBody, register
from workbench.experiments.figures import patching_figure
from workbench.experiments.prompt_sets import (
    PromptSetOptions,
    bootstrap,
    interval_note,
    prompt_set_metric,
    prompt_set_tokens,
    prompts_frame,
    record_per_prompt,
    resolve_prompt_set,
    sweep_options,
)
from workbench.methods.attribution import attribution_patching
from workbench.methods.metrics import no_signal_message
from workbench.methods.patching import DIRECTIONS, TARGETS, PatchingResult, activation_patching
from workbench.methods.planning import parse_memory
from workbench.runs import RunResults

Target = Literal[TARGETS]  # type: ignore[valid-type]
Direction = Literal[DIRECTIONS]  # type: ignore[valid-type]
# The two methods, in words (the dashboard's labels).
METHODS = {"activation": "activation patching (every cell run: exact)",
           "attribution": "attribution patching (gradient estimate: fast, linear)"}
# The options that size the activation-patching sweep; attribution patching has no sweep to size.
SWEEP_ONLY = ("max_batch", "memory")


@dataclass
class ActivationPatchingConfig(PromptSetOptions, ExperimentConfig):
    keeps_per_prompt = True  # per-prompt values and bootstrap intervals (PromptSetOptions)
    target: Target = field(default="resid_pre", metadata={"help": "what to patch"})
    direction: Direction = field(default="denoise", metadata={
        "help": "denoise: clean activations into the corrupted run; noise: the reverse"})
    method: Literal["activation", "attribution"] = field(default="activation", metadata={
        "help": "activation: patch every cell and run it (exact); attribution: estimate every cell from the "
                "gradient, grad . (source - base activation), in one forward and backward pass (fast, linear)"})
    layers: list[int] | None = field(default=None, metadata={"help": "layers to sweep (default: all)"})
    max_batch: int | None = field(default=None, metadata={
        "help": "most sequences per forward pass (default: as many as fit in the sweep budget, "
                "workbench.methods._resume.TOKEN_BUDGET token positions); part of the numerics"})
    memory: str | None = field(default=None, metadata={
        "help": "memory budget of the sweep, e.g. 2GiB or 512MB (default: half the device's free memory): chunks "
                "are sized to fit it (workbench.methods.planning), and a budget too small for one cell is an error"})

    def applies(self, name: str) -> bool:
        """max_batch and memory only with activation patching (they size its sweep)."""
        if name in SWEEP_ONLY:
            return self.method == "activation"
        return super().applies(name)

    def validate(self) -> None:
        self.validate_prompt_set()
        if self.method == "attribution":
            given = [name for name in SWEEP_ONLY if getattr(self, name) is not None]
            if given:
                raise InputError(f"{' and '.join(given)} size the activation-patching sweep; attribution patching "
                                 "runs one forward and one backward pass and takes neither: leave "
                                 f"{'them' if len(given) > 1 else 'it'} unset, or use method 'activation'")
        if self.max_batch is not None and self.max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.memory is not None:
            parse_memory(self.memory)


def tokens(config: ActivationPatchingConfig, model) -> dict[str, torch.Tensor]:
    config.validate()
    return prompt_set_tokens(config, model)


def compute(config: ActivationPatchingConfig, model, *, progress=False, rows: slice | None = None) -> PatchingResult:
    """The PatchingResult of a resolved config with its token ids (see `core.with_tokens`); with
    `rows`, of those prompts only (a shard: `workbench.experiments.distributed`)."""
    ids = {k: torch.tensor(v[rows or slice(None)], device=model.device) for k, v in config.token_ids.items()}
    metric = prompt_set_metric(config, ids, d_vocab=model.cfg.vocab_size)
    if config.method == "attribution":
        result = attribution_patching(model, ids["clean"], ids["corrupted"], metric, target=config.target,
                                      direction=config.direction, layers=config.layers, **sweep_options(config, rows))
    else:
        result = activation_patching(model, ids["clean"], ids["corrupted"], metric, target=config.target,
                                     direction=config.direction, layers=config.layers, max_batch=config.max_batch,
                                     progress=progress, memory=config.memory, **sweep_options(config, rows))
    result.bootstrap = bootstrap(config)
    return result


def record(config: ActivationPatchingConfig, model, result: PatchingResult) -> RunResults:
    """values: the metric with each cell patched (attribution: its estimate), axes per target
    ([layer pos] or [layer head] ...); with per-prompt values also per_prompt [... prompt], the
    unpatched runs' per-prompt values (prompt_clean_corrupted [2 prompt]), interval columns in the
    patching table and, with group labels, a patching_by_group table."""
    frame = result.to_frame()
    scale = torch.tensor([result.clean_value, result.corrupted_value])
    tensors = {"values": result.values, "clean_corrupted": scale}
    tables = {"patching": frame, "prompts": prompts_frame(config.token_ids, model, config.prompt_groups)}
    record_per_prompt(result, tensors, tables, by_group="patching_by_group")
    return RunResults(
        tensors=tensors,
        tables=tables,
        figures={"patching": patching_figure(frame)},
        summary=summary(result, frame, config),
    )


def run(config: ActivationPatchingConfig, model) -> RunResults:
    return record(config, model, compute(config, model))


def summary(result: PatchingResult, frame, config: ActivationPatchingConfig | None = None) -> str:
    axes = [d for d in result.dims if d in frame]
    top = frame.reindex(frame["effect"].abs().sort_values(ascending=False).index).head(5)
    ci = "effect_ci_low" in frame
    cells = ", ".join(
        " ".join(f"{a}={int(r[a])}" for a in axes) + (f" {r['token']!r}" if "token" in r else "") + f": {r['effect']:+.3f}"
        + (f" [{r['effect_ci_low']:+.3f}, {r['effect_ci_high']:+.3f}]" if ci else "")
        for _, r in top.iterrows()
    )
    lines = [f"{result.metric}: clean {result.clean_value:.3f}, corrupted {result.corrupted_value:.3f} "
             f"({result.method} patching, {result.direction}, target {result.target})"]
    if result.method == "attribution":
        lines.append("attribution patching: each value is the linear estimate baseline + gradient . (source - base "
                     "activation), from one forward and backward pass, not a patched run")
    warning = no_signal_message(result.clean_value, result.corrupted_value, result.metric)
    if warning:
        lines.append(f"WARNING: {warning}")
    lines.append(f"largest effects: {cells}")
    if result.memory_plan is not None:
        lines.append(result.memory_plan.format())
    if ci and config is not None:
        lines.append(interval_note(config, int(frame["n"].iloc[0])))
    return "\n".join(lines)


def figures(tensors: dict, tables: dict) -> list:
    return [patching_figure(tables["patching"])] if "patching" in tables else []


def script(config: ActivationPatchingConfig) -> ScriptBody:
    """The exported script's library call (`workbench.experiments.exporting`)."""
    if config.method == "attribution":
        return ScriptBody(
            heading=f"Attribution patching: estimate {config.direction}-patching each {config.target} cell from "
                    f"the gradient of {config.metric}",
            imports=("from workbench.experiments.prompt_sets import bootstrap, prompt_set_metric, sweep_options",
                     "from workbench.methods import attribution_patching"),
            code="""ids = {role: torch.tensor(rows, device=model.device) for role, rows in config.token_ids.items()}
metric = prompt_set_metric(config, ids, d_vocab=model.cfg.vocab_size)
result = attribution_patching(model, ids["clean"], ids["corrupted"], metric, target=config.target,
                              direction=config.direction, layers=config.layers, **sweep_options(config))
result.bootstrap = bootstrap(config)  # the intervals' resamples, seed and confidence""",
        )
    return ScriptBody(
        heading=f"Activation patching: {config.direction} each {config.target} cell and measure {config.metric}",
        imports=("from workbench.experiments.prompt_sets import bootstrap, prompt_set_metric, sweep_options",
                 "from workbench.methods import activation_patching"),
        code="""ids = {role: torch.tensor(rows, device=model.device) for role, rows in config.token_ids.items()}
metric = prompt_set_metric(config, ids, d_vocab=model.cfg.vocab_size)
result = activation_patching(model, ids["clean"], ids["corrupted"], metric, target=config.target,
                             direction=config.direction, layers=config.layers, max_batch=config.max_batch,
                             memory=config.memory, **sweep_options(config))
result.bootstrap = bootstrap(config)  # the intervals' resamples, seed and confidence""",
    )


EXPERIMENT = register(Experiment(
    name="activation_patching",
    config=ActivationPatchingConfig,
    tokens=tokens,
    run=run,
    description="activation patching on clean/corrupted prompt pairs (default: the task the model can do), "
                "any patching target; or its gradient estimate (--method attribution)",
    compute=compute,
    record=record,
    resolve=resolve_prompt_set,
    figures=figures,
    script=script,
))
