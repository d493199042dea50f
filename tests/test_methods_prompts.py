"""IOI and repeated-token prompt sets: seeded, equal lengths, answers ready for logit_diff."""

import pytest
import torch

from workbench.errors import InputError
from workbench.methods import ioi_prompts, logit_diff, repeated_tokens
from workbench.methods.prompts import IOI_NAMES, IOI_OBJECTS, IOI_PLACES, IOI_TEMPLATES
from workbench.models.tokenizer import EOT_ID, gpt2_tokenizer


def test_fillers_are_single_tokens():
    enc = gpt2_tokenizer()
    for word in IOI_NAMES + IOI_PLACES + IOI_OBJECTS:
        assert len(enc.encode(" " + word)) == 1, word


@pytest.mark.parametrize("template", range(len(IOI_TEMPLATES)))
def test_every_template_gives_equal_lengths(template):
    p = ioi_prompts(n=6, template=template, seed=template)
    assert p.clean_tokens.shape == p.corrupted_tokens.shape == (6, p.clean_tokens.shape[1])
    assert (p.clean_tokens[:, 0] == EOT_ID).all()


def test_answers_and_orders():
    enc = gpt2_tokenizer()
    p = ioi_prompts(n=4, template=0, seed=3)
    assert p.order == ["ABBA", "BABA", "ABBA", "BABA"]
    for b, (io, s) in enumerate(p.names):
        text = p.clean_text[b]
        first, second = text.split("Then, ")[1].split(" went")[0].split(" and ")
        assert (first, second) == ((io, s) if p.order[b] == "ABBA" else (s, io))
        assert text.endswith(f"{s} gave a " + text.split(f"{s} gave a ")[1])  # S gives, to the IO
        assert text.endswith(" to")
        assert p.answer[b] == enc.encode(" " + io)[0] and p.wrong[b] == enc.encode(" " + s)[0]
    df = p.to_frame()
    assert len(df) == 4 and {"clean", "corrupted", "order", "io", "s", "answer", "wrong"} <= set(df.columns)


def test_corruptions():
    abc = ioi_prompts(n=4, corruption="abc", seed=1)
    for b, (io, s) in enumerate(abc.names):
        assert io not in abc.corrupted_text[b] and s not in abc.corrupted_text[b]
    swap = ioi_prompts(n=4, corruption="swap", seed=1)
    for b, (io, s) in enumerate(swap.names):
        assert swap.corrupted_text[b] == swap.clean_text[b].replace(io, "#").replace(s, io).replace("#", s)
    s2 = ioi_prompts(n=4, corruption="s2_io", seed=1)
    for b, (io, s) in enumerate(s2.names):
        assert s2.corrupted_text[b].count(io) == 2 and s2.corrupted_text[b].count(s) == 1
    # same names, places and objects for the same seed, whatever the corruption
    assert abc.clean_text == swap.clean_text == s2.clean_text


def test_seeded():
    a, b = ioi_prompts(n=5, seed=9), ioi_prompts(n=5, seed=9)
    assert torch.equal(a.clean_tokens, b.clean_tokens) and torch.equal(a.corrupted_tokens, b.corrupted_tokens)
    assert not torch.equal(a.clean_tokens, ioi_prompts(n=5, seed=10).clean_tokens)
    assert torch.equal(repeated_tokens(seed=2), repeated_tokens(seed=2))


def test_ready_for_logit_diff(model):
    p = ioi_prompts(n=3, order="BABA", seed=0)
    with torch.no_grad():
        logits = model(p.clean_tokens)
    expected = (logits[torch.arange(3), -1, p.answer] - logits[torch.arange(3), -1, p.wrong]).mean()
    assert torch.allclose(logit_diff(logits, p.answer, p.wrong), expected)
    assert torch.allclose(p.metric()(logits), expected)
    assert p.order == ["BABA"] * 3


def test_custom_template_and_bad_input():
    p = ioi_prompts(n=2, template="Yesterday [B] and [A] met. [B] waved at [A]")
    assert p.clean_text[0].endswith("waved at")
    with pytest.raises(InputError, match="template index 99 is out of range"):
        ioi_prompts(template=99)
    with pytest.raises(InputError, match="IOI template"):
        ioi_prompts(template="[A] met [B]")
    with pytest.raises(InputError, match="corruption must be one of"):
        ioi_prompts(corruption="shuffle")
    with pytest.raises(InputError, match="order must be one of"):
        ioi_prompts(order="AABB")
    with pytest.raises(InputError, match="n must be >= 1"):
        ioi_prompts(n=0)
