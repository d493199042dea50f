"""Head detectors: induction, previous-token and duplicate-token scores for every head.

`DETECTORS` is the one registry of them (name -> `scores(model, tokens) -> HeadScores`): the
attention_heads experiment and the dashboard run what it lists.

Definition (ours): a head's score is its attention from a query position to the key position the
detector expects, averaged over the (sequence, query position) pairs where that key exists, and only
those: for `induction`, queries whose token occurred earlier (key: the position after its most recent
earlier copy); for `duplicate_token`, the same queries (key: that copy); for `previous_token`, every
position but the first (key: the one before).

TransformerLens's notebooks (Main_Demo, ARENA 1.2) average a whole diagonal instead: on [BOS] + r + r
(r of length L) the induction score is `pattern.diagonal(offset=1 - L).mean()`, L + 2 entries per
sequence, two of which (the last two queries of the first copy, attending to BOS and r[0]) are not
repeated tokens; on the same patterns it differs from ours by about 0.01. Their previous-token score,
`pattern.diagonal(-1).mean()`, is ours. `transformer_lens.head_detector.detect_head` (error_measure
"mul") divides the attention on its detection pattern by the attention of every query row, so
queries with no earlier copy count as 0 there and its induction and duplicate-token scores are lower
than ours on text with few repeats; it also marks every earlier copy, not only the most recent."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import einops
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from workbench.errors import InputError
from workbench.hooks import act_names
from workbench.methods.prompts import repeated_tokens
from workbench.models import GPT

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


def _stripe_sum(
    patterns: Float[Tensor, "layer batch head query_pos key_pos"], targets: Tensor, valid: Tensor
) -> tuple[Float[Tensor, "layer head"], Tensor]:
    """(sum over valid (batch, query_pos) of the attention paid to key_pos = targets[batch, query_pos],
    the number of valid (batch, query_pos)): their ratio is the detector's score."""
    idx = einops.repeat(targets.clamp(min=0), "batch query_pos -> layer batch head query_pos 1",
                        layer=patterns.shape[0], head=patterns.shape[2])
    picked = patterns.gather(-1, idx.to(patterns.device)).squeeze(-1)  # [layer batch head query_pos]
    mask = einops.rearrange(valid, "batch query_pos -> 1 batch 1 query_pos").to(patterns)
    total = einops.reduce(picked * mask, "layer batch head query_pos -> layer head", "sum")
    return total, mask.sum()


def _induction_targets(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """For each query position, the position after the most recent earlier copy of its token."""
    batch, n = tokens.shape
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch query_pos key_pos]
    earlier = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)
    hits = same & earlier
    key_pos = torch.arange(n, device=tokens.device)
    last = torch.where(hits, key_pos, -1).amax(-1)  # most recent earlier copy, -1 if none
    return last + 1, last >= 0


def _previous_targets(tokens: Tensor) -> tuple[Tensor, Tensor]:
    batch, n = tokens.shape
    pos = torch.arange(n, device=tokens.device).expand(batch, n)
    return pos - 1, pos >= 1


def _duplicate_targets(tokens: Tensor) -> tuple[Tensor, Tensor]:
    targets, valid = _induction_targets(tokens)
    return targets - 1, valid


# The registry of detectors, here once: name -> where each query position's attention is expected,
# (targets [batch query_pos] key positions, valid [batch query_pos]) from the token ids.
DETECTORS: dict[str, Callable[[Tensor], tuple[Tensor, Tensor]]] = {
    "induction": _induction_targets,  # the token after the earlier copy of this one
    "previous_token": _previous_targets,  # the position before
    "duplicate_token": _duplicate_targets,  # the earlier copy itself
}


def head_scores(
    model: GPT,
    tokens: Tensor,
    *,
    detectors: Sequence[str] | None = None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, HeadScores]:
    """Every detector in `detectors` (default: all of `DETECTORS`) on the same [batch pos] tokens:
    one forward per `batch_size` sequences serves all of them; `progress(done, total)` is called
    with the sequences done after each. Same scores as the per-detector functions."""
    detectors = list(DETECTORS) if detectors is None else list(detectors)
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown or not detectors:
        raise InputError(f"detectors must be a non-empty subset of {', '.join(DETECTORS)}, got {detectors}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    tokens = model.prepare_tokens(tokens)
    sums: dict[str, list] = {d: [0.0, 0.0] for d in detectors}
    n = tokens.shape[0]
    for start in range(0, n, batch_size):
        chunk = tokens[start:start + batch_size]
        patterns = _patterns(model, chunk)
        for d in detectors:
            total, count = _stripe_sum(patterns, *DETECTORS[d](chunk))
            sums[d][0] = sums[d][0] + total
            sums[d][1] = sums[d][1] + count
        if progress is not None:
            progress(min(start + batch_size, n), n)
    return {d: HeadScores(total / count, d) for d, (total, count) in sums.items()}


def induction_scores(model: GPT, tokens: Tensor | None = None, *, seq_len: int = 20, n_seqs: int = 8,
                     seed: int = 0, vocab: Tensor | None = None) -> HeadScores:
    """Induction score: on [BOS] + r + r, the mean attention from each token of the second copy to
    the token just after its earlier occurrence (TransformerLens's definition).

    `tokens` defaults to `repeated_tokens(n_seqs=, seq_len=, seed=, vocab=)`."""
    if tokens is None:
        tokens = repeated_tokens(n_seqs=n_seqs, seq_len=seq_len, seed=seed, vocab=vocab,
                                 vocab_size=model.cfg.vocab_size)
    return _one(model, tokens, "induction")


def previous_token_scores(model: GPT, tokens: Tensor) -> HeadScores:
    """Mean attention from each position (but the first) to the one before it."""
    return _one(model, tokens, "previous_token")


def duplicate_token_scores(model: GPT, tokens: Tensor) -> HeadScores:
    """Mean attention from each repeated token to its most recent earlier copy."""
    return _one(model, tokens, "duplicate_token")


def _one(model: GPT, tokens: Tensor, detector: str) -> HeadScores:
    tokens = model.prepare_tokens(tokens)
    total, count = _stripe_sum(_patterns(model, tokens), *DETECTORS[detector](tokens))
    return HeadScores(total / count, detector)
