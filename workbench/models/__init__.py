"""The typed GPT.

Axis vocabulary, used in every annotation, einops pattern, DataFrame column and plot axis:
`batch, pos, query_pos, key_pos, d_model, head, d_head, d_mlp, d_vocab, layer`.
"""

from workbench.models.config import PRESETS, GPTConfig
from workbench.models.gpt import GPT, Block
from workbench.models.loading import load_model
from workbench.models.tokenizer import gpt2_tokenizer

__all__ = ["GPT", "GPTConfig", "Block", "PRESETS", "gpt2_tokenizer", "load_model"]
