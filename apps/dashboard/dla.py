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
common.open_on_preset("dla", s, preset)
opened = common.opened_run("dla", lambda c: {**common.prompt_set_widgets("dla", c), "p.dla.by": c["by"],
                                             "p.dla.pos": c["pos"]})

with st.form("dla.form"):
    # Only the clean prompts run (padded ones each read at its own last token), along a direction of DIRECTIONS.
    prompts = common.prompt_set_form(
        "dla", model, preset, defaults=DEFAULTS, corrupted=None,
        sets=[name for name in PROMPT_SETS if name in DIRECTIONS or name == "file"],
        sets_help="Direction read: " + "; ".join(f"{k}: {v}" for k, v in DIRECTIONS.items())
                  + "; file: as custom. Only the clean prompts run.")
    c1, c2 = st.columns(2)
    by = c1.selectbox("Components", BY, format_func=lambda b: f"{b}: {GRIDS[b]}", key=common.state("p.dla.by", DEFAULTS.by),
                      help="The grid of components attributed; everything else in the final residual stream "
                           "(embeddings, biases, the rest of the blocks, the LayerNorm's bias) is listed as its own "
                           "terms, so that all of them sum to the model's value.")
    pos = c2.number_input("Position (empty: the prompt set's)", value=None, step=1, key=common.state("p.dla.pos", None),
                          help="The position read, negative from the end. Default: the last for IOI and custom, "
                               "the second-to-last for induction (the last whose next token is known).")
    sent = st.form_submit_button("Run attribution", icon=":material/play_arrow:", type="primary")
    if sent and (fields := prompts.fields(s)):
        fields["by"] = by
        if pos is not None:
            fields["pos"] = int(pos)
        common.submit("dla", common.fields_key(fields))

fields = common.form_request("dla", opened, key="dla", hint="Choose the prompts and press Run attribution.")

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
