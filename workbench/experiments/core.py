"""Experiments: a dataclass config plus `run(config, model) -> RunResults`, registered by name, so
scripts, replay, the CLI and the dashboard all run the same code from the same config.

Running one: load the model the config names, resolve the config (the weights' hashes, the exact
token ids, the actual device and dtype), run, and record (`workbench.runs`). Replay
(`workbench.experiments.replaying`) reads a record's config.json, runs again, and compares every
result with the recorded one.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from workbench.errors import InputError
from workbench.models.loading import resolve_device
from workbench.runs import (
    RunResults,
    check_record_version,
    default_runs_root,
    environment,
    file_sha256,
    model_state_sha256,
    record_run,
)

DTYPE_NAMES = ("float32", "float16", "bfloat16")


@dataclass
class ExperimentConfig:
    """What every experiment records besides its own options.

    `model_state_sha256`, `model_file_sha256` and `token_ids` are filled in when the experiment
    runs; when a config already has the state hash and the ids (from a previous run's
    config.json), the run checks the weights and the tokenization against them and refuses to go
    on if either differs.

    The two hashes: `model_state_sha256` is of the weights themselves (every state-dict tensor as
    float32, `workbench.runs.model_state_sha256`), the same whatever file format or dtype they were
    stored in; `model_file_sha256` is of the weights file, as `sha256sum` prints it and as a model
    card states it (None when the weights came from several files)."""

    model: str | None = field(default=None, metadata={
        "help": "model name (gpt2, shakespeare-2l, ...) or path; default: GPT-2 when available, else the bundled model"})
    model_state_sha256: str | None = field(default=None, metadata={
        "aliases": ["model_sha256"],  # its name in records before it was renamed
        "help": "refuse to run unless the weights have this state sha256 (of the state dict's tensors as float32, "
                "workbench.runs.model_state_sha256; not the file's sha256sum)"})
    model_file_sha256: str | None = field(default=None, metadata={
        "cli": False, "help": "sha256 of the weights file (as sha256sum prints it); recorded, not checked"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda when available)"})
    dtype: Literal["float32", "float16", "bfloat16"] = field(default="float32", metadata={"help": "model dtype"})
    seed: int = field(default=0, metadata={"help": "seed for everything random (prompt sampling, resampling)"})
    token_ids: dict[str, list[list[int]]] = field(default_factory=dict, metadata={
        "cli": False, "help": "the exact model inputs (BOS included), by role; filled in at run time"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def applies(self, name: str) -> bool:
        """Whether option `name` is used with the other options as they are (a re-run command
        writes only those); experiments with options for one case only override this."""
        return True


COMMON_FIELDS = {f.name for f in dataclasses.fields(ExperimentConfig)}


@dataclass(frozen=True)
class Experiment:
    """A registered experiment.

    `tokens(config, model)` gives the model inputs the config's prompts stand for ([batch pos]
    ids by role, e.g. "clean"/"corrupted"); `run(config, model)` computes the results from
    `config.token_ids` (already filled in) and never from the prompts, so the record's ids are
    what was run.

    The run may come in two steps, so that the dashboard shows a result and records that same
    result: `compute(config, model)` gives the library's result object and `record(config, model,
    result)` turns it into RunResults. `resolve(config, model)` fills in choices that depend on the
    model (e.g. prompt_set "auto") before the tokens are made. `figures(tensors, tables)` re-draws a
    recorded run's figures from its tensors and tables (the Runs page). `script(config)` gives the
    experiment's own part of an exported script (`ScriptBody`: the library call, options spelled
    out); without it, `workbench export` writes a script that calls `run_experiment`."""

    name: str
    config: type[ExperimentConfig]
    tokens: Callable[[Any, Any], dict[str, Tensor]]
    run: Callable[[Any, Any], RunResults]
    description: str = ""
    compute: Callable[[Any, Any], Any] | None = None
    record: Callable[[Any, Any, Any], RunResults] | None = None
    resolve: Callable[[Any, Any], Any] | None = None
    figures: Callable[[dict, dict], list] | None = None
    script: Callable[[Any], ScriptBody] | None = None


@dataclass(frozen=True)
class ScriptBody:
    """An experiment's own part of an exported script (`workbench.experiments.exporting`): `code`
    sets `result`, what the experiment's `record(config, model, result)` records, from `model` and
    `config` (a complete config, token ids included), calling the library with every option
    spelled out. `imports` are the import lines it needs; `heading` says in a few words what it
    computes (a comment in the script, a markdown heading in the notebook)."""

    heading: str
    code: str
    imports: tuple[str, ...] = ()


EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    EXPERIMENTS[experiment.name] = experiment
    return experiment


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise InputError(f"unknown experiment {name!r}; registered: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


# ----------------------------------------------------------------------------- configs from JSON
def check_type(value: Any, tp: Any, where: str) -> Any:
    """`value` checked against a config field's annotation (ints are accepted as floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return check_type(value, option, where)
            except InputError as e:
                errors.append(e)
        raise errors[-1] if value is not None else InputError(f"{where} must not be null")
    if tp is type(None):
        if value is not None:
            raise InputError(f"{where} must be null, got {value!r}")
        return None
    if origin is Literal:
        if value not in args:
            raise InputError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise InputError(f"{where} must be a list, got {type(value).__name__} {value!r}")
        return [check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where} must be an object, got {type(value).__name__}")
        return {check_type(k, args[0], f"{where} key"): check_type(v, args[1], f"{where}[{k!r}]")
                for k, v in value.items()} if args else value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise InputError(f"{where} must be {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise InputError(f"{where} must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def config_from_dict(cls: type[ExperimentConfig], data: dict[str, Any], *, source: str = "config") -> ExperimentConfig:
    """Build and type-check a config; unknown or mistyped fields raise InputError naming them."""
    if not isinstance(data, dict):
        raise InputError(f"{source} must be a JSON object of config fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    data = with_current_names(cls, data)
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InputError(f"{source}: unknown field(s) {', '.join(unknown)} for {cls.__name__}; "
                         f"allowed: {', '.join(names)}")
    checked = {k: check_type(v, hints[k], f"{source}: {k}") for k, v in data.items()}
    config = cls(**checked)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def with_current_names(cls: type[ExperimentConfig], data: dict[str, Any]) -> dict[str, Any]:
    """`data` with renamed fields (a field's metadata "aliases") under their current names."""
    data = dict(data)
    for f in dataclasses.fields(cls):
        for old in f.metadata.get("aliases", ()):
            if old in data:
                value = data.pop(old)
                data.setdefault(f.name, value)
    return data


def read_config_file(path: str | Path, experiment: Experiment) -> dict[str, Any]:
    """The config fields in a JSON file: a run's config.json (or its run folder), or a plain
    object of fields written by hand. Raises InputError with the reason when it cannot be used."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a JSON object, got {type(data).__name__}")
    if "record_version" in data or ("config" in data and "experiment" in data):
        check_record_version(data, source=path)
        if data.get("experiment") != experiment.name:
            raise InputError(f"config file {path} is from a {data.get('experiment')!r} run, not {experiment.name!r}")
        data = data["config"]
        if not isinstance(data, dict):
            raise InputError(f"config file {path}: 'config' must be a JSON object")
    return data


# ----------------------------------------------------------------------------- running
def load_experiment_model(config: ExperimentConfig):
    """The model a config names, on its device and in its dtype; the default model when it names
    none (its notice is in `model.notice`)."""
    from workbench.models.default import load_default_model
    from workbench.models.loading import load_model

    if config.device is not None:
        resolve_device(config.device)  # InputError for an unknown device or a GPU this machine lacks
    if config.model is None:
        return load_default_model(device=config.device, dtype=config.dtype, verbose=False)
    return load_model(config.model, device=config.device, dtype=config.dtype)


def prepare(experiment: Experiment, config: ExperimentConfig, model) -> ExperimentConfig:
    """The config completed for this model: its name, weights hashes, actual device and dtype, token ids.

    Raises InputError if the config records a different weights state sha256 or different token ids."""
    sha = check_weights(model, config.model_state_sha256)
    weights_file = getattr(model, "weights_file", None)
    if weights_file is not None and weights_file.stat().st_mtime_ns != getattr(model, "weights_file_mtime_ns", None):
        weights_file = None  # replaced since the model was loaded: its hash would not describe these weights
    config = with_tokens(experiment, config, model)
    # A model loaded from a path is recorded by its absolute path, so a replay from elsewhere finds it.
    name = str(Path(model.name).resolve()) if Path(model.name).exists() else model.name
    return dataclasses.replace(
        config, model=name, model_state_sha256=sha,
        model_file_sha256=file_sha256(weights_file) if weights_file is not None else None, device=str(model.device),
        dtype=str(model.dtype).removeprefix("torch."),
    )


def check_weights(model, state_sha256: str | None) -> str:
    """The state sha256 of `model`'s weights (`workbench.runs.model_state_sha256`); InputError when
    `state_sha256` is given and differs (not the weights a config was run with)."""
    sha = model_state_sha256(model)
    if state_sha256 and state_sha256 != sha:
        raise InputError(
            f"the weights of model {model.name!r} have state sha256 {sha}, but the config records "
            f"{state_sha256}: this is not the model the config was run with. Pass that model, or "
            "remove model_state_sha256 from the config to run anyway"
        )
    return sha


def with_tokens(experiment: Experiment, config: ExperimentConfig, model) -> ExperimentConfig:
    """The config resolved for this model (`experiment.resolve`) with its token ids filled in, what
    `experiment.compute` needs (the dashboard computes from it; `prepare` adds the weights' hash).

    Raises InputError if the config records token ids that differ from the prompts' tokenization."""
    if experiment.resolve is not None:
        config = experiment.resolve(config, model)
    tokens = {k: model.prepare_tokens(v).cpu().tolist() for k, v in experiment.tokens(config, model).items()}
    if config.token_ids:
        _check_token_ids(config.token_ids, tokens)
    return dataclasses.replace(config, token_ids=tokens)


def _check_token_ids(recorded: dict[str, list], now: dict[str, list]) -> None:
    if set(recorded) != set(now):
        raise InputError(f"the config's token_ids have roles {sorted(recorded)}, this experiment makes {sorted(now)}")
    for role, rows in now.items():
        if rows == recorded[role]:
            continue
        old = recorded[role]
        if len(old) != len(rows) or any(len(a) != len(b) for a, b in zip(old, rows)):
            shapes = f"{[len(r) for r in old]} tokens per row recorded, {[len(r) for r in rows]} now"
            raise InputError(f"token_ids[{role!r}] differ from the prompts' tokenization: {shapes}. "
                             "The tokenizer, the BOS setting or the prompt template changed")
        b, p = next((b, p) for b, (x, y) in enumerate(zip(old, rows)) for p in range(len(x)) if x[p] != y[p])
        raise InputError(f"token_ids[{role!r}] differ from the prompts' tokenization at row {b}, position {p}: "
                         f"recorded {old[b][p]}, now {rows[b][p]}. The tokenizer, the BOS setting or the "
                         "prompt template changed")


@dataclass
class Run:
    """A finished run: its complete config, results, and record folder (None when not recorded)."""

    experiment: str
    config: ExperimentConfig
    results: RunResults
    path: Path | None


def run_experiment(
    experiment: str | Experiment,
    config: ExperimentConfig | None = None,
    *,
    model=None,
    root: str | Path | None = "default",
    name: str | None = None,
    command: str | None = None,
    computed: Any = None,
) -> Run:
    """Run an experiment and record it under `root` ("default": `workbench.runs.default_runs_root()`;
    None: do not record).

    `model` defaults to the one the config names (loaded on its device and dtype); pass a loaded
    model to reuse it (the config then records that model's name, device and dtype). `computed`:
    the result `experiment.compute` already gave for this config and model (e.g. on a dashboard
    page), recorded as is instead of being computed again. Everything that can fail on bad input
    fails before anything is written."""
    experiment = get_experiment(experiment) if isinstance(experiment, str) else experiment
    config = config if config is not None else experiment.config()
    if not isinstance(config, experiment.config):
        raise InputError(f"{experiment.name} takes a {experiment.config.__name__}, got {type(config).__name__}")
    model = model if model is not None else load_experiment_model(config)
    device_given = config.device is not None
    config = prepare(experiment, config, model)
    torch.manual_seed(config.seed)
    if computed is not None and experiment.record is None:
        raise InputError(f"experiment {experiment.name!r} cannot record a computed result (no record step)")
    with torch.no_grad():
        results = experiment.record(config, model, computed) if computed is not None else experiment.run(config, model)
    path = None
    if isinstance(root, str) and root == "default":
        root = default_runs_root()
    if root is not None:
        path = record_run(
            results, experiment=experiment.name, config=config.to_dict(), root=root, name=name,
            command=command if command is not None else rerun_command(
                # The device only when it was asked for: the command should run on any machine.
                experiment, config if device_given else dataclasses.replace(config, device=None), root=root),
            env=environment(device=model.device),
        )
    return Run(experiment.name, config, results, path)


def rerun_command(experiment: Experiment, config: ExperimentConfig, *, root: str | Path | None = None) -> str:
    """One shell line that runs this config again: every option that applies, the model by the
    name it was loaded under and its weights' state sha256 (checked); the token ids are re-derived
    and so re-checked only by replay. `--out` only when `root` is not the default runs root."""
    import shlex

    argv = ["python", "-m", "workbench", "run", experiment.name, *config_to_argv(config)]
    if root is not None and Path(root).resolve() != default_runs_root().resolve():
        argv += ["--out", str(root)]
    return shlex.join(argv)


def config_to_argv(config: ExperimentConfig) -> list[str]:
    """Command-line options that rebuild `config`: every field that `config.applies`, but
    `token_ids` and the recorded-only fields."""
    argv: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not f.metadata.get("cli", True) or value is None or not config.applies(f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag, *map(str, value)] if value else []
        else:
            argv += [flag, str(value)]
    return argv
