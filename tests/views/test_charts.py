"""Figures: repeated tokens keep their own ticks; the top-k bars read best-first."""

from __future__ import annotations

import pytest

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
    heat, outlines = grid.data  # one mosaic of the heads and one trace of outlines: cheap to show on every rerun
    mosaic = np.asarray(heat.z, dtype=float)
    step = n + 1  # a gap of one empty cell between heads (15% of 9 tokens, at least one)
    assert mosaic.shape == (3 * step - 1, 4 * step - 1)
    for h in range(heads):
        top, left = (h // 4) * step, (h % 4) * step
        np.testing.assert_allclose(mosaic[top:top + n, left:left + n], att[h])
        assert str(np.asarray(heat.text)[top + 1, left + 3]) == f"head {h}: from t1 to t3"
    assert np.isnan(mosaic[n, :]).all() and np.isnan(mosaic[:, n]).all()  # the gaps stay empty
    assert [a.text for a in grid.layout.annotations] == [f"head {h}" for h in range(heads)]
    assert list(outlines.x).count(None) == heads * 2 * 2  # a row and a column per highlighted position
    assert list(grid.layout.xaxis.ticktext) == labels * 4 and list(grid.layout.yaxis.ticktext) == labels * 3
    assert grid.layout.yaxis.autorange == "reversed"
    assert "<b>" not in grid.layout.title.text
    print(f"attention_grid, 12 heads: {built_in * 1000:.0f} ms")


def test_difference_bars_leave_out_one_sided_positions():
    """A position with no probability on one side (masked on the other only) is not drawn as a difference."""
    nan = float("nan")
    figure = charts.difference_bars(["1 the", "3 [MASK]", "12 river"], [0.9, 0.2, nan], [None, 0.5, 0.98])
    assert list(figure.data[0].y) == [pytest.approx(0.3)]
    assert list(figure.layout.xaxis.ticktext) == ["3 [MASK]"]


def test_difference_bars_axis_is_symmetric_even_when_flat():
    flat = charts.difference_bars(["a", "b"], [0.4, 0.1], [0.4, 0.1])
    low, high = flat.layout.yaxis.range
    assert low == -high and 0.01 <= high < 0.02  # a readable ±1% floor, not an arbitrary scale
    wide = charts.difference_bars(["a"], [0.1], [0.6])
    assert wide.layout.yaxis.range[1] >= 0.5


# --------------------------------------------------------------------------- the attention line view


def _attention(n: int, seed: int = 0):
    import numpy as np

    weights = np.random.default_rng(seed).random((n, n)) ** 3
    return weights / weights.sum(axis=1, keepdims=True)


def test_line_view_labels_are_the_tokens_on_both_columns():
    from mlm_core.views.lines import attention_lines

    tokens = ["[CLS]", "the", "<b>cat</b>", "the", "[SEP]"]
    figure = attention_lines(_attention(5), tokens, highlight=[2], title="<i>t</i>")
    escaped = [charts.literal(t) for t in tokens]
    assert list(figure.layout.yaxis.ticktext) == escaped == list(figure.layout.yaxis2.ticktext)
    assert list(figure.layout.yaxis.tickvals) == list(range(5))  # repeated "the" keeps its own row
    assert figure.layout.title.text == "&lt;i&gt;t&lt;/i&gt;"
    assert all("<b>" not in str(row) for trace in figure.data if trace.customdata is not None
               for row in trace.customdata)


def test_line_opacity_follows_the_weights():
    from mlm_core.views.lines import MIN_WEIGHT, attention_lines, line_weights

    matrix = _attention(6, seed=1)
    drawn = line_weights(attention_lines(matrix, list("abcdef")))
    expected = {(i, j): round(float(matrix[i, j]), 4) for i in range(6) for j in range(6) if matrix[i, j] >= MIN_WEIGHT}
    assert drawn == expected
    assert all(shape.x0 == 0 and shape.x1 == 1 for shape in attention_lines(matrix, list("abcdef")).layout.shapes)


def test_line_focus_brings_one_tokens_lines_forward():
    from mlm_core.views.lines import FADED, attention_lines, line_weights

    matrix = _attention(4, seed=2)
    figure = attention_lines(matrix, list("abcd"), focus=1)
    for (i, j), opacity in line_weights(figure).items():
        weight = matrix[i, j]
        assert opacity == pytest.approx(weight if 1 in (i, j) else weight * FADED, abs=1e-4)
    red = {shape.name for shape in figure.layout.shapes if shape.line.color == charts.HIGHLIGHT_COLOUR}
    assert red == {name for name in (shape.name for shape in figure.layout.shapes) if "1" in name.split("-")}


def test_line_view_stays_bounded_on_a_long_text():
    from mlm_core.views.lines import MAX_LINES, attention_lines

    matrix = _attention(300, seed=3) * 0 + 1e-3
    matrix[:, 0] = 0.5  # 300 strong lines to [CLS], the rest below the threshold
    assert len(attention_lines(matrix, ["t"] * 300).layout.shapes) == 300
    assert len(attention_lines(_attention(300) * 0 + 0.02, ["t"] * 300).layout.shapes) == MAX_LINES


# --------------------------------------------------------------------------- presenter style


def test_presenter_style_reaches_every_text():
    import numpy as np
    from support.figures import assert_presenter

    from mlm_core.views.lines import attention_lines
    from mlm_core.views.presenter import presenter_style

    top = (Candidate("the", 1, 0.5), Candidate("a", 2, 0.3))
    figures = [
        topk_bars(PositionPrediction(position=2, top=top, original_id=2), "title\nsecond line"),
        charts.attention_heatmap(np.eye(3), ["a", "b", "c"], [1], "heat"),
        charts.attention_grid(np.ones((4, 3, 3)) / 3, ["a", "b", "c"], title="grid"),  # annotations at 13 px
        charts.change_bars(["a", "b"], [0.1, -0.2], "change"),
        attention_lines(np.ones((3, 3)) / 3, ["a", "b", "c"], title="lines"),
    ]
    for figure in figures:
        styled = presenter_style(figure)
        assert_presenter(styled.to_plotly_json())
        assert styled.layout.title.text == figure.layout.title.text  # restyled, not rewritten
    bars = presenter_style(figures[0]).data[0]
    assert bars.textposition == "outside"  # dark text never sits on a dark bar
