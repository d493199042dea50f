"""Many patched forward passes at once, each resumed from the unpatched run's cached residuals.

Patching and ablation sweeps are built from *cells*. A cell changes the residual stream of a
base run by `delta` at one point (`entry`: before block l's attention, before its MLP, or after
it) from its `first` changed position on, and asks for the metric of the resulting run. This
module runs many cells in one forward and computes only what can differ from the base run:

* each cell starts at its entry point from the base run's cached residual, not at the embedding;
* attention is causal, so a cell's positions before its `first` are the base run's: they are not
  computed, and their keys and values come from the base run's cache;
* positions after the last one the metric reads are never computed; the last block runs its
  queries and MLP only at the positions the metric reads, and logits are computed only there.

What is left is packed as a flat list of (row, position) tokens: every position-wise layer
(LayerNorm, the projections, the MLP) runs on all of them as one big matrix, and only attention
pads them back to [row query_pos] to attend over [row key_pos]. Packing axes (defined with the
rest of the axis vocabulary in workbench/models/__init__.py): `cell` (one patched run), `row` (one
(cell, prompt) pair, `(cell batch)`) and `token` (one (row, position) pair that is actually computed).
A cell may also set some heads' inputs in the blocks it runs through (`CellGroup.inputs`: path
patching's receivers, whose q, k or v come from another run): they replace what the block computes
from the residual stream at the positions the cell computes.

Cells whose change cannot reach a position the metric reads get the base run's metric. A plain
callable metric first has what it reads found (`metrics.find_reads`, from its gradient on the
unpatched runs, checked), so it gets the same treatment.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from workbench.errors import InputError, is_out_of_memory
from workbench.hooks import ActivationCache, act_name
from workbench.methods.metrics import Metric, find_reads
from workbench.methods.planning import MemoryBudgetError, MemoryPlan
from workbench.models import GPT
from workbench.models.attention import Attention

# Tokens computed in one forward (past this, bigger chunks go no faster; a `MemoryPlan` may cap
# them lower), and logits kept at once for metrics that are evaluated one cell at a time.
TOKEN_BUDGET = 16384
LOGIT_BUDGET = 2**25


def entry_of(layer: int, stage: str) -> int:
    """Entry points in forward order: 2l = block l's resid_pre, 2l+1 = its resid_mid, 2l+2 = its resid_post."""
    return 2 * layer + {"pre": 0, "mid": 1, "post": 2}[stage]


@dataclass
class BaseRun:
    """The unpatched run every cell resumes from: its tokens, its logits at the positions the
    metric reads (`read_logits`) and cached activations. `other_logits`: logits of other unpatched
    runs of the same shape (a patching sweep's source run), on which what a plain callable metric
    reads is checked too."""

    tokens: Tensor
    read_logits: Float[Tensor, "batch pos d_vocab"]
    cache: ActivationCache
    n_layer: int
    other_logits: tuple[Tensor, ...] = ()

    def entry_resid(self, entry: int) -> Float[Tensor, "batch pos d_model"]:
        if entry == 2 * self.n_layer:
            return self.cache["resid_post", self.n_layer - 1]
        return self.cache["resid_pre" if entry % 2 == 0 else "resid_mid", entry // 2]

    @property
    def final_resid(self) -> Float[Tensor, "batch pos d_model"]:
        return self.cache["resid_post", self.n_layer - 1]


def cached_runs(
    model: GPT, runs: Sequence[Tensor], names: Sequence[str], read: Sequence[int], vocab: Sequence[int] | None = None
) -> list[tuple[Tensor, ActivationCache]]:
    """Run several [batch pos] token sets as one batch, caching the activations `names` and
    computing logits only at positions `read` (and tokens `vocab`): a (logits [batch read
    d_vocab], cache) pair per token set."""
    refuse_attached_hooks(model)
    store: dict[str, Tensor] = {}

    def save(x: Tensor, hook) -> None:
        store[hook.name] = x.detach()

    with torch.no_grad(), model.hooks(fwd_hooks=[(n, save) for n in dict.fromkeys(names)]):
        resid = model.run_blocks(model.embed_input(torch.cat(list(runs))))
        logits = unembed(model, resid[:, list(read)], vocab)
    out, offset = [], 0
    for tokens in runs:
        rows = slice(offset, offset + tokens.shape[0])
        out.append((logits[rows], ActivationCache({k: v[rows] for k, v in store.items()}, model)))
        offset += tokens.shape[0]
    return out


def refuse_attached_hooks(model: GPT) -> None:
    """Patched cells run without hook points, so hooks the caller left attached would change the base
    run but not the cells: refuse rather than return skewed numbers."""
    attached = [name for name, point in model.hook_dict.items() if point.has_hooks]
    if attached:
        shown = ", ".join(attached[:4]) + (f" and {len(attached) - 4} more" if len(attached) > 4 else "")
        raise InputError(
            f"patching and ablation sweeps run their patched cells without hook points, so hooks attached "
            f"to the model would change the clean run only; detach them first (attached at: {shown}). "
            "To combine your own hooks with a patch, run each patched forward with model.run_with_hooks."
        )


def unembed(
    model: GPT, resid: Float[Tensor, "batch pos d_model"], vocab: Sequence[int] | None
) -> Float[Tensor, "batch pos d_vocab"]:
    """The model's logits; with `vocab`, only those token ids are computed and the rest are 0
    (for metrics that read a few tokens: the unembedding is the biggest matrix of the model)."""
    if vocab is None:
        return model.logits_from_resid(resid)
    ids = torch.tensor(list(vocab), device=resid.device)
    picked = model.ln_final(resid) @ model.W_U[:, ids]
    logits = picked.new_zeros(*picked.shape[:-1], model.cfg.d_vocab)
    logits[..., ids] = picked
    return logits


def base_names(n_layer: int) -> list[str]:
    """The hook names a `BaseRun` needs (residuals at every entry point, keys and values)."""
    names = []
    for l in range(n_layer):
        names += [act_name(kind, l) for kind in ("resid_pre", "k", "v", "resid_mid")]
    return names + [act_name("resid_post", n_layer - 1)]


# Head inputs a cell sets: (layer, head, "q" | "k" | "v") -> [cell batch pos d_head].
HeadInputs = dict[tuple[int, int, str], Tensor]


@dataclass(eq=False)
class CellGroup:
    """Cells that enter at the same point. `delta(keys)` gives their residual changes,
    [cell batch pos d_model] over all positions (only positions >= each cell's `first` are read).
    `inputs(keys)`, if given, gives head inputs the cells set in later blocks: {(layer, head, "q" |
    "k" | "v"): [cell batch pos d_head]} (positions >= `first` read), replacing the computed ones."""

    entry: int
    delta: Callable[[list[Hashable]], Float[Tensor, "cell batch pos d_model"]]
    inputs: Callable[[list[Hashable]], HeadInputs] | None = None
    keys: list[Hashable] = field(default_factory=list)
    index: list[tuple[int, ...]] = field(default_factory=list)  # where each value goes
    first: list[int] = field(default_factory=list)

    def add(self, key: Hashable, index: tuple[int, ...], first: int) -> None:
        self.keys.append(key)
        self.index.append(index)
        self.first.append(first)


@dataclass
class _Cell:
    group: CellGroup
    key: Hashable
    index: tuple[int, ...]
    first: int


def run_cells(
    model: GPT,
    base: BaseRun,
    groups: Sequence[CellGroup],
    metric: Metric,
    out: Tensor,
    *,
    max_batch: int | None = None,
    progress: bool | Callable[[int, int], None] = True,
    desc: str = "cells",
    plan: MemoryPlan | None = None,
    per_prompt: bool = False,
) -> list[tuple[int, int]]:
    """Write metric(patched run) for every cell of `groups` into `out[cell.index]`; with
    `per_prompt`, `out` has a trailing prompt axis and gets each prompt's value
    (`metric.per_prompt`, of which the metric is the mean), the same forwards either way.

    `max_batch` caps the rows (cells x prompts) of one forward; tokens per forward are capped
    at `TOKEN_BUDGET` either way, and a chunk's estimated bytes at `plan.chunk` (`planning.py`).
    A chunk the device still has no memory for is split in two and retried. `progress` is True
    for a console bar, False for none, or a callback `progress(cells_done, cells_total)` (the
    dashboard's bar) called after each forward. Returns each chunk's (tokens, rows)."""
    batch, n_pos = base.tokens.shape
    evaluate = metric.per_prompt if per_prompt else metric.evaluate
    baseline = evaluate(base.read_logits).float().cpu()
    if base.read_logits.shape[1] == n_pos:  # all logits of the base run: a callable's reads can be found
        metric = find_reads(metric, [base.read_logits, *base.other_logits])
    read = metric.read_positions(n_pos)
    stop = max(read) + 1
    todo = []
    for g in groups:
        for key, index, first in zip(g.keys, g.index, g.first):
            if first >= stop:  # the change reaches nothing the metric reads
                out[index] = baseline
            else:
                todo.append(_Cell(g, key, index, first))
    max_rows = max_batch or len(todo) * batch
    if not metric.batched:  # its logits at every read position stay in memory
        max_rows = min(max_rows, max(1, LOGIT_BUDGET // (len(read) * model.cfg.d_vocab)))
    chunks, sizes, chunk, tokens = [], [], [], 0
    n_read_from = [sum(p >= first for p in read) for first in range(stop)]
    for c in sorted(todo, key=lambda c: (c.group.entry, c.first)):
        # The tokens a cell computes: its positions from `first` on, only the read ones once no
        # attention is left to run (entries at the last MLP or after).
        late = c.group.entry >= 2 * model.cfg.n_layer - 1
        cost = batch * (n_read_from[c.first] if late else stop - c.first)
        rows = (len(chunk) + 1) * batch
        over_memory = plan is not None and plan.chunk_bytes(tokens + cost, rows) > plan.chunk
        if chunk and (tokens + cost > TOKEN_BUDGET or rows > max_rows or over_memory):
            chunks.append(chunk)
            sizes.append((tokens, len(chunk) * batch))
            chunk, tokens = [], 0
        chunk.append(c)
        tokens += cost
    if chunk:
        chunks.append(chunk)
        sizes.append((tokens, len(chunk) * batch))
    report = progress if callable(progress) else None
    done, total = 0, len(todo)
    if report:
        report(done, total)
    with torch.no_grad():
        for chunk in tqdm(chunks, desc=desc, disable=progress is not True, leave=False):
            for order, values in _run_fitting(model, base, chunk, metric, read, stop, per_prompt):
                for c, v in zip(order, values.cpu()):
                    out[c.index] = v
            done += len(chunk)
            if report:
                report(done, total)
    return sizes


def _run_fitting(model: GPT, base: BaseRun, chunk: list[_Cell], metric: Metric, read: list[int], stop: int,
                 per_prompt: bool = False):
    """`_run_chunk`'s (cells, values), in halves of the chunk (recursively) while the device runs
    out of memory: a fallback for what the plan's estimate missed (other processes, fragmentation)."""
    try:
        return [_run_chunk(model, base, chunk, metric, read, stop, per_prompt)]
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        if len(chunk) == 1:
            raise MemoryBudgetError(
                f"out of memory running one cell ({base.tokens.shape[0]} prompt rows of {stop} positions): "
                "free memory on the device, or use fewer or shorter prompts") from e
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
    half = len(chunk) // 2
    # The halves keep the chunk's entry order, which _run_chunk needs.
    return (_run_fitting(model, base, chunk[:half], metric, read, stop, per_prompt)
            + _run_fitting(model, base, chunk[half:], metric, read, stop, per_prompt))


@dataclass
class _Tokens:
    """The flat tokens of a chunk: x[i] is row row[i] at position pos[i]; row r starts at start[r]."""

    x: Float[Tensor, "token d_model"]
    row: Tensor
    pos: Tensor
    start: Tensor

    def append(self, other: _Tokens) -> _Tokens:
        offset = len(self.start)
        return _Tokens(torch.cat([self.x, other.x]), torch.cat([self.row, other.row + offset]),
                       torch.cat([self.pos, other.pos]), torch.cat([self.start, other.start]))

    def subset(self, keep: Tensor) -> _Tokens:
        return _Tokens(self.x[keep], self.row[keep], self.pos[keep], self.start)


def _run_chunk(
    model: GPT, base: BaseRun, chunk: list[_Cell], metric: Metric, read: list[int], stop: int, per_prompt: bool
) -> tuple[list[_Cell], Tensor]:
    """The metric of every cell of `chunk` (sorted by entry), returned with the cells in row order
    ([cell], or [cell batch] per prompt)."""
    n_layer = model.cfg.n_layer
    batch = base.tokens.shape[0]
    device = base.final_resid.device
    read_t = torch.tensor(read, device=device)
    is_read = torch.zeros(stop, dtype=torch.bool, device=device)
    is_read[read_t] = True
    state: _Tokens | None = None
    order: list[_Cell] = []
    inputs: list[tuple[int, HeadInputs]] = []  # (first row, head inputs) of the groups that set some
    for entry in range(chunk[0].group.entry, 2 * n_layer + 1):
        # Cells joining here, group by group (the chunk is sorted by entry, so rows stay in chunk order).
        joining = [c for c in chunk if c.group.entry == entry]
        for group in dict.fromkeys(c.group for c in joining):
            cells = [c for c in joining if c.group is group]
            if group.inputs is not None:
                inputs.append((len(order) * batch, group.inputs([c.key for c in cells])))
            fresh = _join(base, entry, group, cells, stop, is_read if entry >= 2 * n_layer - 1 else None)
            state = fresh if state is None else state.append(fresh)
            order += cells
        if entry == 2 * n_layer or state is None:
            continue
        block = model.blocks[entry // 2]
        if entry % 2 == 0:
            last = entry // 2 == n_layer - 1
            state = _attention_half(block, state, base, entry // 2, stop, is_read if last else None, inputs)
        else:
            state = state_with(state, state.x + _tokenwise(lambda x: block.mlp(block.ln2(x)), state.x))
    # Each row's logits at the metric's positions: computed ones, and the base run's before its start.
    rows = len(state.start)
    final = base.final_resid[torch.arange(rows, device=device) % batch][:, read_t].clone()
    slot = torch.searchsorted(read_t, state.pos) if _sorted(read) else _slot_of(read_t, state.pos)
    final[state.row, slot] = state.x
    logits = unembed(model, final, metric.vocab)
    logits = einops.rearrange(logits, "(cell batch) pos d_vocab -> cell batch pos d_vocab", batch=batch)
    return order, (metric.per_prompt(logits) if per_prompt else metric.evaluate(logits)).float()


def _sorted(xs: list[int]) -> bool:
    return all(a < b for a, b in zip(xs, xs[1:]))


def _slot_of(read_t: Tensor, pos: Tensor) -> Tensor:
    """Index in read_t of each position (read_t unsorted or with repeats: the first match)."""
    return (read_t[None, :] == pos[:, None]).int().argmax(-1)


def _tokenwise(fn: Callable[[Tensor], Tensor], x: Float[Tensor, "token d_model"]) -> Float[Tensor, "token d_model"]:
    """A position-wise module on the flat tokens (the modules take [batch pos d_model])."""
    return fn(x[None])[0]


def state_with(state: _Tokens, x: Tensor) -> _Tokens:
    return _Tokens(x, state.row, state.pos, state.start)


def _join(base: BaseRun, entry: int, group: CellGroup, cells: list[_Cell], stop: int, only: Tensor | None) -> _Tokens:
    """The tokens of `cells` entering at `entry`: base residual + delta at each cell's positions
    [first, stop) (only those in `only`, once no attention is left to run)."""
    batch = base.tokens.shape[0]
    device = base.final_resid.device
    delta = group.delta([c.key for c in cells])[:, :, :stop]
    x = base.entry_resid(entry)[None, :, :stop] + delta  # [cell batch pos d_model]
    first = torch.tensor([c.first for c in cells], device=device)
    pos = torch.arange(stop, device=device)
    wanted = pos[None, :] >= first[:, None]  # [cell pos]
    if only is not None:
        wanted &= only[None, :]
    wanted = einops.repeat(wanted, "cell pos -> cell batch pos", batch=batch)
    row, p = einops.rearrange(wanted, "cell batch pos -> (cell batch) pos").nonzero(as_tuple=True)
    start = einops.repeat(first, "cell -> (cell batch)", batch=batch)
    return _Tokens(x[wanted], row, p, start)


def _attention_half(
    block, state: _Tokens, base: BaseRun, layer: int, stop: int, only: Tensor | None,
    inputs: Sequence[tuple[int, HeadInputs]] = (),
) -> _Tokens:
    """resid + attn(ln1(resid)) on the flat tokens. Each row attends over keys 0..stop-1: its own
    where it has tokens, the base run's before its start. With `only`, just the query tokens at
    those positions are computed and kept (the last block). `inputs`: head inputs set by the rows
    from a first row on (`CellGroup.inputs`)."""
    attn = block.attn
    rows = len(state.start)
    normed = block.ln1(state.x[None])
    keep = torch.ones_like(state.pos, dtype=torch.bool) if only is None else only[state.pos]
    if only is None:
        q, k, v = (t[0] for t in attn.split_qkv(normed))  # [token head d_head]
    else:  # queries at the kept tokens only
        k, v = (t[0] for t in attn.split_qkv(normed, parts="kv"))
        (q,) = (t[0] for t in attn.split_qkv(normed[:, keep], parts="q"))
    for first_row, values in inputs:
        for (at, head, kind), x in values.items():
            if at != layer:
                continue
            x = einops.rearrange(x, "cell batch pos d_head -> (cell batch) pos d_head")
            mine = (state.row >= first_row) & (state.row < first_row + x.shape[0])
            if kind == "q":  # q's tokens are the kept ones
                q[mine[keep], head] = x[state.row[mine & keep] - first_row, state.pos[mine & keep]]
            else:
                {"k": k, "v": v}[kind][mine, head] = x[state.row[mine] - first_row, state.pos[mine]]
    base_rows = torch.arange(rows, device=q.device) % base.tokens.shape[0]
    keys, values = (base.cache[name, layer][base_rows, :stop] for name in ("k", "v"))  # copies: indexed by rows
    keys[state.row, state.pos] = k  # [row key_pos head d_head]
    values[state.row, state.pos] = v
    if only is not None:
        state = state.subset(keep)
    # Queries padded per row: slot j of row r is position start[r] + j.
    slot = state.pos - state.start[state.row]
    n_slot = int(slot.max()) + 1
    queries = q.new_zeros(rows, n_slot, *q.shape[1:])
    queries[state.row, slot] = q
    query_pos = state.start[:, None] + torch.arange(n_slot, device=q.device)  # [row query_pos]
    z = attn.attend(queries, keys, values, query_pos=query_pos)[state.row, slot]  # [token head d_head]
    return state_with(state, state.x + attn.project(z[None])[0])


# ---------------------------------------------------------------------- head cells
# A head cell's key is (pos, head): the change of that head's output z at position pos (None:
# at every position). A `ZDiff` gives the z changes of a list of cells; `through_W_O` turns them
# into the residual changes at resid_mid that a `CellGroup` takes.
ZDiff = Callable[[list[tuple]], Float[Tensor, "cell batch pos d_head"]]


def through_W_O(z_diff: ZDiff, attn: Attention) -> Callable[[list[tuple]], Float[Tensor, "cell batch pos d_model"]]:
    """Residual deltas of head cells: each cell's z change through its head's W_O (`attn.head_results`)."""

    def delta(keys: list[tuple]) -> Float[Tensor, "cell batch pos d_model"]:
        heads = torch.tensor([k[1] for k in keys])
        z = einops.rearrange(z_diff(keys), "cell batch pos d_head -> batch pos cell d_head")
        out = attn.head_results(z, heads=heads.to(z.device))
        return einops.rearrange(out, "batch pos cell d_model -> cell batch pos d_model")

    return delta


def all_rows(z_diff: Float[Tensor, "batch pos head d_head"]) -> ZDiff:
    """Cells that change their head's z at every position by `z_diff`."""

    def take(keys: list[tuple]) -> Float[Tensor, "cell batch pos d_head"]:
        heads = torch.tensor([k[1] for k in keys])
        return einops.rearrange(z_diff[:, :, heads], "batch pos cell d_head -> cell batch pos d_head")

    return take
