"""Plain callable metrics in sweeps: what they read is found (and checked) so only those logits are
computed, and the numbers equal a hand-written loop of one hooked forward per cell that calls the
metric on full logits, including for callables whose reads a gradient alone would get wrong."""

import functools
import warnings

import pytest
import torch
from conftest import random_hf_model

import workbench
from workbench.methods import CustomMetric, ablation_sweep, activation_patching, logit_diff
from workbench.methods.metrics import FoundReads, find_reads

TOL = 1e-5
ANSWER, WRONG = torch.tensor([5, 6]), torch.tensor([7, 8])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small model with large random weights (patches move the metric by O(1)) and a prompt pair."""
    hf = random_hf_model(seed=2, n_head=3, n_embd=48, initializer_range=0.15)
    path = tmp_path_factory.mktemp("callable")
    hf.save_pretrained(path)
    model = workbench.load_model(path, device="cpu")
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50000, (2, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.tensor([11, 12])
    corrupted[0, 3] = 13
    return model, clean, corrupted


def loop(model, clean, corrupted, metric, target):
    """One hooked forward of the corrupted prompt per cell, the clean activation restored; metric on full logits."""
    n_layer, n_pos, n_head = model.cfg.n_layer, clean.shape[1], model.cfg.n_head
    kind = {"resid_pre": "resid_pre", "head_out": "z"}[target]
    _, cache = model.run_with_cache(clean)
    out = torch.zeros(n_layer, n_pos if target == "resid_pre" else n_head)
    for l in range(n_layer):
        name = workbench.act_name(kind, l)
        for i in range(out.shape[1]):
            def hook(x, hook, i=i):
                x = x.clone()
                if target == "resid_pre":
                    x[:, i] = cache[name][:, i]
                else:
                    x[:, :, i] = cache[name][:, :, i]
                return x
            with torch.no_grad():
                out[l, i] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)]))
    return out


def plain(logits):
    b = torch.arange(logits.shape[0])
    return (logits[b, -1, ANSWER] - logits[b, -1, WRONG]).mean()


def zero_grad_position(logits):
    # Reads position 2 through a threshold that is off on the unpatched runs: zero gradient there.
    return plain(logits) + torch.relu(logits[:, 2, 9] - 1e3).mean()


def with_argmax(logits):
    return plain(logits) + (logits[:, -1].argmax(-1) == ANSWER).float().mean()


def only_argmax(logits):
    return (logits[:, -1].argmax(-1) == ANSWER).float().mean()


def log_softmax_metric(logits):
    b = torch.arange(logits.shape[0])
    return logits[:, -1].log_softmax(-1)[b, ANSWER].mean()


def max_over_positions(logits):
    return logits[:, :, 5].max(dim=1).values.mean()


def batch_dependent(logits):
    # Row 0 is scored at position 2, row 1 at the last position; normalised by the batch size it gets.
    return (logits[0, 2, 5] - logits[0, 2, 7] + logits[1, -1, 6] - logits[1, -1, 8]) / logits.shape[0]


METRICS = {
    "plain": plain,
    "partial": functools.partial(logit_diff, answer=ANSWER, wrong=WRONG),
    "zero_grad_position": zero_grad_position,
    "with_argmax": with_argmax,
    "only_argmax": only_argmax,
    "log_softmax": log_softmax_metric,
    "max_over_positions": max_over_positions,
    "batch_dependent": batch_dependent,
}


@pytest.mark.parametrize("target", ["resid_pre", "head_out"])
@pytest.mark.parametrize("name", list(METRICS))
def test_callable_sweep_equals_hook_loop(setup, target, name):
    model, clean, corrupted = setup
    metric = METRICS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = activation_patching(model, clean, corrupted, metric, target=target, progress=False)
    expected = loop(model, clean, corrupted, metric, target)
    assert torch.allclose(ours.values, expected, atol=TOL, rtol=0), (ours.values - expected).abs().max()
    if name != "only_argmax":  # the patched runs must move the metric, or the comparison says little
        assert (expected - expected[0, 0]).abs().max() > 0.01


def reads(setup, fn):
    model, clean, corrupted = setup
    with torch.no_grad():
        runs = [model(corrupted), model(clean)]
    return find_reads(CustomMetric(fn), runs)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_reads_found_under_no_grad_and_inference_mode(setup, mode):
    """Sweeps are often run inside torch.no_grad(); the gradient that finds the reads must still work."""
    model, clean, corrupted = setup
    with mode(), warnings.catch_warnings():
        warnings.simplefilter("error")
        found = reads(setup, plain)
        values = activation_patching(model, clean, corrupted, plain, target="head_out", progress=False).values
    assert isinstance(found, FoundReads) and found.vocab == (5, 6, 7, 8)
    assert torch.allclose(values, loop(model, clean, corrupted, plain, "head_out"), atol=TOL, rtol=0)


def test_reads_found_from_the_gradient(setup):
    n = setup[1].shape[1]
    for fn in (plain, METRICS["partial"]):
        found = reads(setup, fn)
        assert isinstance(found, FoundReads)
        assert (found.positions, found.vocab) == ((n - 1,), (5, 6, 7, 8))
    found = reads(setup, batch_dependent)
    assert (found.positions, found.vocab) == ((2, n - 1), (5, 6, 7, 8))
    # Reads every id at the last position: positions narrowed, the vocabulary not.
    for fn in (log_softmax_metric, with_argmax):
        found = reads(setup, fn)
        assert (found.positions, found.vocab) == ((n - 1,), None)


@pytest.mark.parametrize("fn, reason", [
    (only_argmax, "no gradient"),
    (zero_grad_position, "changes with logits outside"),
    (max_over_positions, "changes with logits outside"),
])
def test_unsafe_reads_fall_back_with_one_warning(setup, fn, reason):
    model, clean, corrupted = setup
    with pytest.warns(UserWarning, match=reason) as record:
        activation_patching(model, clean, corrupted, fn, target="head_out", progress=False)
    assert len([w for w in record if "could not establish" in str(w.message)]) == 1
    with pytest.warns(UserWarning, match=reason):
        assert not isinstance(reads(setup, fn), FoundReads)


def test_metric_sees_zeros_outside_its_reads_even_if_it_writes_into_them(setup):
    """The logits buffer is reused across cells; a metric that writes into it gets a fresh one."""
    model, clean, corrupted = setup
    nonzero_outside = []

    def messy(logits):
        outside = logits.clone()
        outside[:, -1, [5, 6, 7, 8]] = 0
        nonzero_outside.append(int((outside != 0).sum()))
        value = plain(logits)
        if not logits.requires_grad:
            logits.add_(1.0)  # writes into its input
        return value

    ours = activation_patching(model, clean, corrupted, messy, target="resid_pre", progress=False)
    assert torch.allclose(ours.values, loop(model, clean, corrupted, plain, "resid_pre"), atol=TOL, rtol=0)

    cells = torch.randn(5, 2, 1, 50257, generator=torch.Generator().manual_seed(3))
    found = FoundReads(messy, 6, positions=(5,), vocab=(5, 6, 7, 8))
    nonzero_outside.clear()
    values = found.evaluate(cells)
    assert nonzero_outside == [0] * 5
    b = torch.arange(2)
    expected = (cells[:, b, 0, ANSWER] - cells[:, b, 0, WRONG]).mean(-1)
    assert torch.allclose(values, expected)


@pytest.mark.parametrize("name", ["plain", "partial", "log_softmax", "with_argmax"])
def test_ablation_sweep_with_callable_equals_loop(setup, name):
    model, clean, _ = setup
    metric = METRICS[name]
    ours = ablation_sweep(model, clean, metric, progress=False)
    expected = torch.zeros_like(ours.values)
    for l in range(model.cfg.n_layer):
        for h in range(model.cfg.n_head):
            def hook(z, hook, h=h):
                z = z.clone()
                z[:, :, h] = 0
                return z
            with torch.no_grad():
                expected[l, h] = metric(model.run_with_hooks(clean, fwd_hooks=[(workbench.act_name("z", l), hook)]))
    assert torch.allclose(ours.values, expected, atol=TOL, rtol=0)
