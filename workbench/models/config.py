"""`GPTConfig`: the hyperparameters of a GPT-2 / nanoGPT decoder, with nanoGPT's names, and
TransformerLens's `HookedTransformerConfig` names for them, read-only."""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from workbench.errors import ModelConfigError

Activation = Literal["gelu_tanh", "gelu"]


@dataclass(frozen=True)
class GPTConfig:
    """Shape and numerics of a GPT.

    `activation`: GPT-2 uses the tanh approximation of GELU ("gelu_tanh"); nanoGPT's own
    training code uses the exact erf GELU ("gelu"). Mixing them up shifts logits by ~1e-3.

    The fields carry nanoGPT's names (n_layer, n_head, n_embd, vocab_size, block_size). TransformerLens's
    names (n_layers, n_heads, d_model, d_vocab, n_ctx, act_fn, eps, ...) are read-only properties
    derived from them, or constants every GPT-2 shares, so each value has one source. Three depend on
    the model rather than its shape: `device`, `dtype` and `model_name` read the model live (a model's
    `cfg` is its own copy, bound to it by `GPT.__init__`; a config not bound to a model, such as
    `PRESETS["gpt2"]`, which many models may share, says None).
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

    # ---------------------------------------------- TransformerLens's names (HookedTransformerConfig)
    # The same for every GPT-2 (class constants: not fields, so not saved and frozen like the rest).
    normalization_type: ClassVar[str] = "LN"
    positional_embedding_type: ClassVar[str] = "standard"  # learned absolute positions (W_pos)
    original_architecture: ClassVar[str] = "GPT2LMHeadModel"
    tokenizer_name: ClassVar[str] = "gpt2"  # every workbench model uses GPT-2's tokenizer
    init_range: ClassVar[float] = 0.02  # std of GPT.init_weights
    attn_only: ClassVar[bool] = False
    final_rms: ClassVar[bool] = False
    default_prepend_bos: ClassVar[bool] = True  # text inputs get a BOS token
    n_key_value_heads: ClassVar[int | None] = None  # no grouped-query attention
    use_split_qkv_input: ClassVar[bool] = False
    # TransformerLens computes attn.hook_result only with this flag set; workbench computes it whenever
    # it is hooked or cached, with no flag, so it stays False (no forward computes it unasked).
    use_attn_result: ClassVar[bool] = False

    @property
    def n_layers(self) -> int:
        return self.n_layer

    @property
    def n_heads(self) -> int:
        return self.n_head

    @property
    def n_ctx(self) -> int:
        return self.block_size

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

    @property
    def d_vocab_out(self) -> int:
        return self.vocab_size  # the unembedding is tied to the embedding

    @property
    def eps(self) -> float:
        return self.layer_norm_eps

    @property
    def act_fn(self) -> str:
        return {"gelu_tanh": "gelu_new", "gelu": "gelu"}[self.activation]  # TransformerLens's names

    # Read off the model this config is bound to (None when unbound).
    @property
    def device(self) -> str | None:
        model = self._model()
        return None if model is None else str(model.device)

    @property
    def dtype(self) -> torch.dtype | None:
        model = self._model()
        return None if model is None else model.dtype

    @property
    def model_name(self) -> str | None:
        model = self._model()
        return None if model is None else model.name

    def bound_to(self, model: Any) -> GPTConfig:
        """A copy of this config whose `device`, `dtype` and `model_name` are `model`'s, read live
        (held by a weak reference: the config keeps no model alive)."""
        cfg = dataclasses.replace(self)
        object.__setattr__(cfg, "_model_ref", weakref.ref(model))
        return cfg

    def _model(self) -> Any:
        ref = self.__dict__.get("_model_ref")
        return None if ref is None else ref()

    def __getstate__(self) -> dict:
        # a weak reference cannot be pickled or copied; the model that holds this config binds its copy
        return {k: v for k, v in self.__dict__.items() if k != "_model_ref"}

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
