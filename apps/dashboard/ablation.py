"""Ablation: knock out every head on its own and measure the task's metric, or knock out chosen
heads together and compare the metric before and after. The page builds an ablate_heads
experiment config (its defaults are the experiment's) and runs the experiment's computation."""

import json

import pandas as pd
import streamlit as st
import torch

from dashboard import common
from workbench.experiments.ablate_heads import REFERENCES, AblateHeadsConfig, ranked_heads, reference_tokens
from workbench.experiments.figures import ablation_figure
from workbench.experiments.prompt_sets import METRICS, PROMPT_SETS, default_prompt_set, interval_note, prompt_set_metric
from workbench.methods import ablation

METHODS = {"zero": "zero (output set to 0)", "mean": "mean (over the reference prompts, per position)",
           "resample": "resample (a random reference prompt's output, seeded)"}
DEFAULTS = AblateHeadsConfig()  # the experiment's defaults are the page's


@st.cache_data(show_spinner="Running with the heads ablated ...", max_entries=32)
def before_after(key: common.ModelKey, fields: str, heads: tuple) -> pd.DataFrame:
    """The metric (mean over prompts) without and with `heads` ablated together, and for a
    logit-difference task the answer and wrong logits of the first prompt."""
    with common.using_model(key) as model:
        config = common.experiment_config(key, "ablate_heads", fields, model)
        ids = {k: torch.tensor(v, device=model.device) for k, v in config.token_ids.items()}
        metric = prompt_set_metric(config, ids, d_vocab=model.cfg.vocab_size)
        with torch.no_grad():
            before = model(ids["clean"])
        after = ablation.ablate(model, ids["clean"], ablation.Ablation(config.method, heads=heads), seed=config.seed,
                                reference=reference_tokens(config, ids))
        rows = []
        read = int(ids["read_pos"][0, 0]) if "read_pos" in ids else -1  # padded prompts: the first one's last token
        if "answers" in ids:
            for t in (int(ids["answers"][0, 0]), int(ids["wrong_answers"][0, 0])):
                rows.append({"": f"logit of {model.to_str_tokens([t])[0]!r} (first prompt)",
                             "before": float(before[0, read, t]), "after": float(after[0, read, t])})
        rows.append({"": f"{config.metric} (mean over prompts)", "before": float(metric(before)),
                     "after": float(metric(after))})
        return pd.DataFrame(rows)


s = common.session()
st.title("Ablation")
model = common.require_model(s)
n_layer, n_head = model.cfg.n_layer, model.cfg.n_head
preset = default_prompt_set(model)
common.open_on_preset("ablate", s, preset)
opened = common.opened_run("ablate_heads", lambda c: {
    **common.prompt_set_widgets("ablate", c), "p.ablate.method": c["method"], "p.ablate.reference": c["reference"]})

with st.form("ablate.form"):
    prompts = common.prompt_set_form("ablate", model, preset, defaults=DEFAULTS,
                                     corrupted="Corrupted prompt (custom; a reference for mean / resample)",
                                     seed_help="Samples the prompts and the resampled references.")
    c1, c2 = st.columns(2)
    method = c1.selectbox("Method", list(METHODS), format_func=METHODS.get,
                          key=common.state("p.ablate.method", DEFAULTS.method))
    reference = c2.selectbox("Reference (mean / resample)", list(REFERENCES), format_func=REFERENCES.get,
                             key=common.state("p.ablate.reference", DEFAULTS.reference))
    sent = st.form_submit_button("Run ablation", icon=":material/play_arrow:", type="primary")
    if sent and (fields := prompts.fields(s)):
        common.submit("ablate", common.fields_key({**fields, "method": method, "reference": reference}))

fields = common.form_request("ablate", opened, key="ablation",
                             hint="Choose the prompts and press Run ablation.")

ok = False
with common.guard():
    config, run = common.compute(s.key, "ablate_heads", fields, f"{json.loads(fields)['method']}-ablating every head ...")
    result = run.result
    metric_label = METRICS[config.metric]
    c1, c2 = st.columns(2)
    c1.metric("clean (without ablation)", f"{run.clean_value:.3f}", help=f"{config.metric}: {metric_label}")
    c2.metric("corrupted", f"{run.corrupted_value:.3f}", help=f"{config.metric}: {metric_label}")
    st.caption(f"{PROMPT_SETS[config.prompt_set]}; {common.plural(len(config.token_ids['clean']), 'prompt')} of "
               f"{common.plural(len(config.token_ids['clean'][0]), 'token')}. Metric: {config.metric}, {metric_label}. "
               f"{config.method}-ablation" + ("" if config.method == "zero" else
                                              f" over {REFERENCES[config.reference]}") + ".")
    if run.no_signal:
        st.warning(run.no_signal, icon=":material/warning:")
    heads = ranked_heads(result)
    grey = False
    if result.per_prompt is not None:
        grey = st.toggle("Grey out heads whose interval includes 0", key=common.state("p.ablate.grey", False),
                         help=common.GREY_HELP)
        st.caption(interval_note(config, result.per_prompt.shape[-1]) + " (in each cell's hover).")
    st.plotly_chart(ablation_figure(heads, grey=grey), width="stretch", key="ablate.chart")
    with st.expander("Every head, largest effect first", expanded=True):
        common.table(heads)
    common.save_run(s, "ablate_heads", config, run, key="ablation", identity=fields)
    ok = True

if ok:
    st.subheader("Ablate heads together")
    labels = {f"L{l}H{h}": (l, h) for l in range(n_layer) for h in range(n_head)}
    chosen = st.multiselect("Heads", list(labels), key=common.state("p.ablate.heads", []),
                            help="Ablated together, with the method and prompts above.")
    if chosen:
        with common.guard():
            st.dataframe(before_after(s.key, fields, tuple(labels[c] for c in chosen)), hide_index=True)
