"""Sweeps split across processes (torchrun, gloo on the CPU) or prompt batches
(workbench/experiments/distributed.py): the same numbers as one process to 1e-5, one record,
which replays in one process."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.experiments import AblateHeadsConfig, ActivationPatchingConfig, get_experiment, replay, run_experiment
from workbench.experiments.core import prepare
from workbench.experiments.distributed import combine, run_shard, shard_rows
from workbench.models.loading import load_model
from workbench.runs import load_run

ROOT = Path(__file__).resolve().parent.parent


def test_shard_rows_cover_every_prompt_once():
    for n, size in [(5, 2), (8, 3), (3, 3), (256, 7)]:
        shards = [shard_rows(n, r, size) for r in range(size)]
        assert [i for s in shards for i in range(s.start, s.stop)] == list(range(n))
        assert max(s.stop - s.start for s in shards) - min(s.stop - s.start for s in shards) <= 1
    with pytest.raises(Exception, match="cannot be split across 4 processes"):
        shard_rows(3, 0, 4)


@pytest.mark.parametrize("name,config", [
    ("activation_patching", ActivationPatchingConfig(prompt_set="induction", n_prompts=5, seq_len=5, target="head_out")),
    ("ablate_heads", AblateHeadsConfig(prompt_set="induction", n_prompts=5, seq_len=5, method="mean")),
])
def test_shards_and_prompt_batches_equal_one_batch(tiny_model_dir, name, config):
    """The library path torchrun takes, in one process: shards combined equal the whole set run at once
    (the reference: the experiment's own one-batch compute)."""
    model = load_model(tiny_model_dir, device="cpu")
    experiment = get_experiment(name)
    config = prepare(experiment, dataclasses.replace(config, model=str(tiny_model_dir)), model)
    whole = experiment.compute(config, model)
    parts = [(experiment.compute(config, model, rows=shard_rows(5, r, 2)), shard_rows(5, r, 2).stop - shard_rows(5, r, 2).start)
             for r in range(2)]
    batched = run_shard(experiment, config, model, slice(0, 5), prompt_batch=2, progress=False)
    for got in (combine(parts), batched):
        values = got.values if name == "activation_patching" else got.result.values
        expected = whole.values if name == "activation_patching" else whole.result.values
        torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)
        assert abs(got.clean_value - whole.clean_value) < 1e-5
        assert abs(got.corrupted_value - whole.corrupted_value) < 1e-5


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


def test_torchrun_two_processes_equal_one_and_replay(tiny_model_dir, tmp_path):
    out = tmp_path / "runs"
    options = ["--model", str(tiny_model_dir), "--device", "cpu", "--prompt-set", "induction", "--n-prompts", "5",
               "--seq-len", "5", "--target", "head_out", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "experiments" / "activation_patching.py"), *options],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = list((out / "activation_patching").iterdir())
    assert len(records) == 1, records
    assert proc.stdout.count("Recorded run:") == 1
    record = load_run(records[0])
    assert record.env["world_size"] == 2

    config = ActivationPatchingConfig(model=str(tiny_model_dir), device="cpu", prompt_set="induction", n_prompts=5,
                                      seq_len=5, target="head_out")
    single = run_experiment("activation_patching", config, root=None)
    torch.testing.assert_close(record.results().tensors["values"], single.results.tensors["values"], atol=1e-5, rtol=0)
    torch.testing.assert_close(record.results().tensors["clean_corrupted"], single.results.tensors["clean_corrupted"],
                               atol=1e-5, rtol=0)

    report = replay(records[0])
    assert report.ok, report.format()
    assert "2 process(es)" in report.format()
