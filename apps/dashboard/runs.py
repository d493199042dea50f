"""Runs: browse recorded runs (from this dashboard and the experiment scripts), re-plot any, show
its reproduce command, replay it with one click, open it in its page, download it as a script or
notebook, compare it with another run, delete it; and remove the temporary folders of killed runs."""

import json
import shlex

import pandas as pd
import streamlit as st

from dashboard import common
from workbench.experiments import replay
from workbench.experiments.comparing import as_grid, compare_runs
from workbench.experiments.figures import heatmap
from workbench.runs import delete_run, find_unfinished, load_run, remove_unfinished
from workbench.runs import list_runs as list_run_table


def show_comparison(a: str, b: str) -> None:
    """Run A (the selected one) and run B: the verdict, what differs, B - A for every tensor of the
    same shape, and each table joined side by side."""
    diff = compare_runs(a, b)
    line = diff.verdict_line()
    {"same": st.success, "within tolerance": st.success, "different": st.warning}.get(diff.verdict, st.info)(line)
    for note in diff.notes:
        st.warning(note, icon=":material/compare_arrows:")
    if diff.differences:
        st.caption("What differs (config and environment):")
        st.dataframe(diff.to_frame(), hide_index=True, width="stretch")
    else:
        st.caption("Configs and environments: no differences.")
    if diff.comparisons:
        st.dataframe(pd.DataFrame([{"result": c.name, "kind": c.kind, "same": c.ok, "detail": c.detail}
                                   for c in diff.comparisons]), hide_index=True, width="stretch")
    for name, delta in diff.tensor_differences().items():
        grid = as_grid(delta)
        fig = heatmap(grid, x=[str(i) for i in range(grid.shape[1])], y=[str(i) for i in range(grid.shape[0])],
                      x_title="last axis", y_title="other axes (flattened)", title=f"{name}: B - A",
                      colorbar="B - A", diverging=True)
        st.plotly_chart(fig, width="stretch", key=f"runs.diff.{name}")
    for name, frame in diff.joined_tables().items():
        with st.expander(f"Table: {name}, A and B side by side ({common.plural(len(frame), 'row')})"):
            common.table(frame)

s = common.session()
st.title("Runs")
root = s.runs_root
st.caption(f"Recorded runs under `{root}` (change the folder in the sidebar). Save one from any page's "
           "'Save run', or run an experiment script, e.g. `python experiments/attention_heads.py`.")

unfinished = find_unfinished(root)
if unfinished:
    c1, c2 = st.columns([4, 1], vertical_alignment="center")
    c1.caption(f"{common.plural(len(unfinished), 'temporary folder')} left by killed runs (not runs, safe to remove): "
               + ", ".join(f"`{p.name}`" for p in unfinished[:3]) + (" ..." if len(unfinished) > 3 else ""))
    if c2.button("Remove them", key="runs.tidy", icon=":material/cleaning_services:"):
        with common.guard():
            remove_unfinished(root)
            st.rerun()

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
    if st.button("Delete this run", key="runs.delete", icon=":material/delete:"):
        st.session_state["runs.confirm_delete"] = path
    if st.session_state.get("runs.confirm_delete") == path:
        st.warning(f"Delete `{path}` and everything in it? This cannot be undone.", icon=":material/warning:")
        c1, c2, _ = st.columns([1, 1, 4])
        if c1.button("Yes, delete it", key="runs.delete.yes", type="primary"):
            st.session_state.pop("runs.confirm_delete", None)
            delete_run(path)
            st.rerun()
        if c2.button("Cancel", key="runs.delete.no"):
            st.session_state.pop("runs.confirm_delete", None)
            st.rerun()
    record = load_run(path)

    c1, c2 = st.columns([1, 2], vertical_alignment="bottom")
    page = common.PAGES.get(record.experiment)
    if c1.button("Open in its page", key="runs.open", icon=":material/open_in_new:", disabled=page is None,
                 help="The experiment's page with this run's inputs filled in and its results shown from the record "
                      "(nothing is computed); the URL names the run, so it can be bookmarked."):
        for key in ("opened.sidebar", "opened.page", "opened.error"):
            st.session_state.pop(key, None)
        st.switch_page(page, query_params={common.RUN_PARAM: str(record.path)})
    with c2:
        common.download_buttons(record.path, key="runs")

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
    common.show_record(record, key="runs")
    st.subheader("Compare")
    others = [p for p in paths if p != path]
    other = st.selectbox("Compare with", [None, *others], key="p.runs.compare",
                         format_func=lambda p: "(choose a run)" if p is None else
                         f"{table.set_index('path').loc[p, 'experiment']} / {table.set_index('path').loc[p, 'run']}",
                         help="Run A is the run above, run B this one: what differs in config and environment, "
                              "and the results compared as replay compares them.")
    if other is not None:
        with common.guard():
            show_comparison(path, other)

    c1, c2 = st.columns(2)
    with c1.expander("Config"):
        st.caption("`model_state_sha256`: sha256 of the weights' state-dict tensors (as float32), not of a file; "
                   "`model_file_sha256`: sha256 of the weights file, as `sha256sum` prints it.")
        st.code(json.dumps(record.config, indent=1), language="json")
    with c2.expander("Environment"):
        st.code(json.dumps(record.env, indent=1), language="json")

