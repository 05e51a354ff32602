"""Bounded work per request: masks per text, joint filling and charts per page, as the operator set them.

The limits come from ``server_policy()``; tests narrow them with ``MASKLAB_*`` variables and
``reload_policy()``, and read them again afterwards so no other test sees the change.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from support import REPO
from support.apptest import shown_errors

from mlm_core.cli import main
from mlm_core.errors import InputError
from mlm_core.explain.compare import Side, compare, word_swap
from mlm_core.explain.exploration import explore
from mlm_core.explain.predict import predict
from mlm_core.masking import build_strategy
from mlm_core.policy import reload_policy, server_policy
from mlm_core.text.tokens import tokenize
from ui.strategy import NONE

APP = str(REPO / "app.py")
MANY_MASKS = 2_500


@pytest.fixture
def policy(monkeypatch):
    """Set server settings for one test: ``policy(max_charts_per_page=10)``; the defaults come back after."""

    def narrow(**settings) -> None:
        for name, value in settings.items():
            monkeypatch.setenv(f"MASKLAB_{name.upper()}", str(value))
        reload_policy()

    yield narrow
    monkeypatch.undo()
    reload_policy()


@pytest.fixture
def clean_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def masked_text(masks: int) -> str:
    """``masks`` typed masks, each after a word, so at most half of the tokens are masked."""
    return " ".join(["the [MASK]"] * masks) + " ."


# ----------------------------------------------------------------------------- masks per text


def test_thousands_of_typed_masks_are_refused_quickly(tiny_loaded):
    limit = server_policy().max_masks_per_text
    started = time.perf_counter()
    with pytest.raises(InputError) as refused:
        explore(tiny_loaded, "[MASK] " * MANY_MASKS, fill="joint")
    assert time.perf_counter() - started < 5  # refused before any model work (it took 35 s to draw them)
    assert str(refused.value) == (f"This text has {MANY_MASKS:,} masks; this server allows at most {limit:,} "
                                  "per text. Mask fewer words.")


def test_a_text_at_the_limit_is_predicted(tiny_loaded, policy):
    policy(max_masks_per_text=12)
    result = explore(tiny_loaded, masked_text(12))
    assert len(result.prediction.predictions) == 12
    with pytest.raises(InputError, match="This text has 13 masks; this server allows at most 12"):
        explore(tiny_loaded, masked_text(13))


def test_clicked_masks_count_with_typed_ones(tiny_loaded, policy):
    policy(max_masks_per_text=3)
    text = "the cat sat on the mat and the [MASK] ran"
    clicked = [i for i in tokenize(tiny_loaded.tokenizer, text).eligible_positions if i < 4]
    with pytest.raises(InputError, match="This text has 4 masks"):
        explore(tiny_loaded, text, manual_positions=clicked)


def test_masks_a_strategy_draws_count_too(tiny_loaded, policy):
    policy(max_masks_per_text=5)
    text = "the cat sat on the mat and the dog ran in the house " * 2
    strategy = build_strategy("random", {"mlm_probability": 0.5})
    with pytest.raises(InputError, match="this server allows at most 5 per text. Lower the masking rate"):
        explore(tiny_loaded, text, strategy, seed=1)


def test_compare_and_its_word_swap_refuse_too_many_masks(tiny_loaded):
    text = "[MASK] " * MANY_MASKS + "cat"
    with pytest.raises(InputError, match=f"This text has {MANY_MASKS:,} masks"):
        compare(text, tiny_loaded, Side(), tiny_loaded, Side())
    with pytest.raises(InputError, match=f"This text has {MANY_MASKS:,} masks"):
        word_swap(tiny_loaded, text, "cat", "dog")


@pytest.mark.parametrize("command", ["predict", "mask"])
def test_cli_refuses_too_many_masks_in_one_line(tiny_model_dir, capsys, command):
    strategy = [] if command == "predict" else ["--strategy", "random"]
    status = main([command, "the [MASK] " * MANY_MASKS, "--model", str(tiny_model_dir), *strategy])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.strip().splitlines() == [captured.err.strip()]  # one line, no traceback
    counted = re.search(r"This text has ([\d,]+) masks; this server allows at most", captured.err)
    assert counted and int(counted.group(1).replace(",", "")) >= MANY_MASKS  # mask: typed and drawn ones


# ----------------------------------------------------------------------------- joint filling


def test_joint_filling_beyond_the_limit_fills_independently_and_says_so(tiny_loaded):
    limit = server_policy().max_joint_fill_masks
    masks = server_policy().max_masks_per_text
    assert masks > limit
    ids = tokenize(tiny_loaded.tokenizer, masked_text(masks)).ids
    started = time.perf_counter()
    result = predict(tiny_loaded, ids, fill="joint")
    assert time.perf_counter() - started < 10  # one pass per window, not one per mask
    assert result.fill == "independent"
    assert len(result.predictions) == masks
    assert all(p.fill_step is None for p in result.predictions)
    assert any(f"at most {limit} jointly" in n and "filled independently" in n for n in result.notices)


def test_joint_filling_up_to_the_limit_is_joint(tiny_loaded, policy):
    policy(max_joint_fill_masks=3)
    three = predict(tiny_loaded, tokenize(tiny_loaded.tokenizer, masked_text(3)).ids, fill="joint")
    assert three.fill == "joint"
    assert sorted(p.fill_step for p in three.predictions) == [1, 2, 3]
    four = explore(tiny_loaded, masked_text(4), fill="joint")
    assert four.prediction.fill == "independent"
    assert any("filled independently" in n for n in four.notices)
    # Independent filling past the limit does not suggest joint filling, which would not be done.
    assert not any("Choose joint filling" in n for n in explore(tiny_loaded, masked_text(4)).notices)


def test_cli_predict_reports_the_fill_it_used(tiny_model_dir, capsys, policy):
    policy(max_joint_fill_masks=2)
    assert main(["predict", masked_text(3), "--model", str(tiny_model_dir), "--fill", "joint", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["fill_requested"], record["fill"]) == ("joint", "independent")
    assert any("filled independently" in note for note in record["notices"])


# ----------------------------------------------------------------------------- the Explore page


def run_explore(text: str, model: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=120)
    app.query_params.update(model=model, strategy=NONE)
    app.run()
    app.text_area(key="text").input(text).run()
    assert not app.exception, app.exception
    return app


def topk_charts(app: AppTest) -> list:
    return [chart for chart in app.get("plotly_chart") if chart.key.startswith("topk-")]


def test_explore_page_refuses_thousands_of_masks(tiny_model_dir, clean_caches):
    app = run_explore("[MASK] " * MANY_MASKS, str(tiny_model_dir))
    assert any(f"This text has {MANY_MASKS:,} masks" in e and "Mask fewer words" in e for e in shown_errors(app))
    assert not app.get("plotly_chart")


def test_explore_page_charts_at_most_the_allowance_and_tables_the_rest(tiny_model_dir, clean_caches, policy):
    policy(max_charts_per_page=10)
    app = run_explore(masked_text(60), str(tiny_model_dir))
    assert not shown_errors(app)
    assert len(topk_charts(app)) == 10
    assert len(app.get("plotly_chart")) <= 10 + 2  # the what-ifs' allowance is spent; one attention chart
    rest = next(frame for frame in app.dataframe if len(frame.value) == 50)
    assert list(rest.value.columns[:2]) == ["kind", "top guesses"]
    assert all("%" in guesses for guesses in rest.value["top guesses"])
    assert any("other 50 are in this table" in caption.value for caption in app.caption)
