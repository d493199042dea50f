"""Quality measures for small trained models: n-gram baselines, induction and in-context loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.methods.head_detectors import induction_scores
from workbench.methods.prompts import repeated_tokens


def baselines(train: Tensor, val: Tensor, *, vocab_size: int = 50257) -> dict[str, float]:
    """Validation loss (nats/token) of an add-one unigram model and of the best interpolated
    bigram model (lambda chosen on the validation split itself, so the baseline is generous)."""
    counts = torch.bincount(train, minlength=vocab_size).double()
    p_uni = (counts + 1) / (counts.sum() + vocab_size)
    unigram = -p_uni[val].log().mean().item()

    keys = train[:-1] * vocab_size + train[1:]
    uniq, pair_counts = torch.unique(keys, return_counts=True)
    vkeys = val[:-1] * vocab_size + val[1:]
    pos = torch.searchsorted(uniq, vkeys).clamp(max=len(uniq) - 1)
    c_ab = torch.where(uniq[pos] == vkeys, pair_counts[pos], 0).double()
    c_a = torch.bincount(train[:-1], minlength=vocab_size).double()[val[:-1]]
    p_bi = torch.where(c_a > 0, c_ab / c_a.clamp(min=1), 0.0)
    pu = p_uni[val[1:]]
    bigram = min(-(lam * p_bi + (1 - lam) * pu).log().mean().item() for lam in torch.linspace(0.05, 0.95, 19).tolist())
    return {"unigram_val_loss": unigram, "bigram_val_loss": bigram}


@torch.no_grad()
def in_context_losses(model, tokens: Tensor) -> tuple[float, float]:
    """Mean next-token loss on the first and on the second copy of [BOS] + r + r."""
    logits = model(tokens)
    n = (tokens.shape[1] - 1) // 2
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
    losses = losses.view(tokens.shape[0], -1)
    # predicting tokens 2..n (first copy, position 1 has no context) vs n+2..2n (second copy)
    return losses[:, 1:n].mean().item(), losses[:, n + 1 :].mean().item()


def induction_probe(model, *, seed: int = 0, pool: Tensor | None = None) -> Tensor:
    """[BOS] + r + r for 16 random r of min(50, (context - 1) // 2) distinct ids, drawn from `pool`
    (token ids) or the whole vocabulary: the sequences the model card's induction numbers use."""
    return repeated_tokens(n_seqs=16, seq_len=min(50, (model.cfg.block_size - 1) // 2), seed=seed, vocab=pool)


@torch.no_grad()
def evaluate_quality(model, *, val_tokens: Tensor, pool: Tensor | None = None, seed: int = 0) -> dict:
    """Induction score of the best head and in-context loss on [BOS] + r + r for 16 random r drawn from
    the whole vocabulary; the best induction score when r is drawn from `pool` instead (token ids, e.g.
    those of the training split); and a sample."""
    tokens = induction_probe(model, seed=seed)
    scores = induction_scores(model, tokens)
    layer, head, best = scores.top(1)[0]
    first, second = in_context_losses(model, tokens)
    pooled = {}
    if pool is not None:
        pool_tokens = induction_probe(model, seed=seed, pool=pool)
        pooled = {"induction_score_pool_tokens": induction_scores(model, pool_tokens).values.max().item(),
                  "pool_tokens": len(pool)}
    prompt = val_tokens[:32][None]
    sample = model.generate(prompt, max_new_tokens=64, temperature=0.8, top_k=50, seed=seed)
    return {
        "induction_score": best,
        "induction_head": f"L{layer}H{head}",
        "induction_scores": scores.values.tolist(),
        "induction_tokens": f"[BOS] + r + r, 16 random r of {(tokens.shape[1] - 1) // 2} distinct ids of the "
        f"vocabulary, seed {seed}",
        "repeated_random_loss_first_copy": first,
        "repeated_random_loss_second_copy": second,
        **pooled,
        "uniform_loss": math.log(model.cfg.vocab_size),
        "sample": {"prompt": model.to_string(prompt[0]), "continuation": model.to_string(sample[0, 32:])},
    }
