"""Path patching: which senders (heads or MLPs) reach the chosen receivers directly, every other head
frozen. The page builds a path_patching experiment config and runs the experiment's own computation;
the receivers are heads picked from a head list or by clicking them on a head grid (which shows them
with the input they receive), or taken from the activation patching page's head sweep, or the logits."""

import json

import streamlit as st

from dashboard import common
from workbench.experiments.figures import PATCHING_SHOW, path_patching_figure, receiver_grid_figure
from workbench.experiments.path_patching import (
    PathPatchingConfig,
    default_receivers,
    heads_from_patching,
    parse_receivers,
)
from workbench.experiments.prompt_sets import METRICS, PROMPT_SETS, default_prompt_set, interval_note
from workbench.methods.metrics import no_signal_message
from workbench.methods.path_patching import RECEIVER_INPUTS, SENDER_SETS, receivers_label
from workbench.methods.patching import DIRECTIONS, HEAD_TARGETS

DEFAULTS = PathPatchingConfig()  # the experiment's defaults are the page's
RECEIVER_KINDS = {"heads": "heads' inputs (q, k or v)", "logits": "the logits"}
SENDERS = {"heads": "every attention head", "mlps": "every MLP"}


@st.cache_data(show_spinner=False, max_entries=8)
def auto_receivers(key: common.ModelKey, prompt_set: str) -> list[str]:
    """What the experiment's receivers "auto" stands for on this model and task."""
    with common.using_model(key) as model:
        return default_receivers(prompt_set, model)


s = common.session()
st.title("Path patching")
model = common.require_model(s)
preset = default_prompt_set(model)
heads = [f"L{l}H{h}" for l in range(1, model.cfg.n_layer) for h in range(model.cfg.n_head)]


def opened_inputs(config: dict) -> dict:
    """The form's widgets for a recorded config (receivers "L.H.input": the heads, and the first one's input)."""
    values = {**common.prompt_set_widgets("path", config), "p.path.senders": config["senders"],
              "p.path.direction": config["direction"], "path.defaults_for": s.model_name}
    if config["receivers"] == ["logits"]:
        return {**values, "p.path.receiver_kind": "logits"}
    parts = [r.split(".") for r in config["receivers"]]
    return {**values, "p.path.receiver_kind": "heads", "p.path.heads": [f"L{l}H{h}" for l, h, _ in parts],
            "p.path.input": parts[0][2]}


opened = common.opened_run("path_patching", opened_inputs)  # the run's inputs, not the defaults below
if common.open_on_preset("path", s, preset):  # a new model: open on its task and that task's circuit
    auto = auto_receivers(s.key, preset) if model.cfg.n_layer > 1 else ["logits"]
    receivers = parse_receivers(auto)
    st.session_state["p.path.receiver_kind"] = "logits" if receivers == "logits" else "heads"
    if receivers != "logits":
        st.session_state["p.path.heads"] = [f"L{l}H{h}" for l, h, _ in receivers]
        st.session_state["p.path.input"] = receivers[0][2]

# A click on the receiver grid (drawn below the form in the previous run) adds or removes that head before
# the form's head list is drawn; only clicks made since the grid was drawn count, so edits to the list stay.
selected, seen = common.chart_selection("path.grid")
shown = st.session_state.get("p.path.heads", []) if st.session_state.get("p.path.receiver_kind") == "heads" else []
if (toggled := common.toggle_clicked(shown, selected, seen)) != shown:
    st.session_state["p.path.heads"] = toggled
    st.session_state["p.path.receiver_kind"] = "heads"

# Receivers from the activation patching result of this session (its page's last head sweep).
patch_request = st.session_state.get("patch.request")  # the patching page's fields (JSON)
patch_fields = json.loads(patch_request) if patch_request else {}
if patch_fields.get("method") == "activation" and patch_fields.get("target") in HEAD_TARGETS:
    with st.expander("Receivers from the activation patching result", expanded=False):
        c1, c2 = st.columns([1, 2], vertical_alignment="bottom")
        k = c1.number_input("heads", 1, len(heads) or 1, key=common.state("p.path.top_k", 3),
                            help="The heads (outside block 0) whose patching moved the metric most.")
        if c2.button("Use the top heads of the activation patching result as receivers", key="path.from_patching"):
            with common.guard():
                _, patched = common.compute(s.key, "activation_patching", patch_request, "Patching every cell ...")
                chosen = heads_from_patching(patched.to_frame(), k=int(k))
                st.session_state["p.path.receiver_kind"] = "heads"
                st.session_state["p.path.heads"] = [f"L{l}H{h}" for l, h in chosen]
                if patched.target.removeprefix("head_") in RECEIVER_INPUTS:
                    st.session_state["p.path.input"] = patched.target.removeprefix("head_")
                st.rerun()

with st.form("path.form"):
    prompts = common.prompt_set_form("path", model, preset, defaults=DEFAULTS)
    c1, c2, c3 = st.columns([1, 3, 1])
    kind = c1.radio("Receivers", list(RECEIVER_KINDS), format_func=RECEIVER_KINDS.get,
                    key=common.state("p.path.receiver_kind", "heads"),
                    help="The logits: the metric of the run with the sender patched and every other head frozen. "
                         "Heads' inputs: that run gives the receivers' q, k or v, which a second, normal run takes.")
    picked = c2.multiselect("Receiver heads", heads, key=common.state("p.path.heads", []),
                            help="Heads of blocks 1 and later (a receiver needs a block before it). Senders at or "
                                 "after every receiver's block are left blank.")
    receiver_input = c3.selectbox("Input", RECEIVER_INPUTS, key=common.state("p.path.input", "k"),
                                  help="Which input of the receiver heads comes from the path-patched run.")
    c1, c2 = st.columns(2)
    senders = c1.selectbox("Senders", SENDER_SETS, format_func=SENDERS.get,
                           key=common.state("p.path.senders", DEFAULTS.senders))
    direction = c2.selectbox("Direction", DIRECTIONS, key=common.state("p.path.direction", DEFAULTS.direction),
                             help="noise (ARENA's): the sender's output from the corrupted run into the clean one; "
                                  "denoise: the reverse.")
    sent = st.form_submit_button("Run path patching", icon=":material/play_arrow:", type="primary")
    if sent and (fields := prompts.fields(s)):
        if kind == "logits":
            receivers = ["logits"]
        else:  # "L1H0" -> "1.0.k"
            receivers = [name.removeprefix("L").replace("H", ".") + f".{receiver_input}" for name in picked]
        common.submit("path", common.fields_key({**fields, "receivers": receivers, "senders": senders,
                                                 "direction": direction}))

# The receivers on a head grid (layer x head): what the form sends; a click adds or removes a head (above).
with st.expander("Receivers on the head grid", expanded=True):
    fig = receiver_grid_figure(n_layer=model.cfg.n_layer, n_head=model.cfg.n_head,
                               receivers=picked if kind == "heads" else [], receiver_input=receiver_input)
    event = st.plotly_chart(fig, width="stretch", key="path.grid", on_select="rerun", selection_mode="points")
    common.remember_selection("path.grid", event)
    if kind == "logits":
        st.caption("Receivers: the logits. A click on a head makes that head's input the receiver.")

fields = common.form_request("path", opened, key="path_patching",
                             hint="Choose the prompts and receivers and press Run path patching.")

with common.guard():
    config, result = common.compute(s.key, "path_patching", fields, "Path patching every sender ...")
    metric_label = METRICS[config.metric]
    c1, c2, c3 = st.columns(3)
    c1.metric("clean", f"{result.clean_value:.3f}", help=f"{config.metric}: {metric_label}")
    c2.metric("corrupted", f"{result.corrupted_value:.3f}", help=f"{config.metric}: {metric_label}")
    c3.metric("senders", f"{int(result.computed.sum())} of {result.values.numel()}",
              help="senders in a block before some receiver; the others cannot reach it and are blank")
    base = "corrupted" if config.direction == "denoise" else "clean"
    st.caption(f"{PROMPT_SETS[config.prompt_set]}; {common.plural(len(config.token_ids['clean']), 'prompt')} of "
               f"{common.plural(len(config.token_ids['clean'][0]), 'token')}. Metric: {config.metric}, {metric_label}. "
               f"Receivers: {receivers_label(result.receivers)}; {config.direction}: each sender's output from the "
               f"{'clean' if base == 'corrupted' else 'corrupted'} run into the {base} run, every other head frozen.")
    warning = no_signal_message(result.clean_value, result.corrupted_value, config.metric)
    if warning:
        st.warning(warning, icon=":material/warning:")
    show = st.radio("Show", list(PATCHING_SHOW), format_func=PATCHING_SHOW.get, horizontal=True,
                    key=common.state("p.path.show", "effect"))
    frame = result.to_frame()
    grey = False
    if result.per_prompt is not None:
        grey = st.toggle("Grey out senders whose interval includes 0", key=common.state("p.path.grey", False),
                         help=common.GREY_HELP)
        st.caption(interval_note(config, result.per_prompt.shape[-1]) + " (in each cell's hover).")
    if show == "normalized" and frame["normalized"].isna().all():
        st.warning("Cannot normalise: the clean and corrupted metric are equal; showing the raw metric.",
                   icon=":material/warning:")
        show = "value"
    st.plotly_chart(path_patching_figure(frame, show=show, grey=grey), width="stretch", key="path.chart")
    with st.expander("Largest effects", expanded=True):
        done = frame[frame["computed"]]
        common.table(done.sort_values("effect", key=abs, ascending=False).head(20)
                     .drop(columns=["computed", "receivers", "direction", "metric"]))

    common.save_run(s, "path_patching", config, result, key="path_patching", identity=fields)
