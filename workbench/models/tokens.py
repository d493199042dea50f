"""Text and token ids for a GPT: tokenizing, decoding, and checking a model input once, at the entry point.

`GPT.forward` takes [batch pos] ids and trusts them; `prepare_tokens` is where an input is checked
(shape, dtype, range, context length, empty text) and converted, once per call of a public entry
point (`model(...)`, `run_with_cache`, `run_with_hooks`, `generate`, the methods).
"""

from __future__ import annotations

from collections.abc import Sequence

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.errors import ContextLengthError, InputError
from workbench.models.config import GPTConfig
from workbench.models.tokenizer import EOT_ID, GPT2Tokenizer


def _is_text(tokens: object) -> bool:
    return isinstance(tokens, str) or (
        isinstance(tokens, (list, tuple)) and bool(tokens) and isinstance(tokens[0], str)
    )


_TOKENIZER = GPT2Tokenizer()


def _check_padding_side(padding_side: str | None) -> None:
    if padding_side not in (None, "right"):
        raise InputError(
            f"padding_side must be 'right' (or None), got {padding_side!r}: this model takes no attention mask, "
            "so left padding would shift every real token's position and change the numbers"
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
    `get_token_position`, `tokens_to_residual_directions`, and `prepare_tokens`, the input check.
    Needs `cfg`, `device` and `W_U` on the model.

    `prepend_bos=None` means True everywhere (GPT-2's default in TransformerLens); it applies to
    text only, never to ids."""

    cfg: GPTConfig
    device: torch.device

    def prepare_tokens(
        self,
        tokens: Tensor | str | Sequence,
        *,
        name: str = "tokens",
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> Int[Tensor, "batch pos"]:
        """Check a model input and return it as [batch pos] int64 ids on the model's device.

        Text is tokenized with a BOS token unless `prepend_bos=False`; empty text is refused (`name`
        says which argument it was in the message). Raises InputError (ContextLengthError for too long)."""
        _check_padding_side(padding_side)
        if _is_text(tokens):
            texts = [tokens] if isinstance(tokens, str) else list(tokens)
            _check_text(texts, name)
            tokens = self.to_tokens(texts, prepend_bos=prepend_bos)
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
    def tokenizer(self) -> GPT2Tokenizer:
        """GPT-2's tokenizer, with a Hugging Face tokenizer's surface (`tokenizer(text)["input_ids"]`,
        `decode`, `bos_token_id` ...)."""
        return _TOKENIZER

    def to_tokens(
        self,
        input: str | Sequence[str],
        *,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> Int[Tensor, "batch pos"]:
        """GPT-2 BPE ids of a string or list of strings, with a BOS token unless `prepend_bos=False`,
        right-padded with <|endoftext|> (the only padding this model can run: it takes no attention mask).

        Empty text is refused, with or without BOS: it would run as a BOS-only sequence. Unlike
        TransformerLens, a text longer than the context is not truncated: running it raises
        ContextLengthError."""
        _check_padding_side(padding_side)
        texts = [input] if isinstance(input, str) else list(input)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InputError("to_tokens takes a string or a non-empty list of strings")
        _check_text(texts, "text")
        bos = [EOT_ID] if prepend_bos is None or prepend_bos else []
        ids = [bos + self.tokenizer.encode(t) for t in texts]
        width = max(map(len, ids))
        padded = [row + [EOT_ID] * (width - len(row)) for row in ids]
        return torch.tensor(padded, dtype=torch.long, device=self.device)

    def to_string(self, tokens: Tensor | Sequence[int] | int) -> str | list[str]:
        """Decode an id, a 0-d or [pos] tensor or a list of ids to a string, or [batch pos] ids to a
        list of strings (special tokens kept, as TransformerLens)."""
        if isinstance(tokens, Tensor) and tokens.ndim == 2:
            return self.tokenizer.batch_decode(tokens)
        if isinstance(tokens, Tensor) and tokens.ndim > 2:
            raise InputError(f"to_string takes an id, [pos] or [batch pos] ids, got shape {tuple(tokens.shape)}")
        return self.tokenizer.decode(tokens)

    def to_str_tokens(
        self,
        input: Tensor | str | Sequence,
        *,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> list[str] | list[list[str]]:
        """Each token as its own string: of a prompt (with BOS unless `prepend_bos=False`), of ids
        ([pos], [1 pos], a 0-d tensor or a list of ints), or, for a list of strings or tensors, a
        list per item (as TransformerLens)."""
        if isinstance(input, (list, tuple)) and input and not isinstance(input[0], int):
            return [self.to_str_tokens(item, prepend_bos=prepend_bos, padding_side=padding_side) for item in input]
        if isinstance(input, str):
            input = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
        if isinstance(input, Tensor):
            if input.ndim > 1 and input.squeeze().ndim > 1:
                raise InputError(f"to_str_tokens takes one sequence, got shape {tuple(input.shape)}")
            input = input.reshape(-1).tolist()
        return [self.tokenizer.decode([t]) for t in input]

    def to_single_token(self, string: str) -> int:
        """The id of `string`, which must be exactly one GPT-2 token (e.g. " Mary")."""
        ids = self.tokenizer.encode(string)
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            raise InputError(f"{string!r} is {len(ids)} tokens {pieces}, not one token")
        return ids[0]

    def get_token_position(
        self,
        single_token: str | int | Tensor,
        input: str | Tensor,
        mode: str = "first",
        *,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> int:
        """The position of `single_token` (a one-token string, an id or a 0-d tensor) in `input` (a
        prompt, tokenized with BOS unless `prepend_bos=False`, or [pos] / [1 pos] ids): its first
        occurrence, or its last with mode="last". InputError if it does not occur."""
        if mode not in ("first", "last"):
            raise InputError(f"mode must be 'first' or 'last', got {mode!r}")
        tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side) if isinstance(input, str) else input
        if not isinstance(tokens, Tensor) or not (tokens.ndim == 1 or (tokens.ndim == 2 and tokens.shape[0] == 1)):
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise InputError(f"input must be a string or [pos] / [1 pos] token ids, got {shape}")
        token = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        where = (tokens.reshape(-1) == token).nonzero()[:, 0].tolist()
        if not where:
            raise InputError(f"token {token} ({self.tokenizer.decode([token])!r}) does not occur in the input")
        return where[0] if mode == "first" else where[-1]

    def tokens_to_residual_directions(
        self, tokens: str | int | Tensor
    ) -> Float[Tensor, "d_model"] | Float[Tensor, "... d_model"]:
        """The unembedding direction (column of W_U) of each token: [d_model] for one token (a
        one-token string, an id, a one-element tensor), [*tokens.shape d_model] for a tensor of ids.
        As TransformerLens notes, the logit is (ln_final(resid) @ W_U), so these are directions
        after the final LayerNorm; b_U (GPT-2 has none) is not included."""
        if isinstance(tokens, Tensor) and tokens.numel() > 1:
            return einops.rearrange(self.W_U[:, tokens.to(self.W_U.device)], "d_model ... -> ... d_model")
        if isinstance(tokens, str):
            token = self.to_single_token(tokens)
        elif isinstance(tokens, Tensor):
            token = int(tokens.item())
        elif isinstance(tokens, int) and not isinstance(tokens, bool):
            token = tokens
        else:
            raise InputError(f"tokens must be a one-token string, an id or a tensor of ids, got {type(tokens).__name__}")
        return self.W_U[:, token]
