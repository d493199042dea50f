"""`WeightsMixin`: every block's weights stacked on a leading `layer` axis, as TransformerLens's
`model.W_Q`, ..., `model.OV`, `model.QK` give them.

Each block holds its own weights as views (`blocks[l].attn.W_Q [head d_model d_head]`, ...); these
stack them into new tensors [layer ...] (copies: writing to one does not change the model). A model
without biases (`GPTConfig.bias=False`) gives zeros for every bias, as its computation uses none.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.models.factored_matrix import FactoredMatrix


class WeightsMixin:
    """Stacked per-layer weights, the OV and QK circuits of every head, and every weight under
    TransformerLens's names (needs `self.blocks`; `tl_named_parameters` also the embeddings, `ln_final`
    and `unembed`)."""

    def _stack(self, part: str, name: str) -> Tensor:
        return torch.stack([getattr(getattr(block, part), name) for block in self.blocks])

    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack("attn", "W_Q")

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack("attn", "W_K")

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack("attn", "W_V")

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        return self._stack("attn", "W_O")

    @property
    def b_Q(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack("attn", "b_Q")

    @property
    def b_K(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack("attn", "b_K")

    @property
    def b_V(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack("attn", "b_V")

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return self._stack("attn", "b_O")

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return self._stack("mlp", "W_in")

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return self._stack("mlp", "W_out")

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return self._stack("mlp", "b_in")

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return self._stack("mlp", "b_out")

    def tl_named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """The weights under TransformerLens's names and shapes, as TransformerLens 4.x's
        `TransformerBridge.tl_named_parameters()` lists them: `embed.W_E`, `pos_embed.W_pos`, per block
        `blocks.{l}.attn.W_Q ... b_O`, `blocks.{l}.mlp.W_in ... b_out`, `blocks.{l}.ln1.w / b`,
        `ln2.w / b`, then `ln_final.w / b`, `unembed.W_U`, `unembed.b_U`.

        `named_parameters()` stays PyTorch's: the checkpoint's own tensors (fused `attn.c_attn`, ...).
        These are views of those where the layout allows (W_E, W_pos, LayerNorms, W_Q/K/V, W_O,
        MLP weights, W_U) and new tensors otherwise (b_U, which GPT-2 does not have, is zeros)."""
        yield "embed.W_E", self.embed.W_E
        yield "pos_embed.W_pos", self.pos_embed.W_pos
        for layer, block in enumerate(self.blocks):
            for part, names in (("attn", ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")),
                                ("mlp", ("W_in", "W_out", "b_in", "b_out")), ("ln1", ("w", "b")), ("ln2", ("w", "b"))):
                for name in names:
                    yield f"blocks.{layer}.{part}.{name}", getattr(getattr(block, part), name)
        yield "ln_final.w", self.ln_final.w
        yield "ln_final.b", self.ln_final.b
        yield "unembed.W_U", self.unembed.W_U
        yield "unembed.b_U", self.unembed.b_U

    @property
    def OV(self) -> FactoredMatrix:
        """Every head's OV circuit W_V @ W_O, [layer head d_model d_model] of rank d_head: a residual-stream
        vector x read by a head writes x @ OV[layer, head] (times its attention weight)."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """Every head's QK circuit W_Q @ W_K.T, [layer head d_model d_model] of rank d_head: the attention
        score of query x_q on key x_k is x_q @ QK[layer, head] @ x_k / sqrt(d_head), before biases."""
        return FactoredMatrix(self.W_Q, self.W_K.mT)
