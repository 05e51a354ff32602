"""mlm_core.explain.compare and mlm_core.views.reports on the tiny BERT: alignment, references, escaping, offline."""

from __future__ import annotations

import numpy as np
import pytest

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.explain.compare import Side, compare, swap_word, word_swap
from mlm_core.explain.predict import predict
from mlm_core.explain.whatif import mask_heads
from mlm_core.masking import build_strategy
from mlm_core.text.tokens import tokenize
from mlm_core.views import charts
from mlm_core.views.reports import html_report

TEXT = "the cat [MASK] on the mat"
PAYLOAD = "<img src=x onerror=alert(1)>"


def test_identical_sides_have_no_difference(tiny_loaded):
    result = compare(TEXT, tiny_loaded, Side(), tiny_loaded, Side())
    assert result.positions == (3,)
    assert np.allclose(result.table["difference B−A"], 0.0)
    assert np.allclose(result.attention_difference("mean"), 0.0)
    assert np.allclose(result.attention_difference("rollout", 0), 0.0)


def test_heads_off_matches_interference(tiny_loaded):
    result = compare(TEXT, tiny_loaded, Side(), tiny_loaded, Side(heads_off=((0, 1), (1, 0))))
    ids = tokenize(tiny_loaded.tokenizer, TEXT).ids
    (whatif,) = mask_heads(tiny_loaded, ids, [3], [(0, 1), (1, 0)], {3: ids[3]})
    b = result.b.prediction.predictions[0]
    assert b.top[0].token_id == whatif.after.top[0].token_id
    assert b.original_prob == pytest.approx(whatif.after.original_prob, abs=1e-6)
    a = result.a.prediction.predictions[0]
    assert a.original_prob == pytest.approx(predict(tiny_loaded, ids, [3], {3: ids[3]}).predictions[0].original_prob)


def test_same_seed_same_draw_and_union_of_positions(tiny_loaded):
    strategy = build_strategy("random", {"mlm_probability": 0.4})
    text = "the cat sat on the mat and the dog ran in the house"
    same = compare(text, tiny_loaded, Side(strategy, 3), tiny_loaded, Side(strategy, 3))
    assert same.a.exploration.input_ids == same.b.exploration.input_ids
    other = compare(text, tiny_loaded, Side(strategy, 3), tiny_loaded, Side(strategy, 4))
    expected = set(other.a.exploration.prediction.positions) | set(other.b.exploration.prediction.positions)
    assert set(other.positions) == expected
    assert list(other.table["position"]) == sorted(expected)


def test_exclusion_changes_side_b(tiny_loaded):
    result = compare(TEXT, tiny_loaded, Side(), tiny_loaded, Side(build_strategy(None, exclude="stopwords")))
    assert result.b.exploration.mask.attention_exclude.any()
    assert not np.allclose(result.attention_difference("mean"), 0.0)


def test_bad_heads_and_nothing_masked(tiny_loaded):
    with pytest.raises(InputError, match="do not exist"):
        compare(TEXT, tiny_loaded, Side(), tiny_loaded, Side(heads_off=((9, 0),)))
    with pytest.raises(NothingToMaskError, match="Side A"):
        compare("the cat sat", tiny_loaded, Side(), tiny_loaded, Side())


def test_word_swap_ranks_changes(tiny_loaded):
    swap = word_swap(tiny_loaded, "he sat on the [MASK] .", "he", "she", top=5)
    assert swap.variant == "she sat on the [MASK] ."
    changes = swap.table["change"].abs().to_numpy()
    assert len(changes) == 5 and np.all(np.diff(changes) <= 1e-9)
    assert np.allclose(swap.table["p variant"] - swap.table["p original"], swap.table["change"])
    assert not swap.table["token"].isin(["[CLS]", "[SEP]", "[MASK]", "[PAD]"]).any()


def test_swap_word_is_whole_word():
    assert swap_word("The theme: the end.", "the", "a") == "a theme: a end."
    with pytest.raises(InputError, match="not in the text"):
        swap_word("the cat", "dog", "cat")


def test_report_escapes_and_fetches_nothing(tiny_loaded):
    result = compare(TEXT, tiny_loaded, Side(), tiny_loaded, Side(heads_off=((0, 0),)))
    figure = charts.difference_bars([PAYLOAD], [0.1], [0.3], title=PAYLOAD)
    page = html_report(PAYLOAD, {"text": PAYLOAD}, [("table " + PAYLOAD, result.table)], [("fig", figure)],
                       notes=[PAYLOAD])
    assert PAYLOAD not in page and "&lt;img src=x" in page
    assert "<script src=" not in page and "cdn.plot.ly" not in page.split("<script")[0]
    assert page.count("plotly.js v") >= 1 or "Plotly" in page  # the library is embedded


def test_difference_chart_labels_are_literal():
    figure = charts.difference_bars(["<b>x</b>", "the", "the"], [0.5, 0.2, None], [0.2, 0.4, 0.1])
    assert list(figure.data[0].y) == pytest.approx([-0.3, 0.2, 0.1])
    assert figure.layout.xaxis.ticktext == ("&lt;b&gt;x&lt;/b&gt;", "the", "the")
