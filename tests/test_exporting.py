"""Exported runs (`workbench export`), run comparison (`workbench diff`), delete and tidy.

Every registered experiment (the registry is walked, so a new experiment is covered) is recorded
on the bundled model (or a tiny one), exported as a script and as a notebook, and the export is
executed as a user runs it (a subprocess; nbclient): with RECORD = True it records a new run,
whose results must be the record's, bit for bit, by replay's own comparison."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench import cli
from workbench.experiments import EXPERIMENTS, config_from_dict, run_experiment
from workbench.experiments.comparing import compare_runs, join_tables
from workbench.experiments.exporting import build_export, export_run
from workbench.experiments.replaying import EXACT, compare_results
from workbench.runs import RecordError, delete_run, find_runs, find_unfinished, load_run

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# Small settings (seconds on a CPU); an experiment not listed runs with its defaults.
SMALL = {
    "attention_heads": {"n_seqs": 2, "seq_len": 6},
    "logit_lens": {"top_k": 3},
    "activation_patching": {"n_prompts": 2},
    "ablate_heads": {"n_prompts": 2},
}
# Every experiment, and the variants whose library call differs (attribution patching: its own script body).
CASES = [(name, {}) for name in sorted(EXPERIMENTS)] + [("activation_patching", {"method": "attribution"})]
CASE_IDS = [name + "-" + "-".join(map(str, fields.values())) if fields else name for name, fields in CASES]
TODAY = ("attention_heads", "logit_lens", "activation_patching", "ablate_heads")
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(autouse=True)
def _restore_determinism():
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def record(name: str, model: str, root: Path, **fields) -> Path:
    experiment = EXPERIMENTS[name]
    config = config_from_dict(experiment.config, {"model": model, "device": "cpu", **SMALL.get(name, {}), **fields})
    return run_experiment(experiment, config, root=root).path


def env(runs: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "WORKBENCH_RUNS": str(runs)}


def with_record_on(source: str) -> str:
    """What a user does to record the new run: set RECORD = True."""
    assert source.count("RECORD = False") == 1
    return source.replace("RECORD = False", "RECORD = True")


def assert_reproduces(original: Path, runs: Path) -> None:
    (new,) = find_runs(runs)
    a, b = load_run(original), load_run(new)
    assert b.experiment == a.experiment
    assert b.config == a.config  # every option, the weights' hashes and the exact token ids
    comparisons = compare_results(a.results(), b.results(), EXACT)  # as replay compares
    assert comparisons and all(c.ok for c in comparisons), [c for c in comparisons if not c.ok]


def run_script(path: Path, runs: Path, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([PY, str(path)], capture_output=True, text=True, env=env(runs), cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def generic(name: str):
    """The experiment as if it had no `script` body of its own (the fallback every new one gets)."""
    return dataclasses.replace(EXPERIMENTS[name], script=None)


# ----------------------------------------------------------------------------- export reproduces
@pytest.mark.parametrize("name, fields", CASES, ids=CASE_IDS)
def test_exported_script_reproduces_the_run(name, fields, experiment_model, tmp_path):
    original = record(name, experiment_model, tmp_path / "runs", **fields)
    assert cli.main(["export", str(original), "--to", "script", "--out", str(tmp_path / "run.py")]) == 0
    (tmp_path / "record.py").write_text(with_record_on((tmp_path / "run.py").read_text()))
    proc = run_script(tmp_path / "record.py", tmp_path / "new", tmp_path)
    assert_reproduces(original, tmp_path / "new")
    assert (original / "summary.txt").read_text().splitlines()[0] in proc.stdout
    assert {p.stem for p in tmp_path.glob("*.html")} == {p.stem for p in load_run(original).figures()}


def test_exported_script_as_it_is_records_nothing(experiment_model, tmp_path):
    original = record("logit_lens", experiment_model, tmp_path / "runs")
    assert cli.main(["export", str(original), "--out", str(tmp_path)]) == 0
    (script,) = tmp_path.glob("*.py")
    assert script.name == f"logit_lens_{original.name}.py"
    proc = run_script(script, tmp_path / "not-recorded", tmp_path)
    assert not (tmp_path / "not-recorded").exists()
    assert (original / "summary.txt").read_text().strip() in proc.stdout  # the same summary, every digit
    assert (tmp_path / "logit_lens.html").is_file()


def test_generic_export_reproduces_the_run(experiment_model, tmp_path):
    """The fallback for experiments without a script body of their own: the config, then
    run_experiment (what an experiment added later gets until it has its own body)."""
    name = "attention_heads"
    original = record(name, experiment_model, tmp_path / "runs")
    rec = load_run(original)
    config = config_from_dict(EXPERIMENTS[name].config, rec.config)
    source = build_export(generic(name), config, rec).script()
    assert f'run_experiment("{name}", config' in source
    (tmp_path / "run.py").write_text(with_record_on(source))
    run_script(tmp_path / "run.py", tmp_path / "new", tmp_path)
    assert_reproduces(original, tmp_path / "new")


@pytest.mark.parametrize("name, fields", CASES, ids=CASE_IDS)
def test_exported_notebook_reproduces_the_run(name, fields, experiment_model, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    original = record(name, experiment_model, tmp_path / "runs", **fields)
    assert cli.main(["export", str(original), "--to", "notebook", "--out", str(tmp_path / "run.ipynb")]) == 0
    nb = nbformat.read(tmp_path / "run.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and any(c.source.startswith("## ") for c in nb.cells)
    for cell in nb.cells:
        if cell.cell_type == "code" and "RECORD = False" in cell.source:
            cell.source = with_record_on(cell.source)
    for key, value in env(tmp_path / "new").items():
        monkeypatch.setenv(key, value)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert_reproduces(original, tmp_path / "new")
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert (original / "summary.txt").read_text().splitlines()[0] in outputs


# ----------------------------------------------------------------------------- export reads well
@pytest.mark.parametrize("name, fields", CASES, ids=CASE_IDS)
def test_exported_script_reads_well(name, fields, experiment_model, tmp_path):
    """pyflakes-clean (no unused imports or names), under 66 lines besides the token-id rows (one
    per prompt, answer, ...; 60, plus the prompt-set experiments' per-prompt interval options), the
    model by name with its weights checked, every row of ids with its text."""
    pyflakes = pytest.importorskip("pyflakes.api")
    original = record(name, experiment_model, tmp_path / "runs", **fields)
    rec = load_run(original)
    source = export_run(original).script()
    from pyflakes.reporter import Reporter
    import io

    out = io.StringIO()
    assert pyflakes.check(source, "exported.py", Reporter(out, out)) == 0, out.getvalue()
    lines = source.splitlines()
    id_rows = [line for line in lines if re.search(r"\[[\d, ]+\]\]?,  # '", line)]
    assert len(id_rows) == sum(len(rows) for rows in rec.config["token_ids"].values())
    assert len(lines) - len(id_rows) < 66, len(lines)
    assert f'model="{rec.config["model"]}"' in source and rec.config["model_state_sha256"] in source
    assert "check_weights(model, config.model_state_sha256)" in source
    for rows in rec.config["token_ids"].values():
        for row in rows:
            assert repr(row) in source  # the exact ids
    assert "RECORD = False" in source and "token_ids={" in source


def test_exported_config_writes_only_the_options_that_apply(experiment_model, tmp_path):
    """A custom prompt pair: its prompts and answers, no sampling or IOI options (as the re-run
    command); the prompt text beside its ids."""
    original = record("activation_patching", experiment_model, tmp_path / "runs", prompt_set="custom",
                      clean_prompts=[CLEAN], corrupted_prompts=[CORRUPTED], answers=[" Mary"], wrong_answers=[" John"])
    source = export_run(original).script()
    assert f'clean_prompts=["{CLEAN}"]' in source and 'answers=[" Mary"]' in source
    assert "\n    n_prompts=" not in source and "ioi_" not in source and "seq_len=" not in source
    assert f"# '<|endoftext|>{CLEAN[:40]}" in source
    assert "# ' Mary'" in source


# ----------------------------------------------------------------------------- export: bad input
def test_export_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("hi")
    assert cli.main(["export", str(tmp_path / "notes"), "--out", str(tmp_path / "x.py")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: cannot export:") and "not a complete run folder" in err
    assert cli.main(["export", str(tmp_path / "missing")]) == 3
    assert "no run folder" in capsys.readouterr().err
    assert not (tmp_path / "x.py").exists()


def test_export_of_an_older_record(experiment_model, tmp_path, capsys):
    """A record of another format version: one clear line, nothing written; a record from before
    the weights-hash rename exports under today's field name."""
    path = record("logit_lens", experiment_model, tmp_path / "runs")
    header = json.loads((path / "config.json").read_text())
    header["config"]["model_sha256"] = header["config"].pop("model_state_sha256")
    (path / "config.json").write_text(json.dumps(header))
    source = export_run(path).script()
    assert f'model_state_sha256="{header["config"]["model_sha256"]}"' in source and "model_sha256=" not in source
    header["record_version"] = 0
    (path / "config.json").write_text(json.dumps(header))
    assert cli.main(["export", str(path), "--out", str(tmp_path / "x.py")]) == 3
    err = capsys.readouterr().err
    assert "record format version 0" in err and "reads and writes version 1" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.py").exists()


def test_export_never_replaces_a_file(experiment_model, tmp_path, capsys):
    path = record("logit_lens", experiment_model, tmp_path / "runs")
    (tmp_path / "x.py").write_text("mine")
    assert cli.main(["export", str(path), "--out", str(tmp_path / "x.py")]) == 2
    assert "exists" in capsys.readouterr().err and (tmp_path / "x.py").read_text() == "mine"


# ----------------------------------------------------------------------------- diff
def test_diff_of_runs_that_differ_only_in_seed(experiment_model, tmp_path, capsys):
    a = record("ablate_heads", experiment_model, tmp_path / "runs", method="resample", seed=0)
    b = record("ablate_heads", experiment_model, tmp_path / "runs", method="resample", seed=1)
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(b)]) == 1
    text = capsys.readouterr().out
    diff = compare_runs(a, b)
    config_keys = {d.key for d in diff.differences if d.where == "config"}
    assert "seed" in config_keys and config_keys <= {"seed", "token_ids['clean']", "token_ids['corrupted']"}
    assert not {d.key for d in diff.differences if d.where == "environment"}  # same machine, same code
    assert [line for line in text.splitlines() if line.strip().startswith("config") and " seed " in line][0] \
        .rstrip().endswith("0 -> 1")
    assert text.strip().splitlines()[-1].startswith("different: ") and "values" in text.splitlines()[-1]
    # B - A, against the recorded tensors themselves
    ta, tb = load_run(a).tensors(), load_run(b).tensors()
    torch.testing.assert_close(diff.tensor_differences()["values"], tb["values"].double() - ta["values"].double())
    heads = diff.joined_tables()["heads"]
    row = heads[(heads["layer"] == 1) & (heads["head"] == 0)].iloc[0]
    va = load_run(a).tables()["heads"].set_index(["layer", "head"]).loc[(1, 0), "value"]
    vb = load_run(b).tables()["heads"].set_index(["layer", "head"]).loc[(1, 0), "value"]
    assert (row["value (A)"], row["value (B)"]) == (va, vb) and row["value (B - A)"] == pytest.approx(vb - va)


def test_diff_of_activation_and_attribution_patching(experiment_model, tmp_path):
    """The same prompts patched both ways: the method is the one config difference, and the joined
    patching table gives the estimate's error per cell (B - A, against the recorded tables)."""
    a = record("activation_patching", experiment_model, tmp_path / "runs", target="head_out")
    b = record("activation_patching", experiment_model, tmp_path / "runs", target="head_out", method="attribution")
    diff = compare_runs(a, b)
    assert [(d.key, d.a, d.b) for d in diff.differences if d.where == "config"] == [("method", "activation",
                                                                                      "attribution")]
    assert diff.verdict == "different"
    joined = diff.joined_tables()["patching"].set_index(["layer", "head"])
    ta, tb = (load_run(r).tables()["patching"].set_index(["layer", "head"]) for r in (a, b))
    assert joined["value (B - A)"].to_numpy() == pytest.approx((tb["value"] - ta["value"]).loc[joined.index].to_numpy())


def test_diff_of_a_run_and_its_rerun_is_same(experiment_model, tmp_path, capsys):
    a = record("attention_heads", experiment_model, tmp_path / "runs")
    assert cli.main(["run", "attention_heads", "--config", str(a), "--out", str(tmp_path / "again")]) == 0
    (b,) = find_runs(tmp_path / "again")
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(b)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("same: ")


def test_diff_of_runs_of_different_models_says_so_first(experiment_model, tiny_model_dir, tmp_path, capsys):
    a = record("logit_lens", experiment_model, tmp_path / "runs")
    b = record("logit_lens", str(tiny_model_dir), tmp_path / "runs")
    if load_run(a).config["model_state_sha256"] == load_run(b).config["model_state_sha256"]:
        pytest.fail("the test needs two different models")
    capsys.readouterr()
    cli.main(["diff", str(a), str(b)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].strip().startswith("different models: ")
    assert experiment_model in lines[2] and str(tiny_model_dir) in lines[2]


def test_diff_of_runs_of_different_experiments(experiment_model, tmp_path, capsys):
    a = record("logit_lens", experiment_model, tmp_path / "runs")
    b = record("attention_heads", experiment_model, tmp_path / "runs")
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "different experiments: A is logit_lens, B is attention_heads" in text
    assert "top_k" in text and "n_seqs" in text  # the config difference
    assert "Results" not in text and text.strip().splitlines()[-1].startswith("not compared: ")
    diff = compare_runs(a, b)
    assert diff.comparisons == [] and diff.tensor_differences() == {}


def test_diff_of_an_older_record(experiment_model, tmp_path, capsys):
    a = record("logit_lens", experiment_model, tmp_path / "runs")
    b = record("logit_lens", experiment_model, tmp_path / "runs")
    header = json.loads((b / "config.json").read_text())
    header.pop("record_version")
    (b / "config.json").write_text(json.dumps(header))
    assert cli.main(["diff", str(a), str(b)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: unreadable record:") and "no record_version" in err


def test_join_tables_by_cell_and_by_row():
    import pandas as pd

    a = pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "value": [1.0, 2.0, 3.0], "rank": [3, 2, 1]})
    b = pd.DataFrame({"layer": [1, 0, 0], "head": [0, 0, 1], "value": [3.5, 1.0, 2.0], "rank": [1, 3, 2]})
    joined = join_tables(a, b).sort_values(["layer", "head"])
    assert joined["value (B - A)"].tolist() == [0.0, 0.0, 0.5]
    assert "rank" in joined and "rank (A)" not in joined  # equal per cell: shown once
    rows = join_tables(pd.DataFrame({"text": ["x", "y"]}), pd.DataFrame({"text": ["x", "z"]}))
    assert rows["text (B)"].tolist() == ["x", "z"] and rows["row"].tolist() == [0, 1]


# ----------------------------------------------------------------------------- delete and tidy
def test_delete_asks_and_refuses_what_is_not_a_run(experiment_model, tmp_path, capsys, monkeypatch):
    path = record("logit_lens", experiment_model, tmp_path / "runs")
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert cli.main(["delete", str(path)]) == 0 and path.is_dir()
    assert "Nothing deleted" in capsys.readouterr().out
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert cli.main(["delete", str(path)]) == 0 and not path.exists()
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "data.txt").write_text("mine")
    assert cli.main(["delete", str(tmp_path / "keep"), "--yes"]) == 3
    assert "not a run folder" in capsys.readouterr().err and (tmp_path / "keep" / "data.txt").exists()


def test_tidy_lists_and_removes_temporary_folders(experiment_model, tmp_path, capsys):
    path = record("logit_lens", experiment_model, tmp_path / "runs")
    tmp = path.parent / ".tmp-20260101T000000Z-dead-1"
    tmp.mkdir()
    (tmp / "env.json").write_text("{}")
    assert cli.main(["tidy", "--root", str(tmp_path / "runs")]) == 0
    assert str(tmp) in capsys.readouterr().out and tmp.is_dir()
    assert cli.main(["tidy", "--root", str(tmp_path / "runs"), "--remove"]) == 0
    assert not tmp.exists() and find_unfinished(tmp_path / "runs") == [] and path.is_dir()
    tmp.mkdir()
    with pytest.raises(RecordError, match="temporary folder of an unfinished run"):
        delete_run(tmp)
