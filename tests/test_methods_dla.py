"""Direct logit attribution against a hand computation from the cache's stacking helpers, the
model's own logits, and a model whose weights are set by hand so that one head writes the answer."""

import copy

import pytest
import torch

from workbench.errors import InputError, WorkbenchError
from workbench.hooks import act_name
from workbench.methods import direct_logit_attribution

ANSWER, WRONG = 7, 11  # token ids
POS = 5


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(0)
    return torch.randint(100, 1000, (3, 8), generator=g)


def hand(model, cache, stack, direction, pos):
    """A stack [component batch d_model] at `pos` through the cached-scale final LayerNorm
    (`apply_ln_to_stack`), times ln_final's weight, dotted with the per-prompt direction."""
    normed = cache.apply_ln_to_stack(stack, pos_slice=pos) * model.ln_final.w.detach()
    return torch.einsum("cbd,bd->bc", normed, direction)


def per_layer_bias(bias, batch):
    return bias[:, None, :].expand(-1, batch, -1)


def assert_close(actual, expected):
    torch.testing.assert_close(actual.float(), expected.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pos", [POS, -1])
def test_every_grid_equals_the_hand_computation_and_sums_to_the_logit_difference(model, tokens, pos):
    logits, cache = model.run_with_cache(tokens)
    batch, n_layer, n_head = tokens.shape[0], model.cfg.n_layer, model.cfg.n_head
    answer = torch.tensor([ANSWER, 12, 40])  # one answer per prompt, as a prompt set has
    wrong = torch.tensor([WRONG, 3, 41])
    direction = model.W_U[:, answer].T - model.W_U[:, wrong].T  # [batch d_model]
    own = logits[torch.arange(batch), pos, answer] - logits[torch.arange(batch), pos, wrong]
    ln_bias = direction @ model.ln_final.b.detach()
    decomposed = hand(model, cache, cache.decompose_resid(pos_slice=pos), direction, pos)  # embed, pos_embed, 0_attn_out, ...
    attn_bias = hand(model, cache, per_layer_bias(model.b_O, batch), direction, pos)
    mlp_bias = hand(model, cache, per_layer_bias(model.b_out, batch), direction, pos)
    attn_out, mlp_out = decomposed[:, 2::2], decomposed[:, 3::2]

    results = {by: direct_logit_attribution(model, tokens, (answer, wrong), by=by, pos=pos)
               for by in ("head", "layer", "neuron", "component")}
    heads = hand(model, cache, cache.stack_head_results(pos_slice=pos), direction, pos)
    assert_close(results["head"].per_prompt, heads.reshape(batch, n_layer, n_head))
    assert_close(results["head"].terms_per_prompt,
                 torch.cat([decomposed[:, :2], attn_bias, mlp_out, ln_bias[:, None]], dim=1))
    full, labels = cache.get_full_resid_decomposition(pos_slice=pos, expand_neurons=True, return_labels=True)
    neurons = hand(model, cache, full[[i for i, l in enumerate(labels) if "N" in l]], direction, pos)
    assert_close(results["neuron"].per_prompt, neurons.reshape(batch, n_layer, model.cfg.d_mlp))
    assert_close(results["neuron"].terms_per_prompt,
                 torch.cat([decomposed[:, :2], attn_out, mlp_bias, ln_bias[:, None]], dim=1))
    assert_close(results["layer"].per_prompt, attn_out + mlp_out)
    assert_close(results["component"].per_prompt, decomposed)
    assert results["component"].labels == cache.decompose_resid(return_labels=True)[1]
    for by, result in results.items():
        values, labels = result.all_per_prompt()
        assert len(labels) == values.shape[1] == len(set(labels)), by
        assert_close(values.sum(1), own)  # the components sum to the model's own logit difference
        assert_close(result.total, own)
        assert_close(result.attn_out, attn_out)
        assert_close(result.mlp_out, mlp_out)
        assert result.pos == pos % tokens.shape[1]
    # the accumulated view: the stream after each layer through the frozen-scale final LayerNorm
    accumulated, labels = cache.accumulated_resid(incl_mid=True, pos_slice=pos, return_labels=True)
    expected = hand(model, cache, accumulated, direction, pos) + ln_bias[:, None]
    assert results["head"].accumulated_labels == labels
    assert_close(results["head"].accumulated, expected)
    assert_close(results["head"].accumulated[:, -1], own)


def test_one_token_and_a_vector_direction(model, tokens):
    logits, cache = model.run_with_cache(tokens)
    result = direct_logit_attribution(model, tokens, ANSWER, by="head")
    values, _ = result.all_per_prompt()
    assert_close(values.sum(1), logits[:, -1, ANSWER])
    text = model.to_string([ANSWER])
    assert result.direction == f"logit[{text!r}]"
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    result = direct_logit_attribution(model, tokens, vector, by="neuron", pos=2)
    normed = cache[act_name("normalized")][:, 2] * model.ln_final.w.detach() + model.ln_final.b.detach()
    values, _ = result.all_per_prompt()
    assert_close(values.sum(1), normed @ vector)
    assert_close(result.total, normed @ vector)


def test_mean_and_frames_agree_with_the_per_prompt_values(model, tokens):
    result = direct_logit_attribution(model, tokens, (ANSWER, WRONG), by="head")
    assert_close(result.values, result.per_prompt.mean(0))
    frame = result.to_frame()
    values, labels = result.all_per_prompt()
    assert list(frame["label"]) == labels
    row = frame[frame["label"] == "L1H2"].iloc[0]
    assert (row["component"], row["layer"], row["index"]) == ("head", 1, 2)
    assert row["value"] == pytest.approx(float(result.per_prompt[:, 1, 2].mean()), abs=1e-6)
    assert row["min"] == pytest.approx(float(result.per_prompt[:, 1, 2].min()), abs=1e-6)
    long = result.to_frame(per_prompt=True)
    assert len(long) == len(labels) * tokens.shape[0]
    one = long[(long["label"] == "L1H2") & (long["batch"] == 2)]["value"].item()
    assert one == pytest.approx(float(result.per_prompt[2, 1, 2]), abs=1e-6)
    assert set(frame[frame["layer"].isna()]["label"]) == {"embed", "pos_embed", "ln_final_bias"}


def planted(model, *, writer=(1, 2), loud=(0, 1)):
    """A copy of `model` in which only head `writer` writes the answer direction e0 - e1
    (answer token embedded/unembedded along it, wrong token against it); every other part of
    the stream (embeddings, other heads, MLPs, biases) has no e0 or e1 component, and head
    `loud` writes a large output elsewhere (a norm-based ranking would pick it)."""
    m = copy.deepcopy(model)
    n_head = m.cfg.n_head
    d_head = m.cfg.d_model // n_head
    with torch.no_grad():
        m.ln_final.weight.fill_(1.0)
        m.ln_final.bias.zero_()
        m.embed.W_E[:, :2] = 0
        m.pos_embed.W_pos[:, :2] = 0
        m.embed.W_E[ANSWER] = 0
        m.embed.W_E[WRONG] = 0
        m.embed.W_E[ANSWER, 0], m.embed.W_E[ANSWER, 1] = 1.0, -1.0
        m.embed.W_E[WRONG, 0], m.embed.W_E[WRONG, 1] = -1.0, 1.0
        for block in m.blocks:
            block.attn.c_proj.weight[:2] = 0  # no head writes e0 or e1 ...
            block.attn.c_proj.bias[:2] = 0
            block.mlp.c_proj.weight[:2] = 0
            block.mlp.c_proj.bias[:2] = 0
        layer, head = writer
        cols = slice(head * d_head, (head + 1) * d_head)
        proj = m.blocks[layer].attn.c_proj.weight
        proj[0, cols], proj[1, cols] = 1.0, -1.0  # ... but the writer: sum(z) * (e0 - e1)
        layer, head = loud
        m.blocks[layer].attn.c_proj.weight[2:, head * d_head:(head + 1) * d_head] *= 50
    return m


def test_only_the_planted_head_writes_the_answer(model, tokens):
    m = planted(model)
    result = direct_logit_attribution(m, tokens, (ANSWER, WRONG), by="head")
    magnitude = result.values.abs()
    assert divmod(int(magnitude.argmax()), m.cfg.n_head) == (1, 2)
    assert float(magnitude[1, 2]) > 1e-2
    others = magnitude.flatten()[[i for i in range(magnitude.numel()) if i != 1 * m.cfg.n_head + 2]]
    assert float(others.max()) < 1e-5
    assert float(result.terms.abs().max()) < 1e-5
    # what a norm of the output would say instead: the loud head
    _, cache = m.run_with_cache(tokens)
    norms = cache.stack_head_results(pos_slice=-1).norm(dim=-1).mean(-1)
    assert int(norms.argmax()) == 0 * m.cfg.n_head + 1
    # and the model's own logit difference is the planted head's share
    logits = m(tokens)
    assert_close(result.per_prompt[:, 1, 2], logits[:, -1, ANSWER] - logits[:, -1, WRONG])


@pytest.mark.parametrize("direction, by, pos, message", [
    (torch.ones(5), "head", -1, "shape [d_model]"),
    (torch.ones(2, 64), "head", -1, "[batch d_model]"),
    ((ANSWER,), "head", -1, "pair (answer, wrong)"),
    ((ANSWER, torch.tensor([1, 2])), "head", -1, "one id per prompt"),
    (10**6, "head", -1, "token ids must be in"),
    ("Maryland and more", "head", -1, "metric_direction 'Maryland and more'"),
    (1.5, "head", -1, "float [d_model] vector"),
    (ANSWER, "heads", -1, "by must be one of 'head', 'layer', 'neuron', 'component'"),
    (ANSWER, "head", 8, "pos must be a position of the prompts: -8 to 7"),
    (ANSWER, "head", -9, "pos must be a position"),
])
def test_bad_input_is_a_clear_error(model, tokens, direction, by, pos, message):
    with pytest.raises(WorkbenchError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        direct_logit_attribution(model, tokens, direction, by=by, pos=pos)
    with pytest.raises(InputError):  # the subclass for bad input
        direct_logit_attribution(model, tokens, direction, by=by, pos=pos)


# ---------------------------------------------------------------------- prompt sets: own positions, intervals, groups


def hand_bootstrap(x, *, seed, n_resamples, confidence=0.95):
    """The percentile bootstrap of the mean of 1-d `x`, written out with numpy (the seeded draws of
    `methods.statistics`): resample prompts with replacement, mean, quantiles."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(x), size=(n_resamples, len(x)))
    means = x[draws].mean(1)
    tail = (1 - confidence) / 2
    return np.quantile(means, tail), np.quantile(means, 1 - tail)


def test_padded_prompt_set_reads_each_prompt_at_its_own_last_token(model):
    """Prompts of different lengths, padded (`PromptSet.batch(length_rule="pad")`), read at each
    prompt's `read_pos`: every prompt's values equal DLA of that prompt alone, unpadded, at its last
    token (a padded set read at -1 would read padding for the shorter ones)."""
    from workbench.methods.datasets import PromptSet

    g = torch.Generator().manual_seed(4)
    rows = [torch.randint(100, 1000, (n,), generator=g).tolist() for n in (8, 5, 6)]
    answer, wrong = [7, 12, 40], [11, 3, 41]
    batch = PromptSet(rows, rows, "logit_diff", answer, wrong).batch(length_rule="pad")
    assert batch.read_pos.tolist() == [7, 4, 5]
    for by in ("head", "neuron", "component"):
        result = direct_logit_attribution(model, batch.clean, (torch.tensor(answer), torch.tensor(wrong)), by=by,
                                          pos=batch.read_pos)
        assert result.pos == [7, 4, 5]
        for b, row in enumerate(rows):
            alone = direct_logit_attribution(model, torch.tensor([row]), (answer[b], wrong[b]), by=by, pos=-1)
            assert_close(result.per_prompt[b], alone.per_prompt[0])
            assert_close(result.terms_per_prompt[b], alone.terms_per_prompt[0])
            assert_close(result.accumulated[b], alone.accumulated[0])
            with torch.no_grad():
                logits = model(torch.tensor([row]))[0, -1]
            assert float(result.total[b]) == pytest.approx(float(logits[answer[b]] - logits[wrong[b]]), abs=1e-4)
    old = direct_logit_attribution(model, batch.clean, (torch.tensor(answer), torch.tensor(wrong)), by=by, pos=-1)
    assert not torch.allclose(old.per_prompt[1], result.per_prompt[1], atol=1e-3)  # the bug this fixes
    long = result.to_frame(per_prompt=True)
    assert long[long["label"] == "embed"]["pos"].tolist() == [7, 4, 5]


def test_the_experiment_reads_a_padded_prompt_file_at_each_prompts_own_position(model, tmp_path):
    """The dla experiment on a prompt file with length_rule pad: per-prompt values equal each prompt
    run alone, unpadded; group labels give a per-group table; the run records n, the seed and method."""
    import json

    from workbench.experiments import run_experiment
    from workbench.experiments.dla import DLAConfig

    records = [{"clean": "When Mary and John went to the store, John gave a drink to", "answer": " Mary",
                "wrong": " John", "group": "long"},
               {"clean": "Mary and John: John gave it to", "answer": " Mary", "wrong": " John", "group": "short"},
               {"clean": "Alice met Bob; Bob thanked", "answer": " Alice", "wrong": " Bob", "group": "short"}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({**r, "corrupted": r["clean"]}) for r in records))
    run = run_experiment("dla", DLAConfig(prompts=str(path), length_rule="pad", by="head", n_resamples=200,
                                          bootstrap_seed=3), model=model, root=tmp_path / "runs")
    per_prompt = run.results.tensors["values_per_prompt"]
    for b, r in enumerate(records):
        alone = direct_logit_attribution(model, r["clean"], (r["answer"], r["wrong"]), by="head")
        assert_close(per_prompt[b], alone.per_prompt[0])
    components = run.results.tables["components"]
    assert (components["n"] == 3).all() and (components["pos"] == -1).all()
    by_group = run.results.tables["components_by_group"]
    assert sorted(by_group["group"].unique()) == ["long", "short"]
    assert (by_group.loc[by_group["group"] == "short", "n"] == 2).all()
    assert run.config.n_resamples == 200 and run.config.bootstrap_seed == 3
    assert "percentile bootstrap of the mean over n = 3 prompts, 200 resamples, seed 3" in run.results.summary


def test_intervals_are_seeded_cover_the_mean_and_come_per_group(model):
    from workbench.methods.statistics import Bootstrap

    g = torch.Generator().manual_seed(9)
    tokens = torch.randint(100, 1000, (6, 8), generator=g)
    answer, wrong = torch.randint(100, 1000, (6,), generator=g), torch.randint(100, 1000, (6,), generator=g)
    groups = ["a", "b", "a", "b", "a", "a"]
    result = direct_logit_attribution(model, tokens, (answer, wrong), by="head", groups=groups)
    result.bootstrap = Bootstrap(n_resamples=500, seed=4)
    frame = result.to_frame()
    assert (frame["n"] == 6).all()
    assert ((frame["ci_low"] <= frame["value"] + 1e-9) & (frame["value"] <= frame["ci_high"] + 1e-9)).all()
    row = frame[frame["label"] == "L1H2"].iloc[0]
    low, high = hand_bootstrap(result.per_prompt[:, 1, 2].double(), seed=4, n_resamples=500)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=1e-6)
    again = result.to_frame()
    assert again["ci_low"].equals(frame["ci_low"])  # same seed, same interval
    result.bootstrap = Bootstrap(n_resamples=500, seed=5)
    assert not result.to_frame()["ci_low"].equals(frame["ci_low"])
    by_group = result.to_frame(by_group=True)
    a = by_group[(by_group["group"] == "a") & (by_group["label"] == "L1H2")].iloc[0]
    assert a["value"] == pytest.approx(float(result.per_prompt[[0, 2, 4, 5], 1, 2].mean()), abs=1e-6)
    assert a["n"] == 4 and (by_group.loc[by_group["group"] == "b", "n"] == 2).all()
    layers = result.layer_frame()
    assert ((layers["ci_low"] <= layers["value"] + 1e-9) & (layers["value"] <= layers["ci_high"] + 1e-9)).all()


@pytest.mark.parametrize("pos, groups, message", [
    (torch.tensor([1, 2]), None, r"one position per prompt \(3\), got 2"),
    (torch.tensor([1, 2, 8]), None, r"per-prompt positions must lie in \[0, 7\]"),
    (torch.tensor([1.0, 2.0, 3.0]), None, "one integer position per prompt"),
    (-1, ["a"], "groups must be one label per prompt"),
])
def test_bad_positions_and_groups(model, tokens, pos, groups, message):
    with pytest.raises(InputError, match=message):
        direct_logit_attribution(model, tokens, (ANSWER, WRONG), pos=pos, groups=groups)
