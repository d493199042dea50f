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
