"""Memory planning for caches and packed sweeps: peak memory estimated from shapes, before running.

A patching or ablation sweep holds two things at its peak (see `_resume.py` for the packing axes):

* the cached runs it resumes from: the activations `cached_runs` keeps (their distinct storage,
  `hooks.accounting.cache_bytes`, read off a meta-device forward), the residual changes every swept
  layer prepares ([batch pos d_model] per layer), and, while that forward runs, its largest
  transient (the MLP's hidden activations or the logits at the read positions);
* one packed chunk of cells: per computed `token` its residual, its row/position indices and the
  widest sublayer's temporaries (the MLP: d_model in, 2 x d_mlp hidden, d_model out), and per `row`
  the keys, values, padded queries and outputs attention gathers over [row key_pos] and the logits
  at the positions the metric reads ([row pos d_vocab]).

`plan_sweep` turns a memory budget into the bytes one chunk may take (what is left once the cached
runs are held); `_resume.run_cells` closes a chunk when the next cell would pass it, and splits a
chunk in two if the device still runs out of memory. The numbers a sweep gives depend only on its
chunks, which stay those of `_resume.TOKEN_BUDGET` unless the budget is tighter.

The budget (`memory`): a number of bytes or a size such as "2GiB" / "512MB"; by default
`DEFAULT_SHARE` of what the device has free (CUDA: `torch.cuda.mem_get_info`; CPU: the
operating system's available memory, /proc/meminfo's MemAvailable).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workbench.errors import InputError
from workbench.hooks.accounting import cache_bytes
from workbench.hooks.names import derivable

DEFAULT_SHARE = 0.5  # of the free memory: other processes and the allocator's slack keep the rest
INDEX_BYTES = 16  # a packed token's row and position (int64 each)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class MemoryBudgetError(InputError):
    """A memory budget too small for the smallest unit of work (one chunk, or the cached runs)."""


def parse_memory(memory: int | float | str) -> int:
    """Bytes from a number of bytes or a size with a unit: "2GiB", "1.5 GB", "512MiB", "300M"."""
    if isinstance(memory, (int, float)) and not isinstance(memory, bool):
        value = float(memory)
    elif isinstance(memory, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", memory)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise InputError(f"memory {memory!r} is not a size: give bytes or a number with a unit, e.g. "
                             "'2GiB', '512MB', '300M' (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
        value = float(match.group(1)) * _UNITS[unit]
    else:
        raise InputError(f"memory must be a number of bytes or a size such as '2GiB', got {type(memory).__name__}")
    if value <= 0:
        raise InputError(f"memory must be positive, got {memory!r}")
    return int(value)


def free_memory(device: torch.device | str) -> int:
    """Bytes the device has free now: CUDA's free memory (plus what PyTorch holds unused), or the
    operating system's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # memory PyTorch's caching allocator holds but no tensor uses is free to this process too
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_budget(device: torch.device | str, memory: int | float | str | None = None) -> int:
    """The budget in bytes: `memory` parsed, or `DEFAULT_SHARE` of the device's free memory."""
    if memory is not None:
        return parse_memory(memory)
    return int(DEFAULT_SHARE * free_memory(device))


def forward_bytes(model, batch: int, pos: int, names: Sequence[str], *, logit_pos: int | None = None) -> int:
    """Peak bytes of one forward on [batch pos] that caches `names` (weights not counted): the cache
    (distinct storage) plus the largest transient, either the MLP's uncached temporaries or the
    final LayerNorm and logits at `logit_pos` positions (default all)."""
    cfg, itemsize = model.cfg, model.dtype.itemsize
    d_model, d_mlp = cfg.d_model, cfg.d_mlp
    names = list(names)
    held = cache_bytes(model, batch, pos, names, itemsize)
    mlp_cached = any(n.endswith("mlp.hook_pre") or n.endswith("mlp.hook_post") for n in names)
    mlp = batch * pos * (3 * d_model + (0 if mlp_cached else 2 * d_mlp))
    positions = pos if logit_pos is None else logit_pos
    final = batch * positions * (d_model + cfg.d_vocab)
    return held + itemsize * max(mlp, final)


def cache_peak_bytes(model, tokens_shape: tuple[int, int], names_filter=None) -> int:
    """Estimated peak bytes of `model.run_with_cache` on [batch pos] tokens (weights not counted):
    the cache (`model.cache_size`'s storage) plus the forward's largest transient and the logits."""
    names = model.names_matching(names_filter)
    if names_filter is None:  # a full cache computes derivable activations when read
        names = [n for n in names if not derivable(n)]
    return forward_bytes(model, *tokens_shape, names)


@dataclass(frozen=True)
class MemoryPlan:
    """What a sweep will hold, in bytes: `cache` (the cached runs and the prepared residual changes,
    held throughout), `forward` (the cached forward's peak), `chunk` (what one packed chunk may
    take: budget - cache; chunks also stop at `_resume.TOKEN_BUDGET` tokens), and the
    per-`token` and per-`row` costs of a chunk's steps (attention, MLP, joining cells, unembedding;
    a row spans `row_positions` key positions)."""

    budget: int
    cache: int
    forward: int
    chunk: int
    per_token: tuple[int, ...]
    per_row: tuple[int, ...]
    row_positions: int
    budget_given: bool
    chunks: tuple[tuple[int, int], ...] = ()  # (tokens, rows) of each chunk, once the sweep ran

    def chunk_bytes(self, tokens: int, rows: int) -> int:
        """Estimated peak bytes of a chunk computing `tokens` tokens in `rows` rows: the largest of
        its attention, MLP, joining and unembedding steps (`per_token[step] * tokens + per_row[step] * rows`)."""
        return max(t * tokens + r * rows for t, r in zip(self.per_token, self.per_row))

    @property
    def peak(self) -> int:
        """Estimated peak bytes of the sweep: its cached forward, or the cached runs and its largest
        chunk (once `chunks` are known; before, a chunk of the full `chunk` allowance)."""
        largest = max((self.chunk_bytes(*c) for c in self.chunks), default=self.chunk)
        return max(self.forward, self.cache + largest)

    def format(self) -> str:
        source = "given" if self.budget_given else f"{DEFAULT_SHARE:.0%} of free memory"
        text = (f"memory plan: budget {_mib(self.budget)} ({source}); cached runs {_mib(self.cache)} "
                f"(forward peak {_mib(self.forward)}); chunks up to {_mib(self.chunk)} "
                f"(at most {max(self.per_token)} B per token + {_mib(max(self.per_row), 3)} per row)")
        if self.chunks:
            text += f"; ran {len(self.chunks)} chunk(s), estimated peak {_mib(self.peak)}"
        return text


def _mib(n: int, digits: int = 1) -> str:
    return f"{n / 2**20:.{digits}f} MiB"


def plan_sweep(
    model,
    *,
    batch: int,
    pos: int,
    runs: int,
    names: Sequence[str],
    read: Sequence[int],
    swept_layers: int,
    memory: int | float | str | None = None,
) -> MemoryPlan:
    """The memory plan of a sweep on `runs` cached [batch pos] runs caching `names` (logits at the
    `read` positions), with `swept_layers` layers of prepared residual changes. Raises MemoryBudgetError when the budget cannot
    hold the cached runs and one smallest chunk (one cell: `batch` rows of one token)."""
    cfg, itemsize = model.cfg, model.dtype.itemsize
    d_model, d_mlp = cfg.d_model, cfg.d_mlp
    stop = max(read) + 1
    held = cache_bytes(model, runs * batch, pos, names, itemsize)
    prepared = swept_layers * batch * pos * d_model * itemsize
    cache = held + prepared
    forward = forward_bytes(model, runs * batch, pos, names, logit_pos=len(read))
    # Every step holds the chunk's residual and indices per token, plus its own temporaries:
    # attention: ln1 out and the fused q/k/v per token; per row the keys and values (base run's
    #   before the row starts), padded queries and outputs over `stop` positions, and the
    #   [query_pos key_pos] mask (bool, then additive in the model's dtype, on the CPU kernel);
    # MLP: ln2 out, the d_mlp pre- and post-GELU activations and the output per token;
    # joining cells: their deltas over the whole prompt and the shifted residuals up to `stop`;
    # unembedding: the final residual, ln_final and the logits at the read positions per row.
    resid = itemsize * d_model + INDEX_BYTES
    per_token = (resid + itemsize * 4 * d_model, resid + itemsize * (3 * d_model + 2 * d_mlp), resid, resid)
    per_row = (
        itemsize * 4 * stop * d_model + (1 + itemsize) * stop * stop,
        0,
        itemsize * (pos + stop) * d_model,
        itemsize * len(read) * (2 * d_model + cfg.d_vocab),
    )
    budget = memory_budget(model.device, memory)
    chunk = budget - cache
    plan = MemoryPlan(budget, cache, forward, chunk, per_token, per_row, stop, memory is not None)
    smallest = plan.chunk_bytes(batch, batch)
    if budget < max(forward, cache + smallest):
        raise MemoryBudgetError(
            f"a memory budget of {_mib(budget)} cannot hold this sweep: its cached runs take {_mib(cache)} "
            f"(their forward peaks at {_mib(forward)}) and its smallest chunk (one cell, {batch} prompt rows) "
            f"{_mib(smallest)}, so it needs at least {_mib(max(forward, cache + smallest))}. Give a larger "
            "budget (--memory), fewer or shorter prompts, or fewer layers"
        )
    return plan


def show_plan(plan: MemoryPlan, progress: object) -> None:
    """Print the plan (to stderr) where a sweep draws its console progress bar and a budget was
    given (the experiments' summaries always show it)."""
    if progress is True and plan.budget_given:
        print(plan.format(), file=sys.stderr)
