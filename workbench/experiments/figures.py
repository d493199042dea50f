"""The experiments' plotly figures, drawn from their results or from a record's tables, so the
dashboard, the recorded HTML and the Runs page show one figure per experiment.

Colour scales: sequential values (probabilities, attention, detector scores) use Viridis, which is
dark at 0 and reads on light and dark themes alike; signed values use a diverging scale centred
on 0 whose range always covers the data (nothing is clipped without saying so)."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import pandas as pd
import plotly.graph_objects as go
import torch

SEQUENTIAL = "Viridis"
DIVERGING = "RdBu"
MAX_TICKS = 40  # axis labels drawn at most; beyond, every k-th (hover still names every cell)
MAX_TEXT_CELLS = 600  # cell text drawn only up to this many cells (beyond, it would overlap)


def show_token(token: str) -> str:
    """A token as it reads on an axis: whitespace made visible."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423")


def token_ticks(str_tokens: Sequence[str], positions: Sequence[int] | None = None) -> list[str]:
    """Axis labels for positions: the token, whitespace made visible, with its position."""
    positions = range(len(str_tokens)) if positions is None else positions
    return [f"{show_token(t)} [{p}]" for p, t in zip(positions, str_tokens)]


def as_rows(values) -> list[list[float | None]]:
    """A 2-D tensor or array as nested lists (plain JSON): NaN becomes a gap, -0.0 becomes 0.0
    (a hover would read "-0")."""
    if isinstance(values, torch.Tensor):
        t = values.detach().to("cpu", torch.float64)
    else:
        t = torch.tensor(values, dtype=torch.float64)  # a copy: pandas' arrays can be read-only
    return [[None if v != v else v + 0.0 for v in row] for row in t.tolist()]


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v + 0.0:.4g}"


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

    The axes are numeric with the labels as tick text, so repeated tokens stay separate columns;
    beyond MAX_TICKS columns only every k-th is labelled. `hover[row][col]` is extra text for each
    cell. A diverging map is centred on 0 and its range covers the data: given zmin/zmax are
    widened to the data's extremes, never clipping it."""
    z = as_rows(values)
    n_rows, n_cols = len(z), len(z[0]) if z else 0
    text = [
        [f"{y_title} {y[r]}<br>{x_title} {x[c]}<br>{colorbar}: {fmt(z[r][c])}"
         + (f"<br>{hover[r][c]}" if hover else "") for c in range(n_cols)]
        for r in range(n_rows)
    ]
    data = [v for row in z for v in row if v is not None]
    if diverging:  # symmetric about 0 (white), at least the given range, covering the data
        bound = max([abs(v) for v in data] + [abs(b) for b in (zmin, zmax) if b is not None], default=1.0) or 1.0
        zmin, zmax = -bound, bound
    else:
        if data and zmin is not None:
            zmin = min(zmin, min(data))
        if data and zmax is not None:
            zmax = max(zmax, max(data))
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n_cols)), y=list(range(n_rows)), customdata=text,
        hovertemplate="%{customdata}<extra></extra>",
        colorscale=colorscale or (DIVERGING if diverging else SEQUENTIAL),
        zmin=zmin, zmax=zmax, colorbar={"title": {"text": colorbar}}, xgap=1 if n_cols <= 80 else 0,
        ygap=1 if n_rows <= 80 else 0,
    ))
    every = max(1, -(-n_cols // MAX_TICKS))
    fig.update_xaxes(title_text=x_title, tickmode="array", tickvals=list(range(0, n_cols, every)),
                     ticktext=list(x)[::every], tickangle=-45 if n_cols > 8 else 0, showgrid=False)
    every = max(1, -(-n_rows // MAX_TICKS))
    fig.update_yaxes(title_text=y_title, tickmode="array", tickvals=list(range(0, n_rows, every)),
                     ticktext=list(y)[::every], autorange="reversed", showgrid=False)
    fig.update_layout(title=title, height=max(300, min(900, 140 + 28 * n_rows)), margin={"t": 60, "b": 10})
    return fig


def cell_text(fig: go.Figure, text: list[list[str]], *, size: int = 10) -> bool:
    """Write text[row][col] into the cells of the figure's heatmap, unless there are more than
    MAX_TEXT_CELLS cells (it would overlap); returns whether it did."""
    if sum(len(row) for row in text) > MAX_TEXT_CELLS:
        return False
    fig.update_traces(text=text, texttemplate="%{text}", textfont={"size": size}, selector={"type": "heatmap"})
    return True


def beyond_note(values, lo: float, hi: float) -> str | None:
    """A sentence when some values lie outside [lo, hi] (the colour scale was widened to show them)."""
    data = [v for row in as_rows(values) for v in row if v is not None]
    outside = [v for v in data if v < lo or v > hi]
    if not outside:
        return None
    return (f"{len(outside)} of {len(data)} cells lie outside [{lo:g}, {hi:g}] (from {min(data):.3g} to "
            f"{max(data):.3g}); the colour scale is widened to cover them.")


# ----------------------------------------------------------------------------- attention heads
def head_grid(scores: dict[str, torch.Tensor], *, title: str, zmin: float = 0.0, zmax: float = 1.0,
              highlight: tuple[int, int] | None = None) -> go.Figure:
    """One [layer x head] heatmap per entry of `scores`, side by side on a shared colour scale,
    each cell carrying its score as text and an invisible marker (plotly cannot select heatmap
    cells, markers it can: a click reports the head's label, customdata "L{layer}H{head}");
    `highlight` = (layer, head) outlines that head in every panel."""
    from plotly.subplots import make_subplots

    names = list(scores)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.06)
    n_layer = 1
    for i, name in enumerate(names, start=1):
        z = as_rows(scores[name])
        n_layer, n_head = len(z), len(z[0])
        text = [[f"{v:.2f}" for v in row] for row in z] if n_layer * n_head <= 400 else None
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(n_head)), y=list(range(n_layer)), zmin=zmin, zmax=zmax, colorscale=SEQUENTIAL,
            showscale=i == len(names), xgap=1, ygap=1, name=name, hoverinfo="skip", text=text,
            texttemplate="%{text}" if text else None, textfont={"size": 9}), row=1, col=i)
        xs = [c for _ in range(n_layer) for c in range(n_head)]
        ys = [r for r in range(n_layer) for _ in range(n_head)]
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", customdata=[f"L{r}H{c}" for r, c in zip(ys, xs)], showlegend=False,
            name=name, marker={"size": 22, "opacity": 0, "symbol": "square"}, hoverinfo="text",
            hovertext=[f"layer {r}, head {c}<br>{name}: {z[r][c]:.3f}" for r, c in zip(ys, xs)]), row=1, col=i)
        if highlight is not None:
            layer, head = highlight
            fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                          line={"color": "#ff4b4b", "width": 3}, row=1, col=i)
        fig.update_xaxes(title_text="head", dtick=1, showgrid=False, row=1, col=i)
        fig.update_yaxes(title_text="layer" if i == 1 else None, dtick=1, autorange="reversed", showgrid=False,
                         row=1, col=i)
    fig.update_layout(title=title, height=max(280, min(700, 160 + 24 * n_layer)), margin={"t": 80, "b": 10},
                      clickmode="event+select", dragmode=False)
    return fig


def pattern_figure(pattern, str_tokens: Sequence[str], *, title: str) -> go.Figure:
    """An attention pattern [query_pos key_pos]; the causally masked upper triangle is left blank
    (those keys are never attended to), not drawn as 0."""
    p = torch.as_tensor(pattern).detach().double().cpu().clone()
    n = p.shape[-1]
    p[torch.ones(n, n, dtype=torch.bool).triu(1)] = float("nan")
    ticks = token_ticks(str_tokens)
    return heatmap(p, x=ticks, y=ticks, x_title="key_pos", y_title="query_pos", title=title, colorbar="attention",
                   zmin=0.0, zmax=1.0)


# ----------------------------------------------------------------------------- intervals over prompts
# The interval columns of a sweep's table (per-prompt results, `methods.statistics`) for each shown column.
INTERVAL_OF = {"value": ("ci_low", "ci_high"), "effect": ("effect_ci_low", "effect_ci_high"),
               "normalized": ("normalized_ci_low", "normalized_ci_high")}
GREY = "#cfcfcf"
# A hover's interval line from customdata [low, high, n] (a hovertemplate's suffix).
INTERVAL_TEMPLATE = ("<br>interval [%{customdata[0]:.3f}, %{customdata[1]:.3f}] over %{customdata[2]:.0f} prompts "
                     "(bootstrap)")


def interval_text(low: Real, high: Real, n: Real) -> str:
    """An interval over prompts as hover text says it (`INTERVAL_TEMPLATE`'s words)."""
    return f"interval [{fmt(low)}, {fmt(high)}] over {int(n)} prompts (bootstrap)"


def error_bars(frame, value: str, low: str, high: str) -> dict:
    """Plotly's asymmetric error bars from `frame`'s columns: `value` from `low` to `high` (none where
    a row has no interval)."""
    return {"type": "data", "symmetric": False, "array": (frame[high] - frame[value]).fillna(0).tolist(),
            "arrayminus": (frame[value] - frame[low]).fillna(0).tolist()}


def interval_hover(frame, show: str, index: str, columns: str) -> list[list[str]] | None:
    """Hover text per cell of a [index x columns] grid: the shown column's interval over prompts and n
    (None when the table has no intervals; empty for a cell without one, e.g. a sender never run)."""
    low, high = INTERVAL_OF.get(show, (None, None))
    if low not in frame:
        return None
    grids = [frame.pivot(index=index, columns=columns, values=c).to_numpy() for c in (low, high, "n")]
    return [["" if pd.isna(n) else interval_text(lo, hi, n) for lo, hi, n in zip(*rows)] for rows in zip(*grids)]


def grey_uncertain(fig: go.Figure, frame, index: str, columns: str, *, of: str = "effect") -> int:
    """Cover the cells whose interval of `of` (the effect; "value" where the value is itself a
    contribution, as in direct logit attribution) includes 0 (the prompts do not tell its sign)
    with grey, keeping their hover text; returns how many cells it covered."""
    low, high = INTERVAL_OF[of]
    if low not in frame:
        return 0
    low = frame.pivot(index=index, columns=columns, values=low).to_numpy()
    high = frame.pivot(index=index, columns=columns, values=high).to_numpy()
    uncertain = (low.astype(float) <= 0) & (high.astype(float) >= 0)  # a missing interval (NaN) is not covered
    base = fig.data[0]
    z = [[1.0 if u else None for u in row] for row in uncertain.tolist()]
    fig.add_trace(go.Heatmap(z=z, x=base.x, y=base.y, customdata=base.customdata, hovertemplate=base.hovertemplate,
                             colorscale=[[0, GREY], [1, GREY]], showscale=False, xgap=base.xgap, ygap=base.ygap))
    return int(uncertain.sum())


# ----------------------------------------------------------------------------- patching
PATCHING_SHOW = {"normalized": "normalised (0 = corrupted, 1 = clean)", "value": "metric",
                 "effect": "change from the unpatched run"}


def patching_figure(frame, *, show: str = "normalized", head: int | None = None, title: str | None = None,
                    grey: bool = False):
    """A patching result's table (`PatchingResult.to_frame()`, recorded or fresh) as a [layer x pos]
    or [layer x head] heatmap of `show` ("normalized", "value" or "effect"); [layer pos head]
    results show one `head` (default 0). Normalised values sit on a fixed -1..1 scale, widened
    (and said so in the title) when cells lie beyond it. Falls back to the raw value when the
    record has no normalisation (clean and corrupted equal). With per-prompt intervals the hover
    shows them, and `grey` covers the cells whose effect interval includes 0."""
    if show == "normalized" and frame["normalized"].isna().all():
        show = "value"
    three_d = "pos" in frame and "head" in frame
    if three_d:
        head = 0 if head is None else head
        frame = frame[frame["head"] == head]
    x_dim = "pos" if "pos" in frame else "head"
    grid = frame.pivot(index="layer", columns=x_dim, values=show)
    if x_dim == "pos":
        tokens = frame.drop_duplicates("pos").set_index("pos")["token"]
        x = token_ticks([tokens[p] for p in grid.columns], list(grid.columns))
    else:
        x = [str(h) for h in grid.columns]
    first = frame.iloc[0]
    label = PATCHING_SHOW.get(show, show)
    if show == "value":
        label = str(first.get("metric", "metric"))
    title = title or (f"{first.get('method', 'activation')} patching of {first.get('target', '')}"
                      f"{'' if head is None else f', head {head}'} ({first.get('direction', '')}): {label}")
    normalized = show == "normalized"
    note = beyond_note(grid.to_numpy(), -1.0, 1.0) if normalized else None
    fig = heatmap(grid.to_numpy(), x=x, y=[str(l) for l in grid.index], x_title=x_dim, y_title="layer",
                  title=title + (" — scale widened beyond ±1" if note else ""), colorbar=label.split(" (")[0],
                  diverging=True, zmin=-1.0 if normalized else None, zmax=1.0 if normalized else None,
                  hover=interval_hover(frame, show, "layer", x_dim))
    if grey:
        grey_uncertain(fig, frame, "layer", x_dim)
    return fig


# ----------------------------------------------------------------------------- path patching
def path_patching_figure(frame, *, show: str = "effect", title: str | None = None, grey: bool = False) -> go.Figure:
    """A path patching table (`PathPatchingResult.to_frame()`, recorded or fresh) as a [layer x head]
    heatmap of `show` ("effect", "value" or "normalized", see PATCHING_SHOW) for head senders, or a
    [component] bar chart otherwise; senders that reach no receiver are blank (labelled "-"). With
    per-prompt intervals the heatmap's hover shows them (the bars draw them as error bars), and
    `grey` covers the senders whose effect interval includes 0 (bars drawn grey)."""
    if show == "normalized" and frame["normalized"].isna().all():
        show = "value"
    first = frame.iloc[0]
    label = str(first.get("metric", "metric")) if show == "value" else PATCHING_SHOW.get(show, show)
    base = "corrupted" if first.get("direction") == "denoise" else "clean"
    title = title or (f"Path patching into {first.get('receivers', '')} ({first.get('direction', '')}, "
                      f"from the {base} run): {label}")
    heads = frame["head"].notna()
    if heads.all():
        grid = frame.pivot(index="layer", columns="head", values=show)
        fig = heatmap(grid.to_numpy(), x=[str(h) for h in grid.columns], y=[str(l) for l in grid.index],
                      x_title="head", y_title="layer", title=title, colorbar=label.split(" (")[0], diverging=True,
                      hover=interval_hover(frame, show, "layer", "head"))
        if grey:
            grey_uncertain(fig, frame, "layer", "head")
        cell_text(fig, [["-" if v != v else f"{v:+.2f}" for v in row] for row in grid.to_numpy().tolist()], size=9)
        return fig
    values = [None if v != v else v for v in frame[show]]
    colours = ["#b2182b" if v is not None and v < 0 else "#2166ac" for v in values]
    low, high = INTERVAL_OF.get(show, (None, None))
    error = None
    if low in frame:
        error = error_bars(frame, show, low, high)
        if grey:
            uncertain = (frame["effect_ci_low"] <= 0) & (frame["effect_ci_high"] >= 0)
            colours = [GREY if u else c for u, c in zip(uncertain.fillna(False), colours)]
    fig = go.Figure(go.Bar(x=list(frame["component"]), y=values, marker_color=colours, error_y=error))
    fig.update_layout(title=title, height=360, xaxis_title="component", yaxis_title=label.split(" (")[0])
    return fig


RECEIVER = "#ff4b4b"  # a chosen receiver on the receiver grid


def receiver_grid_figure(*, n_layer: int, n_head: int, receivers: Sequence[str], receiver_input: str,
                         title: str | None = None) -> go.Figure:
    """The [layer x head] grid of heads as square markers, one per head, for picking path patching
    receivers by clicking: heads of blocks 1 and later are points a page can select (customdata = the
    head's label, "L1H0"), the `receivers` among them (labels "L{layer}H{head}") filled and marked with
    the `receiver_input` (q, k or v) they receive; block 0's heads are greyed and carry no label (no
    block before them, so never receivers). Plotly's own selection dims nothing: what is filled is
    the receivers, not the last click."""
    chosen = set(receivers)
    heads = [(layer, head) for layer in range(1, n_layer) for head in range(n_head)]
    labels = [f"L{layer}H{head}" for layer, head in heads]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=list(range(n_head)), y=[0] * n_head, mode="markers", name="block 0", hoverinfo="text",
        hovertext=[f"L0H{h}: block 0, no block before it (not a receiver)" for h in range(n_head)],
        marker={"symbol": "square", "size": 24, "color": "#e8e8e8", "line": {"color": "#c8c8c8", "width": 1}}))
    fig.add_trace(go.Scatter(
        x=[h for _, h in heads], y=[l for l, _ in heads], mode="markers+text", name="heads", customdata=labels,
        text=[receiver_input if name in chosen else "" for name in labels], textfont={"color": "white", "size": 11},
        hoverinfo="text", hovertext=[f"{name}: receiver ({receiver_input}); click to remove" if name in chosen else
                                     f"{name}: click to add as a receiver" for name in labels],
        marker={"symbol": "square", "size": 24, "color": [RECEIVER if name in chosen else "white" for name in labels],
                "line": {"color": [RECEIVER if name in chosen else "#888" for name in labels], "width": 1.5}},
        selected={"marker": {"opacity": 1}}, unselected={"marker": {"opacity": 1}}))
    fig.update_xaxes(title_text="head", tickmode="array", tickvals=list(range(n_head)), range=[-0.6, n_head - 0.4],
                     showgrid=False, zeroline=False, fixedrange=True)
    fig.update_yaxes(title_text="layer", tickmode="array", tickvals=list(range(n_layer)), range=[n_layer - 0.5, -0.5],
                     showgrid=False, zeroline=False, fixedrange=True)
    fig.update_layout(title=title or f"Receivers ({len(chosen)}, input {receiver_input}): click a head to add or "
                      "remove it; block 0 (grey) cannot receive",
                      height=max(220, 110 + 36 * n_layer), showlegend=False, margin={"t": 50, "b": 10},
                      clickmode="event+select", dragmode=False)
    return fig


# ----------------------------------------------------------------------------- ablation
def ablation_figure(frame, *, title: str | None = None, grey: bool = False) -> go.Figure:
    """An ablation table (one row per head: layer, head, effect; recorded or fresh) as a
    [layer x head] heatmap of the effect, each cell labelled with its value. With per-prompt
    intervals the hover shows them, and `grey` covers the heads whose effect interval includes 0."""
    grid = frame.pivot(index="layer", columns="head", values="effect")
    method = frame["method"].iloc[0] if "method" in frame else ""
    metric = frame["metric"].iloc[0] if "metric" in frame else "the metric"
    fig = heatmap(grid.to_numpy(), x=[str(h) for h in grid.columns], y=[str(l) for l in grid.index],
                  x_title="head", y_title="layer", diverging=True, colorbar="effect",
                  title=title or f"{method}-ablating each head: change in {metric}",
                  hover=interval_hover(frame, "effect", "layer", "head"))
    if grey:
        grey_uncertain(fig, frame, "layer", "head")
    cell_text(fig, [[f"{v:+.2f}" for v in row] for row in grid.to_numpy().tolist()], size=9)
    return fig


# ----------------------------------------------------------------------------- logit lens
LENS_SHOW = {
    "top_prob": "probability of the top token",
    "target_logprob": "log-probability of the target token",
    "target_prob": "probability of the target token",
    "target_rank": "rank of the target token (0 = top)",
}


def lens_figure(values, *, str_tokens: Sequence[str], layers: Sequence[str], show: str = "top_prob",
                positions: Sequence[int] | None = None, top_tokens: list[list[str]] | None = None,
                hover: list[list[str]] | None = None, target: str | None = None) -> go.Figure:
    """A logit lens [layer x pos] of `show` (see LENS_SHOW). `values`, `top_tokens` (cell text)
    and `hover` hold the shown positions only; `positions` are their indices in the prompt (for
    the labels; default 0, 1, ...). Cell text is left out where it would overlap."""
    positions = list(range(len(str_tokens))) if positions is None else list(positions)
    fig = heatmap(
        values, x=token_ticks(str_tokens, positions), y=list(layers), x_title="pos", y_title="layer",
        title=f"Logit lens: {LENS_SHOW[show]}" + (f" {target!r}" if show != "top_prob" and target else ""),
        colorbar=show, hover=hover,
        zmin=0.0 if show in ("top_prob", "target_prob", "target_rank") else None,
        zmax=1.0 if show in ("top_prob", "target_prob") else (100.0 if show == "target_rank" else None),
        colorscale=f"{SEQUENTIAL}_r" if show == "target_rank" else SEQUENTIAL,
    )
    if show == "target_rank":  # ranks beyond 100 share the darkest colour: keep the scale at 0..100
        fig.update_traces(zmax=100, zmin=0, selector={"type": "heatmap"})
    if top_tokens is not None:
        cell_text(fig, [[show_token(t) for t in row] for row in top_tokens])
    return fig


def lens_figure_from_frame(frame) -> go.Figure:
    """The logit lens figure of a recorded run (its `logit_lens` table, first prompt)."""
    frame = frame[frame["batch"] == 0] if "batch" in frame else frame
    grid = frame.pivot(index="layer_index", columns="pos", values="top_prob")
    top = frame.pivot(index="layer_index", columns="pos", values="top_token")
    layers = frame.drop_duplicates("layer_index").set_index("layer_index")["layer"]
    tokens = frame.drop_duplicates("pos").set_index("pos")["token"]
    return lens_figure(grid.to_numpy(), str_tokens=[tokens[p] for p in grid.columns],
                       layers=[layers[l] for l in grid.index], positions=list(grid.columns),
                       top_tokens=top.to_numpy().tolist())


def generic_figures(tensors: dict[str, torch.Tensor], tables: dict) -> list[go.Figure]:
    """For a run of an experiment without its own figures: a heatmap (2-D) or bar chart (1-D) per tensor."""
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


# ----------------------------------------------------------------------------- direct logit attribution
def dla_figure(frame, *, title: str | None = None, grey: bool = False) -> go.Figure:
    """A direct-logit-attribution table (`DLAResult.to_frame()`, recorded or fresh) as its grid:
    heads as a [layer x head] heatmap (cells labelled), neurons as a [layer x d_mlp] heatmap, whole
    layers or decompose_resid's components as bars with the prompts' spread (min to max); mean
    over the prompts, in logits, on a diverging scale centred on 0. With intervals over prompts
    (ci_low, ci_high) a heatmap's hover shows them, and `grey` covers the cells whose interval
    includes 0."""
    first = frame.iloc[0]
    direction, pos = first.get("direction", "the direction"), first.get("pos", "")
    where = "each prompt's last token" if pos == -1 else f"pos {pos}"  # -1: each prompt's own (padded prompts)
    for kind, x_dim in (("head", "head"), ("neuron", "d_mlp")):
        cells = frame[frame["component"] == kind]
        if len(cells):
            grid = cells.pivot(index="layer", columns="index", values="value")
            fig = heatmap(grid.to_numpy(), x=[str(c) for c in grid.columns], y=[str(l) for l in grid.index],
                          x_title=x_dim, y_title="layer", diverging=True, colorbar="logits",
                          title=title or f"Direct logit attribution of each {kind} to {direction} at {where} "
                                         f"(mean over prompts)",
                          hover=interval_hover(cells, "value", "layer", "index"))
            if grey:
                grey_uncertain(fig, cells, "layer", "index", of="value")
            if kind == "head":
                cell_text(fig, [[f"{v:+.2f}" for v in row] for row in grid.to_numpy().tolist()], size=9)
            return fig
    return _spread_bars(frame, title=title or f"Direct logit attribution to {direction} at {where} "
                                                "(mean over prompts; bars: min to max)")


def dla_layer_figure(layers, *, title: str | None = None) -> go.Figure:
    """Each block's attention and MLP output's direct contribution (`DLAResult.layer_frame()`):
    grouped bars per layer, mean over the prompts, error bars from the min to the max prompt."""
    fig = go.Figure()
    for kind, name in (("attn_out", "attention"), ("mlp_out", "MLP")):
        rows = layers[layers["component"] == kind]
        customdata, interval = _interval_hover(rows)
        fig.add_trace(go.Bar(
            x=[str(l) for l in rows["layer"]], y=rows["value"].tolist(), name=name, customdata=customdata,
            error_y=error_bars(rows, "value", "min", "max"),
            hovertemplate=f"layer %{{x}} {name}: %{{y:.3f}} logits" + interval + "<extra></extra>"))
    fig.update_layout(title=title or "Per layer: attention and MLP (mean; bars: min to max)",
                      barmode="group", height=360, margin={"t": 60, "b": 10},
                      xaxis_title="layer", yaxis_title="logits")
    return fig


def dla_accumulated_figure(accumulated, *, title: str | None = None) -> go.Figure:
    """The accumulated view (`DLAResult.accumulated_frame()`): the value read off the residual
    stream after each sublayer through the frozen-scale final LayerNorm, mean +- std over prompts."""
    fig = go.Figure(go.Scatter(
        x=accumulated["layer"].tolist(), y=accumulated["value"].tolist(), mode="lines+markers",
        error_y={"type": "data", "array": accumulated["std"].tolist()},
        hovertemplate="%{x}: %{y:.3f} logits<extra></extra>"))
    fig.update_layout(title=title or "Accumulated: the stream after each sublayer (mean +- std)",
                      height=340, margin={"t": 60, "b": 10}, xaxis_title="layer", yaxis_title="logits")
    return fig


def _interval_hover(frame) -> tuple[list | None, str]:
    """(customdata, hovertemplate suffix) for bars of a DLA table: each bar's interval of the mean
    over prompts when the table has one (ci_low, ci_high, n)."""
    if "ci_low" not in frame:
        return None, ""
    return frame[["ci_low", "ci_high", "n"]].to_numpy().tolist(), INTERVAL_TEMPLATE


def _spread_bars(frame, *, title: str) -> go.Figure:
    customdata, interval = _interval_hover(frame)
    fig = go.Figure(go.Bar(
        x=frame["label"].tolist(), y=frame["value"].tolist(), customdata=customdata,
        error_y=error_bars(frame, "value", "min", "max"),
        hovertemplate="%{x}: %{y:.3f} logits" + interval + "<extra></extra>"))
    fig.update_layout(title=title, height=360, margin={"t": 60, "b": 10}, xaxis_title="component",
                      yaxis_title="logits")
    return fig


# ----------------------------------------------------------------------------- circuits
POSITIVE, NEGATIVE = "#2166ac", "#b2182b"  # the ends of DIVERGING (RdBu): blue > 0, red < 0


def _node_xy(node: str, n_layer: int, n_head: int) -> tuple[float, float]:
    """Where a node sits in the circuit drawing: a column per block (heads, then its MLP half a
    column to the right), the input on the left and the logits on the right; heads by index."""
    middle = (n_head - 1) / 2
    if node == "input":
        return 0.0, middle
    if node == "logits":
        return n_layer + 1.0, middle
    if node.startswith("MLP"):
        return int(node[3:]) + 1.5, middle
    layer, head = node[1:].split("H")
    return int(layer) + 1.0, float(head)


# The interval columns of an edge table (`CircuitDiscovery.edges_frame()`) for each drawn score.
EDGE_INTERVAL_OF = {"score": ("ci_low", "ci_high"), "exact": ("exact_ci_low", "exact_ci_high")}


def circuit_figure(edges, *, n_layer: int, n_head: int, score: str = "score", top: int = 50,
                   title: str | None = None, grey: bool = False) -> go.Figure:
    """The `top` edges of largest |score| (an edge table: edge, upstream, downstream, and the `score`
    column; e.g. `EdgeScores.to_frame()`) drawn between the nodes, which stand in columns by block:
    line width grows with |score|, blue for a positive and red for a negative score. Every edge's
    midpoint and every node carries a hover (and is a point a page can select, customdata = its label);
    with intervals over prompts (EDGE_INTERVAL_OF) the hover shows the edge's, and `grey` draws the
    edges whose interval includes 0 grey."""
    low, high = EDGE_INTERVAL_OF.get(score, (None, None))
    has_ci = low in edges
    shown = edges.dropna(subset=[score])
    shown = shown.reindex(shown[score].abs().sort_values(ascending=False).index).head(top)
    biggest = float(shown[score].abs().max()) if len(shown) else 1.0
    fig = go.Figure()
    mid_x, mid_y, mid_text, mid_label = [], [], [], []
    for _, row in shown.iterrows():
        reader = row["downstream"].split(".")[0]
        (x0, y0), (x1, y1) = _node_xy(row["upstream"], n_layer, n_head), _node_xy(reader, n_layer, n_head)
        value = float(row[score])
        uncertain = has_ci and bool(row[low] <= 0 <= row[high])
        colour = GREY if grey and uncertain else (POSITIVE if value >= 0 else NEGATIVE)
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"width": 0.5 + 7.5 * abs(value) / (biggest or 1.0), "color": colour},
                                 opacity=0.7))
        mid_x.append((x0 + x1) / 2)
        mid_y.append((y0 + y1) / 2)
        mid_label.append(row["edge"])
        mid_text.append(f"{row['edge']}<br>{score}: {fmt(value)}" + (
            "<br>" + interval_text(float(row[low]), float(row[high]), row["n"]) if has_ci else ""))
    fig.add_trace(go.Scatter(x=mid_x, y=mid_y, mode="markers", marker={"size": 7, "color": "rgba(0,0,0,0.25)"},
                             customdata=mid_label, hovertext=mid_text, hoverinfo="text", name="edges"))
    nodes = ["input"] + [f"L{l}H{h}" for l in range(n_layer) for h in range(n_head)] + [f"MLP{l}" for l in range(n_layer)]
    nodes.append("logits")
    used = set(shown["upstream"]) | {d.split(".")[0] for d in shown["downstream"]}
    xy = [_node_xy(n, n_layer, n_head) for n in nodes]
    fig.add_trace(go.Scatter(
        x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers+text", customdata=nodes, name="nodes",
        text=[n if n in used else "" for n in nodes], textposition="top center", hoverinfo="text", hovertext=nodes,
        marker={"size": [12 if n in used else 6 for n in nodes], "color": ["#444" if n in used else "#bbb" for n in nodes],
                "symbol": ["square" if n.startswith("MLP") else "circle" for n in nodes]},
    ))
    ticks = [0.0] + [l + 1.0 for l in range(n_layer)] + [n_layer + 1.0]
    fig.update_xaxes(tickmode="array", tickvals=ticks, ticktext=["input"] + [f"block {l}" for l in range(n_layer)]
                     + ["logits"], showgrid=False, zeroline=False)
    fig.update_yaxes(title_text="head", autorange="reversed", showgrid=False, zeroline=False, dtick=1)
    fig.update_layout(title=title or f"top {len(shown)} edges by |{score}| (blue > 0, red < 0; width ~ |{score}|)",
                      height=max(360, 60 + 34 * n_head), showlegend=False, margin={"t": 60, "b": 10})
    return fig


def faithfulness_figure(curve, *, target: float | None = None, title: str | None = None) -> go.Figure:
    """A faithfulness curve (a table with n_edges and faithfulness, e.g. `Faithfulness.to_frame()`)
    against the number of edges on a log axis; `target` drawn as a dashed line. With intervals over
    prompts (faithfulness_ci_low / _high) they are error bars and in the hover."""
    points = curve[curve["n_edges"] > 0]
    error, hover = None, "%{x} edges<br>faithfulness %{y:.3f}<extra></extra>"
    if "faithfulness_ci_low" in points:
        error = error_bars(points, "faithfulness", "faithfulness_ci_low", "faithfulness_ci_high")
        hover = "%{x} edges<br>faithfulness %{y:.3f}" + INTERVAL_TEMPLATE + "<extra></extra>"
    fig = go.Figure(go.Scatter(
        x=points["n_edges"].tolist(), y=points["faithfulness"].tolist(), mode="lines+markers", error_y=error,
        customdata=points[["faithfulness_ci_low", "faithfulness_ci_high", "n"]].to_numpy().tolist() if error else None,
        hovertemplate=hover))
    if target is not None:
        fig.add_hline(y=target, line_dash="dash", annotation_text=f"target {target:g}")
    fig.add_hline(y=1.0, line_color="#999", line_width=1)
    fig.update_xaxes(type="log", title_text="edges in the circuit (top k of the ranking)")
    fig.update_yaxes(title_text="faithfulness (0 = corrupted, 1 = clean)")
    fig.update_layout(title=title or "faithfulness of the top-k edges", height=380, margin={"t": 60, "b": 10})
    return fig
