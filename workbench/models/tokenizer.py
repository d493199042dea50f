"""GPT-2's byte-level BPE, via tiktoken, built offline from the ranks file shipped in the package."""

from __future__ import annotations

import functools
from importlib import resources

import tiktoken
from tiktoken.load import load_tiktoken_bpe

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
