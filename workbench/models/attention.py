"""Causal multi-head self-attention: c_attn -> heads -> c_proj.

Weights are stored fused, as in GPT-2 checkpoints (one matmul for q, k and v); the per-head
views `W_Q [head d_model d_head]`, `W_O [head d_head d_model]`, ... share their storage.
"""

from __future__ import annotations

import math

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from workbench.hooks.hook_point import HookPoint
from workbench.models.config import GPTConfig


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.d_head = cfg.n_head, cfg.d_head
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.hook_q = HookPoint()  # [batch pos head d_head]
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch head query_pos key_pos], -inf above the diagonal
        self.hook_pattern = HookPoint()  # [batch head query_pos key_pos]
        self.hook_z = HookPoint()  # [batch pos head d_head]
        self.hook_result = HookPoint()  # [batch pos head d_model], each head's output before b_O

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        # one matmul for q, k and v, split into heads
        q, k, v = einops.rearrange(
            self.c_attn(x), "batch pos (three head d_head) -> three batch pos head d_head", three=3, head=self.n_head
        )
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks:
            z = self.explicit_attention(q, k, v)
        else:
            z = self.fused_attention(q, k, v)
        z = self.hook_z(z)
        if self.hook_result.has_hooks:
            # Per-head outputs cost an extra [batch pos head d_model] tensor: only when asked for.
            result: Float[Tensor, "batch pos head d_model"] = self.hook_result(
                einops.einsum(z, self.W_O, "batch pos head d_head, head d_head d_model -> batch pos head d_model")
            )
            out = einops.reduce(result, "batch pos head d_model -> batch pos d_model", "sum")
            return out if self.c_proj.bias is None else out + self.c_proj.bias
        return self.c_proj(einops.rearrange(z, "batch pos head d_head -> batch pos (head d_head)"))

    def fused_attention(
        self,
        q: Float[Tensor, "batch pos head d_head"],
        k: Float[Tensor, "batch pos head d_head"],
        v: Float[Tensor, "batch pos head d_head"],
    ) -> Float[Tensor, "batch pos head d_head"]:
        q, k, v = (einops.rearrange(t, "batch pos head d_head -> batch head pos d_head") for t in (q, k, v))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return einops.rearrange(z, "batch head pos d_head -> batch pos head d_head")

    def explicit_attention(
        self,
        q: Float[Tensor, "batch pos head d_head"],
        k: Float[Tensor, "batch pos head d_head"],
        v: Float[Tensor, "batch pos head d_head"],
    ) -> Float[Tensor, "batch pos head d_head"]:
        scores = einops.einsum(
            q, k, "batch query_pos head d_head, batch key_pos head d_head -> batch head query_pos key_pos"
        ) / math.sqrt(self.d_head)
        n = scores.shape[-1]
        future = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu_(1)
        scores: Float[Tensor, "batch head query_pos key_pos"] = self.hook_attn_scores(
            scores.masked_fill(future, float("-inf"))
        )
        pattern: Float[Tensor, "batch head query_pos key_pos"] = self.hook_pattern(scores.softmax(dim=-1))
        return einops.einsum(
            pattern, v, "batch head query_pos key_pos, batch key_pos head d_head -> batch query_pos head d_head"
        )

    # Per-head weights as TransformerLens lays them out (views of c_attn / c_proj, not copies).
    def _qkv_weight(self, i: int) -> Float[Tensor, "head d_model d_head"]:
        d_model = self.c_attn.in_features
        w = self.c_attn.weight[i * d_model : (i + 1) * d_model]
        return einops.rearrange(w, "(head d_head) d_model -> head d_model d_head", head=self.n_head)

    def _qkv_bias(self, i: int) -> Float[Tensor, "head d_head"] | None:
        if self.c_attn.bias is None:
            return None
        d_model = self.c_attn.in_features
        b = self.c_attn.bias[i * d_model : (i + 1) * d_model]
        return einops.rearrange(b, "(head d_head) -> head d_head", head=self.n_head)

    W_Q = property(lambda self: self._qkv_weight(0))
    W_K = property(lambda self: self._qkv_weight(1))
    W_V = property(lambda self: self._qkv_weight(2))
    b_Q = property(lambda self: self._qkv_bias(0))
    b_K = property(lambda self: self._qkv_bias(1))
    b_V = property(lambda self: self._qkv_bias(2))

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        return einops.rearrange(self.c_proj.weight, "d_model (head d_head) -> head d_head d_model", head=self.n_head)

    @property
    def b_O(self) -> Float[Tensor, "d_model"] | None:
        return self.c_proj.bias
