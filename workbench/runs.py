"""Run records: every experiment leaves a folder complete enough to re-run it and check the numbers.

A run is the folder `<root>/<experiment>/<UTC time>-<short id>[-<name>]/`:

    config.json                  {"record_version", "experiment", "created", "name", "config": {...}}
    env.json                     workbench version, git commit and dirty flag, Python, torch, CUDA,
                                 device name, platform, deterministic-algorithms flag
    command                      one line that re-runs it
    results/tensors.safetensors  the raw result tensors, by name
    results/<table>.parquet      tidy tables (one row per cell, axis-vocabulary columns)
    figures/<figure>.html        interactive plotly figures (plotly.min.js alongside)

The record is written into a hidden temporary folder next to its final place and renamed into
place as the last step, so a crash or Ctrl-C never leaves a half run that looks complete (a hard
kill can leave a `.tmp-*` folder, which nothing here reads as a run). A rename never replaces a
non-empty folder, so no run is ever overwritten; two runs in the same second get different ids.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from workbench.errors import InputError

RECORD_VERSION = 1
TENSORS_FILE = "results/tensors.safetensors"
REQUIRED_FILES = ("config.json", "env.json", "command", TENSORS_FILE)
TMP_PREFIX = ".tmp-"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 64


class RecordError(InputError):
    """A run folder that is missing, incomplete, malformed, or from an incompatible record version."""


@dataclass
class RunResults:
    """What an experiment returns: raw tensors (compared by replay), tidy tables, plotly figures.

    `summary` is a few lines for the terminal (top heads, final-layer top tokens, ...)."""

    tensors: dict[str, Tensor]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


# ----------------------------------------------------------------------------- provenance
def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's weights: every state-dict tensor, in sorted key order, as float32 on CPU.

    Each tensor contributes its name, shape and little-endian float32 bytes, so the hash does not
    depend on the device, and a model loaded in float32 or float16 from float16 weights hashes the
    same. Casting float32 weights down to float16 or bfloat16 changes them, and so the hash."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
        h.update(f"{key}:{tuple(t.shape)};".encode())
        h.update(t.numpy().astype("<f4", copy=False).data)  # a view of the bytes, not a copy
    return h.hexdigest()


def git_state(path: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git work tree holding `path` (default: workbench's own source).

    `dirty` means tracked files differ from the commit; untracked files are not counted.
    (None, None) outside a git work tree or without git."""
    path = path or Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def environment(*, device: str | torch.device | None = None) -> dict[str, Any]:
    """What env.json records: the software and hardware a run's numbers came from."""
    import numpy

    import workbench

    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = _cpu_name()
    commit, dirty = git_state()
    return {
        "workbench": workbench.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pd.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "device_name": device_name,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def to_json(obj: Any, indent: int = 0) -> str:
    """Indented JSON with lists of numbers or strings on one line (token ids stay readable)."""
    pad = " " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(str(k))}: {to_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        items = [pad + to_json(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(obj, allow_nan=False)


# ----------------------------------------------------------------------------- names
def sanitize_name(name: str, *, what: str = "run name") -> str:
    """A user-given name as a safe single path component: letters, digits, '.', '_', '-'.

    Other characters become '-', leading dots and dashes go (no '..', no hidden folders), and the
    name is cut to 64 characters. Raises InputError if nothing usable is left."""
    if not isinstance(name, str):
        raise InputError(f"{what} must be a string, got {type(name).__name__}")
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).lstrip(".-")[:MAX_NAME].rstrip(".-")
    if not cleaned or not _SAFE_NAME.fullmatch(cleaned):
        raise InputError(f"{what} {name!r} has no usable characters; use letters, digits, '.', '_' or '-'")
    return cleaned


def utc_stamp(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def short_id() -> str:
    return secrets.token_hex(3)


# ----------------------------------------------------------------------------- writing
def record_run(
    results: RunResults,
    *,
    experiment: str,
    config: dict[str, Any],
    root: str | os.PathLike = "runs",
    name: str | None = None,
    command: str = "",
    env: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> Path:
    """Write a run record under `root/experiment/` and return its folder.

    `config` is the experiment's complete config as a JSON-able dict; `command` a one-line shell
    command that re-runs it. Everything is written to a temporary folder that is renamed into
    place last; on any exception (KeyboardInterrupt included) the temporary folder is removed."""
    experiment = sanitize_name(experiment, what="experiment name")
    name = sanitize_name(name) if name is not None else None
    for kind, names in (("table", results.tables), ("figure", results.figures)):
        for key in names:
            if not _SAFE_NAME.fullmatch(key) or len(key) > MAX_NAME:
                raise InputError(f"{kind} name {key!r} is not a safe file name (letters, digits, '.', '_', '-')")
    if "\n" in command:
        raise InputError("a run's command must be one line")
    parent = Path(root) / experiment
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the runs folder {parent}: {e.strerror or e}") from None
    created = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    tmp = parent / f"{TMP_PREFIX}{utc_stamp(created)}-{secrets.token_hex(4)}-{os.getpid()}"
    tmp.mkdir()  # not mkdtemp: a run folder gets the usual permissions, not 0700
    try:
        header = {
            "record_version": RECORD_VERSION,
            "experiment": experiment,
            "created": created.isoformat(timespec="seconds"),
            "name": name,
            "config": config,
        }
        _write_text(tmp / "config.json", to_json(header) + "\n")
        _write_text(tmp / "env.json", json.dumps(env if env is not None else environment(), indent=1) + "\n")
        _write_text(tmp / "command", command + "\n")
        (tmp / "results").mkdir()
        # clone: safetensors refuses tensors that share storage (a result and a view of it).
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in results.tensors.items()}
        save_file(tensors, str(tmp / TENSORS_FILE), metadata={"record_version": str(RECORD_VERSION)})
        for key, frame in results.tables.items():
            frame.to_parquet(tmp / "results" / f"{key}.parquet", index=False)
        if results.figures:
            (tmp / "figures").mkdir()
            for key, fig in results.figures.items():
                # One plotly.min.js per run folder: the figures open offline and stay small.
                fig.write_html(tmp / "figures" / f"{key}.html", include_plotlyjs="directory")
        if results.summary:
            _write_text(tmp / "summary.txt", results.summary.rstrip() + "\n")
        return _commit(tmp, parent, stamp=utc_stamp(created), name=name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _commit(tmp: Path, parent: Path, *, stamp: str, name: str | None, attempts: int = 20) -> Path:
    """Rename `tmp` to a fresh `<stamp>-<short id>[-<name>]` folder; never onto an existing run."""
    for _ in range(attempts):
        final = parent / "-".join(p for p in (stamp, short_id(), name) if p)
        if final.exists():
            continue
        try:
            # POSIX rename refuses a non-empty target, so even a racing writer cannot be overwritten.
            os.rename(tmp, final)
        except OSError:
            if final.exists():
                continue
            raise
        return final
    raise RuntimeError(f"could not find a free run id under {parent} after {attempts} attempts")


# ----------------------------------------------------------------------------- reading
@dataclass
class RunRecord:
    """A recorded run, as read back from its folder (tensors and tables load on demand)."""

    path: Path
    experiment: str
    created: str
    name: str | None
    config: dict[str, Any]
    env: dict[str, Any]
    command: str

    def tensors(self) -> dict[str, Tensor]:
        try:
            return load_file(str(self.path / TENSORS_FILE))
        except (SafetensorError, OSError) as e:
            raise RecordError(f"cannot read {self.path / TENSORS_FILE}: corrupt or truncated ({e})") from None

    def tables(self) -> dict[str, pd.DataFrame]:
        return {p.stem: pd.read_parquet(p) for p in sorted((self.path / "results").glob("*.parquet"))}

    def figures(self) -> list[Path]:
        return sorted((self.path / "figures").glob("*.html"))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RecordError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def check_record_version(header: dict, *, source: Path) -> None:
    """Raise RecordError unless `header` (a config.json) is of this workbench's record version."""
    version = header.get("record_version")
    if version != RECORD_VERSION:
        found = "no record_version" if version is None else f"record format version {version!r}"
        raise RecordError(
            f"{source} has {found}, but this workbench reads and writes version {RECORD_VERSION}. "
            "Replay it with the workbench version that wrote it (its env.json names it)."
        )


def load_run(path: str | os.PathLike) -> RunRecord:
    """Read a run folder; RecordError if it is missing, incomplete or of another record version."""
    path = Path(path)
    if not path.is_dir():
        raise RecordError(f"no run folder at {path}")
    if path.name.startswith(TMP_PREFIX):
        raise RecordError(f"{path} is the temporary folder of an unfinished (crashed or interrupted) run")
    if (path / "config.json").is_file():
        header = _read_json(path / "config.json")
        check_record_version(header, source=path / "config.json")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise RecordError(f"{path} is not a complete run folder: {', '.join(missing)} missing")
    for key in ("experiment", "config"):
        if key not in header:
            raise RecordError(f"{path / 'config.json'} has no {key!r} entry")
    if not isinstance(header["config"], dict):
        raise RecordError(f"{path / 'config.json'}: 'config' must be a JSON object")
    return RunRecord(
        path=path,
        experiment=str(header["experiment"]),
        created=str(header.get("created", "")),
        name=header.get("name"),
        config=header["config"],
        env=_read_json(path / "env.json"),
        command=(path / "command").read_text(encoding="utf-8").strip(),
    )


def find_runs(root: str | os.PathLike = "runs") -> list[Path]:
    """Complete-looking run folders under `root` (temporary `.tmp-*` folders excluded), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [
        p for exp in root.iterdir() if exp.is_dir() and not exp.name.startswith(".")
        for p in exp.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file()
    ]
    return sorted(runs, key=lambda p: (p.name, p.parent.name))


def find_unfinished(root: str | os.PathLike = "runs") -> list[Path]:
    """Temporary folders of runs that were killed while being written (safe to delete)."""
    root = Path(root)
    return sorted(root.glob(f"*/{TMP_PREFIX}*")) if root.is_dir() else []


def list_runs(root: str | os.PathLike = "runs") -> pd.DataFrame:
    """One row per recorded run: when, which experiment, model, device, dtype, commit, and status
    ("ok", or why the folder cannot be replayed)."""
    rows = []
    for path in find_runs(root):
        row = {"run": path.name, "experiment": path.parent.name, "created": "", "model": "", "device": "",
               "dtype": "", "commit": "", "status": "ok", "path": str(path)}
        try:
            rec = load_run(path)
            cfg = rec.config
            row.update(created=rec.created, model=str(cfg.get("model", "")), device=str(cfg.get("device", "")),
                       dtype=str(cfg.get("dtype", "")))
            commit = rec.env.get("git_commit") or ""
            row["commit"] = commit[:10] + ("+dirty" if rec.env.get("git_dirty") else "") if commit else ""
        except RecordError as e:
            row["status"] = str(e).replace(str(path), "").strip(" :") or "invalid"
        rows.append(row)
    columns = ["run", "experiment", "created", "model", "device", "dtype", "commit", "status", "path"]
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- comparing
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
        else:
            ok = bool((a.astype(str) == b.astype(str)).all())
        if not ok:
            bad.append(col)
    detail = f"{len(recorded)} rows" + (f", columns differ: {', '.join(map(str, bad))}" if bad else " match")
    return Comparison("table", name, not bad, detail, required)


def compare_results(
    record: RunRecord, replayed: RunResults, tol: Tolerance
) -> list[Comparison]:
    """Compare every recorded tensor and table with its replayed counterpart (missing or extra = mismatch)."""
    out: list[Comparison] = []
    pairs: list[tuple[str, dict, dict, Callable]] = [
        ("tensor", record.tensors(), replayed.tensors, compare_tensor),
        ("table", record.tables(), replayed.tables, compare_table),
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
