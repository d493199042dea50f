"""`GPTConfig`: the hyperparameters of a GPT-2 / nanoGPT decoder, with nanoGPT's names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from workbench.errors import ModelConfigError

Activation = Literal["gelu_tanh", "gelu"]


@dataclass(frozen=True)
class GPTConfig:
    """Shape and numerics of a GPT.

    `activation`: GPT-2 uses the tanh approximation of GELU ("gelu_tanh"); nanoGPT's own
    training code uses the exact erf GELU ("gelu"). Mixing them up shifts logits by ~1e-3.
    """

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257
    block_size: int = 1024
    bias: bool = True
    layer_norm_eps: float = 1e-5
    activation: Activation = "gelu_tanh"
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for field in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size", "mlp_ratio"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ModelConfigError(f"GPTConfig.{field} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ModelConfigError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.activation not in ("gelu_tanh", "gelu"):
            raise ModelConfigError(f"GPTConfig.activation must be 'gelu_tanh' or 'gelu', got {self.activation!r}")

    # Names from the interpretability literature (TransformerLens's cfg), derived.
    @property
    def d_model(self) -> int:
        return self.n_embd

    @property
    def d_head(self) -> int:
        return self.n_embd // self.n_head

    @property
    def d_mlp(self) -> int:
        return self.mlp_ratio * self.n_embd

    @property
    def d_vocab(self) -> int:
        return self.vocab_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelConfigError(f"unknown GPTConfig fields {unknown}; allowed: {sorted(known)}")
        return cls(**d)


PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
}
