"""Direct logit attribution vs one forward: what attributing every head and every MLP neuron costs.

    python benchmarks/dla.py            # GPT-2 124M shape, random weights, 64 prompts of 15 tokens (issue 15)
    python benchmarks/dla.py --quick    # a small shape, to check the script in seconds

Times (median, interleaved A B C ...) one plain forward `model(tokens)`, and
`direct_logit_attribution` by head, by layer and by neuron (every one of the 12 x 3072 neurons) of
a logit difference with one answer and wrong token per prompt. DLA is one cached forward plus small
matmuls, so it should cost about one forward. Checks that the components sum to the logit
difference read off the model's logits (exit 1 if not, to 1e-4) and writes the table to
benchmarks/results/dla[-quick].md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import workbench  # noqa: E402
from workbench.methods import direct_logit_attribution  # noqa: E402

TOL = 1e-4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small shape (seconds)")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.quick:
        config = workbench.GPTConfig(n_layer=4, n_head=8, n_embd=256, block_size=64)
        shape = "4 layers x 8 heads, d_model 256 (--quick)"
    else:
        config = workbench.models.PRESETS["gpt2"]
        shape = "GPT-2 124M shape (12 layers x 12 heads, d_model 768, d_mlp 3072)"
    model = workbench.GPT(config).eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50000, (64, 15), generator=g)
    answer, wrong = torch.randint(0, 50000, (64,), generator=g), torch.randint(0, 50000, (64,), generator=g)

    def forward():
        with torch.no_grad():
            return model(tokens)

    cases = {"one forward, model(tokens)": forward}
    for by in ("head", "layer", "neuron"):
        cases[f"DLA by {by}"] = lambda by=by: direct_logit_attribution(model, tokens, (answer, wrong), by=by)
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.reps):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    median = {k: statistics.median(v) for k, v in times.items()}

    logits = forward()[:, -1]
    own = logits.gather(-1, answer[:, None])[:, 0] - logits.gather(-1, wrong[:, None])[:, 0]
    gaps = {}
    for by in ("head", "layer", "neuron", "component"):
        values, _ = direct_logit_attribution(model, tokens, (answer, wrong), by=by).all_per_prompt()
        gaps[by] = float((values.sum(1) - own).abs().max())
    ok = max(gaps.values()) <= TOL

    base = median["one forward, model(tokens)"]
    lines = [
        "# Direct logit attribution vs one forward",
        "",
        f"{shape}, random weights, fp32, CPU ({platform.machine()}), {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; 64 prompts of 15 tokens, a logit difference with one answer and wrong token per "
        f"prompt, read at the last position; median of {args.reps}, interleaved.",
        "",
        "| | components | time | vs one forward |",
        "|---|---:|---:|---:|",
    ]
    sizes = {"one forward, model(tokens)": "", "DLA by head": f"{config.n_layer * config.n_head}",
             "DLA by layer": f"{config.n_layer}", "DLA by neuron": f"{config.n_layer * config.d_mlp}"}
    for name, t in median.items():
        lines.append(f"| {name} | {sizes[name]} | {t:.3f} s | {t / base:.2f}x |")
    lines += ["", "Largest |sum of the components - the logit difference from the logits|: "
              + ", ".join(f"{k} {v:.1e}" for k, v in gaps.items()) + f" (within {TOL:g}: {'yes' if ok else 'NO'})."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = REPO / "benchmarks" / "results" / f"dla{'-quick' if args.quick else ''}.md"
    out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
