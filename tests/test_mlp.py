"""The MLP equals transformers' GPT2MLP and a hand-written c_fc -> GELU -> c_proj, on every path it
takes: oneDNN's fused c_fc + GELU (CPU fp32, no gradient, hook_pre unhooked) and the plain one."""

import copy
import platform

import pytest
import torch
import torch.nn.functional as F
from conftest import random_hf_model
from torch.profiler import profile

import workbench
from workbench.models import GPTConfig, mlp as mlp_module

TOL = 1e-5
X86 = platform.machine().lower() in {"x86_64", "amd64"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = random_hf_model(seed=5, initializer_range=0.1)
    path = tmp_path_factory.mktemp("mlp_pair")
    hf.save_pretrained(path)
    return hf, workbench.load_model(path, device="cpu")


def by_hand(mlp, x, approximate="tanh"):
    pre = x @ mlp.c_fc.weight.T + mlp.c_fc.bias
    return F.gelu(pre, approximate=approximate) @ mlp.c_proj.weight.T + mlp.c_proj.bias


def fused_kernel_ran(fn) -> bool:
    with profile() as prof:
        fn()
    return any("_linear_pointwise" in e.key for e in prof.key_averages())


def test_equals_transformers_mlp_fused_and_not(pair, monkeypatch):
    hf, model = pair
    x = torch.randn(3, 7, model.cfg.d_model)
    with torch.no_grad():
        reference = hf.transformer.h[1].mlp(x)
        fused = model.blocks[1].mlp(x)
        monkeypatch.setattr(mlp_module, "FUSE_GELU", False)
        plain = model.blocks[1].mlp(x)
    torch.testing.assert_close(fused, reference, atol=TOL, rtol=0)
    torch.testing.assert_close(plain, reference, atol=TOL, rtol=0)


@pytest.mark.skipif(not X86, reason="oneDNN's fused kernel is used on x86 CPUs only")
def test_fused_kernel_is_used_where_it_applies(pair):
    """Including on weights loaded from a transformers checkpoint (stored [in, out], copied to [out, in])."""
    _, model = pair
    mlp = model.blocks[0].mlp
    x = torch.randn(2, 5, model.cfg.d_model)
    with torch.no_grad():
        assert fused_kernel_ran(lambda: mlp(x))
        with model.hooks(fwd_hooks=[("blocks.0.mlp.hook_pre", lambda act, hook: None)]):
            assert not fused_kernel_ran(lambda: mlp(x))  # the pre-activation is hooked: computed on its own
        assert fused_kernel_ran(lambda: mlp(x))  # and fused again once the hook is gone
        wide = copy.deepcopy(mlp).double()
        assert not fused_kernel_ran(lambda: wide(x.double()))  # float64: not a dtype the kernel takes
    assert not fused_kernel_ran(lambda: mlp(x.requires_grad_()))  # a gradient to follow
    viewed = copy.deepcopy(mlp)
    viewed.c_fc.weight = torch.nn.Parameter(mlp.c_fc.weight.detach().T.contiguous().T)  # a transposed view
    with torch.no_grad():
        assert not fused_kernel_ran(lambda: viewed(x))  # oneDNN would re-lay it out at every call
        torch.testing.assert_close(viewed(x), by_hand(mlp, x), atol=TOL, rtol=0)


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu"])
def test_shapes_layouts_and_activations_equal_hand_loop(activation):
    torch.manual_seed(0)
    model = workbench.GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, activation=activation)).eval()
    mlp = model.blocks[0].mlp
    approximate = "tanh" if activation == "gelu_tanh" else "none"
    with torch.no_grad():
        for x in [torch.randn(4, 6, 32), torch.randn(6, 4, 32).transpose(0, 1), torch.randn(1, 1, 32) * 30,
                  torch.randn(4, 6, 64)[..., ::2]]:
            torch.testing.assert_close(mlp(x), by_hand(mlp, x, approximate), atol=TOL, rtol=1e-5)
        assert mlp(torch.randn(0, 3, 32)).shape == (0, 3, 32)
        mlp.c_fc.weight.mul_(2.0)  # an in-place edit of the weights is seen
        x = torch.randn(2, 3, 32)
        torch.testing.assert_close(mlp(x), by_hand(mlp, x, approximate), atol=TOL, rtol=1e-5)


def test_hooks_see_pre_and_post_activations(pair):
    _, model = pair
    mlp = model.blocks[0].mlp
    x = torch.randn(2, 5, model.cfg.d_model)
    seen = {}
    pre_expected = x @ mlp.c_fc.weight.T + mlp.c_fc.bias
    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", lambda a, hook: seen.update(post=a))]):
        mlp(x)  # only hook_post: the fused path, whose output hook_post sees
    torch.testing.assert_close(seen["post"], F.gelu(pre_expected, approximate="tanh"), atol=TOL, rtol=0)
    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.0.mlp.hook_pre", lambda a, hook: seen.update(pre=a)),
                                                  ("blocks.0.mlp.hook_pre", lambda a, hook: a * 0)]):
        out = mlp(x)
    torch.testing.assert_close(seen["pre"], pre_expected, atol=TOL, rtol=0)
    torch.testing.assert_close(out, mlp.c_proj.bias.expand_as(out), atol=TOL, rtol=0)  # the edit took effect


def test_gradients_equal_autograd_of_hand_loop(pair):
    _, model = pair
    mlp = model.blocks[1].mlp
    x = torch.randn(2, 4, model.cfg.d_model, requires_grad=True)
    (grad,) = torch.autograd.grad(mlp(x).square().sum(), x)
    (expected,) = torch.autograd.grad(by_hand(mlp, x).square().sum(), x)
    torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(not X86, reason="oneDNN's fused kernel is used on x86 CPUs only")
def test_module_hooks_on_c_fc_still_run(pair):
    """A PyTorch forward hook on c_fc sees its output (the plain path runs while one is attached)."""
    _, model = pair
    mlp = model.blocks[0].mlp
    x = torch.randn(2, 5, model.cfg.d_model)
    seen = []
    handle = mlp.c_fc.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        with torch.no_grad():
            assert not fused_kernel_ran(lambda: mlp(x))
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0], x @ mlp.c_fc.weight.T + mlp.c_fc.bias, atol=TOL, rtol=0)


def test_a_failing_fused_kernel_falls_back_and_memory_errors_surface(pair, monkeypatch):
    """If this torch's internal op does not take our call, the plain path runs (and fusion stays off);
    running out of memory is raised, not retried."""
    _, model = pair
    mlp = model.blocks[0].mlp
    x = torch.randn(2, 5, model.cfg.d_model)

    def wrong_signature(*args):
        raise RuntimeError("_linear_pointwise() expected 5 arguments")

    monkeypatch.setattr(mlp_module, "_FUSED_KERNEL", True)
    monkeypatch.setattr(mlp_module, "_KERNEL", wrong_signature)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), by_hand(mlp, x), atol=TOL, rtol=0)
    assert mlp_module._FUSED_KERNEL is False

    def no_memory(*args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    monkeypatch.setattr(mlp_module, "_FUSED_KERNEL", True)
    monkeypatch.setattr(mlp_module, "_KERNEL", no_memory)
    with torch.no_grad(), pytest.raises(RuntimeError, match="can't allocate memory"):
        mlp(x)
