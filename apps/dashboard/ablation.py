"""Ablation: knock out every head on its own and measure the logit difference, or knock out
chosen heads together and compare the logits of the answer and wrong tokens before and after."""

import pandas as pd
import streamlit as st
import torch

from dashboard import common, figures
from workbench.experiments.ablate_heads import ranked_heads
from workbench.methods import ablation
from workbench.methods.metrics import logit_diff

METHODS = {"zero": "zero (output set to 0)", "mean": "mean (over the reference prompts, per position)",
           "resample": "resample (a random reference prompt's output, seeded)"}
REFERENCES = {"prompts": "the prompts themselves", "corrupted": "the corrupted prompts"}


def reference_tokens(method: str, reference: str, corrupted):
    return corrupted if reference == "corrupted" and method != "zero" else None


@st.cache_data(show_spinner=False, max_entries=16)
def sweep(key: common.ModelKey, prompts_key: tuple, method: str, reference: str, seed: int):
    """AblationResult: the metric with each head ablated on its own."""
    with common.using_model(key) as model:
        clean, corrupted, metric = common.prompt_set(model, prompts_key)
        with common.progress_bar(ablation.ablation_sweep, f"{method}-ablating every head ...") as progress:
            return ablation.ablation_sweep(model, clean, metric, method=method, seed=seed, progress=progress,
                                           reference=reference_tokens(method, reference, corrupted))


@st.cache_data(show_spinner="Running with the heads ablated ...", max_entries=32)
def before_after(key: common.ModelKey, prompts_key: tuple, method: str, reference: str, seed: int,
                 heads: tuple) -> pd.DataFrame:
    """Logits of the answer and wrong tokens at the last position of the first prompt, and the
    logit difference (mean over prompts), without and with `heads` ablated together."""
    with common.using_model(key) as model:
        clean, corrupted, metric = common.prompt_set(model, prompts_key)
        tokens = model.prepare_tokens(clean)
        with torch.no_grad():
            before = model(tokens)
        after = ablation.ablate(model, tokens, ablation.Ablation(method, heads=heads), seed=seed,
                                reference=reference_tokens(method, reference, corrupted))
        answer, wrong = (int(t if isinstance(t, int) else t[0]) for t in (metric.answer, metric.wrong))
        rows = [{"": f"logit of {model.to_str_tokens([t])[0]!r} (first prompt)",
                 "before": float(before[0, -1, t]), "after": float(after[0, -1, t])} for t in (answer, wrong)]
        rows.append({"": "logit difference (mean over prompts)",
                     "before": float(logit_diff(before, metric.answer, metric.wrong)),
                     "after": float(logit_diff(after, metric.answer, metric.wrong))})
        return pd.DataFrame(rows)


s = common.session()
st.title("Ablation")
model = common.require_model(s)
n_layer, n_head = model.cfg.n_layer, model.cfg.n_head

with st.form("ablate.form"):
    source = st.radio("Prompts", ["one pair", "IOI prompt set"], horizontal=True,
                      key=common.state("p.ablate.source", "one pair"))
    c1, c2 = st.columns(2)
    clean = c1.text_input("Prompt", key=common.state("p.ablate.clean", common.IOI_CLEAN))
    corrupted = c2.text_input("Corrupted prompt (reference for mean / resample)",
                              key=common.state("p.ablate.corrupted", common.IOI_CORRUPTED))
    c1, c2, c3, c4 = st.columns(4)
    answer = c1.text_input("Answer token", key=common.state("p.ablate.answer", common.IOI_ANSWER))
    wrong = c2.text_input("Wrong token", key=common.state("p.ablate.wrong", common.IOI_WRONG))
    n_prompts = c3.number_input("IOI prompts", 1, 256, key=common.state("p.ablate.n_prompts", 8))
    seed = c4.number_input("seed", 0, 2**31 - 1, key=common.state("p.ablate.seed", 0),
                           help="Samples the IOI prompts and the resampled references.")
    c1, c2 = st.columns(2)
    method = c1.selectbox("Method", list(METHODS), format_func=METHODS.get, key=common.state("p.ablate.method", "zero"))
    reference = c2.selectbox("Reference (mean / resample)", list(REFERENCES), format_func=REFERENCES.get,
                             key=common.state("p.ablate.reference", "corrupted"))
    if st.form_submit_button("Run ablation", icon=":material/play_arrow:", type="primary"):
        prompts_key = ("ioi", int(n_prompts), int(seed)) if source == "IOI prompt set" else \
            ("pair", clean, corrupted, answer, wrong)
        st.session_state["ablate.request"] = (prompts_key, method, reference, int(seed))

request = st.session_state.get("ablate.request")
if request is None:
    st.info("Set the prompts and press Run ablation.", icon=":material/info:")
    st.stop()
prompts_key, method, reference, seed = request

with common.guard():
    result = sweep(s.key, prompts_key, method, reference, seed)
    st.metric("logit difference without ablation", f"{result.baseline:.3f}")
    fig = figures.heatmap(result.effect, x=[str(h) for h in range(n_head)], y=[str(l) for l in range(n_layer)],
                          x_title="head", y_title="layer", diverging=True, colorbar="effect",
                          title=f"{method}-ablating each head: change in the logit difference")
    st.plotly_chart(fig, width="stretch", key="ablate.chart")
    with st.expander("Every head, largest effect first", expanded=True):
        st.dataframe(ranked_heads(result), hide_index=True, width="stretch", height=280)
    common.save_run(s, "ablate_heads", {**common.prompt_set_fields(prompts_key), "method": method,
                                        "reference": reference, "seed": seed}, key="ablation")

st.subheader("Ablate heads together")
labels = {f"L{l}H{h}": (l, h) for l in range(n_layer) for h in range(n_head)}
chosen = st.multiselect("Heads", list(labels), key=common.state("p.ablate.heads", []),
                        help="Ablated together, with the method and prompts above.")
if chosen:
    with common.guard():
        heads = tuple(labels[c] for c in chosen)
        st.dataframe(before_after(s.key, prompts_key, method, reference, seed, heads), hide_index=True)
