"""Circuit discovery: rank every edge (head q / k / v inputs, MLP inputs, logits, from every earlier
node) by EAP-IG (--method eap for plain EAP), verify the top --exact-top edges by exact edge patching,
draw the faithfulness curve of the top-k edges (--points sizes on a log grid) and find the smallest
circuit reaching --target faithfulness. Prompt sets (--prompt-set) as for activation patching; the
default, auto, picks the task the model can do: ioi on GPT-2, induction on the bundled model (which
cannot do IOI).

    python experiments/circuit.py
    python experiments/circuit.py --prompt-set induction --seq-len 8 --n-prompts 4 --exact-top 100
    python experiments/circuit.py --model gpt2 --prompt-set ioi --target 0.8
    python experiments/circuit.py --config runs/circuit/<run>/config.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workbench.cli import experiment_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(experiment_main("circuit", description=__doc__))
