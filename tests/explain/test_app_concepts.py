"""The masking formulas in the app: the three Teach steps (one click away) and the Explore entry, on the tiny BERT."""

from __future__ import annotations

import json

import pytest
from support.apptest import open_app_page
from support.apptest import shown_errors as errors

from ui.teach import LESSON

STEPS = json.loads(LESSON.read_text())["steps"]
CONCEPT_STEPS = {step["view"]: n for n, step in enumerate(STEPS) if step["view"].endswith("-mask")}
PAYLOAD = "<img src=x onerror=alert(1)>"

pytestmark = pytest.mark.usefixtures("clean_streamlit_caches")


def charts_by_key(app) -> dict[str, str]:
    return {chart.key: chart.proto.spec for chart in app.get("plotly_chart")}


def test_each_formula_is_one_click_from_the_lesson(tiny_model_dir):
    assert set(CONCEPT_STEPS) == {"input-mask", "param-mask", "attention-mask"}
    app = open_app_page("app_pages/teach.py", {"model": str(tiny_model_dir)})
    for view, index in CONCEPT_STEPS.items():
        (jump,) = [group for group in app.get("button_group") if group.key == "teach-jump"]
        jump.set_value(index).run()  # one click on the step's pill
        assert not app.exception, app.exception
        assert app.title[0].value == STEPS[index]["title"], view
        assert app.query_params["step"] == str(index + 1)
        assert not errors(app), (view, errors(app))
        assert app.session_state["teach-jump"] is None  # the row clears for the next click


def test_input_mask_step_shows_the_examples_and_the_sentence(tiny_model_dir):
    app = open_app_page("app_pages/teach.py", {"model": str(tiny_model_dir),
                                               "step": str(CONCEPT_STEPS["input-mask"] + 1)})
    latex = " ".join(item.value for item in app.get("latex"))
    assert "0 & 2 & 0 & 4 & 0" in latex and r"\alpha = \frac{4}{9} = 0.44" in latex
    x, product, replaced, guesses = (frame.value for frame in app.dataframe)  # in the order shown
    hidden = [label for label, m in zip(x.index, x["M"]) if m == 0]
    assert hidden and (product.loc[hidden] == 0).all().all() and (replaced.loc[hidden] != 0).any().any()
    assert len(guesses) == len(hidden)
    app.slider(key="teach-x-rate").set_value(0.8).run()
    assert not errors(app)
    more = app.dataframe[0].value
    assert (more["M"] == 0).sum() >= len(hidden)


def test_parameter_mask_step_draws_the_mask_and_both_predictions(tiny_model_dir):
    app = open_app_page("app_pages/teach.py", {"model": str(tiny_model_dir), "text": "the cat [MASK] on the mat",
                                               "step": str(CONCEPT_STEPS["param-mask"] + 1)})
    assert not errors(app), errors(app)
    assert {"teach-w-grid", "teach-w-before", "teach-w-after"} <= charts_by_key(app).keys()
    app.radio(key="teach-w-kind").set_value("random")
    app.slider(key="teach-w-sparsity").set_value(0.9).run()
    assert not errors(app)
    assert any("hides" in m.value and "(90.0%)" in m.value for m in app.markdown)


def test_attention_mask_step_both_modes(tiny_model_dir):
    app = open_app_page("app_pages/teach.py", {"model": str(tiny_model_dir),
                                               "step": str(CONCEPT_STEPS["attention-mask"] + 1)})
    assert not errors(app), errors(app)
    keys_only = charts_by_key(app)["teach-a-after"]
    assert any("renormalises each row" in m.value for m in app.markdown)
    app.radio(key="teach-a-mode").set_value("keys-and-queries").run()
    assert not errors(app)
    assert charts_by_key(app)["teach-a-after"] != keys_only
    assert "teach-a-sums" in charts_by_key(app)
    assert any("rows are all 0" in m.value for m in app.markdown)
    assert any("divided by 1 −" in m.value for m in app.markdown)  # the renormalisation, in numbers


def test_explore_entry_opens_each_formula_and_escapes_the_text(tiny_model_dir):
    app = open_app_page("app_pages/explore.py", {"model": str(tiny_model_dir), "text": f"the cat [MASK] {PAYLOAD}"})
    assert not [c for c in app.get("plotly_chart") if c.key.startswith("concepts-")]  # closed: nothing computed
    app.toggle(key="concepts-open").set_value(True).run()
    assert not app.exception and not errors(app), errors(app)
    assert "M" in app.dataframe[0].value.columns
    for concept, chart in (("parameter", "concepts-w-grid"), ("attention", "concepts-a-after")):
        (which,) = [group for group in app.get("button_group") if group.key == "concepts-which"]
        which.set_value(concept).run()
        assert not app.exception and not errors(app), (concept, errors(app))
        assert chart in charts_by_key(app)
    assert not [m for m in app.markdown if m.allow_html and PAYLOAD in m.value]
