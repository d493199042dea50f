"""Ablate every attention head on its own (zero, mean or resample) on the prompts of a task the
model can do (default: IOI on GPT-2, induction on other models) and measure the task's metric;
heads ranked by the size of the effect."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch

from workbench.errors import InputError
from workbench.experiments.core import Experiment, ExperimentConfig, ScriptBody, register
from workbench.experiments.figures import ablation_figure
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
from workbench.methods.ablation import METHODS, AblationResult, ablation_sweep
from workbench.methods.metrics import no_signal_message
from workbench.methods.planning import parse_memory
from workbench.runs import RunResults

# The defaults, here once: the dashboard's ablation page opens on them too.
DEFAULT_METHOD = "mean"
DEFAULT_REFERENCE = "prompts"
REFERENCES = {"prompts": "the prompts themselves", "corrupted": "the corrupted prompts"}


@dataclass
class AblateHeadsConfig(PromptSetOptions, ExperimentConfig):
    keeps_per_prompt = True  # per-prompt values and bootstrap intervals (PromptSetOptions)
    method: Literal[METHODS] = field(default=DEFAULT_METHOD, metadata={  # type: ignore[valid-type]
        "help": "zero: the head's output set to 0; mean: to its mean over the reference batch, position by "
                "position; resample: to its value on a random reference prompt (seeded)"})
    reference: Literal["prompts", "corrupted"] = field(default=DEFAULT_REFERENCE, metadata={
        "help": "the reference batch for mean/resample: the prompts themselves, or their corrupted versions"})
    max_batch: int | None = field(default=None, metadata={
        "help": "most sequences per forward pass (default: as many as fit in the sweep budget, "
                "workbench.methods._resume.TOKEN_BUDGET token positions); part of the numerics"})
    memory: str | None = field(default=None, metadata={
        "help": "memory budget of the sweep, e.g. 2GiB or 512MB (default: half the device's free memory): chunks "
                "are sized to fit it (workbench.methods.planning), and a budget too small for one cell is an error"})
    top_k: int = field(default=10, metadata={"help": "heads listed in the summary"})

    def applies(self, name: str) -> bool:
        if name == "reference":
            return self.method != "zero"  # a zeroed head needs no reference batch
        return super().applies(name)

    def validate(self) -> None:
        self.validate_prompt_set()
        if self.max_batch is not None and self.max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.memory is not None:
            parse_memory(self.memory)
        if self.top_k < 1:
            raise InputError(f"top_k must be >= 1, got {self.top_k}")


@dataclass
class HeadAblation:
    """An ablation sweep and the unablated metric on the clean and the corrupted prompts (the
    corrupted value says whether the prompts show the behaviour at all)."""

    result: AblationResult
    clean_value: float
    corrupted_value: float

    @property
    def no_signal(self) -> str | None:
        """A warning when the clean run is not clearly better than the corrupted one, else None."""
        return no_signal_message(self.clean_value, self.corrupted_value, self.result.metric)


def tokens(config: AblateHeadsConfig, model) -> dict[str, torch.Tensor]:
    config.validate()
    return prompt_set_tokens(config, model)


def reference_tokens(config: AblateHeadsConfig, ids: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The reference batch for mean / resample (None: the prompts themselves; zero needs none)."""
    return ids["corrupted"] if config.reference == "corrupted" and config.method != "zero" else None


def compute(config: AblateHeadsConfig, model, *, progress=False, rows: slice | None = None) -> HeadAblation:
    """The sweep of a resolved config with its token ids (see `core.with_tokens`); with `rows`, of
    those prompts only (a shard: `workbench.experiments.distributed`), mean ablation still averaging
    over the whole reference batch."""
    every = {k: torch.tensor(v, device=model.device) for k, v in config.token_ids.items()}
    reference = reference_tokens(config, every)
    if rows is not None and config.method != "zero":
        if config.method == "resample":
            raise InputError("resample ablation draws a reference prompt for each prompt of the whole set; it cannot "
                             "be split into shards: run it in one process (without torchrun)")
        reference = every["clean"] if reference is None else reference  # the whole set's mean, not the shard's
    ids = {k: v[rows or slice(None)] for k, v in every.items()}
    metric = prompt_set_metric(config, ids, d_vocab=model.cfg.vocab_size)
    result = ablation_sweep(model, ids["clean"], metric, method=config.method, reference=reference,
                            seed=config.seed, max_batch=config.max_batch, progress=progress,
                            memory=config.memory, **sweep_options(config, rows))
    result.bootstrap = bootstrap(config)
    with torch.no_grad():
        corrupted = float(metric(model(ids["corrupted"])))
    return HeadAblation(result, result.baseline, corrupted)


def record(config: AblateHeadsConfig, model, run_result: HeadAblation) -> RunResults:
    """values[layer, head]: the metric with that head ablated; table `heads`: every head, largest
    |effect| first."""
    result = run_result.result
    heads = ranked_heads(result)
    tensors = {"values": result.values, "baseline": torch.tensor(result.baseline),
               "clean_corrupted": torch.tensor([run_result.clean_value, run_result.corrupted_value])}
    tables = {"heads": heads, "prompts": prompts_frame(config.token_ids, model, config.prompt_groups)}
    if result.per_prompt is not None:
        tensors["per_prompt"], tensors["prompt_baseline"] = result.per_prompt, result.prompt_baseline
        if result.groups is not None:
            tables["heads_by_group"] = result.to_frame(by_group=True)
    lines = summary(run_result, heads, config.top_k)
    if result.per_prompt is not None:
        lines += "\n" + interval_note(config, result.per_prompt.shape[-1])
    return RunResults(
        tensors=tensors,
        tables=tables,
        figures={"ablation": ablation_figure(heads)},
        summary=lines,
    )


def run(config: AblateHeadsConfig, model) -> RunResults:
    return record(config, model, compute(config, model))


def ranked_heads(result: AblationResult) -> pd.DataFrame:
    """`result.to_frame()` ordered by |effect| (ties: layer, head), with a `rank` column (1 = largest)."""
    frame = result.to_frame()
    frame["abs_effect"] = frame["effect"].abs()
    frame = frame.sort_values(["abs_effect", "layer", "head"], ascending=[False, True, True], kind="stable")
    frame = frame.drop(columns="abs_effect").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def summary(run_result: HeadAblation, heads: pd.DataFrame, top_k: int) -> str:
    result = run_result.result
    lines = [f"{result.metric}: clean {run_result.clean_value:.3f} (without ablation), corrupted "
             f"{run_result.corrupted_value:.3f}"]
    if run_result.no_signal:
        lines.append(f"WARNING: {run_result.no_signal}")
    lines.append(f"{result.method}-ablating each head:")
    ci = "effect_ci_low" in heads
    for _, r in heads.head(top_k).iterrows():
        lines.append(f"  {int(r['rank']):>3}. L{int(r['layer'])}H{int(r['head'])}: {r['value']:.3f} "
                     f"(effect {r['effect']:+.3f}"
                     + (f", interval [{r['effect_ci_low']:+.3f}, {r['effect_ci_high']:+.3f}])" if ci else ")"))
    if result.memory_plan is not None:
        lines.append(result.memory_plan.format())
    return "\n".join(lines)


def figures(tensors: dict, tables: dict) -> list:
    return [ablation_figure(tables["heads"])] if "heads" in tables else []


def script(config: AblateHeadsConfig) -> ScriptBody:
    """The exported script's library call (`workbench.experiments.exporting`)."""
    return ScriptBody(
        heading=f"Ablation: {config.method}-ablate each head on its own and measure {config.metric}",
        imports=("from workbench.experiments.ablate_heads import HeadAblation, reference_tokens",
                 "from workbench.experiments.prompt_sets import bootstrap, prompt_set_metric, sweep_options",
                 "from workbench.methods import ablation_sweep"),
        code="""ids = {role: torch.tensor(rows, device=model.device) for role, rows in config.token_ids.items()}
metric = prompt_set_metric(config, ids, d_vocab=model.cfg.vocab_size)
sweep = ablation_sweep(model, ids["clean"], metric, method=config.method, reference=reference_tokens(config, ids),
                       seed=config.seed, max_batch=config.max_batch, memory=config.memory, **sweep_options(config))
sweep.bootstrap = bootstrap(config)  # the intervals' resamples, seed and confidence
corrupted = float(metric(model(ids["corrupted"])))  # without ablation: does the task separate at all?
result = HeadAblation(sweep, sweep.baseline, corrupted)""",
    )


EXPERIMENT = register(Experiment(
    name="ablate_heads",
    config=AblateHeadsConfig,
    tokens=tokens,
    run=run,
    description="ablate every head (zero/mean/resample) on the prompts of a task the model can do, top heads first",
    compute=compute,
    record=record,
    resolve=resolve_prompt_set,
    figures=figures,
    script=script,
))
