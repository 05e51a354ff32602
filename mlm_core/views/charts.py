"""Figures for the pages, built from mlm_core results; no Streamlit here so they can be tested.

Token axes use integer positions with the tokens as tick labels: Plotly would otherwise
merge repeated labels ("the", "the") into one row. Plotly renders a subset of HTML in labels,
titles and hover text (``<b>``, ``<a href>``), so every token and title goes through ``literal``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from mlm_core.explain.predict import PositionPrediction

KIND_COLOURS = {
    "masked": "#d62728",
    "random": "#ff7f0e",
    "kept": "#2ca02c",
    "excluded": "#7f7f7f",
    None: "#c7d3e3",
}
HIT_COLOUR, MISS_COLOUR, NEUTRAL_COLOUR = "#2ca02c", "#d62728", "#1f77b4"


def literal(text: str) -> str:
    """``text`` escaped so that Plotly shows it as typed (it decodes &lt; &gt; &amp; back)."""
    return html.escape(str(text), quote=False)


def topk_bars(prediction: PositionPrediction, title: str = "", height: int = 260) -> go.Figure:
    """Horizontal bars of the top-k guesses, best at the top; the original token in green.

    ``title`` may have several lines (``\n``); each is shown literally.
    """
    candidates = list(prediction.top)[::-1]  # Plotly draws the first bar at the bottom
    colours = [
        NEUTRAL_COLOUR
        if prediction.original_id is None
        else (HIT_COLOUR if c.token_id == prediction.original_id else "#9ecae1")
        for c in candidates
    ]
    names = [literal(c.token) for c in candidates]
    # One constructor call with plain dicts: plotly validates the whole figure once, where a trace object
    # plus update_layout validated it piece by piece (5 ms a chart, one chart per mask on every rerun).
    bar = dict(type="bar", x=[c.prob for c in candidates], y=list(range(len(candidates))), orientation="h",
               marker=dict(color=colours), text=[f"{c.prob:.1%}" for c in candidates], textposition="auto",
               hovertemplate="%{customdata}: %{x:.2%}<extra></extra>", customdata=names)
    return go.Figure(data=[bar], layout=dict(
        title=dict(text="<br>".join(literal(line) for line in title.split("\n")), font=dict(size=14)),
        height=height,
        margin=dict(l=10, r=10, t=60 if "\n" in title else 40 if title else 10, b=10),
        xaxis=dict(title=dict(text="probability"), range=[0, 1], tickformat=".0%"),
        yaxis=dict(tickmode="array", tickvals=list(range(len(candidates))), ticktext=names),
    ))


def token_axis(tokens: Sequence[str]) -> dict:
    """Axis settings that keep repeated tokens apart (integer ticks labelled by token)."""
    return dict(tickmode="array", tickvals=list(range(len(tokens))), ticktext=[literal(t) for t in tokens])


# --------------------------------------------------------------------------- explain: attention,
# interference and attribution figures. Matrices come from mlm_core.explain.attention / interference /
# attribution as numpy arrays; rows are "from" tokens, columns "to" tokens.

HIGHLIGHT_COLOUR = "#d62728"
ATTENTION_SCALE = "Blues"
DIVERGING_SCALE = "RdBu_r"  # red = more / helped, blue = less / hurt; zero is white
BEFORE_COLOUR, AFTER_COLOUR = "#9ecae1", "#08519c"


def safe_labels(labels: Sequence[str]) -> list[str]:
    """``literal`` for a list (hover data, titles built from tokens)."""
    return [literal(label) for label in labels]


def _labelled_axis(labels: Sequence[str], title: str = "") -> dict:
    return dict(token_axis(labels), title=title, tickangle=0 if len(labels) < 12 else -60)


def outline_shapes(highlight: Sequence[int], n: int, width: int = 2, **cell) -> list[dict]:
    """Red outlines around the row (from) and column (to) of each highlighted position of an n×n map, as
    layout shapes (one list given to the figure at once: ``add_shape`` validated the layout each time)."""
    line = dict(color=HIGHLIGHT_COLOUR, width=width)
    shapes = []
    for p in highlight:
        shapes.append(dict(type="rect", x0=p - 0.5, x1=p + 0.5, y0=-0.5, y1=n - 0.5, line=line, **cell))
        shapes.append(dict(type="rect", x0=-0.5, x1=n - 0.5, y0=p - 0.5, y1=p + 0.5, line=line, **cell))
    return shapes


def _outline(figure: go.Figure, highlight: Sequence[int], n: int, width: int = 2, **cell) -> None:
    """``outline_shapes`` added to a figure of subplots (``cell``: its row and col)."""
    for shape in outline_shapes(highlight, n, width):
        figure.add_shape(**shape, **cell)


def hover_pairs(shown: Sequence[str], prefix: str = "") -> np.ndarray:
    """(n, n) hover texts "from a to b" of a T×T map (``prefix`` before each). One string a cell, in an
    array: plotly validates a list element by element, and writes every string of a figure to JSON each
    time the page shows it (two strings a cell cost a 12-head grid 5 ms a rerun)."""
    labels = np.asarray(shown, dtype=object)
    return f"{prefix}from " + labels[:, None] + " to " + labels[None, :]


def _square_height(n: int, base: int = 220, per_token: int = 22, cap: int = 760) -> int:
    return min(cap, base + per_token * n)


def attention_heatmap(
    matrix,
    labels: Sequence[str],
    highlight: Sequence[int] = (),
    title: str = "",
    diverging: bool = False,
    zmax: float | None = None,
) -> go.Figure:
    """A T×T attention map: row i = where token i looks (from), column j = token j (to).

    Masked positions (``highlight``) are outlined in red. ``diverging`` draws a difference map
    centred on zero. Tick labels are the tokens (integer axes keep repeated tokens apart).
    """
    n = len(labels)
    shown = safe_labels(labels)
    heat = dict(
        type="heatmap",
        z=matrix,
        x=list(range(n)),
        y=list(range(n)),
        text=hover_pairs(shown),
        hovertemplate="%{text}: %{z:.3f}<extra></extra>",
    )
    if diverging:
        bound = zmax or float(max(1e-9, abs(matrix).max()))
        heat.update(colorscale=DIVERGING_SCALE, zmid=0, zmin=-bound, zmax=bound)
    else:
        heat.update(colorscale=ATTENTION_SCALE, zmin=0, zmax=zmax)
    return go.Figure(data=[heat], layout=dict(  # built in one call, as topk_bars is
        title=dict(text=literal(title)),
        height=_square_height(n),
        margin=dict(l=10, r=10, t=60 if "<br>" in title else 40 if title else 10, b=10),
        xaxis=_labelled_axis(labels, "to"),
        yaxis=dict(_labelled_axis(labels, "from"), autorange="reversed", tickangle=0),
        shapes=outline_shapes(highlight, n),
    ))


def attention_grid(
    layer_att,
    labels: Sequence[str],
    highlight: Sequence[int] = (),
    columns: int = 4,
    title: str = "",
    subplot_titles: Sequence[str] | None = None,
) -> go.Figure:
    """Small multiples: one T×T map per head of one layer, (H, T, T), on one colour scale.

    Drawn as one heatmap: the heads' maps side by side in one (rows, columns) mosaic, apart by empty
    (NaN) cells, with the masked positions' outlines as one line trace. Plotly validates and copies
    a figure's every trace and axis whenever the page shows it: as twelve heatmaps on twelve axis
    pairs the grid cost 8.6 ms of the server's one interpreter lock on every rerun, and 17 ms to build.
    """
    n_heads, n = len(layer_att), len(labels)
    columns = max(1, min(columns, n_heads))
    rows = -(-n_heads // columns)
    gap = max(1, round(0.15 * n))  # empty cells between two heads
    step = n + gap
    titles = safe_labels(list(subplot_titles or [f"head {h}" for h in range(n_heads)]))
    shown = np.asarray(safe_labels(labels), dtype=object)
    pairs = [hover_pairs(shown, f"{title}: ") for title in titles]
    mosaic = np.full((rows * step - gap, columns * step - gap), np.nan)
    hover = np.full(mosaic.shape, "", dtype=object)  # "head h: from a to b" of every cell: one string a cell
    outline_x: list[float | None] = []
    outline_y: list[float | None] = []
    annotations = []
    for h in range(n_heads):
        top, left = (h // columns) * step, (h % columns) * step
        mosaic[top:top + n, left:left + n] = layer_att[h]
        hover[top:top + n, left:left + n] = pairs[h]
        annotations.append(dict(text=titles[h], x=left + (n - 1) / 2, y=top - 0.5, xref="x", yref="y",
                                xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=13)))
        for p in highlight:  # the masked position's column (to) and row (from), outlined in red
            for x0, x1, y0, y1 in ((p - 0.5, p + 0.5, -0.5, n - 0.5), (-0.5, n - 0.5, p - 0.5, p + 0.5)):
                outline_x += [left + x0, left + x1, left + x1, left + x0, left + x0, None]
                outline_y += [top + y0, top + y0, top + y1, top + y1, top + y0, None]
    show_ticks = n <= 24  # beyond that the labels overlap; hover still names both tokens
    ticks = [block * step + i for block in range(columns) for i in range(n)]
    axis = dict(tickmode="array", tickfont=dict(size=8), showgrid=False, zeroline=False, showticklabels=show_ticks)
    heat = dict(type="heatmap", z=mosaic, colorscale=ATTENTION_SCALE, zmin=0, zmax=1, text=hover,
                hoverongaps=False, hovertemplate="%{text}: %{z:.3f}<extra></extra>")
    traces = [heat]
    if outline_x:
        traces.append(dict(type="scatter", x=outline_x, y=outline_y, mode="lines", hoverinfo="skip",
                           line=dict(color=HIGHLIGHT_COLOUR, width=1), showlegend=False))
    height = min(1600, 80 + rows * (140 + 8 * n) + (60 if show_ticks else 0))
    return go.Figure(data=traces, layout=dict(
        title=literal(title), height=height, annotations=annotations, margin=dict(l=10, r=10, t=70, b=10),
        plot_bgcolor="rgba(0,0,0,0)",
        xaxis=dict(axis, tickvals=ticks, ticktext=[t for _ in range(columns) for t in shown], tickangle=-90,
                   range=[-0.5, mosaic.shape[1] - 0.5]),
        yaxis=dict(axis, tickvals=[block * step + i for block in range(rows) for i in range(n)],
                   ticktext=[t for _ in range(rows) for t in shown], autorange="reversed"),
    ))


def layer_head_heatmap(
    values, title: str = "", value_label: str = "", diverging: bool = False, percent: bool = False
) -> go.Figure:
    """One cell per layer (rows, bottom layer at the top) and head (columns): an (L, H) array.

    ``percent`` shows probabilities (e.g. drops in probability) as signed percentages.
    """
    n_layers, n_heads = values.shape
    cell = "{:+.2%}" if percent else "{:.2f}"
    heat = dict(
        z=values,
        x=list(range(n_heads)),
        y=list(range(n_layers)),
        text=[[cell.format(v) for v in row] for row in values],
        texttemplate="%{text}" if n_layers * n_heads <= 200 else None,
        colorbar=dict(title=value_label, tickformat=".1%" if percent else None),
        hovertemplate="layer %{y}, head %{x}: %{z:.4f}<extra></extra>",
    )
    if diverging:
        bound = float(max(1e-9, abs(values).max()))
        heat.update(colorscale=DIVERGING_SCALE, zmid=0, zmin=-bound, zmax=bound)
    else:
        heat.update(colorscale=ATTENTION_SCALE)
    return go.Figure(data=[dict(heat, type="heatmap")], layout=dict(  # built in one call, as topk_bars is
        title=dict(text=literal(title)),
        height=min(700, 140 + 34 * n_layers),
        margin=dict(l=10, r=10, t=60 if "<br>" in title else 40 if title else 10, b=10),
        xaxis=dict(tickmode="array", tickvals=list(range(n_heads)), title=dict(text="head")),
        yaxis=dict(tickmode="array", tickvals=list(range(n_layers)), title=dict(text="layer"), autorange="reversed"),
    ))


def from_position_heatmap(values, labels: Sequence[str], position: int, title: str = "") -> go.Figure:
    """Where one masked position looks in every layer: (L, T), layers as rows, tokens as columns."""
    n_layers = len(values)
    heat = dict(type="heatmap", z=values, x=list(range(len(labels))), y=list(range(n_layers)),
                colorscale=ATTENTION_SCALE, zmin=0,
                customdata=np.asarray([safe_labels(labels)] * n_layers, dtype=object),
                hovertemplate="layer %{y} → %{customdata}: %{z:.3f}<extra></extra>")
    line = dict(color=HIGHLIGHT_COLOUR, width=2)
    return go.Figure(data=[heat], layout=dict(  # built in one call, as topk_bars is
        title=dict(text=literal(title)),
        height=min(600, 160 + 32 * n_layers),
        margin=dict(l=10, r=10, t=60 if "<br>" in title else 40 if title else 10, b=10),
        xaxis=_labelled_axis(labels, "attends to"),
        yaxis=dict(tickmode="array", tickvals=list(range(n_layers)), title=dict(text="layer"), autorange="reversed"),
        shapes=[dict(type="rect", x0=position - 0.5, x1=position + 0.5, y0=-0.5, y1=n_layers - 0.5, line=line)],
    ))


def side_by_side_heatmaps(
    left, right, left_labels: Sequence[str], right_labels: Sequence[str], titles: Sequence[str],
    highlight: Sequence[int] = (),
) -> go.Figure:
    """Two T×T maps (e.g. masked and unmasked) next to each other on one colour scale."""
    from plotly.subplots import make_subplots

    n = len(left_labels)
    figure = make_subplots(rows=1, cols=2, subplot_titles=safe_labels(titles), horizontal_spacing=0.12)
    for col, (matrix, labels) in enumerate(((left, left_labels), (right, right_labels)), start=1):
        figure.add_trace(
            go.Heatmap(z=matrix, colorscale=ATTENTION_SCALE, zmin=0, zmax=1, showscale=col == 2,
                       hovertemplate="from %{y} to %{x}: %{z:.3f}<extra></extra>"),
            row=1, col=col,
        )
        figure.update_xaxes(_labelled_axis(labels), row=1, col=col)
        figure.update_yaxes(dict(_labelled_axis(labels), tickangle=0), autorange="reversed", row=1, col=col)
        _outline(figure, highlight, n, row=1, col=col)
    figure.update_layout(height=_square_height(n, base=260, per_token=18), margin=dict(l=10, r=10, t=50, b=10))
    return figure


def whatif_bars(before, after, reference_id: int | None = None, title: str = "") -> go.Figure:
    """Top-k before and after a change, as grouped horizontal bars over the union of both lists.

    ``before``/``after`` are PositionPrediction; a token missing from one top-k has no bar
    there, except the followed (original) token, whose probability is always known. Its
    label is starred.
    """
    order: list[tuple[int, str]] = []
    for c in (*before.top, *after.top):
        if (c.token_id, c.token) not in order:
            order.append((c.token_id, c.token))
    p_before = {c.token_id: c.prob for c in before.top}
    p_after = {c.token_id: c.prob for c in after.top}
    for prediction, probs in ((before, p_before), (after, p_after)):
        if prediction.original_id is not None and prediction.original_prob is not None:
            probs[prediction.original_id] = prediction.original_prob  # the followed token, even outside the top-k
    order = order[::-1]  # first bar at the top
    labels = [("★ " if tid == reference_id else "") + tok for tid, tok in order]
    y = list(range(len(order)))
    figure = go.Figure()
    for name, probs, colour in (("before", p_before, BEFORE_COLOUR), ("after", p_after, AFTER_COLOUR)):
        figure.add_trace(
            go.Bar(
                name=name,
                x=[probs.get(tid) for tid, _ in order],
                y=y,
                orientation="h",
                marker_color=colour,
                customdata=safe_labels([tok for _, tok in order]),
                hovertemplate=name + " %{customdata}: %{x:.2%}<extra></extra>",
            )
        )
    figure.update_layout(
        title=literal(title),
        barmode="group",
        height=min(700, 120 + 34 * len(order)),
        margin=dict(l=10, r=10, t=60 if "<br>" in title else 40 if title else 10, b=10),
        xaxis=dict(title="probability", tickformat=".0%", rangemode="tozero"),
        yaxis=dict(tickmode="array", tickvals=y, ticktext=safe_labels(labels)),
        legend=dict(orientation="h", y=-0.2),
    )
    return figure


def attribution_bars(scores, labels: Sequence[str], highlight: Sequence[int] = (), title: str = "") -> go.Figure:
    """One bar per token (or word): red pushed the target up, blue pushed it down; masks on a shaded band."""
    scores = [float(s) for s in scores]
    colours = ["#d62728" if s > 0 else "#1f77b4" for s in scores]
    figure = go.Figure(
        go.Bar(
            x=list(range(len(scores))),
            y=scores,
            marker_color=colours,
            customdata=safe_labels(labels),
            hovertemplate="%{customdata}: %{y:.4f}<extra></extra>",
        )
    )
    figure.update_layout(
        title=literal(title),
        height=340,
        margin=dict(l=10, r=10, t=60 if "<br>" in title else 40 if title else 10, b=10),
        xaxis=_labelled_axis(labels),
        yaxis=dict(title="attribution", zeroline=True),
    )
    for p in highlight:
        figure.add_shape(type="rect", x0=p - 0.5, x1=p + 0.5, y0=0, y1=1, yref="paper", layer="below",
                         fillcolor=HIGHLIGHT_COLOUR, opacity=0.15, line_width=0)
    return figure


def frequency_strip(tokens: Sequence[str], frequency: Sequence[float], draws: int, height: int = 220) -> go.Figure:
    """How often each token was chosen over ``draws`` draws (one bar per token, in text order)."""
    figure = go.Figure(
        go.Bar(
            x=list(range(len(tokens))),
            y=list(frequency),
            marker_color=KIND_COLOURS["masked"],
            hovertemplate="%{customdata}: chosen in %{y:.0%} of draws<extra></extra>",
            customdata=list(tokens),
        )
    )
    figure.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=30, b=10),
        title=f"How often each token is chosen ({draws} draws)",
        xaxis=token_axis(tokens),
        yaxis=dict(range=[0, 1], tickformat=".0%", title="chosen"),
    )
    return figure


# --------------------------------------------------------------------------- training curves: long-form
# frames from mlm_core.training.run_table (columns step, value and a series column), one chart per metric.

CURVE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")
PERCENT_METRICS = ("accuracy", "masking rate")  # metrics shown as percentages


def metric_curves(frame, title: str, series: str = "metric", height: int = 300) -> go.Figure:
    """Lines of ``value`` against ``step``, one per distinct ``series`` value (a run or a metric).

    Series names (run labels, category names) are shown literally in the legend and hover.
    A percentage axis is used when the title names an accuracy or a rate.
    """
    figure = go.Figure()
    for n, (name, part) in enumerate(frame.groupby(series, sort=False)):
        part = part.sort_values("step")
        shown = literal(name)
        figure.add_trace(go.Scatter(
            x=part["step"].tolist(), y=part["value"].tolist(), name=shown, mode="lines+markers",
            marker=dict(size=5), line=dict(color=CURVE_COLOURS[n % len(CURVE_COLOURS)]),
            hovertemplate="%{fullData.name}<br>step %{x}: %{y:.4g}<extra></extra>",  # no name in the template: "%{" stays text
        ))
    percent = any(word in title.lower() for word in PERCENT_METRICS)
    figure.update_layout(
        title=dict(text=literal(title), font=dict(size=14)),
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis=dict(title="step", rangemode="tozero"),
        yaxis=dict(tickformat=".0%" if percent else None, rangemode="tozero" if percent else "normal"),
        legend=dict(orientation="h", y=-0.25),
        showlegend=frame[series].nunique() > 1,
    )
    return figure


# --------------------------------------------------------------------------- batch analysis: from
# mlm_core.evaluate.EvalReport.summary(), one row per configuration and category with 95% intervals
# in <metric>_low / <metric>_high (NaN where there is none).

METRIC_LABELS = {
    "top1": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "mean_log_prob": "mean log-probability of the original token",
}


def _rgba(colour: str, alpha: float) -> str:
    red, green, blue = (int(colour[k : k + 2], 16) for k in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def _metric_axis(metric: str) -> dict:
    if metric == "mean_log_prob":
        return dict(title=METRIC_LABELS[metric])
    return dict(title=METRIC_LABELS[metric], tickformat=".0%", range=[0, 1.02])


def category_bars(summary, metric: str = "top1", height: int = 380) -> go.Figure:
    """Grouped bars: one group per category (all, stopword, punctuation, number, content), one bar per
    configuration, whiskers for the 95% interval. Configuration names are shown literally."""
    categories = list(dict.fromkeys(summary["category"]))
    figure = go.Figure()
    for n, (label, part) in enumerate(summary.groupby("config", sort=False)):
        part = part.set_index("category").reindex(categories)
        value, low, high = part[metric], part[f"{metric}_low"], part[f"{metric}_high"]
        figure.add_trace(go.Bar(
            name=literal(label), x=list(range(len(categories))), y=value.tolist(),
            error_y=dict(type="data", symmetric=False, array=(high - value).tolist(),
                         arrayminus=(value - low).tolist(), visible=bool(low.notna().any())),
            marker_color=CURVE_COLOURS[n % len(CURVE_COLOURS)], customdata=part["n"].tolist(),
            hovertemplate="%{fullData.name}<br>%{y:.3f} (n = %{customdata:,})<extra></extra>",
        ))
    figure.update_layout(
        title=dict(text=literal(f"{METRIC_LABELS[metric]} by token category"), font=dict(size=14)),
        barmode="group", height=height, margin=dict(l=10, r=10, t=40, b=10),
        xaxis=dict(token_axis(categories), title="category"), yaxis=_metric_axis(metric),
        legend=dict(orientation="h", y=-0.2),
    )
    return figure


def rate_curves(summary, metric: str = "top1", category: str = "all", height: int = 380) -> go.Figure:
    """``metric`` against the masking rate, one line per series (a configuration without its rate),
    with its 95% interval as a band. ``category`` picks the row of the summary (all, stopword, ...)."""
    part = summary[summary["category"] == category]
    figure = go.Figure()
    for n, (series, rows) in enumerate(part.groupby("series", sort=False)):
        rows = rows.sort_values("rate")
        colour = CURVE_COLOURS[n % len(CURVE_COLOURS)]
        rates = rows["rate"].tolist()
        shown = literal(series)
        if rows[f"{metric}_low"].notna().all():
            figure.add_trace(go.Scatter(
                x=rates + rates[::-1], y=rows[f"{metric}_high"].tolist() + rows[f"{metric}_low"].tolist()[::-1],
                fill="toself", fillcolor=_rgba(colour, 0.18), line=dict(width=0), hoverinfo="skip",
                showlegend=False, legendgroup=shown, name=shown,
            ))
        figure.add_trace(go.Scatter(
            x=rates, y=rows[metric].tolist(), name=shown, legendgroup=shown, mode="lines+markers",
            line=dict(color=colour), marker=dict(size=6), customdata=rows["n"].tolist(),
            hovertemplate="%{fullData.name}<br>rate %{x:.0%}: %{y:.3f} (n = %{customdata:,})<extra></extra>",
        ))
    figure.update_layout(
        title=dict(text=literal(f"{METRIC_LABELS[metric]} vs masking rate ({category})"), font=dict(size=14)),
        height=height, margin=dict(l=10, r=10, t=40, b=10),
        xaxis=dict(title="masking rate", tickformat=".0%"), yaxis=_metric_axis(metric),
        legend=dict(orientation="h", y=-0.2),
    )
    return figure


# --------------------------------------------------------------------------- compare: A vs B


DIFFERENCE_SLOTS = 6


def difference_bars(labels: Sequence[str], a, b, title: str = "", height: int = 320) -> go.Figure:
    """p(original) in B minus A per position: bars above zero where B is more confident.

    Only positions with a probability on both sides are drawn: a position masked on one side only
    (None or NaN on the other) has nothing to compare and is left out, never drawn as a difference.
    """
    rows = [(label, x, y) for label, x, y in zip(labels, a, b) if _number(x) and _number(y)]
    labels = [label for label, _, _ in rows]
    diffs = [y - x for _, x, y in rows]
    # Symmetric around zero with a floor of ±1%, so small differences keep their sign readable
    # and an all-zero chart does not get an arbitrary axis.
    bound = 1.15 * max([0.01, *(abs(d) for d in diffs)])
    # A lone bar would fill the whole width: keep room for at least DIFFERENCE_SLOTS bars, centred.
    pad = max(0, DIFFERENCE_SLOTS - len(diffs)) / 2
    figure = go.Figure(go.Bar(
        x=list(range(len(labels))),
        y=diffs,
        marker_color=[HIT_COLOUR if d >= 0 else MISS_COLOUR for d in diffs],
        customdata=[[label, x, y] for label, (_, x, y) in zip(safe_labels(labels), rows)],
        hovertemplate="%{customdata[0]}: %{y:+.1%} (A %{customdata[1]:.1%}, B %{customdata[2]:.1%})<extra></extra>",
    ))
    figure.update_layout(
        title=literal(title), height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        xaxis=dict(_labelled_axis(labels, "position masked on both sides"), range=[-0.5 - pad, len(diffs) - 0.5 + pad]),
        yaxis=dict(title="B − A", tickformat="+.0%" if bound > 0.1 else "+.1%", zeroline=True, range=[-bound, bound]),
    )
    return figure


def _number(value) -> bool:
    return value is not None and value == value  # NaN is the one value unequal to itself


def change_bars(tokens: Sequence[str], changes: Sequence[float], title: str = "", height: int = 380,
                axis_title: str = "probability change (variant − original)") -> go.Figure:
    """Ranked probability changes (largest first, at the top) for a sentence variant."""
    tokens, changes = list(tokens)[::-1], list(changes)[::-1]
    figure = go.Figure(go.Bar(
        x=changes, y=list(range(len(tokens))), orientation="h",
        marker_color=[HIT_COLOUR if c >= 0 else MISS_COLOUR for c in changes],
        customdata=safe_labels(tokens), hovertemplate="%{customdata}: %{x:+.2%}<extra></extra>",
    ))
    figure.update_layout(
        title=literal(title), height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        xaxis=dict(title=literal(axis_title), tickformat="+.0%"),
        yaxis=token_axis(tokens),
    )
    return figure
