"""The explorer's pages (one script each, run by `st.navigation`) and what they share.

`common` holds the sidebar (model, device, dtype, prompt, runs folder), the cached model loader,
the error guard, `compute` (a page's inputs -> the experiment's config -> the experiment's own
computation) and the "Save run" widget, which records the result on screen. The figures are the
experiments' (`workbench.experiments.figures`), so a page, a run's HTML and the Runs page draw
alike. Every number a page shows comes from a workbench library function.
"""
