"""Slim, picklable views of library results for `st.cache_data` (classes defined in a page
script cannot be pickled, and some results hold more than a page draws)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LensView:
    """What the logit lens page draws from a `LogitLensResult` for one prompt (batch 0): the full
    [layer batch pos d_vocab] log-probs are left out, so the cached value stays small."""

    layers: list[str]
    str_tokens: list[str]
    top_strs: list  # [layer][pos][k]
    top_probs: torch.Tensor  # [layer pos k]
    target_logprob: torch.Tensor | None  # [layer pos]
    target_prob: torch.Tensor | None  # [layer pos]
    target_rank: torch.Tensor | None  # [layer pos]

    @classmethod
    def of(cls, result, target_id: int | None) -> LensView:
        has_target = target_id is not None
        return cls(
            layers=result.layers, str_tokens=result.str_tokens[0], top_strs=[layer[0] for layer in result.top_strs],
            top_probs=result.top_probs[:, 0].cpu(),
            target_logprob=result.log_probs[:, 0, :, target_id].cpu() if has_target else None,
            target_prob=result.target_prob[:, 0].cpu() if has_target else None,
            target_rank=result.target_rank[:, 0].cpu() if has_target else None,
        )
