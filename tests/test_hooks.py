"""Hook semantics: replacement, removal on error, caching filters, backward hooks, both attention paths."""

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import workbench
from workbench.hooks import HookShapeError, UnknownHookError


def no_hooks_attached(model):
    return not any(hp.has_hooks for hp in model.hook_dict.values())


def test_replacing_resid_post_gives_hand_computed_logits(model, tokens):
    last = model.cfg.n_layer - 1
    x = torch.randn(*tokens.shape, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{last}.hook_resid_post", lambda a, hook: x)])
    ln = model.ln_final
    expected = F.layer_norm(x, (model.cfg.d_model,), ln.weight, ln.bias, ln.eps)
    expected = expected @ model.W_E.T  # the tied unembedding, by hand
    assert (logits - expected).abs().max() < 1e-4
    assert no_hooks_attached(model)


def test_zeroing_one_head_in_z_matches_hand_computation(model, tokens):
    layer, head = 1, 2
    _, cache = model.run_with_cache(tokens)

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, head] = 0
        return z

    logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero_head)])
    # by hand: attn_out loses head's W_O contribution; the rest of the block is re-run from resid_mid
    attn = model.blocks[layer].attn
    head_out = cache["z", layer][:, :, head] @ attn.W_O[head]
    resid_mid = cache["resid_mid", layer] - head_out
    block = model.blocks[layer]
    resid_post = resid_mid + block.mlp(block.ln2(resid_mid))
    expected = model.logits_from_resid(model.run_blocks(resid_post, start=layer + 1))
    assert (logits - expected).abs().max() < 1e-4


def test_hook_returning_none_only_reads(model, tokens):
    seen = []
    logits = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda a, hook: seen.append(hook.name))])
    assert seen == [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layer)]
    assert torch.allclose(logits, model(tokens), atol=1e-5)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_raising_hook_leaves_no_hook_attached(model, tokens, exc):
    def boom(a, hook):
        raise exc("boom")

    with pytest.raises(exc):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_mid", boom), ("blocks.1.attn.hook_pattern", lambda a, hook: None)])
    assert no_hooks_attached(model)
    with pytest.raises(exc):
        model.run_with_cache(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", boom)])
    assert no_hooks_attached(model)


def test_context_manager_removes_hooks_and_keeps_permanent_ones(model, tokens):
    calls = []
    model.add_hook("hook_embed", lambda a, hook: calls.append("permanent"))
    try:
        with model.hooks(fwd_hooks=[("hook_embed", lambda a, hook: calls.append("temporary"))]):
            model(tokens)
        model(tokens)
        assert calls == ["permanent", "temporary", "permanent"]
    finally:
        model.reset_hooks()
    assert no_hooks_attached(model)


def test_names_filter_caches_only_what_was_asked(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern"])
    assert set(cache) == {"blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern"}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_q"))
    assert set(cache) == {f"blocks.{l}.attn.hook_q" for l in range(model.cfg.n_layer)}
    _, cache = model.run_with_cache(tokens, names_filter="hook_embed")
    assert list(cache) == ["hook_embed"]


def test_cache_device_and_positions(model, tokens):
    _, full = model.run_with_cache(tokens)
    _, last = model.run_with_cache(tokens, device="cpu", pos_slice=-1)
    assert torch.equal(last["resid_post", 1], full["resid_post", 1][:, -1:])
    assert torch.equal(last["pattern", 0], full["pattern", 0][:, :, -1:])
    _, some = model.run_with_cache(tokens, pos_slice=[0, 3])
    assert torch.equal(some["z", 1], full["z", 1][:, [0, 3]])


def activations_with_autograd(model, tokens, names):
    """Reference: keep the live activations and ask autograd for d loss / d activation."""
    acts = {}

    def keep(a, hook):
        a.retain_grad()
        acts[hook.name] = a

    logits = model.run_with_hooks(tokens, fwd_hooks=[(n, keep) for n in names])
    loss = -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).mean()
    grads = torch.autograd.grad(loss, [acts[n] for n in names])
    return dict(zip(names, grads))


def test_incl_bwd_gradients_equal_autograd(model, tokens):
    names = ["hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post",
             "ln_final.hook_scale"]
    expected = activations_with_autograd(model, tokens, names)
    before = [p.grad for p in model.parameters()]
    _, cache = model.run_with_cache(tokens, names_filter=names, incl_bwd=True)
    for n in names:
        assert (cache[n + "_grad"] - expected[n]).abs().max() < 1e-6, n
    assert [p.grad for p in model.parameters()] == before  # parameter .grad untouched


def test_backward_hooks_see_autograd_gradients_and_can_replace_them(model, tokens):
    name = "blocks.1.hook_attn_out"
    expected = activations_with_autograd(model, tokens, [name])[name]
    seen = {}
    logits = model.run_with_hooks(tokens, bwd_hooks=[(name, lambda g, hook: seen.setdefault("g", g))])
    loss = -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).mean()
    loss.backward()
    assert (seen["g"] - expected).abs().max() < 1e-6
    model.zero_grad(set_to_none=True)
    # a backward hook that zeroes the gradient at resid_pre of block 1 cuts it off from the embeddings
    logits = model.run_with_hooks(tokens, bwd_hooks=[("blocks.1.hook_resid_pre", lambda g, hook: torch.zeros_like(g))])
    logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).mean().backward()
    assert model.W_pos.grad.abs().max() == 0
    model.zero_grad(set_to_none=True)
    assert no_hooks_attached(model)


@pytest.mark.parametrize("hooked", ["hook_attn_scores", "hook_pattern"])
def test_sdpa_and_explicit_paths_agree(model, tokens, hooked):
    # README (hooks): a hook that edits scores or pattern (here: returns an equal copy) switches
    # attention to pattern @ v, same numbers to 1e-5; a cache of them, read only, keeps the fused z,
    # and the cached pattern times the cached v is that z to 1e-5 (reference: einsum by hand).
    copy = (lambda n: n.endswith(hooked), lambda a, hook: a.clone())
    with torch.no_grad():
        fused = model(tokens)
        explicit = model.run_with_hooks(tokens, fwd_hooks=[copy])
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_z", "hook_pattern", "hook_v")),
                                        fwd_hooks=[copy])
        _, fused_cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_z", "hook_pattern", "hook_v")))
    assert (fused - explicit).abs().max() <= 1e-5
    for l in range(model.cfg.n_layer):  # the heads' outputs too, not only the logits
        assert (cache["z", l] - fused_cache["z", l]).abs().max() <= 1e-5
        by_hand = torch.einsum("bhqk,bkhd->bqhd", fused_cache["pattern", l], fused_cache["v", l])
        assert (by_hand - fused_cache["z", l]).abs().max() <= 1e-5


def test_pattern_hook_switches_attention_path(model, tokens):
    # Hooks that only read the scores or pattern (a cache) keep the fused kernel for z, so the
    # outputs are the plain forward's; an edit takes pattern @ v in that block.
    sdpa = F.scaled_dot_product_attention
    with torch.no_grad(), mock.patch("torch.nn.functional.scaled_dot_product_attention", side_effect=sdpa) as spy:
        plain = model(tokens)
        assert spy.call_count == model.cfg.n_layer
        spy.reset_mock()
        read = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, hook: None)])
        assert spy.call_count == model.cfg.n_layer and torch.equal(read, plain)
        spy.reset_mock()
        cached, _ = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn_scores"))
        assert spy.call_count == model.cfg.n_layer and torch.equal(cached, plain)
        spy.reset_mock()
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, hook: a * 1.0)])
        assert spy.call_count == model.cfg.n_layer - 1  # block 0 took pattern @ v


def _uniform_scores(scores, hook):
    return torch.where(torch.isinf(scores), scores, torch.zeros_like(scores))  # every allowed key equal


def _uniform_scores_in_place(scores, hook):
    scores.masked_fill_(~torch.isinf(scores), 0.0)


def _zero_head0_pattern(pattern, hook):
    out = pattern.clone()
    out[:, 0] = 0
    return out


def _zero_head0_pattern_in_place(pattern, hook):
    pattern[:, 0] = 0


@pytest.mark.parametrize("edit", [_uniform_scores, _uniform_scores_in_place, _zero_head0_pattern,
                                  _zero_head0_pattern_in_place])
def test_edited_scores_or_pattern_reach_z(model, tokens, edit):
    # Reference by hand: uniform scores make z each position's running mean of v; a zeroed head
    # pattern makes that head's z zero. Edits by a returned tensor and in place must both count,
    # with a cache reading the same hook points (as a cache with fwd_hooks does).
    layer = 1
    kind = "attn_scores" if "scores" in edit.__name__ else "pattern"
    name = workbench.act_name(kind, layer)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[name, workbench.act_name("v", layer),
                                                              workbench.act_name("z", layer)],
                                        fwd_hooks=[(name, edit)])
    v, z = cache["v", layer], cache["z", layer]
    if kind == "attn_scores":
        running_mean = v.cumsum(1) / torch.arange(1, v.shape[1] + 1)[None, :, None, None]
        torch.testing.assert_close(z, running_mean, atol=1e-5, rtol=1e-5)
    else:
        assert z[:, :, 0].abs().max() == 0 and z[:, :, 1:].abs().max() > 0


def test_cached_pattern_keeps_its_gradient():
    # With gradients the pattern stays in the graph (pattern @ v). Reference: autograd's gradient of
    # the same loss with respect to a leaf tensor put in the pattern's place.
    torch.manual_seed(0)
    model = workbench.GPT(workbench.GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    tokens = torch.randint(0, 32, (2, 6))
    name = workbench.act_name("pattern", 0)
    _, cache = model.run_with_cache(tokens, incl_bwd=True, names_filter=[name])
    leaf = cache[name].clone().requires_grad_(True)
    logits = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda p, hook: leaf)])
    (expected,) = torch.autograd.grad(workbench.hooks.hooked.next_token_loss(logits, tokens), [leaf])
    assert expected.abs().max() > 0
    torch.testing.assert_close(cache[name + "_grad"], expected, atol=1e-6, rtol=1e-5)


def test_result_hook_only_computed_when_asked(model, tokens):
    with mock.patch.object(workbench.models.attention.einops, "einsum", wraps=workbench.models.attention.einops.einsum) as spy:
        model(tokens)
        assert spy.call_count == 0
        model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_result")
        assert spy.call_count == 1


def test_unknown_hook_name_lists_close_matches(model, tokens):
    with pytest.raises(UnknownHookError, match="blocks.0.attn.hook_pattern"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_patern", lambda a, hook: None)])
    with pytest.raises(UnknownHookError, match="did you mean"):
        model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pr"])
    assert no_hooks_attached(model)


def test_hook_returning_wrong_shape_names_hook_and_shapes(model, tokens):
    with pytest.raises(HookShapeError) as info:
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", lambda a, hook: a[:, :-1])])
    msg = str(info.value)
    assert "blocks.1.hook_mlp_out" in msg and str(tuple(tokens.shape) + (64,)) in msg and "(3, 11, 64)" in msg
    with pytest.raises(TypeError, match="must return None or a Tensor"):
        model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda a, hook: 3.0)])
    assert no_hooks_attached(model)


def test_cache_helpers(model, tokens):
    _, cache = model.run_with_cache(tokens)
    stack, labels = cache.accumulated_resid(return_labels=True)
    assert labels == ["0_pre", "1_pre", "final_post"]
    assert torch.equal(stack[-1], cache["resid_post", 1])
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[:2] == ["embed", "pos_embed"] and len(labels) == 2 + 2 * model.cfg.n_layer
    assert (parts.sum(0) - cache["resid_post", 1]).abs().max() < 1e-4  # components sum to the stream
    heads, labels = cache.stack_head_results(return_labels=True)
    assert labels[:2] == ["L0H0", "L0H1"] and heads.shape[0] == model.cfg.n_layer * model.cfg.n_head
    layer0 = heads[: model.cfg.n_head].sum(0) + model.blocks[0].attn.b_O
    assert (layer0 - cache["attn_out", 0]).abs().max() < 1e-4
    # apply_ln_to_stack of the whole stream equals ln_final's normalized output
    normed = cache.apply_ln_to_stack(cache["resid_post", 1])
    assert (normed - cache["ln_final.hook_normalized"]).abs().max() < 1e-4
    with pytest.raises(KeyError, match="not in this cache"):
        cache["blocks.9.hook_resid_pre"]


def test_jaxtyping_checks_are_on(model):
    # the import hook in conftest makes every annotated shape a runtime check
    from jaxtyping import TypeCheckError

    with pytest.raises(TypeCheckError):
        model.blocks[0].attn(torch.randn(4, 64))


@pytest.mark.parametrize("names", [None, "resid", "attn", ["blocks.0.attn.hook_k", "blocks.1.mlp.hook_post"]])
def test_cache_size_estimate_equals_bytes_held(model, tokens, names):
    names_filter = (lambda n: names in n) if isinstance(names, str) else names
    _, cache = model.run_with_cache(tokens, names_filter=names_filter)
    held = {}
    for t in cache.cache_dict.values():  # distinct storage held, measured independently of nbytes()
        held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    assert model.cache_size(tokens, names_filter) == sum(held.values())


def test_full_cache_holds_each_activation_once(model, tokens):
    _, cache = model.run_with_cache(tokens)
    # per-head results are computed from z when read, and equal the ones the model computes when hooked
    assert "blocks.1.attn.hook_result" in cache and "blocks.1.attn.hook_result" not in cache.cache_dict
    _, hooked = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_result")
    assert torch.allclose(cache["result", 1], hooked["result", 1], atol=1e-6)
    # resid_post of block 0 and resid_pre of block 1 are one tensor, stored once
    assert cache["resid_post", 0].untyped_storage().data_ptr() == cache["resid_pre", 1].untyped_storage().data_ptr()
    assert not any(name.endswith("logits") for name in cache)


def test_every_workbench_module_is_type_checked():
    # conftest walks the package under jaxtyping's import hook; a module imported outside it would
    # have plain (unchecked) functions. Reference: the .py files on disk.
    import inspect
    import sys
    from pathlib import Path

    from jaxtyping import TypeCheckError
    from conftest import CHECKED_MODULES, UNCHECKED

    root = Path(workbench.__file__).parent
    on_disk = {".".join(("workbench",) + p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
               for p in root.rglob("*.py")}
    assert on_disk == set(CHECKED_MODULES) | set(UNCHECKED)
    for name in CHECKED_MODULES:
        module = sys.modules[name]
        for fn_name, fn in vars(module).items():
            if inspect.isfunction(fn) and fn.__module__ == name and fn.__annotations__:
                assert hasattr(fn, "__wrapped__"), f"{name}.{fn_name} is not checked"
    with pytest.raises(TypeCheckError):
        workbench.training.baselines([1, 2, 3], torch.tensor([1, 2]))  # a list where a Tensor is annotated


def test_activation_shapes_are_those_of_a_real_forward(model):
    # the shapes come from a meta-device forward; the reference is a real run caching every hook point
    tokens = torch.randint(0, 50257, (2, 7), generator=torch.Generator().manual_seed(3))
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: True)  # per-head results stored too
    shapes = model.activation_shapes(2, 7)
    assert list(shapes) == model.hook_names()
    assert shapes == {name: tuple(cache[name].shape) for name in model.hook_names()}
    assert model.activation_shapes(1, 3)["blocks.1.attn.hook_pattern"] == (1, model.cfg.n_head, 3, 3)


def test_inputs_are_checked_once_per_call(model, tokens, monkeypatch):
    # forward runs on checked ids: no per-step check (and host synchronisation) in generate or caching
    calls = []
    check = type(model).prepare_tokens

    def counting(self, tokens, **kwargs):
        calls.append(1)
        return check(self, tokens, **kwargs)

    monkeypatch.setattr(type(model), "prepare_tokens", counting)
    for run in (lambda: model(tokens), lambda: model.run_with_cache(tokens), lambda: model.run_with_hooks(tokens),
                lambda: model.generate(tokens[:1, :4], max_new_tokens=5), lambda: model("some text")):
        calls.clear()
        run()
        assert len(calls) == 1
    assert model.forward(tokens).shape == (*tokens.shape, model.cfg.d_vocab)


def test_hook_names_outside_hooks_and_the_model_come_from_act_name():
    # no hook name is spelled by hand in the library outside workbench/hooks and the model's modules
    import re
    from pathlib import Path

    root = Path(workbench.__file__).parent
    own = {"hooks", "models"}
    spelled = re.compile(r"""f?["']blocks\.(\{|\d)|["'](ln_final\.)?hook_[a-z_]+["']""")
    found = [f"{p.relative_to(root)}:{i + 1}" for p in root.rglob("*.py") if p.relative_to(root).parts[0] not in own
             for i, line in enumerate(p.read_text().splitlines()) if spelled.search(line.split("#")[0])]
    assert found == []


def test_every_axis_name_in_the_code_is_in_the_vocabulary():
    # the axis vocabulary is written once, in the models package docstring; every annotation and
    # einops pattern in the library uses only those names
    import re
    from pathlib import Path

    import workbench.models

    vocabulary = set(re.findall(r"^    ([a-z_]+) {2,}\S", workbench.models.__doc__, flags=re.M))
    assert {"batch", "pos", "layer", "component", "cell", "row", "token"} <= vocabulary
    root = Path(workbench.__file__).parent
    shapes = re.compile(r"""(?:Float|Int|Bool)\[Tensor, "([^"]*)"\]|"([a-z_ ()*0-9.,]+->[a-z_ ()*0-9.]+)\"""")
    used = {}
    for path in root.rglob("*.py"):
        for match in shapes.finditer(path.read_text()):
            for axis in re.findall(r"[a-z_][a-z_0-9]*", match.group(1) if match.group(1) is not None else match.group(2)):
                used.setdefault(axis, str(path.relative_to(root)))
    assert {"query_pos", "d_vocab", "cell", "token", "layer", "component"} <= set(used)  # the scan finds them
    unknown = {axis: where for axis, where in used.items() if axis not in vocabulary | {"_"}}
    assert unknown == {}
