"""Logit lens: read every layer's residual stream through the final LayerNorm and unembedding,
layers x positions: the top tokens and the rank of a target token; recorded as a run.

    python experiments/logit_lens.py
    python experiments/logit_lens.py --prompt "The Eiffel Tower is in the city of" --target " Paris"
    python experiments/logit_lens.py --config runs/logit_lens/<run>/config.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from workbench.cli import experiment_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(experiment_main("logit_lens", description=__doc__))
