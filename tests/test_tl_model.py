"""The model's TransformerLens surface: `embed`, `pos_embed`, `unembed` and the embedding weights mean
what they mean in TransformerLens, and `cfg` has HookedTransformerConfig's names with its values. Each
is compared with TransformerLens 4.x (TransformerBridge) on the same weights."""

import copy
import pickle

import pytest
import torch

import workbench
from workbench.models import PRESETS

TOL = 1e-4


@pytest.fixture
def resid(model, tokens):
    g = torch.Generator().manual_seed(2)
    return torch.randn(*tokens.shape, model.cfg.d_model, generator=g)


def close(a, b):
    return a.shape == b.shape and (a - b).abs().max().item() <= TOL


def test_embed_is_the_token_embedding_only(model, bridge, tokens):
    with torch.no_grad():
        ours = model.embed(tokens)
        assert close(ours, bridge.embed(tokens))
        # no positional part: the same token at two positions gets the same vector
        twice = torch.tensor([[464, 464]])
        same = model.embed(twice)
        assert torch.equal(same[0, 0], same[0, 1])
        assert not torch.allclose(ours, model.embed_input(tokens))


def test_pos_embed_gives_the_position_embeddings(model, bridge, tokens):
    batch, pos = tokens.shape
    with torch.no_grad():
        ours = model.pos_embed(tokens)
        # the bridge's pos_embed takes position ids (TransformerLens's HookedTransformer took tokens)
        theirs = bridge.pos_embed(torch.arange(pos)[None]).expand(batch, -1, -1)
        assert close(ours, theirs)
        _, tl_cache = bridge.run_with_cache(tokens, names_filter="hook_pos_embed")
        assert close(ours, tl_cache["hook_pos_embed"])
        assert torch.equal(model.pos_embed(tokens.flip(-1)), ours)  # only the shape of tokens is read


def test_embed_input_is_resid_pre_of_block_0(model, bridge, tokens):
    with torch.no_grad():
        _, tl_cache = bridge.run_with_cache(tokens, names_filter="blocks.0.hook_resid_pre")
        assert close(model.embed_input(tokens), tl_cache["blocks.0.hook_resid_pre"])
        assert close(model.embed_input(tokens), model.embed(tokens) + model.pos_embed(tokens))


def test_unembed_of_ln_final_matches_transformerlens(model, bridge, resid):
    with torch.no_grad():
        ours = model.unembed(model.ln_final(resid))
        assert close(ours, bridge.unembed(bridge.ln_final(resid)))
        assert close(model.logits_from_resid(resid), ours)
        # a stack of normalised residual streams (a logit lens) unembeds like one stream
        stack = torch.stack([resid, 2 * resid])
        assert close(model.unembed(stack), bridge.unembed(stack))


def test_unembed_of_the_final_resid_gives_the_logits(model, bridge, tokens):
    with torch.no_grad():
        tl_logits, tl_cache = bridge.run_with_cache(tokens)
        final = tl_cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
        assert close(model.unembed(model.ln_final(final)), tl_logits)
        assert close(model.unembed(tl_cache["ln_final.hook_normalized"] * model.ln_final.weight
                                   + model.ln_final.bias), tl_logits)


def test_unembed_does_not_apply_ln_final_again(model, resid):
    """The old `unembed` applied ln_final itself, so unembed(ln_final(x)) normalised twice."""
    with torch.no_grad():
        assert close(model.unembed(resid), resid @ model.W_U)
        assert not torch.allclose(model.unembed(resid), model.logits_from_resid(resid), atol=1e-2)


def test_weights_equal_transformerlens(model, bridge):
    pairs = {
        "W_E": (model.W_E, bridge.W_E), "W_pos": (model.W_pos, bridge.W_pos),
        "W_U": (model.W_U, bridge.W_U), "b_U": (model.b_U, bridge.b_U),
        "embed.W_E": (model.embed.W_E, bridge.embed.W_E), "pos_embed.W_pos": (model.pos_embed.W_pos, bridge.pos_embed.W_pos),
        "unembed.W_U": (model.unembed.W_U, bridge.unembed.W_U), "unembed.b_U": (model.unembed.b_U, bridge.unembed.b_U),
    }
    for name, (ours, theirs) in pairs.items():
        assert ours.shape == theirs.shape and torch.equal(ours.detach(), theirs.detach()), name


def test_unembedding_is_tied_to_the_token_embedding(model):
    assert model.W_U.data_ptr() == model.W_E.data_ptr() and torch.equal(model.W_U, model.W_E.T)
    assert model.W_E is model.embed.W_E and model.W_pos is model.pos_embed.W_pos
    # the tied weight is saved once, under the component's name
    keys = set(model.state_dict())
    assert {"embed.W_E", "pos_embed.W_pos"} <= keys and not any(k.startswith("unembed") for k in keys)
    fresh = workbench.GPT(workbench.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    with torch.no_grad():
        fresh.embed.W_E[3, 0] = 7.0
    assert fresh.W_U[0, 3] == 7.0 and fresh.b_U.shape == (11,) and not fresh.b_U.any()


def test_embed_outputs_are_hook_embed_and_hook_pos_embed(model, tokens):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=["hook_embed", "hook_pos_embed"])
        assert torch.equal(cache["hook_embed"], model.embed(tokens))
        assert torch.equal(cache["hook_pos_embed"], model.pos_embed(tokens))


CFG_FIELDS = [
    "n_layers", "n_heads", "n_ctx", "d_vocab", "d_model", "d_head", "d_mlp", "act_fn", "normalization_type",
    "positional_embedding_type", "device", "dtype", "eps", "attn_only", "use_attn_result", "final_rms",
    "default_prepend_bos", "d_vocab_out",
    # read by transformer_lens.patching
    "n_key_value_heads", "use_split_qkv_input",
]


@pytest.mark.parametrize("field", CFG_FIELDS)
def test_cfg_field_equals_transformerlens(model, bridge, field):
    assert getattr(model.cfg, field) == getattr(bridge.cfg, field)


def test_cfg_fields_the_bridge_names_differently(model, bridge):
    # the bridge keeps these under other names (HookedTransformerConfig's original_architecture and
    # init_range are the bridge's architecture and initializer_range)
    assert model.cfg.original_architecture == bridge.cfg.architecture == "GPT2LMHeadModel"
    assert model.cfg.init_range == bridge.cfg.initializer_range
    assert model.cfg.tokenizer_name == "gpt2"  # the bridge was booted with a tokenizer object: None
    assert model.cfg.model_name == model.name  # the name or path load_model was given, as from_pretrained's


def test_cfg_keeps_nanogpt_names_and_derives_transformerlens_names():
    cfg = workbench.GPTConfig(n_layer=3, n_head=4, n_embd=32, vocab_size=100, block_size=16, activation="gelu")
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_vocab, cfg.n_ctx, cfg.d_head, cfg.d_mlp) == (3, 4, 32, 100, 16, 8, 128)
    assert cfg.act_fn == "gelu" and PRESETS["gpt2"].act_fn == "gelu_new"
    assert set(cfg.to_dict()) == {"n_layer", "n_head", "n_embd", "vocab_size", "block_size", "bias",
                                  "layer_norm_eps", "activation", "mlp_ratio"}  # what a saved config holds
    with pytest.raises(AttributeError):
        cfg.n_layers = 5  # derived: read-only


def test_cfg_device_dtype_and_name_follow_the_model(model):
    assert PRESETS["gpt2"].device is None  # a shared config belongs to no model
    twin = copy.deepcopy(model)
    twin.name = "twin"
    twin.to(torch.float64)
    assert (twin.cfg.dtype, twin.cfg.model_name, twin.cfg.device) == (torch.float64, "twin", "cpu")
    assert (model.cfg.dtype, model.cfg.model_name) == (torch.float32, model.name)  # the original is unchanged
    assert twin.cfg == model.cfg  # the same shape
    again = pickle.loads(pickle.dumps(twin))
    assert (again.cfg.dtype, again.cfg.model_name) == (torch.float64, "twin")
    assert workbench.GPT(workbench.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8)).cfg.model_name == "untrained"


def test_state_hash_is_unchanged_by_the_component_names(model):
    """Runs record the state hash of their weights; recorded runs keep replaying after the rename."""
    import hashlib

    from workbench.runs import model_state_sha256

    # the definition, by hand, over the names the weights had before (the checkpoint's wte, wpe)
    before = {{"embed.W_E": "wte.weight", "pos_embed.W_pos": "wpe.weight"}.get(k, k): v for k, v in model.state_dict().items()}
    h = hashlib.sha256()
    for key in sorted(before):
        t = before[key].detach().float().contiguous()
        h.update(f"{key}:{tuple(t.shape)};".encode())
        h.update(t.numpy().astype("<f4").tobytes())
    assert model_state_sha256(model) == h.hexdigest()


def test_workbench_files_with_the_former_key_names_load(tiny_model_dir, tmp_path):
    """Workbench-format folders written before the rename (the bundled model among them) store wte.weight
    and wpe.weight."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model_dir, tmp_path / "old")
    state = load_file(str(tiny_model_dir / "model.safetensors"))
    state["wte.weight"], state["wpe.weight"] = state.pop("embed.W_E"), state.pop("pos_embed.W_pos")
    save_file(state, str(tmp_path / "old" / "model.safetensors"), metadata={"format": "workbench"})
    old = workbench.load_model(tmp_path / "old", device="cpu")
    assert torch.equal(old.W_E, state["wte.weight"].float()) and torch.equal(old.W_pos, state["wpe.weight"].float())
    new = workbench.load_model(tiny_model_dir, device="cpu")
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in old.state_dict().items())


def test_transformerlens_patching_runs_on_a_workbench_model(model, bridge):
    """transformer_lens.patching reads n_layers, n_heads, n_key_value_heads and device from model.cfg."""
    from transformer_lens import patching

    clean = torch.tensor([[50256, 464, 3290, 318, 257]])
    corrupted = clean.clone()
    corrupted[0, 2] = 1310

    def metric(logits):
        return (logits[:, -1, 257] - logits[:, -1, 262]).mean()

    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        _, tl_cache = bridge.run_with_cache(clean)
        ours = patching.get_act_patch_resid_pre(model, corrupted, cache, metric)
        theirs = patching.get_act_patch_resid_pre(bridge, corrupted, tl_cache, metric)
    assert ours.shape == (model.cfg.n_layers, clean.shape[1]) and close(ours, theirs)
    assert ours.std() > 0  # patching changes the metric somewhere
