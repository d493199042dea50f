"""Speed and memory of workbench vs transformers (sdpa, eager) vs TransformerLens 4.x, in one process.

    python benchmarks/bench.py                 # CPU, fp32, GPT-2 124M shape (the CPU targets)
    python benchmarks/bench.py --quick         # a few minutes: fewer repeats, no sweeps
    python benchmarks/bench.py --device cuda --dtype bfloat16 [--medium]

Same random weights, same inputs, same dtype and threads for every system; each case is timed
interleaved (A B C A B C ...) after warm-up, and the median is reported. Writes
benchmarks/results/<device>-<dtype>.json and .md (the table BENCHMARKS.md shows).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import workbench  # noqa: E402

# Dense bf16 peak FLOP/s of common GPUs (vendor datasheets, no sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: dict, *, reps: int, warmup: int, device: str) -> dict[str, float]:
    """Median seconds per call of each fn, timed round-robin so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def tensor_bytes(cache) -> tuple[int, int]:
    """(sum of tensor sizes, distinct storage bytes) of the tensors a cache holds."""
    total, storages = 0, {}
    held = getattr(cache, "cache_dict", None)  # workbench computes derivable entries on access
    for t in (held if held is not None else cache).values():
        total += t.numel() * t.element_size()
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return total, sum(storages.values())


def build(config, device: str, dtype: torch.dtype, tmp: Path):
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast
    from transformer_lens.model_bridge import TransformerBridge

    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(tmp / "model")
    ours = workbench.load_model(tmp / "model", device=device, dtype=dtype)
    hf = {impl: GPT2LMHeadModel.from_pretrained(tmp / "model", attn_implementation=impl, dtype=dtype).to(device).eval()
          for impl in ("sdpa", "eager")}
    tok = GPT2TokenizerFast.from_pretrained(REPO / "tests" / "data" / "gpt2-tokenizer")
    bridge = TransformerBridge.boot_transformers("gpt2", hf_model=copy.deepcopy(hf["sdpa"]), tokenizer=tok)
    bridge.enable_compatibility_mode(no_processing=True)
    return ours, hf, bridge


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quick", action="store_true", help="fewer repeats, no sweeps (a few minutes)")
    p.add_argument("--medium", action="store_true", help="also the gpt2-medium shape (GPU)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import GPT2Config

    dtype = workbench.models.loading.resolve_dtype(args.dtype)
    reps, warmup = (3, 1) if args.quick else (7, 2)
    shapes = [(1, 64), (8, 128)] if args.device == "cpu" else [(1, 64), (8, 128), (16, 1024)]
    rows, extra = [], {}
    configs = {"gpt2": GPT2Config()}
    if args.medium:
        configs["gpt2-medium"] = GPT2Config(n_layer=24, n_head=16, n_embd=1024)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for cfg_name, config in configs.items():
            ours, hf, bridge = build(config, args.device, dtype, Path(tmp) / cfg_name)
            for batch, pos in shapes:
                g = torch.Generator().manual_seed(batch * 1000 + pos)
                tokens = torch.randint(0, 50257, (batch, pos), generator=g).to(args.device)
                resid = lambda n: "resid" in n  # noqa: E731
                fns = {
                    "workbench": lambda: ours(tokens),
                    "hf_sdpa": lambda: hf["sdpa"](tokens),
                    "hf_eager": lambda: hf["eager"](tokens),
                    "transformer_lens": lambda: bridge(tokens),
                }
                cache_fns = {
                    "workbench_cache_all": lambda: ours.run_with_cache(tokens),
                    "workbench_cache_resid": lambda: ours.run_with_cache(tokens, names_filter=resid),
                    "tl_cache_all": lambda: bridge.run_with_cache(tokens),
                    "tl_cache_resid": lambda: bridge.run_with_cache(tokens, names_filter=resid),
                }
                big = batch * pos > 4096 and args.device == "cpu"
                t = interleaved(fns if big else {**fns, **cache_fns}, reps=reps, warmup=warmup, device=args.device)
                best_hf = min(t["hf_sdpa"], t["hf_eager"])
                row = {"model": cfg_name, "shape": f"{batch}x{pos}", **{k: round(v * 1e3, 2) for k, v in t.items()},
                       "fwd_ratio_vs_best_hf": round(t["workbench"] / best_hf, 3),
                       "fwd_ratio_vs_tl": round(t["workbench"] / t["transformer_lens"], 3),
                       "tokens_per_s": round(batch * pos / t["workbench"]),
                       "hf_sdpa_tokens_per_s": round(batch * pos / t["hf_sdpa"])}
                if "workbench_cache_all" in t:
                    row["cache_all_over_fwd"] = round(t["workbench_cache_all"] / t["workbench"], 3)
                    row["tl_cache_all_over_tl_fwd"] = round(t["tl_cache_all"] / t["transformer_lens"], 3)
                    _, ours_cache = ours.run_with_cache(tokens)
                    _, tl_cache = bridge.run_with_cache(tokens)
                    ot, od = tensor_bytes(ours_cache)
                    tt, td = tensor_bytes(tl_cache)
                    row.update(ours_cache_tensor_MiB=round(ot / 2**20, 1), ours_cache_storage_MiB=round(od / 2**20, 1),
                               tl_cache_tensor_MiB=round(tt / 2**20, 1), tl_cache_storage_MiB=round(td / 2**20, 1),
                               cache_bytes_ratio_vs_tl=round(od / tt, 3))
                    del ours_cache, tl_cache
                if args.device.startswith("cuda"):
                    n_params = sum(p.numel() for n, p in ours.named_parameters() if n != "pos_embed.W_pos")
                    flops = 2 * n_params * batch * pos + 2 * config.n_layer * batch * pos * pos * config.n_embd
                    gpu = torch.cuda.get_device_name()
                    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
                    if peak:
                        row["mfu_workbench"] = round(flops / t["workbench"] / peak, 3)
                        row["mfu_hf_sdpa"] = round(flops / t["hf_sdpa"] / peak, 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
            if not args.quick and cfg_name == "gpt2":
                extra["logit_lens"] = bench_logit_lens(ours, bridge, args.device, reps, warmup)
                print(json.dumps({"logit_lens": extra["logit_lens"]}), flush=True)
    write_report(rows, extra, args, dtype)


def bench_logit_lens(ours, bridge, device: str, reps: int, warmup: int) -> dict:
    """Logit lens over all layers and positions of a 1 x 64 prompt."""
    from workbench.methods.logit_lens import logit_lens

    tokens = torch.randint(0, 50257, (1, 64), generator=torch.Generator().manual_seed(7)).to(device)

    def tl_lens():
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: "resid" in n or "ln_final" in n)
        stack = cache.accumulated_resid(apply_ln=True)
        log_probs = (stack @ bridge.W_U).log_softmax(-1)  # the same work as ours: log-probs and top-5
        return log_probs, log_probs.topk(5, dim=-1)

    t = interleaved({"workbench": lambda: logit_lens(ours, tokens), "transformer_lens": tl_lens},
                    reps=reps, warmup=warmup, device=device)
    return {k: round(v * 1e3, 2) for k, v in t.items()} | {"ratio_tl_over_ours": round(t["transformer_lens"] / t["workbench"], 2)}


def write_report(rows: list[dict], extra: dict, args, dtype) -> None:
    import transformer_lens
    import transformers

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.processor() or platform.machine(), "platform": platform.platform(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "transformer_lens": getattr(transformer_lens, "__version__", "4.x"), "workbench": workbench.__version__,
        "quick": args.quick,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{'cuda' if args.device.startswith('cuda') else 'cpu'}-{meta['dtype']}{'-quick' if args.quick else ''}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows, **extra}, indent=1))
    cols = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    lines = [f"Run {meta['date']} on {meta['device']} ({meta['machine']}), {meta['threads']} threads, {meta['dtype']}; "
             f"torch {meta['torch']}, transformers {meta['transformers']}, TransformerLens {meta['transformer_lens']}. "
             "Times in ms (median).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    if "logit_lens" in extra:
        lines += ["", f"Logit lens (1 x 64, all layers): {extra['logit_lens']}"]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
