"""Activation patching: run the corrupted prompts, restore one clean activation at a time (or the
reverse), and record the logit difference answer - wrong answer for every cell. Default prompt
set: IOI; any target of workbench.methods.patching (resid_pre, attn_out, head_out, ...).

    python experiments/activation_patching.py
    python experiments/activation_patching.py --target head_out --n-prompts 16
    python experiments/activation_patching.py --prompt-set custom \
        --clean-prompts "When Mary and John went to the store, John gave a drink to" \
        --corrupted-prompts "When Mary and John went to the store, Mary gave a drink to" \
        --answers " Mary" --wrong-answers " John"
    python experiments/activation_patching.py --config runs/activation_patching/<run>/config.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workbench.cli import experiment_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(experiment_main("activation_patching", description=__doc__))
