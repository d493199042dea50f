"""Plotly figures for the explorer. They only draw numbers computed by workbench's methods."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch

from dashboard.common import show_token


def as_rows(values) -> list[list[float | None]]:
    """A 2-D tensor or array as nested lists (plain JSON, so the figure's data reads back as is)."""
    if isinstance(values, torch.Tensor):
        t = values.detach().to("cpu", torch.float64)
    else:
        t = torch.tensor(values, dtype=torch.float64)  # a copy: pandas' arrays can be read-only
    return [[None if v != v else v for v in row] for row in t.tolist()]  # NaN -> a gap


def heatmap(
    values,
    *,
    x: Sequence[str],
    y: Sequence[str],
    x_title: str,
    y_title: str,
    title: str,
    colorbar: str,
    hover: list[list[str]] | None = None,
    diverging: bool = False,
    zmin: float | None = None,
    zmax: float | None = None,
    colorscale: str | None = None,
) -> go.Figure:
    """values[row][col] as a heatmap, rows labelled `y` (top to bottom), columns `x`.

    The axes are numeric with the labels as tick text, so repeated tokens stay separate columns.
    `hover[row][col]` is extra text for each cell (e.g. the top tokens there)."""
    z = as_rows(values)
    n_rows, n_cols = len(z), len(z[0]) if z else 0
    text = [
        [f"{y_title} {y[r]}<br>{x_title} {x[c]}<br>{colorbar}: "
         + ("n/a" if z[r][c] is None else f"{z[r][c]:.4g}")
         + (f"<br>{hover[r][c]}" if hover else "") for c in range(n_cols)]
        for r in range(n_rows)
    ]
    if diverging:
        bound = max((abs(v) for row in z for v in row if v is not None), default=1.0) or 1.0
        zmin, zmax = (-bound if zmin is None else zmin), (bound if zmax is None else zmax)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n_cols)), y=list(range(n_rows)), customdata=text,
        hovertemplate="%{customdata}<extra></extra>",
        colorscale=colorscale or ("RdBu" if diverging else "Blues"), zmid=0 if diverging else None,
        zmin=zmin, zmax=zmax, colorbar={"title": {"text": colorbar}}, xgap=1, ygap=1,
    ))
    fig.update_xaxes(title_text=x_title, tickmode="array", tickvals=list(range(n_cols)), ticktext=list(x),
                     tickangle=-45 if n_cols > 8 else 0, showgrid=False)
    fig.update_yaxes(title_text=y_title, tickmode="array", tickvals=list(range(n_rows)), ticktext=list(y),
                     autorange="reversed", showgrid=False)
    fig.update_layout(title=title, height=max(300, min(900, 140 + 28 * n_rows)), margin={"t": 60, "b": 10})
    return fig


def cell_text(fig: go.Figure, text: list[list[str]], *, size: int = 10) -> None:
    """Write text[row][col] into the cells of the figure's heatmap."""
    fig.update_traces(text=text, texttemplate="%{text}", textfont={"size": size}, selector={"type": "heatmap"})


def token_ticks(str_tokens: Sequence[str]) -> list[str]:
    """Axis labels for positions: the token, whitespace made visible, with its position."""
    return [f"{show_token(t)} [{i}]" for i, t in enumerate(str_tokens)]


def layer_ticks(layers: Sequence[int]) -> list[str]:
    return [str(l) for l in layers]


def clickable_cells(fig: go.Figure, values: list[list], *, label: str, row: int | None = None,
                    col: int | None = None) -> None:
    """Invisible markers on every cell of a [layer x head] heatmap: plotly cannot select heatmap
    cells, markers it can, so a click on a cell reports its (head, layer). They carry the hover."""
    n_rows, n_cols = len(values), len(values[0])
    xs = [c for _ in range(n_rows) for c in range(n_cols)]
    ys = [r for r in range(n_rows) for _ in range(n_cols)]
    scores = [values[r][c] for r in range(n_rows) for c in range(n_cols)]
    trace = go.Scatter(x=xs, y=ys, mode="markers", customdata=scores, showlegend=False, name=label,
                       marker={"size": 22, "opacity": 0, "symbol": "square"},
                       hovertemplate="layer %{y}, head %{x}<br>" + label + ": %{customdata:.3f}<extra></extra>")
    if row is None:
        fig.add_trace(trace)
    else:
        fig.add_trace(trace, row=row, col=col)


def head_grid(scores: dict[str, torch.Tensor], *, title: str, zmin: float = 0.0, zmax: float = 1.0) -> go.Figure:
    """One [layer x head] heatmap per entry of `scores`, side by side on a shared colour scale,
    each cell clickable (see `clickable_cells`)."""
    from plotly.subplots import make_subplots

    names = list(scores)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.06)
    for i, name in enumerate(names, start=1):
        z = as_rows(scores[name])
        n_layer, n_head = len(z), len(z[0])
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(n_head)), y=list(range(n_layer)), zmin=zmin, zmax=zmax, colorscale="Blues",
            showscale=i == len(names), xgap=1, ygap=1, name=name, hoverinfo="skip"), row=1, col=i)
        clickable_cells(fig, z, label=name, row=1, col=i)
        fig.update_xaxes(title_text="head", dtick=1, showgrid=False, row=1, col=i)
        fig.update_yaxes(title_text="layer" if i == 1 else None, dtick=1, autorange="reversed", showgrid=False,
                         row=1, col=i)
    fig.update_layout(title=title, height=max(280, min(700, 160 + 24 * n_layer)), margin={"t": 80, "b": 10},
                      clickmode="event+select", dragmode=False)
    return fig


def run_figures(experiment: str, tensors: dict[str, torch.Tensor], tables: dict) -> list[go.Figure]:
    """Figures re-drawn from a recorded run's tensors: the page's own figure for the dashboard's
    experiments, and a heatmap (2-D) or bar chart (1-D) per tensor for any other."""
    if experiment == "attention_heads" and tensors:
        return [head_grid(tensors, title="Head detector scores (recorded)")]
    if experiment == "activation_patching" and "patching" in tables:
        return [patching_table_figure(tables["patching"])]
    if experiment == "ablate_heads" and "heads" in tables:
        grid = tables["heads"].pivot(index="layer", columns="head", values="effect")
        return [heatmap(grid.to_numpy(), x=[str(h) for h in grid.columns], y=[str(l) for l in grid.index],
                        x_title="head", y_title="layer", title="Recorded ablation: change in the metric",
                        colorbar="effect", diverging=True)]
    if experiment == "logit_lens" and "logit_lens" in tables:
        frame = tables["logit_lens"]
        frame = frame[frame["batch"] == 0] if "batch" in frame else frame
        grid = frame.pivot(index="layer_index", columns="pos", values="top_prob")
        top = frame.pivot(index="layer_index", columns="pos", values="top_token")
        layers = frame.drop_duplicates("layer_index").set_index("layer_index")["layer"]
        tokens = frame.drop_duplicates("pos").set_index("pos")["token"]
        fig = heatmap(grid.to_numpy(), x=token_ticks([tokens[p] for p in grid.columns]),
                      y=[layers[l] for l in grid.index], x_title="pos", y_title="layer", zmin=0, zmax=1,
                      title="Recorded logit lens: probability of the top token", colorbar="top_prob")
        cell_text(fig, [[show_token(t) for t in row] for row in top.to_numpy().tolist()])
        return [fig]
    columns = {c for t in tables.values() for c in t.columns}
    out = []
    for name, t in tensors.items():
        if not (t.dtype.is_floating_point or t.dtype.is_complex) or t.numel() == 0:
            continue
        if t.ndim == 1:
            fig = go.Figure(go.Bar(y=t.double().tolist(), name=name))
            fig.update_layout(title=name, height=320)
        elif t.ndim == 2:
            dims = [d for d in ("layer", "pos", "head") if d in columns][:2]
            y_title, x_title = dims if len(dims) == 2 else ("axis 0", "axis 1")
            fig = heatmap(t, x=[str(i) for i in range(t.shape[1])], y=[str(i) for i in range(t.shape[0])],
                          x_title=x_title, y_title=y_title, title=name, colorbar=name,
                          diverging=bool((t < 0).any()))
        else:
            continue
        out.append(fig)
    return out


def patching_table_figure(frame) -> go.Figure:
    """A recorded patching table ([layer pos] or [layer head] cells) as a heatmap of its
    normalised metric (raw values when the record has no normalisation)."""
    x_dim = "head" if "pos" not in frame else "pos"
    if "pos" in frame and "head" in frame:  # [layer pos head]: one heatmap per head would not fit; head 0
        frame = frame[frame["head"] == 0]
    column = "normalized" if frame["normalized"].notna().any() else "value"
    grid = frame.pivot(index="layer", columns=x_dim, values=column)
    x = [str(h) for h in grid.columns]
    if x_dim == "pos":
        tokens = frame.drop_duplicates("pos").set_index("pos")["token"]
        x = token_ticks([tokens[p] for p in grid.columns])
    target = frame["target"].iloc[0] if "target" in frame else ""
    return heatmap(grid.to_numpy(), x=x, y=[str(l) for l in grid.index], x_title=x_dim, y_title="layer",
                   title=f"Recorded patching of {target}: {column}", colorbar=column, diverging=True)
