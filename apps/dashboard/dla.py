"""Direct logit attribution: how much each head (layer, neuron, component) writes the task's
direction of the logits directly, through the final LayerNorm with the run's scale frozen. The
page builds a dla experiment config and runs the experiment's own computation."""

import streamlit as st

from dashboard import common
from workbench.experiments.dla import DIRECTIONS, DLAConfig
from workbench.experiments.figures import dla_accumulated_figure, dla_figure, dla_layer_figure
from workbench.experiments.prompt_sets import PROMPT_SETS, default_prompt_set, interval_note
from workbench.methods.dla import BY

DEFAULTS = DLAConfig()  # the experiment's defaults are the page's
GRIDS = {"head": "every head [layer x head]", "layer": "every block [layer]", "neuron": "every MLP neuron [layer x d_mlp]",
         "component": "embed, pos_embed, each attn_out and mlp_out"}
TOP = 20  # components in the table

s = common.session()
st.title("Direct logit attribution")
model = common.require_model(s)
preset = default_prompt_set(model)
if st.session_state.get("dla.defaults_for") != s.model_name:  # open on the task this model can do
    st.session_state["dla.defaults_for"] = s.model_name
    st.session_state["p.dla.source"] = preset
opened = common.opened_run("dla", lambda c: {**common.prompt_set_widgets("dla", c), "p.dla.by": c["by"],
                                             "p.dla.pos": c["pos"]})

with st.form("dla.form"):
    source = st.radio("Prompts", list(PROMPT_SETS), format_func=PROMPT_SETS.get, horizontal=True,
                      key=common.state("p.dla.source", preset),
                      help=f"A preset per task; this model's is {preset}. Direction read: "
                           + "; ".join(f"{k}: {v}" for k, v in DIRECTIONS.items()) + ". Only the clean prompts run.")
    c1, c2, c3 = st.columns(3)
    n_prompts = c1.number_input("prompts (induction, IOI)", 1, 256, key=common.state("p.dla.n_prompts",
                                                                                    DEFAULTS.n_prompts))
    seq_len = c2.number_input("tokens per copy (induction)", 2, max(2, (model.cfg.block_size - 1) // 2),
                              key=common.state("p.dla.seq_len", DEFAULTS.seq_len))
    seed = c3.number_input("seed", 0, 2**31 - 1, key=common.state("p.dla.seed", DEFAULTS.seed))
    clean = st.text_input("Prompt (custom)", key=common.state("p.dla.clean", common.IOI_CLEAN))
    c1, c2 = st.columns(2)
    answer = c1.text_input("Answer token (custom)", key=common.state("p.dla.answer", common.IOI_ANSWER),
                           help="The prompt's correct next token, one token (mind the leading space).")
    wrong = c2.text_input("Wrong token (custom)", key=common.state("p.dla.wrong", common.IOI_WRONG))
    c1, c2 = st.columns(2)
    by = c1.selectbox("Components", BY, format_func=lambda b: f"{b}: {GRIDS[b]}", key=common.state("p.dla.by", DEFAULTS.by),
                      help="The grid of components attributed; everything else in the final residual stream "
                           "(embeddings, biases, the rest of the blocks, the LayerNorm's bias) is listed as its own "
                           "terms, so that all of them sum to the model's value.")
    pos = c2.number_input("Position (empty: the prompt set's)", value=None, step=1, key=common.state("p.dla.pos", None),
                          help="The position read, negative from the end. Default: the last for IOI and custom, "
                               "the second-to-last for induction (the last whose next token is known).")
    if st.form_submit_button("Run attribution", icon=":material/play_arrow:", type="primary"):
        fields = {"prompt_set": source, "seed": int(seed), "by": by}
        if pos is not None:
            fields["pos"] = int(pos)
        if source == "custom":
            fields.update(clean_prompts=[clean], answers=[answer], wrong_answers=[wrong])
        else:
            fields.update(n_prompts=int(n_prompts), seq_len=int(seq_len))
        st.session_state["dla.request"] = common.fields_key(fields)
        common.close_run()

if opened is not None and common.RUN_PARAM in st.query_params:
    with common.guard():
        common.show_opened_run(opened, key="dla")
    st.stop()

fields = st.session_state.get("dla.request")
if fields is None:
    st.info("Choose the prompts and press Run attribution.", icon=":material/info:")
    st.stop()

with common.guard():
    config, result = common.compute(s.key, "dla", fields, "Attributing ...")
    values, _ = result.all_per_prompt()
    c1, c2, c3 = st.columns(3)
    c1.metric("model's value", f"{float(result.total.mean()):.3f}",
              help=f"{result.direction} at pos {result.pos} from the model's logits, mean over the prompts (logits)")
    c2.metric("sum of the components", f"{float(values.sum(1).mean()):.3f}",
              help="Every component's direct contribution, summed (equal to the model's value up to float error)")
    c3.metric("prompts", f"{result.n_prompts}")
    n_tokens = len(config.token_ids["clean"][0])
    st.caption(f"{PROMPT_SETS[config.prompt_set]}; {common.plural(result.n_prompts, 'prompt')} of "
               f"{common.plural(n_tokens, 'token')}. Direction: {result.direction} at {result.pos_label}. Each "
               "component's output there, centred, divided by the final LayerNorm's scale in this run and "
               "multiplied by its weight, dotted with the direction (logits).")
    frame = result.to_frame()
    grey = False
    if result.bootstrap is not None:
        if result.by in ("head", "neuron"):  # drawn as a heatmap
            grey = st.toggle("Grey out components whose interval includes 0", key=common.state("p.dla.grey", False),
                             help="Cover the cells whose bootstrap interval over the prompts includes 0: the prompts "
                                  "do not tell whether the component writes for or against the direction.")
        st.caption(interval_note(config, result.n_prompts) + " of each component's mean (in the hover and the table).")
    st.plotly_chart(dla_figure(frame, grey=grey), width="stretch", key="dla.chart")
    c1, c2 = st.columns(2)
    c1.plotly_chart(dla_layer_figure(result.layer_frame()), width="stretch", key="dla.layers")
    c2.plotly_chart(dla_accumulated_figure(result.accumulated_frame()), width="stretch", key="dla.accumulated")
    with st.expander("Largest direct contributions (mean, spread over the prompts: std, min, max; interval of the "
                     "mean: ci_low, ci_high)", expanded=True):
        common.table(frame.reindex(frame["value"].abs().sort_values(ascending=False).index).head(TOP))

    common.save_run(s, "dla", config, result, key="dla", identity=fields)
