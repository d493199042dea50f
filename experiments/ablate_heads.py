"""Ablate every attention head on its own (zero, mean or resample) on the prompts of a task and
report the effect on the task's metric per head, top heads first. --prompt-set auto (the default)
picks the task the model can do: ioi (logit difference IO - S) on GPT-2, induction (log-prob of
the correct next token on the second copy of repeated random tokens) on the bundled model.
Defaults: mean ablation over the prompts themselves (the dashboard opens on the same).

    python experiments/ablate_heads.py
    python experiments/ablate_heads.py --prompt-set ioi --model gpt2
    python experiments/ablate_heads.py --method resample --reference corrupted --n-prompts 32
    python experiments/ablate_heads.py --method zero --prompt-set custom \
        --clean-prompts "When Mary and John went to the store, John gave a drink to" \
        --corrupted-prompts "When Mary and John went to the store, Mary gave a drink to" \
        --answers " Mary" --wrong-answers " John"
    python experiments/ablate_heads.py --prompts pairs.csv --length-rule pad
    python experiments/ablate_heads.py --config runs/ablate_heads/<run>/config.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workbench.cli import experiment_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(experiment_main("ablate_heads", description=__doc__))
