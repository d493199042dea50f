"""IOI, repeated-token and induction prompt sets: seeded, equal lengths, metrics ready."""

import pytest
import torch

import workbench
from workbench.errors import InputError
from workbench.methods import ioi_prompts, logit_diff, repeated_tokens
from workbench.methods.prompts import (
    IOI_NAMES,
    IOI_OBJECTS,
    IOI_PLACES,
    IOI_TEMPLATES,
    induction_positions,
    induction_prompts,
)
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


# ----------------------------------------------------------------------------- induction task
def test_induction_prompts_structure():
    p = induction_prompts(n=4, seq_len=6, seed=1)
    assert p.clean_tokens.shape == p.corrupted_tokens.shape == (4, 13)
    assert (p.clean_tokens[:, 0] == EOT_ID).all() and (p.corrupted_tokens[:, 0] == EOT_ID).all()
    first, second = p.clean_tokens[:, 1:7], p.clean_tokens[:, 7:]
    assert torch.equal(first, second)  # clean: r + r
    assert torch.equal(p.corrupted_tokens[:, 7:], second)  # the same second copy ...
    assert (p.corrupted_tokens[:, 1:7] != first).float().mean() > 0.9  # ... after a different first copy
    assert p.positions == (7, 8, 9, 10, 11)  # second copy, whose next token is in it too
    assert torch.equal(induction_prompts(n=4, seq_len=6, seed=1).corrupted_tokens, p.corrupted_tokens)
    assert induction_positions(6, prepend_bos=False) == (6, 7, 8, 9, 10)


def test_induction_metric_by_hand():
    p = induction_prompts(n=3, seq_len=5, seed=0, vocab_size=50)
    logits = torch.randn(3, 11, 50, generator=torch.Generator().manual_seed(0))
    lp = logits.log_softmax(-1)
    expected = sum(lp[b, q, p.clean_tokens[b, q + 1]] for b in range(3) for q in range(6, 10)) / 12
    assert torch.allclose(p.metric()(logits), expected)


def test_bundled_model_does_the_induction_preset():
    """On the bundled model the induction preset separates clean from corrupted: the log-prob of the
    correct next token on the second copy, computed here by hand from the logits."""
    from workbench.methods.metrics import MIN_GAP
    from workbench.models.bundled import DEFAULT_BUNDLED, bundled_names

    if DEFAULT_BUNDLED not in bundled_names():
        pytest.skip("no bundled model in this checkout")
    model = workbench.load_model(DEFAULT_BUNDLED, device="cpu")
    p = induction_prompts(n=8, seq_len=10, seed=0, vocab_size=model.cfg.vocab_size)

    def by_hand(tokens):
        with torch.no_grad():
            lp = model(tokens).log_softmax(-1)
        values = [lp[b, q, p.clean_tokens[b, q + 1]] for b in range(8) for q in range(11, 20)]
        return float(sum(values) / len(values))

    clean, corrupted = by_hand(p.clean_tokens), by_hand(p.corrupted_tokens)
    assert clean - corrupted > 2 * MIN_GAP, (clean, corrupted)
    with torch.no_grad():
        assert p.metric()(model(p.clean_tokens)) == pytest.approx(clean, abs=1e-4)
