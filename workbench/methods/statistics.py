"""Uncertainty of a mean over prompts: the seeded percentile bootstrap.

A sweep over a prompt set gives one value per prompt for every cell ([... prompt]). What is
reported is their mean, and how far it could move with another draw of prompts from the same
distribution: the percentile bootstrap (Efron & Tibshirani 1993, ch. 13). Draw `n_resamples`
sets of n prompts with replacement (the same draws for every cell, so cells stay comparable), take
each set's mean, and report the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of those
means. With one prompt there is nothing to resample: the interval is the value itself.

A ratio of two means over the same prompts (faithfulness: mean(circuit - corrupted) / mean(clean -
corrupted)) is resampled the same way, numerator and denominator from the same draws
(`bootstrap_ratio_ci`), so that the denominator's own uncertainty is in the interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from workbench.errors import InputError

BOOTSTRAP_METHOD = "percentile bootstrap of the mean over prompts"
RATIO_METHOD = "percentile bootstrap of a ratio of means over prompts (paired draws)"
N_RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """The mean over prompts and its bootstrap interval, each with the input's shape minus `axis`;
    `n` prompts; how it was made (`n_resamples`, `seed`, `confidence`, `method`)."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int
    n_resamples: int
    seed: int
    confidence: float
    method: str = BOOTSTRAP_METHOD

    def includes_zero(self) -> np.ndarray:
        """Where the interval holds 0 (the data do not tell the sign of the mean)."""
        return (self.low <= 0) & (self.high >= 0)


def bootstrap_ci(
    values: Tensor | np.ndarray | Sequence[float],
    *,
    axis: int = -1,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Interval:
    """The mean of `values` over `axis` (the prompt axis) with a seeded percentile bootstrap interval.

    `values`: any shape, one entry per prompt along `axis`; NaNs are refused (a cell never run).
    Every other position (a cell of a sweep) is resampled with the same draws of prompts.
    Same seed, same interval."""
    x = _per_prompt_array(values, axis, n_resamples, seed, confidence)
    n = x.shape[-1]
    mean = np.asarray(x.mean(-1))
    if n == 1:
        return Interval(mean, mean.copy(), mean.copy(), 1, n_resamples, seed, confidence)
    tail = (1 - confidence) / 2
    low, high = np.quantile(_resampled_means(x, n_resamples, seed), [tail, 1 - tail], axis=-1)
    return Interval(mean, np.asarray(low), np.asarray(high), n, n_resamples, seed, float(confidence))


def bootstrap_ratio_ci(
    numerator: Tensor | np.ndarray | Sequence[float],
    denominator: Tensor | np.ndarray | Sequence[float],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Interval:
    """mean(numerator) / mean(denominator) over the prompt axis (the last) with a seeded percentile
    bootstrap interval: both means from the same draws of prompts (the same draws as `bootstrap_ci`
    with this seed). `numerator` [... prompt], `denominator` [prompt]; `mean` holds the ratio."""
    x = _per_prompt_array(numerator, -1, n_resamples, seed, confidence)
    d = _per_prompt_array(denominator, -1, n_resamples, seed, confidence)
    if d.shape != x.shape[-1:]:
        raise InputError(f"the denominator must be one value per prompt ({x.shape[-1]}), got shape {d.shape}")
    ratio = np.asarray(x.mean(-1) / d.mean())
    n = x.shape[-1]
    if n == 1:
        return Interval(ratio, ratio.copy(), ratio.copy(), 1, n_resamples, seed, confidence, RATIO_METHOD)
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample whose denominator is 0: +-inf, NaN
        ratios = _resampled_means(x, n_resamples, seed) / _resampled_means(d, n_resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.nanquantile(ratios, [tail, 1 - tail], axis=-1)
    return Interval(ratio, np.asarray(low), np.asarray(high), n, n_resamples, seed, float(confidence), RATIO_METHOD)


def _per_prompt_array(values, axis: int, n_resamples: int, seed: int, confidence: float) -> np.ndarray:
    """`values` as float64 with the prompt axis last, after checking it and the options."""
    x = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, dtype=np.float64)
    if x.ndim == 0:
        raise InputError("bootstrap_ci needs one value per prompt along an axis, got a scalar")
    if not -x.ndim <= axis < x.ndim:
        raise InputError(f"axis {axis} is out of range for values of shape {x.shape}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise InputError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}")
    x = np.moveaxis(x, axis, -1)
    if x.shape[-1] == 0:
        raise InputError("bootstrap_ci needs at least one prompt, got none")
    if np.isnan(x).any():
        raise InputError("the per-prompt values hold NaN (a cell that was not run): nothing to resample")
    return x


def _resampled_means(x: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """[... resample]: the means of `n_resamples` seeded draws of the n prompts (x's last axis) with
    replacement, the same draws for every cell."""
    n = x.shape[-1]
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    # counts[r, i]: how often prompt i is in resample r; resampled means as one matrix product.
    counts = np.zeros((n_resamples, n))
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    return x @ counts.T / n


@dataclass(frozen=True)
class Bootstrap:
    """The bootstrap options a sweep's `to_frame()` uses (recorded with each run)."""

    n_resamples: int = N_RESAMPLES
    seed: int = 0
    confidence: float = CONFIDENCE

    def interval(self, values: Tensor | np.ndarray, *, axis: int = -1) -> Interval:
        return bootstrap_ci(values, axis=axis, n_resamples=self.n_resamples, seed=self.seed,
                            confidence=self.confidence)

    def ratio_interval(self, numerator: Tensor | np.ndarray, denominator: Tensor | np.ndarray) -> Interval:
        return bootstrap_ratio_ci(numerator, denominator, n_resamples=self.n_resamples, seed=self.seed,
                                  confidence=self.confidence)


def interval_columns(per_prompt: Tensor, baseline: Tensor | None, bootstrap: Bootstrap) -> pd.DataFrame:
    """The uncertainty columns of a sweep's frame, one row per cell in row-major order of
    per_prompt's leading axes (the order of `values.flatten()`).

    `per_prompt` [... prompt]; `baseline` [prompt], each prompt's unpatched value: effects are
    paired (value - baseline per prompt, then resampled). Columns: n, ci_low, ci_high (the value's
    interval), effect_ci_low, effect_ci_high."""
    value_ci = bootstrap.interval(per_prompt)
    frame = {"n": value_ci.n, "ci_low": value_ci.low.flatten(), "ci_high": value_ci.high.flatten()}
    if baseline is not None:
        effect_ci = bootstrap.interval(per_prompt - baseline.to(per_prompt.device))
        frame["effect_ci_low"], frame["effect_ci_high"] = effect_ci.low.flatten(), effect_ci.high.flatten()
    return pd.DataFrame(frame)


def prompts_subset(result, keep: Tensor | Sequence[bool], *, how: str):
    """`result` (a dataclass with `values`, `per_prompt` [... prompt], `prompt_clean`,
    `prompt_corrupted` [prompt] and `groups`) on the prompts marked in `keep` alone: values the mean of
    their per-prompt values, the clean and corrupted values their means. `how` says how to get
    per-prompt values, for the error when `result` has none."""
    if result.per_prompt is None:
        raise InputError(f"this result has no per-prompt values: {how}")
    keep = torch.as_tensor(keep, dtype=torch.bool)
    per_prompt = result.per_prompt[..., keep]
    return replace(result, values=per_prompt.mean(-1), per_prompt=per_prompt,
                   clean_value=float(result.prompt_clean[keep].mean()),
                   corrupted_value=float(result.prompt_corrupted[keep].mean()),
                   prompt_clean=result.prompt_clean[keep], prompt_corrupted=result.prompt_corrupted[keep],
                   groups=None if result.groups is None else [g for g, k in zip(result.groups, keep) if k])


def by_group_frame(result) -> pd.DataFrame:
    """A per-prompt result's `to_frame()` for each group label's prompts alone, stacked, with a
    `group` column (labels in order of first appearance); one block labelled "all" without groups."""
    if result.per_prompt is None:
        raise InputError("per-group results need per-prompt values: run the sweep with per_prompt=True")
    groups = result.groups
    if groups is None:
        frame = result.to_frame()
        frame.insert(0, "group", "all")
        return frame
    parts = []
    for label in dict.fromkeys(groups):
        frame = result.for_prompts([g == label for g in groups]).to_frame()
        frame.insert(0, "group", label)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)
