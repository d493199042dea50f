"""Clean/corrupted prompt sets with answer tokens, as the patching and ablation experiments use them.

A prompt set is chosen in a config either by name ("ioi": sampled from the IOI prompt set,
seeded) or given in full ("custom": clean prompts, corrupted prompts, answers and wrong answers,
one per prompt). Either way it becomes four id tensors, checked for what the metric needs:
every clean prompt as long as its corrupted prompt, all prompts of one length (the metric reads
the last position), and each answer a single token."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch
from torch import Tensor

from workbench.errors import InputError
from workbench.methods.prompts import IOI_CORRUPTIONS, IOI_ORDERS, IOI_TEMPLATES, ioi_prompts

PromptSetName = Literal["ioi", "custom"]


@dataclass
class PromptSetOptions:
    """The prompt-set fields shared by the patching and ablation configs."""

    prompt_set: PromptSetName = field(default="ioi", metadata={
        "help": "ioi: sample IOI prompts (seeded); custom: the --clean-prompts/--corrupted-prompts/--answers given"})
    n_prompts: int = field(default=8, metadata={"help": "IOI prompts to sample"})
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
        without it, the IOI options only with the IOI set."""
        if name in ("clean_prompts", "corrupted_prompts", "answers", "wrong_answers"):
            return self.prompt_set == "custom"
        if name == "n_prompts":
            return self.prompt_set != "custom"
        if name.startswith("ioi_"):
            return self.prompt_set == "ioi"
        return super().applies(name)


def prompt_set_tokens(config: PromptSetOptions, model) -> dict[str, Tensor]:
    """{"clean", "corrupted": [batch pos], "answers", "wrong_answers": [batch 1]} token ids."""
    if config.prompt_set == "ioi":
        clean, corrupted, answers, wrong = _ioi(config, model)
    else:
        clean, corrupted, answers, wrong = (config.clean_prompts, config.corrupted_prompts, config.answers,
                                            config.wrong_answers)
        if not clean:
            raise InputError("prompt_set 'custom' needs clean_prompts (and corrupted_prompts, answers, wrong_answers)")
    counts = {"clean_prompts": len(clean), "corrupted_prompts": len(corrupted), "answers": len(answers),
              "wrong_answers": len(wrong)}
    if len(set(counts.values())) != 1:
        raise InputError(f"a prompt set needs one corrupted prompt, answer and wrong answer per clean prompt, got "
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


def _encode(model, text: str, prepend_bos: bool) -> list[int]:
    return model.to_tokens(text, prepend_bos=prepend_bos)[0].tolist()


def _single(model, text: str, what: str) -> int:
    try:
        return model.to_single_token(text)
    except InputError as e:
        raise InputError(f"{what} {text!r}: {e}") from None


def _ioi(config: PromptSetOptions, model) -> tuple[list[str], list[str], list[str], list[str]]:
    ioi = ioi_prompts(n=config.n_prompts, template=config.ioi_template, order=config.ioi_order,
                      corruption=config.ioi_corruption, seed=config.seed, prepend_bos=config.prepend_bos)
    return ioi.clean_text, ioi.corrupted_text, [" " + io for io, _ in ioi.names], [" " + s for _, s in ioi.names]


def prompts_frame(token_ids: dict[str, list], model) -> pd.DataFrame:
    """One row per prompt pair, decoded from the ids that were run: batch, clean, corrupted, answer, wrong."""
    return pd.DataFrame({
        "batch": range(len(token_ids["clean"])),
        "clean": [model.to_string(row) for row in token_ids["clean"]],
        "corrupted": [model.to_string(row) for row in token_ids["corrupted"]],
        "answer": [model.to_string(row) for row in token_ids["answers"]],
        "wrong": [model.to_string(row) for row in token_ids["wrong_answers"]],
    })
