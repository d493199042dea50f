"""Clean/corrupted prompt sets with their metric, as the patching and ablation experiments use them.

A prompt set is chosen in a config by name, one per task:

* "induction": repeated random tokens, clean [BOS] + r + r, corrupted [BOS] + r' + r (seeded);
  metric: mean log-probability of the correct next token on the second copy
  (`methods.prompts.induction_prompts`). Any model with an induction head does it, the bundled
  2-layer model included.
* "ioi": sampled IOI prompts (seeded); metric: logit difference IO - S at the last position.
  GPT-2 does it; a small model trained on Shakespeare does not.
* "greater_than": "The war lasted from the year 17YY to the year 17" (Hanna et al. 2023), corrupted
  with YY = 01 (seeded nouns and years); metric: p(year > YY) - p(year <= YY) over the two-digit
  year tokens. GPT-2 does it.
* "custom": clean prompts, corrupted prompts, answers and wrong answers given in full, one per
  prompt; metric: logit difference answer - wrong at the last position.
* "file": the same fields read from a JSONL, CSV or Parquet file (`--prompts FILE`,
  `methods.datasets`), with optional group labels; metric: logit difference.
* "auto" (the default) picks the task the model can do (`default_prompt_set`): ioi for the GPT-2
  models, induction for any other. The recorded config holds the name it resolved to.

Either way it becomes a `methods.datasets.PromptSet` and then id tensors checked for what the metric
needs: every clean prompt as long as its corrupted prompt, each answer a single token, and all
prompts of one length unless `length_rule` is "pad" (right-padded, each read at its own last token:
the recorded token ids then include `read_pos`). The sweeps keep each prompt's value (`per_prompt`)
and report the mean with a seeded bootstrap interval over prompts (`methods.statistics`), per group
too when the prompts carry group labels (`prompt_groups`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import pandas as pd
import torch
from torch import Tensor

from workbench.errors import InputError
from workbench.methods.datasets import LENGTH_RULES, PromptSet, leading_space_hint
from workbench.methods.metrics import LogitDiff, Metric, NextTokenLogProb
from workbench.methods.prompts import (
    IOI_CORRUPTIONS,
    IOI_ORDERS,
    IOI_TEMPLATES,
    greater_than_metric,
    greater_than_year_ids,
    induction_positions,
    ioi_prompts,
)
from workbench.methods.statistics import CONFIDENCE, N_RESAMPLES, Bootstrap
from workbench.models.config import PRESETS as GPT2_MODELS

__all__ = ["leading_space_hint"]  # re-exported for the dashboard

PromptSetName = Literal["auto", "induction", "ioi", "greater_than", "custom", "file"]
MetricName = Literal["auto", "logit_diff", "next_token_logprob", "prob_diff"]
# What each prompt set stands for, and its metric (for pages, summaries and --help).
PROMPT_SETS = {
    "induction": "induction: repeated random tokens (corrupted: a different first copy)",
    "ioi": "IOI: indirect-object identification prompts (corrupted: three other names)",
    "greater_than": "greater-than: 'The war lasted from the year 17YY to the year 17' (corrupted: YY = 01)",
    "custom": "custom prompt pairs with answer and wrong-answer tokens",
    "file": "prompt pairs from a JSONL, CSV or Parquet file",
}
METRICS = {
    "logit_diff": "logit difference (answer - wrong) at the last position, mean over prompts",
    "next_token_logprob": "log-probability of the correct next token on the second copy, mean over prompts "
                          "and positions (nats)",
    "prob_diff": "p(year > YY) - p(year <= YY) over the two-digit year tokens at the last position, mean over "
                 "prompts (Hanna et al. 2023)",
}
METRIC_FOR = {"induction": "next_token_logprob", "ioi": "logit_diff", "greater_than": "prob_diff",
              "custom": "logit_diff", "file": "logit_diff"}
# The fields of the per-prompt intervals (recorded; the dashboard shows what they were).
INTERVAL_FIELDS = ("n_resamples", "bootstrap_seed", "confidence")


def default_prompt_set(model) -> str:
    """The task `model` can do: "ioi" for the GPT-2 models (by name), "induction" for any other
    (the bundled shakespeare-2l has an induction head and cannot do IOI)."""
    return "ioi" if getattr(model, "name", None) in GPT2_MODELS else "induction"


@dataclass
class PromptSetOptions:
    """The prompt-set fields shared by the patching and ablation configs."""

    # Whether the experiment keeps per-prompt values (its sweep takes per_prompt); the interval
    # options apply only then.
    keeps_per_prompt: ClassVar[bool] = False

    prompt_set: PromptSetName = field(default="auto", metadata={
        "help": "auto: the task the model can do (ioi on GPT-2, induction on any other model), or file when "
                "--prompts is given; induction: repeated random tokens; ioi: sampled IOI prompts; greater_than: "
                "Hanna et al.'s year prompts; custom: the --clean-prompts/--corrupted-prompts/--answers/"
                "--wrong-answers given; file: the --prompts file"})
    metric: MetricName = field(default="auto", metadata={
        "help": "auto: the prompt set's metric; logit_diff: logit[answer] - logit[wrong] at the last position "
                "(ioi, custom, file); next_token_logprob: log p(correct next token) on the second copy (induction); "
                "prob_diff: p(year > YY) - p(year <= YY) (greater_than)"})
    prompts: str | None = field(default=None, metadata={
        "help": "a JSONL, CSV or Parquet file of prompt pairs, one per row: clean (or clean_ids), corrupted (or "
                "corrupted_ids), answer (or answer_id), wrong (or wrong_id), optional group or template "
                "(workbench.methods.datasets)"})
    length_rule: Literal[LENGTH_RULES] = field(default="error", metadata={  # type: ignore[valid-type]
        "help": "prompts of different lengths (custom, file): error, or pad (right-padded, each read at its own "
                "last token); never truncated"})
    n_prompts: int = field(default=8, metadata={"help": "prompts to sample (induction, ioi, greater_than)"})
    seq_len: int = field(default=10, metadata={"help": "induction: tokens in each random copy"})
    ioi_template: int = field(default=0, metadata={
        "help": f"IOI template index (0 to {len(IOI_TEMPLATES) - 1}, workbench.methods.prompts.IOI_TEMPLATES)"})
    ioi_order: Literal[IOI_ORDERS] = field(default="mixed", metadata={  # type: ignore[valid-type]
        "help": "IOI name order: ABBA, BABA or mixed (alternating)"})
    ioi_corruption: Literal[IOI_CORRUPTIONS] = field(default="abc", metadata={  # type: ignore[valid-type]
        "help": "IOI corruption: abc (three other names), swap (IO and S exchanged), s2_io (second S -> IO)"})
    clean_prompts: list[str] = field(default_factory=list, metadata={"help": "custom clean prompts"})
    corrupted_prompts: list[str] = field(default_factory=list, metadata={
        "help": "custom corrupted prompts, one per clean prompt, each the same number of tokens"})
    answers: list[str] = field(default_factory=list, metadata={
        "help": "custom: the correct next token of each clean prompt (one token, e.g. ' Mary')"})
    wrong_answers: list[str] = field(default_factory=list, metadata={
        "help": "custom: the wrong next token of each prompt (e.g. ' John'); the metric is answer - wrong"})
    prepend_bos: bool = field(default=True, metadata={"help": "start each prompt with the BOS token"})
    per_prompt: bool = field(default=True, metadata={
        # records written before this option existed ran without per-prompt values (replay keeps that)
        "before_field": False,
        "help": "keep each prompt's value and report the mean with a bootstrap interval over prompts"})
    n_resamples: int = field(default=N_RESAMPLES, metadata={"help": "bootstrap resamples of the prompts"})
    bootstrap_seed: int = field(default=0, metadata={"help": "seed of the bootstrap's resampling"})
    confidence: float = field(default=CONFIDENCE, metadata={"help": "the bootstrap interval's confidence level"})
    prompt_groups: list[str] = field(default_factory=list, metadata={
        "cli": False, "help": "each prompt's group label (a prompt file's group or template); filled in at run time"})

    def applies(self, name: str) -> bool:
        """The custom prompts only with the custom set, the file only with the file set, the sampling
        options (n_prompts) only with a sampled set, seq_len only with the induction set, the IOI
        options only with the IOI set, the interval options only with per_prompt."""
        if name in ("clean_prompts", "corrupted_prompts", "answers", "wrong_answers"):
            return self.prompt_set == "custom"
        if name == "prompts":
            return self.prompt_set in ("file", "auto")
        if name == "length_rule":
            return self.prompt_set in ("custom", "file", "auto")
        if name == "per_prompt":
            return self.keeps_per_prompt
        if name in INTERVAL_FIELDS:
            return self.keeps_per_prompt and self.per_prompt
        if name == "n_prompts":
            return self.prompt_set not in ("custom", "file")
        if name == "seq_len":
            return self.prompt_set in ("induction", "auto")
        if name.startswith("ioi_"):
            return self.prompt_set == "ioi"
        return super().applies(name)

    def validate_prompt_set(self) -> None:
        """InputError for options that cannot make a prompt set (before any model is loaded)."""
        if self.n_prompts < 1:
            raise InputError(f"n_prompts must be >= 1, got {self.n_prompts}")
        if self.seq_len < 2:
            raise InputError(f"seq_len must be >= 2 (the metric reads seq_len - 1 positions), got {self.seq_len}")
        if self.prompts is not None and self.prompt_set not in ("auto", "file"):
            raise InputError(f"--prompts gives a file of prompts, which goes with prompt_set 'file' (or 'auto'), "
                             f"not {self.prompt_set!r}")
        if self.prompt_set == "file" and not self.prompts:
            raise InputError("prompt_set 'file' needs --prompts FILE (JSONL, CSV or Parquet)")
        if self.prompts is not None and Path(self.prompts).suffix.lower() not in (".jsonl", ".json", ".ndjson",
                                                                                   ".csv", ".parquet", ".pq"):
            raise InputError(f"--prompts {self.prompts}: unknown format; allowed: .jsonl, .csv, .parquet")
        if self.n_resamples < 1:
            raise InputError(f"n_resamples must be >= 1, got {self.n_resamples}")
        if self.bootstrap_seed < 0:
            raise InputError(f"bootstrap_seed must be >= 0, got {self.bootstrap_seed}")
        if not 0 < self.confidence < 1:
            raise InputError(f"confidence must be between 0 and 1 (e.g. 0.95), got {self.confidence}")
        if self.prompt_set == "custom":
            for name in ("clean_prompts", "corrupted_prompts", "answers", "wrong_answers"):
                for i, text in enumerate(getattr(self, name)):
                    if not text.strip():
                        raise InputError(f"{name}[{i}] has no text: give a prompt (or token) that is not empty")
        resolved = METRIC_FOR.get(self.prompt_set)
        if self.metric != "auto" and resolved is not None and self.metric != resolved:
            raise InputError(f"metric {self.metric!r} does not go with prompt_set {self.prompt_set!r}, which is "
                             f"measured by {resolved!r} (or 'auto')")


def resolve_prompt_set(config: PromptSetOptions, model):
    """`config` with "auto" replaced by the prompt set the model can do (file when --prompts is
    given) and that set's metric, and a prompt file's absolute path and its group labels in
    `prompt_groups`."""
    config.validate_prompt_set()
    if config.prompt_set == "auto":
        prompt_set = "file" if config.prompts is not None else default_prompt_set(model)
    else:
        prompt_set = config.prompt_set
    metric = METRIC_FOR[prompt_set]
    if config.metric not in ("auto", metric):
        raise InputError(f"metric {config.metric!r} does not go with prompt_set {prompt_set!r} (what 'auto' chose "
                         f"for model {getattr(model, 'name', '?')!r}), which is measured by {metric!r}")
    config = dataclasses.replace(config, prompt_set=prompt_set, metric=metric)
    if prompt_set == "file" and (Path(config.prompts).is_file() or not config.token_ids):
        groups = PromptSet.read(config.prompts, model, prepend_bos=config.prepend_bos).groups
        # by its absolute path, so that a re-run from elsewhere finds it (replay needs only the ids)
        config = dataclasses.replace(config, prompts=str(Path(config.prompts).resolve()), prompt_groups=groups or [])
    return config


def prompt_set(config: PromptSetOptions, model) -> PromptSet | None:
    """The `PromptSet` a resolved config stands for; None for a file that is gone when the config
    records its token ids (a replay from the record: the recorded ids are the prompts)."""
    if config.prompt_set == "induction":
        return PromptSet.induction(n=config.n_prompts, seq_len=config.seq_len, seed=config.seed,
                                   vocab_size=model.cfg.vocab_size, prepend_bos=config.prepend_bos)
    if config.prompt_set == "greater_than":
        return PromptSet.greater_than(n=config.n_prompts, seed=config.seed, prepend_bos=config.prepend_bos)
    if config.prompt_set == "file":
        if not Path(config.prompts).is_file() and config.token_ids:
            return None
        return PromptSet.read(config.prompts, model, prepend_bos=config.prepend_bos)
    if config.prompt_set == "ioi":
        clean, corrupted, answers, wrong = _ioi(config)
    else:
        clean, corrupted, answers, wrong = (config.clean_prompts, config.corrupted_prompts, config.answers,
                                            config.wrong_answers)
        if not clean:
            raise InputError("prompt_set 'custom' needs clean_prompts (and corrupted_prompts, answers, wrong_answers)")
    counts = {"clean_prompts": len(clean), "corrupted_prompts": len(corrupted), "answers": len(answers),
              "wrong_answers": len(wrong)}
    if len(set(counts.values())) != 1:
        raise InputError("a prompt set needs one corrupted prompt, answer and wrong answer per clean prompt, got "
                         + ", ".join(f"{k}={v}" for k, v in counts.items()))
    clean_ids = [_encode(model, p, config.prepend_bos) for p in clean]
    corrupted_ids = [_encode(model, p, config.prepend_bos) for p in corrupted]
    for i, (a, b) in enumerate(zip(clean_ids, corrupted_ids)):
        if len(a) != len(b):
            raise InputError(
                f"clean and corrupted prompt {i} have different lengths: {clean[i]!r} is {len(a)} tokens, "
                f"{corrupted[i]!r} is {len(b)}. Patching swaps activations position by position, so each pair "
                "must tokenize to the same length"
            )
    return PromptSet(clean_ids, corrupted_ids, "logit_diff", [_single(model, a, "answer") for a in answers],
                     [_single(model, w, "wrong answer") for w in wrong],
                     source="IOI prompts" if config.prompt_set == "ioi" else "custom prompts")


def prompt_set_tokens(config: PromptSetOptions, model) -> dict[str, Tensor]:
    """{"clean", "corrupted": [batch pos]} token ids; for a logit-difference set also
    {"answers", "wrong_answers": [batch 1]}, for greater-than {"year_tokens": [batch 1]} (the YY
    token of each clean prompt), and with prompts padded to one length {"read_pos": [batch 1]}."""
    config.validate_prompt_set()
    if config.prompt_set == "auto":
        config = resolve_prompt_set(config, model)
    prompts = prompt_set(config, model)
    if prompts is None:
        return {k: torch.tensor(v) for k, v in config.token_ids.items()}
    batch = prompts.batch(length_rule=config.length_rule, d_vocab=model.cfg.vocab_size)
    ids = {"clean": batch.clean, "corrupted": batch.corrupted}
    if prompts.task == "logit_diff":
        ids.update(answers=torch.tensor(prompts.answer)[:, None], wrong_answers=torch.tensor(prompts.wrong)[:, None])
    if prompts.task == "prob_diff":
        year_ids = greater_than_year_ids()
        ids["year_tokens"] = torch.tensor([[year_ids[yy]] for yy in prompts.yy])
    if len(set(prompts.lengths())) > 1:
        ids["read_pos"] = batch.read_pos[:, None]
    return ids


def prompt_set_metric(config: PromptSetOptions, ids: dict[str, Tensor], *, d_vocab: int) -> Metric:
    """The metric of a resolved config's prompt set, on its token ids (`config.token_ids` as tensors);
    `d_vocab`: the model's vocabulary size (the greater-than metric's masks span it)."""
    pos = ids["read_pos"][:, 0] if "read_pos" in ids else -1
    if config.metric == "next_token_logprob":
        return NextTokenLogProb(ids["clean"], induction_positions(config.seq_len, prepend_bos=config.prepend_bos))
    if config.metric == "prob_diff":
        year_ids = greater_than_year_ids()
        years = [year_ids.index(int(t)) for t in ids["year_tokens"][:, 0].tolist()]
        return greater_than_metric(years, d_vocab=d_vocab, pos=pos)
    return LogitDiff(ids["answers"][:, 0], ids["wrong_answers"][:, 0], pos=pos)


def sweep_options(config: PromptSetOptions, rows: slice | None = None) -> dict:
    """The per-prompt options a resolved config passes to a sweep (`per_prompt`, `groups`); with
    `rows`, the group labels of those prompts only (a shard)."""
    keep = config.per_prompt and config.keeps_per_prompt
    groups = (config.prompt_groups or None) if keep else None
    return {"per_prompt": keep, "groups": groups if groups is None else groups[rows or slice(None)]}


def bootstrap(config: PromptSetOptions) -> Bootstrap:
    """The interval options a result's `to_frame()` uses."""
    return Bootstrap(n_resamples=config.n_resamples, seed=config.bootstrap_seed, confidence=config.confidence)


def record_per_prompt(result, tensors: dict, tables: dict, *, by_group: str) -> None:
    """A patching-style result's per-prompt values into a run record, when it kept them: tensors
    per_prompt [... prompt] and prompt_clean_corrupted [2 prompt] (the unpatched runs'), and with group
    labels the table `by_group`, its `to_frame(by_group=True)`."""
    if result.per_prompt is None:
        return
    tensors["per_prompt"] = result.per_prompt
    tensors["prompt_clean_corrupted"] = torch.stack([result.prompt_clean, result.prompt_corrupted])
    if result.groups is not None:
        tables[by_group] = result.to_frame(by_group=True)


def interval_note(config: PromptSetOptions, n: int) -> str:
    """What the intervals are, for summaries and pages."""
    return (f"{config.confidence:.0%} intervals: percentile bootstrap of the mean over n = {n} prompts, "
            f"{config.n_resamples} resamples, seed {config.bootstrap_seed}")


def _encode(model, text: str, prepend_bos: bool) -> list[int]:
    return model.to_tokens(text, prepend_bos=prepend_bos)[0].tolist()


def _single(model, text: str, what: str) -> int:
    try:
        return model.to_single_token(text)
    except InputError as e:
        raise InputError(f"{what} {text!r}: {e}{leading_space_hint(model, text)}") from None


def _ioi(config: PromptSetOptions) -> tuple[list[str], list[str], list[str], list[str]]:
    ioi = ioi_prompts(n=config.n_prompts, template=config.ioi_template, order=config.ioi_order,
                      corruption=config.ioi_corruption, seed=config.seed, prepend_bos=config.prepend_bos)
    return ioi.clean_text, ioi.corrupted_text, [" " + io for io, _ in ioi.names], [" " + s for _, s in ioi.names]


def prompts_frame(token_ids: dict[str, list], model, groups: list[str] | None = None) -> pd.DataFrame:
    """One row per prompt pair, decoded from the ids that were run: batch, clean, corrupted (when
    the experiment ran corrupted prompts), for a logit-difference set answer and wrong, for
    greater-than yy, and read_pos / group when given."""
    n = len(token_ids["clean"])
    read = [r[0] for r in token_ids["read_pos"]] if "read_pos" in token_ids else [len(r) - 1 for r in token_ids["clean"]]
    frame = {
        "batch": range(n),
        # a padded prompt up to the token it is read at (the padding is never read)
        "clean": [model.to_string(row[:p + 1]) for row, p in zip(token_ids["clean"], read)],
    }
    if "corrupted" in token_ids:
        frame["corrupted"] = [model.to_string(row[:p + 1]) for row, p in zip(token_ids["corrupted"], read)]
    if "answers" in token_ids:
        frame["answer"] = [model.to_string(row) for row in token_ids["answers"]]
        frame["wrong"] = [model.to_string(row) for row in token_ids["wrong_answers"]]
    if "year_tokens" in token_ids:
        frame["yy"] = [model.to_string(row) for row in token_ids["year_tokens"]]
    if "read_pos" in token_ids:
        frame["read_pos"] = read
    if groups:
        frame["group"] = list(groups)
    return pd.DataFrame(frame)
