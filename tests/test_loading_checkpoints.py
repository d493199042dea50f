"""A file that is not a checkpoint, or one that would need unpickling code, is a CheckpointError saying
what the file is and what is accepted; never PyTorch's advice to load it with weights_only=False."""

import argparse
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import workbench
from workbench.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
ACCEPTED = "Accepted: a directory with config.json and model.safetensors (or pytorch_model.bin), a nanoGPT ckpt.pt"
# What PyTorch's own weights-only errors say; none of it may reach a user.
UNSAFE_ADVICE = ("weights_only=False", "`weights_only` set to `False`", "Re-running", "add_safe_globals",
                 "safe_globals", "trust")


def refused(path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as e:
        workbench.load_model(path, device="cpu")
    message = str(e.value)
    for advice in UNSAFE_ADVICE:
        assert advice not in message, (advice, message)
    return message


def tiny_nanogpt_checkpoint(**extra) -> dict:
    torch.manual_seed(0)
    model = workbench.GPT(workbench.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, activation="gelu"))
    state = {f"transformer.{k}": v for k, v in model.state_dict().items() if not k.startswith("blocks")}
    for k, v in model.state_dict().items():  # nanoGPT's names, nn.Linear layout
        if k.startswith("blocks"):
            k = k.replace("blocks.", "h.").replace("ln1", "ln_1").replace("ln2", "ln_2")
            state[f"transformer.{k}"] = v
    state["transformer.ln_f.weight"] = state.pop("transformer.ln_final.weight")
    state["transformer.ln_f.bias"] = state.pop("transformer.ln_final.bias")
    state["transformer.wte.weight"] = state.pop("transformer.embed.W_E")
    state["transformer.wpe.weight"] = state.pop("transformer.pos_embed.W_pos")
    args = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50257, bias=True)
    return {"model_args": args, "model": state, **extra}


def test_a_text_file_named_ckpt_pt_is_not_a_checkpoint(tmp_path):
    shutil.copy(REPO / "README.md", tmp_path / "ckpt.pt")
    message = refused(tmp_path / "ckpt.pt", "it is a text file")
    assert "'# workbench'" in message  # what it starts with
    assert "not a checkpoint: neither a PyTorch file written by torch.save nor safetensors" in message
    assert ACCEPTED in message


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_a_text_file_as_the_weights_of_a_model_directory(tmp_path, weights):
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 1, "n_head": 2, "n_embd": 16}))
    shutil.copy(REPO / "README.md", tmp_path / weights)
    assert ACCEPTED in refused(tmp_path, f"{weights}: it is a text file")


def test_empty_and_unknown_binary_files(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    refused(tmp_path / "empty.pt", "it is an empty file, not a checkpoint")
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 4)
    refused(tmp_path / "noise.pt", r"it is an unknown binary file \(it starts b'\\x00\\x01")


def test_truncated_pytorch_and_safetensors_files(tmp_path):
    torch.save(tiny_nanogpt_checkpoint(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 100):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        refused(tmp_path / "cut.pt", "a PyTorch file, but corrupt or truncated")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64)}, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-10])
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 1}))
    refused(tmp_path, "a safetensors file, but corrupt or truncated")


def test_pickles_with_objects_a_weights_only_load_refuses(tmp_path):
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (Path.mkdir, (marker,))

    torch.save(tiny_nanogpt_checkpoint(evil=RunsCode()), tmp_path / "evil.pt")
    message = refused(tmp_path / "evil.pt", r"a PyTorch file, but it holds a Python object other than tensors \(")
    assert "never runs code" in message and ACCEPTED in message
    assert not marker.exists()
    # what real training scripts put in checkpoints: argparse options
    torch.save(tiny_nanogpt_checkpoint(args=argparse.Namespace(lr=1e-3)), tmp_path / "args.pt")
    refused(tmp_path / "args.pt", r"holds a Python object other than tensors \(argparse.Namespace\)")
    # a pickle written by pickle.dump, not torch.save
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"model": RunsCode()}, f)
    refused(tmp_path / "plain.pkl", "it is a Python pickle that torch.save did not write, not a checkpoint")
    assert not marker.exists()


def test_a_bare_safetensors_file_and_a_checkpoint_without_its_config(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(4)}, str(tmp_path / "model.safetensors"))
    refused(tmp_path / "model.safetensors", "a safetensors file, which holds weights but no configuration")
    ckpt = tiny_nanogpt_checkpoint()
    del ckpt["model_args"]["n_head"]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    refused(tmp_path / "ckpt.pt", "model_args lacks n_head")
    torch.save({"model_args": tiny_nanogpt_checkpoint()["model_args"], "model": [1, 2]}, tmp_path / "ckpt.pt")
    refused(tmp_path / "ckpt.pt", "'model' is not a state dict")


def test_both_torch_save_formats_still_load(tmp_path):
    ckpt = tiny_nanogpt_checkpoint(iter_num=3, best_val_loss=1.5, config={"lr": 1e-3})
    torch.save(ckpt, tmp_path / "zip.pt")
    torch.save(ckpt, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("zip.pt", "legacy.pt"):
        model = workbench.load_model(tmp_path / name, device="cpu")
        assert torch.equal(model.W_E, ckpt["model"]["transformer.wte.weight"])
        assert torch.equal(model.blocks[0].attn.c_attn.weight, ckpt["model"]["transformer.h.0.attn.c_attn.weight"])
