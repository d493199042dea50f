"""Logit lens: every layer's residual stream read through the final LayerNorm and unembedding (the
logit_lens experiment on the sidebar's prompt)."""

import dataclasses

import streamlit as st

from dashboard import common
from dashboard.views import LensView
from workbench.experiments import EXPERIMENTS
from workbench.experiments.figures import LENS_SHOW, MAX_TEXT_CELLS, lens_figure
from workbench.experiments.logit_lens import LogitLensConfig

DEFAULTS = LogitLensConfig()


@st.cache_data(show_spinner="Running the logit lens ...", max_entries=32)
def run_lens(key: common.ModelKey, fields: str):
    """(config, the LogitLensResult without its full log-probs (Save run records the rest), the
    LensView the page draws) for the page's fields."""
    with common.using_model(key) as model:
        config = common.experiment_config(key, "logit_lens", fields, model)
        result = EXPERIMENTS["logit_lens"].compute(config, model)
        target_id = int(config.token_ids["target"][0][0]) if "target" in config.token_ids else None
        view = LensView.of(result, target_id)
        # [layer batch pos d_vocab] log-probs are large and neither drawn nor recorded.
        return config, dataclasses.replace(result, log_probs=result.log_probs[..., :0]), view


@st.cache_data(show_spinner=False, max_entries=64)
def target_error(key: common.ModelKey, target: str) -> str | None:
    """Why `target` cannot be tracked (not one token), or None."""
    with common.using_model(key) as model:
        try:
            common.single_token(model, target, "target token")
        except common.InputError as e:
            return str(e)
    return None


s = common.session()
st.title("Logit lens")
st.caption("Each row reads the residual stream before a block (and after the last one) as if it were the "
           "model's output: through the final LayerNorm and the unembedding. The last row is the model's own "
           "prediction. Hover a cell for its top tokens. Edit the prompt in the sidebar.")
model = common.require_model(s)
opened = common.opened_run("logit_lens", lambda c: {"p.lens.target": c.get("target") or "",
                                                    "p.lens.top_k": int(c.get("top_k", DEFAULTS.top_k))})

c1, c2, c3 = st.columns([1, 1, 2])
target = c1.text_input("Target token", key=common.state("p.lens.target", DEFAULTS.target or ""),
                       help="One token (mind the leading space) whose probability and rank are tracked; "
                            "empty for none.")
top_k = c2.number_input("Top k (hover)", 1, 50, key=common.state("p.lens.top_k", DEFAULTS.top_k))
bad_target = target_error(s.key, target) if target else None
if bad_target:  # the lens still runs; only the target's colourings are unavailable
    st.error(bad_target, icon=":material/error:")
tracked = target if target and not bad_target else None
options = list(LENS_SHOW) if tracked else ["top_prob"]
if st.session_state.get("p.lens.show") not in options:
    st.session_state["p.lens.show"] = options[0]
show = c3.selectbox("Colour", options, format_func=LENS_SHOW.get, key="p.lens.show")

if opened is not None:
    with common.guard():
        common.show_opened_run(opened, key="lens")
    st.stop()

with common.guard():
    prompt = common.require_prompt(s)
    fields = common.fields_key({"prompt": prompt, "target": tracked, "top_k": int(top_k)})
    config, result, view = run_lens(s.key, fields)
    n_pos, n_layers = len(view.str_tokens), len(view.layers)
    c1, c2, c3 = st.columns([2, 2, 1])
    first, last = c1.slider("Positions", 0, max(n_pos - 1, 1), disabled=n_pos < 2,
                            key=common.state(f"p.lens.range.{n_pos}", (max(0, n_pos - 40), n_pos - 1)),
                            help="The positions drawn (the last 40 at first); long prompts stay readable.")
    last = min(last, n_pos - 1)
    layers = c2.multiselect("Layers", view.layers, key=common.state("p.lens.layers", []),
                            placeholder="all layers")
    rows = [i for i, label in enumerate(view.layers) if not layers or label in layers]
    cols = list(range(first, last + 1))
    text = c3.checkbox("Top token in cells", key=common.state("p.lens.cell_text", True),
                       help=f"Drawn up to {MAX_TEXT_CELLS} cells, where it stays readable.")
    values = {"top_prob": view.top_probs[:, :, 0], "target_logprob": view.target_logprob,
              "target_prob": view.target_prob, "target_rank": view.target_rank}[show][rows][:, cols]
    hover = [[f"top {int(top_k)}: " + ", ".join(f"{common.show_token(t)} {float(p):.3f}"
                                                for t, p in zip(view.top_strs[l][pos], view.top_probs[l, pos]))
              for pos in cols] for l in rows]
    fig = lens_figure(values, str_tokens=[view.str_tokens[p] for p in cols], layers=[view.layers[l] for l in rows],
                      show=show, positions=cols, hover=hover, target=tracked,
                      top_tokens=[[view.top_strs[l][p][0] for p in cols] for l in rows] if text else None)
    if text and len(rows) * len(cols) > MAX_TEXT_CELLS:
        st.caption(f"{len(rows) * len(cols)} cells: too many to write the top token in each (at most "
                   f"{MAX_TEXT_CELLS}); narrow the positions or layers, or hover.")
    if show == "target_rank":
        st.caption("Ranks of 100 and more share the darkest colour; hover for the exact rank.")
    st.plotly_chart(fig, width="stretch", key="lens.chart")

    with st.expander("Top tokens at the last position"):
        end = n_pos - 1
        st.dataframe({"layer": view.layers,
                      **{f"top {k + 1}": [f"{common.show_token(view.top_strs[l][end][k])} "
                                          f"({float(view.top_probs[l, end, k]):.3f})" for l in range(n_layers)]
                         for k in range(int(top_k))}}, hide_index=True, width="stretch")

    common.save_run(s, "logit_lens", config, result, key="lens", identity=fields)
