"""The Teach page through AppTest on the tiny BERT: every step, presets, presenter mode, URL round-trips."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest
from support.apptest import open_app_page, open_share_panel
from support.apptest import shown_errors as errors

from ui.teach import LESSON, VIEWS, load_lesson

PAGE = "app_pages/teach.py"
STEPS = json.loads(LESSON.read_text())["steps"]


pytestmark = pytest.mark.usefixtures("clean_streamlit_caches")


def run_page(query: dict) -> AppTest:
    return open_app_page(PAGE, query)



def test_lesson_is_data():
    lesson = load_lesson()
    assert [s["view"] for s in lesson["steps"]] == list(VIEWS)
    assert all(s["presets"] and s["explanation"] for s in lesson["steps"])


def test_next_walks_every_step(tiny_model_dir):
    app = run_page({"model": str(tiny_model_dir)})
    for n, step in enumerate(STEPS, start=1):
        assert app.title[0].value == step["title"]
        assert not errors(app), (step["id"], errors(app))
        assert app.text_input(key="teach-text").value == step["presets"][0]
        assert app.query_params.get("step", "1") == str(n)
        if n < len(STEPS):
            app.button(key="teach-next").click().run()
            assert not app.exception, app.exception
    assert app.button(key="teach-next").disabled
    app.button(key="teach-back").click().run()
    assert app.title[0].value == STEPS[-2]["title"]


def test_preset_and_own_sentence(tiny_model_dir):
    app = run_page({"model": str(tiny_model_dir), "step": "3"})
    app.selectbox(key="teach-preset-2").set_value(STEPS[2]["presets"][1]).run()
    assert app.text_input(key="teach-text").value == STEPS[2]["presets"][1]
    app.text_input(key="teach-text").input("the dog [MASK] on the mat").run()
    assert not errors(app)
    assert app.query_params["text"] == "the dog [MASK] on the mat"
    assert [c for c in app.get("plotly_chart") if c.key.startswith("teach-topk")]


def test_presenter_mode_hides_controls(tiny_model_dir):
    app = run_page({"model": str(tiny_model_dir)})
    app.toggle(key="presenter").set_value(True).run()
    assert app.query_params["presenter"] == "1"
    assert any("font-size:1.6rem" in m.value for m in app.markdown if m.allow_html)
    assert not [w for w in app.text_input if w.key == "teach-text"]
    assert app.button(key="teach-next")  # navigation stays


def test_url_round_trip(tiny_model_dir):
    app = run_page({"model": str(tiny_model_dir), "step": "4", "text": "the cat [MASK] on the mat"})
    app.selectbox(key="teach-layer").set_value(0).run()
    app.selectbox(key="teach-head").set_value(1).run()
    app.button(key="teach-draw").click().run()
    app.toggle(key="presenter").set_value(True).run()
    assert not errors(app)
    query = app.query_params.to_dict() if hasattr(app.query_params, "to_dict") else dict(app.query_params)
    assert query["step"] == "4" and query["layer"] == "0" and query["head"] == "1" and query["seed"] == "1"
    again = run_page(query)
    assert again.title[0].value == STEPS[3]["title"]
    assert again.toggle(key="presenter").value is True
    assert again.selectbox(key="teach-layer").value == 0 and again.selectbox(key="teach-head").value == 1
    figure = [c.proto.spec for c in again.get("plotly_chart") if c.key == "teach-attention"]
    assert figure == [c.proto.spec for c in app.get("plotly_chart") if c.key == "teach-attention"]


def test_handout_is_a_standalone_escaped_html_page(tiny_loaded):
    from ui.teach import handout

    text = "the cat <img src=x onerror=alert(1)> sat on the [MASK] ."
    page = handout(tiny_loaded, load_lesson(), text, seed=0)
    assert page.startswith("<!DOCTYPE html>") and "<script src=" not in page  # nothing fetched
    assert "<img src=x" not in page and "&lt;img src=x" in page
    assert all(step["title"] in page for step in STEPS)
    assert "Predictions" in page


def test_handout_download_is_offered_outside_presenter_mode(tiny_model_dir):
    app = run_page({"model": str(tiny_model_dir)})
    assert not errors(app)
    assert any(button.label.startswith("Download the lesson") for button in app.get("download_button"))


def chips(app: AppTest) -> list[str]:
    return [m.value for m in app.markdown if m.allow_html and 'title="' in m.value]


def test_step_text_and_seed_round_trip(tiny_model_dir):
    app = run_page({"model": str(tiny_model_dir)})
    app.button(key="teach-next").click().run()
    app.text_input(key="teach-text").input("the dog sat on the big mat in the house").run()
    app.button(key="teach-draw").click().run()
    app.button(key="teach-draw").click().run()
    assert not errors(app)
    query = {key: app.query_params[key] for key in app.query_params}
    assert (query["step"], query["text"], query["seed"]) == ("2", "the dog sat on the big mat in the house", "2")
    link = open_share_panel(app, "teach")
    assert link.startswith("/teach?") and "seed=2" in link and "step=2" in link

    again = run_page(query)  # a fresh session with only the link
    assert again.title[0].value == STEPS[1]["title"]
    assert again.text_input(key="teach-text").value == query["text"]
    assert chips(again) == chips(app) and len(chips(again)) == 8  # the same draws, step by step
    assert not again.warning


def test_hostile_url_values_fall_back_with_a_message(tiny_model_dir):
    app = run_page({"model": str(tiny_model_dir), "step": "abc", "seed": "-5"})
    said = " ".join(w.value.replace("\\", "") for w in app.warning)
    assert "link's step='abc'" in said and "link's seed='-5'" in said
    assert app.title[0].value == STEPS[0]["title"]
    assert app.query_params.get("step", "1") == "1" and "seed" not in app.query_params


def test_presenter_mode_is_readable_from_the_back(tiny_model_dir):
    """Every figure the lesson draws: text at least 20 px and dark; the step counter large."""
    import json

    from support.figures import assert_presenter

    app = run_page({"model": str(tiny_model_dir), "presenter": "1"})
    seen = set()
    for n in range(1, len(STEPS) + 1):
        assert any(m.value == f'<p class="teach-step-counter">Step {n} of {len(STEPS)}</p>' for m in app.markdown)
        for chart in app.get("plotly_chart"):
            assert_presenter(json.loads(chart.proto.spec))
            seen.add(chart.key)
        if n == 4:  # the attention step's line view too
            app.radio(key="teach-shape").set_value("lines").run()
            (lines,) = [json.loads(c.proto.spec) for c in app.get("plotly_chart") if c.key == "teach-attention"]
            assert_presenter(lines)
            assert app.query_params["shape"] == "lines"
        if n < len(STEPS):
            app.button(key="teach-next").click().run()
            assert not errors(app)
    assert {"teach-topk-0", "teach-attention", "teach-why"} <= seen
    assert ".teach-step-counter {font-size:2.6rem" in [m.value for m in app.markdown if m.allow_html][0]


def test_the_mask_step_legend_lists_only_the_kinds_on_screen(tiny_model_dir):
    import re

    app = run_page({"model": str(tiny_model_dir), "step": "1"})
    html = [m.value for m in app.markdown if m.allow_html]
    (strip,) = [h for h in html if "line-height:2.1" in h]
    (legend,) = [h for h in html if h.startswith('<span title=""')]
    shown = {title.split(": ", 1)[1] for title in re.findall(r'title="(\d+: [^"]+)"', strip)}
    assert shown and set(re.findall(r">([^<>]+)</span>", legend)) == shown
