"""Sweeps over many prompts: prompt batches and torchrun processes against one packed sweep.

    python benchmarks/sharded_sweeps.py --n-prompts 256 [--prompt-batch 32 --memory 4GiB --layers 0 11 --no-cli]

On the 124M shape (random weights, saved once to a temporary folder), a head_out activation-patching
sweep over IOI prompts:

1. packed by hand: the experiment's compute on every prompt at once (one `activation_patching` call);
2. in prompt batches of --prompt-batch with a progress bar in prompts
   (`workbench.experiments.distributed.run_shard`), under the --memory budget;
3. the command line in one process (1 thread), and under torchrun on 2 processes x 1 thread
   (launch, shards, gather and record included), whose numbers must equal (3)'s to 1e-5.

Each of 1-2 runs in its own process, which reports its wall time, its process CPU time (what to compare
on a shared machine: other jobs move wall time, much less CPU time) and peak RSS (ru_maxrss) and the RSS
before the sweep (model loaded), so the sweep's own peak is their difference. `--layers` sweeps those
layers' heads only (fewer cells per prompt: each prompt batch's one cached forward weighs more, so the
batches/by-hand ratio is a harder test); `--no-cli` skips (3).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def variant(args) -> None:
    import torch

    from workbench.experiments import ActivationPatchingConfig, get_experiment
    from workbench.experiments.core import prepare
    from workbench.experiments.distributed import run_shard
    from workbench.models.loading import load_model

    torch.set_num_threads(1)
    model = load_model(args.model, device="cpu")
    experiment = get_experiment("activation_patching")
    config = prepare(experiment, ActivationPatchingConfig(model=args.model, prompt_set="ioi", n_prompts=args.n_prompts,
                                                          target="head_out", memory=args.memory,
                                                          layers=args.layers), model)
    before = rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.no_grad():
        if args.variant == "hand":
            result = experiment.compute(config, model)
        else:
            result = run_shard(experiment, config, model, slice(0, args.n_prompts), prompt_batch=args.prompt_batch)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": args.variant, "seconds": seconds, "cpu_seconds": cpu_seconds, "rss_before_MiB": before, "peak_rss_MiB": peak,
                      "values": result.values.tolist(), "plan": result.memory_plan.format()}))


def run(cmd, env=None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    return time.perf_counter() - start, proc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-prompts", type=int, default=256)
    p.add_argument("--prompt-batch", type=int, default=32)
    p.add_argument("--memory", default=None)
    p.add_argument("--layers", type=int, nargs="+", default=None, help="sweep these layers' heads (default: all)")
    p.add_argument("--no-cli", action="store_true", help="skip the command-line and torchrun runs")
    p.add_argument("--model", default=None, help="a saved model folder (default: the 124M shape, random weights)")
    p.add_argument("--variant", choices=["hand", "batches"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        return variant(args)
    import torch

    import workbench
    from workbench.models.bundled import save_bundled
    from workbench.runs import load_run

    load_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="sharded-sweeps-"))
    if args.model is None:
        torch.manual_seed(0)
        args.model = str(tmp / "gpt2-shape")
        save_bundled(workbench.GPT(workbench.models.PRESETS["gpt2"]), Path(args.model), card={"note": "random"})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    common = ["--n-prompts", str(args.n_prompts), "--model", args.model]
    if args.memory:
        common += ["--memory", args.memory]
    if args.layers:
        common += ["--layers", *map(str, args.layers)]
    rows = {}
    for name in ("hand", "batches"):
        _, proc = run([sys.executable, __file__, "--variant", name, "--prompt-batch", str(args.prompt_batch), *common],
                      env=env)
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    hand, batches = rows["hand"], rows["batches"]
    diff = max(abs(a - b) for ra, rb in zip(hand["values"], batches["values"]) for a, b in zip(ra, rb))
    layers = "all layers" if args.layers is None else f"layers {args.layers}"
    print(f"head_out patching ({layers}), {args.n_prompts} IOI prompts, 124M shape, 1 thread; "
          f"1-minute load average at the start {load_start:.1f}, at the end {os.getloadavg()[0]:.1f}")
    print("| run | seconds | CPU seconds | RSS before sweep | peak RSS | sweep's own peak |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        label = "packed by hand (one call)" if name == "hand" else f"prompt batches of {args.prompt_batch}, progress bar"
        print(f"| {label} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['rss_before_MiB']:.0f} MiB | {r['peak_rss_MiB']:.0f} MiB | "
              f"{r['peak_rss_MiB'] - r['rss_before_MiB']:.0f} MiB |")
    print(f"batches / by hand: {batches['seconds'] / hand['seconds']:.3f} wall, "
          f"{batches['cpu_seconds'] / hand['cpu_seconds']:.3f} CPU time; max abs diff {diff:.2g}")
    print(f"plan (by hand): {hand['plan']}")
    if args.no_cli:
        return

    cli = [str(ROOT / "experiments" / "activation_patching.py"), "--model", args.model, "--device", "cpu",
           "--prompt-set", "ioi", "--n-prompts", str(args.n_prompts), "--target", "head_out"]
    one_s, _ = run([sys.executable, *cli, "--out", str(tmp / "one")], env=env)
    two_s, _ = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cli,
                    "--out", str(tmp / "two")], env=env)
    one = load_run(next((tmp / "one" / "activation_patching").iterdir())).tensors()["values"]
    two = load_run(next((tmp / "two" / "activation_patching").iterdir())).tensors()["values"]
    print(f"command line, 1 process x 1 thread: {one_s:.1f} s; torchrun 2 processes x 1 thread: {two_s:.1f} s "
          f"(ideal with no overhead: {one_s / 2:.1f} s; overhead {two_s - one_s / 2:+.1f} s); "
          f"max abs diff {float((one - two).abs().max()):.2g}")


if __name__ == "__main__":
    main()
