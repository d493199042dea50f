"""The Runs page's run tools, driven headless by AppTest: "Open in its page" restores the page's
inputs and shows the record's results without a model forward (and the URL names the run);
"Compare" gives the verdict, what differs and B - A; downloads; delete with confirmation; tidy.
Fixtures and helpers are test_app.py's."""

import pytest
import torch

import test_app
from test_app import APP, TIMEOUT, AppTest, charts, count_calls, errors, heatmaps, page, z_of
from workbench import cli
from workbench.experiments import EXPERIMENTS, config_from_dict, run_experiment
from workbench.runs import find_runs, load_run

app = test_app.app  # the `app` fixture: a fresh session of the explorer, runs under tmp_path

# Inputs that are not the pages' defaults, per page: (experiment, config fields, {widget key: value}).
OPEN_CASES = {
    "logit_lens": ("logit_lens", {"prompt": "The cat sat on the mat and the cat", "target": " sat", "top_k": 4},
                   {"p.prompt": "The cat sat on the mat and the cat", "p.lens.target": " sat", "p.lens.top_k": 4}),
    "attention": ("attention_heads", {"n_seqs": 3, "seq_len": 5, "seed": 2},
                  {"p.attn.n_seqs": 3, "p.attn.seq_len": 5, "p.attn.seed": 2}),
    "patching": ("activation_patching", {"n_prompts": 3, "seq_len": 6, "seed": 1, "target": "attn_out",
                                         "direction": "noise", "prompt_set": "induction"},
                 {"p.patch.source": "induction", "p.patch.n_prompts": 3, "p.patch.seq_len": 6, "p.patch.seed": 1,
                  "p.patch.target": "attn_out", "p.patch.direction": "noise", "p.patch.method": "activation"}),
    "ablation": ("ablate_heads", {"n_prompts": 3, "seq_len": 6, "seed": 1, "method": "resample",
                                  "reference": "corrupted", "prompt_set": "induction"},
                 {"p.ablate.source": "induction", "p.ablate.n_prompts": 3, "p.ablate.seq_len": 6, "p.ablate.seed": 1,
                  "p.ablate.method": "resample", "p.ablate.reference": "corrupted"}),
    "dla": ("dla", {"n_prompts": 3, "seq_len": 6, "seed": 1, "by": "layer", "pos": -3, "prompt_set": "induction"},
            {"p.dla.source": "induction", "p.dla.n_prompts": 3, "p.dla.seq_len": 6, "p.dla.seed": 1,
             "p.dla.by": "layer", "p.dla.pos": -3}),
    "path_patching": ("path_patching", {"n_prompts": 2, "seq_len": 6, "seed": 1, "receivers": ["1.0.q", "1.2.q"],
                                        "direction": "denoise", "prompt_set": "induction"},
                      {"p.path.source": "induction", "p.path.n_prompts": 2, "p.path.seed": 1,
                       "p.path.receiver_kind": "heads", "p.path.heads": ["L1H0", "L1H2"], "p.path.input": "q",
                       "p.path.direction": "denoise"}),
    "circuit": ("circuit", {"n_prompts": 2, "seq_len": 4, "seed": 3, "method": "eap", "steps": 2, "exact_top": 6,
                            "points": 4, "target": 0.7, "prompt_set": "induction"},
                {"p.circuit.source": "induction", "p.circuit.n_prompts": 2, "p.circuit.seq_len": 4, "p.circuit.seed": 3,
                 "p.circuit.method": "eap", "p.circuit.exact_top": 6, "p.circuit.points": 4,
                 "p.circuit.target": 0.7}),
}


def record(name: str, model: str, root, **fields):
    config = config_from_dict(EXPERIMENTS[name].config, {"model": model, "device": "cpu", **fields})
    return run_experiment(name, config, root=root).path


def widget_value(at, key: str):
    return next(w for w in at.main if getattr(w, "key", None) == key).value if key != "p.prompt" \
        else at.text_area(key="p.prompt").value


def count_forwards(monkeypatch) -> list:
    """Calls of any transformer block: every forward runs them, whole or resumed at a layer."""
    from workbench.models.gpt import Block

    calls = []
    forward = Block.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Block, "forward", counted)
    return calls


def select_run(at, path):
    at.selectbox(key="p.runs.run").set_value(str(path)).run()
    assert not at.exception and not errors(at), errors(at)
    return at


@pytest.mark.parametrize("name", list(OPEN_CASES))
def test_open_fills_the_page_and_shows_the_record_without_a_forward(name, app, experiment_model, tmp_path,
                                                                    monkeypatch):
    experiment, fields, widgets = OPEN_CASES[name]
    path = record(experiment, experiment_model, tmp_path / "runs", **fields)
    rec = load_run(path)
    at = select_run(page(app, "runs"), path)
    forwards = count_forwards(monkeypatch)
    at.button(key="runs.open").click().run()
    assert not at.exception and not errors(at), errors(at)
    assert at.query_params["run"] == str(path)  # the URL names the run
    for key, value in widgets.items():
        assert widget_value(at, key) == value, key
    assert at.selectbox(key="p.model").value == rec.config["model"]
    assert forwards == []  # shown from the record, nothing computed
    assert any(c.value.strip() == (path / "summary.txt").read_text().strip() for c in at.code)
    assert charts(at)
    tensors, tables = rec.tensors(), rec.tables()
    if name == "patching":  # the recorded values, as the Runs page draws them
        (trace,) = heatmaps(charts(at)[0])
        torch.testing.assert_close(z_of(trace).flatten().double(),
                                   torch.tensor(tables["patching"]["normalized"].to_numpy()).double(), equal_nan=True)
    if name == "ablation":
        z = z_of(heatmaps(charts(at)[0])[0])
        torch.testing.assert_close(z.double(), (tensors["values"] - tensors["baseline"]).double(), rtol=1e-5, atol=1e-6)
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download script" in labels and "Download notebook" in labels
    # "Compute again" leaves the record: the page computes from the filled-in inputs.
    at.switch_page(f"dashboard/{name}.py")  # AppTest would go back to the page it last switched to
    if name in ("patching", "ablation", "dla", "path_patching", "circuit"):
        at.button[0].click().run()  # the form's Run button
    else:
        at.button(key=f"open.close.{ {'logit_lens': 'lens', 'attention': 'attention'}[name]}").click().run()
    assert not at.exception and not errors(at), errors(at)
    assert forwards and "run" not in at.query_params


def test_open_an_attribution_patching_run(app, experiment_model, tmp_path, monkeypatch):
    """A recorded attribution-patching run opens with the method selected, shows its record without a
    forward, and Compute again runs attribution patching (not the full sweep)."""
    from workbench.experiments import activation_patching as experiment

    path = record("activation_patching", experiment_model, tmp_path / "runs", n_prompts=2, seed=1,
                  target="head_out", method="attribution", prompt_set="induction")
    at = select_run(page(app, "runs"), path)
    forwards = count_forwards(monkeypatch)
    at.button(key="runs.open").click().run()
    assert not at.exception and not errors(at), errors(at)
    assert widget_value(at, "p.patch.method") == "attribution" and widget_value(at, "p.patch.target") == "head_out"
    assert forwards == []
    (trace,) = heatmaps(charts(at)[0])
    torch.testing.assert_close(z_of(trace).flatten().double(),
                               torch.tensor(load_run(path).tables()["patching"]["normalized"].to_numpy()).double())
    attribution = count_calls(monkeypatch, experiment, "attribution_patching")
    sweep = count_calls(monkeypatch, experiment, "activation_patching")
    at.switch_page("dashboard/patching.py")
    at.button[0].click().run()  # the form's Run button
    assert not at.exception and not errors(at), errors(at)
    assert (len(attribution), len(sweep)) == (1, 0)


def test_a_bookmarked_run_url_opens_the_page(experiment_model, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MODEL", experiment_model)
    monkeypatch.setenv("WORKBENCH_DEVICE", "cpu")
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    path = record("activation_patching", experiment_model, tmp_path / "runs", n_prompts=2, seed=3, target="mlp_out")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["run"] = str(path)
    at.run()
    at.switch_page("dashboard/patching.py").run()
    assert not at.exception and not errors(at), errors(at)
    assert at.selectbox(key="p.patch.target").value == "mlp_out" and at.number_input(key="p.patch.seed").value == 3
    assert any(str(path) in i.value for i in at.info)


def test_compare_a_run_with_its_rerun_says_same(app, experiment_model, tmp_path):
    a = record("attention_heads", experiment_model, tmp_path / "runs", n_seqs=2, seq_len=5)
    assert cli.main(["run", "attention_heads", "--config", str(a), "--out", str(tmp_path / "runs")]) == 0
    (b,) = set(find_runs(tmp_path / "runs")) - {a}
    at = select_run(page(app, "runs"), a)
    at.selectbox(key="p.runs.compare").set_value(str(b)).run()
    assert not at.exception and not errors(at), errors(at)
    assert any(s.value.startswith("same: ") for s in at.success), [s.value for s in at.success]


def test_compare_runs_that_differ_in_seed_shows_b_minus_a(app, experiment_model, tmp_path):
    a = record("ablate_heads", experiment_model, tmp_path / "runs", n_prompts=2, method="resample", seed=0)
    b = record("ablate_heads", experiment_model, tmp_path / "runs", n_prompts=2, method="resample", seed=1)
    at = select_run(page(app, "runs"), a)
    at.selectbox(key="p.runs.compare").set_value(str(b)).run()
    assert not at.exception and not errors(at), errors(at)
    assert any(w.value.startswith("different: ") for w in at.warning), [w.value for w in at.warning]
    differences = next(d.value for d in at.dataframe if list(d.value.columns) == ["where", "key", "A", "B"])
    assert differences.set_index("key").loc["seed", ["A", "B"]].tolist() == ["0", "1"]
    fig = next(f for f in charts(at) if f["layout"]["title"]["text"] == "values: B - A")
    expected = load_run(b).tensors()["values"].double() - load_run(a).tensors()["values"].double()
    torch.testing.assert_close(z_of(heatmaps(fig)[0]).double(), expected)


def test_delete_from_the_runs_page_asks_first(app, experiment_model, tmp_path):
    keep = record("logit_lens", experiment_model, tmp_path / "runs", top_k=2)
    path = record("logit_lens", experiment_model, tmp_path / "runs", top_k=3)
    at = select_run(page(app, "runs"), path)
    at.button(key="runs.delete").click().run()
    assert any("cannot be undone" in w.value for w in at.warning) and path.is_dir()
    at.button(key="runs.delete.no").click().run()
    assert path.is_dir() and not any("cannot be undone" in w.value for w in at.warning)
    at.button(key="runs.delete").click().run()
    at.button(key="runs.delete.yes").click().run()
    assert not at.exception and not errors(at), errors(at)
    assert not path.exists() and find_runs(tmp_path / "runs") == [keep]
    assert at.dataframe[0].value["run"].tolist() == [keep.name]


def test_tidy_from_the_runs_page(app, experiment_model, tmp_path):
    path = record("logit_lens", experiment_model, tmp_path / "runs", top_k=2)
    tmp = path.parent / ".tmp-20260101T000000Z-dead-1"
    tmp.mkdir()
    at = page(app, "runs")
    assert any("temporary folder" in c.value for c in at.caption)
    at.button(key="runs.tidy").click().run()
    assert not tmp.exists() and path.is_dir()
    assert not any("temporary folder" in c.value for c in at.caption)


def test_save_run_offers_the_downloads(app):
    at = page(app, "logit_lens")
    at.button(key="save.lens").click().run()
    assert not at.exception and not errors(at), errors(at)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download script", "Download notebook"]
