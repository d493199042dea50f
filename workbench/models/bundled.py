"""Models that ship inside the package, so everything runs with no network."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

BUNDLED_DIR = Path(str(resources.files("workbench") / "data" / "models"))
DEFAULT_BUNDLED = "shakespeare-2l"
FORMAT = "workbench"
MODEL_FILES = ("model.safetensors", "config.json", "model_card.json")  # what `save_bundled` writes


def bundled_names() -> list[str]:
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "model.safetensors").is_file())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_bundled(model, out: Path, card: dict, *, dtype: torch.dtype = torch.float16) -> None:
    """Write model.safetensors (in `dtype`), config.json and model_card.json (with the weights' sha256)."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": FORMAT})
    (out / "config.json").write_text(json.dumps({"format": FORMAT, "config": model.cfg.to_dict()}, indent=1))
    card = {**card, "weights_sha256": sha256_file(out / "model.safetensors"), "weights_file": "model.safetensors"}
    (out / "model_card.json").write_text(json.dumps(card, indent=1))
