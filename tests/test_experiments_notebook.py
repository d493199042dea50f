"""notebooks/quickstart.ipynb executes top to bottom (nbclient), on the bundled or a tiny model."""

import os
import re
from pathlib import Path

import pytest

from workbench.runs import find_runs, load_run

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(experiment_model, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("WORKBENCH_MODEL", experiment_model)
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(NOTEBOOK.parents[1]), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "MATCH" in outputs
    from workbench.models.bundled import DEFAULT_BUNDLED

    if experiment_model == DEFAULT_BUNDLED:  # the demo is a task the bundled model does: induction
        clean, corrupted = map(float, re.search(r"clean (\S+), corrupted (\S+)", outputs).groups())
        assert clean > 2 and corrupted < -2, (clean, corrupted)
    (run,) = find_runs(tmp_path / "runs")
    record = load_run(run)
    assert record.experiment == "activation_patching"
    # A custom prompt pair: the re-run command carries its prompts and none of the IOI options.
    assert "--clean-prompts" in record.command and "--prompt-set custom" in record.command
    assert "--n-prompts" not in record.command and "--ioi-" not in record.command


def test_notebook_records_where_the_scripts_and_dashboard_do(experiment_model, monkeypatch):
    """Started in notebooks/ with no WORKBENCH_RUNS, the notebook's runs folder is the checkout's
    runs/ (what `workbench runs` and the dashboard read), not notebooks/runs. Nothing is recorded."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    checkout = NOTEBOOK.parents[1]
    monkeypatch.delenv("WORKBENCH_RUNS", raising=False)
    monkeypatch.setenv("WORKBENCH_MODEL", experiment_model)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code" and "RUNS =" in c.source)
    nb.cells = [setup, nbformat.v4.new_code_cell("import pathlib; print('RUNS:', pathlib.Path(RUNS).resolve())")]
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert f"RUNS: {checkout / 'runs'}\n" in text, text
