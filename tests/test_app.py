"""The explorer, driven headless by streamlit.testing.v1.AppTest: every page's charts and tables
equal what the library returns for the same inputs, "Save run" writes runs that replay, changing a
plot option does not recompute, and bad input shows an error element, never an exception.

Runs on the bundled model when it is there, else on a tiny random one (the `experiment_model`
fixture), pointed to with WORKBENCH_MODEL; runs go to a temporary WORKBENCH_RUNS."""

import functools
import json
import sys
from pathlib import Path

import pytest
import streamlit as st
import torch

import workbench
from workbench.experiments import replay
from workbench.experiments.ablate_heads import ranked_heads
from workbench.methods import ablation, attribution, head_detectors, patching, prompts
from workbench.methods.metrics import LogitDiff
from workbench.runs import find_runs, load_run

logit_lens_module = sys.modules["workbench.methods.logit_lens"]  # workbench.methods.logit_lens is the function

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

APP = str(Path(__file__).resolve().parents[1] / "apps" / "explorer.py")
TIMEOUT = 300  # a loaded CI machine can be slow; a run normally takes a second or two
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture
def app(experiment_model, tmp_path, monkeypatch):
    """A fresh session of the explorer (first page run) on the test model, runs under tmp_path."""
    monkeypatch.setenv("WORKBENCH_MODEL", experiment_model)
    monkeypatch.setenv("WORKBENCH_DEVICE", "cpu")  # the library reference runs on the CPU too
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    st.cache_data.clear()  # computations are cached per process; each test starts cold
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture(scope="module")
def lib_model(experiment_model):
    return workbench.load_model(experiment_model, device="cpu", dtype="float32")


def page(at, name: str):
    at.switch_page(f"dashboard/{name}.py").run()
    assert not at.exception, at.exception
    return at


def charts(at) -> list[dict]:
    """Every plotly chart on the page, as the figure JSON the browser gets."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def heatmaps(fig: dict) -> list[dict]:
    return [t for t in fig["data"] if t["type"] == "heatmap"]


def z_of(trace: dict) -> torch.Tensor:
    return torch.tensor([[float("nan") if v is None else v for v in row] for row in trace["z"]])


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.double(), expected.detach().double().cpu(), rtol=1e-5, atol=1e-6,
                               equal_nan=True)


def shown(token: str) -> str:
    """A token as the explorer writes it on axes and in hovers: whitespace made visible."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423")


def count_calls(monkeypatch, module, name: str) -> list:
    calls = []
    original = getattr(module, name)

    @functools.wraps(original)
    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


# ----------------------------------------------------------------------------- model & prompt
def test_model_page_shows_the_prompt_as_tokens(app, lib_model):
    assert not errors(app)
    table = app.dataframe[0].value
    ids = lib_model.to_tokens(CLEAN)[0].tolist()
    assert table["id"].tolist() == ids
    assert table["pos"].tolist() == list(range(len(ids)))
    assert len(table["token"]) == len(ids)


def test_prompt_too_long_is_an_error_message(app, lib_model):
    app.text_area(key="p.prompt").set_value(" the" * (lib_model.cfg.block_size + 5)).run()
    assert not app.exception
    assert any("context" in e and str(lib_model.cfg.block_size) in e for e in errors(app)), errors(app)
    page(app, "attention")
    assert any("context" in e for e in errors(app)), errors(app)


def test_unknown_model_path_is_an_error_message(experiment_model, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MODEL", str(tmp_path / "no-such-model"))
    monkeypatch.setenv("WORKBENCH_DEVICE", "cpu")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("no-such-model" in e for e in errors(at)), errors(at)
    assert at.selectbox(key="p.model").value == "a local path"
    at.text_input(key="p.model_path").set_value(str(tmp_path / "still-not-a-model")).run()
    assert not at.exception
    assert any("still-not-a-model" in e for e in errors(at)), errors(at)


def test_model_from_the_url(experiment_model, tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_MODEL", raising=False)
    monkeypatch.setenv("WORKBENCH_DEVICE", "cpu")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["model"] = experiment_model
    at.run()
    assert not at.exception and not errors(at), errors(at)
    assert at.session_state["_session"].model is not None
    assert at.session_state["_session"].model_name in (experiment_model, str(Path(experiment_model).resolve()))


# ----------------------------------------------------------------------------- attention
def test_attention_page_matches_the_head_detectors(app, lib_model):
    at = page(app, "attention")
    at.number_input(key="p.attn.n_seqs").set_value(2)
    at.number_input(key="p.attn.seq_len").set_value(6).run()
    assert not at.exception and not errors(at)
    tokens = prompts.repeated_tokens(n_seqs=2, seq_len=6, seed=0, vocab_size=lib_model.cfg.vocab_size)
    grid = heatmaps(charts(at)[0])
    expected = [head_detectors.induction_scores(lib_model, tokens),
                head_detectors.previous_token_scores(lib_model, tokens),
                head_detectors.duplicate_token_scores(lib_model, tokens)]
    assert len(grid) == 3
    for trace, scores in zip(grid, expected):
        assert_close(z_of(trace), scores.values)

    layer, head = lib_model.cfg.n_layer - 1, lib_model.cfg.n_head - 1
    at.selectbox(key="p.attn.layer").set_value(layer)
    at.selectbox(key="p.attn.head").set_value(head).run()
    _, cache = lib_model.run_with_cache(CLEAN, names_filter=[f"blocks.{layer}.attn.hook_pattern"])
    pattern = heatmaps(charts(at)[1])[0]
    assert_close(z_of(pattern), cache["pattern", layer][0, head])
    n = cache["pattern", layer].shape[-1]
    assert len(json.loads(at.get("plotly_chart")[1].proto.spec)["layout"]["xaxis"]["ticktext"]) == n


# ----------------------------------------------------------------------------- patching
def run_patching(at, **inputs):
    at = page(at, "patching")
    for key, value in inputs.items():
        widget = at.selectbox(key=f"p.patch.{key}") if key in ("target", "direction", "method") \
            else at.text_input(key=f"p.patch.{key}")
        widget.set_value(value)
    at.button[0].click().run()  # the form's "Run patching"
    assert not at.exception, at.exception
    return at


def test_patching_page_matches_the_library_and_plot_options_do_not_recompute(app, lib_model, monkeypatch):
    calls = count_calls(monkeypatch, patching, "activation_patching")
    at = run_patching(app, target="head_out")
    assert not errors(at)
    assert len(calls) == 1
    metric = LogitDiff(lib_model.to_single_token(" Mary"), lib_model.to_single_token(" John"))
    expected = patching.activation_patching(lib_model, CLEAN, CORRUPTED, metric, target="head_out", progress=False)
    (trace,) = heatmaps(charts(at)[0])
    assert_close(z_of(trace), expected.normalized())
    assert [m.value for m in at.metric][:2] == [f"{expected.clean_value:.3f}", f"{expected.corrupted_value:.3f}"]
    table = at.dataframe[0].value
    frame = expected.to_frame().set_index(["layer", "head"])
    for _, row in table.iterrows():
        assert row["value"] == pytest.approx(frame.loc[(row["layer"], row["head"]), "value"], rel=1e-5, abs=1e-6)

    at.radio(key="p.patch.show").set_value("values").run()
    assert_close(z_of(heatmaps(charts(at)[0])[0]), expected.values)
    at.radio(key="p.patch.show").set_value("effect").run()
    assert_close(z_of(heatmaps(charts(at)[0])[0]), expected.effect)
    assert len(calls) == 2  # the test's own call: the two plot options reused the cached sweep


def test_patching_on_ioi_prompts_matches_the_library(app, lib_model):
    at = page(app, "patching")
    at.radio(key="p.patch.source").set_value("IOI prompt set")
    at.number_input(key="p.patch.n_prompts").set_value(2)
    at.button[0].click().run()
    assert not at.exception and not errors(at), errors(at)
    ioi = prompts.ioi_prompts(n=2, seed=0)
    expected = patching.activation_patching(lib_model, ioi.clean_tokens, ioi.corrupted_tokens, ioi.metric(),
                                            progress=False)
    assert_close(z_of(heatmaps(charts(at)[0])[0]), expected.normalized())


def test_patching_errors_are_messages(app):
    at = run_patching(app, corrupted="When Mary went to the store")
    assert any("same length" in e for e in errors(at)), errors(at)
    at = run_patching(at, corrupted=CORRUPTED, answer=" Maryland and more")
    assert any("not one token" in e for e in errors(at)), errors(at)
    at = run_patching(at, corrupted=CLEAN, answer=" Mary")  # nothing to restore: no normalisation
    assert not errors(at) and any("cannot normalize" in w.value for w in at.warning)
    assert heatmaps(charts(at)[0])


def test_patching_attribution_preview_matches_the_library(app, lib_model):
    at = run_patching(app, target="head_out", method="attribution")
    assert not errors(at), errors(at)
    metric = LogitDiff(lib_model.to_single_token(" Mary"), lib_model.to_single_token(" John"))
    expected = attribution.attribution_patching(lib_model, CLEAN, CORRUPTED, metric, target="head_out")
    assert_close(z_of(heatmaps(charts(at)[0])[0]), expected.normalized())


# ----------------------------------------------------------------------------- logit lens
def test_logit_lens_page_matches_the_library_and_plot_options_do_not_recompute(app, lib_model, monkeypatch):
    calls = count_calls(monkeypatch, logit_lens_module, "logit_lens")
    at = page(app, "logit_lens")
    assert not errors(at), errors(at)
    mary = lib_model.to_single_token(" Mary")
    expected = logit_lens_module.logit_lens(lib_model, CLEAN, targets=mary, top_k=5)
    fig = charts(at)[0]
    (trace,) = heatmaps(fig)
    assert_close(z_of(trace), expected.top_probs[:, 0, :, 0])
    assert fig["layout"]["yaxis"]["ticktext"] == expected.layers
    assert len(fig["layout"]["xaxis"]["ticktext"]) == len(expected.str_tokens[0])
    # Hover: the top-k tokens of each cell; cell text: the top token.
    last = expected.top_strs[-1][0][-1]
    assert all(shown(t) in trace["customdata"][-1][-1] for t in last)
    assert trace["text"][-1][-1] == shown(last[0])

    for show, values in [("target_logprob", expected.log_probs[:, 0, :, mary]),
                         ("target_rank", expected.target_rank[:, 0]), ("target_prob", expected.target_prob[:, 0])]:
        at.selectbox(key="p.lens.show").set_value(show).run()
        assert not at.exception and not errors(at)
        assert_close(z_of(heatmaps(charts(at)[0])[0]), values)
    at.checkbox(key="p.lens.cell_text").uncheck().run()
    assert "text" not in heatmaps(charts(at)[0])[0]
    assert len(calls) == 2  # the page's one run and the test's own: plot options reuse the cache


def test_logit_lens_target_that_is_not_one_token_is_an_error_message(app):
    at = page(app, "logit_lens")
    at.text_input(key="p.lens.target").set_value(" Maryland and more").run()
    assert not at.exception
    assert any("not one token" in e for e in errors(at)), errors(at)


# ----------------------------------------------------------------------------- ablation
def test_ablation_page_matches_the_library(app, lib_model):
    at = page(app, "ablation")
    at.selectbox(key="p.ablate.method").set_value("mean")
    at.button[0].click().run()  # the form's "Run ablation"
    assert not at.exception and not errors(at), errors(at)
    metric = LogitDiff(lib_model.to_single_token(" Mary"), lib_model.to_single_token(" John"))
    expected = ablation.ablation_sweep(lib_model, CLEAN, metric, method="mean", reference=CORRUPTED, progress=False)
    assert_close(z_of(heatmaps(charts(at)[0])[0]), expected.effect)
    assert [m.value for m in at.metric] == [f"{expected.baseline:.3f}"]
    table = at.dataframe[0].value
    assert table[["layer", "head"]].values.tolist() == ranked_heads(expected)[["layer", "head"]].values.tolist()
    assert_close(torch.tensor(table["effect"].to_numpy()), torch.tensor(ranked_heads(expected)["effect"].to_numpy()))

    heads = ((0, 1), (lib_model.cfg.n_layer - 1, 0))
    at.multiselect(key="p.ablate.heads").set_value([f"L{l}H{h}" for l, h in heads]).run()
    assert not at.exception and not errors(at), errors(at)
    before_after = at.dataframe[1].value
    tokens = lib_model.to_tokens(CLEAN)
    after = ablation.ablate(lib_model, tokens, ablation.Ablation("mean", heads=heads), reference=CORRUPTED)
    with torch.no_grad():
        before = lib_model(tokens)
    mary, john = lib_model.to_single_token(" Mary"), lib_model.to_single_token(" John")
    assert_close(torch.tensor(before_after["before"].to_numpy()),
                 torch.stack([before[0, -1, mary], before[0, -1, john], before[0, -1, mary] - before[0, -1, john]]))
    assert_close(torch.tensor(before_after["after"].to_numpy()),
                 torch.stack([after[0, -1, mary], after[0, -1, john], after[0, -1, mary] - after[0, -1, john]]))


# ----------------------------------------------------------------------------- save run, runs page
def open_and_run(at, name: str):
    at = page(at, name)
    if name in ("patching", "ablation"):
        at.button[0].click().run()  # the form's Run button
    elif name == "attention":
        at.number_input(key="p.attn.n_seqs").set_value(2)
        at.number_input(key="p.attn.seq_len").set_value(6).run()
    assert not at.exception and not errors(at), errors(at)
    return at


@pytest.mark.parametrize("name, experiment, key", [
    ("logit_lens", "logit_lens", "lens"), ("attention", "attention_heads", "attention"),
    ("patching", "activation_patching", "patching"), ("ablation", "ablate_heads", "ablation"),
])
def test_save_run_writes_a_run_that_replays(app, tmp_path, name, experiment, key):
    at = open_and_run(app, name)
    at.text_input(key=f"p.{key}.run_name").set_value("from the app")
    at.button(key=f"save.{key}").click().run()
    assert not at.exception and not errors(at), errors(at)
    (run,) = find_runs(tmp_path / "runs")
    assert run.parent.name == experiment and run.name.endswith("-from-the-app")
    assert any(str(run) in s.value for s in at.success)
    assert any(f"python -m workbench run {experiment}" in c.value for c in at.code)
    assert any("python -m workbench replay" in c.value for c in at.code)
    report = replay(run)
    assert report.ok, report.format()


def test_runs_page_replots_and_replays(app, tmp_path):
    at = open_and_run(app, "patching")
    at.button(key="save.patching").click().run()
    (run,) = find_runs(tmp_path / "runs")
    at = page(at, "runs")
    assert not errors(at)
    assert at.dataframe[0].value["run"].tolist() == [run.name]
    assert any(c.value == (run / "command").read_text().strip() for c in at.code)
    recorded = load_run(run).tables()["patching"]
    (trace,) = heatmaps(charts(at)[0])  # the recorded values, re-plotted
    assert_close(z_of(trace).flatten(), torch.tensor(recorded["normalized"].to_numpy()))
    at.button(key="runs.replay").click().run()
    assert not at.exception and not errors(at), errors(at)
    assert any("matches" in s.value for s in at.success)
    assert at.dataframe[1].value["match"].all()


def test_runs_page_without_runs_says_so(app):
    at = page(app, "runs")
    assert not errors(at)
    assert any("No recorded runs" in i.value for i in at.info)
