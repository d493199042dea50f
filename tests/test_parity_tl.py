"""Every hook point's activation equals TransformerLens 4.x's (TransformerBridge, legacy names)."""

import torch

BLOCK_HOOKS = [
    "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
    "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "attn.hook_result", "hook_attn_out",
    "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post",
    "hook_mlp_out", "hook_resid_post",
]


def expected_names(n_layer):
    names = ["hook_embed", "hook_pos_embed"]
    names += [f"blocks.{l}.{h}" for l in range(n_layer) for h in BLOCK_HOOKS]
    return names + ["ln_final.hook_scale", "ln_final.hook_normalized"]


def test_hook_names_are_exactly_transformerlens_legacy_names(model):
    assert sorted(model.hook_names()) == sorted(expected_names(model.cfg.n_layer))
    assert len(set(model.hook_names())) == len(model.hook_names())  # one entry per name, no aliases


def test_every_activation_matches_transformerlens(model, bridge, tokens):
    bridge.set_use_attn_result(True)
    try:
        with torch.no_grad():
            tl_logits, tl_cache = bridge.run_with_cache(tokens)
            logits, cache = model.run_with_cache(tokens)
    finally:
        bridge.set_use_attn_result(False)
    assert (logits - tl_logits).abs().max() <= 1e-4
    assert set(cache) == set(expected_names(model.cfg.n_layer))
    for name in cache:
        ours, theirs = cache[name], tl_cache[name]
        assert ours.shape == theirs.shape, name
        finite = torch.isfinite(theirs)
        assert torch.equal(torch.isfinite(ours), finite), name  # -inf above the diagonal of the scores
        assert (ours[finite] - theirs[finite]).abs().max() <= 1e-4, name


def test_shapes_follow_the_axis_vocabulary(model, tokens):
    _, cache = model.run_with_cache(tokens)
    batch, pos = tokens.shape
    c = model.cfg
    assert cache["q", 0].shape == (batch, pos, c.n_head, c.d_head)
    assert cache["pattern", 1].shape == (batch, c.n_head, pos, pos)
    assert cache["result", 1].shape == (batch, pos, c.n_head, c.d_model)
    assert cache["post", 0].shape == (batch, pos, c.d_mlp)
    assert cache["scale", 0, "ln2"].shape == (batch, pos, 1)
    assert cache["scale"].shape == (batch, pos, 1)  # ln_final
