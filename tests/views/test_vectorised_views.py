"""The vectorised word merge and the grid's hover labels give what the plain per-word loops gave."""

from __future__ import annotations

import numpy as np

from mlm_core.explain import attention
from mlm_core.views import charts

GROUPS = [[0], [1, 2], [3], [4, 5, 6], [7]]


def loop_merge(matrix, groups):
    """The reference: rows averaged, then columns summed, one word at a time."""
    rows = np.stack([matrix[..., g, :].mean(axis=-2) for g in groups], axis=-2)
    return np.stack([rows[..., g].sum(axis=-1) for g in groups], axis=-1)


def test_merge_words_equals_the_per_word_loop():
    rng = np.random.default_rng(0)
    att = rng.random((3, 4, 8, 8)).astype(np.float32)
    att /= att.sum(-1, keepdims=True)
    merged = attention.merge_words(att, GROUPS)
    assert merged.shape == (3, 4, 5, 5) and merged.dtype == np.float32
    np.testing.assert_allclose(merged, loop_merge(att, GROUPS), atol=1e-6)
    np.testing.assert_allclose(merged.sum(-1), 1.0, atol=1e-5)


def test_a_nan_stays_in_its_own_word():
    """A matrix product would spread one NaN over every word; the merge keeps it where it was."""
    scores = np.arange(8, dtype=float)
    scores[0] = np.nan
    merged = attention.merge_scores(scores, GROUPS)
    assert np.isnan(merged[0]) and np.isfinite(merged[1:]).all()
    np.testing.assert_allclose(merged[1:], [3.0, 3.0, 15.0, 7.0])
    matrix = np.full((8, 8), 0.125)
    matrix[0, 0] = np.nan
    assert np.isfinite(attention.merge_words(matrix, GROUPS)[1:, 1:]).all()


def test_grid_hover_names_each_cell_by_its_tokens():
    labels = ["[CLS]", "the", "<b>cat</b>", "the"]
    figure = charts.attention_grid(np.full((2, 4, 4), 0.25), labels, highlight=[2])
    cells = np.asarray(figure.data[0].text)
    assert cells.shape == (4, 9)  # two 4×4 heads side by side, one empty column between them
    assert cells[1, 3] == "head 0: from the to the" and cells[1, 5 + 3] == "head 1: from the to the"
    assert all("<b>" not in str(cell) for cell in cells.ravel())  # user text stays literal
