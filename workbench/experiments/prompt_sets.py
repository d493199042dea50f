"""Clean/corrupted prompt sets with their metric, as the patching and ablation experiments use them.

A prompt set is chosen in a config by name, one per task:

* "induction": repeated random tokens, clean [BOS] + r + r, corrupted [BOS] + r' + r (seeded);
  metric: mean log-probability of the correct next token on the second copy
  (`methods.prompts.induction_prompts`). Any model with an induction head does it, the bundled
  2-layer model included.
* "ioi": sampled IOI prompts (seeded); metric: logit difference IO - S at the last position.
  GPT-2 does it; a small model trained on Shakespeare does not.
* "custom": clean prompts, corrupted prompts, answers and wrong answers given in full, one per
  prompt; metric: logit difference answer - wrong at the last position.
* "auto" (the default) picks the task the model can do (`default_prompt_set`): ioi for the GPT-2
  models, induction for any other. The recorded config holds the name it resolved to.

Either way it becomes id tensors checked for what the metric needs: every clean prompt as long as
its corrupted prompt, all prompts of one length, each answer a single token."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch
from torch import Tensor

from workbench.errors import InputError
from workbench.methods.metrics import LogitDiff, Metric, NextTokenLogProb
from workbench.methods.prompts import (
    IOI_CORRUPTIONS,
    IOI_ORDERS,
    IOI_TEMPLATES,
    induction_positions,
    induction_prompts,
    ioi_prompts,
)
from workbench.models.config import PRESETS as GPT2_MODELS

PromptSetName = Literal["auto", "induction", "ioi", "custom"]
MetricName = Literal["auto", "logit_diff", "next_token_logprob"]
# What each prompt set stands for, and its metric (for pages, summaries and --help).
PROMPT_SETS = {
    "induction": "induction: repeated random tokens (corrupted: a different first copy)",
    "ioi": "IOI: indirect-object identification prompts (corrupted: three other names)",
    "custom": "custom prompt pairs with answer and wrong-answer tokens",
}
METRICS = {
    "logit_diff": "logit difference (answer - wrong) at the last position, mean over prompts",
    "next_token_logprob": "log-probability of the correct next token on the second copy, mean over prompts "
                          "and positions (nats)",
}
METRIC_FOR = {"induction": "next_token_logprob", "ioi": "logit_diff", "custom": "logit_diff"}


def default_prompt_set(model) -> str:
    """The task `model` can do: "ioi" for the GPT-2 models (by name), "induction" for any other
    (the bundled shakespeare-2l has an induction head and cannot do IOI)."""
    return "ioi" if getattr(model, "name", None) in GPT2_MODELS else "induction"


@dataclass
class PromptSetOptions:
    """The prompt-set fields shared by the patching and ablation configs."""

    prompt_set: PromptSetName = field(default="auto", metadata={
        "help": "auto: the task the model can do (ioi on GPT-2, induction on any other model); induction: "
                "repeated random tokens; ioi: sampled IOI prompts; custom: the --clean-prompts/--corrupted-prompts/"
                "--answers/--wrong-answers given"})
    metric: MetricName = field(default="auto", metadata={
        "help": "auto: the prompt set's metric; logit_diff: logit[answer] - logit[wrong] at the last position "
                "(ioi, custom); next_token_logprob: log p(correct next token) on the second copy (induction)"})
    n_prompts: int = field(default=8, metadata={"help": "prompts to sample (induction, ioi)"})
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

    def applies(self, name: str) -> bool:
        """The custom prompts only with the custom set, the sampling options (n_prompts) only
        without it, seq_len only with the induction set, the IOI options only with the IOI set."""
        if name in ("clean_prompts", "corrupted_prompts", "answers", "wrong_answers"):
            return self.prompt_set == "custom"
        if name == "n_prompts":
            return self.prompt_set != "custom"
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
    """`config` with "auto" replaced by the prompt set the model can do and that set's metric."""
    config.validate_prompt_set()
    prompt_set = default_prompt_set(model) if config.prompt_set == "auto" else config.prompt_set
    metric = METRIC_FOR[prompt_set]
    if config.metric not in ("auto", metric):
        raise InputError(f"metric {config.metric!r} does not go with prompt_set {prompt_set!r} (what 'auto' chose "
                         f"for model {getattr(model, 'name', '?')!r}), which is measured by {metric!r}")
    return dataclasses.replace(config, prompt_set=prompt_set, metric=metric)


def prompt_set_tokens(config: PromptSetOptions, model) -> dict[str, Tensor]:
    """{"clean", "corrupted": [batch pos]} token ids, and for a logit-difference set
    {"answers", "wrong_answers": [batch 1]}."""
    config.validate_prompt_set()
    if config.prompt_set == "auto":
        config = resolve_prompt_set(config, model)
    if config.prompt_set == "induction":
        pairs = induction_prompts(n=config.n_prompts, seq_len=config.seq_len, seed=config.seed,
                                  vocab_size=model.cfg.vocab_size, prepend_bos=config.prepend_bos)
        return {"clean": pairs.clean_tokens, "corrupted": pairs.corrupted_tokens}
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
    lengths = sorted({len(a) for a in clean_ids})
    if len(lengths) > 1:
        raise InputError(f"all prompts must have the same number of tokens (the metric reads the last position), "
                         f"got lengths {lengths}")
    return {
        "clean": torch.tensor(clean_ids),
        "corrupted": torch.tensor(corrupted_ids),
        "answers": torch.tensor([[_single(model, a, "answer")] for a in answers]),
        "wrong_answers": torch.tensor([[_single(model, w, "wrong answer")] for w in wrong]),
    }


def prompt_set_metric(config: PromptSetOptions, ids: dict[str, Tensor]) -> Metric:
    """The metric of a resolved config's prompt set, on its token ids (`config.token_ids` as tensors)."""
    if config.metric == "next_token_logprob":
        return NextTokenLogProb(ids["clean"], induction_positions(config.seq_len, prepend_bos=config.prepend_bos))
    return LogitDiff(ids["answers"][:, 0], ids["wrong_answers"][:, 0], pos=-1)


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


def prompts_frame(token_ids: dict[str, list], model) -> pd.DataFrame:
    """One row per prompt pair, decoded from the ids that were run: batch, clean, corrupted, and for
    a logit-difference set answer and wrong."""
    frame = {
        "batch": range(len(token_ids["clean"])),
        "clean": [model.to_string(row) for row in token_ids["clean"]],
        "corrupted": [model.to_string(row) for row in token_ids["corrupted"]],
    }
    if "answers" in token_ids:
        frame["answer"] = [model.to_string(row) for row in token_ids["answers"]]
        frame["wrong"] = [model.to_string(row) for row in token_ids["wrong_answers"]]
    return pd.DataFrame(frame)
