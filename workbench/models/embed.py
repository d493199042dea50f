"""The embeddings and the unembedding, as TransformerLens's components: `Embed` (W_E), `PosEmbed`
(W_pos) and `Unembed` (W_U, b_U). GPT-2 checkpoints call W_E `wte` and W_pos `wpe`
(`loading.KEY_TABLE` maps them), and tie the unembedding to the token embedding."""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.models.config import GPTConfig


class Embed(nn.Module):
    """Token ids -> their token embeddings, W_E[tokens] (no positional part: that is `PosEmbed`)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "*batch pos"]) -> Float[Tensor, "*batch pos d_model"]:
        return F.embedding(tokens, self.W_E)

    def extra_repr(self) -> str:
        return "W_E: [d_vocab={}, d_model={}]".format(*self.W_E.shape)


class PosEmbed(nn.Module):
    """Token ids -> the embeddings of their positions, W_pos[0 .. pos-1] for every prompt of the
    batch (only the shape of `tokens` is read)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        # broadcast over the batch (a view: one [pos d_model] copy however large the batch)
        return einops.repeat(F.embedding(positions, self.W_pos), "pos d_model -> batch pos d_model", batch=tokens.shape[0])

    def extra_repr(self) -> str:
        return "W_pos: [n_ctx={}, d_model={}]".format(*self.W_pos.shape)


class Unembed(nn.Module):
    """The normalised final residual stream (after `ln_final`) -> logits: resid @ W_U + b_U.

    GPT-2 ties the unembedding to the token embedding: W_U is `embed.W_E` transposed (a view, one
    storage: editing one edits the other), and it has no unembedding bias: b_U is zeros, a new
    tensor at each read, and is not added."""

    def __init__(self, embed: Embed) -> None:
        super().__init__()
        # Held but not registered as a submodule: the tied weight is the embed's, saved once, as embed.W_E.
        self.__dict__["tied_embed"] = embed

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.tied_embed.W_E.T

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        W_E = self.tied_embed.W_E
        return torch.zeros(W_E.shape[0], device=W_E.device, dtype=W_E.dtype)

    def forward(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        return resid @ self.W_U

    def extra_repr(self) -> str:
        return "W_U: embed.W_E transposed (tied), b_U: zeros"
