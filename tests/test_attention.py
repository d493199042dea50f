"""Attention's pieces equal transformers' GPT2Attention on the same weights and a hand-written loop."""

import math

import pytest
import torch
from conftest import random_hf_model

import workbench
from workbench.models.attention import Attention

TOL = 1e-5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A transformers GPT-2 with large random weights (patterns far from uniform), eager attention so
    it returns its attention weights, and ours loaded from the same files."""
    hf = random_hf_model(seed=3, initializer_range=0.15)
    hf.set_attn_implementation("eager")
    path = tmp_path_factory.mktemp("attn_pair")
    hf.save_pretrained(path)
    return hf, workbench.load_model(path, device="cpu")


def hf_attention_io(hf, layer, tokens):
    """The input of GPT2Attention in block `layer` (ln_1's output), its output and its weights."""
    seen = {}

    def grab(module, args, kwargs, out):
        seen["x"] = args[0] if args else kwargs["hidden_states"]
        seen["out"], seen["weights"] = out[0], out[1]

    handle = hf.transformer.h[layer].attn.register_forward_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            hf(tokens, output_attentions=True)
    finally:
        handle.remove()
    return seen["x"], seen["out"], seen["weights"]


@pytest.mark.parametrize("layer", [0, 1])
def test_pieces_equal_transformers(pair, layer):
    hf, model = pair
    tokens = torch.randint(0, 50000, (2, 9), generator=torch.Generator().manual_seed(layer))
    x, hf_out, hf_pattern = hf_attention_io(hf, layer, tokens)
    attn, hf_attn = model.blocks[layer].attn, hf.transformer.h[layer].attn
    n_head, d_head = model.cfg.n_head, model.cfg.d_head
    with torch.no_grad():
        q, k, v = attn.split_qkv(x)
        # transformers' own split of its Conv1D output: [batch pos (three head d_head)]
        hf_q, hf_k, hf_v = (t.unflatten(-1, (n_head, d_head)) for t in hf_attn.c_attn(x).split(model.cfg.d_model, -1))
        scores = attn.scores(q, k)
        pattern = attn.pattern(scores)
        z = attn.mix(pattern, v)
        fused = attn.attend(q, k, v)
        results = attn.head_results(z)
    for ours, theirs in ((q, hf_q), (k, hf_k), (v, hf_v)):
        assert (ours - theirs).abs().max() <= TOL
    assert (pattern - hf_pattern).abs().max() <= TOL
    assert hf_pattern[:, :, 0, 0].min() > 0.99 and hf_pattern.max(-1).values.min() < 0.9  # not trivial
    # scores: q.k / sqrt(d_head) at and below the diagonal, -inf above it
    below = torch.ones(9, 9, dtype=torch.bool).tril()
    by_hand = torch.einsum("bqhd,bkhd->bhqk", hf_q, hf_k) / math.sqrt(d_head)
    assert (scores[..., below] - by_hand[..., below]).abs().max() <= TOL
    assert torch.isneginf(scores[..., ~below]).all()
    assert (attn.project(z) - hf_out).abs().max() <= TOL
    assert (fused - z).abs().max() <= TOL
    assert (results.sum(2) + attn.b_O - hf_out).abs().max() <= TOL


def test_head_results_are_slices_of_c_proj(pair):
    _, model = pair
    attn = model.blocks[0].attn
    d_head = model.cfg.d_head
    z = torch.randn(2, 5, model.cfg.n_head, d_head, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        results = attn.head_results(z)
        for h in range(model.cfg.n_head):
            by_hand = z[:, :, h] @ attn.c_proj.weight[:, h * d_head : (h + 1) * d_head].T
            assert (results[:, :, h] - by_hand).abs().max() <= TOL
        # `heads` says which head each slice of the head axis is (repeats allowed)
        heads = torch.tensor([2, 0, 2])
        picked = attn.head_results(z[:, :, heads], heads=heads)
    assert (picked - results[:, :, heads]).abs().max() <= TOL


def test_causal_mask_is_key_at_or_before_query():
    query_pos = torch.tensor([[0, 2, 5], [3, 4, 9]])
    key_pos = torch.arange(6)
    mask = Attention.causal_mask(query_pos, key_pos)
    assert mask.shape == (2, 3, 6)
    for b in range(2):
        for i in range(3):
            for j in range(6):
                assert bool(mask[b, i, j]) == (j <= int(query_pos[b, i]))


def loop_attention(q, k, v, query_pos):
    """Hand-written attention: query i of row b, at position query_pos[b, i], over keys 0..query_pos[b, i]."""
    batch, n_query, n_head, d_head = q.shape
    pattern = torch.zeros(batch, n_head, n_query, k.shape[1])
    z = torch.zeros_like(q)
    for b in range(batch):
        for h in range(n_head):
            for i in range(n_query):
                last = min(int(query_pos[b, i]), k.shape[1] - 1)
                scores = torch.stack([q[b, i, h] @ k[b, j, h] for j in range(last + 1)]) / math.sqrt(d_head)
                weights = scores.softmax(0)
                pattern[b, h, i, : last + 1] = weights
                z[b, i, h] = sum(w * v[b, j, h] for j, w in enumerate(weights))
    return pattern, z


def test_queries_at_any_positions_equal_loop():
    # The packed sweep's case: each row computes a few later positions against all its keys.
    attn = Attention(workbench.GPTConfig(n_layer=1, n_head=2, n_embd=16))
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 2, 8, generator=g)
    k, v = torch.randn(3, 7, 2, 8, generator=g), torch.randn(3, 7, 2, 8, generator=g)
    query_pos = torch.tensor([[0, 1, 2, 3], [3, 4, 5, 6], [5, 6, 7, 8]])  # positions past the keys see them all
    pattern, z = loop_attention(q, k, v, query_pos)
    with torch.no_grad():
        scores = attn.scores(q, k, query_pos=query_pos)
        assert (attn.pattern(scores) - pattern).abs().max() <= TOL
        assert torch.isneginf(scores[pattern == 0]).all() and torch.isfinite(scores[pattern > 0]).all()
        assert (attn.mix(attn.pattern(scores), v) - z).abs().max() <= TOL
        assert (attn.attend(q, k, v, query_pos=query_pos) - z).abs().max() <= TOL
        # default positions 0, 1, ...: the fused kernel's causal rule is the same
        first = torch.arange(4).expand(3, 4)
        assert (attn.attend(q, k, v) - loop_attention(q, k, v, first)[1]).abs().max() <= TOL
        assert (attn.scores(q, k) == attn.scores(q, k, query_pos=first)).all()


def test_split_qkv_parts_equal_per_head_weights(pair):
    """split_qkv(x, parts=...) computes just those of q, k, v: each equals x @ W_X[head] + b_X[head]."""
    _, model = pair
    attn = model.blocks[1].attn
    x = torch.randn(2, 5, model.cfg.d_model)
    by_hand = {name: torch.einsum("bpd,hde->bphe", x, W) + b
               for name, W, b in [("q", attn.W_Q, attn.b_Q), ("k", attn.W_K, attn.b_K), ("v", attn.W_V, attn.b_V)]}
    with torch.no_grad():
        for parts in ["qkv", "qk", "kv", "q", "k", "v"]:
            out = attn.split_qkv(x, parts=parts)
            assert len(out) == len(parts)
            for name, got in zip(parts, out):
                torch.testing.assert_close(got, by_hand[name], atol=TOL, rtol=0)
    for bad in ["qv", "vk", "", "x"]:
        with pytest.raises(workbench.WorkbenchError, match="adjacent letters"):
            attn.split_qkv(x, parts=bad)
