"""Direct logit attribution on the prompts of a task the model can do (default: IOI on GPT-2,
induction on other models): how much each head (or layer, neuron, component) writes the task's
direction of the logits at the read position, per prompt and on average (with a bootstrap interval
over prompts, and per group when the prompts carry group labels), and the accumulated view. Prompts
of different lengths (length_rule "pad") are each read at their own last token."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch

from workbench.errors import InputError
from workbench.experiments.core import Experiment, ExperimentConfig, ScriptBody, register
from workbench.experiments.figures import dla_accumulated_figure, dla_figure, dla_layer_figure
from workbench.experiments.prompt_sets import (
    PromptSetOptions,
    bootstrap,
    interval_note,
    prompt_set_tokens,
    prompts_frame,
    resolve_prompt_set,
)
from workbench.methods.dla import BY, DLAResult, direct_logit_attribution
from workbench.runs import RunResults

# What each prompt set's direction is, for pages and summaries.
DIRECTIONS = {
    "ioi": "logit difference IO - S at the last position",
    "custom": "logit difference answer - wrong at the last position",
    "induction": "logit of the correct next token (second copy) at the second-to-last position",
}


@dataclass
class DLAConfig(PromptSetOptions, ExperimentConfig):
    # bootstrap intervals over prompts (PromptSetOptions: per_prompt; every prompt's values are kept either way)
    keeps_per_prompt = True
    by: Literal[BY] = field(default="head", metadata={  # type: ignore[valid-type]
        "help": "the grid of components: head ([layer head]), layer ([layer]), neuron ([layer d_mlp]) or "
                "component (embed, pos_embed, each attn_out and mlp_out)"})
    pos: int | None = field(default=None, metadata={
        "help": "the position read (negative counts from the end; with padded prompts, from each prompt's own "
                "end); default: the last for ioi/custom/file (each prompt's own), the second-to-last for induction "
                "(the last whose next token is known)"})
    top_k: int = field(default=10, metadata={"help": "components listed in the summary"})

    def applies(self, name: str) -> bool:
        if name in ("corrupted_prompts", "ioi_corruption"):
            return False  # one run of the clean prompts: nothing is corrupted
        if name == "metric":
            return False  # the prompt set's direction (DIRECTIONS) is read, not its patching metric
        return super().applies(name)

    def validate(self) -> None:
        if self.prompt_set == "greater_than":
            raise InputError(
                "DLA reads a direction in the residual stream (a logit or a logit difference), and the greater_than "
                "set's metric is a probability difference over many year tokens, which has no such direction; "
                f"choose a prompt set with an answer token: {', '.join(sorted(DIRECTIONS))} or file")
        self.validate_prompt_set()
        if self.top_k < 1:
            raise InputError(f"top_k must be >= 1, got {self.top_k}")


def tokens(config: DLAConfig, model) -> dict[str, torch.Tensor]:
    """The prompt set's clean prompts (and answers / wrong answers), without corrupted prompts."""
    config.validate()
    if config.prompt_set == "custom":  # the shared checks want a corrupted prompt per clean one: DLA has none
        config = dataclasses.replace(config, corrupted_prompts=list(config.clean_prompts))
    ids = prompt_set_tokens(config, model)
    ids.pop("corrupted")
    return ids


def position(config: DLAConfig, n_pos: int, read_pos: torch.Tensor | None = None) -> int | torch.Tensor:
    """The position a resolved config reads, counted from 0; with `read_pos` [batch] (prompts padded
    to one length, each read at its own last token: the ids' "read_pos"), one per prompt, a
    negative `pos` counting from each prompt's own end."""
    pos = config.pos if config.pos is not None else (-2 if config.prompt_set == "induction" else -1)
    if read_pos is not None:
        own = read_pos + 1 + pos if pos < 0 else torch.full_like(read_pos, pos)
        bad = ((own < 0) | (own > read_pos)).nonzero().flatten().tolist()
        if bad:
            raise InputError(f"pos {pos} is outside prompt {bad[0]}, which has {int(read_pos[bad[0]]) + 1} tokens "
                             "(prompts padded to one length are read within their own tokens)")
        return own
    if not -n_pos <= pos < n_pos:
        raise InputError(f"pos must be a position of the prompts: {-n_pos} to {n_pos - 1} for {n_pos} tokens, got {pos}")
    pos %= n_pos
    if config.prompt_set == "induction" and pos == n_pos - 1:
        raise InputError(f"pos {config.pos} is the last position: on the induction set the direction is the "
                         f"logit of the next token, so pos must be at most {n_pos - 2} (or -2)")
    return pos


def compute(config: DLAConfig, model, *, progress=False) -> DLAResult:
    """The DLAResult of a resolved config with its token ids (see `core.with_tokens`); one cached
    forward, so `progress` has nothing to report."""
    ids = {k: torch.tensor(v, device=model.device) for k, v in config.token_ids.items()}
    clean = ids["clean"]
    pos = position(config, clean.shape[1], ids["read_pos"][:, 0] if "read_pos" in ids else None)
    groups = (config.prompt_groups or None) if config.per_prompt else None  # per-group intervals
    if config.prompt_set == "induction":  # the token that follows: what an induction head predicts
        result = direct_logit_attribution(model, clean, clean[:, pos + 1], by=config.by, pos=pos, groups=groups)
        result = dataclasses.replace(result, direction="logit[correct next token]")
    else:
        direction = (ids["answers"][:, 0], ids["wrong_answers"][:, 0])
        result = direct_logit_attribution(model, clean, direction, by=config.by, pos=pos, groups=groups)
    result.bootstrap = bootstrap(config) if config.per_prompt else None
    return result


def record(config: DLAConfig, model, result: DLAResult) -> RunResults:
    """Tensors: values_per_prompt [batch ...] (the grid of `by`), terms_per_prompt [batch component],
    total [batch] (the model's own value), attn_out / mlp_out [batch layer], accumulated [batch
    layer]; tables: components (one row per component, mean, spread and bootstrap interval over the
    prompts: n, ci_low, ci_high), layers, accumulated, prompts, and with group labels
    components_by_group. The interval's resamples, seed and confidence are in the config."""
    frame = result.to_frame()
    layers, accumulated = result.layer_frame(), result.accumulated_frame()
    tables = {"components": frame, "layers": layers, "accumulated": accumulated,
              "prompts": prompts_frame(config.token_ids, model, config.prompt_groups)}
    if result.groups is not None:
        tables["components_by_group"] = result.to_frame(by_group=True)
    return RunResults(
        tensors={"values_per_prompt": result.per_prompt, "terms_per_prompt": result.terms_per_prompt,
                 "total": result.total, "attn_out": result.attn_out, "mlp_out": result.mlp_out,
                 "accumulated": result.accumulated},
        tables=tables,
        figures={"dla": dla_figure(frame), "layers": dla_layer_figure(layers),
                 "accumulated": dla_accumulated_figure(accumulated)},
        summary=summary(result, frame, config.top_k, config),
    )


def run(config: DLAConfig, model) -> RunResults:
    return record(config, model, compute(config, model))


def summary(result: DLAResult, frame, top_k: int, config: DLAConfig | None = None) -> str:
    values, _ = result.all_per_prompt()
    gap = float((values.sum(1) - result.total).abs().max())
    lines = [f"{result.direction} at {result.pos_label}, {result.n_prompts} prompt(s): the model's value "
             f"{float(result.total.mean()):.3f} (mean), the components sum to it within {gap:.1e}"]
    ci = "ci_low" in frame
    lines.append(f"largest direct contributions (by {result.by}, logits, mean [min, max] over prompts"
                 + (", then the bootstrap interval of the mean):" if ci else "):"))
    top = frame.reindex(frame["value"].abs().sort_values(ascending=False).index).head(top_k)
    for _, r in top.iterrows():
        lines.append(f"  {r['label']}: {r['value']:+.3f} [{r['min']:+.3f}, {r['max']:+.3f}]"
                     + (f" interval [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if ci else ""))
    if ci and config is not None:
        lines.append(interval_note(config, result.n_prompts))
    return "\n".join(lines)


def figures(tensors: dict, tables: dict) -> list:
    out = [dla_figure(tables["components"])] if "components" in tables else []
    if "layers" in tables:
        out.append(dla_layer_figure(tables["layers"]))
    if "accumulated" in tables:
        out.append(dla_accumulated_figure(tables["accumulated"]))
    return out


def script(config: DLAConfig) -> ScriptBody:
    """The exported script's library call (`workbench.experiments.exporting`)."""
    imports = ("from workbench.experiments.dla import position", "from workbench.experiments.prompt_sets import bootstrap",
               "from workbench.methods import direct_logit_attribution")
    if config.prompt_set == "induction":
        return ScriptBody(
            heading=f"Direct logit attribution by {config.by} of the correct next token's logit",
            imports=("import dataclasses", *imports),
            code="""ids = torch.tensor(config.token_ids["clean"], device=model.device)
pos = position(config, ids.shape[1])
# Induction: the logit of the token that follows, what an induction head predicts.
result = direct_logit_attribution(model, ids, ids[:, pos + 1], by=config.by, pos=pos)
result = dataclasses.replace(result, direction="logit[correct next token]")
result.bootstrap = bootstrap(config) if config.per_prompt else None  # the intervals' resamples, seed, confidence""",
        )
    return ScriptBody(
        heading=f"Direct logit attribution by {config.by} of logit[answer] - logit[wrong answer]",
        imports=imports,
        code="""ids = {role: torch.tensor(rows, device=model.device) for role, rows in config.token_ids.items()}
# padded prompts (ids["read_pos"]) are each read at their own position
pos = position(config, ids["clean"].shape[1], ids["read_pos"][:, 0] if "read_pos" in ids else None)
direction = (ids["answers"][:, 0], ids["wrong_answers"][:, 0])
result = direct_logit_attribution(model, ids["clean"], direction, by=config.by, pos=pos,
                                  groups=config.prompt_groups or None)
result.bootstrap = bootstrap(config) if config.per_prompt else None  # the intervals' resamples, seed, confidence""",
    )


EXPERIMENT = register(Experiment(
    name="dla",
    config=DLAConfig,
    tokens=tokens,
    run=run,
    description="direct logit attribution of every head, layer, neuron or component to the task's logit "
                "(difference), on the prompts of a task the model can do",
    compute=compute,
    record=record,
    resolve=resolve_prompt_set,
    figures=figures,
    script=script,
))
