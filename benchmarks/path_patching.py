"""Path patching sweeps: workbench's `path_patching` vs a per-sender two-pass hook loop, in one process.

    python benchmarks/path_patching.py            # GPT-2 124M shape, random weights
    python benchmarks/path_patching.py --quick    # a small shape, to check the script in seconds

Every sender head into one receiver set, on the 15-token IOI pair (`ioi_prompts(n=1, template=5)`),
denoising, `LogitDiff(IO, S)`, three receiver sets: the logits; the queries of three heads in
blocks 9 and 10 (where IOI's name movers sit in the real GPT-2: ARENA's "senders into the name
movers' queries"); the values of four heads in blocks 7 and 8 (the S-inhibition heads). The loop
is ARENA's recipe with hooks: per sender, a first forward with every head's `hook_z` frozen to the
base run and the sender's from the other run (saving the receivers' inputs), then for q/k/v
receivers a second forward of the base run with only those inputs patched. Prints the times, the
ratio and the largest difference; exits 1 if the numbers disagree. Writes the table to
benchmarks/results/path_patching[-quick].md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import workbench  # noqa: E402
from workbench.methods import LogitDiff, ioi_prompts  # noqa: E402
from workbench.methods.path_patching import path_patching, receivers_label  # noqa: E402

TOL = 1e-4


def two_pass_loop(model, clean, corrupted, metric, receivers):
    """ARENA's path patching, one sender head at a time, with hooks on the full model (denoising)."""
    base, source = corrupted, clean
    _, base_cache = model.run_with_cache(base)
    _, source_cache = model.run_with_cache(source)
    n_layer, n_head = model.cfg.n_layer, model.cfg.n_head
    reach = n_layer if receivers == "logits" else max(r[0] for r in receivers)
    out = torch.full((n_layer, n_head), float("nan"))
    for layer_s in range(reach):
        for head_s in range(n_head):
            hooks = []
            for layer in range(n_layer):
                def freeze(z, hook, layer=layer):
                    z = base_cache["z", layer].clone()
                    if layer == layer_s:
                        z[:, :, head_s] = source_cache["z", layer][:, :, head_s]
                    return z
                hooks.append((workbench.act_name("z", layer), freeze))
            if receivers == "logits":
                out[layer_s, head_s] = metric(model.run_with_hooks(base, fwd_hooks=hooks))
                continue
            saved = {}
            for r in receivers:
                def save(x, hook, r=r):
                    saved[r] = x[:, :, r[1]].clone()
                hooks.append((workbench.act_name(r[2], r[0]), save))
            model.run_with_hooks(base, fwd_hooks=hooks)
            second = []
            for r in receivers:
                def put(x, hook, r=r):
                    x = x.clone()
                    x[:, :, r[1]] = saved[r]
                    return x
                second.append((workbench.act_name(r[2], r[0]), put))
            out[layer_s, head_s] = metric(model.run_with_hooks(base, fwd_hooks=second))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4-layer, 256-wide model instead of 124M")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="repeats of workbench's sweep (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="where to write the table (markdown)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    config = workbench.GPTConfig(n_layer=4, n_head=8, n_embd=256) if args.quick else workbench.GPTConfig()
    model = workbench.GPT(config).eval()  # GPT-2's initialisation (init_weights), random
    ioi = ioi_prompts(n=1, template=5, corruption="abc", seed=args.seed)
    clean, corrupted = ioi.clean_tokens, ioi.corrupted_tokens
    metric = LogitDiff(ioi.answer, ioi.wrong)
    n_layer, n_pos = model.cfg.n_layer, clean.shape[1]
    if args.quick:
        receiver_sets = ["logits", [(3, 1, "q"), (3, 5, "q")], [(2, 3, "v"), (3, 0, "v")]]
    else:
        receiver_sets = ["logits", [(9, 9, "q"), (9, 6, "q"), (10, 0, "q")],
                         [(7, 3, "v"), (7, 9, "v"), (8, 6, "v"), (8, 10, "v")]]

    rows, ok = [], True
    with torch.no_grad():
        for _ in range(2):  # warm-up
            model(clean)
        path_patching(model, clean, corrupted, metric, receivers=receiver_sets[1], progress=False)
        for receivers in receiver_sets:
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                ours = path_patching(model, clean, corrupted, metric, receivers=receivers, progress=False)
                times.append(time.perf_counter() - start)
            t_ours = statistics.median(times)
            start = time.perf_counter()
            loop = two_pass_loop(model, clean, corrupted, metric, receivers)
            t_loop = time.perf_counter() - start
            done = ours.computed
            diff = float((ours.values[done] - loop[done]).abs().max())
            ok &= diff <= TOL and bool(loop.isnan().eq(~done).all())
            rows.append((receivers_label(receivers), int(done.sum()), t_ours, t_loop, diff))
            print(f"receivers {receivers_label(receivers)}: {int(done.sum())} senders, workbench {t_ours:.2f}s, "
                  f"two-pass loop {t_loop:.2f}s ({t_loop / t_ours:.1f}x), max |diff| {diff:.1e}", flush=True)

    shape = "4 layers x 8 heads, d_model 256 (--quick)" if args.quick else "GPT-2 124M (12 layers x 12 heads, d_model 768)"
    lines = [
        "# Path patching: every sender head into one receiver set",
        "",
        f"{shape}, random weights, fp32, CPU ({platform.processor() or platform.machine()}), {args.threads} threads, "
        f"torch {torch.__version__}; a {n_pos}-token IOI pair (`ioi_prompts(n=1, template=5)`), denoising, "
        f"`LogitDiff(IO, S)`; workbench: median of {args.repeats}. Loop: per sender, ARENA's two hooked forwards "
        "(one for logits receivers), senders in blocks before the last receiver's.",
        "",
        "| receivers | senders | workbench | two-pass loop | ratio | max abs diff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, senders, t_ours, t_loop, diff in rows:
        lines.append(f"| {label} | {senders} | {t_ours:.2f} s | {t_loop:.2f} s | {t_loop / t_ours:.1f}x | {diff:.1e} |")
    lines += ["", f"Numbers agree to {TOL:g}: {'yes' if ok else 'NO'}. Layers: {n_layer}."]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    out = args.out or REPO / "benchmarks" / "results" / f"path_patching{'-quick' if args.quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
