"""LayerNorm with the two hook points TransformerLens exposes: `hook_scale` and `hook_normalized`."""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from workbench.hooks.hook_point import HookPoint
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
        if not self.hook_scale.has_hooks:
            normalized = F.layer_norm(x, x.shape[-1:], None, None, self.eps)
        elif torch.is_grad_enabled() and x.requires_grad:
            # Gradients flow through the scale too (the fused kernel's statistics carry none).
            centred = x - einops.reduce(x, "batch pos d_model -> batch pos 1", "mean")
            var = einops.reduce(centred.pow(2), "batch pos d_model -> batch pos 1", "mean")
            scale: Float[Tensor, "batch pos 1"] = self.hook_scale((var + self.eps).sqrt())
            normalized = centred / scale
        else:
            # One fused pass gives (x - mean) / sqrt(var + eps) and the statistics, so caching the
            # scale costs no extra pass over x (the unfused mean, variance and division cost five).
            normalized, mean, rstd = torch.native_layer_norm(x, x.shape[-1:], None, None, self.eps)
            computed: Float[Tensor, "batch pos 1"] = rstd.reciprocal()  # sqrt(var + eps)
            version = computed._version
            scale = self.hook_scale(computed)
            if scale is not computed or computed._version != version:
                normalized = (x - mean) / scale  # a hook changed the scale: normalise by what it gave
        normalized = self.hook_normalized(normalized)
        if self.bias is None:
            return normalized * self.weight
        return torch.addcmul(self.bias, normalized, self.weight)  # bias + normalized * weight, one pass

    # TransformerLens's names for the affine parameters (the parameters themselves; zeros for no bias).
    @property
    def w(self) -> Float[Tensor, "d_model"]:
        return self.weight

    @property
    def b(self) -> Float[Tensor, "d_model"]:
        return self.weight.new_zeros(self.weight.shape) if self.bias is None else self.bias
