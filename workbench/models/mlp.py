"""The MLP sublayer: c_fc -> GELU -> c_proj.

On x86 CPUs, a no-gradient fp32 forward whose pre-activation nobody hooks runs c_fc and the GELU
as one oneDNN kernel (the GELU applied as the matmul writes its output). PyTorch's separate
tanh-GELU pass re-reads the whole [tokens d_mlp] output and costs up to two thirds of the c_fc
matmul (1024 tokens, 2 threads); fused, the 124M forward at 8 x 128 tokens is about 7 % faster.
The numbers are the unfused ones to float rounding (relative 1e-6). `FUSE_GELU = False` turns it
off (then exactly `F.gelu(c_fc(x))`).
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from workbench.errors import is_out_of_memory
from workbench.hooks.hook_point import HookPoint
from workbench.models.config import GPTConfig

FUSE_GELU = True
_KERNEL = getattr(torch.ops.mkldnn, "_linear_pointwise", None)  # an internal op of PyTorch's oneDNN build
_FUSED_KERNEL = (
    platform.machine().lower() in {"x86_64", "amd64"} and torch.backends.mkldnn.is_available() and _KERNEL is not None
)


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
        post = None if self.hook_pre.has_hooks else _fused_c_fc_gelu(x, self.c_fc, self.approximate)
        if post is None:
            pre: Float[Tensor, "batch pos d_mlp"] = self.hook_pre(self.c_fc(x))
            post = F.gelu(pre, approximate=self.approximate)
        post: Float[Tensor, "batch pos d_mlp"] = self.hook_post(post)
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


def _fused_c_fc_gelu(x: Float[Tensor, "batch pos d_model"], layer: nn.Linear, approximate: str) -> Tensor | None:
    """GELU(layer(x)) as one oneDNN kernel, or None where it may not run: anything but plain fp32
    CPU tensors, a weight not in nn.Linear's own layout, something needing a gradient (the kernel
    has none), PyTorch module hooks on the layer, torch.compile or tracing, an empty input, a torch
    whose internal op differs (then never again in this process)."""
    global _FUSED_KERNEL
    tensors = (x, layer.weight) if layer.bias is None else (x, layer.weight, layer.bias)
    usable = (
        FUSE_GELU and _FUSED_KERNEL
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and x.numel() > 0
        and layer.weight.is_contiguous()  # oneDNN would re-lay a transposed view out at every call
        and type(layer).forward is nn.Linear.forward
        and not (layer._forward_hooks or layer._forward_pre_hooks)  # PyTorch module hooks on c_fc must run
        and not (nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)
        and not torch.overrides.has_torch_function(tensors)
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )
    if not usable:
        return None
    try:
        return _KERNEL(x, layer.weight, layer.bias, "gelu", [], approximate)
    except (RuntimeError, TypeError) as e:
        if is_out_of_memory(e):
            raise  # the plain path would need the memory too; callers that split work on OOM see it
        _FUSED_KERNEL = False
        return None
