"""Path patching: for every sender head (or MLP), take its output from the other run, freeze every
other head to the base run, and measure the task's metric through the receivers only (Wang et al.
2022; ARENA's IOI chapter; workbench.methods.path_patching). Receivers: logits, or heads' q, k or v
inputs written LAYER.HEAD.INPUT; the default, auto, picks the task's: the name movers' queries on
GPT-2 124M (IOI), the induction heads' keys on any other model (induction; on the bundled
shakespeare-2l the previous-token head L0H3 shows). Default direction: noise (ARENA's).

    python experiments/path_patching.py
    python experiments/path_patching.py --receivers 1.0.k --direction noise
    python experiments/path_patching.py --receivers logits --senders mlps
    python experiments/path_patching.py --prompt-set ioi --receivers 9.9.q 9.6.q 10.0.q --model gpt2
    python experiments/path_patching.py --config runs/path_patching/<run>/config.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workbench.cli import experiment_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(experiment_main("path_patching", description=__doc__))
