"""Path patching on clean/corrupted prompt pairs of a task the model can do (default: IOI on GPT-2,
induction on other models): which senders reach the receivers directly (`workbench.methods.path_patching`).

Receivers are written "logits" or LAYER.HEAD.INPUT ("1.0.k": the key input of head 0 of block 1;
"L1H0.k" also reads). "auto" (the default) picks receivers that show the task's circuit:

* ioi on GPT-2 124M: the name movers' queries, 9.9.q 9.6.q 10.0.q (ARENA: the S-inhibition heads
  7.3, 7.9, 8.6, 8.10 send to them); on other GPT-2 sizes, the logits;
* induction: the key inputs of the model's induction heads (every head scoring at least half the
  top induction score, `induction_scores`): on the bundled shakespeare-2l, the four layer-1 heads,
  whose keys are written by the previous-token head L0H3;
* custom: the logits.

The default direction is "noise" (ARENA's: the sender's output from the corrupted run into the clean
one): on induction prompts, a different first copy breaks the keys' match, while denoising the keys
alone restores a match to positions whose values still hold the corrupted tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import torch

from workbench.errors import InputError
from workbench.experiments.core import Experiment, ExperimentConfig, ScriptBody, register
from workbench.experiments.figures import path_patching_figure
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
from workbench.methods.head_detectors import induction_scores
from workbench.methods.metrics import no_signal_message
from workbench.methods.path_patching import SENDER_SETS, PathPatchingResult, path_patching, receivers_label
from workbench.methods.patching import DIRECTIONS
from workbench.runs import RunResults

Direction = Literal[DIRECTIONS]  # type: ignore[valid-type]
SenderSet = Literal[SENDER_SETS]  # type: ignore[valid-type]
# IOI's name movers in GPT-2 124M (Wang et al. 2022), whose queries the S-inhibition heads write.
NAME_MOVER_QUERIES = ["9.9.q", "9.6.q", "10.0.q"]
_RECEIVER = re.compile(r"^(?:L?(\d+)[.H](\d+))\.(\w+)$")


def parse_receivers(texts: list[str]) -> str | list[tuple[int, int, str]]:
    """["logits"] -> "logits"; ["1.0.k", "L1H2.q"] -> [(1, 0, "k"), (1, 2, "q")] (inputs checked by
    `path_patching`)."""
    if texts in (["logits"], ["resid_post"]):
        return "logits"
    out = []
    for text in texts:
        match = _RECEIVER.match(text.strip())
        if match is None:
            raise InputError(f"receiver {text!r}: write 'logits' or LAYER.HEAD.INPUT, e.g. 1.0.k (the key input of "
                             "head 0 of block 1), with INPUT one of q, k, v")
        out.append((int(match[1]), int(match[2]), match[3]))
    return out


def format_receivers(receivers: str | list[tuple[int, int, str]]) -> list[str]:
    """The inverse of `parse_receivers`."""
    return ["logits"] if isinstance(receivers, str) else [f"{l}.{h}.{kind}" for l, h, kind in receivers]


@dataclass
class PathPatchingConfig(PromptSetOptions, ExperimentConfig):
    keeps_per_prompt = True  # per-prompt values and bootstrap intervals (PromptSetOptions)
    receivers: list[str] = field(default_factory=lambda: ["auto"], metadata={
        "help": "logits, or head inputs LAYER.HEAD.INPUT (e.g. 1.0.k 1.1.k; INPUT q, k or v); auto: the task's "
                "(ioi on GPT-2 124M: the name movers' queries 9.9.q 9.6.q 10.0.q; induction: the induction heads' "
                "keys; custom: logits)"})
    senders: SenderSet = field(default="heads", metadata={"help": "heads: every attention head; mlps: every MLP"})
    direction: Direction = field(default="noise", metadata={
        "help": "noise: the sender's output from the corrupted run into the clean one (ARENA's); denoise: the reverse"})
    max_batch: int | None = field(default=None, metadata={
        "help": "most sequences per forward pass (default: as many as fit in the sweep budget); part of the numerics"})

    def validate(self) -> None:
        self.validate_prompt_set()
        if self.max_batch is not None and self.max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.receivers:
            raise InputError("receivers is empty: give 'auto', 'logits' or head inputs such as 1.0.k")
        if self.receivers != ["auto"]:
            parse_receivers(self.receivers)


def default_receivers(prompt_set: str, model) -> list[str]:
    """The receivers "auto" stands for (module docstring)."""
    if prompt_set == "ioi" and getattr(model, "name", None) == "gpt2":
        return list(NAME_MOVER_QUERIES)
    if prompt_set == "induction" and model.cfg.n_layer > 1:
        scores = induction_scores(model).values
        scores[0] = float("-inf")  # a receiver needs a block before it
        top = float(scores.max())
        return [f"{l}.{h}.k" for l, h in (scores >= top / 2).nonzero().tolist()]
    return ["logits"]


def heads_from_patching(frame, *, k: int = 3) -> list[tuple[int, int]]:
    """Receiver heads from a head patching result (`PatchingResult.to_frame()` of a [layer head] target
    such as head_out): the `k` heads with the largest |effect|, outside block 0 (a receiver needs a
    block before it), largest first."""
    if "head" not in frame or "pos" in frame:
        raise InputError("receivers come from a head patching result ([layer head]: target head_out, head_q, "
                         "head_k, head_v or head_pattern)")
    heads = frame[frame["layer"] > 0]
    top = heads.reindex(heads["effect"].abs().sort_values(ascending=False, kind="stable").index).head(k)
    return [(int(r["layer"]), int(r["head"])) for _, r in top.iterrows()]


def resolve(config: PathPatchingConfig, model) -> PathPatchingConfig:
    config = resolve_prompt_set(config, model)
    if config.receivers == ["auto"]:
        config.receivers = default_receivers(config.prompt_set, model)
    return config


def tokens(config: PathPatchingConfig, model) -> dict[str, torch.Tensor]:
    config.validate()
    return prompt_set_tokens(config, model)


def compute(config: PathPatchingConfig, model, *, progress=False) -> PathPatchingResult:
    """The PathPatchingResult of a resolved config with its token ids (see `core.with_tokens`)."""
    ids = {k: torch.tensor(v, device=model.device) for k, v in config.token_ids.items()}
    metric = prompt_set_metric(config, ids, d_vocab=model.cfg.vocab_size)
    result = path_patching(model, ids["clean"], ids["corrupted"], metric, receivers=parse_receivers(config.receivers),
                           senders=config.senders, direction=config.direction, max_batch=config.max_batch,
                           progress=progress, **sweep_options(config))
    result.bootstrap = bootstrap(config)
    return result


def record(config: PathPatchingConfig, model, result: PathPatchingResult) -> RunResults:
    """values: the metric with each sender path-patched into the receivers ([layer head] or [layer]; NaN where
    the sender is at or after every receiver); with per-prompt values also per_prompt [... prompt], the
    unpatched runs' per-prompt values (prompt_clean_corrupted [2 prompt]), interval columns in the
    path_patching table and, with group labels, a path_patching_by_group table."""
    frame = result.to_frame()
    scale = torch.tensor([result.clean_value, result.corrupted_value])
    tensors = {"values": result.values, "clean_corrupted": scale}
    tables = {"path_patching": frame, "prompts": prompts_frame(config.token_ids, model, config.prompt_groups)}
    record_per_prompt(result, tensors, tables, by_group="path_patching_by_group")
    return RunResults(
        tensors=tensors,
        tables=tables,
        figures={"path_patching": path_patching_figure(frame)},
        summary=summary(result, frame, config),
    )


def run(config: PathPatchingConfig, model) -> RunResults:
    return record(config, model, compute(config, model))


def summary(result: PathPatchingResult, frame, config: PathPatchingConfig | None = None) -> str:
    done = frame[frame["computed"]]
    top = done.reindex(done["effect"].abs().sort_values(ascending=False).index).head(5)
    ci = "effect_ci_low" in frame
    senders = ", ".join(f"{r['component']}: {r['effect']:+.3f}"
                        + (f" [{r['effect_ci_low']:+.3f}, {r['effect_ci_high']:+.3f}]" if ci else "")
                        for _, r in top.iterrows())
    lines = [f"{result.metric}: clean {result.clean_value:.3f}, corrupted {result.corrupted_value:.3f} "
             f"({result.direction}; receivers {receivers_label(result.receivers)}; {len(done)} senders before a "
             f"receiver, of {len(frame)})"]
    warning = no_signal_message(result.clean_value, result.corrupted_value, result.metric)
    if warning:
        lines.append(f"WARNING: {warning}")
    lines.append(f"largest effects (change from the unpatched {'corrupted' if result.direction == 'denoise' else 'clean'} "
                 f"run): {senders}")
    if ci and config is not None:
        lines.append(interval_note(config, int(done["n"].iloc[0])))
    return "\n".join(lines)


def figures(tensors: dict, tables: dict) -> list:
    return [path_patching_figure(tables["path_patching"])] if "path_patching" in tables else []


def script(config: PathPatchingConfig) -> ScriptBody:
    """The exported script's library call (`workbench.experiments.exporting`)."""
    return ScriptBody(
        heading=f"Path patching: {config.direction} each of the {config.senders} into {', '.join(config.receivers)}",
        imports=("from workbench.experiments.path_patching import parse_receivers",
                 "from workbench.experiments.prompt_sets import bootstrap, prompt_set_metric, sweep_options",
                 "from workbench.methods import path_patching"),
        code="""ids = {role: torch.tensor(rows, device=model.device) for role, rows in config.token_ids.items()}
metric = prompt_set_metric(config, ids, d_vocab=model.cfg.vocab_size)
result = path_patching(model, ids["clean"], ids["corrupted"], metric, receivers=parse_receivers(config.receivers),
                       senders=config.senders, direction=config.direction, max_batch=config.max_batch,
                       **sweep_options(config))
result.bootstrap = bootstrap(config)  # the intervals' resamples, seed and confidence""",
    )


EXPERIMENT = register(Experiment(
    name="path_patching",
    config=PathPatchingConfig,
    tokens=tokens,
    run=run,
    description="path patching from every head (or MLP) into chosen receivers (default: the task's circuit)",
    compute=compute,
    record=record,
    resolve=resolve,
    figures=figures,
    script=script,
))
