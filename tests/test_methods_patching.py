"""Activation patching equals TransformerLens's get_act_patch_* (or a one-forward-per-cell loop)."""

import itertools

import pytest
import torch
from conftest import random_hf_model

import workbench
from workbench.errors import InputError
from workbench.methods import TARGETS, CustomMetric, KLDivergence, LogitDiff, TokenLogProb, activation_patching
from workbench.methods.patching import target_hook

TOL = 1e-4

# TransformerLens's function for each target. It has none for resid_post: that one is checked
# against the hand loop below. Its pattern-by-position result is [layer head dest_pos].
TL_FUNCTIONS = {
    "resid_pre": "get_act_patch_resid_pre",
    "resid_mid": "get_act_patch_resid_mid",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "head_out": "get_act_patch_attn_head_out_all_pos",
    "head_q": "get_act_patch_attn_head_q_all_pos",
    "head_k": "get_act_patch_attn_head_k_all_pos",
    "head_v": "get_act_patch_attn_head_v_all_pos",
    "head_pattern": "get_act_patch_attn_head_pattern_all_pos",
    "head_out_by_pos": "get_act_patch_attn_head_out_by_pos",
    "head_q_by_pos": "get_act_patch_attn_head_q_by_pos",
    "head_k_by_pos": "get_act_patch_attn_head_k_by_pos",
    "head_v_by_pos": "get_act_patch_attn_head_v_by_pos",
    "head_pattern_by_pos": "get_act_patch_attn_head_pattern_by_pos",
}


@pytest.fixture(scope="module")
def strong(tmp_path_factory, hf_tokenizer):
    """A small model with large random weights (so patches move the metric by O(1)), ours and
    TransformerLens's bridge on it (no weight processing), and a pair of prompts."""
    from transformer_lens.model_bridge import TransformerBridge

    hf = random_hf_model(seed=2, n_head=3, n_embd=48, initializer_range=0.15)
    path = tmp_path_factory.mktemp("strong")
    hf.save_pretrained(path)
    model = workbench.load_model(path, device="cpu")
    bridge = TransformerBridge.boot_transformers("gpt2", hf_model=hf, tokenizer=hf_tokenizer)
    bridge.enable_compatibility_mode(no_processing=True)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50000, (2, 5), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.tensor([11, 12])  # first difference at position 1
    corrupted[0, 3] = 13
    metric = LogitDiff(torch.tensor([5, 6]), torch.tensor([7, 8]))
    return model, bridge, clean, corrupted, metric


def tl_metric(metric):
    answer, wrong = metric.answer, metric.wrong

    def fn(logits):
        last = logits[:, -1]
        return (last.gather(-1, answer[:, None]) - last.gather(-1, wrong[:, None])).mean()

    return fn


def tl_patch(bridge, target, clean, corrupted, metric, *, direction="denoise"):
    import transformer_lens.patching as tl_patching

    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    with torch.no_grad():
        _, source_cache = bridge.run_with_cache(source)
        out = getattr(tl_patching, TL_FUNCTIONS[target])(bridge, base, source_cache, tl_metric(metric))
    if target == "head_pattern_by_pos":
        out = out.permute(0, 2, 1)  # [layer head dest_pos] -> [layer pos head]
    return out


def loop_patch(model, target, clean, corrupted, metric, *, direction="denoise"):
    """One full forward per cell, with a hook that overwrites one slice of one activation."""
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    with torch.no_grad():
        _, cache = model.run_with_cache(source)
    n_layer, n_head, n_pos = model.cfg.n_layer, model.cfg.n_head, base.shape[1]
    sizes = {"layer": n_layer, "pos": n_pos, "head": n_head}
    from workbench.methods.patching import target_dims

    dims = target_dims(target)
    out = torch.zeros([sizes[d] for d in dims])
    for cell in itertools.product(*[range(sizes[d]) for d in dims]):
        idx = dict(zip(dims, cell))

        def hook(x, hook):
            x, src = x.clone(), cache[hook.name]
            if dims == ("layer", "pos"):
                sl = (slice(None), idx["pos"])
            elif target.startswith("head_pattern"):  # [batch head query_pos key_pos]
                sl = (slice(None), idx["head"]) + ((idx["pos"],) if "pos" in idx else ())
            else:  # [batch pos head d_head]
                sl = (slice(None), idx.get("pos", slice(None)), idx["head"])
            x[sl] = src[sl]
            return x

        with torch.no_grad():
            out[cell] = metric(model.run_with_hooks(base, fwd_hooks=[(target_hook(target, idx["layer"]), hook)]))
    return out


@pytest.mark.parametrize("target", [t for t in TARGETS if t in TL_FUNCTIONS])
def test_matches_transformer_lens(strong, target):
    model, bridge, clean, corrupted, metric = strong
    ours = activation_patching(model, clean, corrupted, metric, target=target, progress=False)
    theirs = tl_patch(bridge, target, clean, corrupted, metric)
    assert ours.values.shape == theirs.shape
    assert (ours.values - theirs).abs().max() <= TOL
    assert (theirs - ours.baseline).abs().max() > 0.01  # the patches do move the metric


def test_resid_post_matches_loop(strong):
    # TransformerLens has no get_act_patch_resid_post: a plain loop is the reference.
    model, _, clean, corrupted, metric = strong
    ours = activation_patching(model, clean, corrupted, metric, target="resid_post", progress=False)
    ref = loop_patch(model, "resid_post", clean, corrupted, metric)
    assert (ours.values - ref).abs().max() <= TOL
    assert (ref - ours.baseline).abs().max() > 0.01


@pytest.mark.parametrize("target", ["resid_pre", "head_out"])
def test_matches_transformer_lens_on_shared_bridge(model, bridge, target):
    g = torch.Generator().manual_seed(5)
    clean = torch.randint(0, 50000, (2, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.tensor([3, 4])
    metric = LogitDiff(torch.tensor([5, 6]), torch.tensor([7, 8]))
    ours = activation_patching(model, clean, corrupted, metric, target=target, progress=False)
    theirs = tl_patch(bridge, target, clean, corrupted, metric)
    assert (ours.values - theirs).abs().max() <= TOL


@pytest.mark.parametrize("target", ["resid_mid", "head_v_by_pos"])
def test_noising_matches_transformer_lens(strong, target):
    model, bridge, clean, corrupted, metric = strong
    ours = activation_patching(model, clean, corrupted, metric, target=target, direction="noise", progress=False)
    theirs = tl_patch(bridge, target, clean, corrupted, metric, direction="noise")
    assert (ours.values - theirs).abs().max() <= TOL
    assert ours.baseline == ours.clean_value


@pytest.mark.parametrize("target", ["resid_pre", "resid_post", "head_q", "head_k_by_pos", "head_pattern_by_pos"])
def test_full_vocab_metric_and_small_chunks_match_loop(strong, target):
    # A log-prob metric reads all logits (no vocab shortcut); max_batch=3 forces many chunks.
    model, _, clean, corrupted, _ = strong
    metric = TokenLogProb(torch.tensor([5, 6]))
    ours = activation_patching(model, clean, corrupted, metric, target=target, max_batch=3, progress=False)
    ref = loop_patch(model, target, clean, corrupted, metric)
    assert (ours.values - ref).abs().max() <= TOL


def test_chunking_does_not_change_values(strong):
    model, _, clean, corrupted, metric = strong
    for target in ("mlp_out", "head_v", "head_out_by_pos", "head_q_by_pos"):
        one = activation_patching(model, clean, corrupted, metric, target=target, progress=False)
        many = activation_patching(model, clean, corrupted, metric, target=target, max_batch=2, progress=False)
        assert (one.values - many.values).abs().max() <= 1e-5, target


def test_plain_callable_and_several_positions(strong):
    # A plain callable reads every position: the positions before a patch come from the base run.
    model, _, clean, corrupted, _ = strong

    def two_positions(logits):
        return logits[:, 0, 3].mean() + 2 * logits[:, 2, 4].mean() - logits[:, -1, 9].mean()

    several = CustomMetric(lambda lg: lg[:, 0, 3].mean() + lg[:, 1, 4].mean(), positions=(0, 2))
    for metric, target in ((two_positions, "resid_pre"), (several, "head_k_by_pos")):
        ours = activation_patching(model, clean, corrupted, metric, target=target, progress=False)
        ref = loop_patch(model, target, clean, corrupted, metric)
        assert (ours.values - ref).abs().max() <= TOL


def test_kl_metric(strong):
    model, _, clean, corrupted, _ = strong
    with torch.no_grad():
        clean_logits = model(clean)
    metric = KLDivergence(clean_logits)
    ours = activation_patching(model, clean, corrupted, metric, target="attn_out", progress=False)
    ref = loop_patch(model, "attn_out", clean, corrupted, metric)
    assert (ours.values - ref).abs().max() <= TOL
    assert ours.clean_value == pytest.approx(0.0, abs=1e-6)


def test_layers_subset_and_frame(strong):
    model, _, clean, corrupted, metric = strong
    full = activation_patching(model, clean, corrupted, metric, target="head_out_by_pos", progress=False)
    part = activation_patching(model, clean, corrupted, metric, target="head_out_by_pos", layers=[1], progress=False)
    assert torch.equal(part.values[0], full.values[1])
    df = part.to_frame()
    assert list(df.columns[:4]) == ["layer", "pos", "head", "token"]
    assert len(df) == clean.shape[1] * model.cfg.n_head and set(df["layer"]) == {1}
    assert {"value", "effect", "normalized", "target", "method"} <= set(df.columns)
    # normalised: 0 = corrupted, 1 = clean
    expected = (part.values - part.corrupted_value) / (part.clean_value - part.corrupted_value)
    assert torch.allclose(part.normalized(), expected)
    assert torch.allclose(torch.tensor(df["normalized"].values, dtype=torch.float32), expected.flatten())


def test_no_difference_means_no_effect(strong):
    model, _, clean, _, metric = strong
    same = activation_patching(model, clean, clean.clone(), metric, target="head_out", progress=False)
    assert torch.allclose(same.values, torch.full_like(same.values, same.corrupted_value))


def test_progress_bar_shows_and_hides(strong, capsys):
    model, _, clean, corrupted, metric = strong
    activation_patching(model, clean, corrupted, metric, target="resid_pre", progress=False)
    assert "patching" not in capsys.readouterr().err
    activation_patching(model, clean, corrupted, metric, target="resid_pre", progress=True)
    assert "patching resid_pre" in capsys.readouterr().err


def test_progress_callback_counts_cells(strong):
    model, _, clean, corrupted, metric = strong
    seen = []
    result = activation_patching(model, clean, corrupted, metric, target="head_out", max_batch=2,
                                 progress=lambda done, total: seen.append((done, total)))
    total = seen[0][1]
    assert seen[0] == (0, total) and seen[-1] == (total, total) and len(seen) > 2
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert total <= result.values.numel()


# ---------------------------------------------------------------------- bad input


def test_mismatched_lengths(model):
    with pytest.raises(InputError, match=r"clean has 6 tokens, corrupted has 5"):
        activation_patching(model, torch.zeros(1, 6, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long),
                            LogitDiff(1, 2), progress=False)
    with pytest.raises(InputError, match=r"clean has 2 prompts, corrupted has 1"):
        activation_patching(model, torch.zeros(2, 6, dtype=torch.long), torch.zeros(1, 6, dtype=torch.long),
                            LogitDiff(1, 2), progress=False)


def test_unknown_target_lists_allowed(model):
    toks = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(InputError, match=r"unknown patching target 'resid'.*resid_pre.*head_pattern_by_pos"):
        activation_patching(model, toks, toks, LogitDiff(1, 2), target="resid", progress=False)
    with pytest.raises(InputError, match="direction"):
        activation_patching(model, toks, toks, LogitDiff(1, 2), direction="up", progress=False)


def test_layer_out_of_range(model):
    toks = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(InputError, match=r"layer 2 is out of range: the model has 2 layers \(0 to 1\)"):
        activation_patching(model, toks, toks, LogitDiff(1, 2), layers=[0, 2], progress=False)
    with pytest.raises(InputError, match=r"layer -1 is out of range"):
        activation_patching(model, toks, toks, LogitDiff(1, 2), layers=[-1], progress=False)


def test_metric_must_return_scalar(model):
    toks = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(InputError, match=r"must return a scalar, got a tensor of shape \(2,\)"):
        activation_patching(model, toks, toks, lambda logits: logits[:, -1, 0], progress=False)
    with pytest.raises(InputError, match="must return a scalar tensor, got str"):
        activation_patching(model, toks, toks, lambda logits: "high", progress=False)


def test_metric_position_out_of_range(model):
    toks = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(InputError, match=r"reads position 7, but the prompt has 4 positions"):
        activation_patching(model, toks, toks, LogitDiff(1, 2, pos=7), progress=False)


def test_hooks_left_attached_are_refused_not_half_applied(strong):
    # Packed cells run without hook points: a hook left on the model would change the clean run only.
    model, _, clean, corrupted, metric = strong
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_mid", lambda x, hook: 2 * x)]):
        with pytest.raises(InputError, match="attached at: blocks.0.hook_resid_mid"):
            activation_patching(model, clean, corrupted, metric, target="resid_pre", progress=False)
    assert not any(point.has_hooks for point in model.hook_dict.values())
    ours = activation_patching(model, clean, corrupted, metric, target="resid_pre", progress=False)
    assert (ours.values - loop_patch(model, "resid_pre", clean, corrupted, metric)).abs().max() <= TOL



def test_max_batch_must_be_positive(model):
    toks = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(InputError, match="max_batch must be a positive number of sequences per forward or None, got 0"):
        activation_patching(model, toks, toks, LogitDiff(1, 2), max_batch=0, progress=False)
