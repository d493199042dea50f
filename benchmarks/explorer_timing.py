"""How quick the explorer feels: the dashboard driven headless (streamlit.testing AppTest), timing
what a user waits for, from a cold cache, on the CPU.

    python benchmarks/explorer_timing.py                       # the default model (bundled offline)
    python benchmarks/explorer_timing.py --model gpt2-shape    # GPT-2 124M's shape, random weights
    python benchmarks/explorer_timing.py --model /path/to/model_dir

Times: the first page (loading the model), the first logit lens, a full head-patching sweep
(head_out: every layer x head), and changing a plot option afterwards (cached: no model run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
APP = str(REPO / "apps" / "explorer.py")


def gpt2_shaped(folder: Path) -> str:
    """A GPT-2 124M-shaped model with random weights, saved where load_model finds it by path."""
    import torch

    import workbench
    from workbench.models.bundled import save_bundled
    from workbench.models.config import PRESETS

    torch.manual_seed(0)
    save_bundled(workbench.GPT(PRESETS["gpt2"]), folder, card={"note": "random weights, for timing"},
                 dtype=torch.float32)
    return str(folder)


def timed(label: str, step, results: list) -> object:
    start = time.perf_counter()
    out = step()
    seconds = time.perf_counter() - start
    results.append((label, seconds))
    print(f"{label:<48} {seconds:7.2f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model name or path (default: the dashboard's default model); "
                                        "'gpt2-shape' for GPT-2 124M's shape with random weights")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="explorer-timing-"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    if args.model == "gpt2-shape":
        args.model = gpt2_shaped(tmp / "gpt2-shape")
    if args.model:
        os.environ["WORKBENCH_MODEL"] = args.model
    os.environ["WORKBENCH_RUNS"] = str(tmp / "runs")
    import torch
    from streamlit.testing.v1 import AppTest

    if args.threads:
        torch.set_num_threads(args.threads)
    results: list = []

    def check(at):
        errors = [e.value for e in at.error]
        if at.exception or errors:
            raise SystemExit(f"the app failed: {at.exception or errors}")
        return at

    at = AppTest.from_file(APP, default_timeout=3600)
    timed("first page (imports, loading the model)", lambda: check(at.run()), results)
    model = at.session_state["_session"].model
    print(f"model: {model.name}, {model.cfg.n_layer} layers x {model.cfg.n_head} heads, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters; torch threads "
          f"{torch.get_num_threads()}; prompt: {at.text_area(key='p.prompt').value!r}")
    at.switch_page("dashboard/logit_lens.py")
    timed("first logit lens", lambda: check(at.run()), results)
    timed("logit lens: change the colour (cached)",
          lambda: check(at.selectbox(key="p.lens.show").set_value("target_rank").run()), results)
    at.switch_page("dashboard/patching.py")
    check(at.run())
    at.radio(key="p.patch.source").set_value("custom")  # the one IOI pair, as the README's table measures
    at.selectbox(key="p.patch.target").set_value("head_out")
    timed("full head-patching sweep (head_out, layer x head)", lambda: check(at.button[0].click().run()), results)
    timed("patching: change the values shown (cached)",
          lambda: check(at.radio(key="p.patch.show").set_value("value").run()), results)
    at.selectbox(key="p.patch.target").set_value("resid_pre")
    timed("full residual-stream sweep (resid_pre, layer x pos)", lambda: check(at.button[0].click().run()), results)


if __name__ == "__main__":
    main()
