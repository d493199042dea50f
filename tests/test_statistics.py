"""Per-prompt values and their uncertainty: the bootstrap interval (`methods.statistics`) is seeded,
covers the mean, shrinks like 1/sqrt(n), and matches a hand-written numpy bootstrap; the per-prompt
values of patching, ablation and attribution sweeps equal each prompt run alone (a hand loop)."""

import numpy as np
import pytest
import torch

from workbench.errors import InputError
from workbench.methods import LogitDiff, ablation_sweep, activation_patching, attribution_patching
from workbench.methods.metrics import CustomMetric
from workbench.methods.statistics import bootstrap_ci


def synthetic(n, *, sigma=1.0, mean=0.3, seed=0):
    return np.random.default_rng(seed).normal(mean, sigma, size=n)


def test_same_seed_same_interval_and_other_seeds_differ():
    x = synthetic(40)
    a, b = bootstrap_ci(x, seed=7), bootstrap_ci(x, seed=7)
    assert (a.low, a.high) == (b.low, b.high)
    c = bootstrap_ci(x, seed=8)
    assert (a.low, a.high) != (c.low, c.high)
    assert a.n == 40 and a.n_resamples == 1000 and a.seed == 7 and a.confidence == 0.95


def test_interval_covers_the_mean_and_shrinks_with_n():
    widths = {}
    for n in (25, 100, 400):
        ci = bootstrap_ci(synthetic(n, seed=n), seed=0)
        assert ci.low < ci.mean < ci.high
        widths[n] = float(ci.high - ci.low)
        # the normal-theory width of a mean of n values with sigma 1: 2 * 1.96 / sqrt(n)
        assert widths[n] == pytest.approx(2 * 1.96 / np.sqrt(n), rel=0.25)
    assert widths[25] > widths[100] > widths[400]


def test_coverage_of_the_true_mean():
    """Over many synthetic prompt sets with a known mean, the 95 % interval holds it about 95 % of the time."""
    hits = []
    for s in range(200):
        ci = bootstrap_ci(synthetic(40, mean=0.3, seed=s), seed=s, n_resamples=500)
        hits.append(ci.low <= 0.3 <= ci.high)
    assert 0.88 <= np.mean(hits) <= 0.99


def test_matches_a_hand_written_numpy_bootstrap():
    x = synthetic(30, sigma=2.0)
    ci = bootstrap_ci(x, seed=5, n_resamples=2000, confidence=0.9)
    # the same draws, by hand: resample with replacement, mean, percentiles
    draws = np.random.default_rng(5).integers(0, 30, size=(2000, 30))
    means = x[draws].mean(1)
    assert ci.low == pytest.approx(np.quantile(means, 0.05), abs=1e-12)
    assert ci.high == pytest.approx(np.quantile(means, 0.95), abs=1e-12)
    # other, independent draws agree to Monte-Carlo precision
    other = np.random.default_rng(99).choice(x, size=(20000, 30), replace=True).mean(1)
    assert ci.low == pytest.approx(np.quantile(other, 0.05), abs=0.08)
    assert ci.high == pytest.approx(np.quantile(other, 0.95), abs=0.08)


def test_cells_share_the_draws():
    """A grid [cell prompt] is resampled with the same prompts for every cell: each cell's interval
    equals that cell's own bootstrap with the same seed."""
    grid = np.stack([synthetic(20, seed=s) for s in range(3)])
    ci = bootstrap_ci(torch.tensor(grid), axis=-1, seed=2)
    for i in range(3):
        one = bootstrap_ci(grid[i], seed=2)
        assert (ci.low[i], ci.high[i]) == pytest.approx((float(one.low), float(one.high)))
    assert ci.low.shape == (3,)


def test_bad_input():
    with pytest.raises(InputError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(InputError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=95.0)
    one = bootstrap_ci([1.5])
    assert one.low == one.high == 1.5


# ---------------------------------------------------------------------- per-prompt values = each prompt alone


@pytest.fixture
def pairs():
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 50000, (3, 7), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(0, 50000, (3,), generator=g)
    answer, wrong = torch.tensor([11, 22, 33]), torch.tensor([44, 55, 66])
    return clean, corrupted, answer, wrong


@pytest.mark.parametrize("target", ["resid_pre", "head_out", "head_v_by_pos"])
def test_patching_per_prompt_equals_each_prompt_alone(model, pairs, target):
    clean, corrupted, answer, wrong = pairs
    result = activation_patching(model, clean, corrupted, LogitDiff(answer, wrong), target=target, per_prompt=True,
                                 progress=False)
    assert result.per_prompt.shape == (*result.values.shape, 3)
    for b in range(3):
        alone = activation_patching(model, clean[b:b + 1], corrupted[b:b + 1], LogitDiff(int(answer[b]), int(wrong[b])),
                                    target=target, progress=False)
        torch.testing.assert_close(result.per_prompt[..., b], alone.values, atol=1e-4, rtol=1e-4)
        assert float(result.prompt_clean[b]) == pytest.approx(alone.clean_value, abs=1e-4)
    torch.testing.assert_close(result.values, result.per_prompt.mean(-1))


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_ablation_per_prompt_equals_each_prompt_alone(model, pairs, method):
    clean, _, answer, wrong = pairs
    result = ablation_sweep(model, clean, LogitDiff(answer, wrong), method=method, per_prompt=True, progress=False)
    for b in range(3):
        # mean ablation averages over the whole batch: the reference stays the batch
        alone = ablation_sweep(model, clean[b:b + 1], LogitDiff(int(answer[b]), int(wrong[b])), method=method,
                               reference=clean if method == "mean" else None, progress=False)
        torch.testing.assert_close(result.per_prompt[..., b], alone.values, atol=1e-4, rtol=1e-4)
        assert float(result.prompt_baseline[b]) == pytest.approx(alone.baseline, abs=1e-4)
    frame = result.to_frame()
    assert {"n", "ci_low", "ci_high", "effect_ci_low", "effect_ci_high"} <= set(frame.columns)
    assert ((frame["ci_low"] <= frame["value"] + 1e-6) & (frame["value"] <= frame["ci_high"] + 1e-6)).all()


def test_attribution_per_prompt_equals_each_prompt_alone(model, pairs):
    clean, corrupted, answer, wrong = pairs
    result = attribution_patching(model, clean, corrupted, LogitDiff(answer, wrong), target="head_out", per_prompt=True)
    plain = attribution_patching(model, clean, corrupted, LogitDiff(answer, wrong), target="head_out")
    torch.testing.assert_close(result.values, plain.values, atol=1e-5, rtol=1e-5)
    for b in range(3):
        alone = attribution_patching(model, clean[b:b + 1], corrupted[b:b + 1], LogitDiff(int(answer[b]), int(wrong[b])),
                                     target="head_out")
        torch.testing.assert_close(result.per_prompt[..., b], alone.values, atol=1e-4, rtol=1e-4)


def test_groups_and_plain_callables(model, pairs):
    clean, corrupted, answer, wrong = pairs
    result = activation_patching(model, clean, corrupted, LogitDiff(answer, wrong), target="head_out", per_prompt=True,
                                 groups=["a", "b", "a"], progress=False)
    by_group = result.to_frame(by_group=True)
    a = by_group[by_group["group"] == "a"]
    torch.testing.assert_close(torch.tensor(a["value"].to_numpy(), dtype=torch.float32),
                               result.per_prompt[..., [0, 2]].mean(-1).flatten())
    assert (a["n"] == 2).all() and (by_group.loc[by_group["group"] == "b", "n"] == 1).all()
    with pytest.raises(InputError, match="one value for the whole batch"):
        activation_patching(model, clean, corrupted, CustomMetric(lambda logits: logits[:, -1, 0].mean()),
                            per_prompt=True, progress=False)
    with pytest.raises(InputError, match="one label per prompt"):
        activation_patching(model, clean, corrupted, LogitDiff(answer, wrong), per_prompt=True, groups=["a"],
                            progress=False)


def test_figures_show_intervals_and_grey_out_uncertain_cells(model, pairs):
    from workbench.experiments.figures import ablation_figure, patching_figure

    clean, corrupted, answer, wrong = pairs
    result = activation_patching(model, clean, corrupted, LogitDiff(answer, wrong), target="head_out", per_prompt=True,
                                 progress=False)
    frame = result.to_frame()
    fig = patching_figure(frame, show="effect", grey=True)
    heat, grey = fig.data
    cell = frame[(frame["layer"] == 0) & (frame["head"] == 1)].iloc[0]
    assert f"interval [{cell['effect_ci_low']:.4g}, {cell['effect_ci_high']:.4g}] over 3 prompts" in heat.customdata[0][1]
    uncertain = [[lo <= 0 <= hi for lo, hi in zip(*(frame.pivot(index="layer", columns="head", values=c).to_numpy()[r]
                                                      for c in ("effect_ci_low", "effect_ci_high")))]
                 for r in range(model.cfg.n_layer)]
    assert [[z is not None for z in row] for row in grey.z] == uncertain
    assert len(patching_figure(frame, show="effect").data) == 1  # the toggle off: no grey layer
    ablated = ablation_sweep(model, clean, LogitDiff(answer, wrong), per_prompt=True, progress=False)
    assert len(ablation_figure(ablated.to_frame(), grey=True).data) == 2


def test_ratio_of_means_resamples_numerator_and_denominator_together():
    """bootstrap_ratio_ci: mean(num) / mean(den) with each resample's ratio from the same draws of prompts
    (a hand numpy loop); the draws are bootstrap_ci's for the same seed; one prompt gives the value."""
    from workbench.methods.statistics import bootstrap_ratio_ci

    den = synthetic(25, mean=2.0, sigma=0.5, seed=1)
    num = np.stack([den * 0.7 + synthetic(25, sigma=0.1, mean=0.0, seed=2), synthetic(25, seed=3)])
    ci = bootstrap_ratio_ci(num, den, seed=11, n_resamples=800)
    draws = np.random.default_rng(11).integers(0, 25, size=(800, 25))
    for i in range(2):
        ratios = num[i][draws].mean(1) / den[draws].mean(1)
        assert ci.mean[i] == pytest.approx(num[i].mean() / den.mean())
        assert (ci.low[i], ci.high[i]) == pytest.approx((np.quantile(ratios, 0.025), np.quantile(ratios, 0.975)),
                                                        abs=1e-12)
    assert ci.low[0] < ci.mean[0] < ci.high[0] and ci.n == 25 and "ratio" in ci.method
    # paired: a numerator that moves with the denominator gives a narrower interval than independent noise
    assert ci.high[0] - ci.low[0] < 0.1
    one = bootstrap_ratio_ci([3.0], [2.0])
    assert one.low == one.high == 1.5
    with pytest.raises(InputError, match="one value per prompt"):
        bootstrap_ratio_ci(num, den[:3])
