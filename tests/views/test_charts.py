"""Figures: repeated tokens keep their own ticks; the top-k bars read best-first."""

from __future__ import annotations

from mlm_core.explain.predict import Candidate, PositionPrediction
from mlm_core.views import charts
from mlm_core.views.charts import HIT_COLOUR, token_axis, topk_bars


def test_token_axis_keeps_repeated_tokens():
    tokens = ["[CLS]", "the", "cat", "saw", "the", "the", "[SEP]"]
    axis = token_axis(tokens)
    assert axis["ticktext"] == tokens
    assert axis["tickvals"] == list(range(len(tokens)))


def test_topk_bars_labels_equal_tokens_even_when_repeated():
    top = (Candidate("the", 1, 0.5), Candidate("a", 2, 0.3), Candidate("the", 3, 0.1))
    figure = topk_bars(PositionPrediction(position=2, top=top, original_id=2), title="<b>x</b>")
    yaxis = figure.layout.yaxis
    assert list(yaxis.ticktext) == ["the", "a", "the"][::-1]  # best at the top
    assert list(yaxis.tickvals) == [0, 1, 2]
    bar = figure.data[0]
    assert list(bar.x) == [0.1, 0.3, 0.5]
    assert list(bar.customdata) == ["the", "a", "the"]
    assert bar.marker.color[1] == HIT_COLOUR  # "a" is the original token


def test_tokens_and_titles_are_literal_in_plotly():
    """Plotly renders <b>, <a href> in labels; a token must show as typed (Plotly decodes &lt; back)."""
    top = (Candidate("<b>x</b>", 1, 0.6), Candidate("<a href='javascript:alert(1)'>y</a>", 2, 0.4))
    figure = topk_bars(
        PositionPrediction(position=1, top=top), title="original '<img src=x onerror=alert(1)>'"
    )
    shown = [*figure.layout.yaxis.ticktext, figure.layout.title.text, *figure.data[0].customdata]
    assert not any("<" in label or ">" in label for label in shown)
    assert "&lt;b&gt;x&lt;/b&gt;" in shown
    assert token_axis(["<i>", "a&b"])["ticktext"] == ["&lt;i&gt;", "a&amp;b"]


def test_attention_grid_lays_out_every_head_with_its_title_axes_and_outlines():
    import time

    import numpy as np

    heads, n = 12, 9
    att = np.random.default_rng(0).random((heads, n, n))
    labels = [f"t{i}" for i in range(n)]
    started = time.perf_counter()
    grid = charts.attention_grid(att, labels, highlight=[2, 5], title="<b>x</b>")
    built_in = time.perf_counter() - started
    assert len(grid.data) == heads
    assert [a.text for a in grid.layout.annotations] == [f"head {h}" for h in range(heads)]
    assert len(grid.layout.shapes) == heads * 2 * 2  # a row and a column per highlighted position
    for h, trace in enumerate(grid.data):
        suffix = "" if h == 0 else str(h + 1)
        assert (trace.xaxis, trace.yaxis) == (f"x{suffix}", f"y{suffix}")
        x, y = grid.layout[f"xaxis{suffix}"], grid.layout[f"yaxis{suffix}"]
        assert 0 <= x.domain[0] < x.domain[1] <= 1 and 0 <= y.domain[0] < y.domain[1] <= 1
        assert list(x.ticktext) == labels and y.autorange == "reversed"
    domains = {(tuple(grid.layout[f"xaxis{s}"].domain), tuple(grid.layout[f"yaxis{s}"].domain))
               for s in ["", *map(str, range(2, heads + 1))]}
    assert len(domains) == heads  # no two heads drawn on top of each other
    assert "<b>" not in grid.layout.title.text
    print(f"attention_grid, 12 heads: {built_in * 1000:.0f} ms")
