"""mlm_core.explain.compare and mlm_core.views.reports on the tiny BERT: alignment, references, escaping, offline."""

from __future__ import annotations

import numpy as np
import pytest

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.explain.compare import NOT_PREDICTED, Side, compare, swap_word, word_swap
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
    assert result.same_result
    assert np.allclose(result.attention_difference("mean"), 0.0)
    assert np.allclose(result.attention_difference("rollout", 0), 0.0)


def test_heads_off_matches_interference(tiny_loaded):
    """A typed mask has no original: both sides are compared on A's first guess."""
    result = compare(TEXT, tiny_loaded, Side(), tiny_loaded, Side(heads_off=((0, 1), (1, 0))))
    ids = tokenize(tiny_loaded.tokenizer, TEXT).ids
    a = result.a.prediction.predictions[0]
    guess = a.top[0].token_id
    (whatif,) = mask_heads(tiny_loaded, ids, [3], [(0, 1), (1, 0)], {3: guess})
    b = result.b.prediction.predictions[0]
    assert b.top[0].token_id == whatif.after.top[0].token_id
    (row,) = result.table.to_dict("records")
    assert row["masked in"] == "both" and row["compared token"] == f"{a.top[0].token} (A's guess)"
    assert row["p B"] == pytest.approx(whatif.after.original_prob, abs=1e-6)
    assert row["p A"] == pytest.approx(predict(tiny_loaded, ids, [3], {3: guess}).predictions[0].original_prob)
    assert row["difference B−A"] == pytest.approx(row["p B"] - row["p A"])


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


def test_one_sided_masks_are_marked_and_never_compared(tiny_loaded):
    """A position masked on one side only: the other side sees the token, so nothing is compared there."""
    text = "the cat sat on the [MASK] and the dog ran in the house"
    strategy = build_strategy("random", {"mlm_probability": 0.4})
    result = compare(text, tiny_loaded, Side(strategy, 3), tiny_loaded, Side())
    table = result.table.set_index("position")
    typed = tokenize(tiny_loaded.tokenizer, text).tokens.index("[MASK]")
    a_only = sorted(set(result.a.exploration.prediction.positions) - {typed})
    assert a_only and set(result.positions) == {typed, *a_only}
    assert table.loc[typed, "masked in"] == "both" and not np.isnan(table.loc[typed, "difference B−A"])
    for p in a_only:
        row = table.loc[p]
        assert row["masked in"].startswith("A only")
        assert np.isnan(row["difference B−A"]) and np.isnan(row["p B"])
        assert row["B top-k"] == NOT_PREDICTED and row["A top-k"] != NOT_PREDICTED
        assert row["compared token"] == ""
    assert list(result.shared["position"]) == [typed]
    assert sorted(result.one_sided["position"]) == a_only
    assert not result.same_result
    swapped = compare(text, tiny_loaded, Side(), tiny_loaded, Side(strategy, 3)).table.set_index("position")
    assert all(swapped.loc[p, "masked in"].startswith("B only") for p in a_only)
    assert all(swapped.loc[p, "A top-k"] == NOT_PREDICTED for p in a_only)


def test_per_side_summary(tiny_loaded):
    text = "the cat sat on the [MASK] and the dog ran in the house"
    strategy = build_strategy("random", {"mlm_probability": 0.4})
    result = compare(text, tiny_loaded, Side(strategy, 3), tiny_loaded, Side())
    a, b = result.summary.to_dict("records")
    own = result.a.prediction.predictions
    known = [p for p in own if p.original_id is not None]
    assert (a["side"], a["masks"], a["typed (no original)"]) == ("A", len(own), 1)
    assert a["only on this side"] == len(own) - 1 and b["only on this side"] == 0
    assert a["top-1 hits"] == f"{sum(bool(p.hit) for p in known)} of {len(known)}"
    assert a["mean p(original)"] == pytest.approx(np.mean([p.original_prob for p in known]))
    assert (b["masks"], b["top-1 hits"]) == (1, "") and np.isnan(b["mean p(original)"])  # typed mask only
    typed = result.b.prediction.predictions[0]
    assert b["first guesses"].startswith(f"{typed.position}: {typed.top[0].token}")


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
    figure = charts.difference_bars(["<b>x</b>", "the", "the"], [0.5, 0.2, 0.3], [0.2, 0.4, 0.1])
    assert list(figure.data[0].y) == pytest.approx([-0.3, 0.2, -0.2])
    assert figure.layout.xaxis.ticktext == ("&lt;b&gt;x&lt;/b&gt;", "the", "the")


def test_attention_comes_from_each_sides_own_pass(tiny_loaded):
    """One forward pass per side gives both its guesses and its attention (heads and exclusion applied)."""
    from mlm_core.explain.attention import attention_maps
    from mlm_core.model.forward import head_gates, heads_gated

    heads = ((0, 1), (1, 0))
    result = compare(TEXT, tiny_loaded, Side(build_strategy(None, exclude="stopwords")), tiny_loaded,
                     Side(heads_off=heads))
    ids = tokenize(tiny_loaded.tokenizer, TEXT).ids
    exclude = result.a.exploration.mask.attention_exclude.tolist()
    assert np.allclose(result.a.attentions, attention_maps(tiny_loaded, ids, exclude), atol=1e-6)
    with heads_gated(tiny_loaded, head_gates(tiny_loaded, heads)):
        gated = attention_maps(tiny_loaded, ids)
    assert np.allclose(result.b.attentions, gated, atol=1e-6)


def test_kept_and_random_positions_are_named_once_when_both_sides_agree(tiny_loaded):
    text = "the cat sat on the mat and the dog ran in the house with a red ball"
    strategy = build_strategy("random", {"mlm_probability": 0.5})
    result = compare(text, tiny_loaded, Side(strategy, 5), tiny_loaded, Side(strategy, 5, heads_off=((0, 0),)))
    kinds = dict(zip(range(len(result.tokens)), result.a.exploration.kinds))
    expected = {"masked": "both", "kept": "both · kept", "random": "both · random token"}
    assert list(result.table["masked in"]) == [expected[kinds[p]] for p in result.table["position"]]
