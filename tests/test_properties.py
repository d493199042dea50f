"""Property tests (hypothesis): invariants that must hold for any input."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.models.tokenizer import gpt2_tokenizer


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=60))
def test_tokenizer_round_trips_any_text(text):
    enc = gpt2_tokenizer()
    assert enc.decode(enc.encode(text, disallowed_special=())) == text


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 3), pos=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_fused_and_explicit_attention_agree_for_any_shape(model, batch, pos, seed):
    tokens = torch.randint(0, 50257, (batch, pos), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        fused = model(tokens)
        explicit = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_attn_scores"), lambda a, hook: None)])
    assert (fused - explicit).abs().max() <= 1e-5


@settings(max_examples=10, deadline=None)
@given(pos=st.integers(2, 30), seed=st.integers(0, 10_000))
def test_causality_later_tokens_never_change_earlier_logits(model, pos, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50257, (1, pos), generator=g)
    changed = tokens.clone()
    changed[0, -1] = (tokens[0, -1] + 1) % 50257
    with torch.no_grad():
        assert (model(tokens)[:, :-1] - model(changed)[:, :-1]).abs().max() <= 1e-5
