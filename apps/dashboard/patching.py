"""Activation patching: restore one clean activation at a time inside the corrupted run (or the
reverse) and measure the logit difference; attribution patching as a fast linear estimate."""

import streamlit as st

from dashboard import common, figures
from workbench.errors import InputError
from workbench.methods import attribution, patching

METHODS = {"activation": "activation patching (full sweep)", "attribution": "attribution patching (fast estimate)"}
SHOW = {"normalized": "normalised (0 = corrupted, 1 = clean)", "values": "raw logit difference",
        "effect": "change from the unpatched run"}


@st.cache_data(show_spinner=False, max_entries=16)
def sweep(key: common.ModelKey, prompts_key: tuple, target: str, direction: str, method: str):
    """The PatchingResult for these inputs."""
    with common.using_model(key) as model:
        clean, corrupted, metric = common.prompt_set(model, prompts_key)
        if method == "attribution":
            return attribution.attribution_patching(model, clean, corrupted, metric, target=target,
                                                    direction=direction)
        with common.progress_bar(patching.activation_patching, f"Patching {target} ...") as progress:
            return patching.activation_patching(model, clean, corrupted, metric, target=target,
                                                direction=direction, progress=progress)


s = common.session()
st.title("Activation patching")
model = common.require_model(s)

with st.form("patch.form"):
    source = st.radio("Prompts", ["one pair", "IOI prompt set"], horizontal=True,
                      key=common.state("p.patch.source", "one pair"),
                      help="One clean/corrupted pair typed here, or IOI prompts sampled from Wang et al.'s "
                           "templates (corrupted: three other names).")
    c1, c2 = st.columns(2)
    clean = c1.text_input("Clean prompt", key=common.state("p.patch.clean", common.IOI_CLEAN))
    corrupted = c2.text_input("Corrupted prompt", key=common.state("p.patch.corrupted", common.IOI_CORRUPTED),
                              help="Must have as many tokens as the clean prompt.")
    c1, c2, c3, c4 = st.columns(4)
    answer = c1.text_input("Answer token", key=common.state("p.patch.answer", common.IOI_ANSWER),
                           help="The clean prompt's correct next token, one token (mind the leading space).")
    wrong = c2.text_input("Wrong token", key=common.state("p.patch.wrong", common.IOI_WRONG))
    n_prompts = c3.number_input("IOI prompts", 1, 256, key=common.state("p.patch.n_prompts", 8))
    seed = c4.number_input("IOI seed", 0, 2**31 - 1, key=common.state("p.patch.seed", 0))
    c1, c2, c3 = st.columns(3)
    target = c1.selectbox("Target", patching.TARGETS, key=common.state("p.patch.target", "resid_pre"),
                          help="What is patched: the residual stream, a layer's attention or MLP output at one "
                               "position, or one head's output / query / key / value / pattern (at all positions, "
                               "or per position with _by_pos).")
    direction = c2.selectbox("Direction", patching.DIRECTIONS, key=common.state("p.patch.direction", "denoise"),
                             help="denoise: clean activations into the corrupted run; noise: the reverse.")
    method = c3.selectbox("Method", list(METHODS), format_func=METHODS.get,
                          key=common.state("p.patch.method", "activation"),
                          help="Attribution patching estimates every cell from one backward pass: a fast, "
                               "linear preview of the full sweep.")
    if st.form_submit_button("Run patching", icon=":material/play_arrow:", type="primary"):
        if source == "IOI prompt set":
            st.session_state["patch.request"] = (("ioi", int(n_prompts), int(seed)), target, direction, method)
        else:
            st.session_state["patch.request"] = (("pair", clean, corrupted, answer, wrong), target, direction, method)

request = st.session_state.get("patch.request")
if request is None:
    st.info("Set the prompts and press Run patching.", icon=":material/info:")
    st.stop()
prompts_key, target, direction, method = request

with common.guard():
    result = sweep(s.key, prompts_key, target, direction, method)

    c1, c2, c3 = st.columns(3)
    c1.metric("clean logit difference", f"{result.clean_value:.3f}")
    c2.metric("corrupted logit difference", f"{result.corrupted_value:.3f}")
    c3.metric("cells", f"{result.values.numel()}", help=f"{method} patching of {target}, {direction}")
    c1, c2 = st.columns([2, 1])
    show = c1.radio("Show", list(SHOW), format_func=SHOW.get, horizontal=True,
                    key=common.state("p.patch.show", "normalized"))
    if show == "normalized":
        try:
            values = result.normalized()
        except InputError as e:  # clean and corrupted agree: there is no scale
            st.warning(f"{e}; showing the raw logit difference.", icon=":material/warning:")
            show, values = "values", result.values
    else:
        values = result.values if show == "values" else result.effect
    head = None
    if len(result.dims) == 3:
        head = c2.selectbox("head", range(values.shape[2]), key=common.state("p.patch.head", 0))
        values = values[:, :, head]
    x_dim = result.dims[1]
    x = figures.token_ticks(result.str_tokens) if x_dim == "pos" else [str(h) for h in range(values.shape[1])]
    title = f"{METHODS[method]} of {target}{'' if head is None else f', head {head}'} ({direction})"
    fig = figures.heatmap(values, x=x, y=figures.layer_ticks(result.layers), x_title=x_dim, y_title="layer",
                          title=title, colorbar=SHOW[show].split(" (")[0], diverging=True,
                          zmin=-1 if show == "normalized" else None, zmax=1 if show == "normalized" else None)
    st.plotly_chart(fig, width="stretch", key="patch.chart")
    with st.expander("Largest effects", expanded=True):
        frame = result.to_frame().drop(columns=["target", "method", "direction", "metric"])
        st.dataframe(frame.sort_values("effect", key=abs, ascending=False).head(20), hide_index=True, width="stretch")

    if method != "activation":
        st.caption("Save run records the full activation-patching sweep for these inputs.")
    common.save_run(s, "activation_patching", {**common.prompt_set_fields(prompts_key), "target": target,
                                               "direction": direction}, key="patching")
