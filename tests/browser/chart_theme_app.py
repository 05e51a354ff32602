"""A page for test_chart_theme_browser: the app's charts as plotly draws them (``?form=figure``) or as the app
sends them (``?form=sent``: ``ui.drawn.for_chart``, without plotly's template)."""

import numpy as np
import streamlit as st

from mlm_core.explain.predict import Candidate, PositionPrediction
from mlm_core.views import charts
from ui.drawn import for_chart

LABELS = ["[CLS]", "it", "was", "raining", ",", "so", "i", "took", "my", "[MASK]", ".", "[SEP]"]
weights = np.random.default_rng(0).random((12, 12))
guess = PositionPrediction(position=9, top=tuple(
    Candidate(token, n, p) for n, (token, p) in enumerate([("breath", 0.37), ("water", 0.29), ("umbrella", 0.12)])))
figures = {
    "heatmap": charts.attention_heatmap(weights / weights.sum(1, keepdims=True), LABELS, [9], "Layer 5, head 0"),
    "bars": charts.topk_bars(guess, "position 9 · masked", height=300),
    "grid": charts.attention_grid(np.stack([weights] * 4) / 12, LABELS, [9], title="every head"),
}
sent = st.query_params.get("form") == "sent"
for name, figure in figures.items():
    st.plotly_chart(for_chart(figure) if sent else figure, key=name)
