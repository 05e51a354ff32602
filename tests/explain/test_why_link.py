"""Links keep the Explore page's "Why?" area: the open tab and each panel's inputs (ui/why_link.py)."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest
from support.apptest import open_app_page, open_why_tab
from support.apptest import shown_errors as errors

from ui.why_link import LINES, TAB_KEY

TEXT = "the cat sat on the [MASK] ."


pytestmark = pytest.mark.usefixtures("clean_streamlit_caches")


def run_page(query: dict) -> AppTest:
    app = open_app_page(None, {"text": TEXT, "strategy": "none", **query})
    assert not errors(app), errors(app)
    return app


def query_of(app: AppTest) -> dict:
    return {key: app.query_params[key] for key in app.query_params}


def chart(app: AppTest, key: str) -> dict:
    (spec,) = [json.loads(c.proto.spec) for c in app.get("plotly_chart") if c.key == key]
    return spec


def warnings(app: AppTest) -> str:
    return " ".join(w.value.replace("\\", "") for w in app.warning)


def test_a_link_opens_the_tab_and_the_inputs_it_names(tiny_model_dir):
    app = run_page({"model": str(tiny_model_dir), "why": "whatif", "wi": "prune", "wi_sparsity": "0.5",
                    "view": "lines", "layer": "0", "head": "mean", "att_focus": "2"})
    assert app.session_state[TAB_KEY] == "What if…"
    assert app.radio(key="xi-kind").value == "Prune weights"
    assert app.slider(key="xi-sparsity").value == 0.5
    assert "xa-view" not in [w.key for w in app.selectbox]  # only the open tab's panel is drawn...
    assert query_of(app)["view"] == "lines"  # ...the hidden one's inputs wait in the link
    open_why_tab(app, "attention")
    assert app.selectbox(key="xa-view").value == LINES
    assert app.selectbox(key="xa-layer-2x2").value == 0
    assert app.selectbox(key="xa-head-2x2-m").value == "mean"
    assert not warnings(app)
    query = query_of(app)
    assert (query["wi"], query["wi_sparsity"], query["view"]) == ("prune", "0.5", "lines")
    assert "why" not in query  # the attention tab: the default
    assert (query["layer"], query["att_focus"]) == ("0", "2") and "head" not in query  # mean: the default


def test_what_the_user_picks_round_trips_through_the_link(tiny_model_dir):
    app = run_page({"model": str(tiny_model_dir)})
    assert "why" not in app.query_params and "view" not in app.query_params  # defaults stay out of links
    app.selectbox(key="xa-view").set_value(LINES).run()
    app.selectbox(key="xa-layer-2x2").set_value(0).run()
    app.selectbox(key="xa-head-2x2-m").set_value(1).run()
    (focus,) = [w for w in app.selectbox if w.key.startswith("xa-focus-")]
    focus.set_value(3).run()
    open_why_tab(app, "whatif")
    app.radio(key="xi-kind").set_value("Switch heads off").run()
    (heads,) = [w for w in app.multiselect if w.key.startswith("xi-heads-off-")]
    heads.set_value([(1, 0)]).run()
    open_why_tab(app, "words")
    app.radio(key="xt-method").set_value("saliency").run()
    assert not app.exception and not errors(app)
    query = query_of(app)
    assert query["why"] == "words" and query["view"] == "lines" and query["wi_heads"] == "1:0"
    assert query["attr_method"] == "saliency"

    again = run_page(query)  # a fresh session with only the link
    assert again.session_state[TAB_KEY] == "Which words mattered"
    assert again.radio(key="xt-method").value == "saliency"
    assert query_of(again) == query
    open_why_tab(again, "whatif")
    assert again.radio(key="xi-kind").value == "Switch heads off"
    (heads,) = [w for w in again.multiselect if w.key.startswith("xi-heads-off-")]
    assert heads.value == [(1, 0)]
    open_why_tab(app, "attention")
    open_why_tab(again, "attention")
    assert chart(again, "xa-chart") == chart(app, "xa-chart")  # the same line view, focus included
    assert not warnings(again)


def test_old_links_keep_working(tiny_model_dir):
    """Links written before the short names carry the view's label; head/layer as before."""
    app = run_page({"model": str(tiny_model_dir), "view": "Rollout", "layer": "0"})
    assert app.selectbox(key="xa-view").value == "Rollout"
    assert app.selectbox(key="xa-layer-2x2").value == 0
    assert app.query_params["view"] == "rollout" and not warnings(app)


def test_hostile_values_fall_back_with_a_message(tiny_model_dir):
    app = run_page({"model": str(tiny_model_dir), "why": "<b>x</b>", "view": "lines", "layer": "9",
                    "att_focus": "abc", "wi": "nothing", "attr_method": "magic"})
    said = warnings(app)  # each panel reads its inputs when its tab opens
    said += warnings(open_why_tab(app, "whatif")) + warnings(open_why_tab(app, "words"))
    for name in ("why", "layer", "att_focus", "wi", "attr_method"):
        assert f"link's {name}=" in said, name
    open_why_tab(app, "attention")
    assert app.session_state[TAB_KEY] == "Attention"
    assert app.selectbox(key="xa-layer-2x2").value == 1  # the last layer, the default
    assert "why" not in app.query_params and "wi" not in app.query_params
