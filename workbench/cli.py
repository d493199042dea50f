"""The `workbench` command (also `python -m workbench`):

    workbench run EXPERIMENT [options]      run a registered experiment and record it
    workbench replay RUN_DIR                re-run a recorded run and compare every result
    workbench runs [--root DIR]             list recorded runs (unreadable ones marked)
    workbench experiments                   list registered experiments
    workbench export RUN_DIR --to script    a run as an editable Python script (or --to notebook)
    workbench diff RUN_A RUN_B              what differs between two runs: config, environment, results
    workbench delete RUN_DIR                delete a run (asks first; --yes does not)
    workbench tidy [--remove]               list (and remove) the temporary folders of killed runs

The runs root defaults to $WORKBENCH_RUNS, else runs/ of the workbench checkout when working
inside it, else ./runs.

Exit status:
  0    success; for replay: MATCH, every compared result reproduced; for diff: the results are
       the same or within tolerance
  1    replay: MISMATCH, the record was read but results differ; diff: the results differ
  2    bad input: an option, a config or a model that cannot be used (nothing is written)
  3    replay, export, diff: a record cannot be read (not a run folder; missing, incomplete,
       corrupt or truncated files; another record version); nothing was run or written
  130  interrupted (nothing is written)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import typing
from typing import Literal

from workbench.errors import InputError, WorkbenchError

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT, EXIT_UNREADABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
REPLAY_EXIT_CODES = f"""exit status:
  {EXIT_OK}    MATCH: every compared result reproduced
  {EXIT_MISMATCH}    MISMATCH: the record was read, and results differ
  {EXIT_BAD_INPUT}    bad input (an option, or a model that is not the recorded one)
  {EXIT_UNREADABLE}    the record cannot be read: missing, incomplete, corrupt or truncated files, or
       another record version (nothing was run)
  {EXIT_INTERRUPTED}  interrupted"""

# ----------------------------------------------------------------------------- options from configs
def add_config_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per config field (`--top-k`, `--prompts A B`, `--prepend-bos/--no-prepend-bos`),
    each defaulting to "not given" so that --config values are only overridden when asked."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            tp = args[0]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f.metadata.get("help", "")
        if default is not None and default != []:
            text = f"{text} (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"
        kwargs: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": text.strip()}
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is list:
            (item,) = typing.get_args(tp)
            kwargs.update(nargs="+", **_scalar(item, f.name.removesuffix("s")))
        else:
            kwargs.update(_scalar(tp, f.name))
        flags = ["--" + n.replace("_", "-") for n in (f.name, *f.metadata.get("aliases", ()))]
        parser.add_argument(*flags, **kwargs)


def _scalar(tp, name: str) -> dict:
    if typing.get_origin(tp) is Literal:
        return {"choices": list(typing.get_args(tp))}
    return {"type": tp, "metavar": name.upper()}


def add_run_options(parser: argparse.ArgumentParser, experiment) -> None:
    add_config_options(parser, experiment.config)
    parser.add_argument("--config", metavar="FILE", help="JSON config: a previous run's config.json (or its "
                        "folder) or an object of the options above written by hand; options given here override it")
    parser.add_argument("--out", metavar="DIR", help="runs root: the run goes to DIR/%(prog)s... (default: "
                        "$WORKBENCH_RUNS, else runs/ of the workbench checkout when inside it, else ./runs)"
                        .replace("%(prog)s", experiment.name + "/<UTC time>-<id>"))
    parser.add_argument("--name", help="a label appended to the run folder's name (sanitised)")


def build_config(experiment, args: argparse.Namespace):
    """defaults <- --config FILE <- options given on the command line."""
    from workbench.experiments.core import config_from_dict, read_config_file, with_current_names

    fields = {f.name for f in dataclasses.fields(experiment.config)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    data: dict = {}
    if args.config is not None:
        data = with_current_names(experiment.config, read_config_file(args.config, experiment))
        if set(given) - {"device", "model_state_sha256"}:
            data.pop("token_ids", None)  # recomputed from the (changed) options
        if ({"model", "dtype"} & set(given)) and "model_state_sha256" not in given:
            data.pop("model_state_sha256", None)  # other weights, or other rounding of them
    data.update(given)
    return config_from_dict(experiment.config, data, source=args.config or "options")


def run_command(experiment_name: str, args: argparse.Namespace) -> int:
    from workbench.experiments import get_experiment, load_experiment_model, run_experiment
    experiment = get_experiment(experiment_name)
    config = build_config(experiment, args)
    model = load_experiment_model(config)
    if getattr(model, "notice", None):
        print(model.notice)
    root = args.out if args.out is not None else "default"
    run = run_experiment(experiment, config, model=model, root=root, name=args.name)
    if run.results.summary:
        print(run.results.summary)
    print(f"Recorded run: {run.path}")
    print(f"Replay it:    python -m workbench replay {shlex.quote(str(run.path))}")
    print(f"Re-run it:    {(run.path / 'command').read_text().strip()}")
    return 0


# ----------------------------------------------------------------------------- subcommands
def replay_command(args: argparse.Namespace) -> int:
    from workbench.experiments import replay
    from workbench.runs import RecordError

    try:
        report = replay(args.run_dir, device=args.device, dtype=args.dtype)
    except RecordError as e:
        print(f"error: unreadable record: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(report.format())
    return EXIT_OK if report.ok else EXIT_MISMATCH


def runs_command(args: argparse.Namespace) -> int:
    import pandas as pd

    from workbench.runs import default_runs_root, find_unfinished, list_runs

    root = args.root if args.root is not None else default_runs_root()
    table = list_runs(root)
    if args.experiment:
        table = table[table["experiment"] == args.experiment]
    if table.empty:
        print(f"no recorded runs under {root}")
    else:
        with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 60):
            print(table.drop(columns=["path"]).to_string(index=False))
        unreadable = int(table["status"].str.startswith("unreadable").sum())
        if unreadable:
            print(f"{unreadable} run(s) cannot be read (status 'unreadable'); replay would refuse them")
    unfinished = find_unfinished(root)
    if unfinished:
        print(f"{len(unfinished)} unfinished run folder(s) left by killed runs (not runs; `workbench tidy --remove` "
              "deletes them): "
              + ", ".join(str(p) for p in unfinished[:3]) + (" ..." if len(unfinished) > 3 else ""))
    return 0


def export_command(args: argparse.Namespace) -> int:
    from workbench.experiments.exporting import write_export
    from workbench.runs import RecordError

    try:
        path = write_export(args.run_dir, to=args.to, out=args.out)
    except RecordError as e:
        print(f"error: cannot export: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(f"Wrote {path}")
    print(f"Run it: {'python' if args.to == 'script' else 'jupyter execute'} {shlex.quote(str(path))}")
    return EXIT_OK


def diff_command(args: argparse.Namespace) -> int:
    from workbench.experiments.comparing import compare_runs
    from workbench.runs import RecordError

    try:
        diff = compare_runs(args.run_a, args.run_b)
    except RecordError as e:
        print(f"error: unreadable record: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(diff.format())
    return EXIT_MISMATCH if diff.verdict == "different" else EXIT_OK


def delete_command(args: argparse.Namespace) -> int:
    from workbench.runs import RecordError, delete_run

    try:
        if not args.yes:
            answer = input(f"Delete the run {args.run_dir} and everything in it? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("Nothing deleted.")
                return EXIT_OK
        path = delete_run(args.run_dir)
    except RecordError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    except EOFError:
        print("error: no answer (stdin closed); pass --yes to delete without asking", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"Deleted {path}")
    return EXIT_OK


def tidy_command(args: argparse.Namespace) -> int:
    from workbench.runs import default_runs_root, find_unfinished, remove_unfinished

    root = args.root if args.root is not None else default_runs_root()
    found = find_unfinished(root)
    if not found:
        print(f"no temporary folders under {root}")
        return EXIT_OK
    if args.remove:
        for path in remove_unfinished(root):
            print(f"removed {path}")
    else:
        print(f"{len(found)} temporary folder(s) left by killed runs (not runs; `--remove` deletes them):")
        for path in found:
            print(f"  {path}")
    return EXIT_OK


def experiments_command(args: argparse.Namespace) -> int:
    from workbench.experiments import EXPERIMENTS

    for name, exp in sorted(EXPERIMENTS.items()):
        print(f"{name:20} {exp.description}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    from workbench.experiments import EXPERIMENTS

    parser = argparse.ArgumentParser(prog="workbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a registered experiment and record it")
    exp_sub = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, exp in sorted(EXPERIMENTS.items()):
        add_run_options(exp_sub.add_parser(name, help=exp.description, description=exp.description), exp)

    p = sub.add_parser("replay", help="re-run a recorded run and compare every result with the record",
                       description="Re-run a recorded run from its config.json and compare every result with "
                       "the record.", epilog=REPLAY_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. runs/ablate_heads/<UTC time>-<id>")
    p.add_argument("--device", help="replay on this device (default: the recorded one; the CPU if it was CUDA "
                   "and there is none)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="replay in this dtype "
                   "(default: the recorded one); results are then compared within a tolerance")

    p = sub.add_parser("runs", help="list recorded runs")
    p.add_argument("--root", help="runs root (default: $WORKBENCH_RUNS, else runs/ of the workbench checkout "
                   "when inside it, else ./runs)")
    p.add_argument("--experiment", help="only this experiment's runs")

    sub.add_parser("experiments", help="list registered experiments")

    p = sub.add_parser("export", help="write a run as an editable Python script or Jupyter notebook",
                       description="Write a recorded run as a plain Python script or a notebook that runs it again: "
                       "the model by name (weights checked), the exact token ids, the library call with every option, "
                       "the summary and figures; set RECORD = True in it to record the new run.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder")
    p.add_argument("--to", choices=["script", "notebook"], default="script", help="script (.py) or notebook (.ipynb)")
    p.add_argument("--out", metavar="PATH", help="file (or folder) to write (default: <experiment>_<run>.py or "
                   ".ipynb here); an existing file is never replaced")

    p = sub.add_parser("diff", help="compare two runs: config, environment and results",
                       description="What differs between two runs (config, environment) and their results compared "
                       "as replay compares them, with a verdict: same / within tolerance / different.")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")

    p = sub.add_parser("delete", help="delete a run folder (asks first)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--yes", action="store_true", help="do not ask")

    p = sub.add_parser("tidy", help="list, and with --remove delete, the temporary folders of killed runs")
    p.add_argument("--root", help="runs root (default: as for `workbench runs`)")
    p.add_argument("--remove", action="store_true", help="delete them")
    return parser


def make_deterministic() -> None:
    """Deterministic kernels where torch has them (recorded in env.json as deterministic_algorithms)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs this to be deterministic
    torch.use_deterministic_algorithms(True, warn_only=True)


def guarded(fn, *args) -> int:
    """Run a command; bad input (any WorkbenchError) -> a one-line message and status 2, Ctrl-C ->
    status 130."""
    try:
        return fn(*args)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: nothing was recorded", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    make_deterministic()
    if args.command == "run":
        return guarded(run_command, args.experiment, args)
    if args.command == "replay":
        return guarded(replay_command, args)
    if args.command == "runs":
        return guarded(runs_command, args)
    commands = {"export": export_command, "diff": diff_command, "delete": delete_command, "tidy": tidy_command}
    if args.command in commands:
        return guarded(commands[args.command], args)
    return guarded(experiments_command, args)


def experiment_main(name: str, argv: list[str] | None = None, *, description: str | None = None) -> int:
    """The body of an `experiments/<name>.py` script: its options, then run, record, summarise."""
    from workbench.experiments import get_experiment

    try:
        experiment = get_experiment(name)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=description or experiment.description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser, experiment)
    args = parser.parse_args(argv)
    make_deterministic()
    return guarded(run_command, name, args)
