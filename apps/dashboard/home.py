"""Model & prompt: which model is loaded, and the prompt as tokens with their ids."""

import json

import streamlit as st

from dashboard import common

s = common.session()
st.title("Model & prompt")
if s.notice:
    st.info(s.notice, icon=":material/info:")
model = common.require_model(s)

c = model.cfg
n_params = sum(p.numel() for p in model.parameters())
facts = [("layers", c.n_layer), ("heads", c.n_head), ("d_model", c.d_model), ("context", c.block_size),
         ("parameters", f"{n_params / 1e6:.1f} M")]
for col, (label, value) in zip(st.columns(len(facts)), facts):
    col.metric(label, value)
st.caption(f"{model.name} on {s.device} in {s.dtype}")

st.subheader("The prompt as tokens")
st.caption("Edit the prompt in the sidebar. Position 0 is the BOS token (<|endoftext|>) that the methods prepend.")
with common.guard():
    table = common.token_table(model, s.prompt)
    # Every token in view up to 40 rows (35 px a row plus the header), then scroll.
    st.dataframe(table, hide_index=True, width="content", height=38 + 35 * min(len(table), 40))
    st.caption(f"{len(table)} tokens (the model's context is {c.block_size}).")

card = common.model_card(s.model_name)
if card:
    with st.expander("Model card"):
        st.code(json.dumps(card, indent=1), language="json")
