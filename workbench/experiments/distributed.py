"""Sweep experiments over many processes (torch.distributed) or many prompt batches: shard the
prompts by rows, run each shard, combine.

    torchrun --nproc_per_node=2 experiments/activation_patching.py --prompt-set ioi --n-prompts 256

Under torchrun (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR), each process (rank) joins
one process group (`gloo` on the CPU, `nccl` on CUDA, each rank on GPU LOCAL_RANK), resolves the
same config (the whole prompt set's token ids), runs the experiment's `compute` on its shard of the
prompts (contiguous rows of every [batch pos] token tensor: `shard_rows`), and sends its result to
rank 0, which combines the shards and writes the one run record (env.json records `world_size`).
Without torchrun the same command runs in one process, as before.

Combining: every metric of a sweep is a mean over the prompts (`workbench.methods.metrics`), so
each float result (tensors and numbers: the patched values, the clean and corrupted metrics) of
the whole set is the mean of the shards' results weighted by their number of prompts; everything
else (labels, layers, the first prompt's tokens) is rank 0's. The numbers equal one process's to
float rounding (summation order), so a replay of a distributed run in one process compares them
within the float tolerance rather than bit for bit (`replaying.replay`).

With fewer prompts than processes some ranks get none: such a rank computes nothing and sends
nothing to combine (weight 0 in every mean, no rows in the per-prompt values), so any number of
processes gives the whole set's numbers. Rank 0 always has a prompt (the rows go to the lowest
ranks first). Attribution patching (`--method attribution`) is split the same way: its estimate
is linear in each prompt's gradient, so it too is a mean over prompts.
Bad input met on any rank's shard (a `WorkbenchError`) is sent to every rank, and all stop with
the same message; an experiment whose `compute` takes no `rows` is refused before any work.

A shard also runs in prompt batches (`prompt_batch` prompts at a time, combined the same way), and
a batch whose sweep does not fit the memory budget (`planning.MemoryBudgetError`) is split in two
until it does: a prompt set that fits one prompt at a time never runs out of memory. The progress
bar counts prompts.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from workbench.errors import InputError, WorkbenchError
from workbench.methods.planning import MemoryBudgetError


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run: `rank` of `size` (`local_rank` on its
    machine), and the process group's `backend` (None: one process, no group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Whether this process writes the record and prints (rank 0)."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_world(device: str | None = None) -> World:
    """The process group torchrun set up the environment for (a one-process `World` without
    torchrun). `device`: the config's device; CUDA (given, or None with a GPU present) means NCCL
    with each rank on GPU LOCAL_RANK, otherwise gloo on the CPU."""
    if not launched_by_torchrun():
        return World()
    size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if size == 1:
        return World()
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return World(rank=rank, size=size, local_rank=local_rank, backend=backend)


def rank_device(world: World, device: str | None) -> str | None:
    """The device this rank runs on: GPU LOCAL_RANK under NCCL, else the config's device."""
    return f"cuda:{world.local_rank}" if world.backend == "nccl" else device


def shard_rows(n: int, rank: int, size: int) -> slice:
    """Rank `rank`'s rows of `n` prompts: contiguous, sizes differing by at most one, in rank order
    (the lower ranks get the extra rows). With n < size the ranks from n on get empty slices."""
    if n < 1:
        raise InputError(f"there are no prompts to split across {size} process(es): give at least one prompt")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


# Result fields with one entry per prompt on their last axis (`PatchingResult`, `AblationResult`):
# the shards' are joined in row order, not averaged.
PER_PROMPT_FIELDS = ("per_prompt", "prompt_baseline", "prompt_clean", "prompt_corrupted", "groups")


def combine(parts: list[tuple[Any, int]]) -> Any:
    """The result of the whole prompt set from (result, n_prompts) of its shards, in row order:
    float tensors and numbers are the n-weighted mean (every sweep metric is a mean over prompts),
    nested dataclasses are combined field by field (their `PER_PROMPT_FIELDS` joined along the
    prompt axis), everything else is the first shard's. Empty shards (n_prompts 0, result None)
    contribute nothing."""
    parts = [(p, n) for p, n in parts if n > 0]
    if not parts:
        raise InputError("no shard has any prompts: there is nothing to combine")
    if len(parts) == 1:
        return parts[0][0]
    first = parts[0][0]
    weights = [n for _, n in parts]
    total = sum(weights)
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        fields = {f.name: (_join([getattr(p, f.name) for p, _ in parts]) if f.name in PER_PROMPT_FIELDS
                           else combine([(getattr(p, f.name), n) for p, n in parts]))
                  for f in dataclasses.fields(first) if f.init}
        return dataclasses.replace(first, **fields)
    if isinstance(first, Tensor) and first.is_floating_point():
        stacked = torch.stack([p.double() * n for p, n in parts])
        return (stacked.sum(0) / total).to(first.dtype)
    if isinstance(first, float):
        return sum(float(p) * n for p, n in parts) / total
    return first


def _join(values: list) -> Any:
    """Per-prompt values of the shards, in row order: tensors along their last (prompt) axis, lists
    end to end; None stays None."""
    if values[0] is None:
        return None
    if isinstance(values[0], Tensor):
        return torch.cat(values, dim=-1)
    return [v for part in values for v in part]


def run_shard(experiment, config, model, rows: slice, *, prompt_batch: int | None = None,
              progress: bool = True) -> Any:
    """`experiment.compute` on the prompts `rows`, `prompt_batch` at a time (default all at once),
    each batch split in two while its sweep does not fit the memory budget; combined (`combine`).
    `progress`: a bar counting prompts. An empty `rows` (a rank with no prompts) computes nothing: None."""
    n = rows.stop - rows.start
    if n == 0:
        return None
    step = n if prompt_batch is None else max(1, prompt_batch)
    todo = [slice(s, min(s + step, rows.stop)) for s in range(rows.start, rows.stop, step)]
    parts = []
    with tqdm(total=n, desc="prompts", unit="prompt", disable=not progress, leave=False) as bar:
        while todo:
            batch = todo.pop(0)
            size = batch.stop - batch.start
            try:
                parts.append((experiment.compute(config, model, rows=batch), size))
            except MemoryBudgetError:
                if size == 1:
                    raise
                middle = batch.start + size // 2
                todo[:0] = [slice(batch.start, middle), slice(middle, batch.stop)]
                continue
            bar.update(size)
    return combine(parts)


def n_prompts(config) -> int:
    """The number of prompts of a resolved config (rows of its token ids, the same for every role)."""
    counts = {role: len(rows) for role, rows in config.token_ids.items()}
    if len(set(counts.values())) != 1:
        raise InputError(f"the token ids' roles have different numbers of rows, {counts}: they cannot be sharded")
    return next(iter(counts.values()))


def gather_to_main(world: World, shard_result: Any, n: int, error: WorkbenchError | None = None
                   ) -> list[tuple[Any, int]] | None:
    """Every rank's (result, n_prompts), in rank order, on rank 0 (None on the others). `error`: the
    WorkbenchError this rank's shard raised (its result then None); any rank's is raised on every
    rank, so all stop with the same message (a rank without prompts computes nothing and would not
    meet the error itself, e.g. resample ablation's refusal to be sharded)."""
    parts: list = [None] * world.size
    dist.all_gather_object(parts, (_to_cpu(shard_result), n, error))
    for _, _, failed in parts:
        if failed is not None:
            raise failed
    return [(result, n) for result, n, _ in parts] if world.main else None


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.cpu()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _to_cpu(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value


def run_distributed(experiment, config, model, world: World, *, root, name=None, prompt_batch=None):
    """One run over all ranks: the config resolved on every rank, this rank's shard computed,
    combined on rank 0 and recorded there. Returns the `core.Run` on rank 0, None elsewhere."""
    from workbench.experiments.core import prepare, run_experiment

    if (experiment.compute is None or experiment.record is None
            or "rows" not in inspect.signature(experiment.compute).parameters):
        raise InputError(f"experiment {experiment.name!r} cannot be split across processes (its compute step takes "
                         "no shard of the prompts); run it without torchrun")
    resolved = prepare(experiment, config, model)
    torch.manual_seed(resolved.seed)
    rows = shard_rows(n_prompts(resolved), world.rank, world.size)
    mine, error = None, None
    try:
        with torch.no_grad():
            mine = run_shard(experiment, resolved, model, rows, prompt_batch=prompt_batch, progress=world.main)
    except WorkbenchError as e:  # bad input: every rank stops with it (gather_to_main)
        error = e
    parts = gather_to_main(world, mine, rows.stop - rows.start, error)
    run = None
    if world.main:
        run = run_experiment(experiment, config, model=model, root=root, name=name, computed=combine(parts))
    dist.barrier()  # the others wait for the record, so torchrun reports one finished run
    return run
