"""Figures for the pages, built from mlm_core results; no Streamlit here so they can be tested.

Token axes use integer positions with the tokens as tick labels: Plotly would otherwise
merge repeated labels ("the", "the") into one row.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from mlm_core.predict import PositionPrediction

KIND_COLOURS = {
    "masked": "#d62728",
    "random": "#ff7f0e",
    "kept": "#2ca02c",
    "excluded": "#7f7f7f",
    None: "#c7d3e3",
}
HIT_COLOUR, MISS_COLOUR, NEUTRAL_COLOUR = "#2ca02c", "#d62728", "#1f77b4"


def topk_bars(prediction: PositionPrediction, title: str = "", height: int = 260) -> go.Figure:
    """Horizontal bars of the top-k guesses, best at the top; the original token in green/red."""
    candidates = list(prediction.top)[::-1]  # Plotly draws the first bar at the bottom
    colours = [
        NEUTRAL_COLOUR
        if prediction.original_id is None
        else (HIT_COLOUR if c.token_id == prediction.original_id else "#9ecae1")
        for c in candidates
    ]
    figure = go.Figure(
        go.Bar(
            x=[c.prob for c in candidates],
            y=list(range(len(candidates))),
            orientation="h",
            marker_color=colours,
            text=[f"{c.prob:.1%}" for c in candidates],
            textposition="auto",
            hovertemplate="%{customdata}: %{x:.2%}<extra></extra>",
            customdata=[c.token for c in candidates],
        )
    )
    figure.update_layout(
        title=title,
        height=height,
        margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        xaxis=dict(title="probability", range=[0, 1], tickformat=".0%"),
        yaxis=dict(tickmode="array", tickvals=list(range(len(candidates))), ticktext=[c.token for c in candidates]),
    )
    return figure


def token_axis(tokens: Sequence[str]) -> dict:
    """Axis settings that keep repeated tokens apart (integer ticks labelled by token)."""
    return dict(tickmode="array", tickvals=list(range(len(tokens))), ticktext=list(tokens))
