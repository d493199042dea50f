"""Run records: every experiment leaves a folder complete enough to re-run it and check the numbers.

A run is the folder `<root>/<experiment>/<UTC time>-<short id>[-<name>]/`:

    config.json                  {"record_version", "experiment", "created", "name", "config": {...}}
    env.json                     workbench version, git commit and dirty flag, Python, torch, CUDA,
                                 device name, platform, deterministic-algorithms flag
    command                      one line that re-runs it
    results/tensors.safetensors  the raw result tensors, by name
    results/<table>.parquet      tidy tables (one row per cell, axis-vocabulary columns)
    figures/<figure>.html        interactive plotly figures; they load plotly.js from the runs
                                 root's `_assets/plotly-<version>.min.js` by a relative path, one
                                 copy for all runs (copy a run together with its runs root)

The record is written into a hidden temporary folder next to its final place and renamed into
place as the last step, so a crash or Ctrl-C never leaves a half run that looks complete (a hard
kill can leave a `.tmp-*` folder, which nothing here reads as a run). A rename never replaces a
non-empty folder, so no run is ever overwritten; two runs in the same second get different ids.

The default runs root is `default_runs_root()`: $WORKBENCH_RUNS, else `runs/` of the workbench
checkout when working inside it (the scripts, the CLI, the dashboard and the notebook then share
one), else `./runs`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from workbench.errors import InputError
from workbench.models.bundled import sha256_file

RECORD_VERSION = 1
TENSORS_FILE = "results/tensors.safetensors"
REQUIRED_FILES = ("config.json", "env.json", "command", TENSORS_FILE)
TMP_PREFIX = ".tmp-"
ASSETS = "_assets"  # under the runs root: files shared by all runs (plotly.js); never a run or experiment
RUNS_ENV = "WORKBENCH_RUNS"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 64


class RecordError(InputError):
    """A run folder that cannot be read: missing, incomplete, malformed, corrupt or truncated files,
    or an incompatible record version."""


def default_runs_root() -> Path:
    """Where runs are recorded and looked for unless a root is given.

    $WORKBENCH_RUNS if set; else, when the working directory is inside the source checkout that
    this workbench is imported from, that checkout's `runs/` (so a notebook in `notebooks/` or a
    shell in a subfolder records where the scripts and the dashboard do); else `./runs`."""
    if os.environ.get(RUNS_ENV):
        return Path(os.environ[RUNS_ENV])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and Path.cwd().resolve().is_relative_to(checkout):
        return checkout / "runs"
    return Path("runs")


@dataclass
class RunResults:
    """What an experiment returns: raw tensors (compared by replay), tidy tables, plotly figures.

    `summary` is a few lines for the terminal (top heads, final-layer top tokens, ...)."""

    tensors: dict[str, Tensor]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


# ----------------------------------------------------------------------------- provenance
def model_state_sha256(model: torch.nn.Module) -> str:
    """The "state sha256" of a model: sha256 over every state-dict tensor, in sorted key order,
    as float32 on CPU. Not the sha256 of any file (see `file_sha256`).

    Each tensor contributes its name, shape and little-endian float32 bytes, so the hash does not
    depend on the device or the file format, and a model loaded in float32 or float16 from float16
    weights hashes the same. Casting float32 weights down to float16 or bfloat16 changes them, and
    so the hash.

    Keys are hashed by the names they had when the hash was defined (`loading.RENAMED_KEYS`: embed.W_E
    as wte.weight, pos_embed.W_pos as wpe.weight), so runs recorded before the rename still replay."""
    from workbench.models.loading import RENAMED_KEYS

    former = {new: old for old, new in RENAMED_KEYS.items()}
    h = hashlib.sha256()
    for key, tensor in sorted(((former.get(k, k), v) for k, v in model.state_dict().items()), key=lambda kv: kv[0]):
        t = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
        h.update(f"{key}:{tuple(t.shape)};".encode())
        h.update(t.numpy().astype("<f4", copy=False).data)  # a view of the bytes, not a copy
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, as `sha256sum` prints it (remembered per path, size and mtime)."""
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


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
    root: str | os.PathLike | None = None,
    name: str | None = None,
    command: str = "",
    env: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> Path:
    """Write a run record under `root/experiment/` (default root: `default_runs_root()`) and return
    its folder.

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
    root = Path(root) if root is not None else default_runs_root()
    parent = root / experiment
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
            # figures/ is three levels below the root: <root>/<experiment>/<run>/figures/
            plotly_js = "../../../" + shared_plotly_js(root).relative_to(root).as_posix()
            for key, fig in results.figures.items():
                fig.write_html(tmp / "figures" / f"{key}.html", include_plotlyjs=plotly_js)
        if results.summary:
            _write_text(tmp / "summary.txt", results.summary.rstrip() + "\n")
        return _commit(tmp, parent, stamp=utc_stamp(created), name=name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def shared_plotly_js(root: Path) -> Path:
    """`<root>/_assets/plotly-<version>.min.js`, written once (atomically) per runs root and plotly.js
    version: the figures of every run load it by a relative path and open offline."""
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    path = root / ASSETS / f"plotly-{get_plotlyjs_version()}.min.js"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f"{TMP_PREFIX}{secrets.token_hex(4)}-{path.name}")
        try:
            _write_text(tmp, get_plotlyjs())
            os.replace(tmp, path)  # a concurrent writer writes the same bytes
        finally:
            tmp.unlink(missing_ok=True)
    return path


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
        return {p.stem: _read_parquet(p) for p in sorted((self.path / "results").glob("*.parquet"))}

    def results(self) -> RunResults:
        """The recorded tensors and tables (RecordError if any file cannot be read)."""
        return RunResults(tensors=self.tensors(), tables=self.tables())

    def figures(self) -> list[Path]:
        return sorted((self.path / "figures").glob("*.html"))


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a truncated or corrupt file
        raise RecordError(f"cannot read {path}: corrupt or truncated ({type(e).__name__})") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path} is not valid JSON: {e}") from None
    except OSError as e:
        raise RecordError(f"cannot read {path}: {e.strerror or e}") from None
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
        command=_read_text(path / "command"),
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"cannot read {path}: {e}") from None


def check_results_readable(path: str | os.PathLike) -> None:
    """RecordError naming the first results file of a run folder that is truncated or corrupt.

    Cheap: reads the safetensors header and each Parquet footer (and checks the sizes they
    promise), not the data."""
    path = Path(path)
    _check_safetensors(path / TENSORS_FILE)
    import pyarrow.parquet as pq

    for table in sorted((path / "results").glob("*.parquet")):
        try:
            pq.read_metadata(table)
        except Exception as e:  # ArrowInvalid for a missing footer, OSError, ...
            raise RecordError(f"cannot read {table}: corrupt or truncated ({type(e).__name__})") from None


def _check_safetensors(path: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then the data the header's
    offsets describe: the file must be exactly as long as they say."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            size = os.fstat(f.fileno()).st_size
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header of {n} bytes in a {size}-byte file")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            raise ValueError(f"{size} bytes, the header describes {8 + n + end}")
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise RecordError(f"cannot read {path}: corrupt or truncated ({e})") from None


def find_runs(root: str | os.PathLike | None = None) -> list[Path]:
    """Run folders under `root` (default: `default_runs_root()`), oldest first: every folder of an
    experiment with a file of the record layout, complete or not; temporary `.tmp-*` folders
    excluded."""
    root = Path(root) if root is not None else default_runs_root()
    if not root.is_dir():
        return []
    runs = [
        p for exp in root.iterdir() if exp.is_dir() and not exp.name.startswith(".") and exp.name != ASSETS
        for p in exp.iterdir() if p.is_dir() and not p.name.startswith(".") and _looks_like_a_run(p)
    ]
    return sorted(runs, key=lambda p: (p.name, p.parent.name))


def _looks_like_a_run(path: Path) -> bool:
    # Any file of the layout: a run with its config.json lost is still listed (as unreadable).
    return any((path / f).exists() for f in ("config.json", "env.json", "command", "results"))


def find_unfinished(root: str | os.PathLike | None = None) -> list[Path]:
    """Temporary folders of runs that were killed while being written (safe to delete)."""
    root = Path(root) if root is not None else default_runs_root()
    return sorted(p for p in root.glob(f"*/{TMP_PREFIX}*") if p.is_dir()) if root.is_dir() else []


def list_runs(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per recorded run: when, which experiment, model, device, dtype, commit, and status:
    "ok", or "unreadable: <why>" when its files cannot be read (`load_run`, `check_results_readable`)."""
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
            check_results_readable(path)
        except RecordError as e:
            row["status"] = "unreadable: " + (str(e).replace(str(path) + os.sep, "").replace(str(path), "").strip(" :")
                                              or "invalid")
        rows.append(row)
    columns = ["run", "experiment", "created", "model", "device", "dtype", "commit", "status", "path"]
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- deleting
def delete_run(path: str | os.PathLike) -> Path:
    """Delete a run folder (readable or not) and return its path. RecordError for a folder that is
    not a run (nothing is deleted): only a folder with a file of the record layout, not a
    temporary `.tmp-*` one (see `remove_unfinished`), is removed."""
    path = Path(path)
    if not path.is_dir():
        raise RecordError(f"no run folder at {path}")
    if path.name.startswith(TMP_PREFIX):
        raise RecordError(f"{path} is the temporary folder of an unfinished run; `workbench tidy --remove` "
                          "removes it")
    if not _looks_like_a_run(path) or path.name == ASSETS:
        raise RecordError(f"{path} is not a run folder (it has none of config.json, env.json, command, results/); "
                          "nothing was deleted")
    shutil.rmtree(path)
    return path


def remove_unfinished(root: str | os.PathLike | None = None) -> list[Path]:
    """Delete the temporary folders that killed runs left (`find_unfinished`); the paths removed."""
    removed = []
    for path in find_unfinished(root):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
