"""Attention: head detector scores for every head (the attention_heads experiment), and the pattern
of any head over a prompt."""

import streamlit as st
import torch

from dashboard import common
from workbench import act_name
from workbench.experiments.attention_heads import AttentionHeadsConfig
from workbench.experiments.figures import head_grid, pattern_figure

DEFAULTS = AttentionHeadsConfig()


@st.cache_data(show_spinner="Running the model ...", max_entries=32)
def attention_patterns(key: common.ModelKey, tokens: tuple[int, ...]) -> list[torch.Tensor]:
    """Per layer, the attention pattern [head query_pos key_pos] of one sequence of token ids."""
    with common.using_model(key) as model:
        names = [act_name("pattern", l) for l in range(model.cfg.n_layer)]
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([tokens]), names_filter=names)
        return [cache[n][0].float().cpu() for n in names]


s = common.session()
st.title("Attention")
model = common.require_model(s)
n_layer, n_head = model.cfg.n_layer, model.cfg.n_head
opened = common.opened_run("attention_heads", lambda c: {
    "p.attn.n_seqs": int(c["n_seqs"]), "p.attn.seq_len": int(c["seq_len"]), "p.attn.seed": int(c["seed"])})

st.subheader("Head detectors")
st.caption("Mean attention each head pays to the position its detector expects, on [BOS] + r + r for random "
           "token sequences r: induction (the token after the earlier copy), previous token, duplicate token "
           "(the earlier copy). Click a head to see its pattern below; the outlined head is the one shown.")
with st.expander("Detector prompts"):
    c1, c2, c3 = st.columns(3)
    n_seqs = c1.number_input("sequences", 1, 256, key=common.state("p.attn.n_seqs", DEFAULTS.n_seqs))
    longest = max(2, (model.cfg.block_size - 1) // 2)
    seq_len = c2.number_input("tokens per half", 2, longest,
                              key=common.state("p.attn.seq_len", min(DEFAULTS.seq_len, longest)))
    seed = c3.number_input("seed", 0, 2**31 - 1, key=common.state("p.attn.seed", DEFAULTS.seed))

if opened is not None:
    with common.guard():
        common.show_opened_run(opened, key="attention")
    st.stop()

detector_ids = None
with common.guard():
    fields = common.fields_key({"n_seqs": int(n_seqs), "seq_len": int(seq_len), "seed": int(seed)})
    config, scores = common.compute(s.key, "attention_heads", fields, "Scoring every head: sequences")
    if "p.attn.layer" not in st.session_state:  # start on the strongest induction head
        top_layer, top_head, _ = scores["induction"].top(1)[0]
        st.session_state["p.attn.layer"], st.session_state["p.attn.head"] = top_layer, top_head
    # A click on the grid (from the previous run) picks the head before the grid is drawn; only clicks made
    # since the grid was drawn count, so a head picked in the boxes below stays, and clicking a head again
    # after picking another one picks it again (as a click toggles a head on the other pages' grids).
    selected, seen = common.chart_selection("attn.grid")
    shown = f"L{st.session_state['p.attn.layer']}H{st.session_state['p.attn.head']}"
    if (clicked := common.toggle_clicked([shown], selected, seen)) and clicked[-1] != shown:
        layer, head = clicked[-1].removeprefix("L").split("H")
        st.session_state["p.attn.layer"], st.session_state["p.attn.head"] = int(layer), int(head)
    chosen = (st.session_state["p.attn.layer"], st.session_state["p.attn.head"])
    fig = head_grid({name: sc.values for name, sc in scores.items()}, title="Head detector scores", highlight=chosen)
    event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="attn.grid", width="stretch")
    common.remember_selection("attn.grid", event)
    with st.expander("Top heads"):
        cols = st.columns(len(scores))
        for col, (name, sc) in zip(cols, scores.items()):
            col.caption(name)
            col.dataframe(sc.to_frame().drop(columns="detector").sort_values("score", ascending=False).head(8),
                          hide_index=True)
    common.save_run(s, "attention_heads", config, scores, key="attention", identity=fields)
    detector_ids = config.token_ids["tokens"][0]

st.subheader("Attention pattern")
c1, c2, c3 = st.columns([1, 1, 2])
layer = c1.selectbox("layer", range(n_layer), key="p.attn.layer")
head = c2.selectbox("head", range(n_head), key="p.attn.head")
source = c3.radio("over", ["the prompt", "repeated random tokens"], horizontal=True, key="p.attn.source",
                  help="The prompt from the sidebar, or the first detector sequence (induction shows as a "
                       "stripe one after the diagonal of the second half).")
with common.guard():
    if source == "the prompt":
        ids = model.prepare_tokens(common.require_prompt(s))[0].tolist()
    elif detector_ids is None:
        raise common.InputError("The detector prompts did not run (see above).")
    else:
        ids = detector_ids
    pattern = attention_patterns(s.key, tuple(ids))[layer][head]
    st.plotly_chart(pattern_figure(pattern, model.to_str_tokens(torch.tensor(ids)),
                                   title=f"Attention pattern of L{layer}H{head} (blank: masked, a query never "
                                         "attends to later keys)"), width="stretch")
