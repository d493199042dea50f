"""Logit lens: the last layer is the model's own prediction; ranks and probabilities are consistent."""

import pytest
import torch

from workbench.errors import InputError
from workbench.methods import logit_lens


def test_last_layer_is_the_model(model, tokens):
    result = logit_lens(model, tokens, top_k=3)
    n_layer = model.cfg.n_layer
    assert result.layers == [f"{l}_pre" for l in range(n_layer)] + ["final_post"]
    assert result.log_probs.shape == (n_layer + 1, *tokens.shape, model.cfg.d_vocab)
    with torch.no_grad():
        logits = model(tokens)
    assert torch.allclose(result.log_probs[-1], logits.log_softmax(-1), atol=1e-5)
    assert torch.equal(result.top_tokens[-1, :, :, 0], logits.argmax(-1))
    # an earlier layer reads the residual stream before the later blocks: a different prediction
    assert not torch.allclose(result.log_probs[0], result.log_probs[-1], atol=1e-3)


def test_layer_rows_are_ln_final_and_unembed_of_resid(model, tokens):
    result = logit_lens(model, tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        expected = (model.ln_final(cache["resid_pre", 1]) @ model.W_U).log_softmax(-1)
    assert torch.allclose(result.log_probs[1], expected, atol=1e-5)


def test_targets_rank_and_prob(model, tokens):
    target = 1234
    result = logit_lens(model, tokens, targets=target, top_k=2)
    lp = result.log_probs
    assert torch.allclose(result.target_prob, lp[..., target].exp())
    assert torch.equal(result.target_rank, (lp > lp[..., target : target + 1]).sum(-1))
    # the top-1 token has rank 0
    top1 = logit_lens(model, tokens, targets=result.top_tokens[-1, :, :, 0])
    assert (top1.target_rank[-1] == 0).all()
    assert torch.allclose(top1.target_prob[-1], result.top_probs[-1, :, :, 0])


def test_frames(model, tokens):
    result = logit_lens(model, tokens[:1], targets=torch.arange(tokens.shape[1]), top_k=3)
    df = result.to_frame()
    n = (model.cfg.n_layer + 1) * tokens.shape[1]
    assert len(df) == n
    assert {"layer", "batch", "pos", "token", "top_token", "top_prob", "target_rank", "target_prob"} <= set(df.columns)
    assert len(result.top_k_frame()) == 3 * n
    assert df["token"].iloc[0] == model.to_str_tokens(tokens[0])[0]


def test_text_prompt(model):
    result = logit_lens(model, "Hello world")
    assert result.str_tokens == [["<|endoftext|>", "Hello", " world"]]


def test_bad_input(model, tokens):
    with pytest.raises(InputError, match=r"targets must be one id, a \[pos\] or a \[batch pos\] tensor"):
        logit_lens(model, tokens, targets=torch.zeros(5, dtype=torch.long))
    with pytest.raises(InputError, match="target ids must be in"):
        logit_lens(model, tokens, targets=60000)
    with pytest.raises(InputError, match="top_k"):
        logit_lens(model, tokens, top_k=0)
