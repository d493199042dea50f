"""Bad input gets a clear exception type and a message saying what was wrong and what is allowed."""

import json

import pytest
import torch

import workbench
from workbench.errors import CheckpointError, ContextLengthError, InputError, ModelNotFoundError


def test_prompt_longer_than_context(model):
    with pytest.raises(ContextLengthError, match=r"65 tokens long.*block_size\) is 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_empty_prompt(model):
    with pytest.raises(InputError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(InputError, match="empty"):
        model.to_tokens("", prepend_bos=False)


EMPTY = "the prompt is empty \\(no text\\)"


def test_prompt_with_no_text_is_refused_not_run_as_bos_alone(model):
    # Empty text used to become [BOS] and run; ids that are BOS alone stay allowed on purpose.
    for call in (lambda t: model(t), lambda t: model.run_with_cache(t), lambda t: model.run_with_hooks(t),
                 lambda t: model.generate(t, max_new_tokens=1), lambda t: model.to_str_tokens(t)):
        with pytest.raises(InputError, match=EMPTY):
            call("")
    with pytest.raises(InputError, match=f"^input\\[1\\]: {EMPTY}"):
        model(["some text", ""])  # the argument is `input`, as TransformerLens names it
    with pytest.raises(InputError, match=f"^text: {EMPTY}"):
        model.to_tokens("")
    bos = torch.tensor([[50256]])
    assert model(bos).shape == (1, 1, model.cfg.d_vocab)
    assert model.to_tokens(" ").tolist() == [[50256, 220]]  # a space is text


def test_methods_name_the_empty_prompt(model):
    from workbench.methods import Ablation, TokenLogProb, ablate, ablation_sweep, activation_patching, logit_lens

    metric = TokenLogProb(11)
    with pytest.raises(InputError, match=f"^tokens: {EMPTY}"):
        logit_lens(model, "")
    with pytest.raises(InputError, match=f"^clean_tokens: {EMPTY}"):
        activation_patching(model, "", "John", metric, progress=False)
    with pytest.raises(InputError, match=f"^corrupted_tokens: {EMPTY}"):
        activation_patching(model, "Mary", "", metric, progress=False)
    with pytest.raises(InputError, match=f"^tokens: {EMPTY}"):
        ablation_sweep(model, "", metric, progress=False)
    with pytest.raises(InputError, match=f"^tokens: {EMPTY}"):
        ablate(model, "", Ablation("zero", heads=[(0, 0)]))
    with pytest.raises(InputError, match=f"^reference: {EMPTY}"):
        ablate(model, "Mary", Ablation("mean", heads=[(0, 0)]), reference="")
    bos = torch.tensor([[50256]])  # BOS alone, as ids: allowed
    assert logit_lens(model, bos).log_probs.shape == (model.cfg.n_layer + 1, 1, 1, model.cfg.d_vocab)
    assert ablation_sweep(model, bos, metric, progress=False).values.shape == (model.cfg.n_layer, model.cfg.n_head)


@pytest.mark.parametrize("bad", [torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.bool)])
def test_tokens_of_wrong_dtype(model, bad):
    with pytest.raises(InputError, match="integer tensor of token ids, got dtype"):
        model(bad)


def test_tokens_of_wrong_shape_or_range(model):
    with pytest.raises(InputError, match=r"shape \[batch pos\] or \[pos\], got shape \(1, 2, 3\)"):
        model(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(InputError, match=r"token id 50257 is out of range: ids must be in \[0, 50256\]"):
        model(torch.tensor([[1, 50257]]))
    with pytest.raises(InputError, match="got list"):
        model([1, 2, 3])


def test_not_a_single_token(model):
    with pytest.raises(InputError, match=r"' Marylebone' is \d tokens"):
        model.to_single_token(" Marylebone")


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 2}))
    with pytest.raises(ModelNotFoundError, match="no weights: expected one of model.safetensors"):
        workbench.load_model(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        workbench.load_model(tmp_path)


def test_unknown_model_name():
    with pytest.raises(ModelNotFoundError, match="no model named 'gpt3'.*gpt2-medium"):
        workbench.load_model("gpt3")


def test_hub_unreachable_says_how_to_pass_a_local_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached; HF_HUB_OFFLINE=1 in the tests
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"not in the local HF cache.*load_model\('/path/to/gpt2-medium'\)"):
        workbench.load_model("gpt2-medium")


def test_truncated_safetensors(hf_small_dir, tmp_path):
    data = (hf_small_dir / "model.safetensors").read_bytes()
    (tmp_path / "config.json").write_bytes((hf_small_dir / "config.json").read_bytes())
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        workbench.load_model(tmp_path)


def test_corrupt_bin_and_truncated_nanogpt(tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        workbench.load_model(tmp_path / "ckpt.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="needs 'model_args' and 'model'"):
        workbench.load_model(tmp_path / "other.pt")
    good = tmp_path / "good.pt"
    torch.save({"model_args": {}, "model": {"w": torch.zeros(100)}}, good)
    good.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="cannot read weights"):
        workbench.load_model(good)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model_args": {}, "model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        workbench.load_model(tmp_path / "evil.pt")


def test_wrong_shapes_in_checkpoint(hf_small, tmp_path):
    from safetensors.torch import load_file, save_file

    hf_small.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    key = next(k for k in state if k.endswith("h.0.mlp.c_fc.weight"))
    state[key] = state[key][:, :-1].contiguous()
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"blocks.0.mlp.c_fc.weight: checkpoint has shape \(255, 64\)"):
        workbench.load_model(tmp_path)


def test_bad_dtype_name(hf_small_dir):
    with pytest.raises(ValueError, match="allowed: float32, bfloat16, float16"):
        workbench.load_model(hf_small_dir, dtype="int8")


def test_untied_unembedding_is_refused_whatever_the_key_order(tmp_path):
    from test_parity_hf import nanogpt_checkpoint
    from conftest import random_hf_model

    ckpt = nanogpt_checkpoint(random_hf_model(seed=5, activation_function="gelu"), compiled=False)
    state = ckpt["model"]
    lm_head = state.pop("lm_head.weight") + 1.0  # no longer the token embedding
    ckpt["model"] = {"lm_head.weight": lm_head, **state}  # before wte in the file
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="untied unembeddings are not supported"):
        workbench.load_model(tmp_path / "ckpt.pt")
