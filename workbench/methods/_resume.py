"""Many patched forward passes at once, each resumed from the unpatched run's cached residuals.

Patching and ablation sweeps are built from *cells*. A cell changes the residual stream of a
base run by `delta` at one point (`entry`: before block l's attention, before its MLP, or after
it), from its `first` changed position on, and asks for the metric of the resulting run. This
module runs many cells in one batched forward, and does as little as it can:

* each cell starts at its entry point from the base run's cached residual, not at the embedding;
* positions before a chunk's earliest `first` are the same as in the base run (attention is
  causal), so they are not recomputed: their keys and values come from the base run's cache;
* positions after the last one the metric reads are never computed, the last block runs its
  queries and MLP only at the positions the metric reads, and logits are computed only there.

Cells whose patch cannot reach a position the metric reads get the base run's metric.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from workbench.hooks import ActivationCache
from workbench.methods.metrics import Metric

# Rough size of one chunk: token positions per forward, and logits kept per forward (floats).
TOKEN_BUDGET = 4096
LOGIT_BUDGET = 2**25


def entry_of(layer: int, stage: str) -> int:
    """Entry points in forward order: 2l = block l's resid_pre, 2l+1 = its resid_mid, 2l+2 = its resid_post."""
    return 2 * layer + {"pre": 0, "mid": 1, "post": 2}[stage]


@dataclass
class BaseRun:
    """The unpatched run every cell resumes from: its tokens, logits and cached activations."""

    tokens: Tensor
    logits: Float[Tensor, "batch pos d_vocab"]
    cache: ActivationCache
    n_layer: int

    def entry_resid(self, entry: int) -> Float[Tensor, "batch pos d_model"]:
        if entry == 2 * self.n_layer:
            return self.cache["resid_post", self.n_layer - 1]
        return self.cache["resid_pre" if entry % 2 == 0 else "resid_mid", entry // 2]

    @property
    def final_resid(self) -> Float[Tensor, "batch pos d_model"]:
        return self.cache["resid_post", self.n_layer - 1]


def base_names(n_layer: int) -> list[str]:
    """The hook names a `BaseRun` needs (residuals at every entry point, keys and values)."""
    names = []
    for l in range(n_layer):
        names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.attn.hook_k", f"blocks.{l}.attn.hook_v",
                  f"blocks.{l}.hook_resid_mid"]
    return names + [f"blocks.{n_layer - 1}.hook_resid_post"]


@dataclass
class CellGroup:
    """Cells that enter at the same point. `delta(keys)` gives their residual changes,
    [cell batch pos d_model] over all positions (zero before each cell's `first`)."""

    entry: int
    delta: Callable[[list[Hashable]], Float[Tensor, "cell batch pos d_model"]]
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
    model,
    base: BaseRun,
    groups: Sequence[CellGroup],
    metric: Metric,
    out: Tensor,
    *,
    max_batch: int | None = None,
    progress: bool = True,
    desc: str = "cells",
) -> None:
    """Write metric(patched run) for every cell of `groups` into `out[cell.index]`."""
    batch, n_pos = base.tokens.shape
    read = metric.read_positions(n_pos)
    stop = max(read) + 1
    baseline = float(metric(base.logits))
    cells = [_Cell(g, k, i, f) for g in groups for k, i, f in zip(g.keys, g.index, g.first)]
    todo = []
    for c in cells:
        if c.first >= stop:  # the patch changes nothing the metric reads
            out[c.index] = baseline
        else:
            todo.append(c)
    if not todo:
        return
    todo.sort(key=lambda c: (c.first, c.group.entry))
    if max_batch is None:
        span = stop - todo[0].first
        max_batch = max(1, TOKEN_BUDGET // span)
    if not metric.batched:  # logits at every read position for every row stay in memory
        max_batch = min(max_batch, max(1, LOGIT_BUDGET // (len(read) * model.cfg.d_vocab)))
    per_chunk = max(1, max_batch // batch)
    chunks = [todo[i : i + per_chunk] for i in range(0, len(todo), per_chunk)]
    with torch.no_grad():
        for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
            order, values = _run_chunk(model, base, chunk, metric, read, stop)
            for c, v in zip(order, values.tolist()):
                out[c.index] = v


def _run_chunk(
    model, base: BaseRun, chunk: list[_Cell], metric: Metric, read: list[int], stop: int
) -> tuple[list[_Cell], Tensor]:
    """The metric of every cell of `chunk`, returned with the cells in the same order."""
    n_layer = model.cfg.n_layer
    batch = base.tokens.shape[0]
    device = base.final_resid.device
    start = min(c.first for c in chunk)
    read_now = torch.tensor([p for p in read if p >= start], device=device)
    pos_now = torch.arange(start, stop, device=device)  # positions the rows currently hold
    by_entry: dict[int, dict[int, list[_Cell]]] = defaultdict(dict)
    for c in chunk:
        by_entry[c.group.entry].setdefault(id(c.group), []).append(c)
    order: list[_Cell] = []  # the cells in row order
    state: Tensor | None = None
    for entry in range(min(by_entry), 2 * n_layer + 1):
        if entry >= 2 * n_layer - 1 and state is None and len(pos_now) != len(read_now):
            pos_now = read_now  # no attention left to run: only the positions the metric reads matter
        for cells in by_entry.get(entry, {}).values():
            delta = cells[0].group.delta([c.key for c in cells])
            x = base.entry_resid(entry)[None] + delta
            x = einops.rearrange(x[:, :, pos_now], "cell batch pos d_model -> (cell batch) pos d_model")
            state = x if state is None else torch.cat([state, x])
            order += cells
        if entry == 2 * n_layer or state is None:
            continue
        block = model.blocks[entry // 2]
        if entry % 2 == 0:
            last = entry // 2 == n_layer - 1
            keep = torch.searchsorted(pos_now, read_now) if last else None
            state = _attention_half(block, state, base, entry // 2, pos_now, start, keep)
            if last:
                pos_now = read_now
        else:
            state = _mlp_half(block, state)
    # Rows hold `pos_now`; the metric's positions before `start` are the base run's.
    final = einops.repeat(base.final_resid[:, read], "batch pos d_model -> (cell batch) pos d_model", cell=len(order))
    final = final.clone()
    read_t = torch.tensor(read, device=device)
    cols = (read_t >= start).nonzero().flatten()
    final[:, cols] = state[:, torch.searchsorted(pos_now, read_t[cols])]
    logits = model.unembed(final)
    logits = einops.rearrange(logits, "(cell batch) pos d_vocab -> cell batch pos d_vocab", batch=batch)
    return order, metric.evaluate(logits).float()


def _attention_half(
    block,
    x: Float[Tensor, "batch pos d_model"],
    base: BaseRun,
    layer: int,
    pos_now: Tensor,
    start: int,
    keep: Tensor | None,
) -> Float[Tensor, "batch query_pos d_model"]:
    """resid + attn(ln1(resid)) for rows holding positions `pos_now` (= start..), with the keys and
    values of positions before `start` taken from the base run. With `keep`, only those query
    positions are computed and returned."""
    attn = block.attn
    batch = base.tokens.shape[0]
    qkv = attn.c_attn(block.ln1(x))
    q, k, v = einops.rearrange(
        qkv, "batch pos (three head d_head) -> three batch head pos d_head", three=3, head=attn.n_head
    )
    if start > 0:
        cells = x.shape[0] // batch
        prefix = [
            einops.repeat(base.cache[name, layer][:, :start], "batch pos head d_head -> (cell batch) head pos d_head",
                          cell=cells)
            for name in ("k", "v")
        ]
        k, v = torch.cat([prefix[0], k], dim=2), torch.cat([prefix[1], v], dim=2)
    if keep is not None:
        q, x, pos_now = q[:, :, keep], x[:, keep], pos_now[keep]
    key_pos = torch.arange(k.shape[2], device=x.device)
    mask = key_pos[None, :] <= pos_now[:, None]  # [query_pos key_pos], causal at absolute positions
    z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return x + attn.c_proj(einops.rearrange(z, "batch head pos d_head -> batch pos (head d_head)"))


def _mlp_half(block, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
    return x + block.mlp(block.ln2(x))
