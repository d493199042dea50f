"""The cache's TransformerLens helpers give TransformerLens 4.x's numbers on the same weights.

Each test runs the same call on our cache and on the TransformerBridge's `ActivationCache`
(`bridge` fixture: TransformerLens 4.x, legacy names, no weight processing) and compares to 1e-4."""

import warnings

import numpy as np
import pytest
import torch

from workbench.errors import InputError, NotCachedError


def assert_close(ours, theirs):
    theirs = theirs.detach()
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert ours.numel() == 0 or (ours - theirs).abs().max() <= 1e-4


PROMPT = torch.randint(0, 50257, (3, 12), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def caches(model, bridge):
    with torch.no_grad():
        _, ours = model.run_with_cache(PROMPT)
        _, theirs = bridge.run_with_cache(PROMPT)
        theirs.stack_head_results()  # TransformerLens computes hook_result from hook_z into its cache
    return ours, theirs


LAYERS = [None, -1, 0, 1, 2]  # n_layer = 2: 2 is ln_final's input, as None and -1


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("incl_mid", [False, True])
@pytest.mark.parametrize("mlp_input", [False, True])
def test_accumulated_resid_components_and_labels(caches, layer, incl_mid, mlp_input):
    ours, theirs = caches
    kw = dict(incl_mid=incl_mid, mlp_input=mlp_input, return_labels=True)
    stack, labels = ours.accumulated_resid(layer, **kw)
    tl_stack, tl_labels = theirs.accumulated_resid(layer, **kw)
    assert labels == tl_labels
    assert_close(stack, tl_stack)


def test_accumulated_resid_includes_the_input_of_the_layer(caches):
    ours, _ = caches
    stack, labels = ours.accumulated_resid(1, return_labels=True)
    assert labels == ["0_pre", "1_pre"]
    assert torch.equal(stack[-1], ours["resid_pre", 1])


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("mlp_input", [False, True])
def test_accumulated_resid_apply_ln_default_is_transformerlens_4(caches, layer, mlp_input):
    ours, theirs = caches
    stack = ours.accumulated_resid(layer, incl_mid=True, mlp_input=mlp_input, apply_ln=True)
    with torch.no_grad():
        tl_stack = theirs.accumulated_resid(layer, incl_mid=True, mlp_input=mlp_input, apply_ln=True)
    assert_close(stack, tl_stack)


def test_accumulated_resid_cached_scale_option_is_the_older_convention(caches, model):
    ours, theirs = caches
    # by hand, from TransformerLens's cache: centre each row, divide by ln_final's cached scale
    raw = theirs.accumulated_resid()
    by_hand = (raw - raw.mean(-1, keepdim=True)) / theirs["ln_final.hook_scale"]
    assert_close(ours.accumulated_resid(apply_ln=True, recompute_ln=False), by_hand)
    # the two conventions really differ here (so the default test above can tell them apart) ...
    assert (ours.accumulated_resid(apply_ln=True) - by_hand).abs().max() > 0.1
    # ... and the default's last row is what the unembedding reads: the model's logits
    with torch.no_grad():
        assert_close(ours.accumulated_resid(apply_ln=True)[-1] @ model.W_U, model(PROMPT))
    # intermediate layers use the cached scale of that block's ln1 in both conventions, as TransformerLens
    assert_close(ours.accumulated_resid(1, apply_ln=True, recompute_ln=False), theirs.accumulated_resid(1, apply_ln=True))
    with pytest.raises(InputError, match="final LayerNorm"):
        ours.accumulated_resid(1, apply_ln=True, recompute_ln=True)


@pytest.mark.parametrize("layer", [None, 0, 1])
@pytest.mark.parametrize("mode", ["all", "attn", "mlp"])
@pytest.mark.parametrize("mlp_input", [False, True])
@pytest.mark.parametrize("apply_ln", [False, True])
def test_decompose_resid(caches, layer, mode, mlp_input, apply_ln):
    ours, theirs = caches
    if mlp_input and layer is None:
        with pytest.raises(InputError, match="mlp_input"):
            ours.decompose_resid(layer, mlp_input=True)
        return
    kw = dict(mode=mode, mlp_input=mlp_input, apply_ln=apply_ln, return_labels=True)
    stack, labels = ours.decompose_resid(layer, **kw)
    tl_stack, tl_labels = theirs.decompose_resid(layer, **kw)
    assert labels == tl_labels
    assert_close(stack, tl_stack)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("incl_remainder", [False, True])
@pytest.mark.parametrize("apply_ln", [False, True])
def test_stack_head_results(caches, layer, incl_remainder, apply_ln):
    ours, theirs = caches
    kw = dict(incl_remainder=incl_remainder, apply_ln=apply_ln, return_labels=True)
    stack, labels = ours.stack_head_results(layer, **kw)
    with torch.no_grad():
        tl_stack, tl_labels = theirs.stack_head_results(-1 if layer is None else layer, **kw)
    assert labels == tl_labels
    assert_close(stack, tl_stack)


POS_SLICES = [None, -1, 3, (4,), (1, 5), (1, 9, 2), slice(2, 8), [0, 3, 5], torch.tensor([1, 2, 7]), np.array([4, 7])]


@pytest.mark.parametrize("pos_slice", POS_SLICES, ids=repr)
def test_pos_slice_forms(caches, pos_slice):
    ours, theirs = caches
    with torch.no_grad():
        for method, kw in [
            ("accumulated_resid", dict(apply_ln=True)),
            ("accumulated_resid", dict(layer=1, incl_mid=True, apply_ln=True)),
            ("decompose_resid", dict(apply_ln=True)),
            ("decompose_resid", dict(layer=1, mlp_input=True, apply_ln=True)),
            ("stack_head_results", dict(layer=1, apply_ln=True, incl_remainder=True)),
        ]:
            assert_close(getattr(ours, method)(pos_slice=pos_slice, **kw), getattr(theirs, method)(pos_slice=pos_slice, **kw))
        stack = theirs.decompose_resid(pos_slice=pos_slice)
        assert_close(ours.apply_ln_to_stack(stack, 1, pos_slice=pos_slice), theirs.apply_ln_to_stack(stack, 1, pos_slice=pos_slice))
    if isinstance(pos_slice, int):  # an int drops the position axis, as in TransformerLens
        assert ours.accumulated_resid(pos_slice=pos_slice).shape == (3, 3, 64)


@pytest.mark.parametrize("tokens, incorrect", [
    (" the", None), (" the", " of"), (42, 7), (torch.tensor(42), torch.tensor(7)),
    (torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])),  # [batch]: one token per example
    (torch.arange(12), None),  # [pos]: one token per position
    (torch.arange(36).reshape(3, 12), torch.arange(36, 72).reshape(3, 12)),  # [batch pos]
])
def test_logit_attrs(caches, tokens, incorrect):
    ours, theirs = caches
    stack = theirs.decompose_resid()
    assert_close(ours.logit_attrs(stack, tokens, incorrect), theirs.logit_attrs(stack, tokens, incorrect))


def test_logit_attrs_with_slices(caches):
    ours, theirs = caches
    last = theirs.decompose_resid(pos_slice=-1)  # [component batch d_model]
    answers, wrong = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])
    assert_close(ours.logit_attrs(last, answers, wrong, pos_slice=-1), theirs.logit_attrs(last, answers, wrong, pos_slice=-1))
    heads = theirs.stack_head_results(pos_slice=[2, 5])
    assert_close(ours.logit_attrs(heads, 42, pos_slice=[2, 5], batch_slice=[0, 2]),
                 theirs.logit_attrs(heads, 42, pos_slice=[2, 5], batch_slice=[0, 2]))
    assert_close(ours.logit_attrs(heads, 42, pos_slice=[2, 5], batch_slice=1),
                 theirs.logit_attrs(heads, 42, pos_slice=[2, 5], batch_slice=1))
    with pytest.raises(InputError, match="same shape"):
        ours.logit_attrs(last, answers, 3)


def test_negative_layer_indices(caches):
    ours, theirs = caches
    for key in [("resid_post", -1), ("resid_pre", -2), ("pattern", -1), ("scale", -1, "ln2"), ("result", -2)]:
        assert_close(ours[key], theirs[key])
    with pytest.raises(NotCachedError, match="out of range"):
        ours["resid_post", -3]


def test_stack_activation(caches):
    ours, theirs = caches
    for name in ["pattern", "resid_pre", "post"]:
        assert_close(ours.stack_activation(name), theirs.stack_activation(name))
    assert_close(ours.stack_activation("scale", 1, "ln2"), theirs.stack_activation("scale", 1, "ln2"))


def test_remove_batch_dim_works_in_place(model, bridge):
    tokens = torch.randint(0, 50257, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, ours = model.run_with_cache(tokens)
        _, theirs = bridge.run_with_cache(tokens)
        theirs.stack_head_results()  # TransformerLens computes hook_result from hook_z into its cache
    returned = ours.remove_batch_dim()  # called as a statement in notebooks
    theirs.remove_batch_dim()
    assert returned is ours and not ours.has_batch_dim
    assert ours["resid_pre", 0].shape == (9, 64) and ours["pattern", 1].shape == (4, 9, 9)
    for key in [("resid_post", 1), ("pattern", 0), ("scale",), ("scale", 0, "ln2"), ("result", 1)]:
        assert_close(ours[key], theirs[key])
    with torch.no_grad():
        assert_close(ours.accumulated_resid(apply_ln=True), theirs.accumulated_resid(apply_ln=True))
        assert_close(ours.accumulated_resid(1, apply_ln=True, pos_slice=-1), theirs.accumulated_resid(1, apply_ln=True, pos_slice=-1))
        assert_close(ours.accumulated_resid(apply_ln=True, pos_slice=-1), theirs.accumulated_resid(apply_ln=True, pos_slice=-1))
        assert_close(ours.stack_head_results(apply_ln=True), theirs.stack_head_results(apply_ln=True))
        stack = theirs.decompose_resid(apply_ln=False)
        assert_close(ours.logit_attrs(stack, torch.arange(9), has_batch_dim=False),
                     theirs.logit_attrs(stack, torch.arange(9), has_batch_dim=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ours.remove_batch_dim() is ours  # a second call changes nothing
    assert ours["resid_pre", 0].shape == (9, 64) and caught


def test_remove_batch_dim_of_a_batch_is_refused_and_changes_nothing(model, tokens):
    _, cache = model.run_with_cache(tokens)
    with pytest.raises(InputError, match="batch size 1"):
        cache.remove_batch_dim()
    assert cache.has_batch_dim and cache["resid_pre", 0].shape == (*tokens.shape, 64)


def test_to_moves_in_place(model, tokens):
    _, cache = model.run_with_cache(tokens)
    assert cache.to("meta") is cache  # the meta device stands in for a GPU on a CPU-only machine
    assert cache["resid_pre", 0].device.type == "meta" and cache["z", 1].device.type == "meta"


@pytest.mark.parametrize("layer", [None, 0, 1])
@pytest.mark.parametrize("mlp_input", [False, True])
@pytest.mark.parametrize("expand_neurons", [False, True])
@pytest.mark.parametrize("apply_ln", [False, True])
def test_get_full_resid_decomposition(caches, layer, mlp_input, expand_neurons, apply_ln):
    ours, theirs = caches
    if mlp_input and layer is None:
        with pytest.raises(InputError, match="mlp_input"):
            ours.get_full_resid_decomposition(layer, mlp_input=True)
        return
    kw = dict(mlp_input=mlp_input, expand_neurons=expand_neurons, apply_ln=apply_ln, pos_slice=[1, 4], return_labels=True)
    stack, labels = ours.get_full_resid_decomposition(layer, **kw)
    with torch.no_grad():
        tl_stack, tl_labels = theirs.get_full_resid_decomposition(layer, **kw)
    assert labels == tl_labels
    assert_close(stack, tl_stack)
    if not apply_ln:  # the parts sum to the stream they decompose
        target = ours["resid_post", 1] if layer is None else ours["resid_mid" if mlp_input else "resid_pre", layer]
        assert_close(stack.sum(0), target[:, [1, 4]])


def test_apply_ln_to_stack_refuses_a_stack_sliced_differently_from_the_scale(model):
    tokens = torch.randint(0, 50257, (1, 5), generator=torch.Generator().manual_seed(5))
    _, cache = model.run_with_cache(tokens)
    last = cache.decompose_resid(pos_slice=-1)  # [component 1 d_model]: would broadcast against [1 5 1]
    with pytest.raises(InputError, match="pos_slice"):
        cache.apply_ln_to_stack(last)
    assert cache.apply_ln_to_stack(last, pos_slice=-1).shape == last.shape


def test_compute_head_results_stores_what_transformerlens_computes(model, caches):
    _, theirs = caches
    _, cache = model.run_with_cache(PROMPT)
    assert "blocks.1.attn.hook_result" not in cache.cache_dict
    cache.compute_head_results()
    for l in range(2):
        assert_close(cache.cache_dict[f"blocks.{l}.attn.hook_result"], theirs[f"blocks.{l}.attn.hook_result"])
    assert len(cache) == len(set(cache))  # each name listed once
