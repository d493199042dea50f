"""Prompt sets: repeated random tokens (induction) and IOI (Wang et al. 2022)."""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.errors import InputError
from workbench.models.tokenizer import EOT_ID


def repeated_tokens(
    *,
    n_seqs: int = 8,
    seq_len: int = 20,
    seed: int = 0,
    vocab: Tensor | None = None,
    vocab_size: int = 50257,
    prepend_bos: bool = True,
) -> Int[Tensor, "batch pos"]:
    """[BOS] + r + r for `n_seqs` random sequences r of `seq_len` distinct tokens (seeded).

    Tokens are drawn from `vocab` (a 1-D tensor of ids) when given, otherwise from
    [0, vocab_size - 1) (never the <|endoftext|> id). Shape [n_seqs, 2 seq_len (+1 with BOS)]."""
    if n_seqs < 1 or seq_len < 2:
        raise InputError(f"need n_seqs >= 1 and seq_len >= 2, got n_seqs={n_seqs}, seq_len={seq_len}")
    pool = torch.arange(vocab_size - 1) if vocab is None else torch.as_tensor(vocab).flatten()
    pool = pool[pool != EOT_ID]
    if pool.numel() < seq_len:
        raise InputError(f"the token pool has {pool.numel()} ids, fewer than seq_len={seq_len}")
    g = torch.Generator().manual_seed(seed)
    rows = [pool[torch.randperm(pool.numel(), generator=g)[:seq_len]] for _ in range(n_seqs)]
    half = torch.stack(rows)
    parts = [torch.full((n_seqs, 1), EOT_ID)] if prepend_bos else []
    return torch.cat(parts + [half, half], dim=1)
