"""Model & prompt: which model is loaded, and the prompt as tokens with their ids."""

import json

import pandas as pd
import streamlit as st

from dashboard import common

# The model card's scalar facts worth a line each, in this order, with their meaning.
CARD_FACTS = {
    "what": "what it is", "val_loss": "validation loss (nats/token)", "train_loss": "training loss (nats/token)",
    "induction_score": "induction score (whole vocabulary)", "induction_head": "strongest induction head",
    "induction_score_pool_tokens": "induction score (training-split ids)", "tokens_seen_total": "tokens trained on",
    "wall_time_s_total": "training time (s)", "weights_sha256": "sha256 of the weights file", "command": "last command",
}

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
    table = common.token_table(model, common.require_prompt(s))
    # Every token in view up to 40 rows (35 px a row plus the header), then scroll.
    st.dataframe(table, hide_index=True, width="content", height=38 + 35 * min(len(table), 40))
    st.caption(f"{common.plural(len(table), 'token')} (the model's context is {c.block_size}).")

card = common.model_card(s.model_name)
if card:
    st.subheader("Model card")
    rows = [{"": meaning, "value": card[key] if not isinstance(card[key], float) else f"{card[key]:.4g}"}
            for key, meaning in CARD_FACTS.items() if key in card and not isinstance(card[key], (dict, list))]
    if rows:
        st.dataframe(pd.DataFrame(rows).astype(str), hide_index=True, width="stretch")
    with st.expander("The whole model card (JSON)"):
        st.code(json.dumps(card, indent=1), language="json")
