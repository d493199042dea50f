"""Where a full `run_with_cache` spends its time beyond the plain forward (124M shape, random weights).

    python benchmarks/cache_overhead.py [--batch 8 --pos 128 --reps 7 --threads 1]

Prints the cache / forward ratio from process CPU time (interleaved medians: on a shared machine CPU
time moves less than wall time) and wall time, and the split of the extra time by op group from one
torch.profiler run of each.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import workbench  # noqa: E402

GROUPS = {
    "matmuls (addmm, mm)": ("aten::addmm", "aten::mm"),
    "LayerNorm": ("aten::native_layer_norm", "aten::var_mean", "aten::sum", "aten::mean", "aten::pow", "aten::sub",
                  "aten::div", "aten::mul", "aten::addcmul", "aten::reciprocal", "aten::sqrt"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::bmm", "aten::masked_fill_",
                  "aten::_softmax", "aten::masked_fill"),
    "copies": ("aten::copy_", "aten::clone", "aten::contiguous"),
    "residual adds": ("aten::add",),
    "GELU": ("aten::gelu",),
}


def split(fn) -> dict[str, float]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    out = {g: 0.0 for g in GROUPS}
    out["other"] = 0.0
    for e in prof.key_averages():
        group = next((g for g, ops in GROUPS.items() if e.key in ops), "other")
        out[group] += e.self_cpu_time_total / 1e3
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--pos", type=int, default=128)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = workbench.GPT(workbench.models.PRESETS["gpt2"]).eval()
    tokens = torch.randint(0, 50257, (args.batch, args.pos))
    fns = {"forward": lambda: model(tokens), "full cache": lambda: model.run_with_cache(tokens)}
    cpu = {k: [] for k in fns}
    wall = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(args.reps):
            for k, fn in fns.items():
                w, c = time.perf_counter(), time.process_time()
                fn()
                cpu[k].append(time.process_time() - c)
                wall[k].append(time.perf_counter() - w)
        splits = {k: split(fn) for k, fn in fns.items()}
    for what, times in (("CPU time", cpu), ("wall time", wall)):
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"{what}: forward {med['forward']:.0f} ms, full cache {med['full cache']:.0f} ms, "
              f"ratio {med['full cache'] / med['forward']:.3f} (median of {args.reps})")
    print("| op group | forward ms | full cache ms | extra ms |")
    print("|---|---:|---:|---:|")
    for g in splits["forward"]:
        f, c = splits["forward"][g], splits["full cache"][g]
        print(f"| {g} | {f:.0f} | {c:.0f} | {c - f:+.0f} |")


if __name__ == "__main__":
    main()
