"""Circuit discovery speed (issue 16): EAP, EAP-IG, exact edge patching and the faithfulness curve,
against one forward pass, on the GPT-2 124M shape (random weights) and one IOI pair.

    python benchmarks/circuit.py            # GPT-2 124M shape
    python benchmarks/circuit.py --quick    # a small shape, to check the script in seconds
    python benchmarks/circuit.py --only exact --threads 1   # one case (and the forward), printed only

Targets: EAP of every edge within the time of 4 forward passes; EAP-IG with 5 steps within 12;
exact patching of the top 100 edges at least 10x faster than one hooked forward per edge, with the
same numbers (to 1e-4); a 20-point faithfulness curve within 10x one forward. "A forward" is
`model(tokens)` of the clean prompt (full logits, no gradient). The cases are timed interleaved
(A B C ... A B C ...), medians reported; the hook loop once. Writes benchmarks/results/circuit[-quick].md
(with --only, prints and writes nothing). Exits 1 if the exact numbers and the hook loop disagree.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import workbench  # noqa: E402
from workbench.hooks import act_name  # noqa: E402
from workbench.methods import ioi_prompts  # noqa: E402
from workbench.methods.circuit import edge_attribution, edge_patching, faithfulness_curve  # noqa: E402
from workbench.methods.circuit.graph import cache_names, node_output_diff  # noqa: E402
from workbench.models import PRESETS, GPTConfig  # noqa: E402

TOL = 1e-4
# --only's names for the timed cases.
CASES = {"eap": "EAP, every edge", "eap-ig": "EAP-IG (5 steps), every edge", "exact": "exact patching, top 100 edges",
         "curve": "faithfulness curve, 20 points"}


def hooked_edge(model, graph, clean, e, diff, metric) -> float:
    """The metric with edge `e` alone corrupted, by hooks on one forward: the downstream input's
    q / k / v slice, MLP pre-activation or final residual recomputed from resid + diff[upstream]."""
    u, d = int(graph.edge_upstream[e]), int(graph.edge_downstream[e])
    change, label = diff[u], graph.downstream[d]
    layer = graph.layer_of_downstream(d)
    seen = {}

    def keep(x, hook):
        seen["resid"] = x

    def ln(norm, x):
        return F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)

    if label == "logits":
        hooks = [(act_name("resid_post", model.cfg.n_layer - 1), lambda x, hook: x + change)]
    elif label.startswith("MLP"):
        block = model.blocks[layer]
        hooks = [(act_name("resid_mid", layer), keep),
                 (act_name("pre", layer), lambda x, hook: ln(block.ln2, seen["resid"] + change) @ block.mlp.W_in
                  + block.mlp.b_in)]
    else:
        block, kind = model.blocks[layer], label[-1]
        head = int(label.split("H")[1].split(".")[0])
        i = "qkv".index(kind)
        W, b = (block.attn.W_Q, block.attn.W_K, block.attn.W_V)[i][head], (block.attn.b_Q, block.attn.b_K, block.attn.b_V)[i][head]

        def swap(x, hook):
            x = x.clone()
            x[:, :, head] = ln(block.ln1, seen["resid"] + change) @ W + b
            return x

        hooks = [(act_name("resid_pre", layer), keep), (act_name(kind, layer), swap)]
    return float(metric(model.run_with_hooks(clean, fwd_hooks=hooks)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small shape (4 layers, 8 heads, d_model 256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by process CPU time (a loaded machine; compare at --threads 1) instead of wall time")
    parser.add_argument("--only", nargs="+", choices=list(CASES), help="time only these cases (and the forward)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=4, n_head=8, n_embd=256) if args.quick else PRESETS["gpt2"]
    model = workbench.GPT(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ioi = ioi_prompts(n=1, seed=0)
    clean, corrupted, metric = ioi.clean_tokens, ioi.corrupted_tokens, ioi.metric()
    scores = edge_attribution(model, clean, corrupted, metric)  # warm-up, and the ranking to verify
    top = scores.ranking()[:100]

    def forward():
        with torch.no_grad():
            return model(clean)

    cases = {
        "forward": forward,
        "EAP, every edge": lambda: edge_attribution(model, clean, corrupted, metric, method="eap"),
        "EAP-IG (5 steps), every edge": lambda: edge_attribution(model, clean, corrupted, metric, method="eap-ig", steps=5),
        "exact patching, top 100 edges": lambda: edge_patching(model, clean, corrupted, metric, top, progress=False),
        "faithfulness curve, 20 points": lambda: faithfulness_curve(model, clean, corrupted, metric, scores, points=20),
    }
    if args.only:
        cases = {name: fn for name, fn in cases.items() if name == "forward" or name in {CASES[c] for c in args.only}}
    clock = time.process_time if args.cpu_time else time.perf_counter
    times = {name: [] for name in cases}
    out = {}
    for name, fn in cases.items():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in cases.items():
            start = clock()
            out[name] = fn()
            times[name].append(clock() - start)
    median = {name: statistics.median(t) for name, t in times.items()}

    # The reference: one hooked forward per edge.
    graph = scores.graph
    exact = "exact patching, top 100 edges"
    loop_time, worst = float("nan"), 0.0
    if exact in cases:
        loop_time, worst = hook_loop(model, graph, clean, corrupted, metric, top, out[exact].values, clock)
    curve = out.get("faithfulness curve, 20 points")
    fwd = median["forward"]
    rows = [
        ("EAP, every edge", f"{len(graph)} edges", "<= 4 forwards"),
        ("EAP-IG (5 steps), every edge", f"{len(graph)} edges", "<= 12 forwards"),
        (exact, "100 edges", "<= 10 forwards (>= 10x the hook loop)"),
        ("faithfulness curve, 20 points", f"{len(curve.n_edges) if curve else 20} circuits", "<= 10 forwards"),
    ]
    shape = "small (4 layers, 8 heads, d_model 256)" if args.quick else "GPT-2 124M shape"
    lines = [
        f"# Circuit discovery ({shape}, random weights, fp32, {args.threads} threads, torch {torch.__version__}, "
        f"{platform.machine()})",
        "",
        f"One IOI pair of {clean.shape[1]} tokens (BOS included); medians of {args.repeats} interleaved runs "
        f"({'process CPU' if args.cpu_time else 'wall'} time); "
        f"one forward `model(tokens)` = {fwd * 1e3:.1f} ms; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        "| case | size | time | in forwards | target |",
        "|---|---|---:|---:|---|",
        f"| forward | 1 prompt | {fwd * 1e3:.1f} ms | 1 | |",
    ]
    for name, size, target in rows:
        if name in median:
            lines.append(f"| {name} | {size} | {median[name] * 1e3:.1f} ms | {median[name] / fwd:.2f} | {target} |")
    if exact in cases:
        lines += [
            f"| hook loop, top 100 edges (one hooked forward each) | 100 edges | {loop_time * 1e3:.1f} ms | "
            f"{loop_time / fwd:.2f} | |",
            "",
            f"Exact patching vs the hook loop: {loop_time / median[exact]:.1f}x faster; "
            f"largest difference of the 100 values {worst:.2e} (tolerance {TOL:g}).",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.only:
        path = REPO / "benchmarks" / "results" / f"circuit{'-quick' if args.quick else ''}.md"
        path.write_text(text)
    return 0 if worst <= TOL else 1


def hook_loop(model, graph, clean, corrupted, metric, top, values, clock) -> tuple[float, float]:
    """The hook loop's time over the edges `top`, and its largest difference from `values`."""
    cfg = model.cfg
    _, c_cache = model.run_with_cache(clean, names_filter=cache_names(cfg.n_layer))
    _, k_cache = model.run_with_cache(corrupted, names_filter=cache_names(cfg.n_layer))
    diff = node_output_diff(k_cache, c_cache, cfg.n_layer)
    start = clock()
    with torch.no_grad():
        loop = torch.tensor([hooked_edge(model, graph, clean, e, diff, metric) for e in top.tolist()])
    loop_time = clock() - start
    return loop_time, float((values - loop).abs().max())


if __name__ == "__main__":
    raise SystemExit(main())
