"""Ablation equals hand-written hooks; the batched head sweep equals one forward per head."""

import pytest
import torch

from workbench.errors import InputError
from workbench.methods import Ablation, LogitDiff, ablate, ablation_sweep


def tokens_and_reference():
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 50000, (3, 6), generator=g), torch.randint(0, 50000, (4, 6), generator=g)


def draw(n_reference, batch, seed):
    """The documented resample draw: one reference row per prompt."""
    return torch.randint(n_reference, (batch,), generator=torch.Generator().manual_seed(seed))


def hand_value(model, method, name, reference, batch, seed):
    """What an ablated activation becomes, computed from a plain cache of the reference run."""
    with torch.no_grad():
        _, cache = model.run_with_cache(reference, names_filter=[name])
    act = cache[name]
    if method == "mean":
        return act.mean(0, keepdim=True)
    return act[draw(reference.shape[0], batch, seed)]


def hand_logits(model, tokens, hooks):
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_heads_equal_hand_hook(model, method):
    tokens, reference = tokens_and_reference()
    z0, z1 = "blocks.0.attn.hook_z", "blocks.1.attn.hook_z"
    value = {n: (None if method == "zero" else hand_value(model, method, n, reference, 3, seed=5)) for n in (z0, z1)}

    def knock_out(heads):
        def hook(z, hook):
            z = z.clone()
            for h in heads:
                z[:, :, h] = 0 if value[hook.name] is None else value[hook.name][:, :, h]
            return z
        return hook

    expected = hand_logits(model, tokens, [(z0, knock_out([1])), (z1, knock_out([0, 3]))])
    got = ablate(model, tokens, Ablation(method, heads=[(0, 1), (1, 0), (1, 3)]), reference=reference, seed=5)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, hand_logits(model, tokens, []), atol=1e-3)


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_layers_and_neurons_equal_hand_hook(model, method):
    tokens, reference = tokens_and_reference()
    cases = [
        (Ablation(method, attn_layers=[1]), "blocks.1.hook_attn_out", None),
        (Ablation(method, mlp_layers=[0]), "blocks.0.hook_mlp_out", None),
        (Ablation(method, neurons=[(1, 3), (1, 200)]), "blocks.1.mlp.hook_post", [3, 200]),
    ]
    for ablation, name, index in cases:
        value = None if method == "zero" else hand_value(model, method, name, reference, 3, seed=2)

        def hook(x, hook, value=value, index=index):
            new = torch.zeros_like(x) if value is None else value.expand_as(x).clone()
            if index is None:
                return new
            x = x.clone()
            x[:, :, index] = new[:, :, index]
            return x

        expected = hand_logits(model, tokens, [(name, hook)])
        got = ablate(model, tokens, ablation, reference=reference, seed=2)
        assert torch.allclose(got, expected, atol=1e-5), ablation


def test_mean_over_own_batch_by_default(model):
    tokens, _ = tokens_and_reference()
    assert torch.allclose(ablate(model, tokens, Ablation("mean", heads=[(0, 2)])),
                          ablate(model, tokens, Ablation("mean", heads=[(0, 2)]), reference=tokens))


def test_resample_is_seeded(model):
    tokens, reference = tokens_and_reference()
    a = ablate(model, tokens, Ablation("resample", mlp_layers=[0]), reference=reference, seed=1)
    b = ablate(model, tokens, Ablation("resample", mlp_layers=[0]), reference=reference, seed=1)
    c = ablate(model, tokens, Ablation("resample", mlp_layers=[0]), reference=reference, seed=3)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_sweep_equals_one_forward_per_head(model, method):
    tokens, reference = tokens_and_reference()
    metric = LogitDiff(torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10]))
    result = ablation_sweep(model, tokens, metric, method=method, reference=reference, seed=4, progress=False)
    expected = torch.tensor([
        [float(metric(ablate(model, tokens, Ablation(method, heads=[(l, h)]), reference=reference, seed=4)))
         for h in range(model.cfg.n_head)]
        for l in range(model.cfg.n_layer)
    ])
    assert torch.allclose(result.values, expected, atol=1e-4)
    with torch.no_grad():
        assert result.baseline == pytest.approx(float(metric(model(tokens))), abs=1e-5)
    df = result.to_frame()
    assert list(df.columns[:4]) == ["layer", "head", "value", "effect"] and len(df) == expected.numel()


def test_sweep_with_plain_callable_and_small_chunks(model):
    tokens, _ = tokens_and_reference()
    fast = ablation_sweep(model, tokens, LogitDiff(1, 2), progress=False)
    slow = ablation_sweep(model, tokens, lambda lg: (lg[:, -1, 1] - lg[:, -1, 2]).mean(), max_batch=2, progress=False)
    assert torch.allclose(fast.values, slow.values, atol=1e-5)


def test_ablation_frame():
    df = Ablation("mean", heads=[(0, 1)], mlp_layers=[2], neurons=[(1, 7)]).to_frame()
    assert list(df.columns) == ["method", "component", "layer", "index"]
    assert df["component"].tolist() == ["head", "mlp", "neuron"] and df["layer"].tolist() == [0, 2, 1]
    assert df["index"].isna().tolist() == [False, True, False] and df["index"].iloc[2] == 7


# ---------------------------------------------------------------------- bad input


def test_empty_reference_for_mean(model):
    tokens, _ = tokens_and_reference()
    empty = torch.zeros(0, 6, dtype=torch.long)
    with pytest.raises(InputError, match="mean ablation needs a non-empty reference batch"):
        ablate(model, tokens, Ablation("mean", heads=[(0, 0)]), reference=empty)
    with pytest.raises(InputError, match="mean ablation needs a non-empty reference batch"):
        ablation_sweep(model, tokens, LogitDiff(1, 2), method="mean", reference=empty, progress=False)


def test_reference_of_other_length(model):
    tokens, _ = tokens_and_reference()
    with pytest.raises(InputError, match="reference batch has 4 positions but the prompts have 6"):
        ablate(model, tokens, Ablation("resample", heads=[(0, 0)]), reference=torch.zeros(2, 4, dtype=torch.long))


def test_out_of_range(model):
    tokens, _ = tokens_and_reference()
    with pytest.raises(InputError, match=r"head 4 \(layer 1\) is out of range: the model has 4 heads"):
        ablate(model, tokens, Ablation(heads=[(1, 4)]))
    with pytest.raises(InputError, match=r"layer 5 is out of range: the model has 2 layers"):
        ablate(model, tokens, Ablation(mlp_layers=[5]))
    with pytest.raises(InputError, match=r"neuron 256 \(layer 0\) is out of range: the MLP has 256 neurons"):
        ablate(model, tokens, Ablation(neurons=[(0, 256)]))


def test_bad_ablation_spec():
    with pytest.raises(InputError, match="unknown ablation method 'median'; allowed: zero, mean, resample"):
        Ablation("median", heads=[(0, 0)])
    with pytest.raises(InputError, match="needs something to ablate"):
        Ablation("zero")
    with pytest.raises(InputError, match=r"\(layer, index\) pair"):
        Ablation(heads=[(0, 1, 2)])


def test_sweep_refuses_hooks_left_attached(model):
    tokens, _ = tokens_and_reference()
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: 0 * z)]):
        with pytest.raises(InputError, match="detach them first"):
            ablation_sweep(model, tokens, LogitDiff(1, 2), progress=False)
    assert not any(point.has_hooks for point in model.hook_dict.values())



@pytest.mark.parametrize("reference, message", [
    ([], "got an empty list"),  # issue 12.5: was AttributeError: 'list' object has no attribute 'shape'
    ((), "got an empty tuple"),
    ("", r"reference: the prompt is empty \(no text\)"),
    (torch.zeros(0, 6, dtype=torch.long), r"got a tensor of shape \(0, 6\)"),
    (torch.zeros(2, 6), "reference must be an integer tensor of token ids, got dtype torch.float32"),
    (torch.zeros(2, 6, 1, dtype=torch.long), r"reference must have shape \[batch pos\] or \[pos\]"),
])
def test_bad_reference_is_named(model, reference, message):
    tokens, _ = tokens_and_reference()
    with pytest.raises(InputError, match=message):
        ablate(model, tokens, Ablation("mean", heads=[(0, 0)]), reference=reference)
    with pytest.raises(InputError, match=message):
        ablation_sweep(model, tokens, LogitDiff(1, 2), method="resample", reference=reference, progress=False)


def test_bool_is_not_an_index():
    with pytest.raises(InputError, match="the layer in heads must be an integer, got bool True"):
        Ablation(heads=[(True, 1)])
    with pytest.raises(InputError, match="each of mlp_layers must be an integer, got bool False"):
        Ablation(mlp_layers=[False])


@pytest.mark.parametrize("max_batch", [0, -2])
def test_max_batch_must_be_positive(model, max_batch):
    tokens, _ = tokens_and_reference()
    with pytest.raises(InputError, match=f"max_batch must be a positive number of sequences per forward or None, got {max_batch}"):
        ablation_sweep(model, tokens, LogitDiff(1, 2), max_batch=max_batch, progress=False)
