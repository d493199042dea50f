"""Text and token ids for a GPT: tokenizing, decoding, and checking a model input once, at the entry point.

`GPT.forward` takes [batch pos] ids and trusts them; `prepare_tokens` is where an input is checked
(shape, dtype, range, context length, empty text) and converted, once per call of a public entry
point (`model(...)`, `run_with_cache`, `run_with_hooks`, `generate`, the methods).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.errors import ContextLengthError, InputError
from workbench.models.config import GPTConfig
from workbench.models.tokenizer import EOT_ID, gpt2_tokenizer


def _is_text(tokens: object) -> bool:
    return isinstance(tokens, str) or (
        isinstance(tokens, (list, tuple)) and bool(tokens) and isinstance(tokens[0], str)
    )


def _check_text(texts: list[str], name: str) -> None:
    """A prompt with no text is an error (it would run as BOS alone); BOS-only ids are allowed."""
    for i, text in enumerate(texts):
        if isinstance(text, str) and not text:
            where = name if len(texts) == 1 else f"{name}[{i}]"
            raise InputError(
                f"{where}: the prompt is empty (no text); give some text, or pass token ids "
                f"(e.g. torch.tensor([[{EOT_ID}]]) for the BOS token alone)"
            )


class TokenMixin:
    """The GPT-2 tokenizer on a model: `to_tokens`, `to_string`, `to_str_tokens`, `to_single_token`,
    and `prepare_tokens`, the input check. Needs `cfg` and `device` on the model."""

    cfg: GPTConfig
    device: torch.device

    def prepare_tokens(self, tokens: Tensor | str | Sequence, *, name: str = "tokens") -> Int[Tensor, "batch pos"]:
        """Check a model input and return it as [batch pos] int64 ids on the model's device.

        Text is tokenized with a BOS token; empty text is refused (`name` says which argument it
        was in the message). Raises InputError (ContextLengthError for too long)."""
        if _is_text(tokens):
            texts = [tokens] if isinstance(tokens, str) else list(tokens)
            _check_text(texts, name)
            tokens = self.to_tokens(texts)
        if not isinstance(tokens, Tensor):
            raise InputError(
                f"{name} must be a torch.Tensor of token ids, a string or a list of strings, got {type(tokens).__name__}"
            )
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise InputError(f"{name} must be an integer tensor of token ids, got dtype {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise InputError(f"{name} must have shape [batch pos] or [pos], got shape {tuple(tokens.shape)}")
        if tokens.numel() == 0:
            raise InputError(f"{name} are empty (shape {tuple(tokens.shape)}): give at least one token")
        if tokens.shape[1] > self.cfg.block_size:
            raise ContextLengthError(
                f"{name}: the prompt is {tokens.shape[1]} tokens long, but this model's context (block_size) is "
                f"{self.cfg.block_size} tokens"
            )
        lo, hi = int(tokens.min()), int(tokens.max())  # the one host synchronisation, once per call
        if lo < 0 or hi >= self.cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise InputError(f"{name}: token id {bad} is out of range: ids must be in [0, {self.cfg.vocab_size - 1}]")
        return tokens.to(device=self.device, dtype=torch.long)

    @property
    def tokenizer(self):
        return gpt2_tokenizer()

    def to_tokens(self, text: str | Sequence[str], *, prepend_bos: bool = True) -> Int[Tensor, "batch pos"]:
        """GPT-2 BPE ids of a string or list of strings (right-padded with <|endoftext|>).

        Empty text is refused, with or without BOS: it would run as a BOS-only sequence."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InputError("to_tokens takes a string or a non-empty list of strings")
        _check_text(texts, "text")
        ids = [([EOT_ID] if prepend_bos else []) + self.tokenizer.encode(t, allowed_special="all") for t in texts]
        width = max(map(len, ids))
        padded = [row + [EOT_ID] * (width - len(row)) for row in ids]
        return torch.tensor(padded, dtype=torch.long, device=self.device)

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Decode [pos] ids to a string, or [batch pos] ids to a list of strings."""
        if isinstance(tokens, Tensor) and tokens.ndim == 2:
            return [self.tokenizer.decode(row.tolist()) for row in tokens]
        ids = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
        return self.tokenizer.decode(ids)

    def to_str_tokens(self, tokens: Tensor | str | Sequence[int], *, prepend_bos: bool = True) -> list[str]:
        """Each token of a prompt (or of [pos] / [1 pos] ids) as its own string."""
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens, prepend_bos=prepend_bos)
        if isinstance(tokens, Tensor):
            if tokens.ndim == 2 and tokens.shape[0] != 1:
                raise InputError(f"to_str_tokens takes one sequence, got shape {tuple(tokens.shape)}")
            tokens = tokens.reshape(-1).tolist()
        return [self.tokenizer.decode([t]) for t in tokens]

    def to_single_token(self, text: str) -> int:
        """The id of `text`, which must be exactly one GPT-2 token (e.g. " Mary")."""
        ids = self.tokenizer.encode(text, allowed_special="all")
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            raise InputError(f"{text!r} is {len(ids)} tokens {pieces}, not one token")
        return ids[0]
