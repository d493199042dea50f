"""Direct logit attribution: how much each head (--by head), block (layer), MLP neuron (neuron) or
residual-stream component (component) writes the task's direction of the logits directly, through
the final LayerNorm with the run's scale frozen; per prompt, averaged, and the accumulated view.
Prompt sets (--prompt-set): ioi (logit difference IO - S at the last position), custom (your
prompts, --answers and --wrong-answers), induction (the logit of the correct next token on the
second copy, at the second-to-last position); the default, auto, picks the task the model can do:
ioi on GPT-2, induction on the bundled model.

    python experiments/dla.py
    python experiments/dla.py --by neuron --n-prompts 64
    python experiments/dla.py --prompt-set induction --seq-len 20 --pos -3
    python experiments/dla.py --prompt-set custom \
        --clean-prompts "When Mary and John went to the store, John gave a drink to" \
        --answers " Mary" --wrong-answers " John"
    python experiments/dla.py --config runs/dla/<run>/config.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workbench.cli import experiment_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(experiment_main("dla", description=__doc__))
