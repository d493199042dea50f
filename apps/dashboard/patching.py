"""Activation patching: restore one clean activation at a time inside the corrupted run (or the
reverse) and measure the task's metric; or attribution patching, its fast gradient estimate. The
page builds an activation_patching experiment config (its `method` says which) and runs the
experiment's own computation, so Save run records either."""

import streamlit as st

from dashboard import common
from workbench.experiments.activation_patching import METHODS, ActivationPatchingConfig
from workbench.experiments.figures import PATCHING_SHOW, beyond_note, patching_figure
from workbench.experiments.prompt_sets import METRICS, PROMPT_SETS, default_prompt_set, interval_note
from workbench.methods import patching
from workbench.methods.metrics import no_signal_message

DEFAULTS = ActivationPatchingConfig()  # the experiment's defaults are the page's


s = common.session()
st.title("Activation patching")
model = common.require_model(s)
preset = default_prompt_set(model)
common.open_on_preset("patch", s, preset)
opened = common.opened_run("activation_patching", lambda c: {
    **common.prompt_set_widgets("patch", c), "p.patch.target": c["target"], "p.patch.direction": c["direction"],
    "p.patch.method": c.get("method", DEFAULTS.method)})

with st.form("patch.form"):
    prompts = common.prompt_set_form("patch", model, preset, defaults=DEFAULTS)
    c1, c2, c3 = st.columns(3)
    target = c1.selectbox("Target", patching.TARGETS, key=common.state("p.patch.target", DEFAULTS.target),
                          help="What is patched: the residual stream, a layer's attention or MLP output at one "
                               "position, or one head's output / query / key / value / pattern (at all positions, "
                               "or per position with _by_pos).")
    direction = c2.selectbox("Direction", patching.DIRECTIONS, key=common.state("p.patch.direction", DEFAULTS.direction),
                             help="denoise: clean activations into the corrupted run; noise: the reverse.")
    method = c3.selectbox("Method", list(METHODS), format_func=METHODS.get,
                          key=common.state("p.patch.method", DEFAULTS.method),
                          help="Attribution patching estimates every cell from one backward pass: a fast, "
                               "linear preview of the full sweep.")
    sent = st.form_submit_button("Run patching", icon=":material/play_arrow:", type="primary")
    if sent and (fields := prompts.fields(s)):
        common.submit("patch", common.fields_key({**fields, "target": target, "direction": direction, "method": method}))

fields = common.form_request("patch", opened, key="patching", hint="Choose the prompts and press Run patching.")

with common.guard():
    config, result = common.compute(s.key, "activation_patching", fields, "Patching every cell ...")
    metric_label = METRICS[config.metric]
    c1, c2, c3 = st.columns(3)
    c1.metric("clean", f"{result.clean_value:.3f}", help=f"{config.metric}: {metric_label}")
    c2.metric("corrupted", f"{result.corrupted_value:.3f}", help=f"{config.metric}: {metric_label}")
    c3.metric("cells", f"{result.values.numel()}", help=f"{config.method} patching of {config.target}, {config.direction}")
    st.caption(f"{PROMPT_SETS[config.prompt_set]}; {common.plural(len(config.token_ids['clean']), 'prompt')} of "
               f"{common.plural(len(config.token_ids['clean'][0]), 'token')}. Metric: {config.metric}, {metric_label}.")
    warning = no_signal_message(result.clean_value, result.corrupted_value, config.metric)
    if warning:
        st.warning(warning, icon=":material/warning:")
    c1, c2 = st.columns([2, 1])
    show = c1.radio("Show", list(PATCHING_SHOW), format_func=PATCHING_SHOW.get, horizontal=True,
                    key=common.state("p.patch.show", "normalized"))
    frame = result.to_frame()
    grey = False
    if result.per_prompt is not None:
        grey = st.toggle("Grey out cells whose interval includes 0", key=common.state("p.patch.grey", False),
                         help=common.GREY_HELP)
        st.caption(interval_note(config, result.per_prompt.shape[-1]) + " (in each cell's hover).")
    if show == "normalized" and frame["normalized"].isna().all():
        st.warning("Cannot normalise: the clean and corrupted metric are equal, so the prompts do not separate "
                   "the behaviour; showing the raw metric.", icon=":material/warning:")
        show = "value"
    head = None
    if len(result.dims) == 3:
        head = c2.selectbox("head", range(result.values.shape[2]), key=common.state("p.patch.head", 0))
    fig = patching_figure(frame, show=show, head=head, grey=grey)
    if show == "normalized":
        shown = frame if head is None else frame[frame["head"] == head]
        note = beyond_note(shown[["normalized"]].to_numpy().T, -1.0, 1.0)
        if note:
            st.warning(f"Normalised values beyond [-1, 1]: {note}", icon=":material/warning:")
    st.plotly_chart(fig, width="stretch", key="patch.chart")
    with st.expander("Largest effects", expanded=True):
        common.table(frame.sort_values("effect", key=abs, ascending=False).head(20))

    common.save_run(s, "activation_patching", config, result, key="patching", identity=fields)
