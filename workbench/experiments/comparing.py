"""Compare two recorded runs: what differs in their configs and environments, and their results
side by side, with a one-line verdict.

The results are compared by replay's policy (`replaying.compare_results`, `Tolerance`), so "same"
here is what MATCH means there: every tensor and table identical, bit for bit. Otherwise the runs
are "within tolerance" when every float tensor agrees within `tolerance_for` their two dtypes,
else "different". Runs of different experiments have their configs compared, not their results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from workbench.experiments.core import EXPERIMENTS, with_current_names
from workbench.experiments.replaying import EXACT, Comparison, Tolerance, compare_results, tolerance_for
from workbench.runs import RunRecord, load_run

# What env.json records that can change numbers or explain a difference (not the time of day).
ENV_KEYS = ("workbench", "git_commit", "git_dirty", "python", "torch", "numpy", "pandas", "cuda", "cudnn",
            "device_name", "platform", "torch_threads", "deterministic_algorithms")
# Table columns that name a cell (the axis vocabulary and its labels): rows are joined on these.
KEY_COLUMNS = ("detector", "layer", "layer_index", "head", "batch", "pos", "query_pos", "key_pos", "k")
MODEL_FIELDS = ("model", "model_state_sha256")
VERDICTS = ("same", "within tolerance", "different", "not compared")


@dataclass
class Difference:
    """One config field or environment entry that differs: where ("config" or "environment"),
    its name, and the value in run A and run B (None: absent)."""

    where: str
    key: str
    a: Any
    b: Any


@dataclass
class RunDiff:
    """Two runs compared. `verdict` is one of VERDICTS; `comparisons` (replay's, A as the record and
    B as the replay) are empty when the runs are of different experiments."""

    a: RunRecord
    b: RunRecord
    differences: list[Difference]
    comparisons: list[Comparison]
    tolerance: Tolerance | None
    verdict: str
    notes: list[str] = field(default_factory=list)

    @property
    def same_experiment(self) -> bool:
        return self.a.experiment == self.b.experiment

    def to_frame(self) -> pd.DataFrame:
        """One row per difference: where, key, A, B (values as text)."""
        return pd.DataFrame([{"where": d.where, "key": d.key, "A": _show(d.a), "B": _show(d.b)}
                             for d in self.differences], columns=["where", "key", "A", "B"])

    def verdict_line(self) -> str:
        """The verdict in one line: same / within tolerance / different / not compared, and why."""
        if self.verdict == "not compared":
            return (f"not compared: different experiments ({self.a.experiment} and {self.b.experiment}); "
                    "only their configs are compared")
        required = [c for c in self.comparisons if c.required]
        if self.verdict == "same":
            return f"same: all {len(required)} results identical, bit for bit"
        if self.verdict == "within tolerance":
            return f"within tolerance: all {len(required)} compared results agree ({self.tolerance.describe()})"
        bad = [c.name for c in required if not c.ok]
        return f"different: {len(bad)} of {len(required)} compared results differ ({', '.join(bad)})"

    def format(self) -> str:
        lines = [f"A: {self.a.path} ({self.a.experiment}, {self.a.created})",
                 f"B: {self.b.path} ({self.b.experiment}, {self.b.created})"]
        lines += [f"  {n}" for n in self.notes]
        if self.differences:
            lines.append("Differences (A -> B):")
            width = max(len(d.key) for d in self.differences)
            lines += [f"  {d.where:11} {d.key:{width}}  {_show(d.a)} -> {_show(d.b)}" for d in self.differences]
        else:
            lines.append("Configs and environments: no differences")
        if self.comparisons:
            lines.append("Results (A as recorded, B compared with it):")
            width = max(len(c.name) for c in self.comparisons)
            for c in self.comparisons:
                status = ("same" if c.ok else "DIFF") if c.required else ("same" if c.ok else "info")
                lines.append(f"  {status} {c.kind:6} {c.name:{width}}  {c.detail}")
        lines.append(self.verdict_line())
        return "\n".join(lines)

    def tensor_differences(self) -> dict[str, Tensor]:
        """B - A for every float tensor of the same name and shape in both runs (float64)."""
        if not self.same_experiment:
            return {}
        ta, tb = self.a.tensors(), self.b.tensors()
        return {k: tb[k].double() - ta[k].double() for k in sorted(set(ta) & set(tb))
                if ta[k].shape == tb[k].shape and ta[k].dtype.is_floating_point and tb[k].dtype.is_floating_point}

    def joined_tables(self) -> dict[str, pd.DataFrame]:
        """Every table of both runs joined side by side (`join_tables`)."""
        if not self.same_experiment:
            return {}
        ta, tb = self.a.tables(), self.b.tables()
        return {k: join_tables(ta[k], tb[k]) for k in sorted(set(ta) & set(tb))}


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike) -> RunDiff:
    """Compare two run folders (RecordError if either cannot be read, e.g. another record version)."""
    a, b = load_run(run_a), load_run(run_b)
    notes = []
    ca, cb = _config(a), _config(b)
    if ca.get("model_state_sha256") != cb.get("model_state_sha256") or ca.get("model") != cb.get("model"):
        notes.append(f"different models: A ran {ca.get('model')} (state sha256 "
                     f"{_short(ca.get('model_state_sha256'))}), B ran {cb.get('model')} (state sha256 "
                     f"{_short(cb.get('model_state_sha256'))})")
    differences = _differences("config", ca, cb) + _differences(
        "environment", {k: a.env.get(k) for k in ENV_KEYS}, {k: b.env.get(k) for k in ENV_KEYS})
    if a.experiment != b.experiment:
        notes.insert(0, f"different experiments: A is {a.experiment}, B is {b.experiment}: "
                        "configs compared, results not")
        return RunDiff(a, b, [Difference("experiment", "experiment", a.experiment, b.experiment), *differences],
                       [], None, "not compared", notes)
    recorded, other = a.results(), b.results()
    exact = compare_results(recorded, other, EXACT)
    if all(c.ok for c in exact if c.required):
        return RunDiff(a, b, differences, exact, EXACT, "same", notes)
    tol = tolerance_for(_dtype(ca), _dtype(cb))
    within = compare_results(recorded, other, tol)
    verdict = "within tolerance" if all(c.ok for c in within if c.required) else "different"
    return RunDiff(a, b, differences, within, tol, verdict, notes)


def join_tables(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Two tables side by side: rows joined on their cell columns (KEY_COLUMNS present in both,
    else by row order), every other column as "<col> (A)" and "<col> (B)" (once when equal), and
    for float columns "<col> (B - A)"."""
    keys = [k for k in KEY_COLUMNS if k in a.columns and k in b.columns]
    if not keys or a.duplicated(keys).any() or b.duplicated(keys).any():
        a, b = (t.reset_index(drop=True).rename_axis("row").reset_index() for t in (a, b))
        keys = ["row"]
    joined = pd.merge(a, b, on=keys, how="outer", suffixes=(" (A)", " (B)"), sort=False)
    out = joined[keys].copy()
    for col in [c for c in a.columns if c not in keys] + [c for c in b.columns if c not in keys and c not in a.columns]:
        ca, cb = f"{col} (A)", f"{col} (B)"
        if ca not in joined:  # in one table only
            out[col + (" (A)" if col in a.columns else " (B)")] = joined[col]
            continue
        if joined[ca].equals(joined[cb]):
            out[col] = joined[ca]
            continue
        out[ca], out[cb] = joined[ca], joined[cb]
        if pd.api.types.is_float_dtype(joined[ca]) and pd.api.types.is_float_dtype(joined[cb]):
            out[f"{col} (B - A)"] = joined[cb] - joined[ca]
    return out


def as_grid(t: Tensor) -> Tensor:
    """A tensor as rows x columns for a heatmap: a 0-d or 1-d tensor as one row, leading axes
    of a higher one flattened into the rows."""
    if t.ndim < 2:
        return t.reshape(1, -1)
    return t.flatten(end_dim=-2)  # axes of any meaning: no names to give einops


def _config(record: RunRecord) -> dict[str, Any]:
    experiment = EXPERIMENTS.get(record.experiment)
    return with_current_names(experiment.config, record.config) if experiment is not None else dict(record.config)


def _dtype(config: dict) -> torch.dtype:
    return getattr(torch, str(config.get("dtype", "float32")), torch.float32)


def _differences(where: str, a: dict, b: dict) -> list[Difference]:
    out = []
    keys = [*MODEL_FIELDS, *[k for k in a if k not in MODEL_FIELDS],
            *[k for k in b if k not in a and k not in MODEL_FIELDS]]
    keys.sort(key=lambda k: (k != "model", k != "model_state_sha256", k == "token_ids"))  # models first, ids last
    for key in keys:
        va, vb = a.get(key), b.get(key)
        if key == "token_ids" and isinstance(va, dict) and isinstance(vb, dict):
            out += [Difference(where, f"token_ids[{role!r}]", _ids(va.get(role)), _ids(vb.get(role)))
                    for role in [*va, *[r for r in vb if r not in va]] if va.get(role) != vb.get(role)]
        elif va != vb and (key in a or key in b):
            out.append(Difference(where, key, va, vb))
    return out


def _ids(rows) -> _Ids | None:
    """Token ids in short: their shape and a digest of the values (the full lists are in the records)."""
    if rows is None:
        return None
    import hashlib

    shape = f"{len(rows)} x {len(rows[0]) if rows else 0} ids"
    return _Ids(f"{shape} ({hashlib.sha256(repr(rows).encode()).hexdigest()[:8]})")


def _short(sha: str | None) -> str:
    return f"{sha[:12]}..." if sha else "not recorded"


def _show(value: Any) -> str:
    text = "absent" if value is None else repr(value) if isinstance(value, (str, list)) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Ids(str):
    """A summary of token ids: shown as it is, not quoted like a config string."""

    __repr__ = str.__str__
