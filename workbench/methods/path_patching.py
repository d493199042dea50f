"""Path patching (Wang et al. 2022, "Interpretability in the Wild"; ARENA's IOI chapter): how much of
a sender's effect reaches the receivers directly, through no other attention head.

One base run (the corrupted prompt when denoising, the clean one when noising) and one source run
(the other). For each sender (an attention head, or an MLP):

1. *Frozen run*: the sender's output comes from the source run, every other attention head's output
   (`hook_z`) is frozen to its base-run value, and MLPs recompute.
2. The effect is read only through the receivers:
   * `receivers="logits"` (or the last block's `"resid_post"`): the metric of the frozen run.
   * `receivers=[(layer, head, "q" | "k" | "v"), ...]`: the frozen run gives each receiver's input
     (its q, k or v, computed from that run's residual stream through its block's ln1); a second,
     normal base run with only those receiver inputs set to them gives the metric.

A sender can reach a receiver only from an earlier block: senders at or after every receiver's
layer are skipped (value NaN, `computed` False). With receivers in several layers, a sender in the
layer of one receiver still reaches the later ones (as ARENA sweeps senders up to the last receiver's
layer).

Speed: with every other head frozen, after the sender's layer only the MLPs change the residual
stream, and they act position by position. So the frozen run is computed for many senders at once
as a residual-stream change that flows through the MLPs alone (no attention, and for
`receivers="logits"` only at the positions the metric reads); the second run of q/k/v receivers is a
packed, resumed sweep (`workbench/methods/_resume.py`) entering at the first receiver's block, with
the receivers' inputs set from the frozen run (`CellGroup.inputs`).

Values: senders="heads" -> [layer head], senders="mlps" -> [layer], a list of senders ((layer,
head) for a head, (layer, "mlp") for an MLP) -> [component], in the list's order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import einops
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from workbench.errors import InputError
from workbench.hooks import act_name
from workbench.methods._checks import as_index, check_per_prompt, check_sweep_options, shown
from workbench.methods._resume import (
    LOGIT_BUDGET, TOKEN_BUDGET, BaseRun, CellGroup, base_names, cached_runs, entry_of, run_cells, unembed,
)
from workbench.methods.metrics import Metric, as_metric, clean_beats_corrupted, find_reads, normalize, scalar
from workbench.methods.patching import check_direction, check_pair, first_difference, patching_intervals
from workbench.methods.statistics import Bootstrap, by_group_frame, prompts_subset
from workbench.models import GPT

RECEIVER_INPUTS = ("q", "k", "v")
SENDER_SETS = ("heads", "mlps")

Receiver = tuple[int, int, str]


@dataclass(frozen=True)
class Sender:
    """One sender: an attention head (`head` set) or the MLP of block `layer` (`head` None)."""

    layer: int
    head: int | None = None

    @property
    def label(self) -> str:
        """The cache's component labels: "L3H2" for a head, "3_mlp_out" for an MLP."""
        return f"{self.layer}_mlp_out" if self.head is None else f"L{self.layer}H{self.head}"


def receivers_label(receivers: str | Sequence[Receiver]) -> str:
    """"logits", or the receivers as "L1H0.k, L1H2.q"."""
    if isinstance(receivers, str):
        return receivers
    return ", ".join(f"L{layer}H{head}.{kind}" for layer, head, kind in receivers)


@dataclass
class PathPatchingResult:
    """values[sender] is the metric with that sender's output taken from the source run and passed on
    only through the receivers (module docstring). Axes `dims`: ("layer", "head") for senders="heads",
    ("layer",) for "mlps", ("component",) for a list of senders (labelled by `senders`, in `values`'
    flattened order). `computed` is False (and the value NaN) where the sender cannot reach any
    receiver (at or after every receiver's layer).

    Per prompt (`path_patching(..., per_prompt=True)`): `per_prompt[..., prompt]` each prompt's
    value (mean over prompts: `values`), `prompt_clean`, `prompt_corrupted` [prompt] the unpatched
    runs' values, `groups[prompt]` optional labels; `to_frame()` then adds bootstrap intervals over
    prompts (`bootstrap`, `methods.statistics`), `to_frame(by_group=True)` per group."""

    values: Float[Tensor, "..."]
    computed: Bool[Tensor, "..."]
    dims: tuple[str, ...]
    senders: list[Sender]
    receivers: str | list[Receiver]
    direction: str
    metric: str
    clean_value: float
    corrupted_value: float
    per_prompt: Float[Tensor, "... prompt"] | None = None
    prompt_clean: Float[Tensor, "prompt"] | None = None
    prompt_corrupted: Float[Tensor, "prompt"] | None = None
    groups: list[str] | None = None
    bootstrap: Bootstrap = field(default_factory=Bootstrap)

    @property
    def baseline(self) -> float:
        """The metric of the unpatched base run (corrupted when denoising, clean when noising)."""
        return self.corrupted_value if self.direction == "denoise" else self.clean_value

    @property
    def effect(self) -> Float[Tensor, "..."]:
        """values - baseline: how much each sender moves the metric through the receivers."""
        return self.values - self.baseline

    @property
    def clean_beats_corrupted(self) -> bool:
        """Whether the clean run is clearly better on the metric (`metrics.clean_beats_corrupted`)."""
        return clean_beats_corrupted(self.clean_value, self.corrupted_value)

    def normalized(self) -> Float[Tensor, "..."]:
        """values on the 0 = corrupted, 1 = clean scale."""
        return normalize(self.values, self.clean_value, self.corrupted_value)

    def for_prompts(self, keep: Tensor | Sequence[bool]) -> PathPatchingResult:
        """The result on the prompts marked in `keep` alone (per-prompt results only)."""
        return prompts_subset(self, keep, how="run path_patching with per_prompt=True")

    def to_frame(self, *, by_group: bool = False) -> pd.DataFrame:
        """One row per sender: component (its label), layer, head (missing for an MLP), value, effect,
        normalized, computed; then receivers, direction and metric.

        With per-prompt values also n (prompts), ci_low / ci_high (the bootstrap interval of value),
        effect_ci_low / effect_ci_high (of each prompt's value - its unpatched value) and
        normalized_ci_low / normalized_ci_high, as `PatchingResult.to_frame()`; missing where the
        sender reaches no receiver. `by_group`: one block of rows per group label (column `group`)."""
        if by_group:
            return by_group_frame(self)
        frame = pd.DataFrame({
            "component": [s.label for s in self.senders],
            "layer": [s.layer for s in self.senders],
            "head": pd.array([s.head for s in self.senders], dtype="Int64"),
            "value": self.values.flatten().tolist(),
            "effect": self.effect.flatten().tolist(),
        })
        try:
            frame["normalized"] = self.normalized().flatten().tolist()
        except InputError:  # clean and corrupted metric equal: no scale
            frame["normalized"] = float("nan")
        frame["computed"] = self.computed.flatten().tolist()
        if self.per_prompt is not None:
            frame = pd.concat([frame, self._intervals()], axis=1)
        frame["receivers"] = receivers_label(self.receivers)
        frame["direction"], frame["metric"] = self.direction, self.metric
        return frame

    def _intervals(self) -> pd.DataFrame:
        """The interval columns of the senders that reach a receiver (NaN for the others)."""
        done = self.computed.flatten()
        ci = patching_intervals(self, einops.rearrange(self.per_prompt, "... prompt -> (...) prompt")[done])
        ci.index = done.nonzero().flatten().tolist()
        ci = ci.reindex(range(len(done)))
        ci["n"] = ci["n"].astype("Int64")  # missing where the sender reaches no receiver
        return ci


# ---------------------------------------------------------------------- input checks


def check_receivers(model: GPT, receivers: object) -> str | list[Receiver]:
    """"logits" (also "resid_post" or the last block's resid_post hook name), or a list of
    (layer, head, "q" | "k" | "v") (one such triple is taken as a list of one)."""
    n_layer = model.cfg.n_layer
    if isinstance(receivers, str):
        if receivers in ("logits", "resid_post", act_name("resid_post", n_layer - 1)):
            return "logits"
        raise InputError(
            f"receivers must be 'logits' (or 'resid_post', the last block's) or a list of (layer, head, input) "
            f"with input one of {', '.join(RECEIVER_INPUTS)}; got {receivers!r}"
        )
    if isinstance(receivers, tuple) and len(receivers) == 3 and isinstance(receivers[2], str):
        receivers = [receivers]
    if not isinstance(receivers, (list, tuple)) or not receivers:
        raise InputError(f"receivers must be 'logits' or a non-empty list of (layer, head, input), got {shown(receivers)}")
    out: list[Receiver] = []
    for r in receivers:
        if not isinstance(r, (list, tuple)) or len(r) != 3:
            raise InputError(f"each receiver must be (layer, head, input) with input one of "
                             f"{', '.join(RECEIVER_INPUTS)}, got {shown(r)}")
        layer, head = as_index(r[0], "a receiver's layer"), as_index(r[1], "a receiver's head")
        kind = r[2]
        if kind not in RECEIVER_INPUTS:
            raise InputError(f"receiver {tuple(r)!r}: a receiver's input must be one of {', '.join(RECEIVER_INPUTS)} "
                             f"(the head's query, key or value input), got {kind!r}")
        _check_layer_head(model, layer, head, "receiver")
        if layer == 0:
            raise InputError(f"receiver {tuple(r)!r} is in block 0: nothing comes before it to send to it; "
                             f"receivers must be in blocks 1 to {n_layer - 1} (or 'logits')")
        out.append((layer, head, kind))
    return list(dict.fromkeys(out))


def _check_layer_head(model: GPT, layer: int, head: int | None, what: str) -> None:
    n_layer, n_head = model.cfg.n_layer, model.cfg.n_head
    if not 0 <= layer < n_layer:
        raise InputError(f"{what} layer {layer} is out of range: the model has {n_layer} layers (0 to {n_layer - 1})")
    if head is not None and not 0 <= head < n_head:
        raise InputError(f"{what} head {head} is out of range: the model has {n_head} heads per layer (0 to {n_head - 1})")


def check_senders(model: GPT, senders: object) -> tuple[list[Sender], tuple[str, ...], tuple[int, ...]]:
    """The senders, the axes of their values and its shape: "heads" (every head, [layer head]),
    "mlps" (every MLP, [layer]) or a list of (layer, head) and (layer, "mlp") ([component])."""
    n_layer, n_head = model.cfg.n_layer, model.cfg.n_head
    if senders == "heads":
        return [Sender(l, h) for l in range(n_layer) for h in range(n_head)], ("layer", "head"), (n_layer, n_head)
    if senders == "mlps":
        return [Sender(l) for l in range(n_layer)], ("layer",), (n_layer,)
    if isinstance(senders, str) or not isinstance(senders, (list, tuple)) or not senders:
        raise InputError(f"senders must be 'heads', 'mlps' or a non-empty list of (layer, head) and (layer, 'mlp'), "
                         f"got {shown(senders)}")
    out = []
    for s in senders:
        if not isinstance(s, (list, tuple)) or len(s) != 2:
            raise InputError(f"each sender must be (layer, head) or (layer, 'mlp'), got {shown(s)}")
        layer = as_index(s[0], "a sender's layer")
        head = None if s[1] == "mlp" else as_index(s[1], "a sender's head (or 'mlp')")
        _check_layer_head(model, layer, head, "sender")
        out.append(Sender(layer, head))
    if len(set(out)) != len(out):
        raise InputError(f"senders lists a sender twice: {[s.label for s in out]}")
    return out, ("component",), (len(out),)


# ---------------------------------------------------------------------- path patching


def path_patching(
    model: GPT,
    clean_tokens: Tensor | str | Sequence[str],
    corrupted_tokens: Tensor | str | Sequence[str],
    metric: Metric | Callable[[Tensor], Tensor],
    *,
    receivers: str | Sequence[tuple],
    senders: str | Sequence[tuple] = "heads",
    direction: str = "denoise",
    max_batch: int | None = None,
    progress: bool | Callable[[int, int], None] = True,
    per_prompt: bool = False,
    groups: Sequence[str] | None = None,
) -> PathPatchingResult:
    """Path patching from each sender to `receivers` (module docstring for the definition).

    `clean_tokens`, `corrupted_tokens`: [batch pos] ids of the same shape (or text). `metric`: a
    `Metric` (e.g. `LogitDiff`) or any callable logits [batch pos d_vocab] -> scalar.
    `receivers`: "logits" or a list of (layer, head, "q" | "k" | "v"). `senders`: "heads" (values
    [layer head]), "mlps" ([layer]) or a list of (layer, head) and (layer, "mlp") ([component]).
    `direction`: "denoise" takes the sender's output from the clean run into the corrupted one,
    "noise" the reverse. `max_batch`: most sequences (senders x batch) in one forward.
    `progress`: True for a console bar, False for none, or a callback `progress(done, total)`.
    `per_prompt`: also keep each prompt's value (`PathPatchingResult.per_prompt`, [... prompt]; the
    metric must be a workbench `Metric`, a mean over prompts), from the same forwards; `groups`: a
    label per prompt for per-group intervals.

    Returns a `PathPatchingResult`; values are the metric of the path-patched run, NaN where the
    sender cannot reach a receiver.
    """
    check_sweep_options(max_batch, progress)
    direction = check_direction(direction)
    clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens)
    metric = as_metric(metric)
    groups = check_per_prompt(metric, per_prompt, groups, clean.shape[0])
    receivers = check_receivers(model, receivers)
    senders, dims, shape = check_senders(model, senders)
    n_layer = model.cfg.n_layer
    reach = n_layer if receivers == "logits" else max(layer for layer, _, _ in receivers)
    reaching = [s for s in senders if s.layer < reach]
    if not reaching:
        raise InputError(
            f"no sender can reach the receivers ({receivers_label(receivers)}): a sender must be in an earlier block "
            f"than a receiver, and every sender is at layer {min(s.layer for s in senders)} or later"
        )

    base_tokens, source_tokens = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    n_pos = base_tokens.shape[1]
    read = metric.read_positions(n_pos)
    names = base_names(n_layer) + [act_name(kind, l) for l in range(n_layer) for kind in ("z", "mlp_out")]
    if receivers != "logits":
        names += [act_name("q", layer) for layer, _, _ in receivers]
    (base_logits, base_cache), (source_logits, source_cache) = cached_runs(
        model, [base_tokens, source_tokens], names, read, metric.vocab
    )
    runs = (source_logits, base_logits) if direction == "denoise" else (base_logits, source_logits)
    clean_logits, corrupted_logits = runs
    clean_value = float(scalar(metric.evaluate(clean_logits), metric.name))
    corrupted_value = float(scalar(metric.evaluate(corrupted_logits), metric.name))
    frozen = _FrozenRun(model, base_cache, source_cache)

    batch = base_tokens.shape[0]
    values = torch.full(shape + ((batch,) if per_prompt else ()), float("nan"))
    computed = torch.zeros(shape, dtype=torch.bool)
    index = {s: i for i, s in enumerate(senders)}
    # one value (or one per prompt) per sender, in the order of `senders`
    flat = values.view(-1, batch) if per_prompt else values.view(-1)
    for s in reaching:
        computed.view(-1)[index[s]] = True
    d = first_difference(clean, corrupted)
    base = BaseRun(base_tokens, base_logits, base_cache, n_layer, other_logits=(source_logits,))
    if receivers == "logits":
        _to_logits(frozen, base, metric, reaching, index, flat, max_batch=max_batch, progress=progress,
                   per_prompt=per_prompt)
    else:
        group = CellGroup(
            entry_of(min(layer for layer, _, _ in receivers), "pre"),
            lambda keys: base_cache["resid_pre", 0].new_zeros(len(keys), *base_tokens.shape, model.cfg.d_model),
            inputs=lambda keys: frozen.receiver_inputs(keys, receivers, first=d, stop=max(read) + 1),
        )
        for s in reaching:
            group.add(s, (index[s],), d)
        run_cells(model, base, [group], metric, flat, max_batch=max_batch, progress=progress, desc="path patching",
                  per_prompt=per_prompt)
    prompts = {}
    if per_prompt:
        prompts = dict(per_prompt=values, prompt_clean=metric.per_prompt(clean_logits).float().cpu(),
                       prompt_corrupted=metric.per_prompt(corrupted_logits).float().cpu(), groups=groups)
        values = einops.reduce(values, "... prompt -> ...", "mean")
    return PathPatchingResult(
        values=values, computed=computed, dims=dims, senders=senders, receivers=receivers, direction=direction,
        metric=metric.name, clean_value=clean_value, corrupted_value=corrupted_value, **prompts,
    )


class _FrozenRun:
    """The first pass for many senders at once: the base run with each sender's output from the
    source run and every other head frozen, as a change of the residual stream [cell batch pos
    d_model] that only the MLPs carry on after the sender's block."""

    def __init__(self, model: GPT, base_cache, source_cache) -> None:
        self.model, self.base, self.source = model, base_cache, source_cache

    def _head_deltas(self, layer: int, heads: list[int], pos: Tensor) -> Float[Tensor, "cell batch pos d_model"]:
        """Sender heads' changes of the residual stream at positions `pos` (entering at resid_mid):
        each head's z change through its W_O."""
        z_diff = (self.source["z", layer] - self.base["z", layer])[:, pos][:, :, heads]  # [batch pos cell d_head]
        out = self.model.blocks[layer].attn.head_results(z_diff, heads=torch.tensor(heads, device=z_diff.device))
        return einops.rearrange(out, "batch pos cell d_model -> cell batch pos d_model")

    def _mlp_delta(self, layer: int, pos: Tensor) -> Float[Tensor, "batch pos d_model"]:
        """A sender MLP's change of the residual stream at positions `pos` (entering at resid_post)."""
        return (self.source["mlp_out", layer] - self.base["mlp_out", layer])[:, pos]

    def run(
        self, senders: Sequence[Sender], pos: Tensor, until: int, at: Callable[[int, Tensor], None] | None = None
    ) -> Float[Tensor, "cell batch pos d_model"]:
        """The residual change of each sender at positions `pos` entering block `until` (its
        resid_pre; `until = n_layer` for the final resid_post). `at(layer, delta)` is called with the
        change entering each block from the first sender's layer + 1 to `until`, the rows of
        senders that can have changed it first (senders are sorted by their place in the forward)."""
        order = sorted(range(len(senders)), key=lambda i: (senders[i].layer, senders[i].head is None))
        ordered = [senders[i] for i in order]
        batch = self.base["z", 0].shape[0]
        delta = self.base["z", 0].new_zeros(len(senders), batch, len(pos), self.model.cfg.d_model)
        for layer in range(ordered[0].layer, until):
            block = self.model.blocks[layer]
            joining = [i for i, s in enumerate(ordered) if s.layer == layer and s.head is not None]
            if joining:
                delta[joining] = self._head_deltas(layer, [ordered[i].head for i in joining], pos)
            live = sum(1 for s in ordered if s.layer < layer or (s.layer == layer and s.head is not None))
            if live:  # heads frozen: resid_mid changes only by delta; the MLP recomputes
                resid_mid = self.base["resid_mid", layer][:, pos] + delta[:live]
                rows = einops.rearrange(resid_mid, "cell batch pos d_model -> (cell batch) pos d_model")
                mlp_out = einops.rearrange(block.mlp(block.ln2(rows)),
                                           "(cell batch) pos d_model -> cell batch pos d_model", batch=batch)
                delta[:live] += mlp_out - self.base["mlp_out", layer][:, pos]
            for i, s in enumerate(ordered):
                if s.layer == layer and s.head is None:
                    delta[i] = self._mlp_delta(layer, pos)
            if at is not None:
                at(layer + 1, delta[: sum(1 for s in ordered if s.layer <= layer)])
        out = torch.empty_like(delta)
        out[torch.tensor(order, device=delta.device)] = delta
        return out

    def receiver_inputs(
        self, senders: list[Sender], receivers: list[Receiver], *, first: int, stop: int
    ) -> dict[tuple[int, int, str], Float[Tensor, "cell batch pos d_head"]]:
        """Each receiver's input in each sender's frozen run, at positions 0..stop-1 (the base run's
        before `first`, where the runs agree): the receiver's q, k or v from the frozen run's residual
        stream through the receiver block's ln1."""
        order = sorted(range(len(senders)), key=lambda i: (senders[i].layer, senders[i].head is None))
        out = {}
        for layer, head, kind in receivers:
            value = self.base[kind, layer][:, :stop, head]  # [batch pos d_head]
            out[(layer, head, kind)] = value.expand(len(senders), *value.shape).clone()
        if first >= stop:
            return out
        pos = torch.arange(first, stop, device=self.base["z", 0].device)
        by_layer = {}
        for layer, head, kind in receivers:
            by_layer.setdefault(layer, []).append((head, kind))
        back = torch.tensor(order, device=pos.device)

        def at(layer: int, delta: Tensor) -> None:
            if layer not in by_layer:
                return
            block = self.model.blocks[layer]
            resid = einops.rearrange(self.base["resid_pre", layer][:, pos] + delta,
                                     "cell batch pos d_model -> (cell batch) pos d_model")
            qkv = dict(zip("qkv", block.attn.split_qkv(block.ln1(resid))))
            rows = back[: delta.shape[0]]
            for head, kind in by_layer[layer]:
                got = einops.rearrange(qkv[kind][:, :, head], "(cell batch) pos d_head -> cell batch pos d_head",
                                       cell=delta.shape[0])
                out[(layer, head, kind)][rows, :, first:stop] = got

        self.run(senders, pos, max(by_layer), at)
        return out


def _to_logits(
    frozen: _FrozenRun, base: BaseRun, metric: Metric, senders: list[Sender], index: dict, out: Tensor, *,
    max_batch: int | None, progress: bool | Callable[[int, int], None], per_prompt: bool = False,
) -> None:
    """receivers="logits": the metric of each sender's frozen run, which differs from the base run
    only through the MLPs, position by position: computed at the positions the metric reads only
    (`per_prompt`: each prompt's value, out[sender, prompt])."""
    model = frozen.model
    batch, n_pos = base.tokens.shape
    metric = find_reads(metric, [base.read_logits, *base.other_logits])
    read = metric.read_positions(n_pos)
    pos = torch.tensor(read, device=base.tokens.device)
    per_cell = batch * len(read)
    cells = max(1, TOKEN_BUDGET // per_cell)
    if metric.vocab is None:
        cells = min(cells, max(1, LOGIT_BUDGET // (per_cell * model.cfg.d_vocab)))
    if max_batch is not None:
        cells = min(cells, max(1, max_batch // batch))
    chunks = [senders[i : i + cells] for i in range(0, len(senders), cells)]
    report = progress if callable(progress) else None
    if report:
        report(0, len(senders))
    done = 0
    with torch.no_grad():
        for chunk in tqdm(chunks, desc="path patching", disable=progress is not True, leave=False):
            delta = frozen.run(chunk, pos, model.cfg.n_layer)
            final = base.final_resid[:, pos] + delta  # [cell batch pos d_model]
            rows = einops.rearrange(final, "cell batch pos d_model -> (cell batch) pos d_model")
            logits = einops.rearrange(unembed(model, rows, metric.vocab),
                                      "(cell batch) pos d_vocab -> cell batch pos d_vocab", batch=batch)
            evaluate = metric.per_prompt if per_prompt else metric.evaluate
            for s, v in zip(chunk, evaluate(logits).float().cpu()):
                out[index[s]] = v
            done += len(chunk)
            if report:
                report(done, len(senders))
