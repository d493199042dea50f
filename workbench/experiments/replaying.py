"""Replay: run a recorded config again and compare every result with the record.

The comparison policy lives here: what is compared (every recorded tensor and table, missing or
extra results included), how closely (`Tolerance`: bit for bit on the same device, dtype and
torch, else within a tolerance per dtype) and what is required to match (float tensors always;
integer tensors and tables only when exact). `workbench.runs` only stores and reads records.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from workbench.errors import InputError
from workbench.experiments.core import config_from_dict, get_experiment, load_experiment_model, run_experiment
from workbench.runs import RecordError, RunResults, environment, load_run


@dataclass(frozen=True)
class Tolerance:
    """How close a replayed result must be to the recorded one.

    Exact (rel=0), on the same device, dtype and torch: every tensor and table identical, bit for
    bit. Otherwise float tensors must satisfy max |replayed - recorded| <= rel * max(1, max
    |recorded|). Integer tensors (token ids, ranks) and the tables (tidy views of the tensors) are
    then compared and reported but not required to match: a rank or a top token flips wherever
    two logits are closer than the precision, and ratios such as normalized patching scores
    amplify rounding; the float tensors they come from carry the check."""

    rel: float

    @property
    def exact(self) -> bool:
        return self.rel == 0

    def describe(self) -> str:
        if self.exact:
            return "identical, bit for bit (same device, dtype and torch)"
        return (f"float tensors within {self.rel:g} x max(1, max|recorded|); integer tensors and tables "
                "reported, not required (near-ties reorder them)")


EXACT = Tolerance(rel=0.0)
# Keyed by the less precise dtype of the recording and the replay.
TOLERANCES = {
    torch.float32: Tolerance(rel=1e-4),
    torch.float16: Tolerance(rel=2e-2),
    torch.bfloat16: Tolerance(rel=1e-1),
}


def tolerance_for(dtype_a: torch.dtype, dtype_b: torch.dtype) -> Tolerance:
    """The tolerance for comparing results computed in two (possibly different) dtypes."""
    precision = [torch.float32, torch.float16, torch.bfloat16]  # increasing error
    worst = max(dtype_a, dtype_b, key=lambda d: precision.index(d) if d in precision else 0)
    return TOLERANCES.get(worst, TOLERANCES[torch.float32])


@dataclass
class Comparison:
    """One result compared: `ok`, whether it counts (`required`), and in words how far apart."""

    kind: str  # "tensor" or "table"
    name: str
    ok: bool
    detail: str
    required: bool = True


def compare_tensor(name: str, recorded: Tensor, replayed: Tensor, tol: Tolerance) -> Comparison:
    if recorded.shape != replayed.shape:
        return Comparison("tensor", name, False, f"shape {tuple(replayed.shape)}, recorded {tuple(recorded.shape)}")
    shape = f"{list(recorded.shape)} {str(recorded.dtype).removeprefix('torch.')}"
    if tol.exact:
        # Same dtype and bytes; NaNs compare equal to NaNs in the same place.
        same = recorded.dtype == replayed.dtype and torch.equal(_nan_to_sentinel(recorded), _nan_to_sentinel(replayed))
        if same:
            return Comparison("tensor", name, True, f"{shape} identical")
        diff = _describe_diff(recorded, replayed)
        return Comparison("tensor", name, False, f"{shape} differs: {diff}")
    if recorded.dtype.is_floating_point or replayed.dtype.is_floating_point:
        a, b = recorded.double(), replayed.double()
        if not torch.equal(a.isnan(), b.isnan()):
            return Comparison("tensor", name, False, f"{shape} NaNs in different places")
        a, b = a.nan_to_num(0.0), b.nan_to_num(0.0)
        err = float((a - b).abs().max()) if a.numel() else 0.0
        scale = max(1.0, float(a.abs().max()) if a.numel() else 1.0)
        ok = err <= tol.rel * scale
        return Comparison("tensor", name, ok, f"{shape} max abs diff {err:.3g} (allowed {tol.rel * scale:.3g})")
    frac = float((recorded != replayed).double().mean()) if recorded.numel() else 0.0
    return Comparison("tensor", name, frac == 0, f"{shape} {frac:.1%} of entries differ", required=False)


def _nan_to_sentinel(t: Tensor) -> Tensor:
    return t.nan_to_num(nan=math.pi * 1e3) if t.dtype.is_floating_point else t


def _describe_diff(a: Tensor, b: Tensor) -> str:
    if a.dtype != b.dtype:
        return f"dtype {str(b.dtype).removeprefix('torch.')}, recorded {str(a.dtype).removeprefix('torch.')}"
    if a.dtype.is_floating_point:
        d = (a.double() - b.double()).abs().nan_to_num(float("inf"))
        return f"max abs diff {float(d.max()):.3g} at {int((d > 0).sum())} of {d.numel()} entries"
    return f"{int((a != b).sum())} of {a.numel()} entries"


def compare_table(name: str, recorded: pd.DataFrame, replayed: pd.DataFrame, tol: Tolerance) -> Comparison:
    required = tol.exact
    if list(recorded.columns) != list(replayed.columns) or len(recorded) != len(replayed):
        return Comparison("table", name, False, f"columns/rows {list(replayed.columns)} x {len(replayed)}, "
                                                 f"recorded {list(recorded.columns)} x {len(recorded)}", required)
    bad = []
    for col in recorded.columns:
        a, b = recorded[col].reset_index(drop=True), replayed[col].reset_index(drop=True)
        if tol.exact:
            ok = a.equals(b)
        elif pd.api.types.is_float_dtype(a) and pd.api.types.is_float_dtype(b):
            ok = compare_tensor(col, torch.tensor(a.to_numpy()), torch.tensor(b.to_numpy()), tol).ok
        else:  # missing entries (NA in a nullable column stays NaN through astype(str)) match missing ones
            ok = bool(((a.astype(str) == b.astype(str)) | (a.isna() & b.isna())).all())
        if not ok:
            bad.append(col)
    detail = f"{len(recorded)} rows" + (f", columns differ: {', '.join(map(str, bad))}" if bad else " match")
    return Comparison("table", name, not bad, detail, required)


def compare_results(recorded: RunResults, replayed: RunResults, tol: Tolerance) -> list[Comparison]:
    """Compare every recorded tensor and table with its replayed counterpart (missing or extra = mismatch)."""
    out: list[Comparison] = []
    pairs: list[tuple[str, dict, dict, Callable]] = [
        ("tensor", recorded.tensors, replayed.tensors, compare_tensor),
        ("table", recorded.tables, replayed.tables, compare_table),
    ]
    for kind, old, new, compare in pairs:
        for key in sorted(set(old) | set(new)):
            if key not in new:
                out.append(Comparison(kind, key, False, "recorded, but the replay did not produce it"))
            elif key not in old:
                out.append(Comparison(kind, key, False, "produced by the replay, but not in the record"))
            else:
                new_value = new[key].detach().cpu() if kind == "tensor" else new[key]
                out.append(compare(key, old[key], new_value, tol))
    return out


# ----------------------------------------------------------------------------- replaying
@dataclass
class ReplayReport:
    """The outcome of a replay: every result compared, and what was (or was not) the same."""

    path: Path
    experiment: str
    tolerance: Tolerance
    notes: list[str]
    comparisons: list[Comparison]

    @property
    def ok(self) -> bool:
        required = [c for c in self.comparisons if c.required]
        return bool(required) and all(c.ok for c in required)

    def format(self) -> str:
        lines = [f"Replay of {self.path} ({self.experiment})"]
        lines += [f"  {n}" for n in self.notes]
        lines.append(f"  tolerance: {self.tolerance.describe()}")
        width = max((len(c.name) for c in self.comparisons), default=0)
        for c in self.comparisons:
            status = ("ok  " if c.ok else "FAIL") if c.required else ("same" if c.ok else "info")
            lines.append(f"  {status} {c.kind:6} {c.name:{width}}  {c.detail}")
        required = [c for c in self.comparisons if c.required]
        bad, n = sum(not c.ok for c in required), len(required)
        lines.append(f"MATCH: all {n} compared results reproduced" if self.ok
                     else f"MISMATCH: {bad} of {n} compared results differ")
        return "\n".join(lines)


def replay(
    run_dir: str | Path, *, device: str | None = None, dtype: str | None = None, model=None
) -> ReplayReport:
    """Re-run a recorded run from its config.json and compare every result with the record.

    Identical results are required when the device, device name, dtype and torch version are the
    recorded ones; otherwise the results must agree within `tolerance_for` the two dtypes. A
    recorded CUDA run replays on the CPU (within tolerance) where no GPU is available. Tensors and
    tables are compared; figures are drawn from them and are not. Nothing is written.

    A record that cannot be read (missing, incomplete, corrupt or truncated files, a config this
    workbench cannot take) raises RecordError before anything runs."""
    record = load_run(run_dir)
    try:
        experiment = get_experiment(record.experiment)
        data = dict(record.config)
        for f in dataclasses.fields(experiment.config):  # options added since: what the record ran with
            if f.name not in data and "before_field" in f.metadata:
                data[f.name] = f.metadata["before_field"]
        config = config_from_dict(experiment.config, data, source=f"{record.path / 'config.json'}")
    except InputError as e:
        raise RecordError(str(e)) from None
    recorded = record.results()  # read (and so checked) before the experiment runs
    notes = []
    recorded_device, recorded_dtype = config.device, config.dtype
    if device is None and recorded_device and recorded_device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"
        notes.append(f"recorded on {recorded_device}, no CUDA here: replaying on the CPU")
    changes: dict[str, Any] = {}
    if device is not None:
        changes["device"] = device
    if dtype is not None and dtype != recorded_dtype:
        # float32 weights cast to another dtype hash differently; the tokens are still checked.
        changes.update(dtype=dtype, model_state_sha256=None)
        notes.append(f"dtype {dtype} instead of the recorded {recorded_dtype}: weights (state sha256) not checked")
    config = dataclasses.replace(config, **changes)
    if model is None:
        model = load_experiment_model(config)
    run = run_experiment(experiment, config, model=model, root=None)
    env_now = environment(device=run.config.device)
    same = (
        run.config.device == recorded_device and run.config.dtype == recorded_dtype
        and env_now["device_name"] == record.env.get("device_name") and env_now["torch"] == record.env.get("torch")
        # a run split over processes summed its prompts in another order (experiments/distributed.py)
        and env_now["world_size"] == record.env.get("world_size", 1)
    )
    tol = EXACT if same else tolerance_for(getattr(torch, recorded_dtype), getattr(torch, run.config.dtype))
    notes.insert(0, f"model {run.config.model}, {run.config.device} {env_now['device_name']}, "
                    f"{run.config.dtype}, torch {env_now['torch']}")
    notes.insert(1, describe_model_hashes(run.config))
    if not same:
        notes.append(f"recorded on {recorded_device} {record.env.get('device_name')}, {recorded_dtype}, "
                     f"torch {record.env.get('torch')}, {record.env.get('world_size', 1)} process(es): "
                     "comparing within tolerance")
    return ReplayReport(record.path, experiment.name, tol, notes, compare_results(recorded, run.results, tol))


def describe_model_hashes(config) -> str:
    """The weights' hashes in words: which is which, and which one `sha256sum` prints."""
    text = (f"weights: state sha256 {config.model_state_sha256[:16]}... (of the state dict's tensors as float32, "
            "workbench.runs.model_state_sha256)")
    if config.model_file_sha256:
        text += f"; file sha256 {config.model_file_sha256[:16]}... (of the weights file, as sha256sum prints it)"
    return text
