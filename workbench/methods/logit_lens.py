"""Logit lens: read the residual stream at every layer as if it were the last.

Each layer's residual stream (resid_pre of every block, then the final resid_post) goes through
the model's own final LayerNorm and unembedding, so the last row is exactly the model's logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import einops
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.errors import InputError
from workbench.hooks import ActivationCache, act_name, act_names
from workbench.models import GPT


@dataclass
class LogitLensResult:
    """Next-token predictions read off every layer (`layers`: "0_pre" ... "{n-1}_pre", "final_post").

    log_probs[layer, batch, pos, :] is the log-softmax of that layer's residual stream through
    ln_final and the unembedding; top_tokens / top_probs are its top k; target_rank (0 = the most
    likely token) and target_prob are those of `targets[batch, pos]` when targets were given."""

    log_probs: Float[Tensor, "layer batch pos d_vocab"]
    top_tokens: Int[Tensor, "layer batch pos k"]
    top_probs: Float[Tensor, "layer batch pos k"]
    layers: list[str]
    str_tokens: list[list[str]]
    top_strs: list  # [layer][batch][pos][k] decoded top tokens
    targets: Int[Tensor, "batch pos"] | None = None
    target_rank: Int[Tensor, "layer batch pos"] | None = None
    target_prob: Float[Tensor, "layer batch pos"] | None = None

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, batch, pos): the input token, the top-1 prediction and its
        probability, and the target's rank and probability (when targets were given)."""
        n_layer, batch, n_pos, _ = self.top_tokens.shape
        rows = []
        for l in range(n_layer):
            for b in range(batch):
                for p in range(n_pos):
                    row = {
                        "layer": self.layers[l], "layer_index": l, "batch": b, "pos": p,
                        "token": self.str_tokens[b][p],
                        "top_token": self.top_strs[l][b][p][0],
                        "top_token_id": int(self.top_tokens[l, b, p, 0]),
                        "top_prob": float(self.top_probs[l, b, p, 0]),
                    }
                    if self.targets is not None:
                        row["target_id"] = int(self.targets[b, p])
                        row["target_rank"] = int(self.target_rank[l, b, p])
                        row["target_prob"] = float(self.target_prob[l, b, p])
                    rows.append(row)
        return pd.DataFrame(rows)

    def top_k_frame(self) -> pd.DataFrame:
        """One row per (layer, batch, pos, k): the k-th most likely token and its probability."""
        n_layer, batch, n_pos, top_k = self.top_tokens.shape
        return pd.DataFrame([
            {"layer": self.layers[l], "layer_index": l, "batch": b, "pos": p, "token": self.str_tokens[b][p],
             "k": k, "top_token": self.top_strs[l][b][p][k], "top_token_id": int(self.top_tokens[l, b, p, k]),
             "prob": float(self.top_probs[l, b, p, k])}
            for l in range(n_layer) for b in range(batch) for p in range(n_pos) for k in range(top_k)
        ])


def logit_lens(
    model: GPT,
    tokens: Tensor | str | Sequence[str],
    *,
    targets: int | Tensor | None = None,
    top_k: int = 5,
) -> LogitLensResult:
    """Project every layer's residual stream through ln_final and the unembedding.

    `tokens`: [batch pos] ids or text. `targets`: token ids whose rank and probability to track,
    one id for every position, a [pos] or a [batch pos] tensor. Holds [layer batch pos d_vocab]
    log-probs: (n_layer + 1) x batch x pos x 50257 floats, so keep prompts short."""
    tokens = model.prepare_tokens(tokens, name="tokens")
    batch, n_pos = tokens.shape
    if not 1 <= top_k <= model.cfg.d_vocab:
        raise InputError(f"top_k must be in [1, {model.cfg.d_vocab}], got {top_k}")
    if targets is not None:
        targets = _broadcast_targets(targets, batch, n_pos, model.cfg.d_vocab).to(tokens.device)
    names = act_names("resid_pre", range(model.cfg.n_layer)) + [act_name("resid_post", model.cfg.n_layer - 1)]
    store = {}
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, lambda x, hook: store.__setitem__(hook.name, x)) for n in names]):
        model.run_blocks(model.embed_input(tokens))  # the residual streams only: the lens does the unembedding
        resid, labels = ActivationCache(store, model).accumulated_resid(return_labels=True)
        # every layer in one matmul: [(layer batch) pos d_model] -> [(layer batch) pos d_vocab]
        flat = model.logits_from_resid(einops.rearrange(resid, "layer batch pos d_model -> (layer batch) pos d_model"))
        log_probs = einops.rearrange(flat.float().log_softmax(-1), "(layer batch) pos d_vocab -> layer batch pos d_vocab",
                                     layer=len(labels))
    top = log_probs.topk(top_k, dim=-1)
    top_strs = [[[[model.tokenizer.decode([t]) for t in pos] for pos in row] for row in layer]
                for layer in top.indices.tolist()]
    result = LogitLensResult(
        log_probs=log_probs, top_tokens=top.indices, top_probs=top.values.exp(), layers=labels,
        str_tokens=[model.to_str_tokens(row) for row in tokens], top_strs=top_strs,
    )
    if targets is not None:
        index = einops.repeat(targets, "batch pos -> layer batch pos 1", layer=len(labels))
        picked = log_probs.gather(-1, index)  # [layer batch pos 1]
        result.targets = targets
        result.target_rank = (log_probs > picked).sum(-1)
        result.target_prob = picked[..., 0].exp()
    return result


def _broadcast_targets(targets: int | Tensor, batch: int, n_pos: int, d_vocab: int) -> Tensor:
    t = torch.as_tensor(targets, dtype=torch.long)
    if t.ndim == 0 or (t.ndim == 1 and t.shape[0] == n_pos) or t.shape == (batch, n_pos):
        t = t.expand(batch, n_pos)
    else:
        raise InputError(
            f"targets must be one id, a [pos] or a [batch pos] tensor (pos={n_pos}, batch={batch}), "
            f"got shape {tuple(t.shape)}"
        )
    if int(t.min()) < 0 or int(t.max()) >= d_vocab:
        raise InputError(f"target ids must be in [0, {d_vocab - 1}]")
    return t
