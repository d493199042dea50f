"""Export a recorded run as a plain Python script or a Jupyter notebook that runs it again.

The script reads top to bottom like the run's methods section:

    imports
    RECORD = False                       # True: record the new run (then `workbench replay` it)
    config = <Experiment>Config(...)     # every option that applies, the exact token ids of the record
                                         # (the text beside each row as a comment)
    model = load_model(...)              # by name, on the recorded device and dtype;
    check_weights(model, ...)            # refused unless the weights are the recorded ones
    result = <library call>              # the experiment's own `script` body, every option spelled out
    results = record(config, model, result); print(results.summary); figures
    if RECORD: run_experiment(..., computed=result)

An experiment registered without a `script` body gets the generic one: build the config, then
`run_experiment(name, config, model=model)` (which computes, and records when RECORD is True).

The notebook holds the same code, one cell per section under a short markdown heading; it shows
the figures in the notebook, where the script writes them to `<figure>.html`. Both run offline
on a fresh checkout: the model is loaded by the name it was recorded under, and nothing else is
read from the record.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from workbench.errors import InputError
from workbench.experiments.core import (
    COMMON_FIELDS,
    Experiment,
    ExperimentConfig,
    config_from_dict,
    get_experiment,
)
from workbench.models.tokenizer import GPT2Tokenizer
from workbench.runs import RecordError, RunRecord, load_run

FORMATS = ("script", "notebook")
Format = Literal["script", "notebook"]
SUFFIX = {"script": ".py", "notebook": ".ipynb"}
COMMENT_CHARS = 70  # the text beside a row of token ids is cut to this many characters
# Recorded, not options: filled in again by the run (run_experiment's `prepare`).
NOT_WRITTEN = ("model_file_sha256",)


@dataclass
class Section:
    """One step of an exported run: a comment (script) or markdown heading (notebook), and its code."""

    heading: str | None
    code: str


@dataclass
class Export:
    """An exported run: its title, docstring text and sections, rendered by `script()` or `notebook()`."""

    title: str
    about: str
    sections: list[Section]

    def script(self) -> str:
        """Plain Python: a module docstring, then each section under its heading as a comment."""
        parts = [f'"""{self.title}\n\n{self.about}"""']
        for s in self.sections:
            parts.append((f"# {s.heading}\n" if s.heading else "") + s.code.replace("{FIGURE}", _SCRIPT_FIGURE))
        return "\n\n".join(parts) + "\n"

    def notebook(self) -> dict:
        """A Jupyter notebook (nbformat 4.5 JSON, as a dict): a title cell, then a markdown heading
        and a code cell per section. Written directly: exporting needs no Jupyter packages."""
        cells = [_cell("markdown", f"# {self.title}\n\n{self.about}")]
        for s in self.sections:
            if s.heading:
                cells.append(_cell("markdown", f"## {s.heading}"))
            cells.append(_cell("code", s.code.replace("{FIGURE}", _NOTEBOOK_FIGURE)))
        for i, cell in enumerate(cells):
            cell["id"] = f"cell-{i}"
        return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"},
                                             "language_info": {"name": "python"}},
                "nbformat": 4, "nbformat_minor": 5}


def _cell(kind: str, source: str) -> dict:
    lines = source.splitlines(keepends=True)
    if kind == "markdown":
        return {"cell_type": "markdown", "metadata": {}, "source": lines}
    return {"cell_type": "code", "metadata": {}, "source": lines, "outputs": [], "execution_count": None}


_SCRIPT_FIGURE = """for name, figure in results.figures.items():
    figure.write_html(f"{name}.html")  # open it in a browser"""
_NOTEBOOK_FIGURE = """for figure in results.figures.values():
    figure.show()"""


# ----------------------------------------------------------------------------- building
def export_run(run_dir: str | os.PathLike) -> Export:
    """The export of a run folder. RecordError for a folder that is not a readable run (or one of
    another record version); InputError for an experiment this workbench does not have."""
    record = load_run(run_dir)
    try:
        experiment = get_experiment(record.experiment)
        config = config_from_dict(experiment.config, record.config, source=str(record.path / "config.json"))
    except InputError as e:
        raise RecordError(f"cannot export {record.path}: {e}") from None
    return build_export(experiment, config, record)


def build_export(experiment: Experiment, config: ExperimentConfig, record: RunRecord) -> Export:
    """The sections of an exported run of `experiment` with the complete `config`."""
    cls = experiment.config
    body = experiment.script(config) if experiment.script is not None else None
    imports = ["import torch"] if body is not None else []  # the body's ids; no gradients
    imports += ["from workbench import load_model",
                "from workbench.experiments.core import check_weights, run_experiment",
                f"from {cls.__module__} import {cls.__name__}" + (", record" if body is not None else ""),
                *(body.imports if body is not None else ())]
    sections = [
        Section(None, "\n".join(_sorted_imports(imports))),
        Section(None, "RECORD = False  # True: record the result as a new run (then: workbench replay <run>)"),
        Section("The config: every option that applies, and the exact token ids of the record",
                config_source(config)),
        Section("The model, by name, refused unless its weights are the recorded ones (state sha256)",
                "model = load_model(config.model, device=config.device, dtype=config.dtype)\n"
                "check_weights(model, config.model_state_sha256)"
                + ("\ntorch.set_grad_enabled(False)  # as run_experiment runs" if body is not None else "")),
    ]
    if body is not None:
        sections += [
            Section(body.heading, body.code.strip()),
            Section("Summary and figures", "results = record(config, model, result)\nprint(results.summary)\n{FIGURE}"),
            Section("Record it as a new run (RECORD = True)",
                    f"if RECORD:\n    run = run_experiment({literal(experiment.name)}, config, model=model, "
                    "computed=result)\n"
                    '    print(f"Recorded run: {run.path}")'),
        ]
    else:
        sections += [
            Section(f"Run the experiment ({experiment.description or experiment.name}); RECORD = True also "
                    "records it", f'run = run_experiment({literal(experiment.name)}, config, model=model, '
                    'root="default" if RECORD else None)\nif run.path is not None:\n'
                    '    print(f"Recorded run: {run.path}")'),
            Section("Summary and figures", "results = run.results\nprint(results.summary)\n{FIGURE}"),
        ]
    env = record.env
    commit = env.get("git_commit")
    made_by = f"workbench {env.get('workbench', '?')}" + (f" (commit {commit[:10]})" if commit else "")
    about = f"From {record.path}, recorded {record.created} by {made_by}."
    return Export(f"The {experiment.name} run {record.path.name}: runs as it is, offline; edit freely.", about,
                  sections)


def _sorted_imports(lines: list[str]) -> list[str]:
    """Standard-library and third-party imports first (as given), then workbench's, sorted."""
    head = list(dict.fromkeys(line for line in lines if not line.startswith(("from workbench", "import workbench"))))
    ours = sorted({line for line in lines if line.startswith(("from workbench", "import workbench"))})
    return head + ([""] if head else []) + ours


def config_source(config: ExperimentConfig) -> str:
    """`config = <Config>(...)`: every field that applies (`config.applies`), one per line, the
    experiment's own options after the model's, and last the token ids, one row per line with the
    row's text beside it."""
    fields = [f for f in dataclasses.fields(config) if f.name not in NOT_WRITTEN and config.applies(f.name)]
    fields.sort(key=lambda f: (f.name == "token_ids", f.name not in COMMON_FIELDS))
    lines = [f"config = {type(config).__name__}("]
    for f in fields:
        value = getattr(config, f.name)
        if f.name == "token_ids":
            lines += _token_ids_source(value)
        else:
            lines.append(f"    {f.name}={literal(value)},")
    lines.append(")")
    return "\n".join(lines)


def literal(value) -> str:
    """A config value as Python source, strings in double quotes as in the rest of the code."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _token_ids_source(token_ids: dict[str, list[list[int]]]) -> list[str]:
    tokenizer = GPT2Tokenizer()
    lines = ["    token_ids={"]
    for role, rows in token_ids.items():
        start = f"        {literal(role)}: ["
        for i, row in enumerate(rows):
            end = "]," if i == len(rows) - 1 else ","
            lines.append(f"{start if i == 0 else ' ' * len(start)}{row!r}{end}  # {_comment(tokenizer.decode(row))}")
    lines.append("    },")
    return lines


def _comment(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= COMMENT_CHARS else shown[:COMMENT_CHARS - 4] + "...'"


# ----------------------------------------------------------------------------- writing
def write_export(run_dir: str | os.PathLike, *, to: Format = "script", out: str | os.PathLike | None = None) -> Path:
    """Write a run's export (`to`: "script" or "notebook") to `out` (default: `<experiment>_<run>.py`
    or `.ipynb` in the working directory) and return its path. An existing file is not replaced."""
    if to not in FORMATS:
        raise InputError(f"export format must be one of {', '.join(FORMATS)}, got {to!r}")
    export = export_run(run_dir)
    record_path = Path(run_dir)
    path = Path(out) if out is not None else Path(f"{record_path.parent.name}_{record_path.name}{SUFFIX[to]}")
    if path.is_dir():
        path = path / f"{record_path.parent.name}_{record_path.name}{SUFFIX[to]}"
    if path.exists():
        raise InputError(f"{path} exists; give another --out (an export never replaces a file)")
    path.write_text(render(export, to), encoding="utf-8")
    return path


def render(export: Export, to: Format) -> str:
    """The text of an export as a script or as notebook JSON."""
    if to == "script":
        return export.script()
    return json.dumps(export.notebook(), indent=1, ensure_ascii=False) + "\n"
