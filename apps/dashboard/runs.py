"""Runs: browse recorded runs (from this dashboard and the experiment scripts), re-plot any, show
its reproduce command, and replay it with one click."""

import json
import shlex

import pandas as pd
import streamlit as st

from dashboard import common
from workbench.experiments import EXPERIMENTS, replay
from workbench.experiments.figures import generic_figures
from workbench.runs import list_runs as list_run_table
from workbench.runs import load_run

s = common.session()
st.title("Runs")
root = s.runs_root
st.caption(f"Recorded runs under `{root}` (change the folder in the sidebar). Save one from any page's "
           "'Save run', or run an experiment script, e.g. `python experiments/attention_heads.py`.")

with common.guard():
    table = list_run_table(root)
    if table.empty:
        st.info(f"No recorded runs under {root} yet.", icon=":material/info:")
        st.stop()
    experiments = sorted(table["experiment"].unique())
    shown = st.multiselect("Experiments", experiments, key=common.state("p.runs.experiments", experiments))
    table = table[table["experiment"].isin(shown)].iloc[::-1]  # newest first
    st.dataframe(table.drop(columns=["path"]), hide_index=True, width="stretch")
    if table.empty:
        st.stop()
    paths = table["path"].tolist()
    if st.session_state.get("p.runs.run") not in paths:
        st.session_state["p.runs.run"] = paths[0]
    path = st.selectbox("Run", paths, key="p.runs.run",
                        format_func=lambda p: f"{table.set_index('path').loc[p, 'experiment']} / "
                                              f"{table.set_index('path').loc[p, 'run']}")
    record = load_run(path)

    st.subheader("Reproduce")
    st.caption("Re-run it (a new run with the same config):")
    st.code(record.command, language="bash")
    st.caption("Replay it (run the recorded config again and compare every result with the record):")
    st.code(f"python -m workbench replay {shlex.quote(str(record.path))}", language="bash")

    if st.button("Replay", key="runs.replay", icon=":material/replay:"):
        with common.guard(), st.spinner("Replaying ..."):
            cfg = record.config
            same_model = (cfg.get("model"), cfg.get("device"), cfg.get("dtype")) == s.key and s.model is not None
            if same_model:
                with common.using_model(s.key) as model:
                    report = replay(record.path, model=model)
            else:
                report = replay(record.path)
            st.session_state[f"replayed.{record.path}"] = report
    report = st.session_state.get(f"replayed.{record.path}")
    if report is not None:
        if report.ok:
            st.success("Replay matches the record.", icon=":material/check:")
        else:
            st.error("Replay does NOT match the record.", icon=":material/error:")
        st.dataframe(pd.DataFrame([{"result": c.name, "kind": c.kind, "match": c.ok, "detail": c.detail}
                                   for c in report.comparisons]), hide_index=True, width="stretch")
        with st.expander("Match report"):
            st.code(report.format(), language=None)

    st.subheader("Results")
    summary = record.path / "summary.txt"
    if summary.is_file():
        st.code(summary.read_text(), language=None)
    tensors, tables = record.tensors(), record.tables()
    experiment = EXPERIMENTS.get(record.experiment)
    draw = experiment.figures if experiment is not None and experiment.figures is not None else generic_figures
    for fig in draw(tensors, tables):
        st.plotly_chart(fig, width="stretch")
    for name, frame in tables.items():
        with st.expander(f"Table: {name} ({common.plural(len(frame), 'row')})"):
            common.table(frame)

    c1, c2 = st.columns(2)
    with c1.expander("Config"):
        st.caption("`model_state_sha256`: sha256 of the weights' state-dict tensors (as float32), not of a file; "
                   "`model_file_sha256`: sha256 of the weights file, as `sha256sum` prints it.")
        st.code(json.dumps(record.config, indent=1), language="json")
    with c2.expander("Environment"):
        st.code(json.dumps(record.env, indent=1), language="json")
