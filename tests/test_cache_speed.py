"""The LayerNorm's fused path while its scale is only read (cached): edits of `hook_scale` still
change the output, whether the hook returns a new tensor or edits in place, and gradients through
the scale are kept. Reference: LayerNorm written out by hand."""

import torch

import workbench
from workbench import act_name


def by_hand(x, ln, scale_factor=1.0):
    centred = x - x.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt() * scale_factor
    return centred / scale * ln.weight + ln.bias


def test_scale_hook_reads_and_edits(model, tokens):
    ln, name = model.blocks[1].ln2, act_name("scale", 1, "ln2")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[name, act_name("resid_mid", 1), act_name("normalized", 1, "ln2")])
        x = cache["resid_mid", 1]
        expected_scale = (x.var(-1, keepdim=True, unbiased=False) + ln.eps).sqrt()
        torch.testing.assert_close(cache[name], expected_scale, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(cache["normalized", 1, "ln2"] * ln.weight + ln.bias, by_hand(x, ln), atol=1e-5, rtol=0)

        seen = {}

        def new_tensor(s, hook):
            return s * 2

        def in_place(s, hook):
            s.mul_(2)
            return s

        def record_output(out, hook):
            seen[hook.name] = out

        post = act_name("normalized", 1, "ln2")
        for edit in (new_tensor, in_place):
            model.run_with_hooks(tokens, fwd_hooks=[(name, edit), (post, record_output)])
            torch.testing.assert_close(seen[post] * ln.weight + ln.bias, by_hand(x, ln, 2.0), atol=1e-5, rtol=0)


def test_gradients_flow_through_a_cached_scale():
    torch.manual_seed(0)
    model = workbench.GPT(workbench.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    tokens = torch.randint(0, 32, (2, 5))
    _, cache = model.run_with_cache(tokens, incl_bwd=True, names_filter=[act_name("scale", 0, "ln1")])
    assert act_name("scale", 0, "ln1") + "_grad" in cache.cache_dict
