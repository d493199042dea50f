"""Experiment scripts end to end: each writes a complete record that replays to a match; altered
results fail replay; --config reproduces a run; bad input exits non-zero and writes nothing."""

import json
import re
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from workbench import cli
from workbench.experiments import EXPERIMENTS
from workbench.runs import RECORD_VERSION, find_runs, load_run

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# Small settings per experiment: seconds on a CPU, on the bundled model or a tiny one.
SMALL = {
    "attention_heads": ["--n-seqs", "2", "--seq-len", "6"],
    "logit_lens": ["--top-k", "3"],
    "activation_patching": ["--n-prompts", "2", "--target", "resid_pre"],
    "ablate_heads": ["--n-prompts", "2", "--method", "mean"],
    "dla": ["--n-prompts", "2"],
    "path_patching": ["--n-prompts", "2"],
    "circuit": ["--n-prompts", "2", "--seq-len", "4", "--steps", "2", "--exact-top", "8", "--points", "5"],
}
SCRIPTS = sorted(name for name in SMALL if name in EXPERIMENTS)


@pytest.fixture(autouse=True)
def _restore_determinism():
    # cli.main() turns deterministic algorithms on for its process; keep the test process as it was.
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def run_cli(*argv) -> int:
    return cli.main([str(a) for a in argv])


def small_run(name, model, out, *extra) -> Path:
    """Run an experiment in-process with small settings; the path of its record."""
    before = set(find_runs(out))
    assert run_cli("run", name, "--model", model, "--device", "cpu", "--out", out, *SMALL[name], *extra) == 0
    (path,) = set(find_runs(out)) - before
    return path


def env_without_network():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_records_a_run_that_replays(name, experiment_model, tmp_path, capsys):
    """The script itself, as a user runs it: a complete record, and replay reports a match."""
    out = tmp_path / "runs"
    proc = subprocess.run(
        [PY, str(REPO / "experiments" / f"{name}.py"), "--model", experiment_model, "--device", "cpu",
         "--out", str(out), *SMALL[name]],
        capture_output=True, text=True, env=env_without_network(), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (path,) = find_runs(out)
    assert f"Recorded run: {path}" in proc.stdout
    assert f"python -m workbench replay {path}" in proc.stdout
    rec = load_run(path)
    for f in ("config.json", "env.json", "command", "results/tensors.safetensors"):
        assert (path / f).is_file()
    assert rec.tables() and rec.figures() and rec.tensors()
    config = rec.config
    assert len(config["model_state_sha256"]) == 64 and config["device"] == "cpu" and config["dtype"] == "float32"
    prompts = [rows for rows in config["token_ids"].values() if len(rows[0]) > 1]  # not the answer ids
    assert prompts and all(row[0] == 50256 for rows in prompts for row in rows)  # BOS included
    assert rec.env["deterministic_algorithms"] is True and "git_commit" in rec.env
    assert len(rec.command.splitlines()) == 1

    assert run_cli("replay", path) == 0
    report = capsys.readouterr().out
    assert "MATCH" in report and "identical" in report and "FAIL" not in report


@pytest.mark.parametrize("name", SCRIPTS)
def test_altered_result_fails_replay(name, experiment_model, tmp_path, capsys):
    path = small_run(name, experiment_model, tmp_path)
    tensors = load_file(str(path / "results" / "tensors.safetensors"))
    key = sorted(k for k, v in tensors.items() if v.dtype.is_floating_point)[0]
    flat = tensors[key].flatten().clone()
    flat[0] = torch.nextafter(flat[0], flat[0] + 1)  # the smallest possible change
    tensors[key] = flat.reshape(tensors[key].shape)
    save_file(tensors, str(path / "results" / "tensors.safetensors"))
    capsys.readouterr()
    assert run_cli("replay", path) == 1
    report = capsys.readouterr().out
    assert "MISMATCH" in report and f"FAIL tensor {key}" in report


def test_altered_table_fails_replay(experiment_model, tmp_path, capsys):
    import pandas as pd

    path = small_run(SCRIPTS[0], experiment_model, tmp_path)
    table_path = sorted((path / "results").glob("*.parquet"))[0]
    frame = pd.read_parquet(table_path)
    column = frame.select_dtypes("float").columns[0]
    frame.loc[0, column] += 1.0
    frame.to_parquet(table_path, index=False)
    assert run_cli("replay", path) == 1
    assert f"FAIL table  {table_path.stem}" in capsys.readouterr().out


@pytest.mark.parametrize("name", SCRIPTS)
def test_config_file_reproduces_the_run(name, experiment_model, tmp_path):
    first = small_run(name, experiment_model, tmp_path / "a")
    # --config alone, from the record (both the file and the folder work), no other options.
    assert run_cli("run", name, "--config", first / "config.json", "--out", tmp_path / "c") == 0
    assert run_cli("run", name, "--config", first, "--out", tmp_path / "d") == 0
    (third,) = find_runs(tmp_path / "c")
    (fourth,) = find_runs(tmp_path / "d")
    a = load_run(first)
    for other in (third, fourth):
        rec = load_run(other)
        assert rec.config == a.config
        for k, v in a.tensors().items():  # NaN (path patching's skipped senders) equal to NaN
            assert torch.allclose(v, rec.tensors()[k], rtol=0, atol=0, equal_nan=True), k


def test_command_file_reruns_the_experiment(experiment_model, tmp_path):
    first = small_run(SCRIPTS[0], experiment_model, tmp_path / "a")
    argv = shlex.split(load_run(first).command)
    assert argv[:4] == ["python", "-m", "workbench", "run"]
    assert run_cli(*argv[3:], "--out", tmp_path / "b") == 0
    (again,) = find_runs(tmp_path / "b")
    assert load_run(again).config == load_run(first).config
    for k, v in load_run(first).tensors().items():
        assert torch.equal(v, load_run(again).tensors()[k])


def test_hand_written_config_and_overrides(experiment_model, tmp_path):
    config = tmp_path / "mine.json"
    config.write_text(json.dumps({"model": experiment_model, "device": "cpu", "n_seqs": 2, "seq_len": 5}))
    assert run_cli("run", "attention_heads", "--config", config, "--out", tmp_path / "runs", "--seq-len", "7") == 0
    (path,) = find_runs(tmp_path / "runs")
    rec = load_run(path)
    assert rec.config["seq_len"] == 7 and rec.config["n_seqs"] == 2
    assert [len(r) for r in rec.config["token_ids"]["tokens"]] == [15, 15]
    # Overriding an option of a recorded config recomputes the token ids instead of failing on them.
    assert run_cli("run", "attention_heads", "--config", path, "--out", tmp_path / "runs", "--seed", "3") == 0


# ----------------------------------------------------------------------------- bad input
def bad_config_cases(tmp_path, model):
    tmp_path.mkdir(parents=True, exist_ok=True)
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"seq_len": 5,')
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"model": model, "seq_lenght": 5}))
    mistyped = tmp_path / "mistyped.json"
    mistyped.write_text(json.dumps({"model": model, "seq_len": "five"}))
    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2, 3]")
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"record_version": RECORD_VERSION + 1, "experiment": "attention_heads",
                                  "config": {"model": model}}))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"record_version": RECORD_VERSION, "experiment": "something_else",
                                 "config": {"model": model}}))
    return [
        (["--config", tmp_path / "missing.json"], "does not exist"),
        (["--config", malformed], "not valid JSON"),
        (["--config", unknown], "unknown field.*seq_lenght"),
        (["--config", mistyped], "seq_len must be int"),
        (["--config", not_object], "JSON object"),
        (["--config", future], f"version {RECORD_VERSION + 1}"),
        (["--config", other], "'something_else' run"),
        (["--model", "no-such-model"], "no model named 'no-such-model'"),
        (["--model", model, "--detectors", "induction", "--seq-len", "600"], "context"),
        (["--model", model, "--model-sha256", "0" * 64], "not the model the config was run with"),
        (["--model", model, "--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "CUDA"),
    ]


def test_bad_input_exits_non_zero_and_writes_nothing(experiment_model, tmp_path, capsys):
    out = tmp_path / "runs"
    for argv, message in bad_config_cases(tmp_path / "configs", experiment_model):
        code = run_cli("run", "attention_heads", "--out", out, *argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and pytest.importorskip("re").search(message, err), (argv, err)
        assert not out.exists(), argv


def test_replay_bad_run_folders(experiment_model, tmp_path, capsys):
    """A record that cannot be read: exit status 3 (not 1, a mismatch) and a one-line message."""
    assert run_cli("replay", tmp_path / "nope") == 3
    assert "no run folder" in capsys.readouterr().err
    path = small_run("attention_heads", experiment_model, tmp_path / "runs")
    header = json.loads((path / "config.json").read_text())
    header["record_version"] = RECORD_VERSION + 1
    (path / "config.json").write_text(json.dumps(header))
    assert run_cli("replay", path) == 3
    err = capsys.readouterr().err
    assert f"record format version {RECORD_VERSION + 1}" in err and "workbench version that wrote it" in err
    header["record_version"] = RECORD_VERSION
    header["config"]["top_k"] = "many"
    (path / "config.json").write_text(json.dumps(header))
    assert run_cli("replay", path) == 3
    assert "top_k must be int" in capsys.readouterr().err


@pytest.mark.parametrize("name", SCRIPTS)
def test_replay_in_another_dtype_compares_within_tolerance(name, experiment_model, tmp_path, capsys):
    """bfloat16 against a float32 record: float results within tolerance; flipped ranks or top
    tokens are reported, not failed."""
    path = small_run(name, experiment_model, tmp_path)
    capsys.readouterr()
    assert run_cli("replay", path, "--dtype", "bfloat16") == 0
    report = capsys.readouterr().out
    assert "comparing within tolerance" in report and "MATCH" in report and "FAIL" not in report


def test_runs_lists_recorded_runs(experiment_model, tmp_path, capsys):
    assert run_cli("runs", "--root", tmp_path) == 0
    assert "no recorded runs" in capsys.readouterr().out
    path = small_run("attention_heads", experiment_model, tmp_path)
    capsys.readouterr()
    assert run_cli("runs", "--root", tmp_path) == 0
    out = capsys.readouterr().out
    assert path.name in out and "attention_heads" in out and "ok" in out


def test_console_script_and_module(experiment_model, tmp_path):
    """`workbench` (the installed console script) and `python -m workbench` run the same CLI."""
    path = small_run("attention_heads", experiment_model, tmp_path)
    exe = Path(PY).parent / "workbench"
    if not exe.exists():
        pytest.skip("the workbench console script is not installed in this environment")
    proc = subprocess.run([str(exe), "runs", "--root", str(tmp_path)], capture_output=True, text=True,
                          env=env_without_network(), timeout=120)
    assert proc.returncode == 0 and path.name in proc.stdout, proc.stderr
    proc = subprocess.run([PY, "-m", "workbench", "replay", str(path)], capture_output=True, text=True,
                          env=env_without_network(), timeout=300)
    assert proc.returncode == 0 and "MATCH" in proc.stdout, proc.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_help(name, capsys):
    """`experiments/<name>.py --help` (the script's body, in-process: the scripts run for real above)."""
    with pytest.raises(SystemExit) as exit_:
        cli.experiment_main(name, ["--help"], description=f"{name} docs")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model", "--device", "--dtype", "--seed", "--out", "--config", "--name", f"{name} docs"):
        assert option in out


@pytest.mark.parametrize("name", [n for n in ("activation_patching", "ablate_heads") if n in EXPERIMENTS])
def test_prompt_set_with_different_lengths_is_refused(name, experiment_model, tmp_path, capsys):
    out = tmp_path / "runs"
    pair = ["--prompt-set", "custom", "--answers", " Mary", "--wrong-answers", " John",
            "--clean-prompts", "When Mary and John went to the store, John gave a drink to"]
    cases = [
        (["--corrupted-prompts", "When Mary and John went to the store, Mary gave drinks to"],
         "clean and corrupted prompt 0 have different lengths"),
        (["--corrupted-prompts", "When Mary and John went to the store, Mary gave a drink to", "Extra prompt"],
         "one corrupted prompt, answer and wrong answer per clean prompt"),
    ]
    config = tmp_path / "pairs.json"
    config.write_text(json.dumps({"model": experiment_model, "prompt_set": "custom", "answers": [" Mary"],
                                  "wrong_answers": [" John"], "clean_prompts": ["Mary and John. John gave it to"],
                                  "corrupted_prompts": ["Mary and John. Johnathan gave it to"]}))
    for argv, message in cases:
        assert run_cli("run", name, "--model", experiment_model, "--out", out, *pair, *argv) == 2
        assert message in capsys.readouterr().err
    assert run_cli("run", name, "--config", config, "--out", out) == 2
    assert "different lengths" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("where", ["computing", "writing"])
def test_ctrl_c_leaves_no_run(where, experiment_model, tmp_path, monkeypatch, capsys):
    """Ctrl-C while the experiment computes or while its record is written: status 130, no run."""
    import workbench.runs
    from workbench.experiments import attention_heads

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "computing":
        monkeypatch.setattr(attention_heads, "head_scores", interrupt)
    else:
        monkeypatch.setattr(workbench.runs, "save_file", interrupt)  # after config.json and env.json
    out = tmp_path / "runs"
    assert run_cli("run", "attention_heads", "--model", experiment_model, "--out", out, *SMALL["attention_heads"]) == 130
    assert "nothing was recorded" in capsys.readouterr().err
    assert find_runs(out) == []
    leftovers = [p for p in out.rglob("*") if p.is_dir() and p.parent != out] if out.exists() else []
    assert leftovers == []


def test_unwritable_runs_root(experiment_model, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert run_cli("run", "attention_heads", "--model", experiment_model, "--out", tmp_path / "file",
                   *SMALL["attention_heads"]) == 2
    assert "cannot create the runs folder" in capsys.readouterr().err


def test_relative_model_path_is_recorded_absolute(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_model_dir.parent)
    path = small_run("attention_heads", tiny_model_dir.name, tmp_path / "runs")
    assert load_run(path).config["model"] == str(tiny_model_dir.resolve())
    monkeypatch.chdir(tmp_path)
    assert run_cli("replay", path) == 0


def test_replay_refuses_other_weights_or_other_tokens(tmp_path, capsys):
    """A record pins the weights (sha256) and the exact token ids: replay refuses anything else."""
    import workbench
    from workbench.models.bundled import save_bundled

    def save(seed):
        torch.manual_seed(seed)
        save_bundled(workbench.GPT(workbench.GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)),
                     tmp_path / "model", card={})

    save(0)
    path = small_run("attention_heads", tmp_path / "model", tmp_path / "runs")
    header = json.loads((path / "config.json").read_text())
    header["config"]["token_ids"]["tokens"][1][3] += 1
    (path / "config.json").write_text(json.dumps(header))
    assert run_cli("replay", path) == 2
    assert "token_ids['tokens'] differ from the prompts' tokenization at row 1, position 3" in capsys.readouterr().err
    header["config"]["token_ids"]["tokens"][1][3] -= 1
    (path / "config.json").write_text(json.dumps(header))
    save(1)  # other weights at the same path
    assert run_cli("replay", path) == 2
    assert "not the model the config was run with" in capsys.readouterr().err


def test_default_model_notice(tmp_path, monkeypatch, capsys):
    """Without --model the scripts use the default model and say which (the bundled one, offline)."""
    from workbench.models import default
    from workbench.models.bundled import DEFAULT_BUNDLED, bundled_names

    if DEFAULT_BUNDLED not in bundled_names():
        pytest.skip(f"the bundled model {DEFAULT_BUNDLED} is not in this checkout yet")
    monkeypatch.setattr(default, "_gpt2_cached", lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_cli("run", "attention_heads", "--out", tmp_path, *SMALL["attention_heads"]) == 0
    assert f"using the bundled model {DEFAULT_BUNDLED!r}" in capsys.readouterr().out
    (path,) = find_runs(tmp_path)
    assert load_run(path).config["model"] == DEFAULT_BUNDLED


def test_experiments_listing(capsys):
    assert run_cli("experiments") == 0
    out = capsys.readouterr().out
    for name in ("ablate_heads", "activation_patching", "attention_heads", "circuit", "dla", "logit_lens",
                 "path_patching"):
        assert name in out


def _truncate(path, n_bytes):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - n_bytes])


UNREADABLE = {
    "truncated parquet": lambda p: _truncate(sorted((p / "results").glob("*.parquet"))[0], 1),
    "truncated safetensors": lambda p: _truncate(p / "results" / "tensors.safetensors", 1),
    "corrupt config": lambda p: _truncate(p / "config.json", 30),
    "missing config": lambda p: (p / "config.json").unlink(),
}


@pytest.mark.parametrize("damage", UNREADABLE)
def test_replay_of_an_unreadable_record(damage, experiment_model, tmp_path, capsys, monkeypatch):
    """Exit status 3 and one line on stderr, before anything runs; `workbench runs` marks it."""
    from workbench.experiments import replaying

    path = small_run("attention_heads", experiment_model, tmp_path)
    UNREADABLE[damage](path)
    capsys.readouterr()
    monkeypatch.setattr(replaying, "run_experiment", lambda *a, **k: pytest.fail("ran an unreadable record"))
    assert run_cli("replay", path) == 3
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: unreadable record: ")
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert run_cli("runs", "--root", tmp_path) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if path.name in line]
    assert "unreadable" in row and " ok" not in row


def test_replay_of_a_truncated_record_as_a_user_runs_it(experiment_model, tmp_path):
    """The real process: no traceback, its own exit status, documented in --help."""
    path = small_run("attention_heads", experiment_model, tmp_path)
    _truncate(sorted((path / "results").glob("*.parquet"))[0], 200)
    proc = subprocess.run([PY, "-m", "workbench", "replay", str(path)], capture_output=True, text=True,
                          env=env_without_network(), timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "corrupt or truncated" in proc.stderr
    help_text = subprocess.run([PY, "-m", "workbench", "replay", "--help"], capture_output=True, text=True,
                               env=env_without_network(), timeout=120).stdout
    for code, meaning in (("0", "MATCH"), ("1", "MISMATCH"), ("3", "cannot be read")):
        assert re.search(rf"^\s+{code}\s+{meaning}", help_text, re.M) or re.search(
            rf"^\s+{code}\s+.*{meaning}", help_text, re.M), help_text


def test_model_hashes_are_recorded_and_named(tiny_model_dir, tmp_path, capsys):
    """The record names both weights hashes: the file's (what sha256sum and the model card say)
    and the state dict's (what replay checks); the replay report says which is which."""
    import hashlib

    path = small_run("attention_heads", tiny_model_dir, tmp_path)
    config = load_run(path).config
    weights = tiny_model_dir / "model.safetensors"
    assert config["model_file_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    card = json.loads((tiny_model_dir / "model_card.json").read_text())
    assert config["model_file_sha256"] == card["weights_sha256"]
    assert len(config["model_state_sha256"]) == 64 and config["model_state_sha256"] != config["model_file_sha256"]
    assert "model_sha256" not in config
    assert "model-file-sha256" not in load_run(path).command  # recorded, not an option
    capsys.readouterr()
    assert run_cli("replay", path) == 0
    report = capsys.readouterr().out
    assert f"state sha256 {config['model_state_sha256'][:16]}" in report and "state dict" in report
    assert f"file sha256 {config['model_file_sha256'][:16]}" in report and "sha256sum" in report


def test_nanogpt_checkpoint_file_hash(tmp_path):
    import hashlib

    from test_parity_hf import nanogpt_checkpoint

    from conftest import random_hf_model

    torch.save(nanogpt_checkpoint(random_hf_model(seed=3), compiled=False), tmp_path / "ckpt.pt")
    path = small_run("attention_heads", tmp_path / "ckpt.pt", tmp_path / "runs")
    assert load_run(path).config["model_file_sha256"] == hashlib.sha256((tmp_path / "ckpt.pt").read_bytes()).hexdigest()


def test_records_with_the_old_hash_field_still_replay(experiment_model, tmp_path, capsys):
    """Records written before model_sha256 was renamed model_state_sha256 read, check and re-run."""
    path = small_run("attention_heads", experiment_model, tmp_path / "runs")
    header = json.loads((path / "config.json").read_text())
    config = header["config"]
    config["model_sha256"] = config.pop("model_state_sha256")
    config.pop("model_file_sha256")
    (path / "config.json").write_text(json.dumps(header))
    assert run_cli("replay", path) == 0
    config["model_sha256"] = "0" * 64
    (path / "config.json").write_text(json.dumps(header))
    assert run_cli("replay", path) == 2
    assert "not the model the config was run with" in capsys.readouterr().err
    old_command = shlex.split(load_run(path).command.replace("--model-state-sha256", "--model-sha256"))
    assert "--model-sha256" in old_command
    assert run_cli(*old_command[3:], "--out", tmp_path / "again") == 0


def test_rerun_command_writes_only_the_options_that_apply(experiment_model, tmp_path):
    """A custom prompt set records no IOI options (an IOI run no custom ones), zero ablation no
    reference; the command still re-runs the same experiment to the same numbers."""
    pair = ["--prompt-set", "custom", "--answers", " Mary", "--wrong-answers", " John",
            "--clean-prompts", "When Mary and John went to the store, John gave a drink to",
            "--corrupted-prompts", "When Mary and John went to the store, Mary gave a drink to"]
    custom = load_run(small_run("activation_patching", experiment_model, tmp_path / "a", *pair))
    argv = shlex.split(custom.command)
    assert not [a for a in argv if a.startswith(("--n-prompts", "--ioi-"))], custom.command
    assert "--clean-prompts" in argv and "--target" in argv and "--model-state-sha256" in argv
    assert run_cli(*argv[3:], "--out", tmp_path / "b") == 0
    (again,) = find_runs(tmp_path / "b")
    assert torch.equal(load_run(again).tensors()["values"], custom.tensors()["values"])

    ioi = load_run(small_run("activation_patching", experiment_model, tmp_path / "c", "--prompt-set", "ioi"))
    assert "--n-prompts" in ioi.command and "--ioi-template" in ioi.command and "--clean-prompts" not in ioi.command
    assert "--seq-len" not in ioi.command
    induction = load_run(small_run("activation_patching", experiment_model, tmp_path / "f"))  # auto: induction here
    assert "--prompt-set induction" in induction.command and "--seq-len" in induction.command
    assert "--ioi-" not in induction.command and "--clean-prompts" not in induction.command
    zero = load_run(small_run("ablate_heads", experiment_model, tmp_path / "d", "--method", "zero"))
    mean = load_run(small_run("ablate_heads", experiment_model, tmp_path / "e"))
    assert "--reference" not in zero.command and "--reference prompts" in mean.command


def test_no_file_hash_for_a_file_replaced_after_loading(tiny_model_dir, tmp_path):
    """A long-lived model (the dashboard caches them) whose file was replaced since: the file's
    hash would describe other weights, so none is recorded; the state hash still is."""
    import os
    import shutil

    import workbench
    from workbench.experiments import AttentionHeadsConfig, run_experiment

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    model = workbench.load_model(tmp_path / "model", device="cpu")
    weights = tmp_path / "model" / "model.safetensors"
    config = AttentionHeadsConfig(n_seqs=2, seq_len=6)
    assert run_experiment("attention_heads", config, model=model, root=None).config.model_file_sha256
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    run = run_experiment("attention_heads", config, model=model, root=None)
    assert run.config.model_file_sha256 is None and len(run.config.model_state_sha256) == 64


# ----------------------------------------------------------------------------- task presets
def test_default_prompt_set_is_the_task_the_model_can_do():
    from types import SimpleNamespace

    from workbench.experiments.prompt_sets import default_prompt_set

    assert default_prompt_set(SimpleNamespace(name="gpt2")) == "ioi"
    assert default_prompt_set(SimpleNamespace(name="gpt2-medium")) == "ioi"
    assert default_prompt_set(SimpleNamespace(name="shakespeare-2l")) == "induction"
    assert default_prompt_set(SimpleNamespace(name="/some/dir")) == "induction"


@pytest.mark.parametrize("name", ["activation_patching", "ablate_heads"])
def test_scripts_default_to_the_induction_preset_on_the_bundled_model(name, tmp_path, capsys):
    """No prompt options: the bundled model runs induction (recorded resolved), which it does; the
    summary carries no warning. Asked for IOI, which it cannot do, the summary says so."""
    from workbench.models.bundled import DEFAULT_BUNDLED, bundled_names

    if DEFAULT_BUNDLED not in bundled_names():
        pytest.skip("no bundled model in this checkout")
    path = small_run(name, DEFAULT_BUNDLED, tmp_path / "runs")
    record = load_run(path)
    assert record.config["prompt_set"] == "induction" and record.config["metric"] == "next_token_logprob"
    clean, corrupted = record.tensors()["clean_corrupted"].tolist()
    assert clean - corrupted > 1.0
    out = capsys.readouterr().out
    assert "next_token_logprob" in out and "WARNING" not in out
    assert run_cli("replay", path) == 0
    capsys.readouterr()

    small_run(name, DEFAULT_BUNDLED, tmp_path / "runs", "--prompt-set", "ioi")
    out = capsys.readouterr().out
    assert "WARNING: The clean run is not clearly better than the corrupted one" in out, out


def test_prompt_set_bad_input(experiment_model, tmp_path, capsys):
    out = tmp_path / "runs"
    cases = [
        (["--prompt-set", "induction", "--metric", "logit_diff"], "does not go with prompt_set 'induction'"),
        (["--prompt-set", "custom", "--clean-prompts", "", "--corrupted-prompts", "x", "--answers", " a",
          "--wrong-answers", " b"], "clean_prompts[0] has no text"),
        (["--seq-len", "1"], "seq_len must be >= 2"),
    ]
    for argv, message in cases:
        code = run_cli("run", "activation_patching", "--model", experiment_model, "--device", "cpu", "--out", out,
                       *argv)
        err = capsys.readouterr().err
        assert code == 2 and message in err, (argv, err)
    assert run_cli("run", "logit_lens", "--model", experiment_model, "--device", "cpu", "--out", out,
                   "--prompt", " ") == 2
    assert "prompt has no text" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- direct logit attribution
def test_dla_defaults_to_induction_on_the_bundled_model_and_records_the_library_values(tmp_path, capsys):
    """The bundled model: induction, the logit of the correct next token at the second-to-last
    position; the record holds direct_logit_attribution's values on the recorded ids, and they sum
    to the model's own logit there."""
    import workbench
    from workbench.methods import direct_logit_attribution
    from workbench.models.bundled import DEFAULT_BUNDLED

    path = small_run("dla", DEFAULT_BUNDLED, tmp_path / "runs", "--by", "neuron")
    record = load_run(path)
    assert record.config["prompt_set"] == "induction" and record.config["by"] == "neuron"
    ids = torch.tensor(record.config["token_ids"]["clean"])
    assert set(record.config["token_ids"]) == {"clean"}  # one run: nothing corrupted
    model = workbench.load_model(DEFAULT_BUNDLED, device="cpu")
    pos = ids.shape[1] - 2
    expected = direct_logit_attribution(model, ids, ids[:, pos + 1], by="neuron", pos=pos)
    tensors = record.tensors()
    torch.testing.assert_close(tensors["values_per_prompt"], expected.per_prompt)
    logits = model(ids)[:, pos]
    own = logits.gather(-1, ids[:, pos + 1, None])[:, 0]
    total = tensors["values_per_prompt"].flatten(1).sum(1) + tensors["terms_per_prompt"].sum(1)
    torch.testing.assert_close(total, own, atol=1e-4, rtol=1e-4)
    frame = record.tables()["components"]
    assert (frame["direction"] == "logit[correct next token]").all() and (frame["pos"] == pos).all()
    assert "L1H0" not in set(frame["label"]) and len(frame) == model.cfg.n_layer * model.cfg.d_mlp + 7
    assert "logit[correct next token] at pos" in capsys.readouterr().out


def test_dla_custom_prompts_need_no_corrupted_prompts(experiment_model, tmp_path, capsys):
    out = tmp_path / "runs"
    base = ["run", "dla", "--model", experiment_model, "--device", "cpu", "--out", out, "--prompt-set", "custom",
            "--clean-prompts", "When Mary and John went to the store, John gave a drink to", "--answers", " Mary",
            "--wrong-answers", " John"]
    assert run_cli(*base, "--by", "layer") == 0
    (path,) = find_runs(out)
    record = load_run(path)
    assert "corrupted" not in record.tables()["prompts"]
    assert "--corrupted-prompts" not in record.command
    assert record.tables()["components"]["direction"].iloc[0] == "logit[' Mary'] - logit[' John']"
    capsys.readouterr()
    assert run_cli(*base, "--pos", "40") == 2
    assert "pos must be a position of the prompts" in capsys.readouterr().err
    assert run_cli("run", "dla", "--model", experiment_model, "--device", "cpu", "--out", out,
                   "--prompt-set", "induction", "--pos", "-1") == 2
    assert "pos must be at most" in capsys.readouterr().err
    assert run_cli("run", "dla", "--model", experiment_model, "--device", "cpu", "--out", out,
                   "--prompt-set", "greater_than") == 2  # a probability difference has no residual direction
    assert "has no such direction" in capsys.readouterr().err
    assert len(find_runs(out)) == 1


# ----------------------------------------------------------------------------- path patching
def test_path_patching_defaults_on_the_bundled_model_show_the_previous_token_head(tmp_path, capsys):
    """auto receivers on the bundled model: the induction heads' keys (every layer-1 head), noising;
    the previous-token head L0H3 is the sender that reaches them, far ahead of the rest."""
    from workbench.models.bundled import DEFAULT_BUNDLED, bundled_names

    if DEFAULT_BUNDLED not in bundled_names():
        pytest.skip("no bundled model in this checkout")
    path = small_run("path_patching", DEFAULT_BUNDLED, tmp_path / "runs", "--n-prompts", "4")
    record = load_run(path)
    assert record.config["receivers"] == ["1.0.k", "1.1.k", "1.2.k", "1.3.k"]
    assert record.config["direction"] == "noise" and record.config["prompt_set"] == "induction"
    frame = record.tables()["path_patching"]
    assert frame["computed"].tolist() == [True] * 4 + [False] * 4  # layer 1 cannot send to layer 1
    effects = frame[frame["computed"]].set_index("component")["effect"]
    assert effects.abs().idxmax() == "L0H3" and effects["L0H3"] < -1.0
    assert effects.drop("L0H3").abs().max() < 0.2 * abs(effects["L0H3"])
    out = capsys.readouterr().out
    assert "receivers L1H0.k, L1H1.k, L1H2.k, L1H3.k" in out and "L0H3" in out

    # One receiver given by hand, and the logits with MLP senders: also replayable.
    path = small_run("path_patching", DEFAULT_BUNDLED, tmp_path / "runs", "--receivers", "L1H0.k")
    assert load_run(path).config["receivers"] == ["L1H0.k"]
    path = small_run("path_patching", DEFAULT_BUNDLED, tmp_path / "runs", "--receivers", "logits", "--senders", "mlps")
    assert load_run(path).tensors()["values"].shape == (2,)
    capsys.readouterr()
    assert run_cli("replay", path) == 0


@pytest.mark.parametrize("receivers, message", [
    (["1.0.z"], "one of q, k, v"),
    (["0.0.k"], "block 0"),
    (["9.0.k"], "layer 9 is out of range"),
    (["1.7.k"], "head 7 is out of range"),
    (["head1"], "LAYER.HEAD.INPUT"),
])
def test_path_patching_bad_receivers_exit_non_zero(receivers, message, experiment_model, tmp_path, capsys):
    out = tmp_path / "runs"
    code = run_cli("run", "path_patching", "--model", experiment_model, "--device", "cpu", "--out", out,
                   "--n-prompts", "2", "--receivers", *receivers)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not out.exists()


def test_parse_receivers():
    from workbench.experiments.path_patching import format_receivers, parse_receivers

    assert parse_receivers(["logits"]) == "logits"
    assert parse_receivers(["1.0.k", "L2H3.q", "10.11.v"]) == [(1, 0, "k"), (2, 3, "q"), (10, 11, "v")]
    assert format_receivers(parse_receivers(["L2H3.q"])) == ["2.3.q"]


# ----------------------------------------------------------------------------- circuit
def test_circuit_run_records_the_librarys_numbers(experiment_model, tmp_path):
    """The recorded ranking, exact effects and curve are the library's on the recorded token ids."""
    import workbench
    from workbench.methods.circuit import circuit_faithfulness, edge_attribution, edge_patching
    from workbench.methods.metrics import NextTokenLogProb
    from workbench.methods.prompts import induction_positions

    path = small_run("circuit", experiment_model, tmp_path)
    rec = load_run(path)
    config, tensors, tables = rec.config, rec.tensors(), rec.tables()
    assert config["prompt_set"] == "induction"  # the task the bundled (or tiny) model can do
    model = workbench.load_model(experiment_model, device="cpu")
    clean, corrupted = (torch.tensor(config["token_ids"][k]) for k in ("clean", "corrupted"))
    metric = NextTokenLogProb(clean, induction_positions(config["seq_len"]))
    scores = edge_attribution(model, clean, corrupted, metric, method="eap-ig", steps=config["steps"])
    torch.testing.assert_close(tensors["scores"], scores.scores, atol=1e-5, rtol=0)
    edges = tables["edges"]
    verified = edges[edges["exact"].notna()]
    assert len(verified) == config["exact_top"]
    exact = edge_patching(model, clean, corrupted, metric, verified["edge"].tolist(), progress=False)
    torch.testing.assert_close(torch.tensor(verified["exact"].to_numpy()), exact.effect.double(), atol=1e-5, rtol=0)
    curve = tables["curve"]
    k = int(curve["n_edges"].iloc[2])
    circuit = edges.sort_values("final_rank")["edge"].head(k).tolist()
    one = circuit_faithfulness(model, clean, corrupted, metric, circuit)
    assert curve["faithfulness"].iloc[2] == pytest.approx(float(one.faithfulness[0]), abs=1e-4)
    smallest = tables["smallest"]
    n = int(tensors["smallest_n_edges"])
    if n > 0:
        reached = circuit_faithfulness(model, clean, corrupted, metric,
                                       edges.sort_values("final_rank")["edge"].head(n).tolist())
        assert float(reached.faithfulness[0]) >= config["target"]
        assert smallest["faithfulness"].iloc[0] == pytest.approx(float(reached.faithfulness[0]), abs=1e-4)


def test_attribution_patching_run_records_each_prompts_estimate(experiment_model, tmp_path, capsys):
    """--method attribution: the record says so (config, command, table, summary), and each prompt's
    recorded estimate is attribution patching of that prompt alone (the reference: one library call
    per prompt, no per-prompt bookkeeping), values their mean, with bootstrap intervals; it replays."""
    from workbench.experiments import config_from_dict
    from workbench.experiments.prompt_sets import prompt_set_metric
    from workbench.methods import attribution_patching
    from workbench.models.loading import load_model

    path = small_run("activation_patching", experiment_model, tmp_path, "--method", "attribution", "--target",
                     "head_out")
    rec = load_run(path)
    assert rec.config["method"] == "attribution" and "--method attribution" in rec.command
    assert "(attribution patching, denoise, target head_out)" in (path / "summary.txt").read_text()
    frame = rec.tables()["patching"]
    assert (frame["method"] == "attribution").all() and {"ci_low", "ci_high", "n"} <= set(frame)
    model = load_model(experiment_model, device="cpu")
    config = config_from_dict(EXPERIMENTS["activation_patching"].config, rec.config)
    per_prompt = rec.tensors()["per_prompt"]
    for b in range(per_prompt.shape[-1]):
        ids = {k: torch.tensor(v[b:b + 1]) for k, v in config.token_ids.items()}
        alone = attribution_patching(model, ids["clean"], ids["corrupted"],
                                     prompt_set_metric(config, ids, d_vocab=model.cfg.vocab_size), target="head_out")
        torch.testing.assert_close(per_prompt[..., b], alone.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rec.tensors()["values"], per_prompt.mean(-1), atol=1e-6, rtol=0)
    assert run_cli("replay", path) == 0
    assert "MATCH" in capsys.readouterr().out


@pytest.mark.parametrize("option", [["--memory", "1GiB"], ["--max-batch", "4"]])
def test_attribution_patching_refuses_the_sweep_options(option, experiment_model, tmp_path, capsys):
    """max_batch and memory size the activation-patching sweep: with --method attribution they are an
    error before anything runs, naming them."""
    assert run_cli("run", "activation_patching", "--model", experiment_model, "--device", "cpu", "--out", tmp_path,
                   "--method", "attribution", *option) != 0
    assert f"{option[0][2:].replace('-', '_')} size the activation-patching sweep" in capsys.readouterr().err
    assert not find_runs(tmp_path)
