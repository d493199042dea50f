"""TransformerLens's call surface on a workbench model, each compared with TransformerLens 4.x
(TransformerBridge, legacy names) on the same weights: return types and loss, stop_at_layer,
remove_batch_dim, the token helpers, the tokenizer, act_name's shorthand, hook bookkeeping, generate."""

import pytest
import torch
from transformer_lens.utilities import get_act_name

from workbench.errors import InputError, UnknownHookError
from workbench.hooks.names import act_name

TOL = 1e-4
TEXTS = ["When Mary and John went to the store, John gave a drink to", "The cat sat"]


def close(a, b):
    return a.shape == b.shape and (a - b).abs().max().item() <= TOL


# ----------------------------------------------------------------------------- return types and loss
@pytest.mark.parametrize("prepend_bos", [None, True, False])
def test_loss_and_return_types_match_transformerlens(model, bridge, tokens, prepend_bos):
    with torch.no_grad():
        for inp in (tokens, TEXTS[0], TEXTS):  # ids, a string, strings of different lengths (right-padded)
            ours = model(inp, return_type="loss", prepend_bos=prepend_bos)
            theirs = bridge(inp, return_type="loss", prepend_bos=prepend_bos)
            assert ours.ndim == 0 and close(ours, theirs), (inp, ours, theirs)
            per_token = model(inp, return_type="loss", loss_per_token=True, prepend_bos=prepend_bos)
            assert close(per_token, bridge(inp, return_type="loss", loss_per_token=True, prepend_bos=prepend_bos))
            logits, loss = model(inp, return_type="both", prepend_bos=prepend_bos)
            tl_logits, tl_loss = bridge(inp, return_type="both", prepend_bos=prepend_bos)
            assert close(logits, tl_logits) and close(loss, tl_loss)
            assert model(inp, return_type=None) is None
    for call in (model, model.run_with_hooks, model.run_with_cache,
                 lambda t, return_type: model.run_with_cache(t, return_type, incl_bwd=True)):
        with pytest.raises(InputError, match="return_type"):
            call(tokens, return_type="logit")


def test_loss_fn_matches_transformerlens_and_a_hand_computation(model, bridge, tokens):
    with torch.no_grad():
        logits = model(tokens)
        per_token = model.loss_fn(logits, tokens, per_token=True)
        assert per_token.shape == (tokens.shape[0], tokens.shape[1] - 1)
        assert close(per_token, bridge.loss_fn(logits, tokens, per_token=True))
        assert close(model.loss_fn(logits, tokens), bridge.loss_fn(logits, tokens))
        by_hand = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        assert close(model.loss_fn(logits, tokens), by_hand)


def test_run_with_hooks_return_type_matches_transformerlens(model, bridge, tokens):
    def double_mlp(x, hook):
        return 2 * x

    hooks = [("blocks.0.hook_mlp_out", double_mlp)]
    with torch.no_grad():
        ours = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks, loss_per_token=True)
        theirs = bridge.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks, loss_per_token=True)
        assert close(ours, theirs)
        ours = model.run_with_hooks(TEXTS[1], fwd_hooks=hooks, prepend_bos=False)
        assert close(ours, bridge.run_with_hooks(TEXTS[1], fwd_hooks=hooks, prepend_bos=False))


def test_run_with_cache_return_type_and_remove_batch_dim_match_transformerlens(model, bridge):
    with torch.no_grad():
        loss, cache = model.run_with_cache(TEXTS[0], return_type="loss", remove_batch_dim=True)
        tl_loss, tl_cache = bridge.run_with_cache(TEXTS[0], return_type="loss", remove_batch_dim=True)
    assert close(loss, tl_loss)
    for name in ("hook_embed", "blocks.1.attn.hook_pattern", "blocks.0.hook_resid_post", "ln_final.hook_scale"):
        assert close(cache[name], tl_cache[name]), name
    assert cache["blocks.1.attn.hook_pattern"].ndim == 3  # [head query_pos key_pos]
    with torch.no_grad():
        _, batched = model.run_with_cache(TEXTS[0])
    assert close(cache["result", 1], batched["result", 1][0])  # computed from hook_z when read, batch axis gone too
    with pytest.raises(InputError, match="batch of one"):
        model.run_with_cache(TEXTS, remove_batch_dim=True)


@pytest.mark.parametrize("stop", [0, 1, -1])
def test_stop_at_layer_returns_the_residual_stream_transformerlens_returns(model, bridge, tokens, stop):
    with torch.no_grad():
        resid = model(tokens, stop_at_layer=stop)
        theirs = bridge(tokens, stop_at_layer=stop)
        assert resid.shape == (*tokens.shape, model.cfg.n_embd) and close(resid, theirs)
        out, cache = model.run_with_cache(tokens, stop_at_layer=stop)
        _, full = model.run_with_cache(tokens)
    k = stop % model.cfg.n_layer
    assert close(out, full["resid_pre", k])
    before = [n for n in full if n.startswith("hook_") or any(n.startswith(f"blocks.{l}.") for l in range(k))]
    assert sorted(cache) == sorted(before)  # up to where it stopped, and no further
    for name in cache:  # attention scores hold -inf above the diagonal: allclose takes equal infinities as equal
        assert torch.allclose(cache[name], full[name], atol=TOL, rtol=0), name


def test_stop_at_layer_n_layer_is_the_residual_before_ln_final(model, tokens):
    n = model.cfg.n_layer
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        assert close(model(tokens, stop_at_layer=n), cache["resid_post", n - 1])
    for bad in (n + 1, -n - 1):
        with pytest.raises(InputError, match="stop_at_layer"):
            model(tokens, stop_at_layer=bad)


def test_stop_at_layer_runs_the_hooks_transformerlens_runs_and_detaches_everything(model, bridge, tokens):
    def shift(x, hook):
        return x + 1.0

    with torch.no_grad():
        for name in ("blocks.1.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"):
            hooks = [(name, shift)]
            ours = model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=1)
            assert close(ours, bridge.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=1)), name
        n = model.cfg.n_layer  # the last resid_post's hooks run, as in HookedTransformer
        ours = model.run_with_hooks(tokens, fwd_hooks=[(act_name("resid_post", n - 1), shift)], stop_at_layer=n)
        assert close(ours, model(tokens, stop_at_layer=n) + 1.0)
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


# ----------------------------------------------------------------------------- token helpers
def test_to_tokens_to_string_and_to_str_tokens_match_transformerlens(model, bridge):
    for prepend_bos in (None, True, False):
        assert torch.equal(model.to_tokens(TEXTS, prepend_bos=prepend_bos), bridge.to_tokens(TEXTS, prepend_bos=prepend_bos))
        assert model.to_str_tokens(TEXTS[0], prepend_bos=prepend_bos) == bridge.to_str_tokens(TEXTS[0], prepend_bos=prepend_bos)
    assert model.to_str_tokens(TEXTS) == bridge.to_str_tokens(TEXTS)  # a list per string
    ids = model.to_tokens(TEXTS)
    assert isinstance(model.to_str_tokens(TEXTS)[0], list)
    for form in (ids[0], ids[:1], ids[0, 3], [ids[0], ids[1]]):
        assert model.to_str_tokens(form) == bridge.to_str_tokens(form), form
    for form in (464, ids[0, 3], ids[0], ids):
        assert model.to_string(form) == bridge.to_string(form), form
    assert isinstance(model.to_string(464), str) and isinstance(model.to_string(ids), list)


def test_to_tokens_refuses_left_padding(model):
    with pytest.raises(InputError, match="padding_side"):
        model.to_tokens(TEXTS, padding_side="left")


def test_get_token_position_matches_transformerlens(model, bridge):
    prompt = TEXTS[0]
    ids = model.to_tokens(prompt)
    for token in (" John", model.to_single_token(" John"), torch.tensor(model.to_single_token(" to"))):
        for mode in ("first", "last"):
            for prepend_bos in (None, False):
                ours = model.get_token_position(token, prompt, mode, prepend_bos=prepend_bos)
                assert ours == bridge.get_token_position(token, prompt, mode, prepend_bos=prepend_bos)
            assert model.get_token_position(token, ids, mode=mode) == bridge.get_token_position(token, ids, mode=mode)
            assert model.get_token_position(token, ids[0], mode=mode) == bridge.get_token_position(token, ids[0], mode=mode)
    assert model.get_token_position(" John", prompt) != model.get_token_position(" John", prompt, mode="last")
    with pytest.raises(InputError, match="does not occur"):
        model.get_token_position(" Paris", prompt)


def test_tokens_to_residual_directions_match_transformerlens(model, bridge):
    ids = model.to_tokens(TEXTS)
    for form in (" Mary", 1757, torch.tensor(1757), ids[0], ids):
        ours = model.tokens_to_residual_directions(form)
        theirs = bridge.tokens_to_residual_directions(form)
        assert close(ours, theirs), form
    assert model.tokens_to_residual_directions(ids).shape == (*ids.shape, model.cfg.n_embd)
    assert close(model.tokens_to_residual_directions(" Mary"), model.W_U[:, model.to_single_token(" Mary")])


def test_tokenizer_has_the_hugging_face_surface(model, bridge, hf_tokenizer):
    tok = model.tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (50256, 50256, 50256)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        bridge.tokenizer.bos_token_id, bridge.tokenizer.eos_token_id, bridge.tokenizer.pad_token_id)
    for text in (*TEXTS, "Hello<|endoftext|>world  \n ok", "naïve café"):
        assert tok(text)["input_ids"] == hf_tokenizer(text)["input_ids"], text
        assert tok(text)["attention_mask"] == hf_tokenizer(text)["attention_mask"]
        assert tok.encode(text) == hf_tokenizer.encode(text)
        assert tok.decode(tok.encode(text)) == hf_tokenizer.decode(hf_tokenizer.encode(text), clean_up_tokenization_spaces=False)
    ours = tok(TEXTS, padding=True, return_tensors="pt")
    theirs = bridge.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"]) and torch.equal(ours["attention_mask"], theirs["attention_mask"])
    ids = ours["input_ids"]
    assert tok.batch_decode(ids) == bridge.tokenizer.batch_decode(ids, clean_up_tokenization_spaces=False)
    assert tok.decode(ids[1], skip_special_tokens=True) == bridge.tokenizer.decode(ids[1], skip_special_tokens=True)


# ----------------------------------------------------------------------------- act_name
@pytest.mark.parametrize("form", [
    ("k6",), ("scale4ln1",), ("pre5",), ("normalized3ln2",), ("embed",), ("pos_embed",), ("scale",),
    ("k", 6, "a"), ("pre", 2), ("normalized", 27, "ln2"), ("attn", 2), ("attn_logits", 1), ("key", 0),
    ("mlp_post", 1), ("resid_pre", 0), ("resid_mid", 3, "b"), ("attn_out", 1), ("mlp_out", 0, "block"),
    ("in", 3), ("out", 0), ("q", "3"), ("z", 1, "attention"), ("blocks.0.attn.hook_z",), ("hook_embed",),
])
def test_act_name_equals_transformerlens_get_act_name(form):
    assert act_name(*form) == get_act_name(*form)


def test_act_name_asks_which_layernorm_where_transformerlens_builds_a_missing_name(model):
    assert get_act_name("scale", 2) == "blocks.2.hook_scale"  # no GPT-2 has this hook
    with pytest.raises(UnknownHookError, match="ln1"):
        act_name("scale", 2)
    assert act_name("scale", 2, "a") == "blocks.2.ln1.hook_scale" and act_name("scale", 2, "m") == "blocks.2.ln2.hook_scale"


def test_newer_transformerlens_names_point_at_this_models_name(model, tokens):
    with pytest.raises(UnknownHookError, match="blocks.1.hook_resid_pre"):
        model.run_with_hooks(tokens, fwd_hooks=[(act_name("in", 1), lambda x, hook: None)])


# ----------------------------------------------------------------------------- hook bookkeeping
def record_hook_lifecycle(m, tokens):
    """The same sequence of hook calls on either model; returns what the hooks saw."""
    seen = []

    def count(x, hook):
        hook.ctx["n"] = hook.ctx.get("n", 0) + 1
        seen.append(("count", hook.ctx["n"]))

    def permanent(x, hook):
        seen.append(("permanent", None))

    m.add_hook("hook_embed", permanent, is_permanent=True)
    m.add_hook("hook_embed", count)
    with torch.no_grad():
        m(tokens)
        m(tokens)  # ctx persists between forwards
        m.reset_hooks()  # removes count, clears ctx; the permanent hook stays
        seen.append(("reset", None))
        m(tokens)
        with m.hooks(fwd_hooks=[("hook_embed", count)], reset_hooks_end=False):
            m(tokens)
        m(tokens)  # still attached: reset_hooks_end=False
        m.reset_hooks(clear_contexts=False)
        with m.hooks(fwd_hooks=[("hook_embed", count)]):
            m(tokens)  # ctx kept: 3
        m(tokens)
        m.reset_hooks(including_permanent=True)
        m(tokens)
    return seen


def test_hook_lifecycle_matches_transformerlens(model, bridge, tokens):
    ours = record_hook_lifecycle(model, tokens)
    theirs = record_hook_lifecycle(bridge, tokens)
    assert ours == theirs
    assert ours[:4] == [("permanent", None), ("count", 1), ("permanent", None), ("count", 2)]
    assert ours.count(("permanent", None)) == 7  # every forward until reset_hooks(including_permanent=True)
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


def test_prepend_runs_a_hook_first(model, tokens):
    order = []
    model.add_hook("hook_embed", lambda x, hook: order.append("added first"))
    model.add_hook("hook_embed", lambda x, hook: order.append("prepended"), prepend=True)
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        model.reset_hooks()
    assert order == ["prepended", "added first"]


def test_ctx_is_per_hook_point_and_cleared_by_clear_contexts(model, tokens):
    def remember(x, hook):
        hook.ctx["mean"] = x.mean().item()

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", remember), ("blocks.0.hook_resid_post", remember)])
    embed, resid = model.hook_dict["hook_embed"].ctx, model.hook_dict["blocks.0.hook_resid_post"].ctx
    assert embed["mean"] != resid["mean"]
    model.clear_contexts()
    assert model.hook_dict["hook_embed"].ctx == {} and model.hook_dict["blocks.0.hook_resid_post"].ctx == {}


def test_remove_all_hook_fns_and_setup(model, tokens):
    model.add_hook(lambda name: name.endswith("hook_z"), lambda x, hook: None, is_permanent=True)
    model.add_hook("hook_embed", lambda x, hook: None, dir="bwd")
    model.remove_all_hook_fns()
    assert [n for n, hp in model.hook_dict.items() if hp.has_hooks] == [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layer)]
    model.remove_all_hook_fns(including_permanent=True)
    assert not any(hp.has_hooks for hp in model.hook_dict.values())
    names = list(model.hook_dict)
    model.setup()
    assert list(model.hook_dict) == names and model.hook_dict["hook_embed"].name == "hook_embed"


# ----------------------------------------------------------------------------- generate
def greedy_by_hand(model, ids, n):
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_generate_greedy_equals_a_hand_written_loop(model):
    prompt = model.to_tokens(TEXTS[0])
    expected = greedy_by_hand(model, prompt, 6)
    assert torch.equal(model.generate(prompt, 6, temperature=0.0, stop_at_eos=False), expected)  # nanoGPT's positional call
    assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=False, stop_at_eos=False), expected)
    text = model.generate(TEXTS[0], 6, do_sample=False, stop_at_eos=False, verbose=False)
    assert isinstance(text, str)
    assert text == model.tokenizer.decode(expected[0], skip_special_tokens=True) and text.startswith(TEXTS[0])
    assert model.generate(TEXTS[0], 6, do_sample=False, stop_at_eos=False, return_type="tokens").tolist() == expected.tolist()


def test_generate_stops_at_eos_and_pads_finished_rows(model):
    prompt = model.to_tokens(TEXTS, prepend_bos=True)
    expected = greedy_by_hand(model, prompt, 6)
    eos = int(expected[0, prompt.shape[1] + 1])  # row 0's second new token, taken as the end token
    out = model.generate(prompt, 6, do_sample=False, eos_token_id=eos)
    new = expected[:, prompt.shape[1]:].tolist()
    for row, continuation in zip(out[:, prompt.shape[1]:].tolist(), new):
        end = continuation.index(eos) + 1 if eos in continuation else len(continuation)
        assert row[:end] == continuation[:end] and all(t == eos for t in row[end:])
    if all(eos in c for c in new):  # every row ended: the loop stopped there
        assert out.shape[1] == prompt.shape[1] + max(c.index(eos) + 1 for c in new)


def test_generate_sampling_is_seeded(model):
    a = model.generate(TEXTS[1], 5, seed=3, stop_at_eos=False)
    assert a == model.generate(TEXTS[1], 5, seed=3, stop_at_eos=False)
    assert isinstance(a, str)


# ----------------------------------------------------------------------------- utils
def test_transformerlens_test_prompt_prints_the_same_on_workbench_and_ours_too(model, bridge, capsys):
    from transformer_lens.utilities import test_prompt as tl_test_prompt

    import workbench.utils as wb_utils  # not `from ... import test_prompt`: pytest would collect it

    prompt = "When Mary and John went to the store, John gave a drink to"
    for answer in (" Mary", "Mary went", ["Mary", " John"]):
        with torch.no_grad():
            tl_test_prompt(prompt, answer, bridge, top_k=3)
            on_bridge = capsys.readouterr().out
            tl_test_prompt(prompt, answer, model, top_k=3)  # TransformerLens's own function, on a workbench model
            on_workbench = capsys.readouterr().out
        wb_utils.test_prompt(prompt, answer, model, top_k=3)
        ours = capsys.readouterr().out
        assert on_workbench == on_bridge and ours == on_bridge, answer
        assert "Rank:" in ours
    assert wb_utils.get_act_name("k6") == get_act_name("k6")


def test_generate_refuses_prompts_it_would_have_to_pad(model):
    with pytest.raises(InputError, match="one at a time"):
        model.generate(TEXTS, 2)
    out = model.generate(["The cat sat", "The dog ran"], 2, do_sample=False, stop_at_eos=False)
    assert isinstance(out, list) and len(out) == 2 and out[0].startswith("The cat sat")


def test_top_p_keeps_the_smallest_set_reaching_p_as_transformerlens():
    from workbench.models.gpt import _keep_top

    logits = torch.tensor([[0.1, 0.4, 0.2, 0.3]]).log()  # sorted: 0.4, 0.3, 0.2, 0.1
    kept = lambda p: torch.isfinite(_keep_top(logits, top_k=None, top_p=p))[0].tolist()  # noqa: E731
    assert kept(0.35) == [False, True, False, False]
    assert kept(0.5) == [False, True, False, True]  # 0.4 < 0.5: the next one is needed
    assert kept(0.75) == [False, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    assert torch.isfinite(_keep_top(logits, top_k=2, top_p=0.1))[0].tolist() == [False, True, False, True]  # top_k first


def test_generate_with_a_tiny_top_p_is_greedy(model):
    prompt = model.to_tokens(TEXTS[0])
    sampled = model.generate(prompt, 5, top_p=1e-6, stop_at_eos=False, seed=7)
    assert torch.equal(sampled, greedy_by_hand(model, prompt, 5))
    with pytest.raises(InputError, match="top_p"):
        model.generate(prompt, 1, top_p=1.5)
