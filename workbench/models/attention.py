"""Causal multi-head self-attention: c_attn -> heads -> c_proj.

Weights are stored fused, as in GPT-2 checkpoints (one matmul for q, k and v); the per-head
views `W_Q [head d_model d_head]`, `W_O [head d_head d_model]`, ... share their storage, and `OV`
and `QK` are each head's circuits as `FactoredMatrix`es (TransformerLens's definitions).

The attention maths lives here once, as pieces that `forward` and the methods call:
`split_qkv` (x -> q, k, v), `causal_mask`, `scores` (masked, scaled), `pattern`, `mix`
(pattern-weighted values, z), `attend` (q, k, v -> z with PyTorch's fused kernel: the same
numbers as `mix(pattern(scores(...)))`), `head_results` (each head's output z W_O) and
`project` (all heads through c_proj, with its bias). Queries may sit at any positions
(`query_pos`, for packed sweeps that compute a row's later positions only); keys always run
from position 0.
"""

from __future__ import annotations

import math

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from workbench.errors import InputError
from workbench.hooks.hook_point import HookPoint, run_and_detect_edit
from workbench.models.config import GPTConfig
from workbench.models.factored_matrix import FactoredMatrix


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
        q, k, v = self.split_qkv(x)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks:
            z = self._attend_with_pattern(q, k, v)
        else:
            z = self.attend(q, k, v)
        z = self.hook_z(z)
        if self.hook_result.has_hooks:
            # Per-head outputs cost an extra [batch pos head d_model] tensor: only when asked for.
            result = self.hook_result(self.head_results(z))
            out = einops.reduce(result, "batch pos head d_model -> batch pos d_model", "sum")
            return out if self.c_proj.bias is None else out + self.c_proj.bias
        return self.project(z)

    def _attend_with_pattern(
        self,
        q: Float[Tensor, "batch pos head d_head"],
        k: Float[Tensor, "batch pos head d_head"],
        v: Float[Tensor, "batch pos head d_head"],
    ) -> Float[Tensor, "batch pos head d_head"]:
        """z with the scores and pattern materialised for their hooks. While the hooks only read them
        (a cache, no gradients), z comes from the fused kernel as without hooks: the plain forward's
        numbers, and fewer passes than pattern @ v plus the copies into and out of its head-major
        layout. An edit (a returned tensor or an in-place change) or a gradient to follow through the
        pattern takes pattern @ v (the same numbers to 1e-5)."""
        scores, edited_scores = run_and_detect_edit(self.hook_attn_scores, self.scores(q, k))
        pattern, edited_pattern = run_and_detect_edit(self.hook_pattern, self.pattern(scores))
        if edited_scores or edited_pattern or pattern.requires_grad:
            return self.mix(pattern, v)
        return self.attend(q, k, v)

    # ------------------------------------------------------------------ the pieces
    def split_qkv(
        self, x: Float[Tensor, "batch pos d_model"], *, parts: str = "qkv"
    ) -> tuple[Float[Tensor, "batch pos head d_head"], ...]:
        """Queries, keys and values of every head: one matmul (c_attn), split into heads. `parts`
        ("kv", "q", ...: adjacent ones, in that order) computes those only, with c_attn's rows for them."""
        first = "qkv".find(parts)
        if not parts or first < 0:
            raise InputError(f"split_qkv's parts must be adjacent letters of 'qkv' in that order ('qkv', 'qk', "
                             f"'kv', 'q', 'k' or 'v'), got {parts!r}")
        if parts == "qkv":
            out = self.c_attn(x)
        else:
            rows = slice(first * self.n_head * self.d_head, (first + len(parts)) * self.n_head * self.d_head)
            bias = None if self.c_attn.bias is None else self.c_attn.bias[rows]
            out = F.linear(x, self.c_attn.weight[rows], bias)
        return tuple(einops.rearrange(
            out, "batch pos (part head d_head) -> part batch pos head d_head", part=len(parts), head=self.n_head
        ))

    @staticmethod
    def causal_mask(
        query_pos: Int[Tensor, "*batch query_pos"], key_pos: Int[Tensor, "key_pos"]
    ) -> Bool[Tensor, "*batch query_pos key_pos"]:
        """True where a query may attend to a key: the key is at or before the query's position."""
        return key_pos <= query_pos[..., None]

    def scores(
        self,
        q: Float[Tensor, "batch query_pos head d_head"],
        k: Float[Tensor, "batch key_pos head d_head"],
        *,
        query_pos: Int[Tensor, "batch query_pos"] | None = None,
    ) -> Float[Tensor, "batch head query_pos key_pos"]:
        """q . k / sqrt(d_head), -inf where the key is after the query. Keys are at positions
        0, 1, ...; queries at `query_pos` (default 0, 1, ...)."""
        batch, n_head = q.shape[0], q.shape[2]
        allowed = self._allowed(q, k, query_pos)  # [1 query_pos key_pos], or [batch 1 ...] per prompt
        # The mask as an additive bias (0 or -inf), added by the same kernel that multiplies and
        # scales (one pass over the [query_pos key_pos] maps instead of three).
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(~allowed, float("-inf"))
        if allowed.ndim == 4:  # a mask per prompt
            bias = einops.repeat(bias, "batch 1 query_pos key_pos -> (batch head) query_pos key_pos", head=n_head)
        scores = torch.baddbmm(
            bias,
            einops.rearrange(q, "batch query_pos head d_head -> (batch head) query_pos d_head"),
            einops.rearrange(k, "batch key_pos head d_head -> (batch head) d_head key_pos"),
            alpha=1 / math.sqrt(self.d_head),
        )
        return einops.rearrange(scores, "(batch head) query_pos key_pos -> batch head query_pos key_pos", batch=batch)

    def pattern(
        self, scores: Float[Tensor, "batch head query_pos key_pos"]
    ) -> Float[Tensor, "batch head query_pos key_pos"]:
        """Attention weights: softmax of the scores over keys."""
        return scores.softmax(dim=-1)

    def mix(
        self, pattern: Float[Tensor, "batch head query_pos key_pos"], v: Float[Tensor, "batch key_pos head d_head"]
    ) -> Float[Tensor, "batch query_pos head d_head"]:
        """z: each query's pattern-weighted sum of the values."""
        return einops.einsum(
            pattern, v, "batch head query_pos key_pos, batch key_pos head d_head -> batch query_pos head d_head"
        )

    def attend(
        self,
        q: Float[Tensor, "batch query_pos head d_head"],
        k: Float[Tensor, "batch key_pos head d_head"],
        v: Float[Tensor, "batch key_pos head d_head"],
        *,
        query_pos: Int[Tensor, "batch query_pos"] | None = None,
    ) -> Float[Tensor, "batch query_pos head d_head"]:
        """z = mix(pattern(scores(q, k)), v) in PyTorch's fused kernel, without the [query_pos key_pos]
        tensors (positions as in `scores`)."""
        if query_pos is None:
            # The kernel's own causal rule (query i sees keys 0..i) is causal_mask's for queries at
            # 0, 1, ...; it skips the masked blocks, faster than passing the mask.
            mask = None
        else:
            mask = self._allowed(q, k, query_pos)
        q, k, v = (einops.rearrange(t, "batch pos head d_head -> batch head pos d_head") for t in (q, k, v))
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return einops.rearrange(z, "batch head pos d_head -> batch pos head d_head")

    def head_results(
        self, z: Float[Tensor, "batch pos head d_head"], *, heads: Int[Tensor, "head"] | None = None
    ) -> Float[Tensor, "batch pos head d_model"]:
        """Each head's output z W_O, before the bias b_O (which belongs to no head). With `heads`,
        slice i of z's head axis belongs to head heads[i] (e.g. a few heads, or one head repeated)."""
        W_O = self.W_O if heads is None else self.W_O[heads]
        return einops.einsum(z, W_O, "batch pos head d_head, head d_head d_model -> batch pos head d_model")

    def project(self, z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos d_model"]:
        """The layer's output: every head through c_proj, plus its bias."""
        return self.c_proj(einops.rearrange(z, "batch pos head d_head -> batch pos (head d_head)"))

    def _allowed(
        self, q: Tensor, k: Tensor, query_pos: Int[Tensor, "batch query_pos"] | None
    ) -> Bool[Tensor, "*batch 1 query_pos key_pos"]:
        """causal_mask for queries q at `query_pos` (default 0, 1, ...) and keys k at 0, 1, ...,
        with a head axis to broadcast over."""
        if query_pos is None:
            query_pos = torch.arange(q.shape[1], device=q.device)
        allowed = self.causal_mask(query_pos, torch.arange(k.shape[1], device=k.device))
        return einops.rearrange(allowed, "... query_pos key_pos -> ... 1 query_pos key_pos")

    # Per-head weights as TransformerLens lays them out (views of c_attn / c_proj, not copies).
    def _qkv_weight(self, i: int) -> Float[Tensor, "head d_model d_head"]:
        d_model = self.c_attn.in_features
        w = self.c_attn.weight[i * d_model : (i + 1) * d_model]
        return einops.rearrange(w, "(head d_head) d_model -> head d_model d_head", head=self.n_head)

    def _qkv_bias(self, i: int) -> Float[Tensor, "head d_head"]:
        d_model = self.c_attn.in_features
        if self.c_attn.bias is None:  # a bias-free model: zeros, as its computation adds none
            return self.c_attn.weight.new_zeros(self.n_head, self.d_head)
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
    def b_O(self) -> Float[Tensor, "d_model"]:
        return self.c_proj.weight.new_zeros(self.c_proj.out_features) if self.c_proj.bias is None else self.c_proj.bias

    # The head's circuits as TransformerLens defines them, [head d_model d_model] of rank d_head.
    @property
    def OV(self) -> FactoredMatrix:
        """W_V @ W_O per head: what a head writes for each residual-stream direction it reads."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """W_Q @ W_K.T per head: x_q @ QK @ x_k / sqrt(d_head) is the attention score before biases."""
        return FactoredMatrix(self.W_Q, self.W_K.mT)
