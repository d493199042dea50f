"""Attribution patching equals gradient . difference computed by hand, and tracks activation patching."""

import pytest
import torch
from conftest import random_hf_model

import workbench
from workbench.methods import TARGETS, LogitDiff, activation_patching, attribution_patching
from workbench.methods.patching import LAYER_POS_TARGETS, target_hook


@pytest.fixture(scope="module")
def strong(tmp_path_factory):
    """Large random weights, so that every target's gradients and differences are O(1)."""
    path = tmp_path_factory.mktemp("strong_attr")
    random_hf_model(seed=4, n_head=3, n_embd=48, initializer_range=0.15).save_pretrained(path)
    return workbench.load_model(path, device="cpu")


def prompts():
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 50000, (2, 7), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.tensor([21, 22])
    corrupted[1, 4] = 23
    return clean, corrupted, LogitDiff(torch.tensor([5, 6]), torch.tensor([7, 8]))


def hand_attribution(model, target, clean, corrupted, metric):
    """grad of the metric on the corrupted run (autograd, retain_grad) . (clean - corrupted act)."""
    names = [target_hook(target, l) for l in range(model.cfg.n_layer)]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=names)
    acts = {}

    def keep(x, hook):
        x.retain_grad()
        acts[hook.name] = x

    def leaf(x, hook):  # make gradients flow whatever the parameters' requires_grad
        return x.detach().requires_grad_(True)

    with torch.enable_grad():
        logits = model.run_with_hooks(corrupted, fwd_hooks=[("hook_embed", leaf)] + [(n, keep) for n in names])
        metric(logits).backward()
    by_pos = target.endswith("_by_pos")
    out = []
    for n in names:
        prod = acts[n].grad * (clean_cache[n] - acts[n].detach())
        if target in LAYER_POS_TARGETS:  # [batch pos d_model]
            out.append(prod.sum((0, 2)))
        elif target.startswith("head_pattern"):  # [batch head query_pos key_pos]
            out.append(prod.sum((0, 3)).T if by_pos else prod.sum((0, 2, 3)))
        else:  # [batch pos head d_head]
            out.append(prod.sum((0, 3)) if by_pos else prod.sum((0, 1, 3)))
    return torch.stack(out)


@pytest.mark.parametrize("target", TARGETS)
def test_equals_gradient_dot_difference(strong, target):
    model = strong
    clean, corrupted, metric = prompts()
    result = attribution_patching(model, clean, corrupted, metric, target=target)
    expected = hand_attribution(model, target, clean, corrupted, metric)
    assert result.method == "attribution" and result.values.shape == expected.shape
    assert torch.allclose(result.effect, expected, atol=1e-6, rtol=1e-4)
    assert expected.abs().max() > 1e-3  # not trivially zero
    with torch.no_grad():
        assert result.baseline == pytest.approx(float(metric(model(corrupted))), abs=1e-5)


def test_noising_uses_clean_gradient(model):
    clean, corrupted, metric = prompts()
    result = attribution_patching(model, clean, corrupted, metric, target="resid_mid", direction="noise")
    expected = hand_attribution(model, "resid_mid", corrupted, clean, metric)  # roles swapped
    assert torch.allclose(result.effect, expected, atol=1e-6, rtol=1e-4)
    assert result.baseline == result.clean_value


@pytest.mark.parametrize("target", ["head_out", "head_out_by_pos"])
def test_correlates_with_activation_patching(model, target):
    clean, corrupted, metric = prompts()
    approx = attribution_patching(model, clean, corrupted, metric, target=target).effect.flatten()
    exact = activation_patching(model, clean, corrupted, metric, target=target, progress=False).effect.flatten()
    corr = torch.corrcoef(torch.stack([approx, exact]))[0, 1]
    assert corr > 0.9, f"correlation {corr:.3f}"


def test_frame_and_layers(model):
    clean, corrupted, metric = prompts()
    result = attribution_patching(model, clean, corrupted, metric, target="head_v", layers=[1])
    df = result.to_frame()
    assert len(df) == model.cfg.n_head and set(df["layer"]) == {1} and set(df["method"]) == {"attribution"}



@pytest.mark.parametrize("options, message", [
    (dict(layers=[]), "layers is empty: give at least one layer, or None for all"),
    (dict(layers=[0, 2]), r"layer 2 is out of range: the model has 2 layers \(0 to 1\)"),
    (dict(clean_tokens=[]), "clean_tokens must be a torch.Tensor of token ids, a string or a list of strings, got list"),
    (dict(corrupted_tokens=torch.zeros(1, 4)), "corrupted_tokens must be an integer tensor of token ids"),
    (dict(corrupted_tokens=torch.zeros(1, 5, dtype=torch.long)), "clean has 4 tokens, corrupted has 5"),
    (dict(target="resid"), "unknown patching target 'resid'; allowed: resid_pre"),
    (dict(direction="up"), "direction must be 'denoise'"),
])
@pytest.mark.parametrize("method", [activation_patching, attribution_patching])
def test_both_patching_methods_check_inputs_alike(model, method, options, message):
    from workbench.errors import InputError

    toks = torch.zeros(1, 4, dtype=torch.long)
    args = {"clean_tokens": toks, "corrupted_tokens": toks, "metric": LogitDiff(1, 2), **options}
    extra = {"progress": False} if method is activation_patching else {}
    with pytest.raises(InputError, match=message):
        method(model, args.pop("clean_tokens"), args.pop("corrupted_tokens"), args.pop("metric"), **args, **extra)
