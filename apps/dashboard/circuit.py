"""Circuit discovery: rank every edge by EAP-IG (or EAP), verify the top edges by exact edge
patching, and draw the faithfulness curve of the top-k edges. The page builds a circuit experiment
config and runs the experiment's own computation; clicking an edge or a node on the graph shows its
values."""

import streamlit as st

from dashboard import common
from workbench.experiments.circuit import CircuitConfig
from workbench.experiments.figures import circuit_figure, faithfulness_figure
from workbench.experiments.prompt_sets import METRICS, PROMPT_SETS, default_prompt_set, interval_note
from workbench.methods.metrics import no_signal_message

METHODS = {"eap-ig": "EAP-IG (gradients along the corrupted -> clean inputs)", "eap": "EAP (one gradient)"}
SCORES = {"exact": "exact effect (verified edges only)", "score": "gradient estimate"}
DEFAULTS = CircuitConfig()  # the experiment's defaults are the page's
PROMPTS = CircuitConfig(n_prompts=4, seq_len=8)  # but fewer, shorter prompts: EAP-IG and edge patching are slow

s = common.session()
st.title("Circuit")
model = common.require_model(s)
preset = default_prompt_set(model)
common.open_on_preset("circuit", s, preset)
opened = common.opened_run("circuit", lambda c: {
    **common.prompt_set_widgets("circuit", c), "p.circuit.method": c["method"], "p.circuit.steps": int(c["steps"]),
    "p.circuit.exact_top": int(c["exact_top"]), "p.circuit.points": int(c["points"]),
    "p.circuit.target": float(c["target"])})

with st.form("circuit.form"):
    prompts = common.prompt_set_form("circuit", model, preset, defaults=PROMPTS, most=64,
                                     sets_help="The bundled model can do induction, not IOI.")
    c1, c2, c3, c4, c5 = st.columns(5)
    method = c1.selectbox("Ranking", list(METHODS), format_func=METHODS.get,
                          key=common.state("p.circuit.method", DEFAULTS.method))
    steps = c2.number_input("EAP-IG steps", 1, 50, key=common.state("p.circuit.steps", DEFAULTS.steps))
    exact_top = c3.number_input("verify top N exactly", 0, 5000, key=common.state("p.circuit.exact_top",
                                                                                   DEFAULTS.exact_top),
                                help="Exact edge patching of the N best-ranked edges, which are then re-ranked by it.")
    points = c4.number_input("curve points", 1, 100, key=common.state("p.circuit.points", DEFAULTS.points))
    target = c5.number_input("target faithfulness", 0.0, 2.0, step=0.05,
                             key=common.state("p.circuit.target", DEFAULTS.target))
    sent = st.form_submit_button("Find circuit", icon=":material/play_arrow:", type="primary")
    if sent and (fields := prompts.fields(s)):
        fields.update(method=method, steps=int(steps), exact_top=int(exact_top), points=int(points),
                      target=float(target))
        common.submit("circuit", common.fields_key(fields))

fields = common.form_request("circuit", opened, key="circuit", hint="Choose the prompts and press Find circuit.")

with common.guard():
    config, result = common.compute(s.key, "circuit", fields, "Ranking, verifying and evaluating edges ...")
    curve, scores = result.curve, result.scores
    metric_label = METRICS[config.metric]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("clean", f"{curve.clean_value:.3f}", help=f"{config.metric}: {metric_label}")
    c2.metric("corrupted", f"{curve.corrupted_value:.3f}", help=f"{config.metric}: {metric_label}")
    c3.metric("edges", f"{len(scores.graph)}", help="(node, input) pairs: head q / k / v, MLP and logit inputs")
    c4.metric(f"smallest circuit >= {config.target:g}", "none" if result.smallest is None else
              f"{result.smallest[0]} edges", help="on the ranking below; faithfulness "
              + ("-" if result.smallest is None else f"{result.smallest[1]:.3f}"))
    st.caption(f"{PROMPT_SETS[config.prompt_set]}; {common.plural(len(config.token_ids['clean']), 'prompt')} of "
               f"{common.plural(len(config.token_ids['clean'][0]), 'token')}. Metric: {config.metric}, {metric_label}. "
               "Faithfulness = (m(circuit) - m(corrupted)) / (m(clean) - m(corrupted)), edges outside the circuit "
               "carrying the corrupted run's outputs.")
    warning = no_signal_message(curve.clean_value, curve.corrupted_value, config.metric)
    if warning:
        st.warning(warning, icon=":material/warning:")
    edges = result.edges_frame()
    c1, c2 = st.columns([1, 2])
    top = c1.number_input("edges drawn (top N)", 1, len(edges), min(30, len(edges)), key="p.circuit.top")
    verified = bool(edges["exact"].notna().any())
    score = c2.radio("Width and colour by", list(SCORES) if verified else ["score"], format_func=SCORES.get,
                     horizontal=True, key="p.circuit.score")
    grey = False
    if curve.per_prompt is not None:
        grey = st.toggle("Grey out edges whose interval includes 0", key=common.state("p.circuit.grey", False),
                         help="Draw grey the edges whose bootstrap interval over the prompts (of the shown score) "
                              "includes 0: the prompts do not tell whether corrupting the edge raises or lowers "
                              "the metric.")
        st.caption(interval_note(config, curve.per_prompt.shape[1]) + " (in each edge's hover, and the curve's "
                   "error bars: faithfulness is a ratio of means, both resampled together).")
    fig = circuit_figure(edges, n_layer=model.cfg.n_layer, n_head=model.cfg.n_head, score=score, top=int(top),
                         grey=grey)
    event = st.plotly_chart(fig, width="stretch", key="circuit.graph", on_select="rerun", selection_mode="points")
    picked = [p.get("customdata") for p in (event.selection.points if event else []) if p.get("customdata")]
    for label in picked[:3]:
        if "->" in label:
            st.dataframe(edges[edges["edge"] == label], hide_index=True)
        else:
            touching = edges[(edges["upstream"] == label) | (edges["downstream"].str.split(".").str[0] == label)]
            st.caption(f"{label}: {len(touching)} edges; largest |score| first")
            common.table(touching.sort_values("abs_score", ascending=False).head(10))
    st.plotly_chart(faithfulness_figure(curve.to_frame(), target=config.target), width="stretch",
                    key="circuit.curve")
    with st.expander("Edges: gradient estimate vs exact effect", expanded=True):
        columns = ["edge", "score", "ci_low", "ci_high", "exact", "exact_ci_low", "exact_ci_high", "rank",
                   "final_rank", "in_smallest", "upstream_layer", "downstream_layer", "input"]
        common.table(edges.sort_values("final_rank")[[c for c in columns if c in edges]]
                     .head(max(int(top), config.exact_top)))
    common.save_run(s, "circuit", config, result, key="circuit", identity=fields)
