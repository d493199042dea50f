"""Metrics: values by hand, packed (cell) evaluation, and clear errors."""

import pytest
import torch

from workbench.errors import InputError
from workbench.methods import (
    CustomMetric,
    KLDivergence,
    LogitDiff,
    TokenLogProb,
    TokenProb,
    kl_divergence,
    logit_diff,
    normalize,
    token_logprob,
    token_prob,
)
from workbench.methods.metrics import _check_ids, as_metric


@pytest.fixture
def logits():
    return torch.randn(3, 4, 50, generator=torch.Generator().manual_seed(0))


def test_values_by_hand(logits):
    answer, wrong = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    b = torch.arange(3)
    assert torch.allclose(logit_diff(logits, answer, wrong), (logits[b, -1, answer] - logits[b, -1, wrong]).mean())
    assert torch.allclose(logit_diff(logits, 7, 8, pos=1), (logits[:, 1, 7] - logits[:, 1, 8]).mean())
    lp = logits.log_softmax(-1)
    assert torch.allclose(token_logprob(logits, answer), lp[b, -1, answer].mean())
    assert torch.allclose(token_prob(logits, 9, pos=0), lp[:, 0, 9].exp().mean())
    ref = torch.randn(3, 4, 50, generator=torch.Generator().manual_seed(1))
    p_ref = ref[:, -1].log_softmax(-1)
    expected = (p_ref.exp() * (p_ref - lp[:, -1])).sum(-1).mean()
    assert torch.allclose(kl_divergence(logits, ref), expected)
    assert kl_divergence(ref, ref).abs() < 1e-6


@pytest.mark.parametrize("make", [
    lambda: LogitDiff(torch.tensor([1, 2, 3]), 4),
    lambda: TokenLogProb(5, pos=2),
    lambda: TokenProb(torch.tensor([1, 1, 2])),
    lambda: KLDivergence(torch.randn(3, 4, 50)),
    lambda: CustomMetric(lambda lg: lg[:, 0, 3].mean(), positions=(1,)),
])
def test_packed_evaluation_equals_one_by_one(make, logits):
    metric = make()
    cells = torch.stack([logits, logits * 2, logits.flip(0)])  # [cell batch pos d_vocab]
    packed = metric.evaluate(torch.stack([metric.select(c) for c in cells]))
    assert packed.shape == (3,)
    assert torch.allclose(packed, torch.stack([metric(c) for c in cells]))


def test_positions_and_vocab():
    assert LogitDiff(torch.tensor([3, 1]), 1).vocab == (1, 3)
    assert LogitDiff(1, 2, pos=-2).read_positions(5) == [3]
    assert CustomMetric(lambda lg: lg.sum()).read_positions(3) == [0, 1, 2]
    assert as_metric(lambda lg: lg.sum()).name == "<lambda>"


def test_normalize():
    assert torch.allclose(normalize(torch.tensor([1.0, 3.0, 2.0]), clean=3.0, corrupted=1.0),
                          torch.tensor([0.0, 1.0, 0.5]))
    with pytest.raises(InputError, match="clean and corrupted metric are equal"):
        normalize(torch.tensor([1.0]), 2.0, 2.0)


def test_bad_input(logits):
    with pytest.raises(InputError, match="answer has 2 token ids but the logits have batch size 3"):
        LogitDiff(torch.tensor([1, 2]), 3)(logits)
    with pytest.raises(InputError, match="must be an int or a 1-D tensor"):
        _check_ids(torch.tensor([[1]]), "answer")  # (the type checker stops LogitDiff first in tests)
    with pytest.raises(InputError, match="must return a scalar, got a tensor of shape"):
        as_metric(lambda lg: lg[:, -1, 0])(logits)
    with pytest.raises(InputError, match="metric must be a Metric or a callable"):
        as_metric(3)
    with pytest.raises(InputError, match="reads position 9"):
        logit_diff(logits, 1, 2, pos=9)


def test_next_token_logprob_by_hand_and_packed(logits):
    from workbench.methods.metrics import NextTokenLogProb

    tokens = torch.randint(0, 50, (3, 4), generator=torch.Generator().manual_seed(2))
    metric = NextTokenLogProb(tokens, (0, 2))
    lp = logits.log_softmax(-1)
    expected = sum(lp[b, q, tokens[b, q + 1]] for b in range(3) for q in (0, 2)) / 6
    assert torch.allclose(metric(logits), expected)
    assert metric.read_positions(4) == [0, 2]
    cells = torch.stack([logits, logits * 3])
    assert torch.allclose(metric.evaluate(torch.stack([metric.select(c) for c in cells])),
                          torch.stack([metric(c) for c in cells]))
    with pytest.raises(InputError, match="next token must exist"):
        NextTokenLogProb(tokens, (3,))
    with pytest.raises(InputError, match="batch size"):
        metric(logits[:2])


def test_clean_beats_corrupted_rule():
    from workbench.methods.metrics import MIN_GAP, clean_beats_corrupted, no_signal_message

    assert clean_beats_corrupted(3.0, 0.1) and clean_beats_corrupted(-8.2, -11.5)
    assert not clean_beats_corrupted(-2.367, -2.153)  # the bundled model on the IOI pair (issue 12.8)
    assert not clean_beats_corrupted(-0.034, -0.029)
    assert not clean_beats_corrupted(1.0, 1.0 - MIN_GAP / 2) and clean_beats_corrupted(1.0, 1.0 - MIN_GAP)
    assert no_signal_message(3.0, 0.1, "logit_diff") is None
    message = no_signal_message(-2.367, -2.153, "logit_diff")
    assert "not clearly better" in message and "-2.367" in message and "-2.153" in message
