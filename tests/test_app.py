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

    for trace in grid + [heatmaps(charts(at)[1])[0]]:  # sequential scales start dark: no white glare on dark themes
        assert trace["colorscale"][0][1] == "#440154" and trace["colorscale"][-1][1] == "#fde725"  # Viridis
    for trace, scores in zip(grid, expected):  # each cell carries its score
        assert trace["text"] == [[f"{v:.2f}" for v in row] for row in scores.values.tolist()]

    layer, head = lib_model.cfg.n_layer - 1, lib_model.cfg.n_head - 1
    at.selectbox(key="p.attn.layer").set_value(layer)
    at.selectbox(key="p.attn.head").set_value(head).run()
    shapes = charts(at)[0]["layout"]["shapes"]  # the chosen head is outlined in every panel
    assert len(shapes) == 3
    assert all((s["x0"], s["x1"], s["y0"], s["y1"]) == (head - 0.5, head + 0.5, layer - 0.5, layer + 0.5)
               for s in shapes)
    _, cache = lib_model.run_with_cache(CLEAN, names_filter=[f"blocks.{layer}.attn.hook_pattern"])
    pattern = heatmaps(charts(at)[1])[0]
    expected_pattern = cache["pattern", layer][0, head].clone()
    n = expected_pattern.shape[-1]
    masked = torch.ones(n, n, dtype=torch.bool).triu(1)
    expected_pattern[masked] = float("nan")  # the causal mask is drawn blank, not as 0
    assert_close(z_of(pattern), expected_pattern)
    assert all(pattern["z"][q][k] is None for q in range(n) for k in range(q + 1, n))
    assert len(json.loads(at.get("plotly_chart")[1].proto.spec)["layout"]["xaxis"]["ticktext"]) == n



def click_head_grid(at, layer: int, head: int):
    """Run the attention page as after a click on head (layer, head) of the detector grid's first panel:
    the chart's state is the plotly selection of that one marker, as Streamlit stores it."""
    (grid,) = [c for c in at.get("plotly_chart") if c.proto.id.endswith("attn.grid")]
    markers = [t for t in json.loads(grid.proto.spec)["data"] if t["type"] == "scatter"][0]
    i = markers["customdata"].index(f"L{layer}H{head}")
    assert (markers["y"][i], markers["x"][i]) == (layer, head)
    point = {"curve_number": 1, "point_number": i, "point_index": i, "x": head, "y": layer,
             "customdata": f"L{layer}H{head}"}
    at.session_state["attn.grid"] = {"selection": {"points": [point], "point_indices": [i], "box": [], "lasso": []}}
    at.run()
    assert not at.exception, at.exception
    return at


def test_attention_head_clicks_pick_the_head_as_the_other_grids_do(app, lib_model):
    """A click on a head of the detector grid shows its pattern; a head picked in the boxes afterwards
    stays (the click is not applied again); clicking the first head again, the grid having been redrawn,
    picks it again (the same rule as the receiver grid's: only clicks made since the grid was drawn count)."""
    at = page(app, "attention")
    at.number_input(key="p.attn.n_seqs").set_value(2).run()
    n_layer, n_head = lib_model.cfg.n_layer, lib_model.cfg.n_head
    start = (at.selectbox(key="p.attn.layer").value, at.selectbox(key="p.attn.head").value)
    first = next((l, h) for l in range(n_layer) for h in range(n_head) if (l, h) != start)
    other = next((l, h) for l in range(n_layer) for h in range(n_head) if (l, h) not in (start, first))

    def shown(at) -> tuple[int, int]:
        layer, head = at.selectbox(key="p.attn.layer").value, at.selectbox(key="p.attn.head").value
        title = charts(at)[1]["layout"]["title"]["text"]
        assert title.startswith(f"Attention pattern of L{layer}H{head} "), title
        return layer, head

    assert shown(click_head_grid(at, *first)) == first
    at.selectbox(key="p.attn.layer").set_value(other[0])
    at.selectbox(key="p.attn.head").set_value(other[1]).run()
    assert shown(at) == other
    at.run()  # a run that is not a click keeps the boxes' head
    assert shown(at) == other
    assert shown(click_head_grid(at, *first)) == first  # the same head clicked again: picked again
    assert shown(click_head_grid(at, *first)) == first  # a click on the head shown keeps it


# ----------------------------------------------------------------------------- patching
def run_patching(at, source="custom", **inputs):
    at = page(at, "patching")
    at.radio(key="p.patch.source").set_value(source)
    for key, value in inputs.items():
        if key in ("target", "direction", "method"):
            at.selectbox(key=f"p.patch.{key}").set_value(value)
        elif key in ("n_prompts", "seq_len", "seed"):
            at.number_input(key=f"p.patch.{key}").set_value(value)
        else:
            at.text_input(key=f"p.patch.{key}").set_value(value)
    at.button[0].click().run()  # the form's "Run patching"
    assert not at.exception, at.exception
    return at


def warnings(at) -> list[str]:
    return [w.value for w in at.warning]


def test_patching_page_matches_the_library_and_plot_options_do_not_recompute(app, lib_model, monkeypatch):
    from workbench.experiments import activation_patching as experiment

    calls = count_calls(monkeypatch, experiment, "activation_patching")  # what the page runs
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
    assert not {"target", "method", "direction", "metric"} & set(table.columns)  # constant: said once above
    n_tokens = lib_model.to_tokens(CLEAN).shape[1]
    assert any(f"1 prompt of {n_tokens} tokens" in c.value for c in at.caption)  # not "1 prompts"

    at.radio(key="p.patch.show").set_value("value").run()
    assert_close(z_of(heatmaps(charts(at)[0])[0]), expected.values)
    at.radio(key="p.patch.show").set_value("effect").run()
    assert_close(z_of(heatmaps(charts(at)[0])[0]), expected.effect)
    assert len(calls) == 1  # the two plot options reused the cached sweep


def test_patching_opens_on_the_task_the_model_can_do(app, lib_model):
    """On the bundled (or a tiny) model the page opens on the induction preset: the sweep is the
    library's on induction_prompts, clean clearly beats corrupted, and no warning is shown."""
    at = page(app, "patching")
    assert at.radio(key="p.patch.source").value == "induction"
    at.button[0].click().run()
    assert not at.exception and not errors(at), errors(at)
    pairs = prompts.induction_prompts(n=8, seq_len=10, seed=0, vocab_size=lib_model.cfg.vocab_size)
    expected = patching.activation_patching(lib_model, pairs.clean_tokens, pairs.corrupted_tokens, pairs.metric(),
                                            progress=False)
    assert_close(z_of(heatmaps(charts(at)[0])[0]), expected.normalized())
    assert [m.value for m in at.metric][:2] == [f"{expected.clean_value:.3f}", f"{expected.corrupted_value:.3f}"]
    if "shakespeare" in lib_model.name:  # the trained model does the task (a random tiny one need not)
        assert expected.clean_beats_corrupted
        assert not any("not clearly better" in w for w in warnings(at)), warnings(at)


def test_patching_without_signal_warns_and_never_clips_silently(app, lib_model):
    """A task the model cannot do (the IOI pair on a small model): a warning above the heatmap, and
    normalised values beyond [-1, 1] widen the colour scale, with a note, instead of being clipped."""
    at = run_patching(app)
    metric = LogitDiff(lib_model.to_single_token(" Mary"), lib_model.to_single_token(" John"))
    expected = patching.activation_patching(lib_model, CLEAN, CORRUPTED, metric, progress=False)
    assert not expected.clean_beats_corrupted  # neither the bundled nor a random model does IOI
    assert any("not clearly better" in w for w in warnings(at)), warnings(at)
    (trace,) = heatmaps(charts(at)[0])
    z = expected.normalized()
    assert trace["zmin"] <= float(z.min()) and trace["zmax"] >= float(z.max())
    assert trace["zmin"] <= -1 and trace["zmax"] >= 1  # at least the fixed -1..1 scale
    if z.abs().max() > 1:
        assert any("beyond [-1, 1]" in w for w in warnings(at)), warnings(at)


def test_patching_on_ioi_prompts_matches_the_library(app, lib_model):
    at = run_patching(app, source="ioi", n_prompts=2)
    assert not errors(at), errors(at)
    ioi = prompts.ioi_prompts(n=2, seed=0)
    expected = patching.activation_patching(lib_model, ioi.clean_tokens, ioi.corrupted_tokens, ioi.metric(),
                                            progress=False)
    assert_close(z_of(heatmaps(charts(at)[0])[0]), expected.normalized())


def test_patching_errors_are_messages(app):
    at = run_patching(app, corrupted="When Mary went to the store")
    assert any("same length" in e for e in errors(at)), errors(at)
    at = run_patching(at, corrupted=CORRUPTED, answer=" Maryland and more")
    assert any("not one token" in e for e in errors(at)), errors(at)
    assert not any("leading space" in e for e in errors(at))  # it has one: no hint to add it
    at = run_patching(at, answer="Maryland and more")  # not one token with a space either: no hint
    assert not any("leading space" in e for e in errors(at)), errors(at)
    at = run_patching(at, answer="Maryland")  # ' Maryland' is one token
    assert any("With a leading space it is one token: try ' Maryland'" in e for e in errors(at)), errors(at)
    at = run_patching(at, corrupted=CLEAN, answer=" Mary")  # nothing to restore: no normalisation
    assert not errors(at) and any("Cannot normalise" in w for w in warnings(at))
    assert heatmaps(charts(at)[0])


def test_patching_attribution_matches_the_library_and_saves_a_run(app, lib_model, tmp_path, monkeypatch):
    """Method attribution: the page shows the library's estimate and Save run records that result (no
    second computation) as an activation_patching run with method attribution, which replays."""
    from workbench.experiments import activation_patching as experiment

    calls = count_calls(monkeypatch, experiment, "attribution_patching")  # what the page runs
    at = run_patching(app, target="head_out", method="attribution")
    assert not errors(at), errors(at)
    metric = LogitDiff(lib_model.to_single_token(" Mary"), lib_model.to_single_token(" John"))
    expected = attribution.attribution_patching(lib_model, CLEAN, CORRUPTED, metric, target="head_out")
    assert_close(z_of(heatmaps(charts(at)[0])[0]), expected.normalized())
    assert len(calls) == 1
    at.button(key="save.patching").click().run()
    assert not at.exception and not errors(at), errors(at)
    assert len(calls) == 1  # saved what the page computed
    (run,) = find_runs(tmp_path / "runs")
    record = load_run(run)
    assert run.parent.name == "activation_patching" and record.config["method"] == "attribution"
    assert any("--method attribution" in c.value for c in at.code)  # the re-run command
    assert_close(record.tensors()["values"], expected.values)
    report = replay(run)
    assert report.ok, report.format()


# ----------------------------------------------------------------------------- logit lens
def test_logit_lens_page_matches_the_library_and_plot_options_do_not_recompute(app, lib_model, monkeypatch):
    from workbench.experiments import logit_lens as experiment

    calls = count_calls(monkeypatch, experiment, "logit_lens")  # what the page runs
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
    assert len(calls) == 1  # the page's one run: plot options reuse the cache


def test_logit_lens_target_that_is_not_one_token_is_an_error_message(app, lib_model):
    """A bad target is an error about the target; the lens itself is still drawn."""
    at = page(app, "logit_lens")
    at.text_input(key="p.lens.target").set_value(" Maryland and more").run()
    assert not at.exception
    assert any("not one token" in e for e in errors(at)), errors(at)
    expected = logit_lens_module.logit_lens(lib_model, CLEAN, top_k=5)
    assert_close(z_of(heatmaps(charts(at)[0])[0]), expected.top_probs[:, 0, :, 0])
    assert at.selectbox(key="p.lens.show").options == ["probability of the top token"]


def test_logit_lens_stays_readable_at_full_context(app, lib_model):
    """A prompt of the model's whole context: the page draws the last 40 positions with their top
    tokens; the whole range drops the cell text (it would overlap) and labels at most 40 ticks;
    a chosen range and layers draw exactly those cells."""
    n = lib_model.cfg.block_size - 1  # + BOS
    prompt = " the cat" * (n // 2) + (" the" if n % 2 else "")
    app.text_area(key="p.prompt").set_value(prompt).run()
    at = page(app, "logit_lens")
    assert not errors(at), errors(at)
    expected = logit_lens_module.logit_lens(lib_model, prompt, targets=lib_model.to_single_token(" Mary"), top_k=5)
    n_pos = expected.top_probs.shape[2]
    assert n_pos == lib_model.cfg.block_size
    (trace,) = heatmaps(charts(at)[0])
    assert_close(z_of(trace), expected.top_probs[:, 0, n_pos - 40:, 0])
    assert "text" in trace  # 40 positions x layers: the top token is written in each cell
    slider = at.slider(key=f"p.lens.range.{n_pos}")
    slider.set_value((0, n_pos - 1)).run()
    fig = charts(at)[0]
    (trace,) = heatmaps(fig)
    assert_close(z_of(trace), expected.top_probs[:, 0, :, 0])
    assert "text" not in trace or trace["text"] is None
    assert len(fig["layout"]["xaxis"]["ticktext"]) <= 40
    assert any("too many to write" in c.value for c in at.caption)
    at.slider(key=f"p.lens.range.{n_pos}").set_value((10, 19))
    at.multiselect(key="p.lens.layers").set_value([expected.layers[0], expected.layers[-1]]).run()
    fig = charts(at)[0]
    (trace,) = heatmaps(fig)
    assert_close(z_of(trace), expected.top_probs[[0, -1], 0, 10:20, 0])
    assert fig["layout"]["yaxis"]["ticktext"] == [expected.layers[0], expected.layers[-1]]
    assert fig["layout"]["xaxis"]["ticktext"][0].endswith("[10]")


# ----------------------------------------------------------------------------- ablation
def test_ablation_page_matches_the_library(app, lib_model, monkeypatch):
    from workbench.experiments.ablate_heads import AblateHeadsConfig

    heights = []
    dataframe = st.dataframe

    def recorded(data, *args, **kwargs):  # AppTest does not expose a dataframe's height
        heights.append((len(data), kwargs.get("height")))
        return dataframe(data, *args, **kwargs)

    monkeypatch.setattr(st, "dataframe", recorded)
    at = page(app, "ablation")
    # One default, defined once: the page opens on the experiment's (and so the CLI's) method and reference.
    assert at.selectbox(key="p.ablate.method").value == AblateHeadsConfig().method == "mean"
    assert at.selectbox(key="p.ablate.reference").value == AblateHeadsConfig().reference == "prompts"
    at.radio(key="p.ablate.source").set_value("custom")
    at.selectbox(key="p.ablate.reference").set_value("corrupted")
    at.button[0].click().run()  # the form's "Run ablation"
    assert not at.exception and not errors(at), errors(at)
    metric = LogitDiff(lib_model.to_single_token(" Mary"), lib_model.to_single_token(" John"))
    expected = ablation.ablation_sweep(lib_model, CLEAN, metric, method="mean", reference=CORRUPTED, progress=False)
    assert_close(z_of(heatmaps(charts(at)[0])[0]), expected.effect)
    assert at.metric[0].value == f"{expected.baseline:.3f}"
    with torch.no_grad():
        assert at.metric[1].value == f"{float(metric(lib_model(lib_model.to_tokens(CORRUPTED)))):.3f}"
    table = at.dataframe[0].value
    assert table[["layer", "head"]].values.tolist() == ranked_heads(expected)[["layer", "head"]].values.tolist()
    assert_close(torch.tensor(table["effect"].to_numpy()), torch.tensor(ranked_heads(expected)["effect"].to_numpy()))
    assert not {"method", "metric"} & set(table.columns)  # constant: said once in a caption
    n_heads = lib_model.cfg.n_layer * lib_model.cfg.n_head
    n_rows, height = next(h for h in heights if h[0] == n_heads)
    assert height >= 38 + 35 * min(n_heads, 16)  # every head in view (up to 16): 35 px a row, 38 the header

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


def test_ablation_opens_on_the_induction_preset(app, lib_model):
    at = page(app, "ablation")
    assert at.radio(key="p.ablate.source").value == "induction"
    at.button[0].click().run()
    assert not at.exception and not errors(at), errors(at)
    pairs = prompts.induction_prompts(n=8, seq_len=10, seed=0, vocab_size=lib_model.cfg.vocab_size)
    expected = ablation.ablation_sweep(lib_model, pairs.clean_tokens, pairs.metric(), method="mean", progress=False)
    assert_close(z_of(heatmaps(charts(at)[0])[0]), expected.effect)
    if "shakespeare" in lib_model.name:
        assert not any("not clearly better" in w.value for w in at.warning)


# ----------------------------------------------------------------------------- direct logit attribution
def run_dla(at, source=None, **inputs):
    at = page(at, "dla")
    if source is not None:
        at.radio(key="p.dla.source").set_value(source)
    for key, value in inputs.items():
        widget = at.selectbox(key=f"p.dla.{key}") if key == "by" else (
            at.number_input(key=f"p.dla.{key}") if key in ("pos", "n_prompts") else at.text_input(key=f"p.dla.{key}"))
        widget.set_value(value)
    at.button[0].click().run()  # the form's "Run attribution"
    assert not at.exception, at.exception
    return at


def test_dla_page_matches_the_library(app, lib_model):
    """Opens on the task the model can do (induction on the bundled model: the logit of the next
    token at the second-to-last position); the head heatmap, the per-layer bars and the table are
    the library's values; the model's value is read off its logits."""
    from workbench.methods import direct_logit_attribution

    at = run_dla(app)
    assert not errors(at), errors(at)
    assert at.radio(key="p.dla.source").value == "induction"
    pairs = prompts.induction_prompts(n=8, seq_len=10, seed=0, vocab_size=lib_model.cfg.vocab_size)
    tokens = pairs.clean_tokens
    pos = tokens.shape[1] - 2
    expected = direct_logit_attribution(lib_model, tokens, tokens[:, pos + 1], by="head", pos=pos)
    heads, layers, accumulated = charts(at)
    assert_close(z_of(heatmaps(heads)[0]), expected.values)
    attn, mlp = layers["data"]
    assert_close(torch.tensor(attn["y"]), expected.attn_out.mean(0))
    assert_close(torch.tensor(mlp["y"]), expected.mlp_out.mean(0))
    assert_close(torch.tensor(accumulated["data"][0]["y"]), expected.accumulated.mean(0))
    with torch.no_grad():
        own = lib_model(tokens)[:, pos].gather(-1, tokens[:, pos + 1, None])[:, 0].mean()
    assert at.metric[0].value == f"{float(own):.3f}"
    table = at.dataframe[0].value
    top = table.iloc[0]
    frame = expected.to_frame().set_index("label")
    assert abs(top["value"]) == pytest.approx(float(frame["value"].abs().max()), abs=1e-5)
    for column in ("std", "min", "max"):  # the spread over the prompts
        assert top[column] == pytest.approx(float(frame.loc[top["label"], column]), abs=1e-5)


def test_dla_custom_prompt_and_errors(app, lib_model):
    from workbench.methods import direct_logit_attribution

    at = run_dla(app, "custom", by="layer")
    assert not errors(at), errors(at)
    expected = direct_logit_attribution(lib_model, CLEAN, (" Mary", " John"), by="layer")
    (bars,) = charts(at)[0]["data"]
    assert bars["x"][:lib_model.cfg.n_layer] == [f"L{l}" for l in range(lib_model.cfg.n_layer)]
    assert_close(torch.tensor(bars["y"][:lib_model.cfg.n_layer]), expected.values)
    at = run_dla(at, answer="Maryland and more")
    assert any("answer 'Maryland and more'" in e for e in errors(at)), errors(at)
    at = run_dla(at, answer=" Mary", pos=40)
    assert any("pos must be a position of the prompts" in e for e in errors(at)), errors(at)



# ----------------------------------------------------------------------------- the prompt-set form
PROMPT_PAGES = {"patching": "patch", "ablation": "ablate", "dla": "dla", "path_patching": "path", "circuit": "circuit"}


def test_every_prompt_page_draws_one_prompt_set_form(app):
    """The pages that run on a prompt set draw the same form (common.prompt_set_form): the same
    widgets under the page's keys, the corrupted prompt and padding where the page can use them, and
    the file set without a file a message, nothing run."""
    from workbench.experiments.prompt_sets import PROMPT_SETS

    at = app
    for name, key in PROMPT_PAGES.items():
        at = page(at, name)
        keys = {w.key for w in at.main if getattr(w, "key", None)}
        common = {f"p.{key}.{w}" for w in ("source", "n_prompts", "seq_len", "seed", "clean", "answer", "wrong")}
        assert common <= keys, (name, common - keys)
        assert (f"p.{key}.corrupted" in keys) == (name != "dla")  # DLA runs the clean prompts only
        assert f"p.{key}.length_rule" in keys  # every page reads padded prompts at their own last tokens
        sets = at.radio(key=f"p.{key}.source").options  # as shown: PROMPT_SETS's descriptions
        offered = [s for s in PROMPT_SETS if s != "greater_than"] if name == "dla" else list(PROMPT_SETS)
        assert sets == [PROMPT_SETS[s] for s in offered], (name, sets)  # DLA has no greater-than direction
        at.radio(key=f"p.{key}.source").set_value("file")
        at.button[0].click().run()
        assert not at.exception, at.exception
        assert any("Choose a prompt file" in e for e in errors(at)), (name, errors(at))
        assert not [b for b in at.button if (b.key or "").startswith("save.")]


class Upload:
    """A file as Streamlit's file_uploader returns it (what the pages read of it)."""

    def __init__(self, name: str, data: bytes):
        self.name, self.data = name, data

    def getvalue(self) -> bytes:
        return self.data


def test_dla_on_an_uploaded_prompt_file_matches_the_library(app, lib_model, tmp_path, monkeypatch):
    """A prompt file uploaded on the DLA page (new with the shared form) runs on its rows and is
    recorded by the path the page saved it to; the per-layer values are the library's on those prompts."""
    from streamlit.delta_generator import DeltaGenerator

    from workbench.methods import direct_logit_attribution

    rows = [{"clean": CLEAN, "corrupted": CORRUPTED, "answer": " Mary", "wrong": " John"},
            {"clean": CLEAN.replace(" store", " house"), "corrupted": CORRUPTED, "answer": " John", "wrong": " Mary"}]
    data = "\n".join(json.dumps(r) for r in rows).encode()
    uploader = DeltaGenerator.file_uploader
    monkeypatch.setattr(DeltaGenerator, "file_uploader", lambda self, label, *args, key=None, **kwargs:
                        Upload("prompts.jsonl", data) if key == "dla.upload" else uploader(self, label, *args, key=key,
                                                                                         **kwargs))
    at = run_dla(app, "file", by="layer")
    assert not errors(at), errors(at)
    tokens = torch.cat([lib_model.prepare_tokens(r["clean"]) for r in rows])
    direction = tuple(torch.tensor([lib_model.to_single_token(r[k]) for r in rows]) for k in ("answer", "wrong"))
    expected = direct_logit_attribution(lib_model, tokens, direction, by="layer")
    (bars,) = charts(at)[0]["data"]
    assert_close(torch.tensor(bars["y"][:lib_model.cfg.n_layer]), expected.values)
    assert at.metric[2].value == "2"  # prompts
    at.button(key="save.dla").click().run()
    assert not at.exception and not errors(at), errors(at)
    (run,) = find_runs(tmp_path / "runs")
    config = load_run(run).config
    assert config["prompt_set"] == "file" and Path(config["prompts"]).read_bytes() == data


# ----------------------------------------------------------------------------- save run, runs page
def open_and_run(at, name: str):
    at = page(at, name)
    if name == "circuit":
        small_circuit_inputs(at)
    if name in ("patching", "ablation", "dla", "circuit"):
        at.button[0].click().run()  # the form's Run button
    elif name == "attention":
        at.number_input(key="p.attn.n_seqs").set_value(2)
        at.number_input(key="p.attn.seq_len").set_value(6).run()
    assert not at.exception and not errors(at), errors(at)
    return at


@pytest.mark.parametrize("name, experiment, key", [
    ("logit_lens", "logit_lens", "lens"), ("attention", "attention_heads", "attention"),
    ("patching", "activation_patching", "patching"), ("ablation", "ablate_heads", "ablation"),
    ("dla", "dla", "dla"),
    ("circuit", "circuit", "circuit"),
])
def test_save_run_writes_a_run_that_replays(app, tmp_path, name, experiment, key, monkeypatch):
    """Save run records the result on screen (the library method is not run again) and the record
    replays to a match."""
    import importlib

    module = importlib.import_module(f"workbench.experiments.{experiment}")
    method = {"logit_lens": "logit_lens", "attention_heads": "head_scores", "activation_patching": "activation_patching",
              "ablate_heads": "ablation_sweep", "dla": "direct_logit_attribution",
              "circuit": "edge_attribution"}[experiment]
    calls = count_calls(monkeypatch, module, method)
    at = open_and_run(app, name)
    computed = len(calls)
    assert computed >= 1
    at.text_input(key=f"p.{key}.run_name").set_value("from the app")
    at.button(key=f"save.{key}").click().run()
    assert not at.exception and not errors(at), errors(at)
    assert len(calls) == computed  # saved what was computed for the page, not a second computation
    (run,) = find_runs(tmp_path / "runs")
    assert run.parent.name == experiment and run.name.endswith("-from-the-app")
    assert any(str(run) in s.value for s in at.success)
    assert any(f"python -m workbench run {experiment}" in c.value for c in at.code)
    assert any("python -m workbench replay" in c.value for c in at.code)
    report = replay(run)
    assert report.ok, report.format()


def test_runs_page_replots_and_replays(app, tmp_path):
    at = open_and_run(app, "patching")
    (page_trace,) = heatmaps(charts(at)[0])
    at.button(key="save.patching").click().run()
    (run,) = find_runs(tmp_path / "runs")
    at = page(at, "runs")
    assert not errors(at)
    assert at.dataframe[0].value["run"].tolist() == [run.name]
    assert any(c.value == (run / "command").read_text().strip() for c in at.code)
    recorded = load_run(run).tables()["patching"]
    (trace,) = heatmaps(charts(at)[0])  # the recorded values, re-plotted
    assert_close(z_of(trace).flatten(), torch.tensor(recorded["normalized"].to_numpy()))
    # the same figure as the patching page: same values on the same (fixed -1..1, widened to cover) scale
    assert (trace["zmin"], trace["zmax"]) == (page_trace["zmin"], page_trace["zmax"])
    assert trace["zmin"] <= -1 and trace["zmax"] >= 1
    assert_close(z_of(trace), z_of(page_trace))
    at.button(key="runs.replay").click().run()
    assert not at.exception and not errors(at), errors(at)
    assert any("matches" in s.value for s in at.success)
    assert at.dataframe[1].value["match"].all()


def test_runs_page_replots_a_dla_run(app, tmp_path):
    """The Runs page draws a recorded DLA run with the page's own figures: the same head heatmap,
    per-layer bars and accumulated view."""
    at = open_and_run(app, "dla")
    on_page = charts(at)
    at.button(key="save.dla").click().run()
    (run,) = find_runs(tmp_path / "runs")
    at = page(at, "runs")
    assert not errors(at)
    replotted = charts(at)
    assert len(replotted) == len(on_page) == 3
    assert_close(z_of(heatmaps(replotted[0])[0]), z_of(heatmaps(on_page[0])[0]))
    for a, b in zip(replotted[1]["data"] + replotted[2]["data"], on_page[1]["data"] + on_page[2]["data"]):
        assert_close(torch.tensor(a["y"]), torch.tensor(b["y"]))


def test_runs_page_without_runs_says_so(app):
    at = page(app, "runs")
    assert not errors(at)
    assert any("No recorded runs" in i.value for i in at.info)


def test_saved_run_notice_belongs_to_the_result_it_saved(app, tmp_path):
    """After Save run, another result (another target, an error, another page) shows no notice of
    the old run; coming back to the saved result shows it again."""
    at = run_patching(app, target="resid_pre")
    at.button(key="save.patching").click().run()
    (run,) = find_runs(tmp_path / "runs")
    assert any(str(run) in s.value for s in at.success)

    def notice(at) -> bool:
        return any("Saved run" in s.value for s in at.success) or any("workbench replay" in c.value for c in at.code)

    at = run_patching(at, target="attn_out")
    assert not errors(at) and not notice(at)
    at = run_patching(at, direction="noise", target="resid_pre")
    assert not notice(at)
    at = run_patching(at, corrupted="When Mary went to the store")  # an error: no result, no notice
    assert errors(at) and not notice(at)
    at = open_and_run(at, "logit_lens")
    assert not notice(at)
    at = run_patching(at, corrupted=CORRUPTED, direction="denoise", target="resid_pre")  # the saved result again
    assert any(str(run) in s.value for s in at.success)


def test_attention_detectors_show_a_progress_bar(app, monkeypatch):
    from workbench.experiments import attention_heads

    bars, reports = [], []
    progress, head_scores = st.progress, attention_heads.head_scores

    def recorded_bar(value, text=None, **kwargs):
        bars.append(text)
        return progress(value, text=text, **kwargs)

    def recorded_scores(*args, progress=None, **kwargs):
        return head_scores(*args, progress=lambda done, total: (reports.append((done, total)), progress(done, total)),
                           batch_size=1, **kwargs)

    monkeypatch.setattr(st, "progress", recorded_bar)
    monkeypatch.setattr(attention_heads, "head_scores", recorded_scores)
    at = page(app, "attention")
    at.number_input(key="p.attn.n_seqs").set_value(3)
    at.number_input(key="p.attn.seq_len").set_value(5).run()
    assert not errors(at), errors(at)
    assert any(text and "Scoring every head" in text for text in bars), bars
    assert reports[-3:] == [(1, 3), (2, 3), (3, 3)]  # (the page first ran on the default 8 sequences)


def test_empty_prompt_is_a_message_on_every_page_and_cannot_be_saved(app):
    app.text_area(key="p.prompt").set_value("  ").run()
    assert not app.exception
    assert any("prompt is empty" in e for e in errors(app)), errors(app)
    at = page(app, "logit_lens")
    assert any("prompt is empty" in e for e in errors(at)), errors(at)
    assert not charts(at)
    assert "save.lens" not in [b.key for b in at.button]
    at = page(at, "attention")
    assert any("prompt is empty" in e for e in errors(at)), errors(at)  # the pattern over the prompt
    for name, key, save in (("patching", "patch", "patching"), ("ablation", "ablate", "ablation"),
                            ("path_patching", "path", "path_patching"), ("circuit", "circuit", "circuit")):
        at = page(at, name)
        at.radio(key=f"p.{key}.source").set_value("custom")
        at.text_input(key=f"p.{key}.clean").set_value("")
        at.button[0].click().run()
        assert not at.exception
        assert any("clean_prompts[0] has no text" in e for e in errors(at)), errors(at)
        assert not results(at)  # (the path patching page's receiver grid is not a result)
        assert f"save.{save}" not in [b.key for b in at.button]


def test_model_page_banner_tokens_and_card(app, experiment_model, monkeypatch):
    """The default-model notice names the dashboard's way to pick a model (not --model); one token
    is "1 token"; the model card is a summary with the JSON folded away."""
    from workbench.models import default

    monkeypatch.setattr(default, "_gpt2_cached", lambda: False)
    monkeypatch.setattr(default.hub, "hub_problem", lambda *a, **k: "the hub is unreachable (test)")
    monkeypatch.delenv("WORKBENCH_MODEL")
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    (banner,) = [i.value for i in at.info]
    assert "?model=" in banner and "WORKBENCH_MODEL" in banner and "--model" not in banner
    at.text_area(key="p.prompt").set_value("").run()
    at.text_area(key="p.prompt").set_value("Hello").run()
    assert any(c.value.startswith("2 tokens") for c in at.caption)  # BOS + Hello
    app.text_area(key="p.prompt").set_value("").run()
    from workbench.models.bundled import DEFAULT_BUNDLED, bundled_names

    if DEFAULT_BUNDLED in bundled_names():
        assert any("validation loss" in str(row) for row in at.dataframe[-1].value.to_numpy().tolist())
        assert [e.label for e in at.expander] == ["The whole model card (JSON)"]
        card = json.loads(at.code[-1].value)
        assert card["name"] == DEFAULT_BUNDLED


def test_hover_never_reads_minus_zero():
    """A value of -0.0 (e.g. a normalised cell equal to the corrupted run) hovers as 0, not -0."""
    from workbench.experiments.figures import heatmap

    fig = heatmap(torch.tensor([[-0.0, 0.5], [-0.25, float("nan")]]), x=["a", "b"], y=["0", "1"], x_title="pos",
                  y_title="layer", title="t", colorbar="normalised", diverging=True)
    trace = fig.data[0]
    assert trace.customdata[0][0].endswith("normalised: 0") and "-0" not in trace.customdata[0][0]
    assert trace.customdata[1][0].endswith("normalised: -0.25")
    assert trace.customdata[1][1].endswith("normalised: n/a") and trace.z[1][1] is None
    assert str(trace.z[0][0]) == "0.0"


# ----------------------------------------------------------------------------- path patching
def results(at) -> list[dict]:
    """The path patching page's result charts (not its receiver grid)."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart") if not c.proto.id.endswith("path.grid")]


def receiver_grid(at) -> tuple[dict, dict]:
    """The path patching page's receiver grid: its block-0 trace and its (selectable) heads trace."""
    (grid,) = [c for c in at.get("plotly_chart") if c.proto.id.endswith("path.grid")]
    block0, heads = json.loads(grid.proto.spec)["data"]
    return block0, heads


def click_grid(at, label: str):
    """Run the page as after a click on the grid's marker `label`: the chart's state (under its key) is
    the plotly selection of that one point, as Streamlit stores it (AppTest cannot click a chart)."""
    _, heads = receiver_grid(at)
    i = heads["customdata"].index(label)
    point = {"curve_number": 1, "point_number": i, "point_index": i, "x": heads["x"][i], "y": heads["y"][i],
             "customdata": label}
    at.session_state["path.grid"] = {"selection": {"points": [point], "point_indices": [i], "box": [], "lasso": []}}
    at.run()
    assert not at.exception, at.exception
    return at


def filled(at) -> list[str]:
    """The heads the receiver grid draws as receivers (marked with their input)."""
    _, heads = receiver_grid(at)
    return [name for name, text in zip(heads["customdata"], heads["text"]) if text]


def test_path_patching_page_matches_the_library(app, lib_model, monkeypatch):
    """The page opens on the task and receivers the experiment's "auto" picks (the induction heads' keys
    on the bundled model), and its heatmap and table are the library's path_patching for those inputs;
    other receivers (the logits, MLP senders) too; changing the plot option does not recompute."""
    from workbench.experiments import path_patching as experiment
    from workbench.experiments.path_patching import default_receivers, parse_receivers
    from workbench.methods.path_patching import path_patching

    calls = count_calls(monkeypatch, experiment, "path_patching")
    at = page(app, "path_patching")
    assert at.radio(key="p.path.source").value == "induction"
    receivers = parse_receivers(default_receivers("induction", lib_model))
    assert at.multiselect(key="p.path.heads").value == [f"L{l}H{h}" for l, h, _ in receivers]
    at.button[0].click().run()
    assert not at.exception and not errors(at), errors(at)
    pairs = prompts.induction_prompts(n=8, seq_len=10, seed=0, vocab_size=lib_model.cfg.vocab_size)
    expected = path_patching(lib_model, pairs.clean_tokens, pairs.corrupted_tokens, pairs.metric(),
                             receivers=receivers, direction="noise", progress=False)
    (trace,) = heatmaps(results(at)[0])
    assert_close(z_of(trace), expected.effect)
    assert [m.value for m in at.metric][:2] == [f"{expected.clean_value:.3f}", f"{expected.corrupted_value:.3f}"]
    table = at.dataframe[0].value
    best = expected.to_frame().query("computed").sort_values("effect", key=abs, ascending=False)
    assert table["component"].tolist() == best["component"].tolist()
    if "shakespeare" in lib_model.name:
        assert table["component"].iloc[0] == "L0H3"  # the previous-token head writes the induction keys
    at.radio(key="p.path.show").set_value("value").run()
    assert_close(z_of(heatmaps(results(at)[0])[0]), expected.values)
    assert len(calls) == 1

    at.radio(key="p.path.receiver_kind").set_value("logits")
    at.selectbox(key="p.path.senders").set_value("mlps")
    at.button[0].click().run()
    assert not at.exception and not errors(at), errors(at)
    expected = path_patching(lib_model, pairs.clean_tokens, pairs.corrupted_tokens, pairs.metric(),
                             receivers="logits", senders="mlps", direction="noise", progress=False)
    (bar,) = results(at)[0]["data"]
    assert_close(torch.tensor(bar["y"], dtype=torch.float64), expected.values)


def test_path_patching_page_saves_a_run_that_replays_and_refuses_empty_receivers(app, tmp_path, monkeypatch):
    from workbench.experiments import path_patching as experiment

    calls = count_calls(monkeypatch, experiment, "path_patching")
    at = page(app, "path_patching")
    at.button[0].click().run()
    at.button(key="save.path_patching").click().run()
    assert not at.exception and not errors(at), errors(at)
    assert len(calls) == 1  # saved what the page computed
    (run,) = find_runs(tmp_path / "runs")
    assert run.parent.name == "path_patching"
    assert replay(run).ok

    at.multiselect(key="p.path.heads").set_value([])
    at.button[0].click().run()
    assert not at.exception
    assert any("receivers is empty" in e for e in errors(at)), errors(at)
    at.multiselect(key="p.path.heads").set_value(["L1H0"])
    at.selectbox(key="p.path.input").set_value("q")
    at.button[0].click().run()
    assert not at.exception and not errors(at), errors(at)
    assert any("L1H0.q" in c.value for c in at.caption)


def test_path_patching_receivers_from_the_activation_patching_result(app, lib_model):
    """After a head_k sweep on the patching page, the path patching page takes its top heads (outside
    block 0, by |effect|) as receivers of their key input."""
    from workbench.experiments.path_patching import heads_from_patching

    at = page(app, "patching")
    at.selectbox(key="p.patch.target").set_value("head_k")
    at.button[0].click().run()
    assert not at.exception and not errors(at), errors(at)
    at = page(at, "path_patching")
    at.number_input(key="p.path.top_k").set_value(2)
    at.button(key="path.from_patching").click().run()
    assert not at.exception and not errors(at), errors(at)
    pairs = prompts.induction_prompts(n=8, seq_len=10, seed=0, vocab_size=lib_model.cfg.vocab_size)
    expected = patching.activation_patching(lib_model, pairs.clean_tokens, pairs.corrupted_tokens, pairs.metric(),
                                            target="head_k", progress=False).to_frame()
    top = expected[expected["layer"] > 0].sort_values("effect", key=abs, ascending=False).head(2)
    chosen = [f"L{l}H{h}" for l, h in zip(top["layer"], top["head"])]
    assert [f"L{l}H{h}" for l, h in heads_from_patching(expected, k=2)] == chosen
    assert at.multiselect(key="p.path.heads").value == chosen
    assert at.selectbox(key="p.path.input").value == "k"
    (run,) = [b for b in at.button if b.label == "Run path patching"]
    run.click().run()
    assert not at.exception and not errors(at), errors(at)
    assert any(", ".join(f"{name}.k" for name in chosen) in c.value for c in at.caption), [c.value for c in at.caption]


def test_path_patching_receivers_by_clicking_the_head_grid(app, lib_model):
    """The receiver grid has one marker per head: block 0's grey and unlabelled (never receivers), every
    later head labelled and selectable; the receivers the form sends are the filled ones, marked with
    their input. A click on a head adds it or, if it is a receiver, removes it; removing a head in the
    list afterwards is not undone by the next run; a click while the receivers are the logits makes
    the clicked head's input the receivers."""
    n_layer, n_head = lib_model.cfg.n_layer, lib_model.cfg.n_head
    at = page(app, "path_patching")
    block0, heads = receiver_grid(at)
    assert "customdata" not in block0 and block0["y"] == [0] * n_head and block0["x"] == list(range(n_head))
    assert heads["customdata"] == [f"L{l}H{h}" for l in range(1, n_layer) for h in range(n_head)]
    assert [(f"L{y}H{x}") for x, y in zip(heads["x"], heads["y"])] == heads["customdata"]
    start = at.multiselect(key="p.path.heads").value
    assert start and filled(at) == start
    assert {t for t in heads["text"] if t} == {at.selectbox(key="p.path.input").value}

    first = start[0]
    click_grid(at, first)  # a receiver: removed
    assert at.multiselect(key="p.path.heads").value == start[1:] and filled(at) == start[1:]
    click_grid(at, first)  # again: added
    assert at.multiselect(key="p.path.heads").value == start[1:] + [first]
    assert sorted(filled(at)) == sorted(start)

    at.multiselect(key="p.path.heads").set_value(start[1:] or [first])  # edited in the list, then the form sent
    at.selectbox(key="p.path.input").set_value("q")
    at.button[0].click().run()
    assert not at.exception and not errors(at), errors(at)
    at.run()
    assert at.multiselect(key="p.path.heads").value == (start[1:] or [first])
    assert filled(at) == (start[1:] or [first]) and {t for t in receiver_grid(at)[1]["text"] if t} == {"q"}
    assert any(", ".join(f"{name}.q" for name in start[1:] or [first]) in c.value for c in at.caption)

    at.radio(key="p.path.receiver_kind").set_value("logits")
    at.button[0].click().run()
    assert not at.exception and filled(at) == []
    click_grid(at, first)
    assert at.radio(key="p.path.receiver_kind").value == "heads"
    assert at.multiselect(key="p.path.heads").value == [first] and filled(at) == [first]


def test_clicks_toggle_only_newly_selected_heads(monkeypatch):
    """A page acts on a chart's selection only where it differs from the selection the chart was drawn
    with: a newly selected head is added, or removed if it is there; an unchanged or shrunk selection
    (a redrawn chart starts with none) changes nothing."""
    monkeypatch.syspath_prepend(str(Path(APP).parent))  # as streamlit runs the app: apps/ on the path
    from dashboard.common import selected_labels, toggle_clicked

    def event(*labels):
        return {"selection": {"points": [{"customdata": n} for n in labels] + [{"x": 0, "y": 0}],
                              "point_indices": [], "box": [], "lasso": []}}

    assert selected_labels(event("L1H2", "L1H0")) == ["L1H2", "L1H0"]  # an unlabelled point (block 0) left out
    assert selected_labels(None) == [] and selected_labels({"selection": {}}) == []
    assert toggle_clicked(["L1H0", "L1H1"], ["L1H2"], []) == ["L1H0", "L1H1", "L1H2"]
    assert toggle_clicked(["L1H0", "L1H1"], ["L1H0"], []) == ["L1H1"]
    assert toggle_clicked(["L1H1"], ["L1H0"], ["L1H0"]) == ["L1H1"]  # seen before: removed in the list, stays so
    assert toggle_clicked(["L1H1"], [], ["L1H0"]) == ["L1H1"]
    assert toggle_clicked(["L1H1"], ["L1H0", "L1H2"], ["L1H0"]) == ["L1H1", "L1H2"]  # a shift-click adds


# ----------------------------------------------------------------------------- circuit
def small_circuit_inputs(at):
    for key, value in {"n_prompts": 2, "seq_len": 4, "steps": 2, "exact_top": 8, "points": 5}.items():
        at.number_input(key=f"p.circuit.{key}").set_value(value)


def test_circuit_page_matches_the_library(app, lib_model, monkeypatch):
    from workbench.experiments import circuit as experiment
    from workbench.methods import circuit as lib
    from workbench.methods.prompts import induction_prompts

    calls = count_calls(monkeypatch, experiment, "edge_attribution")
    at = page(app, "circuit")
    assert at.radio(key="p.circuit.source").value == "induction"  # the task the test model can do
    small_circuit_inputs(at)
    at.button[0].click().run()
    assert not at.exception and not errors(at), errors(at)
    pairs = induction_prompts(n=2, seq_len=4, seed=0, vocab_size=lib_model.cfg.vocab_size)
    metric = pairs.metric()
    scores = lib.edge_attribution(lib_model, pairs.clean_tokens, pairs.corrupted_tokens, metric, method="eap-ig", steps=2)
    curve = lib.faithfulness_curve(lib_model, pairs.clean_tokens, pairs.corrupted_tokens, metric, scores, points=5,
                                   exact_top=8)
    assert [m.value for m in at.metric][:3] == [f"{curve.clean_value:.3f}", f"{curve.corrupted_value:.3f}",
                                                 f"{len(scores.graph)}"]
    graph, faithfulness = charts(at)
    # the graph: one midpoint per drawn edge (top 30 by |exact effect| among the verified edges)
    (mids,) = [t for t in graph["data"] if t.get("name") == "edges"]
    order = curve.exact.edges[curve.exact.effect.abs().argsort(descending=True, stable=True)]
    assert mids["customdata"] == [scores.graph.edges[i] for i in order.tolist()]
    (line,) = faithfulness["data"]
    assert line["x"] == curve.n_edges.tolist()
    assert_close(torch.tensor(line["y"]), curve.faithfulness)
    table = at.dataframe[0].value
    exact = dict(zip(curve.exact.to_frame().edge, curve.exact.effect.tolist()))
    verified = table[table["exact"].notna()]
    assert len(verified) == 8
    for _, row in verified.iterrows():
        assert row["exact"] == pytest.approx(exact[row["edge"]], abs=1e-5)
        assert row["score"] == pytest.approx(float(scores.scores[scores.graph.edges.index(row["edge"])]), abs=1e-5)
    at.radio(key="p.circuit.score").set_value("score").run()  # a plot option: no recomputation
    assert not at.exception and len(calls) == 1


def test_circuit_page_errors_are_messages(app):
    at = page(app, "circuit")
    at.radio(key="p.circuit.source").set_value("custom")
    at.text_input(key="p.circuit.corrupted").set_value("When Mary and John went to the store, Mary gave drinks to")
    at.button[0].click().run()
    assert not at.exception
    assert any("different lengths" in e for e in errors(at))


# ----------------------------------------------------------------------------- intervals over prompts
def test_dla_page_shows_intervals_on_hover_and_greys_out(app, lib_model):
    """The DLA heatmap's hover holds each head's bootstrap interval over the prompts (the library's
    to_frame for the same prompts); the toggle covers the heads whose interval includes 0."""
    from workbench.methods import direct_logit_attribution

    at = run_dla(app)
    assert not errors(at), errors(at)
    pairs = prompts.induction_prompts(n=8, seq_len=10, seed=0, vocab_size=lib_model.cfg.vocab_size)
    tokens = pairs.clean_tokens
    pos = tokens.shape[1] - 2
    expected = direct_logit_attribution(lib_model, tokens, tokens[:, pos + 1], by="head", pos=pos)
    frame = expected.to_frame()
    cell = frame[frame["label"] == "L1H0"].iloc[0]
    (trace,) = heatmaps(charts(at)[0])
    assert f"interval [{cell['ci_low']:.4g}, {cell['ci_high']:.4g}] over 8 prompts" in trace["customdata"][1][0]
    attn = charts(at)[1]["data"][0]  # the per-layer bars: the interval in the hover
    layers = expected.layer_frame().query("component == 'attn_out'")
    assert [v for row in attn["customdata"] for v in row[:2]] == pytest.approx(
        layers[["ci_low", "ci_high"]].to_numpy().flatten().tolist())
    assert "interval" in attn["hovertemplate"]
    assert any("percentile bootstrap of the mean over n = 8 prompts" in c.value for c in at.caption)
    at.toggle(key="p.dla.grey").set_value(True).run()
    assert not at.exception
    heat, grey = heatmaps(charts(at)[0])
    heads = frame[frame["component"] == "head"]
    uncertain = ((heads["ci_low"] <= 0) & (heads["ci_high"] >= 0)).to_numpy().reshape(lib_model.cfg.n_layer, -1)
    assert [[z is not None for z in row] for row in grey["z"]] == uncertain.tolist()


def test_path_patching_page_shows_intervals_on_hover_and_greys_out(app, lib_model):
    from workbench.experiments.path_patching import default_receivers, parse_receivers
    from workbench.methods.path_patching import path_patching

    at = page(app, "path_patching")
    at.button[0].click().run()
    assert not at.exception and not errors(at), errors(at)
    pairs = prompts.induction_prompts(n=8, seq_len=10, seed=0, vocab_size=lib_model.cfg.vocab_size)
    receivers = parse_receivers(default_receivers("induction", lib_model))
    frame = path_patching(lib_model, pairs.clean_tokens, pairs.corrupted_tokens, pairs.metric(), receivers=receivers,
                          direction="noise", per_prompt=True, progress=False).to_frame()
    (trace,) = heatmaps(results(at)[0])
    cell = frame[(frame["layer"] == 0) & (frame["head"] == 3)].iloc[0]
    assert f"interval [{cell['effect_ci_low']:.4g}, {cell['effect_ci_high']:.4g}] over 8 prompts" in trace["customdata"][0][3]
    at.toggle(key="p.path.grey").set_value(True).run()
    assert not at.exception
    heat, grey = heatmaps(results(at)[0])
    covered = [(r, c) for r, row in enumerate(grey["z"]) for c, z in enumerate(row) if z is not None]
    expected = [(int(r.layer), int(r.head)) for r in frame.itertuples()
                if r.computed and r.effect_ci_low <= 0 <= r.effect_ci_high]
    assert sorted(covered) == sorted(expected)


def test_circuit_page_shows_intervals_on_hover(app, lib_model):
    from workbench.methods import circuit as lib
    from workbench.methods.prompts import induction_prompts

    at = page(app, "circuit")
    small_circuit_inputs(at)
    at.button[0].click().run()
    assert not at.exception and not errors(at), errors(at)
    pairs = induction_prompts(n=2, seq_len=4, seed=0, vocab_size=lib_model.cfg.vocab_size)
    exact = lib.faithfulness_curve(lib_model, pairs.clean_tokens, pairs.corrupted_tokens, pairs.metric(),
                                   lib.edge_attribution(lib_model, pairs.clean_tokens, pairs.corrupted_tokens,
                                                        pairs.metric(), method="eap-ig", steps=2),
                                   points=5, exact_top=8, per_prompt=True).exact.to_frame().set_index("edge")
    graph, faithfulness = charts(at)
    (mids,) = [t for t in graph["data"] if t.get("name") == "edges"]
    edge, text = mids["customdata"][0], mids["hovertext"][0]
    assert (f"interval [{exact.loc[edge, 'effect_ci_low']:.4g}, {exact.loc[edge, 'effect_ci_high']:.4g}] over 2 "
            "prompts") in text
    assert faithfulness["data"][0]["error_y"]["array"]  # the curve's intervals
    at.toggle(key="p.circuit.grey").set_value(True).run()
    assert not at.exception and not errors(at)
