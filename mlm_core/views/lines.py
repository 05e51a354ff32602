"""The attention line view in the style of BertViz: two token columns joined by weighted lines.

Left column: the "from" tokens (queries), right column: the "to" tokens (keys). The line from
token i to token j has opacity equal to the attention weight a_ij, as in BertViz, so the figure
is read like the heatmap row by row. ``focus`` picks one token whose lines are drawn in red at
full strength while every other line fades. BertViz switches the focus on hover with its own
JavaScript (from a CDN, so it goes blank offline); a Streamlit Plotly chart runs no script of ours,
so here hovering a token names its strongest lines and clicking it (or choosing it) sets ``focus``.

Lines are layout shapes, not traces: hundreds of one-segment traces make Plotly slow, shapes
cost little. Lines weaker than ``MIN_WEIGHT`` are invisible anyway and are left out; past
``MAX_LINES`` only the strongest are kept, so a 512-token text still draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from mlm_core.views.charts import HIGHLIGHT_COLOUR, literal, safe_labels

LINE_COLOUR = "#1f4e9c"  # dark blue: still visible at low opacity on white
FADED = 0.12  # how much of its weight a line keeps when another token has the focus
MIN_WEIGHT = 0.01  # weaker lines are not drawn
MAX_LINES = 3000
TOP_IN_HOVER = 3  # strongest links named in a token's hover label
ROW_PX = 26  # vertical space per token


def _strongest(weights: np.ndarray, labels: Sequence[str]) -> str:
    order = np.argsort(-weights)[:TOP_IN_HOVER]
    return "<br>".join(f"{i} {labels[i]}: {weights[i]:.2f}" for i in order)


def attention_lines(
    matrix,
    labels: Sequence[str],
    highlight: Sequence[int] = (),
    title: str = "",
    focus: int | None = None,
) -> go.Figure:
    """Lines from each token (left, "from") to each token (right, "to"), opacity = weight.

    ``matrix`` is T×T (rows "from", sum to 1); ``highlight`` (masked positions) get red labels'
    markers; ``focus`` draws that token's lines (both directions) in red. The y axes carry the tokens
    as tick labels (left axis and right axis), integer positions keep repeated tokens apart.
    Each drawn line's shape has ``name`` ``"i-j"`` so tests and callers can find it.
    """
    weights = np.asarray(matrix, dtype=float)
    n = len(labels)
    if weights.shape != (n, n):
        raise ValueError(f"attention_lines needs a {n}×{n} matrix for {n} labels; got {weights.shape}.")
    shown = safe_labels(labels)
    rows, cols = np.nonzero(weights >= MIN_WEIGHT)
    if len(rows) > MAX_LINES:
        keep = np.argsort(-weights[rows, cols], kind="stable")[:MAX_LINES]
        rows, cols = rows[keep], cols[keep]
    shapes = []
    for i, j in sorted(zip(rows.tolist(), cols.tolist())):
        w = float(min(1.0, weights[i, j]))
        mine = focus is not None and focus in (i, j)
        opacity = w if focus is None or mine else w * FADED
        shapes.append(dict(type="line", x0=0, y0=i, x1=1, y1=j, xref="x", yref="y", layer="below",
                           name=f"{i}-{j}", opacity=round(opacity, 4),
                           line=dict(color=HIGHLIGHT_COLOUR if mine else LINE_COLOUR, width=3 if mine else 2)))
    marks = ["#d62728" if p in highlight else "#555555" for p in range(n)]
    positions = list(range(n))
    looks = [_strongest(weights[i], shown) for i in positions]
    looked_at = [_strongest(weights[:, j], shown) for j in positions]
    figure = go.Figure([
        go.Scatter(x=[0] * n, y=positions, mode="markers", marker=dict(size=10, color=marks), name="from",
                   customdata=list(zip(shown, looks)),
                   hovertemplate="%{customdata[0]} looks at<br>%{customdata[1]}<extra></extra>"),
        go.Scatter(x=[1] * n, y=positions, mode="markers", marker=dict(size=10, color=marks), name="to",
                   customdata=list(zip(shown, looked_at)),
                   hovertemplate="%{customdata[0]} is looked at by<br>%{customdata[1]}<extra></extra>"),
    ])
    axis = dict(tickmode="array", tickvals=positions, ticktext=shown, range=[n - 0.5, -0.5], showgrid=False,
                zeroline=False)
    figure.update_layout(
        title=literal(title),
        height=min(4000, 120 + ROW_PX * n),
        margin=dict(l=10, r=10, t=60 if title else 20, b=10),
        showlegend=False,
        shapes=shapes,
        xaxis=dict(range=[-0.05, 1.05], showticklabels=False, showgrid=False, zeroline=False, fixedrange=True,
                   tickvals=[0, 1]),
        yaxis=dict(axis, title="from", fixedrange=True),
        # The right-hand column: the same positions, labelled on an overlaying axis.
        yaxis2=dict(axis, title="to", overlaying="y", side="right", matches="y", fixedrange=True),
        hovermode="closest",
        plot_bgcolor="white",
    )
    figure.add_trace(go.Scatter(x=[1], y=[0], yaxis="y2", mode="markers", marker=dict(opacity=0), hoverinfo="skip",
                                showlegend=False))  # an axis shows only with a trace on it
    return figure


def line_weights(figure: go.Figure) -> dict[tuple[int, int], float]:
    """{(from, to): opacity} of the lines drawn: the numbers a reader sees, for tests and exports."""
    return {tuple(int(x) for x in shape.name.split("-")): shape.opacity for shape in figure.layout.shapes
            if shape.type == "line" and shape.name}
