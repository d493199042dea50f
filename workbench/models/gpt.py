"""The GPT: token + position embeddings, pre-LayerNorm blocks, final LayerNorm, tied unembedding."""

from __future__ import annotations

import math
import warnings

import torch
from tqdm.auto import tqdm
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.errors import InputError
from workbench.hooks.hook_point import HookPoint
from workbench.hooks.hooked import HookedRootModule
from workbench.models.attention import Attention
from workbench.models.config import GPTConfig
from workbench.models.embed import Embed, PosEmbed, Unembed
from workbench.models.layernorm import LayerNorm
from workbench.models.mlp import MLP
from workbench.models.tokens import TokenMixin
from workbench.models.weights import WeightsMixin


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


class GPT(TokenMixin, WeightsMixin, HookedRootModule):
    """A GPT-2-style decoder with TransformerLens's component and hook names (see `hook_names()`).

    `model(tokens)` checks its input (ids, or text which gets a BOS token) and returns logits;
    `forward` takes checked [batch pos] ids. As in TransformerLens, `embed` is the token embedding
    only (W_E), `pos_embed` the position embedding (W_pos) and `unembed` maps the normalised final
    residual stream to logits (W_U, tied to W_E); `embed_input` and `logits_from_resid` are the two
    ends of the forward. Text helpers come from `TokenMixin` (tokens.py), hooks and caching from
    `HookedRootModule` (workbench/hooks)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg.bound_to(self)  # this model's own copy: cfg.device, dtype, model_name read the model
        self.embed = Embed(cfg)  # the checkpoint's wte
        self.hook_embed = HookPoint()
        self.pos_embed = PosEmbed(cfg)  # the checkpoint's wpe
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(self.embed)  # tied: W_U is W_E transposed
        self.name = "untrained"  # set by load_model
        self.setup()
        self.init_weights()

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits for [batch pos] ids already checked by `prepare_tokens` (call `model(...)`, which checks)."""
        return self.logits_from_resid(self.run_blocks(self.embed_input(tokens)))

    def embed_input(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream entering block 0: token plus position embeddings (through their hooks)."""
        return self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(tokens))

    def run_blocks(
        self, resid: Float[Tensor, "batch pos d_model"], *, start: int = 0, stop: int | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        """Run blocks `start` to `stop - 1` on a residual stream (resid_pre of block `start`)."""
        for block in self.blocks[start:stop]:
            resid = block(resid)
        return resid

    def logits_from_resid(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits of a final residual stream (the last block's resid_post): `ln_final`, then `unembed`."""
        return self.unembed(self.ln_final(resid))

    # ------------------------------------------------------------------ weights
    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
        refactor_factored_attn_matrices: bool = False,
        **options,
    ) -> GPT:
        """`load_model(model_name, device=, dtype=)` under TransformerLens's name and arguments
        ("gpt2-small", TransformerLens's old alias, is "gpt2").

        The weights are never processed. TransformerLens's processing options (on by default there)
        change weights and activations but not probabilities, so a model loaded with any of them on
        gives TransformerLens's log-probabilities, loss and logit differences, but not its logits
        (center_unembed shifts each position's logits by a constant), residual stream, v / z,
        W_E / W_U / W_Q ..., or direct logit attributions: a warning says so.
        `from_pretrained_no_processing` (or every option False) is TransformerLens's unprocessed model,
        with equal numbers and no warning. Other TransformerLens options are refused."""
        if options:
            raise InputError(
                f"from_pretrained does not take {', '.join(sorted(options))}; it takes device, dtype and "
                "TransformerLens's weight-processing flags (fold_ln, center_writing_weights, center_unembed, "
                "fold_value_biases, refactor_factored_attn_matrices)"
            )
        flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed,
                     fold_value_biases=fold_value_biases, refactor_factored_attn_matrices=refactor_factored_attn_matrices)
        on = [name for name, value in flags.items() if value]
        if on:
            warnings.warn(
                f"workbench does not process weights ({', '.join(on)} requested): the model is loaded unprocessed, as "
                "TransformerLens's from_pretrained_no_processing. Probabilities, loss and logit differences equal "
                "TransformerLens's processed model; its logits (shifted per position), residual stream, v / z, "
                "weights and direct logit attributions do not. Pass fold_ln=False, center_writing_weights=False, "
                "center_unembed=False, fold_value_biases=False or call from_pretrained_no_processing to compare "
                "with TransformerLens's unprocessed numbers.",
                UserWarning, stacklevel=2,
            )
        return cls.from_pretrained_no_processing(model_name, device=device, dtype=dtype)

    @classmethod
    def from_pretrained_no_processing(
        cls, model_name: str, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> GPT:
        """`load_model(model_name, device=, dtype=)`: TransformerLens's unprocessed model, same numbers."""
        from workbench.models.loading import load_model  # loading builds GPTs

        return load_model({"gpt2-small": "gpt2"}.get(model_name, model_name), device=device, dtype=dtype)

    def init_weights(self, *, std: float | None = None) -> None:
        """GPT-2 / nanoGPT initialisation: weights ~ N(0, std) (default `cfg.init_range`, GPT-2's 0.02),
        biases zero, LayerNorms identity, and the projections into the residual stream scaled by
        1/sqrt(2 n_layer)."""
        std = self.cfg.init_range if std is None else std
        nn.init.normal_(self.embed.W_E, mean=0.0, std=std)
        nn.init.normal_(self.pos_embed.W_pos, mean=0.0, std=std)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            if isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=std / math.sqrt(2 * self.cfg.n_layer))
            nn.init.normal_(block.mlp.c_proj.weight, mean=0.0, std=std / math.sqrt(2 * self.cfg.n_layer))

    # TransformerLens's names for the embedding weights (the components' own, not copies).
    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "pos d_model"]:
        return self.pos_embed.W_pos

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        return self.unembed.b_U

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.cfg = self.cfg.bound_to(self)  # a copied or unpickled model: its config reads the copy

    def attention_layers(self) -> list[Attention]:
        return [block.attn for block in self.blocks]

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """TransformerLens's switch for per-head outputs (`attn.hook_result`, `cache["result", layer]`
        [batch pos head d_model]), kept so ported code runs. There is nothing to switch: a head's output
        is computed whenever `hook_result` is hooked or cached and never otherwise, which is what True
        gives in TransformerLens, without its cost on runs that do not read it. So True and False both
        leave the model as it is (`cfg.use_attn_result` stays False); anything but a bool is an InputError."""
        if not isinstance(use_attn_result, bool):
            raise InputError(f"set_use_attn_result takes True or False, got {use_attn_result!r}")

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        input: Tensor | str | list[str],
        max_new_tokens: int = 10,
        *,
        stop_at_eos: bool = True,
        eos_token_id: int | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        seed: int | None = None,
        prepend_bos: bool | None = None,
        return_type: str = "input",
        use_past_kv_cache: bool = True,
        verbose: bool = False,
    ) -> Int[Tensor, "batch pos"] | str | list[str]:
        """Continue `input` by up to `max_new_tokens` tokens, sampled (temperature, then top_k or else
        top_p, as TransformerLens) from a
        generator seeded with `seed` (None = 0, so a call repeats), or greedy with do_sample=False
        or temperature 0. With `stop_at_eos` a sequence ends at <|endoftext|> (`eos_token_id`) and
        is padded with it while others go on; the loop stops when all have ended.

        Returns, as TransformerLens: with return_type "input", text for text and ids for ids; "str":
        the prompt and continuation as text, special tokens left out (a string for a string or a
        batch of one, else a list); "tokens": the [batch pos] ids of prompt and continuation. The whole prefix is recomputed at each step (no key/value cache;
        `use_past_kv_cache` is accepted and changes nothing but speed in TransformerLens); a prefix
        longer than the context keeps its last block_size tokens. `verbose` shows a progress bar."""
        text_input = isinstance(input, str) or (isinstance(input, list) and bool(input) and isinstance(input[0], str))
        tokens = self.prepare_tokens(input, name="input", prepend_bos=prepend_bos)  # checked once
        if isinstance(input, list) and len({len(self.tokenizer.encode(t)) for t in input}) > 1:
            raise InputError(
                "generate: the prompts are of different token lengths; right padding would put "
                "<|endoftext|> between a prompt and its continuation (this model takes no attention mask, "
                "so it cannot left-pad as TransformerLens does): generate them one at a time"
            )
        if temperature < 0:
            raise InputError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k <= 0:
            raise InputError(f"top_k must be a positive number of tokens, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise InputError(f"top_p must be a probability in (0, 1], got {top_p}")
        if return_type not in ("input", "str", "tokens"):
            raise InputError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}")
        eos = self.tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        generator = torch.Generator(device=self.device)
        generator.manual_seed(0 if seed is None else seed)
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=self.device)
        for _ in tqdm(range(max_new_tokens), disable=not verbose, desc="generate", unit="token"):
            logits = self._forward_checked(tokens[:, -self.cfg.block_size :])[:, -1].float()
            if temperature == 0 or not do_sample:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = _keep_top(logits / temperature, top_k=top_k, top_p=top_p)
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            if stop_at_eos:
                nxt = nxt.masked_fill(finished[:, None], eos)
                finished |= nxt[:, 0] == eos
            tokens = torch.cat([tokens, nxt], dim=1)
            if stop_at_eos and bool(finished.all()):
                break
        if return_type == "tokens" or (return_type == "input" and not text_input):
            return tokens
        texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return texts[0] if isinstance(input, str) or len(texts) == 1 else texts  # as TransformerLens


def _keep_top(
    logits: Float[Tensor, "batch d_vocab"], *, top_k: int | None, top_p: float | None
) -> Float[Tensor, "batch d_vocab"]:
    """Logits outside the `top_k` largest, or else outside the smallest set whose probability
    reaches `top_p` (nucleus sampling; the top token always stays), set to -inf, as TransformerLens."""
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = torch.zeros_like(cumulative, dtype=torch.bool)
        drop[:, 1:] = cumulative[:, :-1] > top_p  # a token stays unless the tokens above it hold more than top_p
        return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits
