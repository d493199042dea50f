"""The MLP sublayer: c_fc -> GELU -> c_proj."""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from workbench.hooks.hook_point import HookPoint
from workbench.models.config import GPTConfig


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)
        # GPT-2 uses the tanh approximation of GELU; exact GELU shifts logits by ~1e-3.
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.hook_pre = HookPoint()  # [batch pos d_mlp]
        self.hook_post = HookPoint()  # [batch pos d_mlp]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre: Float[Tensor, "batch pos d_mlp"] = self.hook_pre(self.c_fc(x))
        post: Float[Tensor, "batch pos d_mlp"] = self.hook_post(F.gelu(pre, approximate=self.approximate))
        return self.c_proj(post)

    # Per-neuron weights as TransformerLens lays them out (views, not copies; zeros for a bias-free model).
    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.c_fc.weight.T

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        return self.c_proj.weight.T

    @property
    def b_in(self) -> Float[Tensor, "d_mlp"]:
        return self.c_fc.weight.new_zeros(self.c_fc.out_features) if self.c_fc.bias is None else self.c_fc.bias

    @property
    def b_out(self) -> Float[Tensor, "d_model"]:
        return self.c_proj.weight.new_zeros(self.c_proj.out_features) if self.c_proj.bias is None else self.c_proj.bias
