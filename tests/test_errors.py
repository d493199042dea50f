"""Every error a user can cause is a WorkbenchError with a message (the CLI and the scripts print
it as one line, no traceback), and keeps the built-in base it had (KeyError, ValueError, TypeError)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import workbench
from workbench.errors import WorkbenchError
from workbench.hooks import HookPoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return workbench.load_model(tiny_model_dir, device="cpu")


def unchecked(method):
    """The method without the tests' runtime type checks (beartype would refuse the argument
    before our own check, which is what a user meets)."""
    while hasattr(method, "__wrapped__"):
        method = method.__wrapped__
    return method


def _returns_list(x, hook):
    return [1, 2]


def _wrong_shape(x, hook):
    return x[:, :1]


CASES = {
    "unknown hook": (lambda m, t: m.run_with_hooks(t, fwd_hooks=[("blocks.0.attn.hook_patern", _wrong_shape)]),
                     KeyError, "did you mean"),
    "hook returns wrong shape": (lambda m, t: m.run_with_hooks(t, fwd_hooks=[("blocks.0.hook_resid_pre", _wrong_shape)]),
                                 ValueError, "returned shape"),
    "hook returns a list": (lambda m, t: m.run_with_hooks(t, fwd_hooks=[("blocks.0.hook_resid_pre", _returns_list)]),
                            TypeError, "must return None or a Tensor"),
    "hook target of the wrong type": (lambda m, t: unchecked(type(m).resolve_hooks)(m, 3),
                                      TypeError, "hook name or a predicate"),
    "bad hook direction": (lambda m, t: unchecked(HookPoint.add_hook)(m.hook_dict["blocks.0.hook_resid_pre"],
                                                                       _returns_list, dir="sideways"),
                           ValueError, "'fwd' or 'bwd'"),
    "loss that is not a scalar": (lambda m, t: m.run_with_cache(t, incl_bwd=True, loss_fn=lambda logits: logits[0, 0]),
                                  ValueError, "scalar"),
    "not in the cache": (lambda m, t: m.run_with_cache(t, names_filter="blocks.0.hook_resid_pre")[1]["blocks.1.hook_resid_pre"],
                         KeyError, "not in this cache"),
    "remove_batch_dim of a batch": (lambda m, t: m.run_with_cache(t)[1].remove_batch_dim(), ValueError, "batch size 1"),
    "cache layer out of range": (lambda m, t: m.run_with_cache(t)[1].accumulated_resid(layer=99), ValueError, "layer must be"),
    "decompose mode": (lambda m, t: m.run_with_cache(t)[1].decompose_resid(mode="heads"), ValueError, "mode must be"),
    "GPTConfig heads": (lambda m, t: workbench.GPTConfig(n_embd=64, n_head=5), ValueError, "divisible by n_head"),
    "GPTConfig size": (lambda m, t: workbench.GPTConfig(n_layer=0), ValueError, "positive int"),
    "GPTConfig fields": (lambda m, t: workbench.GPTConfig.from_dict({"n_layers": 2}), ValueError, "unknown GPTConfig"),
    "dtype": (lambda m, t: workbench.load_model("shakespeare-2l", dtype="float8"), ValueError, "allowed: float32"),
    "unknown device": (lambda m, t: workbench.load_model("shakespeare-2l", device="gpu"), ValueError, "unknown device 'gpu'"),
    "a GPU this machine lacks": (lambda m, t: workbench.load_model("shakespeare-2l", device=f"cuda:{torch.cuda.device_count()}"),
                                 ValueError, "CUDA device|CUDA is not available"),
}


@pytest.mark.parametrize("case", CASES)
def test_user_errors_are_workbench_errors(case, tiny):
    cause, builtin, message = CASES[case]
    tokens = torch.tensor([[50256, 10, 11, 12], [50256, 13, 14, 15]])
    with pytest.raises(WorkbenchError, match=message) as info:
        cause(tiny, tokens)
    assert isinstance(info.value, builtin)  # code catching the built-in base still works
    assert str(info.value) == info.value.args[0] and "\n" not in str(info.value)  # no repr() quoting
    assert not any(hp.has_hooks for hp in tiny.hook_dict.values())  # hooks are always removed


def test_backward_cache_without_trainable_parameters(tiny_model_dir):
    frozen = workbench.load_model(tiny_model_dir, device="cpu").requires_grad_(False)
    with pytest.raises(workbench.HookError, match="require grad"):
        frozen.run_with_cache(torch.tensor([[50256, 10, 11]]), incl_bwd=True)


def _no_traceback(proc, code):
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_cli_on_a_model_with_an_impossible_config(tmp_path):
    """A model folder whose config no GPT can have: `workbench run` and the experiment script say
    so in one line (status 2) and write nothing."""
    import json

    from workbench.models.bundled import FORMAT

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"format": FORMAT, "config": {
        "n_layer": 1, "n_head": 3, "n_embd": 32, "vocab_size": 50257, "block_size": 16}}))
    from safetensors.torch import save_file

    save_file({"wte.weight": torch.zeros(2, 2)}, str(tmp_path / "bad" / "model.safetensors"))  # read before the config
    env = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    for argv in (["-m", "workbench", "run", "attention_heads"], [str(REPO / "experiments" / "attention_heads.py")]):
        proc = subprocess.run([sys.executable, *argv, "--model", str(tmp_path / "bad"), "--out", str(tmp_path / "runs")],
                              capture_output=True, text=True, env=env, timeout=300)
        _no_traceback(proc, 2)
        assert "error: " in proc.stderr and "divisible by n_head" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_train_tiny_with_an_impossible_model_shape(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "train_tiny.py"), "--n-head", "3",
                           "--out", str(tmp_path / "model")], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    _no_traceback(proc, 1)
    assert "divisible by n_head" in proc.stderr
    assert not (tmp_path / "model").exists()
