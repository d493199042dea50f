"""GPT-2's byte-level BPE, via tiktoken, built offline from the ranks file shipped in the package, and
`GPT2Tokenizer`, the same with a Hugging Face tokenizer's surface (`model.tokenizer`)."""

from __future__ import annotations

import functools
from importlib import resources

import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe

from workbench.errors import InputError

# GPT-2's pre-tokenisation regex (tiktoken's r50k_base).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
END_OF_TEXT = "<|endoftext|>"
EOT_ID = 50256


@functools.cache
def gpt2_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 tokenizer (50,257 tokens; <|endoftext|> = 50256), with no network access."""
    path = resources.files("workbench") / "data" / "gpt2.tiktoken"
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(path)),
        special_tokens={END_OF_TEXT: EOT_ID},
        explicit_n_vocab=50257,
    )


class GPT2Tokenizer:
    """GPT-2's tokenizer with the surface of a Hugging Face tokenizer (what TransformerLens code
    reads from `model.tokenizer`): `tokenizer(text)` -> {"input_ids", "attention_mask"}, `encode`,
    `decode`, `batch_decode`, and the special token ids (all `<|endoftext|>`, 50256, as
    TransformerLens sets GPT-2's pad token). Text is split as Hugging Face's GPT-2 tokenizer splits
    it, `<|endoftext|>` in text included; no BOS is added (as Hugging Face's GPT-2 tokenizer)."""

    bos_token = eos_token = pad_token = unk_token = END_OF_TEXT
    bos_token_id = eos_token_id = pad_token_id = unk_token_id = EOT_ID
    padding_side = "right"
    vocab_size = 50257
    name_or_path = "gpt2"

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def encoding(self) -> tiktoken.Encoding:
        return gpt2_tokenizer()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of `text` (GPT-2 adds no special tokens; `add_special_tokens` is accepted for that reason)."""
        return self.encoding.encode(text, allowed_special="all")

    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False) -> str:
        """The text of an id, a list of ids or a 0-d / 1-d tensor of ids (no clean-up of spaces,
        as TransformerLens decodes)."""
        ids = _id_list(token_ids)
        if skip_special_tokens:
            ids = [i for i in ids if i != EOT_ID]
        return self.encoding.decode(ids)

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool = False) -> list[str]:
        """`decode` of each row of a [batch pos] tensor or list of id lists."""
        return [self.decode(seq, skip_special_tokens) for seq in sequences]

    def __call__(self, text, padding: bool | str = False, return_tensors: str | None = None, **_ignored) -> dict:
        """{"input_ids", "attention_mask"} of a string (lists of ints) or of a list of strings (a list
        per string); `padding=True` right-pads with the pad token (mask 0 there); `return_tensors="pt"`
        gives [batch pos] int64 tensors (a string becomes a batch of one)."""
        single = isinstance(text, str)
        ids = [self.encode(t) for t in ([text] if single else list(text))]
        if padding in (True, "longest") or (return_tensors == "pt" and len({len(r) for r in ids}) > 1):
            if padding not in (True, "longest"):
                raise InputError("texts of different lengths need padding=True to become one tensor")
            width = max(map(len, ids))
            masks = [[1] * len(r) + [0] * (width - len(r)) for r in ids]
            ids = [r + [self.pad_token_id] * (width - len(r)) for r in ids]
        else:
            masks = [[1] * len(r) for r in ids]
        if return_tensors == "pt":
            return {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(masks, dtype=torch.long)}
        if return_tensors is not None:
            raise InputError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
        if single:
            return {"input_ids": ids[0], "attention_mask": masks[0]}
        return {"input_ids": ids, "attention_mask": masks}


def _id_list(token_ids) -> list[int]:
    if isinstance(token_ids, int):
        return [token_ids]
    if hasattr(token_ids, "tolist"):  # a tensor or array
        ids = token_ids.tolist()
        return [ids] if isinstance(ids, int) else list(ids)
    return [int(i) for i in token_ids]
