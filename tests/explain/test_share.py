"""Sharing: the Explore view as a standalone HTML report (escaped, script-free, the page's numbers)."""

from __future__ import annotations

import html

import pandas as pd
import pytest

from mlm_core.explain.exploration import explore
from mlm_core.explain.predict import fill_text
from mlm_core.masking import build_strategy
from mlm_core.views.reports import exploration_report, html_report, strategy_settings

SCRIPT = "<script>alert('x')</script>"


def report_of(loaded, text: str, strategy=None, numbers=()) -> tuple[str, object]:
    result = explore(loaded, text, strategy, 0, top_k=3)
    shown = loaded.tokenizer.convert_ids_to_tokens(list(result.input_ids))
    settings = {"text": text, "model": loaded.name, **strategy_settings(strategy), "seed": 0, "top-k": 3}
    return exploration_report(result, shown, fill_text(loaded, result.prediction.filled_ids), settings, numbers), result


def test_user_text_with_a_script_is_escaped(tiny_loaded):
    page, _ = report_of(tiny_loaded, f"{SCRIPT} the cat [MASK] on the mat")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()  # neither the user's script nor any of ours: it opens offline
    assert html.escape(SCRIPT) in page  # the text is there, as text


def test_report_holds_settings_chips_guesses_and_the_filled_sentence(tiny_loaded):
    strategy = build_strategy("random", {"mlm_probability": 0.4})
    page, result = report_of(tiny_loaded, "the cat sat on the mat and the dog ran in the big house", strategy)
    assert "mlm_probability=0.4" in page and "random masking" in page
    assert page.count('title="') >= len(result.input_ids)  # one chip per token the model read
    for guess in result.prediction.predictions:
        assert f"Position {guess.position} (" in page
        assert f"{guess.top[0].prob:.4f}" in page  # probabilities, as in the page's bar charts
        assert html.escape(guess.top[0].token) in page
    filled = fill_text(tiny_loaded, result.prediction.filled_ids)
    assert f"<dt>filled in</dt><dd>{html.escape(filled)}</dd>" in page


def test_selected_view_numbers_keep_their_row_names(tiny_loaded):
    matrix = pd.DataFrame([[0.25, 0.75], [1.0, 0.0]], index=["0 <b>", "1 cat"], columns=["0 <b>", "1 cat"])
    page, _ = report_of(tiny_loaded, "the cat [MASK] on the mat", numbers=[("Attention: One head, layer 1", matrix)])
    assert "Attention: One head, layer 1" in page
    assert "<th>0 &lt;b&gt;</th>" in page and "<b>" not in page  # token labels escaped, rows named
    assert "0.7500" in page


def test_plain_tables_still_drop_their_index():
    page = html_report("t", {}, tables=[("rows", pd.DataFrame({"a": [1, 2]}))])
    assert "<th>a</th>" in page and "<th></th>" not in page


def test_strategy_settings_list_every_step():
    settings = strategy_settings(build_strategy("span", {}, privacy=True, exclude="punctuation"))
    assert settings["strategy"].startswith("privacy masking")
    assert any(key.endswith(": span") for key in settings) and any(key.endswith(": attention-exclusion")
                                                                 for key in settings)
    assert strategy_settings(None) == {"strategy": "none (typed or clicked masks only)"}


def _explore_view(model_dir: str) -> None:
    """A script for AppTest: the Explore page's 'why?' panels on a tiny model, keeping what they return."""
    import streamlit as st

    from mlm_core.explain.exploration import explore
    from mlm_core.model.loading import load_model
    from ui.explain import attention_panel, attribution_panel

    loaded = load_model(model_dir, device="cpu")
    result = explore(loaded, "the cat [MASK] on the mat", None, 0)
    st.session_state["numbers"] = (attention_panel(loaded, result), attribution_panel(loaded, result))


def test_the_why_panels_hand_their_shown_numbers_to_the_report(tiny_model_dir, tiny_loaded):
    from streamlit.testing.v1 import AppTest

    from mlm_core.explain.attention import attention_maps
    from mlm_core.text.tokens import tokenize

    app = AppTest.from_function(_explore_view, args=(str(tiny_model_dir),), default_timeout=120)
    app.run()
    assert not app.exception, app.exception
    attention, attribution = app.session_state["numbers"]
    assert attribution is None  # nothing explained yet: nothing to report
    caption, frame = attention
    assert caption == "Attention: One head, layer 1, head 0"
    ids = tokenize(tiny_loaded.tokenizer, "the cat [MASK] on the mat").ids
    assert frame.to_numpy() == pytest.approx(attention_maps(tiny_loaded, ids)[1, 0])  # what the heatmap shows
    app.button(key="xt-run").click().run()
    caption, frame = app.session_state["numbers"][1]
    assert caption.startswith("Attribution: ") and "at position 3" in caption
    assert list(frame.columns) == ["token", "score"] and len(frame) == len(ids)
