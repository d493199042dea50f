"""Loading: logits equal transformers' GPT2LMHeadModel on the same weights, in every format."""

import pytest
import torch
from conftest import random_hf_model

import workbench
from workbench.models.config import PRESETS


def max_diff(model, hf, tokens):
    with torch.no_grad():
        return (model(tokens) - hf(tokens).logits).abs().max().item()


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_small_model_matches_transformers(hf_small, tmp_path, tokens, safe):
    if safe:
        hf_small.save_pretrained(tmp_path)
    else:  # transformers 5 only writes safetensors; older releases wrote this file
        hf_small.config.save_pretrained(tmp_path)
        torch.save(hf_small.state_dict(), tmp_path / "pytorch_model.bin")
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).exists()
    model = workbench.load_model(tmp_path, device="cpu")
    assert max_diff(model, hf_small, tokens) <= 1e-4


def test_124m_shape_matches_transformers(tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    hf.save_pretrained(tmp_path)
    model = workbench.load_model(tmp_path, device="cpu")
    assert model.cfg == PRESETS["gpt2"]
    tokens = torch.randint(0, 50257, (2, 20), generator=torch.Generator().manual_seed(0))
    assert max_diff(model, hf, tokens) <= 1e-4

    # The hub path: load_model("gpt2") asks huggingface_hub for config.json and model.safetensors
    import huggingface_hub

    asked = []

    def fake_download(repo, filename, **kwargs):
        asked.append((repo, filename))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, filename: None)
    monkeypatch.setattr(workbench.models.hub, "hub_problem", lambda *a, **k: None)  # "the hub answers"
    del model
    from_hub = workbench.load_model("gpt2", device="cpu")
    assert asked == [("openai-community/gpt2", "config.json"), ("openai-community/gpt2", "model.safetensors")]
    assert max_diff(from_hub, hf, tokens) <= 1e-4


def nanogpt_checkpoint(hf, *, bias=True, compiled=True):
    """A nanoGPT ckpt.pt dict made from a transformers model (nn.Linear layout, tied lm_head)."""
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    state = {}
    for k, v in hf.state_dict().items():
        if not bias and k.endswith("bias"):
            continue
        state[("_orig_mod." if compiled else "") + k] = v.T.clone() if k.endswith(conv1d) else v.clone()
    c = hf.config
    args = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.n_positions,
                bias=bias, vocab_size=c.vocab_size, dropout=0.0)
    return {"model_args": args, "model": state, "iter_num": 0, "best_val_loss": 1.0, "config": {}}


def test_nanogpt_checkpoint_matches(tmp_path, tokens):
    # nanoGPT's MLP uses exact GELU, so the reference is a transformers model with "gelu".
    hf = random_hf_model(seed=3, activation_function="gelu")
    torch.save(nanogpt_checkpoint(hf), tmp_path / "ckpt.pt")
    model = workbench.load_model(tmp_path / "ckpt.pt", device="cpu")
    assert model.cfg.activation == "gelu"
    assert max_diff(model, hf, tokens) <= 1e-4


def test_nanogpt_checkpoint_without_bias(tmp_path, tokens):
    hf = random_hf_model(seed=4, activation_function="gelu")
    with torch.no_grad():  # bias=False nanoGPT == transformers with every bias zero
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    torch.save(nanogpt_checkpoint(hf, bias=False, compiled=False), tmp_path / "ckpt.pt")
    model = workbench.load_model(tmp_path / "ckpt.pt", device="cpu")
    assert model.blocks[0].attn.c_attn.bias is None and model.ln_final.bias is None
    assert max_diff(model, hf, tokens) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(hf_small_dir, tokens, dtype):
    ref = workbench.load_model(hf_small_dir, device="cpu")
    half = workbench.load_model(hf_small_dir, device="cpu", dtype=dtype)
    assert half.dtype == dtype
    with torch.no_grad():
        out = half(tokens)
    assert out.dtype == dtype
    assert (out.float() - ref(tokens)).abs().max() < 0.1
    assert (out.float().argmax(-1) == ref(tokens).argmax(-1)).float().mean() > 0.9


def test_per_head_weight_views_share_storage(model):
    attn = model.blocks[0].attn
    n_head, d_head, d_model = model.cfg.n_head, model.cfg.d_head, model.cfg.d_model
    assert attn.W_Q.shape == (n_head, d_model, d_head) and attn.W_O.shape == (n_head, d_head, d_model)
    # W_K[h] maps d_model to head h's keys, exactly the rows of c_attn for that head
    h = 1
    rows = attn.c_attn.weight[d_model + h * d_head : d_model + (h + 1) * d_head]
    assert torch.equal(attn.W_K[h], rows.T)
    assert attn.W_Q.untyped_storage().data_ptr() == attn.c_attn.weight.untyped_storage().data_ptr()
