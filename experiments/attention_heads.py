"""Attention-head detectors: induction, previous-token and duplicate-token scores for every head,
on repeated random tokens ([BOS] + r + r), recorded as a run.

    python experiments/attention_heads.py
    python experiments/attention_heads.py --model shakespeare-2l --seq-len 30 --detectors induction
    python experiments/attention_heads.py --config runs/attention_heads/<run>/config.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workbench.cli import experiment_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(experiment_main("attention_heads", description=__doc__))
