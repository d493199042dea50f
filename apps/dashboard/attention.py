"""Attention: head detector scores for every head, and the pattern of any head over a prompt."""

import streamlit as st
import torch

from dashboard import common, figures
from workbench.methods import head_detectors, prompts

DETECTORS = {
    "induction": head_detectors.induction_scores,
    "previous_token": head_detectors.previous_token_scores,
    "duplicate_token": head_detectors.duplicate_token_scores,
}


@st.cache_data(show_spinner="Scoring every head ...", max_entries=16)
def detector_scores(key: common.ModelKey, n_seqs: int, seq_len: int, seed: int) -> dict:
    """Every detector's HeadScores on the same repeated random tokens (as the attention_heads
    experiment computes them)."""
    with common.using_model(key) as model:
        tokens = prompts.repeated_tokens(n_seqs=n_seqs, seq_len=seq_len, seed=seed, vocab_size=model.cfg.vocab_size)
        return {name: score(model, tokens) for name, score in DETECTORS.items()}


@st.cache_data(show_spinner="Running the model ...", max_entries=32)
def attention_patterns(key: common.ModelKey, tokens: tuple[int, ...]) -> list[torch.Tensor]:
    """Per layer, the attention pattern [head query_pos key_pos] of one sequence of token ids."""
    with common.using_model(key) as model:
        names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layer)]
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([tokens]), names_filter=names)
        return [cache[n][0].float().cpu() for n in names]


s = common.session()
st.title("Attention")
model = common.require_model(s)
n_layer, n_head = model.cfg.n_layer, model.cfg.n_head

st.subheader("Head detectors")
st.caption("Mean attention each head pays to the position its detector expects, on [BOS] + r + r for random "
           "token sequences r: induction (the token after the earlier copy), previous token, duplicate token "
           "(the earlier copy). Click a head to see its pattern below.")
with st.expander("Detector prompts"):
    c1, c2, c3 = st.columns(3)
    n_seqs = c1.number_input("sequences", 1, 64, key=common.state("p.attn.n_seqs", 8))
    longest = max(2, (model.cfg.block_size - 1) // 2)
    seq_len = c2.number_input("tokens per half", 2, longest, key=common.state("p.attn.seq_len", min(20, longest)))
    seed = c3.number_input("seed", 0, 2**31 - 1, key=common.state("p.attn.seed", 0))

with common.guard():
    scores = detector_scores(s.key, int(n_seqs), int(seq_len), int(seed))
    fig = figures.head_grid({name: sc.values for name, sc in scores.items()}, title="Head detector scores")
    event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="attn.grid",
                            width="stretch")
    if "p.attn.layer" not in st.session_state:  # start on the strongest induction head
        top_layer, top_head, _ = scores["induction"].top(1)[0]
        st.session_state["p.attn.layer"], st.session_state["p.attn.head"] = top_layer, top_head
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    if points:
        clicked = (int(points[0]["y"]), int(points[0]["x"]))
        if st.session_state.get("attn.clicked") != clicked:
            st.session_state["attn.clicked"] = clicked
            st.session_state["p.attn.layer"], st.session_state["p.attn.head"] = clicked
    with st.expander("Top heads"):
        cols = st.columns(len(scores))
        for col, (name, sc) in zip(cols, scores.items()):
            col.caption(name)
            col.dataframe(sc.to_frame().sort_values("score", ascending=False).head(8), hide_index=True)
    common.save_run(s, "attention_heads", {"n_seqs": int(n_seqs), "seq_len": int(seq_len), "seed": int(seed)},
                    key="attention")

st.subheader("Attention pattern")
c1, c2, c3 = st.columns([1, 1, 2])
layer = c1.selectbox("layer", range(n_layer), key="p.attn.layer")
head = c2.selectbox("head", range(n_head), key="p.attn.head")
source = c3.radio("over", ["the prompt", "repeated random tokens"], horizontal=True, key="p.attn.source",
                  help="The prompt from the sidebar, or the first detector sequence (induction shows as a "
                       "stripe one after the diagonal of the second half).")
with common.guard():
    if source == "the prompt":
        ids = model.prepare_tokens(s.prompt)[0].tolist()
    else:
        ids = prompts.repeated_tokens(n_seqs=1, seq_len=int(seq_len), seed=int(seed),
                                      vocab_size=model.cfg.vocab_size)[0].tolist()
    pattern = attention_patterns(s.key, tuple(ids))[layer][head]
    ticks = figures.token_ticks(model.to_str_tokens(torch.tensor(ids)))
    st.plotly_chart(figures.heatmap(pattern, x=ticks, y=ticks, x_title="key_pos", y_title="query_pos",
                                    title=f"Attention pattern of L{layer}H{head}", colorbar="attention",
                                    zmin=0, zmax=1), width="stretch")
