"""Figures of the masking formulas (``mlm_core.explain.concepts``); no Streamlit here so they can be tested.

Titles and labels go through ``charts.literal``: a weight's name or a token is shown as typed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from mlm_core.views.charts import literal

KEPT_SCALE = [[0.0, "#d62728"], [1.0, "#f0f0f0"]]  # red where the mask removed weights, light where it kept them


def weight_mask_grid(grid: np.ndarray, shape: Sequence[int], title: str = "", height: int = 420) -> go.Figure:
    """The mask M of a (R, C) weight matrix, shrunk to ``grid`` cells: each cell the share of its block kept.

    A magnitude mask shows structure (rows or columns of small weights go together); a random one is
    an even speckle at 1 - sparsity everywhere. Axes are the matrix's own row and column numbers.
    """
    grid = np.asarray(grid, dtype=float)
    rows, cols = int(shape[0]), int(shape[1])
    y = np.linspace(0, rows, grid.shape[0], endpoint=False).round().astype(int)
    x = np.linspace(0, cols, grid.shape[1], endpoint=False).round().astype(int)
    figure = go.Figure(go.Heatmap(
        z=grid, x=x, y=y, zmin=0, zmax=1, colorscale=KEPT_SCALE,
        colorbar=dict(title="share kept"),
        hovertemplate="rows from %{y}, columns from %{x}: %{z:.0%} kept<extra></extra>",
    ))
    figure.update_layout(
        title=literal(title), height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        xaxis=dict(title="column (input)"), yaxis=dict(title="row (output)", autorange="reversed"),
    )
    return figure


def row_sums_bars(before: np.ndarray, after: np.ndarray, labels: Sequence[str], title: str = "",
                  height: int = 300) -> go.Figure:
    """Each row's sum of attention before and after a change (T each): 1 for a normal row, 0 for a zeroed one."""
    shown = [literal(f"{i} {label}") for i, label in enumerate(labels)]
    figure = go.Figure([
        go.Bar(name="before", x=shown, y=np.asarray(before, dtype=float), marker_color="#9ecae1"),
        go.Bar(name="after", x=shown, y=np.asarray(after, dtype=float), marker_color="#08519c"),
    ])
    figure.update_layout(
        barmode="group", title=literal(title), height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        yaxis=dict(title="row sum (from token)", range=[0, 1.1]), xaxis=dict(type="category"),
    )
    return figure
