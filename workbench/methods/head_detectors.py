"""Head detectors: induction, previous-token and duplicate-token scores for every head."""

from __future__ import annotations

from dataclasses import dataclass, field

import einops
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from workbench.hooks import act_names
from workbench.methods.prompts import repeated_tokens
from workbench.models import GPT

DETECTORS = ("induction", "previous_token", "duplicate_token")


@dataclass
class HeadScores:
    """values[layer, head]: mean attention a head puts on the position its detector expects."""

    values: Float[Tensor, "layer head"]
    detector: str
    labels: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        n_layer, n_head = self.values.shape
        return pd.DataFrame(
            {
                "layer": [l for l in range(n_layer) for _ in range(n_head)],
                "head": [h for _ in range(n_layer) for h in range(n_head)],
                "detector": self.detector,
                "score": self.values.flatten().tolist(),
            }
        )

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The k highest-scoring heads as (layer, head, score)."""
        flat = self.values.flatten()
        idx = flat.topk(min(k, flat.numel())).indices
        n_head = self.values.shape[1]
        return [(int(i) // n_head, int(i) % n_head, float(flat[i])) for i in idx]


def _patterns(model: GPT, tokens: Tensor) -> Float[Tensor, "layer batch head query_pos key_pos"]:
    names = act_names("pattern", range(model.cfg.n_layer))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return torch.stack([cache[n] for n in names]).float()


def _stripe_score(
    patterns: Float[Tensor, "layer batch head query_pos key_pos"], targets: Tensor, valid: Tensor
) -> Float[Tensor, "layer head"]:
    """Mean over valid (batch, query_pos) of the attention paid to key_pos = targets[batch, query_pos]."""
    idx = einops.repeat(targets.clamp(min=0), "batch query_pos -> layer batch head query_pos 1",
                        layer=patterns.shape[0], head=patterns.shape[2])
    picked = patterns.gather(-1, idx.to(patterns.device)).squeeze(-1)  # [layer batch head query_pos]
    mask = einops.rearrange(valid, "batch query_pos -> 1 batch 1 query_pos").to(patterns)
    total = einops.reduce(picked * mask, "layer batch head query_pos -> layer head", "sum")
    return total / mask.sum()


def induction_scores(model: GPT, tokens: Tensor | None = None, *, seq_len: int = 20, n_seqs: int = 8,
                     seed: int = 0, vocab: Tensor | None = None) -> HeadScores:
    """Induction score: on [BOS] + r + r, the mean attention from each token of the second copy to
    the token just after its earlier occurrence (TransformerLens's definition).

    `tokens` defaults to `repeated_tokens(n_seqs=, seq_len=, seed=, vocab=)`."""
    if tokens is None:
        tokens = repeated_tokens(n_seqs=n_seqs, seq_len=seq_len, seed=seed, vocab=vocab,
                                 vocab_size=model.cfg.vocab_size)
    tokens = model.prepare_tokens(tokens)
    targets, valid = _induction_targets(tokens)
    return HeadScores(_stripe_score(_patterns(model, tokens), targets, valid), "induction")


def _induction_targets(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """For each query position, the position after the most recent earlier copy of its token."""
    batch, n = tokens.shape
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch query_pos key_pos]
    earlier = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)
    hits = same & earlier
    key_pos = torch.arange(n, device=tokens.device)
    last = torch.where(hits, key_pos, -1).amax(-1)  # most recent earlier copy, -1 if none
    return last + 1, last >= 0


def previous_token_scores(model: GPT, tokens: Tensor) -> HeadScores:
    """Mean attention from each position (but the first) to the one before it."""
    tokens = model.prepare_tokens(tokens)
    batch, n = tokens.shape
    pos = torch.arange(n, device=tokens.device).expand(batch, n)
    return HeadScores(_stripe_score(_patterns(model, tokens), pos - 1, pos >= 1), "previous_token")


def duplicate_token_scores(model: GPT, tokens: Tensor) -> HeadScores:
    """Mean attention from each repeated token to its most recent earlier copy."""
    tokens = model.prepare_tokens(tokens)
    targets, valid = _induction_targets(tokens)
    return HeadScores(_stripe_score(_patterns(model, tokens), targets - 1, valid), "duplicate_token")
