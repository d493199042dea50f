"""Patching and ablation sweeps: workbench vs TransformerLens 4.x vs one forward per cell, in one process.

    python benchmarks/patching_sweeps.py            # GPT-2 124M shape, random weights (issue 3's targets)
    python benchmarks/patching_sweeps.py --quick    # a small shape, to check the script in seconds

Same random weights (a transformers GPT2LMHeadModel, loaded by workbench and booted by
TransformerLens's TransformerBridge without weight processing), the same 15-token IOI pair, the
same threads. Three sweeps:

* resid_pre patching, [layer pos]: `activation_patching(target="resid_pre")` vs
  `transformer_lens.patching.get_act_patch_resid_pre` (TL's time includes its clean
  `run_with_cache`, which ours does inside);
* head output patching, [layer head]: `target="head_out"` vs `get_act_patch_attn_head_out_all_pos`;
* zero-ablating each head, [layer head]: `ablation_sweep` vs a loop of `bridge.run_with_hooks`
  (TransformerLens has no ablation sweep);

and, for each, a plain loop of one hooked workbench forward per cell. The two patching sweeps are
also timed with the metric as TransformerLens code passes it: a plain callable (`lambda logits:
(logits[:, -1, a] - logits[:, -1, b]).mean()`) and `functools.partial(logit_diff, answer=a,
wrong=b)`; the three metric forms are timed interleaved (A B C A B C ...). Prints the times, the
ratios and the largest difference between the numbers; exits 1 if the numbers disagree.
Writes the table to benchmarks/results/patching_sweeps[-quick].md.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens's per-cell progress bars
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import workbench  # noqa: E402
from workbench.methods import LogitDiff, ablation_sweep, activation_patching, ioi_prompts, logit_diff  # noqa: E402

TOKENIZER_DIR = REPO / "tests" / "data" / "gpt2-tokenizer"
TOL = 1e-4


def build(quick: bool, seed: int):
    """A random GPT-2 (124M shape, or small with --quick) as workbench and TransformerLens models."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    config = GPT2Config(n_layer=4, n_head=8, n_embd=256) if quick else GPT2Config()
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = workbench.load_model(tmp, device="cpu")
    bridge = TransformerBridge.boot_transformers(
        "gpt2", hf_model=hf, tokenizer=GPT2TokenizerFast.from_pretrained(TOKENIZER_DIR)
    )
    bridge.enable_compatibility_mode(no_processing=True)
    return model.eval(), bridge


def timed(fn, repeats: int = 1):
    """(median seconds, result of the last call)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def timed_interleaved(fns: dict, repeats: int) -> dict:
    """{name: (median seconds, result of the last call)}, the functions called in turn, `repeats` rounds."""
    times = {name: [] for name in fns}
    out = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), out[name]) for name in fns}


def tl_logit_diff(answer: int, wrong: int):
    def metric(logits):
        return (logits[:, -1, answer] - logits[:, -1, wrong]).mean()

    return metric


# ---------------------------------------------------------------------- the three sweeps, three ways


def tl_resid_pre(bridge, clean, corrupted, metric):
    from transformer_lens import patching

    _, cache = bridge.run_with_cache(clean)
    return patching.get_act_patch_resid_pre(bridge, corrupted, cache, metric)


def tl_head_out(bridge, clean, corrupted, metric):
    from transformer_lens import patching

    _, cache = bridge.run_with_cache(clean)
    return patching.get_act_patch_attn_head_out_all_pos(bridge, corrupted, cache, metric)


def zero_head(head: int):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0
        return z

    return hook


def tl_ablation(bridge, clean, metric, n_layer, n_head):
    out = torch.zeros(n_layer, n_head)
    for l in range(n_layer):
        for h in range(n_head):
            out[l, h] = metric(bridge.run_with_hooks(clean, fwd_hooks=[(workbench.act_name("z", l), zero_head(h))]))
    return out


def loop_resid_pre(model, clean, corrupted, metric):
    _, cache = model.run_with_cache(clean, names_filter=workbench.hooks.act_names("resid_pre", range(model.cfg.n_layer)))
    n_layer, n_pos = model.cfg.n_layer, clean.shape[1]
    out = torch.zeros(n_layer, n_pos)
    for l in range(n_layer):
        for p in range(n_pos):
            def hook(x, hook, p=p):
                x = x.clone()
                x[:, p] = cache[hook.name][:, p]
                return x
            out[l, p] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(workbench.act_name("resid_pre", l), hook)]))
    return out


def loop_head_out(model, clean, corrupted, metric):
    _, cache = model.run_with_cache(clean, names_filter=workbench.hooks.act_names("z", range(model.cfg.n_layer)))
    out = torch.zeros(model.cfg.n_layer, model.cfg.n_head)
    for l in range(model.cfg.n_layer):
        for h in range(model.cfg.n_head):
            def hook(z, hook, h=h):
                z = z.clone()
                z[:, :, h] = cache[hook.name][:, :, h]
                return z
            out[l, h] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(workbench.act_name("z", l), hook)]))
    return out


def loop_ablation(model, clean, metric):
    out = torch.zeros(model.cfg.n_layer, model.cfg.n_head)
    for l in range(model.cfg.n_layer):
        for h in range(model.cfg.n_head):
            out[l, h] = metric(model.run_with_hooks(clean, fwd_hooks=[(workbench.act_name("z", l), zero_head(h))]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4-layer, 256-wide model instead of 124M")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="repeats of workbench's sweeps (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="where to write the table (markdown)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from importlib.metadata import version

    model, bridge = build(args.quick, args.seed)
    ioi = ioi_prompts(n=1, template=5, corruption="abc", seed=args.seed)  # "After B and A went to the ..."
    clean, corrupted = ioi.clean_tokens, ioi.corrupted_tokens
    ours_metric = LogitDiff(ioi.answer, ioi.wrong)
    tl_metric = tl_logit_diff(int(ioi.answer), int(ioi.wrong))
    n_layer, n_head, n_pos = model.cfg.n_layer, model.cfg.n_head, clean.shape[1]

    with torch.no_grad():
        for _ in range(2):  # warm-up: first calls allocate and pick kernels
            model(clean)
            bridge(clean)
        ablation_sweep(model, clean, ours_metric, progress=False)

        forms = {
            "LogitDiff": ours_metric,
            "plain callable": tl_logit_diff(int(ioi.answer), int(ioi.wrong)),
            "partial(logit_diff)": functools.partial(logit_diff, answer=int(ioi.answer), wrong=int(ioi.wrong)),
        }

        def patching_forms(target):
            return {form: (lambda m=m: activation_patching(model, clean, corrupted, m, target=target,
                                                           progress=False).values)
                    for form, m in forms.items()}

        for m in list(forms.values())[1:]:  # warm-up of the callable path
            activation_patching(model, clean, corrupted, m, target="head_out", progress=False)
        cases = [
            ("resid_pre patching [layer pos]", n_layer * n_pos, patching_forms("resid_pre"),
             lambda: tl_resid_pre(bridge, clean, corrupted, tl_metric),
             lambda: loop_resid_pre(model, clean, corrupted, ours_metric)),
            ("head_out patching [layer head]", n_layer * n_head, patching_forms("head_out"),
             lambda: tl_head_out(bridge, clean, corrupted, tl_metric),
             lambda: loop_head_out(model, clean, corrupted, ours_metric)),
            ("zero-ablation sweep [layer head]", n_layer * n_head,
             {"LogitDiff": lambda: ablation_sweep(model, clean, ours_metric, progress=False).values},
             lambda: tl_ablation(bridge, clean, tl_metric, n_layer, n_head),
             lambda: loop_ablation(model, clean, ours_metric)),
        ]
        rows, ok = [], True
        for name, cells, ours, tl, loop in cases:
            t_forms = timed_interleaved(ours, args.repeats)
            t_tl, v_tl = timed(tl)
            t_loop, v_loop = timed(loop)
            for form, (t_ours, v_ours) in t_forms.items():
                diff = max(float((v_ours - v_tl).abs().max()), float((v_ours - v_loop).abs().max()))
                ok &= diff <= TOL
                rows.append((name, form, cells, t_ours, t_tl, t_loop, diff))
                print(f"{name}, metric {form}: workbench {t_ours:.2f}s, TransformerLens {t_tl:.2f}s "
                      f"({t_tl / t_ours:.1f}x), one forward per cell {t_loop:.2f}s ({t_loop / t_ours:.1f}x), "
                      f"max |diff| {diff:.1e}", flush=True)

    shape = "4 layers x 8 heads, d_model 256 (--quick)" if args.quick else "GPT-2 124M (12 layers x 12 heads, d_model 768)"
    lines = [
        f"# Patching sweeps: workbench vs TransformerLens {version('transformer-lens')}",
        "",
        f"{shape}, random weights, fp32, CPU ({platform.processor() or platform.machine()}), "
        f"{args.threads} threads, torch {torch.__version__}; a {n_pos}-token IOI pair "
        f"(`ioi_prompts(n=1, template=5)`); workbench: median of {args.repeats}. "
        "TransformerLens: `TransformerBridge` without weight processing; its patching time includes its "
        "clean `run_with_cache`, with a plain callable metric. \"Loop\": one hooked workbench forward per "
        "cell, with `LogitDiff`. Workbench's metric forms: `LogitDiff(a, b)`, a plain callable "
        "`(logits[:, -1, a] - logits[:, -1, b]).mean()`, `functools.partial(logit_diff, answer=a, wrong=b)`, "
        "timed interleaved.",
        "",
        "| sweep | metric | cells | workbench | TransformerLens | ratio | loop | ratio | max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, form, cells, t_ours, t_tl, t_loop, diff in rows:
        lines.append(f"| {name} | {form} | {cells} | {t_ours:.2f} s | {t_tl:.2f} s | {t_tl / t_ours:.1f}x | "
                     f"{t_loop:.2f} s | {t_loop / t_ours:.1f}x | {diff:.1e} |")
    lines += ["", f"Numbers agree to {TOL:g}: {'yes' if ok else 'NO'}."]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    out = args.out or REPO / "benchmarks" / "results" / f"patching_sweeps{'-quick' if args.quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
