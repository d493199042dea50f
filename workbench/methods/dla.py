"""Direct logit attribution: how much each component writes a direction of the logits directly.

The final residual stream at position `pos` is a sum of the components' outputs there: embed,
pos_embed, every head's result, each attention layer's bias b_O, every MLP neuron's output
(post * W_out) and each MLP's bias b_out. The logit read off it is
`(resid - mean(resid)) / scale * w + b` (the final LayerNorm) dotted with a direction `d` of the
unembedding (`W_U[:, answer] - W_U[:, wrong]` for a logit difference). With the LayerNorm's scale
frozen at the value the run computed (TransformerLens's "cached scale", `ActivationCache.
apply_ln_to_stack`), this is linear in the components: each gets
`(x - mean(x)) / scale * w . d`, and the LayerNorm's bias gives `b . d`, a term of its own. The
terms sum to the model's own logit (difference) at `pos`, exactly up to float error (GPT-2 has no
unembedding bias: `b_U` is zeros, so nothing else enters a logit).

Cost: one cached forward (only the activations at `pos`) and small matmuls. Centring is a
symmetric projection and the scale one number per prompt, so `(x - mean(x)) / scale . (w * d)`
equals `x . u` with `u = (w*d - mean(w*d)) / scale`: the LayerNorm is applied once to the direction
(by the cache's own `apply_ln_to_stack`), and every component is dotted with `u`. That is what
makes every neuron of GPT-2 124M affordable: TransformerLens's `get_full_resid_decomposition`
would hold [layer d_mlp batch d_model] floats (7 GB for 64 prompts) before projecting.

The accumulated view reads the residual stream after each layer (`cache.accumulated_resid`, with
`incl_mid`: "0_pre", "0_mid", "1_pre", ... "final_post") through the same frozen-scale LayerNorm:
partial sums of the components, so its last row is the model's value. The logit lens
(`methods.logit_lens`) differs on purpose: it recomputes each row's own LayerNorm, i.e. what the
model would predict if it stopped there, which is not a sum of the components.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import einops
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from workbench.errors import InputError
from workbench.hooks import ActivationCache, act_name, act_names
from workbench.hooks.names import pos_axis
from workbench.methods._checks import as_index, check_groups, shown
from workbench.methods.statistics import Bootstrap, by_group_frame, interval_columns
from workbench.models import GPT

BY = ("head", "layer", "neuron", "component")
LN_BIAS = "ln_final_bias"  # the label of the final LayerNorm's bias term


@dataclass
class DLAResult:
    """Direct logit attribution of one direction at one position, per prompt and averaged.

    `per_prompt[batch, ...]`: each component's direct contribution to `direction` at `pos`, with
    the grid of `by`: [batch layer head] (each head's result, without b_O), [batch layer] (each
    block's attn_out + mlp_out, biases included), [batch layer d_mlp] (each neuron's post * W_out,
    without b_out) or [batch component] (decompose_resid's embed, pos_embed, "0_attn_out",
    "0_mlp_out", ...). `labels`: the grid's cells flattened ("L0H3", "L1", "L0N17", "0_attn_out").
    `terms_per_prompt[batch, component]`: everything else the final stream holds, labelled by
    `term_labels` ("embed", "pos_embed", "{l}_attn_bias" / "{l}_mlp_out" with by="head",
    "{l}_attn_out" / "{l}_mlp_bias" with by="neuron", and always "ln_final_bias", the
    LayerNorm bias . direction). Values and terms sum to `total`, the model's own value from its
    logits (for a vector direction: ln_final(resid) . vector).

    `attn_out[batch, layer]` / `mlp_out[batch, layer]`: each block's attention and MLP output
    (biases included), whatever `by`; `accumulated[batch, layer]`: the value read off the residual
    stream at `accumulated_labels` ("0_pre", "0_mid", ... "final_post") through the frozen-scale
    final LayerNorm, its last column `total`. Units: logits (a logit difference for a pair).

    Over the prompts: `to_frame()` reports each component's mean with a seeded bootstrap interval
    (`bootstrap`, `methods.statistics`; columns n, ci_low, ci_high; None: no interval columns),
    `groups[batch]` optional labels and `to_frame(by_group=True)` the same per group."""

    by: str
    pos: int | list[int]  # the position read, counted from 0; or each prompt's (a padded prompt set)
    direction: str  # what was read, e.g. "logit[' Mary'] - logit[' John']"
    per_prompt: Float[Tensor, "batch ..."]
    labels: list[str]
    terms_per_prompt: Float[Tensor, "batch component"]
    term_labels: list[str]
    total: Float[Tensor, "batch"]
    attn_out: Float[Tensor, "batch layer"]
    mlp_out: Float[Tensor, "batch layer"]
    accumulated: Float[Tensor, "batch _"]  # one column per accumulated_labels
    accumulated_labels: list[str]
    groups: list[str] | None = None
    bootstrap: Bootstrap | None = field(default_factory=Bootstrap)  # None: no intervals (records made before them)

    @property
    def values(self) -> Float[Tensor, "..."]:
        """The mean over prompts of `per_prompt`: [layer head], [layer], [layer d_mlp] or [component]."""
        return self.per_prompt.mean(0)

    @property
    def terms(self) -> Float[Tensor, "component"]:
        """The mean over prompts of `terms_per_prompt`."""
        return self.terms_per_prompt.mean(0)

    @property
    def n_prompts(self) -> int:
        return self.per_prompt.shape[0]

    @property
    def pos_label(self) -> str:
        """The position read, as summaries and titles say it."""
        if isinstance(self.pos, int):
            return f"pos {self.pos}"
        return f"each prompt's own position (read_pos {min(self.pos)} to {max(self.pos)})"

    def for_prompts(self, keep: Tensor | Sequence[bool]) -> DLAResult:
        """The result on the prompts marked in `keep` alone."""
        keep = torch.as_tensor(keep, dtype=torch.bool)
        rows = keep.to(self.per_prompt.device)
        return replace(self, per_prompt=self.per_prompt[rows], terms_per_prompt=self.terms_per_prompt[rows],
                       total=self.total[rows], attn_out=self.attn_out[rows], mlp_out=self.mlp_out[rows],
                       accumulated=self.accumulated[rows],
                       pos=self.pos if isinstance(self.pos, int) else [p for p, k in zip(self.pos, keep) if k],
                       groups=None if self.groups is None else [g for g, k in zip(self.groups, keep) if k])

    def all_per_prompt(self) -> tuple[Float[Tensor, "batch component"], list[str]]:
        """Every component, the grid's cells then the terms, as [batch component] and labels."""
        flat = einops.rearrange(self.per_prompt, "batch ... -> batch (...)")
        return torch.cat([flat, self.terms_per_prompt], dim=1), self.labels + self.term_labels

    def to_frame(self, *, per_prompt: bool = False, by_group: bool = False) -> pd.DataFrame:
        """One row per component (the grid's cells, then the terms): label, component (its kind:
        head, neuron, layer, attn_out, mlp_out, attn_bias, mlp_bias, embed, pos_embed,
        ln_final_bias), layer and index (head or neuron; missing where none), and over the prompts
        value (mean), std, min and max, n (prompts) and ci_low / ci_high (the bootstrap interval
        of the mean, `bootstrap`), in logits. `per_prompt`: one row per (component, batch) with
        its value instead. `by_group`: one block of rows per group label (column `group`), each
        from that group's prompts alone."""
        if by_group:
            if per_prompt:
                raise InputError("to_frame takes per_prompt or by_group, not both")
            return by_group_frame(self)
        values, labels = self.all_per_prompt()
        meta = pd.DataFrame([_describe(label) for label in labels], columns=["component", "layer", "index"])
        meta.insert(0, "label", labels)
        meta["layer"] = meta["layer"].astype("Int64")
        meta["index"] = meta["index"].astype("Int64")
        values = values.detach().double().cpu()
        if per_prompt:
            frame = meta.loc[meta.index.repeat(self.n_prompts)].reset_index(drop=True)
            frame["batch"] = list(range(self.n_prompts)) * len(labels)
            frame["value"] = einops.rearrange(values, "batch component -> (component batch)").tolist()
        else:
            frame = meta
            frame["value"] = values.mean(0).tolist()
            frame["std"] = values.std(0, correction=0).tolist()  # population std: 0 for one prompt
            frame["min"] = values.min(0).values.tolist()
            frame["max"] = values.max(0).values.tolist()
            if self.bootstrap is not None:
                ci = interval_columns(einops.rearrange(values, "batch component -> component batch"), None,
                                      self.bootstrap)
                frame = pd.concat([frame, ci], axis=1)
        frame["by"] = self.by
        if per_prompt and not isinstance(self.pos, int):
            frame["pos"] = self.pos * len(labels)
        else:
            frame["pos"] = self.pos if isinstance(self.pos, int) else -1  # -1: each prompt's own (read_pos)
        frame["direction"] = self.direction
        return frame

    def layer_frame(self) -> pd.DataFrame:
        """One row per (layer, component) for component attn_out and mlp_out: each block's direct
        contribution, mean / std / min / max over the prompts (the per-layer bars), n, ci_low and
        ci_high (the bootstrap interval of the mean)."""
        rows = []
        for kind, values in (("attn_out", self.attn_out), ("mlp_out", self.mlp_out)):
            v = values.detach().double().cpu()
            ci = None if self.bootstrap is None else self.bootstrap.interval(v, axis=0)
            for l in range(v.shape[1]):
                rows.append({"layer": l, "component": kind, "value": float(v[:, l].mean()),
                             "std": float(v[:, l].std(correction=0)), "min": float(v[:, l].min()),
                             "max": float(v[:, l].max())})
                if ci is not None:
                    rows[-1].update(n=ci.n, ci_low=float(ci.low[l]), ci_high=float(ci.high[l]))
        return pd.DataFrame(rows)

    def accumulated_frame(self) -> pd.DataFrame:
        """One row per point of the residual stream ("0_pre" ... "final_post"): the value read
        there through the frozen-scale final LayerNorm, mean / std over the prompts, n, ci_low and
        ci_high (the bootstrap interval of the mean)."""
        v = self.accumulated.detach().double().cpu()
        frame = pd.DataFrame({"layer": self.accumulated_labels, "layer_index": range(v.shape[1]),
                              "value": v.mean(0).tolist(), "std": v.std(0, correction=0).tolist()})
        if self.bootstrap is not None:
            ci = self.bootstrap.interval(v, axis=0)
            frame["n"], frame["ci_low"], frame["ci_high"] = ci.n, ci.low.tolist(), ci.high.tolist()
        return frame


def _describe(label: str) -> tuple[str, int | None, int | None]:
    """(component kind, layer, index) of a label."""
    if label in ("embed", "pos_embed", LN_BIAS):
        return label, None, None
    if label.startswith("L") and "H" in label:
        layer, head = label[1:].split("H")
        return "head", int(layer), int(head)
    if label.startswith("L") and "N" in label:
        layer, neuron = label[1:].split("N")
        return "neuron", int(layer), int(neuron)
    if label.startswith("L"):
        return "layer", int(label[1:]), None
    layer, kind = label.split("_", 1)
    return kind, int(layer), None


def direct_logit_attribution(
    model: GPT,
    tokens: Tensor | str | Sequence[str],
    metric_direction: object,
    *,
    by: str = "head",
    pos: int | Tensor = -1,
    groups: Sequence[str] | None = None,
) -> DLAResult:
    """Each component's direct contribution to `metric_direction` of the logits at position `pos`.

    `tokens`: [batch pos] ids or text (a prompt set: one row per prompt). `metric_direction`:
    - `(answer, wrong)`: a logit difference logit[answer] - logit[wrong], each a token (a
      one-token string or an id) or one id per prompt ([batch] or [batch 1] ids);
    - a token (string, id, or [batch] ids): that token's logit;
    - a float vector [d_model] (or [batch d_model], one per prompt): the normalised final stream
      (after ln_final, weight and bias) dotted with it.
    `by`: "head" ([layer head]), "layer" ([layer]), "neuron" ([layer d_mlp]) or "component"
    (decompose_resid's components); the rest of the stream is in the result's terms, so that
    everything sums to the model's own value (module docstring). `pos`: the position read
    (negative counts from the end), or one per prompt, a [batch] tensor of non-negative positions
    (a padded prompt set read at each prompt's own last token: `PromptBatch.read_pos`).
    `groups`: a label per prompt, for per-group results (`to_frame(by_group=True)`). Every
    prompt's values are kept (`per_prompt`; they cost nothing more).

    One forward with the activations at `pos` cached, then small matmuls (module docstring)."""
    if by not in BY:
        raise InputError(f"by must be one of {', '.join(map(repr, BY))}, got {shown(by)}")
    tokens = model.prepare_tokens(tokens, name="tokens")
    batch, n_pos = tokens.shape
    pos = _check_pos(pos, batch, n_pos)
    groups = check_groups(groups, batch)
    direction, described, token_pairs = _direction(model, metric_direction, batch)
    n_layer = model.cfg.n_layer

    names = [act_name("embed"), act_name("pos_embed"), act_name("scale"),
             *act_names("resid_pre", range(n_layer)), *act_names("resid_mid", range(n_layer)),
             act_name("resid_post", n_layer - 1), *act_names("attn_out", range(n_layer)),
             *act_names("mlp_out", range(n_layer))]
    if by == "head":
        names += act_names("z", range(n_layer))
    if by == "neuron":
        names += act_names("post", range(n_layer))
    with torch.no_grad():
        if isinstance(pos, int):
            logits, cache = model.run_with_cache(tokens, names_filter=names, pos_slice=pos)
            read_logits = logits[:, pos]
        else:  # each prompt's own position: cache the distinct ones, then keep each prompt's
            positions = sorted(set(pos))
            logits, cache = model.run_with_cache(tokens, names_filter=names, pos_slice=positions)
            cache = _each_at(cache, [positions.index(p) for p in pos])
            read_logits = logits[torch.arange(batch, device=logits.device), torch.tensor(pos, device=logits.device)]
        total = _model_value(model, read_logits, cache, direction, token_pairs)
        direction = direction.to(logits.device)
        # The frozen final LayerNorm applied once, to the direction (module docstring):
        # u = (w*d - mean(w*d)) / scale, one per prompt; a component x contributes x . u.
        weighted = (model.ln_final.w.detach().float().to(direction.device) * direction)[None]
        readout = cache.apply_ln_to_stack(weighted, pos_slice=0)[0]  # [batch d_model]
        ln_bias = einops.einsum(model.ln_final.b.detach().float().to(direction.device), direction,
                                "d_model, batch d_model -> batch")

        def read(stack: Float[Tensor, "component batch d_model"]) -> Float[Tensor, "batch component"]:
            return einops.einsum(stack.float(), readout, "component batch d_model, batch d_model -> batch component")

        components, component_labels = cache.decompose_resid(pos_slice=0, return_labels=True)
        by_component = read(components)  # embed, pos_embed, 0_attn_out, 0_mlp_out, ...
        embeds, attn_out, mlp_out = by_component[:, :2], by_component[:, 2::2], by_component[:, 3::2]
        accumulated, accumulated_labels = cache.accumulated_resid(incl_mid=True, pos_slice=0, return_labels=True)
        accumulated = read(accumulated) + ln_bias[:, None]
        attn_bias = read(einops.repeat(model.b_O.float(), "layer d_model -> layer batch d_model", batch=batch))
        mlp_bias = read(einops.repeat(model.b_out.float(), "layer d_model -> layer batch d_model", batch=batch))
        layer_labels = [str(l) for l in range(n_layer)]

        if by == "head":
            heads = read(cache.stack_head_results(pos_slice=0))
            per_prompt = einops.rearrange(heads, "batch (layer head) -> batch layer head", layer=n_layer)
            labels = [f"L{l}H{h}" for l in range(n_layer) for h in range(model.cfg.n_head)]
            terms = [embeds, attn_bias, mlp_out]
            term_labels = ["embed", "pos_embed", *[f"{l}_attn_bias" for l in layer_labels],
                           *[f"{l}_mlp_out" for l in layer_labels]]
        elif by == "neuron":
            # post * (W_out . u) for every neuron: [layer d_mlp] dot products per prompt, never
            # the [layer d_mlp batch d_model] stack of neuron outputs
            post = einops.rearrange(cache.stack_activation("post").float(), "layer batch 1 d_mlp -> batch layer d_mlp")
            per_prompt = post * einops.einsum(model.W_out.float().to(readout.device), readout,
                                              "layer d_mlp d_model, batch d_model -> batch layer d_mlp")
            labels = [f"L{l}N{n}" for l in range(n_layer) for n in range(model.cfg.d_mlp)]
            terms = [embeds, attn_out, mlp_bias]
            term_labels = ["embed", "pos_embed", *[f"{l}_attn_out" for l in layer_labels],
                           *[f"{l}_mlp_bias" for l in layer_labels]]
        elif by == "layer":
            per_prompt = attn_out + mlp_out
            labels = [f"L{l}" for l in layer_labels]
            terms, term_labels = [embeds], ["embed", "pos_embed"]
        else:
            per_prompt, labels = by_component, component_labels
            terms, term_labels = [], []
        terms_per_prompt = torch.cat([*terms, ln_bias[:, None]], dim=1)
    return DLAResult(
        by=by, pos=pos, direction=described, per_prompt=per_prompt, labels=labels,
        terms_per_prompt=terms_per_prompt, term_labels=[*term_labels, LN_BIAS], total=total,
        attn_out=attn_out, mlp_out=mlp_out, accumulated=accumulated, accumulated_labels=accumulated_labels,
        groups=groups,
    )


def _check_pos(pos: object, batch: int, n_pos: int) -> int | list[int]:
    """One position in [0, n_pos) (from an int, negative counting from the end), or one per prompt
    (from a [batch] tensor or list of non-negative positions)."""
    if isinstance(pos, Tensor) and pos.ndim == 0:
        pos = pos.item()
    if isinstance(pos, (Tensor, list, tuple)):
        if isinstance(pos, Tensor) and (pos.ndim != 1 or pos.dtype.is_floating_point or pos.dtype == torch.bool):
            raise InputError(f"pos must be an int or one integer position per prompt ([batch] = [{batch}]), got "
                             f"a {pos.dtype} tensor of shape {list(pos.shape)}")
        positions = [as_index(p, "each of pos") for p in (pos.tolist() if isinstance(pos, Tensor) else pos)]
        if len(positions) != batch:
            raise InputError(f"pos must be one position per prompt ({batch}), got {len(positions)}")
        bad = [p for p in positions if not 0 <= p < n_pos]
        if bad:
            raise InputError(f"per-prompt positions must lie in [0, {n_pos - 1}] for {n_pos} tokens, got {bad[0]}")
        return positions
    pos = as_index(pos, "pos")
    if not -n_pos <= pos < n_pos:
        raise InputError(f"pos must be a position of the prompts: {-n_pos} to {n_pos - 1} for {n_pos} tokens, got {pos}")
    return pos % n_pos


def _each_at(cache: ActivationCache, slots: list[int]) -> ActivationCache:
    """A cache of a few positions per prompt reduced to one per prompt: prompt b's activations at
    its position `slots[b]` (of the cached positions), with a position axis of 1 as `pos_slice=int` gives."""
    out = {}
    for name, x in cache.cache_dict.items():
        axis = pos_axis(name)
        moved = x.movedim(axis, 1)
        rows = torch.arange(moved.shape[0], device=x.device)
        out[name] = moved[rows, torch.tensor(slots, device=x.device)][:, None].movedim(1, axis)
    return ActivationCache(out, cache.model, derived=cache.derived)


def _model_value(model: GPT, logits: Float[Tensor, "batch d_vocab"], cache: ActivationCache,
                 direction: Float[Tensor, "batch d_model"],
                 token_pairs: tuple[Tensor, Tensor | None] | None) -> Float[Tensor, "batch"]:
    """The model's own value at pos: read off its logits for tokens, ln_final(resid) . vector otherwise."""
    if token_pairs is not None:
        answer, wrong = (t.to(logits.device) if t is not None else None for t in token_pairs)
        value = logits.float().gather(-1, answer[:, None])[:, 0]
        if wrong is not None:
            value = value - logits.float().gather(-1, wrong[:, None])[:, 0]
        return value
    normed = model.ln_final(cache["resid_post", -1])[:, 0]  # [batch d_model]
    return einops.einsum(normed.float(), direction.to(normed.device), "batch d_model, batch d_model -> batch")


def _direction(model: GPT, spec: object, batch: int
               ) -> tuple[Float[Tensor, "batch d_model"], str, tuple[Tensor, Tensor | None] | None]:
    """([batch d_model] direction, its description, (answer, wrong) ids [batch] or None for a vector)."""
    if isinstance(spec, Tensor) and spec.dtype.is_floating_point:
        d_model = model.cfg.d_model
        if spec.shape == (d_model,):
            spec = spec.expand(batch, d_model)
        elif spec.shape != (batch, d_model):
            raise InputError(f"a direction vector must have shape [d_model] = [{d_model}] (or [batch d_model] = "
                             f"[{batch}, {d_model}], one per prompt), got {list(spec.shape)}")
        return spec.detach().float(), "a d_model vector", None
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise InputError(f"a logit-difference direction is a pair (answer, wrong), got a tuple of {len(spec)}")
        answer, answer_text = _token_ids(model, spec[0], batch, "answer")
        wrong, wrong_text = _token_ids(model, spec[1], batch, "wrong")
        directions = model.tokens_to_residual_directions(answer) - model.tokens_to_residual_directions(wrong)
        return _per_prompt(directions, batch), f"{answer_text} - {wrong_text}", (answer, wrong)
    token, text = _token_ids(model, spec, batch, "metric_direction")
    return _per_prompt(model.tokens_to_residual_directions(token), batch), text, (token, None)


def _per_prompt(directions: Tensor, batch: int) -> Float[Tensor, "batch d_model"]:
    directions = directions.detach().float()
    return directions.expand(batch, directions.shape[-1]) if directions.ndim == 1 else directions


def _token_ids(model: GPT, spec: object, batch: int, what: str) -> tuple[Tensor, str]:
    """[batch] token ids of a token spec (one-token string, id, [batch] or [batch 1] ids) and a description."""
    allowed = (f"a one-token string, a token id, or one id per prompt ([batch] = [{batch}] ids); a logit "
               "difference is a pair (answer, wrong); any other direction a float [d_model] vector")
    if isinstance(spec, str):
        try:
            token = model.to_single_token(spec)
        except InputError as e:
            raise InputError(f"{what} {spec!r}: {e}") from None
        return torch.full((batch,), token, dtype=torch.long), f"logit[{spec!r}]"
    if isinstance(spec, Tensor):
        if spec.dtype.is_floating_point or spec.dtype == torch.bool:
            raise InputError(f"{what} must be {allowed}; got a {spec.dtype} tensor")
        ids = spec.reshape(-1) if spec.ndim == 2 and spec.shape[1] == 1 else spec
        if ids.ndim == 0 or ids.numel() == 1:
            ids = ids.reshape(1).expand(batch)
        if ids.shape != (batch,):
            raise InputError(f"{what} must be {allowed}; got ids of shape {list(spec.shape)} for {batch} prompts")
        ids = ids.long().cpu()
        per_prompt = "token" if what == "metric_direction" else what
        text = (f"logit[{model.tokenizer.decode([int(ids[0])])!r}]" if bool((ids == ids[0]).all())
                else f"logit[{per_prompt}]")  # a token per prompt, e.g. logit[answer] - logit[wrong]
    else:
        try:
            token = as_index(spec, what)
        except InputError:
            raise InputError(f"{what} must be {allowed}; got {shown(spec)}") from None
        ids = torch.full((batch,), token, dtype=torch.long)
        text = None
    if int(ids.min()) < 0 or int(ids.max()) >= model.cfg.d_vocab:
        raise InputError(f"{what}: token ids must be in [0, {model.cfg.d_vocab - 1}], got {int(ids.min())} to {int(ids.max())}")
    if text is None:
        text = f"logit[{model.tokenizer.decode([int(ids[0])])!r}]"
    return ids, text
