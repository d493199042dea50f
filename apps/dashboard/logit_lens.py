"""Logit lens: every layer's residual stream read through the final LayerNorm and unembedding."""

import streamlit as st

from dashboard import common, figures
from dashboard.views import LensView
from workbench.methods.logit_lens import logit_lens

SHOW = {
    "top_prob": "probability of the top token",
    "target_logprob": "log-probability of the target token",
    "target_prob": "probability of the target token",
    "target_rank": "rank of the target token (0 = top)",
}


@st.cache_data(show_spinner="Running the logit lens ...", max_entries=32)
def run_lens(key: common.ModelKey, prompt: str, target: str, top_k: int) -> LensView:
    """The logit lens of the prompt, tracking `target` (a one-token string; empty: none)."""
    with common.using_model(key) as model:
        target_id = common.single_token(model, target, "target token") if target else None
        result = logit_lens(model, prompt, targets=target_id, top_k=top_k)
        return LensView.of(result, target_id)


s = common.session()
st.title("Logit lens")
st.caption("Each row reads the residual stream before a block (and after the last one) as if it were the "
           "model's output: through the final LayerNorm and the unembedding. The last row is the model's own "
           "prediction. Hover a cell for its top tokens. Edit the prompt in the sidebar.")
model = common.require_model(s)

c1, c2, c3 = st.columns([1, 1, 2])
target = c1.text_input("Target token", key=common.state("p.lens.target", common.IOI_ANSWER),
                       help="One token (mind the leading space) whose probability and rank are tracked; "
                            "empty for none.")
top_k = c2.number_input("Top k (hover)", 1, 50, key=common.state("p.lens.top_k", 5))
options = list(SHOW) if target else ["top_prob"]
if st.session_state.get("p.lens.show") not in options:
    st.session_state["p.lens.show"] = options[0]
show = c3.selectbox("Colour", options, format_func=SHOW.get, key="p.lens.show")
cell_text = st.checkbox("Write the top token in each cell", key=common.state("p.lens.cell_text", True))

with common.guard():
    view = run_lens(s.key, s.prompt, target, int(top_k))
    values = {"top_prob": view.top_probs[:, :, 0], "target_logprob": view.target_logprob,
              "target_prob": view.target_prob, "target_rank": view.target_rank}[show]
    hover = [[", ".join(f"{common.show_token(t)} {float(p):.3f}"
                        for t, p in zip(view.top_strs[l][pos], view.top_probs[l, pos]))
              for pos in range(len(view.str_tokens))] for l in range(len(view.layers))]
    fig = figures.heatmap(
        values, x=figures.token_ticks(view.str_tokens), y=view.layers, x_title="pos", y_title="layer",
        title=f"Logit lens: {SHOW[show]}" + (f" {target!r}" if show != "top_prob" else ""), colorbar=show,
        hover=[[f"top {int(top_k)}: {h}" for h in row] for row in hover],
        zmin=0 if show in ("top_prob", "target_prob", "target_rank") else None,
        zmax=1 if show in ("top_prob", "target_prob") else (100 if show == "target_rank" else None),
        colorscale="Viridis_r" if show == "target_rank" else ("Viridis" if show == "target_logprob" else None),
    )
    if cell_text:
        figures.cell_text(fig, [[common.show_token(view.top_strs[l][pos][0]) for pos in range(len(view.str_tokens))]
                                for l in range(len(view.layers))])
    if show == "target_rank":
        st.caption("Ranks of 100 and more share the darkest colour; hover for the exact rank.")
    st.plotly_chart(fig, width="stretch", key="lens.chart")

    with st.expander("Top tokens at the last position"):
        last = len(view.str_tokens) - 1
        st.dataframe({"layer": view.layers,
                      **{f"top {k + 1}": [f"{common.show_token(view.top_strs[l][last][k])} "
                                          f"({float(view.top_probs[l, last, k]):.3f})" for l in range(len(view.layers))]
                         for k in range(int(top_k))}}, hide_index=True, width="stretch")

    common.save_run(s, "logit_lens", {"prompt": s.prompt, "target": target or None, "top_k": int(top_k)}, key="lens")
