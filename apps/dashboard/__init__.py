"""The explorer's pages (one script each, run by `st.navigation`) and what they share.

`common` holds the sidebar (model, device, dtype, prompt, runs folder), the cached model loader,
the error guard and the "Save run" widget; `figures` builds the plotly figures. Every number a
page shows comes from a workbench library function; the pages only parse inputs and plot.
"""
