"""Activation patching: run the corrupted prompts, restore one clean activation at a time (or the
reverse), and record the task's metric for every cell; any target of workbench.methods.patching
(resid_pre, attn_out, head_out, ...). Prompt sets (--prompt-set): induction (repeated random
tokens, corrupted: a different first copy; metric: log-prob of the correct next token on the
second copy), ioi (metric: logit difference IO - S), custom; the default, auto, picks the task the
model can do: ioi on GPT-2, induction on the bundled model. The summary warns when the clean run
is not clearly better than the corrupted one (the model does not do the task). --prompts FILE
reads prompt pairs from JSONL, CSV or Parquet (workbench.methods.datasets); every cell gets a
bootstrap interval over the prompts (--no-per-prompt to skip). --method attribution records
attribution patching instead: every cell estimated from one forward and backward pass (gradient .
activation difference), same prompts, targets, metric and intervals. Under torchrun
(--nproc_per_node=N) the prompts are split across the processes and rank 0 records one run.

    python experiments/activation_patching.py
    python experiments/activation_patching.py --prompt-set induction --seq-len 20
    python experiments/activation_patching.py --target head_out --n-prompts 16
    python experiments/activation_patching.py --prompt-set custom \
        --clean-prompts "When Mary and John went to the store, John gave a drink to" \
        --corrupted-prompts "When Mary and John went to the store, Mary gave a drink to" \
        --answers " Mary" --wrong-answers " John"
    python experiments/activation_patching.py --prompts pairs.jsonl --target head_out   # or .csv / .parquet
    python experiments/activation_patching.py --prompt-set greater_than --model gpt2
    python experiments/activation_patching.py --method attribution --target head_out_by_pos
    torchrun --standalone --nproc_per_node=2 experiments/activation_patching.py --method attribution --prompts pairs.jsonl
    python experiments/activation_patching.py --config runs/activation_patching/<run>/config.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workbench.cli import experiment_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(experiment_main("activation_patching", description=__doc__))
