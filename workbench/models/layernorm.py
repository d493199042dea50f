"""LayerNorm with the two hook points TransformerLens exposes: `hook_scale` and `hook_normalized`."""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from workbench.hooks.hook_point import HookPoint, run_and_detect_edit
from workbench.models.config import GPTConfig


class LayerNorm(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.eps = cfg.layer_norm_eps
        self.weight = nn.Parameter(torch.ones(cfg.d_model))
        self.bias = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.bias else None
        self.hook_scale = HookPoint()  # [batch pos 1]: sqrt(var + eps) of the input
        # [batch pos d_model]: (x - mean) / scale, before weight and bias (as TransformerLens)
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if not (self.hook_scale.has_hooks or self.hook_normalized.has_hooks):
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)  # fused: no hooks
        if torch.is_grad_enabled() and x.requires_grad:
            # One graph through the hooked tensors, so gradients reach them (and the scale's: the
            # fused kernel's statistics carry none).
            if self.hook_scale.has_hooks:
                centred = x - einops.reduce(x, "batch pos d_model -> batch pos 1", "mean")
                var = einops.reduce(centred.pow(2), "batch pos d_model -> batch pos 1", "mean")
                scale: Float[Tensor, "batch pos 1"] = self.hook_scale((var + self.eps).sqrt())
                normalized = centred / scale
            else:
                normalized = F.layer_norm(x, x.shape[-1:], None, None, self.eps)
            return self._affine(self.hook_normalized(normalized))
        # The fused kernel gives (x - mean) / sqrt(var + eps) and its statistics in one pass; while
        # hooks only read them (caching), the output is the fused LayerNorm's, one more pass.
        computed, mean, rstd = torch.native_layer_norm(x, x.shape[-1:], None, None, self.eps)
        normalized, edited = computed, False
        if self.hook_scale.has_hooks:
            scale, edited = run_and_detect_edit(self.hook_scale, rstd.reciprocal())  # sqrt(var + eps)
            if edited:
                normalized = (x - mean) / scale  # normalise by what the hook gave
        normalized, edited_normalized = run_and_detect_edit(self.hook_normalized, normalized)
        if edited or edited_normalized:
            return self._affine(normalized)
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)

    def _affine(self, normalized: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        normalized = normalized * self.weight
        return normalized if self.bias is None else normalized + self.bias

    # TransformerLens's names for the affine parameters (the parameters themselves; zeros for no bias).
    @property
    def w(self) -> Float[Tensor, "d_model"]:
        return self.weight

    @property
    def b(self) -> Float[Tensor, "d_model"]:
        return self.weight.new_zeros(self.weight.shape) if self.bias is None else self.bias
