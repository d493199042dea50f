"""Path patching equals a hand-written two-pass loop with hooks (one sender at a time, every other
head frozen by hook_z hooks), finds the path a hand-built model uses, and refuses bad input."""

import pytest
import torch
from conftest import random_hf_model

import workbench
from workbench import act_name
from workbench.errors import InputError, WorkbenchError
from workbench.methods import LogitDiff, TokenLogProb
from workbench.methods.path_patching import path_patching
from workbench.models import GPT, GPTConfig

TOL = 1e-4


@pytest.fixture(scope="module")
def strong(tmp_path_factory):
    """A 3-layer model with large random weights (so paths move the metric by O(1)) and a prompt pair."""
    hf = random_hf_model(seed=3, n_layer=3, n_head=3, n_embd=48, initializer_range=0.15)
    path = tmp_path_factory.mktemp("strong_path")
    hf.save_pretrained(path)
    model = workbench.load_model(path, device="cpu")
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50000, (2, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.tensor([11, 12])  # first difference at position 1
    corrupted[0, 4] = 13
    metric = LogitDiff(torch.tensor([5, 6]), torch.tensor([7, 8]))
    return model, clean, corrupted, metric


@torch.no_grad()
def reference(model, clean, corrupted, metric, *, receivers, senders, direction):
    """ARENA's two passes, one sender at a time, with hooks on the full model."""
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    _, base_cache = model.run_with_cache(base)
    _, source_cache = model.run_with_cache(source)
    out = []
    for layer_s, head_s in senders:
        hooks = []
        for layer in range(model.cfg.n_layer):
            def freeze(z, hook, layer=layer):
                z = base_cache["z", layer].clone()  # every head frozen to the base run ...
                if head_s != "mlp" and layer == layer_s:  # ... but the sender, from the source run
                    z[:, :, head_s] = source_cache["z", layer][:, :, head_s]
                return z
            hooks.append((act_name("z", layer), freeze))
        if head_s == "mlp":
            hooks.append((act_name("mlp_out", layer_s), lambda x, hook: source_cache["mlp_out", layer_s].clone()))
        if receivers == "logits":
            out.append(float(metric(model.run_with_hooks(base, fwd_hooks=hooks))))
            continue
        saved = {}
        for r in receivers:
            def save(x, hook, r=r):
                saved[r] = x[:, :, r[1]].clone()
            hooks.append((act_name(r[2], r[0]), save))
        model.run_with_hooks(base, fwd_hooks=hooks)
        second = []
        for r in receivers:
            def put(x, hook, r=r):
                x = x.clone()
                x[:, :, r[1]] = saved[r]
                return x
            second.append((act_name(r[2], r[0]), put))
        out.append(float(metric(model.run_with_hooks(base, fwd_hooks=second))))
    return torch.tensor(out)


def every_head(model, below):
    return [(l, h) for l in range(below) for h in range(model.cfg.n_head)]


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("receivers", [
    "logits",
    [(2, 1, "q")],
    [(2, 0, "k")],
    [(1, 2, "v")],
    [(1, 0, "v"), (2, 2, "k"), (2, 1, "q")],  # receivers in two layers: a layer-1 sender reaches layer 2
])
def test_heads_equal_two_pass_hook_loop(strong, receivers, direction):
    model, clean, corrupted, metric = strong
    result = path_patching(model, clean, corrupted, metric, receivers=receivers, direction=direction, progress=False)
    reach = 3 if receivers == "logits" else max(r[0] for r in receivers)
    expected = reference(model, clean, corrupted, metric, receivers=receivers, senders=every_head(model, reach),
                         direction=direction)
    assert result.dims == ("layer", "head")
    assert torch.allclose(result.values[:reach].flatten(), expected, atol=TOL), (result.values, expected)
    assert result.computed[:reach].all() and not result.computed[reach:].any()
    assert result.values[reach:].isnan().all()
    assert (expected - result.baseline).abs().max() > 0.01  # the paths do move the metric


@pytest.mark.parametrize("receivers", ["logits", [(2, 1, "v"), (2, 0, "q")]])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_mlp_and_listed_senders_equal_loop(strong, receivers, direction):
    model, clean, corrupted, metric = strong
    senders = [(1, "mlp"), (0, 2), (0, "mlp"), (1, 1)]
    result = path_patching(model, clean, corrupted, metric, receivers=receivers, senders=senders,
                           direction=direction, progress=False)
    expected = reference(model, clean, corrupted, metric, receivers=receivers, senders=senders, direction=direction)
    assert result.dims == ("component",)
    assert [s.label for s in result.senders] == ["1_mlp_out", "L0H2", "0_mlp_out", "L1H1"]
    assert torch.allclose(result.values, expected, atol=TOL)
    frame = result.to_frame()
    assert list(frame["component"]) == ["1_mlp_out", "L0H2", "0_mlp_out", "L1H1"]
    assert frame["head"].isna().tolist() == [True, False, True, False]

    mlps = path_patching(model, clean, corrupted, metric, receivers=receivers, senders="mlps",
                         direction=direction, progress=False)
    reach = 3 if receivers == "logits" else 2
    assert mlps.dims == ("layer",)
    expected = reference(model, clean, corrupted, metric, receivers=receivers,
                         senders=[(l, "mlp") for l in range(reach)], direction=direction)
    assert torch.allclose(mlps.values[:reach], expected, atol=TOL)


def test_plain_callable_metric_and_small_batches(strong):
    """A plain callable (TransformerLens style) and max_batch=1 give the same numbers."""
    model, clean, corrupted, metric = strong
    senders = every_head(model, 2)

    def fn(logits):
        return (logits[:, -1, 5] - logits[:, -1, 7]).mean()

    for receivers in ("logits", [(2, 1, "k")]):
        expected = reference(model, clean, corrupted, fn, receivers=receivers, senders=senders, direction="denoise")
        got = path_patching(model, clean, corrupted, fn, receivers=receivers, senders=senders, max_batch=2,
                            progress=False)
        assert torch.allclose(got.values, expected, atol=TOL)
    metric = TokenLogProb(torch.tensor([5, 6]))
    expected = reference(model, clean, corrupted, metric, receivers=[(1, 1, "q")], senders=every_head(model, 1),
                         direction="noise")
    got = path_patching(model, clean, corrupted, metric, receivers=[(1, 1, "q")], direction="noise", progress=False)
    assert torch.allclose(got.values[0], expected, atol=TOL)


def test_hooks_removed_and_progress_callback(strong):
    model, clean, corrupted, metric = strong
    calls = []
    path_patching(model, clean, corrupted, metric, receivers=[(2, 0, "v")], progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 6) and calls[-1] == (6, 6)
    assert not any(point.has_hooks for point in model.hook_dict.values())


def hand_built_model():
    """Head A (L0H0) copies the token direction e1 into e2; head C (L0H1) copies e1 into e3, twice as
    strongly; head B (L1H0) reads e2 into its value and writes e4, the only direction the answer
    tokens' unembeddings read. Attention patterns are uniform (zero queries and keys), MLPs are zero."""
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=64, block_size=16)
    model = GPT(cfg).eval()
    d, d_head = 16, 8
    e = torch.eye(d)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for ln in [model.ln_final] + [m for b in model.blocks for m in (b.ln1, b.ln2)]:
            ln.w.fill_(1.0)
        model.embed.W_E[:] = e[5] - e[6]  # fillers
        model.embed.W_E[1] = e[1] - e[7] + e[5] - e[6]  # the clean token at position 1
        model.embed.W_E[2] = -e[1] + e[7] + e[5] - e[6]  # the corrupted one
        model.embed.W_E[10] = e[4] - e[8]  # answer
        model.embed.W_E[11] = e[8] - e[4]  # wrong answer
        attn0, attn1 = model.blocks[0].attn, model.blocks[1].attn
        v_rows = slice(2 * d, 3 * d)
        attn0.c_attn.weight[v_rows][0 * d_head, 1] = 1.0  # A: v reads e1
        attn0.c_proj.weight[2, 0 * d_head] = 4.0  # ... writes e2
        attn0.c_attn.weight[v_rows][1 * d_head, 1] = 1.0  # C: v reads e1
        attn0.c_proj.weight[3, 1 * d_head] = 8.0  # ... writes e3
        attn1.c_attn.weight[v_rows][0 * d_head, 2] = 1.0  # B: v reads e2
        attn1.c_proj.weight[4, 0 * d_head] = 8.0  # ... writes e4
    return model


def test_hand_built_model_ranks_the_value_path_first():
    model = hand_built_model()
    clean = torch.tensor([[3, 1, 3, 3, 3]])
    corrupted = torch.tensor([[3, 2, 3, 3, 3]])
    metric = LogitDiff(10, 11)
    result = path_patching(model, clean, corrupted, metric, receivers=[(1, 0, "v")], progress=False)
    assert result.clean_beats_corrupted
    effects = result.effect[0]
    assert int(effects.abs().argmax()) == 0  # A
    assert effects[0] > 0.5 and effects[0] > 10 * effects[1].abs()
    # Through B's query or key (uniform patterns): nothing; straight to the logits: A only through B.
    for kind in ("q", "k"):
        other = path_patching(model, clean, corrupted, metric, receivers=[(1, 0, kind)], progress=False)
        assert other.effect[0].abs().max() < 1e-4


@pytest.mark.parametrize("receivers, senders, message", [
    ([(1, 0, "k")], [(1, 2), (2, 0)], "no sender can reach"),
    ([(0, 0, "k")], "heads", "block 0"),
    ([(1, 0, "z")], "heads", "one of q, k, v"),
    ([(1, 0, "pattern")], "heads", "one of q, k, v"),
    ([(3, 0, "k")], "heads", "layer 3 is out of range"),
    ([(1, 3, "k")], "heads", "head 3 is out of range"),
    ([(2, 0, "k")], [(0, 5)], "head 5 is out of range"),
    ([(2, 0, "k")], [(-1, 0)], "layer -1 is out of range"),
    ([(2, 0, "k")], [(0, "attn")], "a sender's head"),
    ([(2, 0, "k")], "attn", "senders must be"),
    ([(2, 0, "k")], [], "senders must be"),
    ("resid_mid", "heads", "receivers must be"),
    ([], "heads", "receivers must be"),
    ([(1, 0)], "heads", "each receiver"),
])
def test_bad_input(strong, receivers, senders, message):
    model, clean, corrupted, metric = strong
    with pytest.raises(InputError, match=message) as error:
        path_patching(model, clean, corrupted, metric, receivers=receivers, senders=senders, progress=False)
    assert isinstance(error.value, WorkbenchError)
    with pytest.raises(InputError, match="direction"):
        path_patching(model, clean, corrupted, metric, receivers="logits", direction="sideways")


# ---------------------------------------------------------------------- per-prompt values and intervals


@pytest.mark.parametrize("receivers", ["logits", [(1, 0, "k"), (2, 1, "q")]])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_per_prompt_values_equal_each_prompt_alone(strong, receivers, direction):
    """per_prompt[..., b] is path patching of prompt b alone; their mean is the batched value (1e-5);
    the unpatched runs' per-prompt values are each prompt's metric."""
    model, clean, corrupted, metric = strong
    answer, wrong = metric.answer, metric.wrong
    result = path_patching(model, clean, corrupted, metric, receivers=receivers, direction=direction,
                           per_prompt=True, progress=False)
    batched = path_patching(model, clean, corrupted, metric, receivers=receivers, direction=direction, progress=False)
    assert result.per_prompt.shape == (*batched.values.shape, 2)
    torch.testing.assert_close(result.per_prompt.mean(-1), batched.values, atol=1e-5, rtol=0, equal_nan=True)
    torch.testing.assert_close(result.values, batched.values, atol=1e-5, rtol=0, equal_nan=True)
    for b in range(2):
        alone = path_patching(model, clean[b:b + 1], corrupted[b:b + 1], LogitDiff(int(answer[b]), int(wrong[b])),
                              receivers=receivers, direction=direction, progress=False)
        torch.testing.assert_close(result.per_prompt[..., b], alone.values, atol=TOL, rtol=TOL, equal_nan=True)
        assert float(result.prompt_clean[b]) == pytest.approx(alone.clean_value, abs=TOL)
        assert float(result.prompt_corrupted[b]) == pytest.approx(alone.corrupted_value, abs=TOL)


def test_intervals_and_groups(strong):
    """to_frame: the interval columns of patching (n, ci_low, ci_high, effect_ci_low, effect_ci_high,
    normalized_ci_*), seeded, covering the mean, equal to a hand bootstrap of the per-prompt values
    (paired with the unpatched run for the effect), missing where the sender reaches no receiver;
    per-group frames from each group's prompts alone."""
    import numpy as np

    from workbench.methods.statistics import Bootstrap

    model, _, _, _ = strong
    g = torch.Generator().manual_seed(8)
    clean = torch.randint(0, 50000, (6, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(0, 50000, (6,), generator=g)
    metric = LogitDiff(torch.randint(0, 50000, (6,), generator=g), torch.randint(0, 50000, (6,), generator=g))
    groups = ["x", "y", "x", "x", "y", "y"]
    result = path_patching(model, clean, corrupted, metric, receivers=[(2, 0, "v")], per_prompt=True, groups=groups,
                           progress=False)
    result.bootstrap = Bootstrap(n_resamples=400, seed=2)
    frame = result.to_frame()
    assert {"n", "ci_low", "ci_high", "effect_ci_low", "effect_ci_high", "normalized_ci_low",
            "normalized_ci_high"} <= set(frame.columns)
    done, blank = frame[frame["computed"]], frame[~frame["computed"]]
    assert len(blank) and blank[["ci_low", "effect_ci_high"]].isna().all().all() and blank["n"].isna().all()
    assert (done["n"] == 6).all()
    assert ((done["ci_low"] <= done["value"] + 1e-9) & (done["value"] <= done["ci_high"] + 1e-9)).all()
    assert ((done["effect_ci_low"] <= done["effect"] + 1e-9) & (done["effect"] <= done["effect_ci_high"] + 1e-9)).all()
    layer, head = 1, 2
    row = frame[frame["component"] == f"L{layer}H{head}"].iloc[0]
    x = result.per_prompt[layer, head].double().numpy()
    effect = x - result.prompt_corrupted.double().numpy()  # denoise: the corrupted run is the base
    draws = np.random.default_rng(2).integers(0, 6, size=(400, 6))
    for values, low, high in ((x, "ci_low", "ci_high"), (effect, "effect_ci_low", "effect_ci_high")):
        means = values[draws].mean(1)
        assert (row[low], row[high]) == pytest.approx((np.quantile(means, 0.025), np.quantile(means, 0.975)), abs=1e-6)
    assert result.to_frame()["ci_low"].equals(frame["ci_low"])  # seeded
    by_group = result.to_frame(by_group=True)
    y = by_group[(by_group["group"] == "y") & (by_group["component"] == f"L{layer}H{head}")].iloc[0]
    assert y["value"] == pytest.approx(float(result.per_prompt[layer, head, [1, 4, 5]].mean()), abs=1e-6)
    assert y["n"] == 3
    with pytest.raises(InputError, match="one value for the whole batch"):
        path_patching(model, clean, corrupted, lambda logits: logits[:, -1, 0].mean(), receivers="logits",
                      per_prompt=True, progress=False)
    with pytest.raises(InputError, match="pass per_prompt=True"):
        path_patching(model, clean, corrupted, metric, receivers="logits", groups=groups, progress=False)


def test_the_experiment_records_per_prompt_values_and_intervals(model, tmp_path):
    from workbench.experiments import replay, run_experiment
    from workbench.experiments.path_patching import PathPatchingConfig

    config = PathPatchingConfig(prompt_set="induction", n_prompts=3, seq_len=4, receivers=["1.0.k"], n_resamples=100,
                                bootstrap_seed=7)
    run = run_experiment("path_patching", config, model=model, root=tmp_path / "runs")
    table = run.results.tables["path_patching"]
    assert (table.loc[table["computed"], "n"] == 3).all()
    assert run.results.tensors["per_prompt"].shape == (model.cfg.n_layer, model.cfg.n_head, 3)
    assert "percentile bootstrap of the mean over n = 3 prompts, 100 resamples, seed 7" in run.results.summary
    assert replay(run.path, model=model).ok
