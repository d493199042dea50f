"""workbench.patching's get_act_patch_* equal TransformerLens's own functions of the same name, run on
TransformerLens 4.x's bridge with the same weights, tokens and metric."""

from functools import partial

import pytest
import torch
from conftest import random_hf_model

import workbench
from workbench import patching
from workbench.errors import InputError
from workbench.methods import LogitDiff, activation_patching

# Two prompts; the corrupted ones differ from position 2 on, so earlier cells are no-ops.
CLEAN = torch.tensor([[50256, 464, 3290, 318, 257, 1310], [50256, 383, 3797, 373, 287, 262]])
CORRUPTED = CLEAN.clone()
CORRUPTED[:, 2] = torch.tensor([1310, 4171])
CORRUPTED[1, 4] = 612
ANSWER, WRONG = torch.tensor([257, 262]), torch.tensor([262, 257])


def logit_diff(logits, answer, wrong):
    """The metric as ported notebooks write it: a plain function bound with functools.partial."""
    last = logits[:, -1]
    return (last.gather(-1, answer[:, None]) - last.gather(-1, wrong[:, None])).mean()


METRIC = partial(logit_diff, answer=ANSWER, wrong=WRONG)

SWEEPS = {  # name: our shape as (layer, pos, head) sizes
    "get_act_patch_resid_pre": "LP",
    "get_act_patch_resid_mid": "LP",
    "get_act_patch_attn_out": "LP",
    "get_act_patch_mlp_out": "LP",
    "get_act_patch_attn_head_out_all_pos": "LH",
    "get_act_patch_attn_head_q_all_pos": "LH",
    "get_act_patch_attn_head_k_all_pos": "LH",
    "get_act_patch_attn_head_v_all_pos": "LH",
    "get_act_patch_attn_head_pattern_all_pos": "LH",
    "get_act_patch_attn_head_out_by_pos": "LPH",
    "get_act_patch_attn_head_q_by_pos": "LPH",
    "get_act_patch_attn_head_k_by_pos": "LPH",
    "get_act_patch_attn_head_v_by_pos": "LPH",
    "get_act_patch_attn_head_pattern_by_pos": "LHP",
    "get_act_patch_block_every": "3LP",
    "get_act_patch_attn_head_all_pos_every": "5LH",
    "get_act_patch_attn_head_by_pos_every": "5LPH",
}


@pytest.fixture(scope="module")
def sharp(hf_tokenizer, tmp_path_factory):
    """A random 2-layer GPT-2 with 5x the usual weight scale (sharp attention), so that every sweep
    moves the metric by far more than the tolerance: workbench's model and TransformerLens's bridge on it."""
    import copy

    from transformer_lens.model_bridge import TransformerBridge

    hf = random_hf_model(seed=3, initializer_range=0.1)
    path = tmp_path_factory.mktemp("sharp")
    hf.save_pretrained(path)
    bridge = TransformerBridge.boot_transformers("gpt2", hf_model=copy.deepcopy(hf), tokenizer=hf_tokenizer)
    bridge.enable_compatibility_mode(no_processing=True)
    return workbench.load_model(path, device="cpu"), bridge


@pytest.fixture(scope="module")
def model(sharp):
    return sharp[0]


@pytest.fixture(scope="module")
def bridge(sharp):
    return sharp[1]


@pytest.fixture(scope="module")
def caches(model, bridge):
    with torch.no_grad():
        _, cache = model.run_with_cache(CLEAN)
        _, tl_cache = bridge.run_with_cache(CLEAN)
    return cache, tl_cache


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_equals_transformerlens(name, model, bridge, caches):
    from transformer_lens import patching as tl_patching

    cache, tl_cache = caches
    with torch.no_grad():
        ours = getattr(patching, name)(model, CORRUPTED, cache, METRIC)
        theirs = getattr(tl_patching, name)(bridge, CORRUPTED, tl_cache, METRIC)
    sizes = {"L": model.cfg.n_layers, "P": CLEAN.shape[1], "H": model.cfg.n_heads, "3": 3, "5": 5}
    assert ours.shape == tuple(sizes[c] for c in SWEEPS[name]) == theirs.shape
    assert (ours - theirs.to(ours.device)).abs().max() <= 1e-4
    assert ours.max() - ours.min() > 1e-3  # the patches move the metric by more than the tolerance


def test_a_metric_object_gives_the_same_numbers(model, caches):
    cache, _ = caches
    with torch.no_grad():
        plain = patching.get_act_patch_attn_head_out_by_pos(model, CORRUPTED, cache, METRIC)
        fast = patching.get_act_patch_attn_head_out_by_pos(model, CORRUPTED, cache, LogitDiff(ANSWER, WRONG))
    assert (plain - fast).abs().max() <= 1e-4


def test_clean_cache_path_equals_the_clean_tokens_path(model, caches):
    """activation_patching(clean_cache=...) equals the same sweep given the clean tokens."""
    cache, _ = caches
    from_cache = activation_patching(
        model, None, CORRUPTED, METRIC, clean_cache=cache, target="head_v_by_pos", progress=False)
    from_tokens = activation_patching(
        model, CLEAN, CORRUPTED, METRIC, target="head_v_by_pos", progress=False)
    assert (from_cache.values - from_tokens.values).abs().max() <= 1e-4
    assert abs(from_cache.clean_value - from_tokens.clean_value) <= 1e-4
    assert from_cache.corrupted_value == pytest.approx(from_tokens.corrupted_value, abs=1e-4)


def test_bad_inputs_are_refused_with_what_is_allowed(model, caches):
    cache, _ = caches
    with pytest.raises(InputError, match="reduce"):
        patching.get_act_patch_resid_pre(model, CORRUPTED, cache, METRIC, reduce="none")
    with pytest.raises(InputError, match="same batch and length"):
        patching.get_act_patch_resid_pre(model, CORRUPTED[:, :4], cache, METRIC)
    partial_cache = {k: v for k, v in cache.cache_dict.items() if "hook_attn_out" not in k}
    with pytest.raises(InputError, match="hook_attn_out"):
        patching.get_act_patch_attn_out(model, CORRUPTED, partial_cache, METRIC)
    with pytest.raises(InputError, match="not both"):
        activation_patching(model, CLEAN, CORRUPTED, METRIC, clean_cache=cache)
    with pytest.raises(InputError, match="denoise"):
        activation_patching(model, None, CORRUPTED, METRIC, clean_cache=cache, direction="noise")
