"""Head detectors find attention patterns planted by hand in a model."""

import torch

from workbench.methods import duplicate_token_scores, induction_scores, previous_token_scores, repeated_tokens

SEQ = 8  # tokens are [BOS] + r + r with |r| = SEQ


def forced(pattern_of):
    """A hook on hook_pattern that sets one head's attention: pattern_of(query_pos) -> key_pos."""

    def plant(head):
        def hook(pattern, hook):
            n = pattern.shape[-1]
            new = pattern.clone()
            new[:, head] = 0
            for q in range(n):
                new[:, head, q, pattern_of(q)] = 1.0
            return new

        return hook

    return plant


def test_planted_heads_score_one(model):
    tokens = repeated_tokens(n_seqs=4, seq_len=SEQ, seed=1)
    # Position i of the second copy (i > SEQ) repeats position i - SEQ.
    previous = forced(lambda q: max(q - 1, 0))(1)
    induction = forced(lambda q: q - SEQ + 1 if q > SEQ else 0)(2)
    duplicate = forced(lambda q: q - SEQ if q > SEQ else 0)(3)
    hooks = [("blocks.0.attn.hook_pattern", previous), ("blocks.1.attn.hook_pattern", induction),
             ("blocks.1.attn.hook_pattern", duplicate)]
    with model.hooks(fwd_hooks=hooks):
        prev = previous_token_scores(model, tokens)
        ind = induction_scores(model, tokens)
        dup = duplicate_token_scores(model, tokens)
    for scores, (layer, head) in ((prev, (0, 1)), (ind, (1, 2)), (dup, (1, 3))):
        assert scores.values[layer, head] > 0.99, scores.detector
        others = scores.values.clone()
        others[layer, head] = 0
        assert others.max() < 0.6, scores.detector  # a random model's heads are not like this
        assert scores.top(1)[0][:2] == (layer, head)
        assert len(scores.to_frame()) == model.cfg.n_layer * model.cfg.n_head
    # without the hooks, no head of the random model is a previous-token head
    assert previous_token_scores(model, tokens).values.max() < 0.6


def test_induction_scores_default_prompts(model):
    scores = induction_scores(model, seq_len=6, n_seqs=2)
    assert scores.values.shape == (model.cfg.n_layer, model.cfg.n_head)
    assert torch.all((scores.values >= 0) & (scores.values <= 1))


def test_head_scores_in_chunks_equal_a_hand_loop(model):
    """All detectors from one forward per chunk, with progress, equal a loop over the pattern by hand."""
    from workbench.methods.head_detectors import DETECTORS, head_scores

    tokens = repeated_tokens(n_seqs=5, seq_len=SEQ, seed=3)
    calls = []
    scores = head_scores(model, tokens, batch_size=2, progress=lambda done, total: calls.append((done, total)))
    assert list(scores) == list(DETECTORS)
    assert calls == [(2, 5), (4, 5), (5, 5)]
    _, cache = model.run_with_cache(tokens)
    n = tokens.shape[1]
    expected = {name: torch.zeros(model.cfg.n_layer, model.cfg.n_head) for name in DETECTORS}
    counts = dict.fromkeys(DETECTORS, 0)
    for b in range(5):
        for q in range(n):
            earlier = [k for k in range(q) if tokens[b, k] == tokens[b, q]]
            keys = {"previous_token": q - 1 if q >= 1 else None,
                    "induction": earlier[-1] + 1 if earlier else None,
                    "duplicate_token": earlier[-1] if earlier else None}
            for name, k in keys.items():
                if k is None:
                    continue
                counts[name] += 1
                for layer in range(model.cfg.n_layer):
                    expected[name][layer] += cache["pattern", layer][b, :, q, k].float()
    for name in DETECTORS:
        torch.testing.assert_close(scores[name].values, expected[name] / counts[name], rtol=1e-5, atol=1e-6)
