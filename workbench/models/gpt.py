"""The GPT: token + position embeddings, pre-LayerNorm blocks, final LayerNorm, tied unembedding."""

from __future__ import annotations

import math
from collections.abc import Sequence

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.errors import ContextLengthError, InputError
from workbench.hooks.hook_point import HookPoint
from workbench.hooks.hooked import HookedRootModule
from workbench.models.attention import Attention
from workbench.models.config import GPTConfig
from workbench.models.layernorm import LayerNorm
from workbench.models.mlp import MLP
from workbench.models.tokenizer import EOT_ID, gpt2_tokenizer


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        # Registered in forward order, so hook_names() reads like the forward pass.
        self.hook_resid_pre = HookPoint()
        self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.ln2 = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid_pre: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre)))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)


class GPT(HookedRootModule):
    """A GPT-2-style decoder with TransformerLens hook names (see `hook_names()`)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_final = LayerNorm(cfg)
        self.name = "untrained"  # set by load_model
        self.setup_hooks()
        self.init_weights()

    def forward(self, tokens: Tensor | str | Sequence) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits for `tokens` ([batch pos] or [pos] ids, or text, which gets a BOS token)."""
        return self.unembed(self.run_blocks(self.embed(self.prepare_tokens(tokens))))

    def embed(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        pos_embed = einops.repeat(self.wpe(positions), "pos d_model -> batch pos d_model", batch=tokens.shape[0])
        return self.hook_embed(self.wte(tokens)) + self.hook_pos_embed(pos_embed)

    def run_blocks(
        self, resid: Float[Tensor, "batch pos d_model"], *, start: int = 0, stop: int | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        """Run blocks `start` to `stop - 1` on a residual stream (resid_pre of block `start`)."""
        for block in self.blocks[start:stop]:
            resid = block(resid)
        return resid

    def unembed(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return self.ln_final(resid) @ self.wte.weight.T  # unembedding tied to the token embedding

    # ------------------------------------------------------------------ weights
    def init_weights(self, *, std: float = 0.02) -> None:
        """GPT-2 / nanoGPT initialisation: weights ~ N(0, std) (GPT-2 uses 0.02 at d_model 768), biases
        zero, LayerNorms identity, and the projections into the residual stream scaled by 1/sqrt(2 n_layer)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=std / math.sqrt(2 * self.cfg.n_layer))
            nn.init.normal_(block.mlp.c_proj.weight, mean=0.0, std=std / math.sqrt(2 * self.cfg.n_layer))

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.wte.weight

    @property
    def W_pos(self) -> Float[Tensor, "pos d_model"]:
        return self.wpe.weight

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.wte.weight.T

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.weight.dtype

    def activation_shapes(self, batch: int, pos: int) -> dict[str, tuple[int, ...]]:
        """The shape of every hook point's activation for a [batch pos] input."""
        c = self.cfg
        per_block = {
            "hook_resid_pre": (batch, pos, c.d_model), "ln1.hook_scale": (batch, pos, 1),
            "ln1.hook_normalized": (batch, pos, c.d_model), "attn.hook_q": (batch, pos, c.n_head, c.d_head),
            "attn.hook_k": (batch, pos, c.n_head, c.d_head), "attn.hook_v": (batch, pos, c.n_head, c.d_head),
            "attn.hook_attn_scores": (batch, c.n_head, pos, pos), "attn.hook_pattern": (batch, c.n_head, pos, pos),
            "attn.hook_z": (batch, pos, c.n_head, c.d_head), "attn.hook_result": (batch, pos, c.n_head, c.d_model),
            "hook_attn_out": (batch, pos, c.d_model), "hook_resid_mid": (batch, pos, c.d_model),
            "ln2.hook_scale": (batch, pos, 1), "ln2.hook_normalized": (batch, pos, c.d_model),
            "mlp.hook_pre": (batch, pos, c.d_mlp), "mlp.hook_post": (batch, pos, c.d_mlp),
            "hook_mlp_out": (batch, pos, c.d_model), "hook_resid_post": (batch, pos, c.d_model),
        }
        shapes = {"hook_embed": (batch, pos, c.d_model), "hook_pos_embed": (batch, pos, c.d_model)}
        for l in range(c.n_layer):
            shapes.update({f"blocks.{l}.{k}": v for k, v in per_block.items()})
        shapes.update({"ln_final.hook_scale": (batch, pos, 1), "ln_final.hook_normalized": (batch, pos, c.d_model)})
        return shapes

    def derivable(self, name: str) -> bool:
        return name.endswith("attn.hook_result")  # = einsum(hook_z, W_O), computed when read

    def cache_size(self, tokens: Tensor | tuple[int, int], names_filter=None) -> int:
        """Bytes a `run_with_cache(tokens, names_filter=...)` cache will hold, before running it.

        Counts distinct storage: q, k and v share one buffer, and resid_pre of block l+1 is
        resid_post of block l, so those are counted once."""
        batch, pos = tokens if isinstance(tokens, tuple) else self.prepare_tokens(tokens).shape
        shapes = self.activation_shapes(batch, pos)
        names = set(self.names_matching(names_filter))
        if names_filter is None:
            names = {n for n in names if not self.derivable(n)}
        size = self.dtype.itemsize
        total = 0
        for name in names:
            n = math.prod(shapes[name])
            if name.endswith(("attn.hook_q", "attn.hook_k", "attn.hook_v")):
                first = next(f"{name[:-1]}{x}" for x in "qkv" if f"{name[:-1]}{x}" in names)
                if name != first:
                    continue
                n *= 3  # q, k and v are views of one fused buffer, kept alive whole
            elif name.endswith("hook_resid_pre"):
                l = int(name.split(".")[1])
                if l > 0 and f"blocks.{l - 1}.hook_resid_post" in names:
                    continue
            elif name == "hook_pos_embed":
                n //= batch  # broadcast over the batch, stored once
            total += n * size
        return total

    # ------------------------------------------------------------------ text and tokens
    def prepare_tokens(self, tokens: Tensor | str | Sequence) -> Int[Tensor, "batch pos"]:
        """Check a model input and return it as [batch pos] int64 ids on the model's device.

        Text is tokenized with a BOS token. Raises InputError (ContextLengthError for too long)."""
        if isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str)):
            tokens = self.to_tokens(tokens)
        if not isinstance(tokens, Tensor):
            raise InputError(
                f"tokens must be a torch.Tensor of token ids, a string or a list of strings, got {type(tokens).__name__}"
            )
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise InputError(f"tokens must be an integer tensor of token ids, got dtype {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise InputError(f"tokens must have shape [batch pos] or [pos], got shape {tuple(tokens.shape)}")
        if tokens.numel() == 0:
            raise InputError(f"tokens are empty (shape {tuple(tokens.shape)}): give at least one token")
        if tokens.shape[1] > self.cfg.block_size:
            raise ContextLengthError(
                f"prompt is {tokens.shape[1]} tokens long, but this model's context (block_size) is "
                f"{self.cfg.block_size} tokens"
            )
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise InputError(f"token id {bad} is out of range: ids must be in [0, {self.cfg.vocab_size - 1}]")
        return tokens.to(device=self.device, dtype=torch.long)

    @property
    def tokenizer(self):
        return gpt2_tokenizer()

    def to_tokens(self, text: str | Sequence[str], *, prepend_bos: bool = True) -> Int[Tensor, "batch pos"]:
        """GPT-2 BPE ids of a string or list of strings (right-padded with <|endoftext|>)."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InputError("to_tokens takes a string or a non-empty list of strings")
        ids = [([EOT_ID] if prepend_bos else []) + self.tokenizer.encode(t, allowed_special="all") for t in texts]
        if max(map(len, ids)) == 0:
            raise InputError("the prompt is empty: give some text, or prepend_bos=True")
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

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        tokens: Tensor | str,
        *,
        max_new_tokens: int = 50,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> Int[Tensor, "batch pos"]:
        """Sample a continuation (temperature 0 = greedy); returns prompt and continuation ids."""
        tokens = self.prepare_tokens(tokens)
        if temperature < 0:
            raise InputError(f"temperature must be >= 0, got {temperature}")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(0 if seed is None else seed)
        for _ in range(max_new_tokens):
            logits = self(tokens[:, -self.cfg.block_size :])[:, -1].float()
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            tokens = torch.cat([tokens, nxt], dim=1)
        return tokens
