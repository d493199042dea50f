"""Sweeps split across processes (torchrun, gloo on the CPU) or prompt batches
(workbench/experiments/distributed.py): the same numbers as one process to 1e-5, one record,
which replays in one process; activation and attribution patching and head ablation; ranks
without prompts (fewer prompts than processes) contribute nothing."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.experiments import AblateHeadsConfig, ActivationPatchingConfig, get_experiment, replay, run_experiment
from workbench.experiments.core import prepare
from workbench.errors import InputError
from workbench.experiments.distributed import combine, run_shard, shard_rows
from workbench.models.loading import load_model
from workbench.runs import load_run

from test_datasets import ROWS  # IOI-style pairs with groups, one token per answer

ROOT = Path(__file__).resolve().parent.parent


def test_shard_rows_cover_every_prompt_once():
    for n, size in [(5, 2), (8, 3), (3, 3), (256, 7), (1, 2), (2, 5)]:
        shards = [shard_rows(n, r, size) for r in range(size)]
        assert [i for s in shards for i in range(s.start, s.stop)] == list(range(n))
        assert max(s.stop - s.start for s in shards) - min(s.stop - s.start for s in shards) <= 1
        assert shards[0].stop > shards[0].start  # rank 0 always has a prompt
    assert [shard_rows(2, r, 4).stop - shard_rows(2, r, 4).start for r in range(4)] == [1, 1, 0, 0]
    with pytest.raises(InputError, match="no prompts"):
        shard_rows(0, 0, 2)


def shard_sizes(n: int, size: int) -> list[tuple[slice, int]]:
    return [(rows, rows.stop - rows.start) for rows in (shard_rows(n, r, size) for r in range(size))]


def values_of(result):
    return result.result.values if hasattr(result, "result") else result.values


@pytest.mark.parametrize("name,config", [
    ("activation_patching", ActivationPatchingConfig(prompt_set="induction", n_prompts=5, seq_len=5, target="head_out")),
    ("activation_patching", ActivationPatchingConfig(prompt_set="induction", n_prompts=5, seq_len=5, target="head_out",
                                                     method="attribution")),
    ("ablate_heads", AblateHeadsConfig(prompt_set="induction", n_prompts=5, seq_len=5, method="mean")),
], ids=["activation", "attribution", "ablation"])
def test_shards_and_prompt_batches_equal_one_batch(tiny_model_dir, name, config):
    """The library path torchrun takes, in one process: shards combined equal the whole set run at once
    (the reference: the experiment's own one-batch compute), and so do 5 prompts over 7 ranks, two of
    them without prompts (run_shard gives None for them)."""
    model = load_model(tiny_model_dir, device="cpu")
    experiment = get_experiment(name)
    config = prepare(experiment, dataclasses.replace(config, model=str(tiny_model_dir)), model)
    whole = experiment.compute(config, model)
    parts = [(experiment.compute(config, model, rows=rows), n) for rows, n in shard_sizes(5, 2)]
    batched = run_shard(experiment, config, model, slice(0, 5), prompt_batch=2, progress=False)
    with torch.no_grad():  # as run_distributed runs it
        seven = [(run_shard(experiment, config, model, rows, progress=False), n) for rows, n in shard_sizes(5, 7)]
    assert [p is None for p, _ in seven] == [False] * 5 + [True] * 2
    for got in (combine(parts), batched, combine(seven)):
        torch.testing.assert_close(values_of(got), values_of(whole), atol=1e-5, rtol=0)
        assert abs(got.clean_value - whole.clean_value) < 1e-5
        assert abs(got.corrupted_value - whole.corrupted_value) < 1e-5
        if name == "activation_patching":  # per-prompt values joined in row order
            torch.testing.assert_close(got.per_prompt, whole.per_prompt, atol=1e-5, rtol=0)


def test_prompt_batches_fall_back_on_a_small_budget(tiny_model_dir):
    """A budget too small for the whole set but enough for one prompt: the set runs in smaller batches."""
    model = load_model(tiny_model_dir, device="cpu")
    experiment = get_experiment("activation_patching")
    base = ActivationPatchingConfig(model=str(tiny_model_dir), prompt_set="induction", n_prompts=8, seq_len=5,
                                    target="head_out")
    config = prepare(experiment, base, model)
    whole = experiment.compute(config, model)
    one = experiment.compute(config, model, rows=slice(0, 1)).memory_plan
    tight = dataclasses.replace(config, memory=str(int(1.5 * max(one.forward, one.cache + one.chunk_bytes(1, 1)) * 2)))
    with pytest.raises(Exception, match="needs at least"):
        experiment.compute(tight, model)
    got = run_shard(experiment, tight, model, slice(0, 8), progress=False)
    torch.testing.assert_close(got.values, whole.values, atol=1e-5, rtol=0)


def torchrun(experiment: str, options: list[str], out: Path) -> Path:
    """`torchrun --standalone --nproc_per_node=2 experiments/<experiment>.py <options> --out out` on the
    CPU (gloo); checks one record with world size 2, and returns it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "experiments" / f"{experiment}.py"), *options, "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = list((out / experiment).iterdir())
    assert len(records) == 1, records
    assert proc.stdout.count("Recorded run:") == 1
    assert load_run(records[0]).env["world_size"] == 2
    return records[0]


def assert_equals_one_process_and_replays(path: Path, config) -> None:
    """The record's numbers equal one process's run of `config` to 1e-5, and it replays in one process."""
    record = load_run(path)
    single = run_experiment(get_experiment(record.experiment), config, root=None)
    recorded = record.results().tensors
    assert set(recorded) == set(single.results.tensors)
    for name, tensor in single.results.tensors.items():
        torch.testing.assert_close(recorded[name], tensor, atol=1e-5, rtol=0, msg=name)
    report = replay(path)
    assert report.ok, report.format()
    assert "2 process(es)" in report.format()


def test_torchrun_two_processes_equal_one_and_replay(tiny_model_dir, tmp_path):
    options = ["--model", str(tiny_model_dir), "--device", "cpu", "--prompt-set", "induction", "--n-prompts", "5",
               "--seq-len", "5", "--target", "head_out"]
    path = torchrun("activation_patching", options, tmp_path / "runs")
    config = ActivationPatchingConfig(model=str(tiny_model_dir), device="cpu", prompt_set="induction", n_prompts=5,
                                      seq_len=5, target="head_out")
    assert_equals_one_process_and_replays(path, config)


@pytest.mark.parametrize("n", [3, 1], ids=["3-prompts", "1-prompt-rank-1-empty"])
def test_torchrun_attribution_patching_from_a_prompt_file(tiny_model_dir, tmp_path, n):
    """--method attribution --prompts FILE over two processes: one record (method attribution, per-prompt
    values and their groups joined across the ranks), the one-process numbers; with one prompt, rank 1
    has none and contributes nothing."""
    prompts = tmp_path / "pairs.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in ROWS[:n]))
    options = ["--model", str(tiny_model_dir), "--device", "cpu", "--method", "attribution", "--prompts", str(prompts),
               "--target", "attn_out"]
    path = torchrun("activation_patching", options, tmp_path / "runs")
    record = load_run(path)
    assert record.config["method"] == "attribution" and record.config["prompt_groups"] == [r["group"] for r in ROWS[:n]]
    assert (record.tables()["patching"]["method"] == "attribution").all()
    assert record.results().tensors["per_prompt"].shape[-1] == n
    config = ActivationPatchingConfig(model=str(tiny_model_dir), device="cpu", method="attribution",
                                      prompts=str(prompts), target="attn_out")
    assert_equals_one_process_and_replays(path, config)


def test_resample_ablation_is_refused_on_every_rank_even_one_without_prompts(tiny_model_dir, tmp_path):
    """One prompt over two processes: rank 1 has none and computes nothing, yet both stop with rank 0's
    refusal (resample ablation cannot be sharded), nothing is recorded, and nothing waits forever."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        # torchrun looks at its workers every 3 s here: once rank 0 has failed it stops the others, and they
        # must have had the time to fail on their own
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--monitor-interval=3",
         str(ROOT / "experiments" / "ablate_heads.py"), "--model", str(tiny_model_dir), "--device", "cpu",
         "--prompt-set", "induction", "--n-prompts", "1", "--seq-len", "5", "--method", "resample",
         "--out", str(tmp_path / "runs")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert proc.stderr.count("error: resample ablation draws a reference prompt") == 2, proc.stderr[-3000:]
    assert not (tmp_path / "runs").exists()


def test_experiments_without_shards_are_refused_before_any_work():
    from workbench.experiments import DLAConfig
    from workbench.experiments.distributed import World, run_distributed

    with pytest.raises(InputError, match="'dla' cannot be split across processes"):
        run_distributed(get_experiment("dla"), DLAConfig(), None, World(rank=0, size=2, backend="gloo"), root=None)
