"""The workbench explorer: logit lens, attention, activation patching, ablation, direct logit
attribution, path patching, circuits and recorded runs.

    streamlit run apps/explorer.py          (or: bash scripts/start.sh)

It listens on 127.0.0.1 (.streamlit/config.toml). The model defaults to GPT-2 when its weights
are cached or the hub answers, else the bundled model; ?model=NAME_OR_PATH in the URL or the
WORKBENCH_MODEL environment variable picks another, WORKBENCH_DEVICE the device (default: cuda
when available) and WORKBENCH_RUNS the runs folder (default: workbench.runs.default_runs_root()). The pages
are in apps/dashboard/; every number they show comes from a workbench library function.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run from a checkout without installing, and let the pages import `dashboard`.
for path in (str(HERE.parent), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import streamlit as st  # noqa: E402

from dashboard import common  # noqa: E402

st.set_page_config(page_title="workbench explorer", page_icon=":material/biotech:", layout="wide")
common.keep_page_widgets()
common.open_run_from_url()  # ?run=<folder>: before the sidebar, which shows its model
pages = [
    st.Page(HERE / "dashboard" / "home.py", title="Model & prompt", icon=":material/tune:", default=True),
    st.Page(HERE / "dashboard" / "logit_lens.py", title="Logit lens", icon=":material/layers:", url_path="logit_lens"),
    st.Page(HERE / "dashboard" / "attention.py", title="Attention", icon=":material/grid_on:", url_path="attention"),
    st.Page(HERE / "dashboard" / "patching.py", title="Activation patching", icon=":material/healing:",
            url_path="patching"),
    st.Page(HERE / "dashboard" / "ablation.py", title="Ablation", icon=":material/content_cut:", url_path="ablation"),
    st.Page(HERE / "dashboard" / "dla.py", title="Direct logit attribution", icon=":material/leaderboard:",
            url_path="dla"),
    st.Page(HERE / "dashboard" / "path_patching.py", title="Path patching", icon=":material/route:",
            url_path="path_patching"),
    st.Page(HERE / "dashboard" / "circuit.py", title="Circuit", icon=":material/account_tree:", url_path="circuit"),
    st.Page(HERE / "dashboard" / "runs.py", title="Runs", icon=":material/history:", url_path="runs"),
]
page = st.navigation(pages)
common.sidebar()
page.run()
