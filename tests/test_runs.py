"""Run records: layout, atomic writes, ids that never collide, sanitised names, record versions,
unreadable records, the shared plotly.js, weights hashing. No model runs here except the tiny one for hashing."""

import datetime as dt
import json

import pandas as pd
import pytest
import torch

import workbench
from workbench import runs
from workbench.runs import (
    RECORD_VERSION,
    RecordError,
    RunResults,
    find_runs,
    list_runs,
    load_run,
    model_state_sha256,
    record_run,
    sanitize_name,
)

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def small_results() -> RunResults:
    import plotly.graph_objects as go

    values = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7
    frame = pd.DataFrame({"layer": [0, 0, 0, 1, 1, 1], "head": [0, 1, 2] * 2, "score": values.flatten().tolist()})
    return RunResults(
        tensors={"scores": values, "ranks": torch.tensor([[3, 1], [0, 2]])},
        tables={"scores": frame},
        figures={"scores": go.Figure(go.Heatmap(z=values.tolist()))},
        summary="top: L1H2",
    )


def write(tmp_path, **kw):
    kw = {"experiment": "toy", "config": {"seed": 0, "model": "m"}, "root": tmp_path, "command": "echo hi",
          "env": {"torch": torch.__version__}, "now": NOW, **kw}
    return record_run(small_results(), **kw)


def test_record_layout_and_read_back(tmp_path):
    path = write(tmp_path, name="first try")
    assert path.parent == tmp_path / "toy"
    assert path.name.startswith("20260102T030405Z-") and path.name.endswith("-first-try")
    for f in ("config.json", "env.json", "command", "results/tensors.safetensors", "results/scores.parquet",
              "figures/scores.html", "summary.txt"):
        assert (path / f).is_file(), f
    header = json.loads((path / "config.json").read_text())
    assert header["record_version"] == RECORD_VERSION and header["experiment"] == "toy"
    assert (path / "command").read_text() == "echo hi\n"
    rec = load_run(path)
    assert rec.config == {"seed": 0, "model": "m"} and rec.name == "first-try"
    tensors = rec.tensors()
    assert torch.equal(tensors["scores"], small_results().tensors["scores"])
    assert tensors["ranks"].dtype == torch.int64
    pd.testing.assert_frame_equal(rec.tables()["scores"], small_results().tables["scores"])
    assert not list((tmp_path / "toy").glob(".tmp-*"))


def test_environment_records_the_essentials():
    env = runs.environment(device="cpu")
    for key in ("workbench", "git_commit", "git_dirty", "python", "torch", "cuda", "device_name", "platform",
                "deterministic_algorithms"):
        assert key in env
    assert env["workbench"] == workbench.__version__


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, exc):
    def boom(*args, **kwargs):
        raise exc("killed mid-write")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)  # after config.json, env.json and the tensors
    with pytest.raises(exc):
        write(tmp_path)
    assert list((tmp_path / "toy").iterdir()) == []
    assert find_runs(tmp_path) == [] and list_runs(tmp_path).empty


def test_leftover_temporary_folder_is_not_a_run(tmp_path):
    # What a hard kill (SIGKILL, power cut) leaves: a hidden .tmp-* folder, even with a config.json in it.
    path = write(tmp_path)
    tmp = path.parent / ".tmp-20260102T030405Z-dead-123"
    path.rename(tmp)
    assert find_runs(tmp_path) == [] and runs.find_unfinished(tmp_path) == [tmp]
    with pytest.raises(RecordError, match="unfinished"):
        load_run(tmp)


def test_runs_in_the_same_second_never_collide(tmp_path, monkeypatch):
    paths = {write(tmp_path) for _ in range(5)}
    assert len(paths) == 5 and len(find_runs(tmp_path)) == 5
    # Even when the random id repeats, the second run takes a fresh one instead of overwriting.
    ids = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(runs, "short_id", lambda: next(ids))
    first, second = write(tmp_path), write(tmp_path)
    assert first.name.endswith("-aaaaaa") and second.name.endswith("-bbbbbb")
    assert len(find_runs(tmp_path)) == 7


def test_existing_run_is_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "short_id", lambda: "abcdef")
    first = write(tmp_path)
    before = (first / "results" / "tensors.safetensors").read_bytes()
    with pytest.raises(RuntimeError, match="free run id"):
        write(tmp_path)
    assert (first / "results" / "tensors.safetensors").read_bytes() == before
    assert [p.name for p in (tmp_path / "toy").iterdir()] == [first.name]


@pytest.mark.parametrize("raw, clean", [
    ("my run", "my-run"), ("../../etc/passwd", "etc-passwd"), ("/abs/path", "abs-path"), (".hidden", "hidden"),
    ("a" * 100, "a" * 64), ("ok_name-1.2", "ok_name-1.2"), ("nul\x00byte", "nul-byte"),
])
def test_names_are_sanitised(raw, clean):
    assert sanitize_name(raw) == clean


@pytest.mark.parametrize("raw", ["", "..", "/", "../", "???"])
def test_unusable_names_are_refused(raw):
    with pytest.raises(workbench.InputError, match="usable"):
        sanitize_name(raw)


def test_user_names_cannot_escape_the_runs_root(tmp_path):
    path = write(tmp_path / "root", name="../../../escape", experiment="../up")
    assert path.resolve().is_relative_to((tmp_path / "root").resolve())
    assert path.parent.name == "up"


def test_incompatible_record_version_is_detected(tmp_path):
    path = write(tmp_path)
    header = json.loads((path / "config.json").read_text())
    header["record_version"] = RECORD_VERSION + 1
    (path / "config.json").write_text(json.dumps(header))
    with pytest.raises(RecordError, match=f"version {RECORD_VERSION + 1}.*reads and writes version {RECORD_VERSION}"):
        load_run(path)
    assert list_runs(tmp_path)["status"].iloc[0] != "ok"


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "env.json").unlink(), "not a complete run folder: env.json missing"),
    (lambda p: (p / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda p: (p / "config.json").write_text("[1, 2]"), "JSON object"),
])
def test_damaged_records_are_refused(tmp_path, damage, message):
    path = write(tmp_path)
    damage(path)
    with pytest.raises(RecordError, match=message):
        load_run(path)


def test_missing_run_folder(tmp_path):
    with pytest.raises(RecordError, match="no run folder"):
        load_run(tmp_path / "nope")


def test_list_runs(tmp_path):
    write(tmp_path)
    write(tmp_path, experiment="other")
    table = list_runs(tmp_path)
    assert sorted(table["experiment"]) == ["other", "toy"]
    assert (table["status"] == "ok").all() and (table["model"] == "m").all()


def test_model_state_sha256(tiny_model_dir):
    a = workbench.load_model(tiny_model_dir, device="cpu")
    b = workbench.load_model(tiny_model_dir, device="cpu")
    half = workbench.load_model(tiny_model_dir, device="cpu", dtype="float16")  # stored in fp16: same weights
    assert model_state_sha256(a) == model_state_sha256(b) == model_state_sha256(half)
    assert len(model_state_sha256(a)) == 64
    with torch.no_grad():
        b.blocks[1].mlp.c_fc.bias[3] += 1e-3
    assert model_state_sha256(a) != model_state_sha256(b)


def test_tensors_sharing_storage_are_recorded(tmp_path):
    x = torch.randn(3, 4)
    path = record_run(RunResults(tensors={"all": x, "row": x[1], "t": x.T}), experiment="toy", config={},
                      root=tmp_path, env={})
    tensors = load_run(path).tensors()
    assert torch.equal(tensors["row"], x[1]) and torch.equal(tensors["t"], x.T)


def test_hard_kill_mid_write_leaves_only_complete_runs(tmp_path):
    """SIGKILL a process that keeps recording runs: every folder that looks like a run is complete."""
    import signal
    import subprocess
    import sys
    import time

    script = f"""
import torch
from workbench.runs import RunResults, record_run
big = torch.randn(2_000_000)
print("ready", flush=True)
while True:
    record_run(RunResults(tensors={{"big": big, "small": big[:10]}}), experiment="toy", config={{}},
               root={str(tmp_path)!r}, env={{}})
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for path in find_runs(tmp_path):
        tensors = load_run(path).tensors()
        assert tensors["big"].shape == (2_000_000,)
    assert all(p.name.startswith(".tmp-") for p in runs.find_unfinished(tmp_path))


def test_figures_share_one_plotly_js_by_a_relative_path(tmp_path):
    """Figures open offline from one plotly.js per runs root, found relative to each HTML, also in
    a copy of the whole runs root; no run folder carries its own copy."""
    import re
    import shutil

    from plotly.offline import get_plotlyjs

    root = tmp_path / "runs"
    first, second = write(root), write(root, experiment="other")
    assert sorted(p.name for p in find_runs(root)) == sorted([first.name, second.name])  # _assets is no run
    for run in (first, second):
        assert list(run.rglob("*.js")) == []
    copy = tmp_path / "copied" / "runs"
    shutil.copytree(root, copy)
    shutil.rmtree(root)  # the copy must not lean on the original
    scripts = set()
    for run in (copy / first.relative_to(root), copy / second.relative_to(root)):
        html = (run / "figures" / "scores.html").read_text()
        (src,) = re.findall(r'<script charset="utf-8" src="([^"]+)"', html)
        assert not src.startswith(("/", "http:", "https:")) and ":" not in src, src
        scripts.add((run / "figures" / src).resolve())
    (js,) = scripts  # both figures load the same file
    assert js.is_relative_to(copy.resolve()) and js.read_text() == get_plotlyjs()
    assert [p for p in copy.rglob("*.js")] == [js]


def truncate(path, n_bytes):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - n_bytes])


DAMAGE = {
    "truncated parquet": (lambda p: truncate(p / "results" / "scores.parquet", 1), "scores.parquet: corrupt or truncated"),
    "half a parquet": (lambda p: truncate(p / "results" / "scores.parquet", 700), "scores.parquet: corrupt or truncated"),
    "truncated safetensors": (lambda p: truncate(p / "results" / "tensors.safetensors", 1),
                              "tensors.safetensors: corrupt or truncated"),
    "half a safetensors": (lambda p: truncate(p / "results" / "tensors.safetensors", 60),
                           "tensors.safetensors: corrupt or truncated"),
    "corrupt config": (lambda p: truncate(p / "config.json", 20), "config.json is not valid JSON"),
    "binary config": (lambda p: (p / "config.json").write_bytes(b"\xff\xfe\x00garbage"), "config.json is not valid JSON"),
    "missing config": (lambda p: (p / "config.json").unlink(), "config.json missing"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_unreadable_records_are_refused_and_marked(tmp_path, damage):
    good, bad = write(tmp_path), write(tmp_path)
    breaks, message = DAMAGE[damage]
    breaks(bad)
    with pytest.raises(RecordError, match=message):
        load_run(bad).results()
    table = list_runs(tmp_path).set_index("run")["status"]
    assert table[good.name] == "ok"
    assert table[bad.name].startswith("unreadable: ") and message.split(": ")[-1] in table[bad.name], table[bad.name]
    assert load_run(good).results().tables["scores"].shape == (6, 3)


def test_default_runs_root(tmp_path, monkeypatch):
    """$WORKBENCH_RUNS; else the checkout's runs/ from anywhere inside it (notebooks/ included); else ./runs."""
    from pathlib import Path

    checkout = Path(runs.__file__).resolve().parents[1]
    monkeypatch.delenv("WORKBENCH_RUNS", raising=False)
    for where in (checkout, checkout / "notebooks", checkout / "workbench" / "experiments"):
        monkeypatch.chdir(where)
        assert runs.default_runs_root() == checkout / "runs"
    monkeypatch.chdir(tmp_path)
    assert runs.default_runs_root().resolve() == tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "mine"))
    monkeypatch.chdir(checkout / "notebooks")
    assert runs.default_runs_root() == tmp_path / "mine"
