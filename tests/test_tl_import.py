"""The one-line port: `from workbench import HookedTransformer, ActivationCache, FactoredMatrix, utils,
patching`, and HookedTransformer.from_pretrained against TransformerLens's processed and unprocessed models."""

import copy

import pytest
import torch

import workbench
from workbench.errors import InputError


def test_transformerlens_names_import_from_workbench():
    from workbench import ActivationCache, FactoredMatrix, HookedTransformer, patching, utils

    assert HookedTransformer is workbench.GPT  # one class, TransformerLens's name for it
    assert ActivationCache is workbench.hooks.ActivationCache and FactoredMatrix is workbench.models.FactoredMatrix
    assert callable(patching.get_act_patch_resid_pre) and utils.get_act_name("k", 6) == "blocks.6.attn.hook_k"


def test_from_pretrained_no_processing_is_transformerlens_unprocessed_model(hf_small_dir, bridge, tokens):
    with torch.no_grad():
        ours = workbench.HookedTransformer.from_pretrained_no_processing(str(hf_small_dir), device="cpu")(tokens)
        assert (ours - bridge(tokens)).abs().max() <= 1e-4


def test_from_pretrained_warns_that_processing_is_not_done(hf_small, hf_small_dir, hf_tokenizer, tokens):
    """TransformerLens's defaults (fold_ln, centring, folded value biases) keep its log-probabilities and
    shift each position's logits by a constant, as the warning says; all flags off: no warning."""
    from transformer_lens.model_bridge import TransformerBridge

    processed = TransformerBridge.boot_transformers("gpt2", hf_model=copy.deepcopy(hf_small), tokenizer=hf_tokenizer)
    processed.enable_compatibility_mode()  # TransformerLens's from_pretrained defaults: weights processed
    with pytest.warns(UserWarning, match="does not process weights"):
        model = workbench.HookedTransformer.from_pretrained(str(hf_small_dir), device="cpu")
    with torch.no_grad():
        ours, cache = model.run_with_cache(tokens)
        theirs, tl_cache = processed.run_with_cache(tokens)
    assert (ours.log_softmax(-1) - theirs.log_softmax(-1)).abs().max() <= 1e-4
    shift = ours - theirs
    assert (shift - shift.mean(-1, keepdim=True)).abs().max() <= 1e-4  # a constant per position
    # as warned: v / z and the residual stream differ; attention patterns and MLP activations do not
    assert (cache["v", 0] - tl_cache["v", 0]).abs().max() > 1e-2
    assert (cache["resid_pre", 1] - tl_cache["blocks.1.hook_resid_pre"]).abs().max() > 1e-3
    assert (cache["pattern", 1] - tl_cache["blocks.1.attn.hook_pattern"]).abs().max() <= 1e-4
    assert (cache["post", 1] - tl_cache["blocks.1.mlp.hook_post"]).abs().max() <= 1e-4

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        workbench.HookedTransformer.from_pretrained(
            str(hf_small_dir), device="cpu", fold_ln=False, center_writing_weights=False,
            center_unembed=False, fold_value_biases=False,
        )


def test_from_pretrained_refuses_options_it_does_not_take(hf_small_dir):
    with pytest.raises(InputError, match="n_devices"):
        workbench.HookedTransformer.from_pretrained(str(hf_small_dir), n_devices=2)
