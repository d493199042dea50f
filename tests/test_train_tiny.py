"""experiments/train_tiny.py works end to end (a few steps) and documents itself."""

import json
import subprocess
import sys
from pathlib import Path

import torch

import workbench
from workbench.models.bundled import sha256_file

REPO = Path(__file__).resolve().parents[1]


def test_help():
    out = subprocess.run([sys.executable, "experiments/train_tiny.py", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for option in ("--steps", "--n-layer", "--repeat-fraction", "--seed", "--out"):
        assert option in out


def test_tiny_training_run_end_to_end(tmp_path):
    out = tmp_path / "tiny"
    args = ["--steps", "4", "--batch-size", "2", "--block-size", "32", "--n-embd", "32", "--n-head", "2",
            "--eval-batches", "1", "--warmup-steps", "2", "--out", str(out)]
    subprocess.run([sys.executable, "experiments/train_tiny.py", *args], cwd=REPO, check=True,
                   capture_output=True, text=True)
    card = json.loads((out / "model_card.json").read_text())
    assert card["steps"] == 4 and card["tokens_seen"] == 4 * 2 * 32
    assert card["command"].endswith(" ".join(args))
    assert card["weights_sha256"] == sha256_file(out / "model.safetensors")
    assert card["data"]["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    for key in ("train_loss", "val_loss", "baselines", "induction_score", "wall_time_s", "train_config"):
        assert key in card
    model = workbench.load_model(out, device="cpu")
    assert model.cfg.n_embd == 32 and model.dtype == torch.float32
    # the same seed gives the same weights
    subprocess.run([sys.executable, "experiments/train_tiny.py", *args[:-1], str(tmp_path / "again")], cwd=REPO,
                   check=True, capture_output=True)
    assert sha256_file(tmp_path / "again" / "model.safetensors") == card["weights_sha256"]
