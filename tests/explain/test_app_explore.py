"""The Explore page through Streamlit's AppTest: predictions, messages instead of tracebacks, clicks.

AppTest runs no JavaScript; tests/browser/ covers what happens in a real page.
"""

from __future__ import annotations

import json
import os

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from support import REPO
from support.apptest import open_share_panel
from support.apptest import shown_errors as errors

from mlm_core.explain.predict import fill_text, predict
from mlm_core.policy import reload_policy
from mlm_core.text.tokens import tokenize
from mlm_core.views.html import escape_markdown
from ui.strategy import NONE

APP = str(REPO / "app.py")
PAYLOAD = "<img src=x onerror=alert(1)>"


@pytest.fixture(autouse=True)
def clear_streamlit_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def run_app(text: str | None = None, model: str | None = None, strategy: str | None = NONE) -> AppTest:
    """The app after its first run; by default with no masking strategy (typed and clicked masks only)."""
    app = AppTest.from_file(APP, default_timeout=120)
    if text is not None:
        app.query_params["text"] = text
    if model is not None:
        app.query_params["model"] = model
    if strategy is not None:
        app.query_params["strategy"] = strategy
    app.run()
    assert not app.exception, app.exception
    return app


def charts(app: AppTest) -> list[dict]:
    """The top-k bar charts, one per predicted position (other panels have charts too)."""
    return [
        json.loads(chart.proto.spec) for chart in app.get("plotly_chart") if chart.key.startswith("topk-")
    ]


def top_token(spec: dict) -> str:
    return spec["layout"]["yaxis"]["ticktext"][-1]  # best guess is drawn at the top



def test_default_sentence_on_default_model(default_loaded):
    app = run_app()
    assert app.title[0].value == "Explore"
    text = app.text_area(key="text").value
    assert "[MASK]" in text
    expected = predict(default_loaded, tokenize(default_loaded.tokenizer, text).ids)
    (spec,) = charts(app)
    assert top_token(spec) == expected.predictions[0].top[0].token
    assert not errors(app)
    filled = escape_markdown(fill_text(default_loaded, expected.filled_ids))
    assert any(m.value == f"**Filled in:** {filled}" for m in app.markdown)


def test_default_page_with_its_default_strategy():
    """A link without a strategy (the first screen, Runs' "Open in the explorer") masks only the typed mask."""
    app = run_app(strategy=None)
    assert not errors(app)
    assert app.selectbox(key="mask-strategy").value == NONE
    (spec,) = charts(app)  # one typed mask, one prediction: nothing else masked
    assert top_token(spec) == "paris"
    assert app.query_params["strategy"] == "none"  # the short value, not the label
    assert not any("added" in i.value for i in app.info)


def test_a_picked_strategy_says_what_it_added(tiny_model_dir):
    app = run_app(text="the cat [MASK] on the mat and the dog sat on the rug", model=str(tiny_model_dir),
                  strategy="random")
    app.slider(key="mask-random-mlm_probability").set_value(0.5).run()
    (note,) = [i.value for i in app.info if "added" in i.value]
    assert note.startswith("Random masking added ")
    added = int(note.split()[3])
    assert len(charts(app)) == added + 1  # the typed mask and the strategy's own
    labels = {s.label for s in app.slider} | {c.label for c in app.checkbox}
    assert {"Share of tokens to mask", "Mask exactly that share"} <= labels
    assert "mlm_probability" in app.slider(key="mask-random-mlm_probability").help


def test_the_legend_lists_only_the_kinds_shown(tiny_model_dir):
    app = run_app(text="the cat [MASK] on the mat", model=str(tiny_model_dir))
    (legend,) = [m.value for m in app.markdown if "random token" in m.value or ">masked<" in m.value
                 and "line-height" not in m.value]
    assert ">masked<" in legend and ">kept<" not in legend and ">excluded<" not in legend
    assert any("1 masked ÷ 6 maskable tokens = 17%" in c.value.replace("\\", "") for c in app.caption)


def test_text_without_mask_shows_a_message(tiny_model_dir):
    app = run_app(model=str(tiny_model_dir))
    app.text_area(key="text").input("the cat sat on the mat").run()
    assert not app.exception
    assert any("No masked position" in e for e in errors(app))
    assert charts(app) == []


@pytest.mark.parametrize("text", ["", "   ", "\u200b\u200e"])
def test_empty_text_shows_a_message(tiny_model_dir, text):
    app = run_app(model=str(tiny_model_dir))
    app.text_area(key="text").input(text).run()
    assert not app.exception
    assert any("Nothing to mask" in e for e in errors(app))


def test_html_in_text_is_escaped(tiny_model_dir):
    app = run_app(text=f"{PAYLOAD} the [MASK] sat", model=str(tiny_model_dir))
    html_blocks = [m.value for m in app.markdown if m.allow_html]
    assert html_blocks, "the token strip is missing"
    assert all(PAYLOAD not in block and "<img" not in block for block in html_blocks)
    assert len(charts(app)) == 1


def test_unknown_model_shows_an_error(monkeypatch):
    """A hub id the operator offers that is not in the cache (offline): the loader's own message."""
    offered = os.environ.get("MASKLAB_MODEL_SOURCES", "") + os.pathsep + "no-such-org/no-such-model"
    monkeypatch.setenv("MASKLAB_MODEL_SOURCES", offered)
    reload_policy()
    try:
        app = run_app(model="no-such-org/no-such-model")
    finally:
        monkeypatch.undo()
        reload_policy()
    assert any("Cannot find model 'no-such-org/no-such-model'" in e for e in errors(app))
    assert charts(app) == []


def test_tiny_model_through_other(tiny_model_dir):
    app = run_app(text="the cat [MASK] on the mat", model=str(tiny_model_dir))
    assert app.selectbox(key="model_choice").value.startswith("Other")
    assert app.text_input(key="model_other").value == str(tiny_model_dir)
    assert len(charts(app)) == 1
    assert app.query_params["model"] == str(tiny_model_dir)


def test_clicking_tokens_masks_them(tiny_model_dir):
    app = run_app(text="the cat [MASK] on the mat", model=str(tiny_model_dir))
    (pills,) = app.get("button_group")
    assert list(pills.options) == ["the", "cat", "on", "the", "mat"]  # repeated "the" stays two chips
    pills.set_value([2]).run()  # position 2: "cat"
    assert not app.exception
    specs = charts(app)
    assert len(specs) == 2  # the typed mask and the clicked one
    titles = [spec["layout"]["title"]["text"] for spec in specs]
    assert any("original 'cat'" in title for title in titles)
    strip = next(m.value for m in app.markdown if m.allow_html)  # the token strip comes first
    assert strip.count(": masked") == 2


def test_joint_fill_matches_the_library(tiny_loaded, tiny_model_dir):
    text = "[MASK] cat [MASK] on the mat"
    app = run_app(text=text, model=str(tiny_model_dir))
    app.radio(key="fill").set_value("joint").run()
    assert not app.exception
    expected = predict(tiny_loaded, tokenize(tiny_loaded.tokenizer, text).ids, fill="joint")
    filled = escape_markdown(fill_text(tiny_loaded, expected.filled_ids))
    assert any(m.value == f"**Filled in:** {filled}" for m in app.markdown)
    assert len(charts(app)) == 2
    assert not any("independently" in i.value for i in app.info)


def test_text_over_the_limit_shows_a_message(tiny_model_dir):
    app = run_app(model=str(tiny_model_dir))
    app.text_area(key="text").input("the cat " * 12_501 + "[MASK]").run()
    assert not app.exception
    assert any("limit is 100,000" in e for e in errors(app))


def test_text_longer_than_the_model_is_windowed(tiny_model_dir):
    text = "the cat sat on the mat and the dog ran in the house " * 8 + "the [MASK] sat."
    app = run_app(text=text, model=str(tiny_model_dir))
    assert any("window" in i.value for i in app.info)
    assert len(charts(app)) == 1


def query_of(app: AppTest) -> dict:
    return {key: app.query_params[key] for key in app.query_params}


def warnings(app: AppTest) -> list[str]:
    """Warning texts as shown (Markdown escapes removed)."""
    return [w.value.replace("\\", "") for w in (*app.warning, *app.sidebar.warning)]


def test_every_setting_round_trips_through_the_url(tiny_model_dir):
    app = run_app(text="the cat sat on the [MASK] and the dog ran in the house", model=str(tiny_model_dir))
    app.selectbox(key="mask-strategy").set_value("random").run()
    app.slider(key="mask-random-mlm_probability").set_value(0.4).run()
    app.number_input(key="mask-seed").set_value(3).run()
    app.slider(key="top_k").set_value(7).run()
    app.radio(key="fill").set_value("joint").run()
    assert not app.exception and not errors(app)
    link = query_of(app)
    assert (link["strategy"], link["p_mlm_probability"], link["seed"]) == ("random", "0.4", "3")
    assert (link["top_k"], link["fill"]) == ("7", "joint")

    again = AppTest.from_file(APP, default_timeout=120)  # a fresh session: only the link
    again.query_params.update(link)
    again.run()
    assert not again.exception, again.exception
    for kind, key in [("selectbox", "mask-strategy"), ("slider", "mask-random-mlm_probability"),
                      ("number_input", "mask-seed"), ("slider", "top_k"), ("radio", "fill"), ("text_area", "text")]:
        assert getattr(again, kind)(key=key).value == getattr(app, kind)(key=key).value, key
    assert charts(again) == charts(app)  # the same masks, the same guesses
    assert all(len(spec["data"][0]["x"]) == 7 for spec in charts(again))
    assert not warnings(again)


def test_hostile_url_values_fall_back_with_a_message(tiny_model_dir):
    app = AppTest.from_file(APP, default_timeout=120)
    app.query_params.update(model=str(tiny_model_dir), text="the cat [MASK] on the mat", seed="abc", top_k="-3",
                            fill="sideways", strategy="<b>bogus</b>", p_mlm_probability="lots", layer="²", head="--1")
    app.run()
    assert not app.exception, app.exception
    said = " ".join(warnings(app))
    for name in ("seed", "top_k", "fill", "strategy"):
        assert f"link's {name}=" in said, name
    assert "<b>" not in said  # the link's text is shown as text
    assert app.number_input(key="mask-seed").value == 0
    assert app.slider(key="top_k").value == 5
    assert app.radio(key="fill").value == "independent"
    assert app.selectbox(key="mask-strategy").value == NONE  # the page's default: typed masks only
    assert charts(app), "the page still predicts"
    # the link is repaired: a parameter of no shown strategy leaves it too
    assert not {"seed", "top_k", "fill", "p_mlm_probability"} & set(app.query_params)
    assert app.query_params["strategy"] == "none"


def test_hostile_strategy_parameter_falls_back_with_a_message(tiny_model_dir):
    app = AppTest.from_file(APP, default_timeout=120)
    app.query_params.update(model=str(tiny_model_dir), text="the cat [MASK] on the mat", strategy="random",
                            p_mlm_probability="lots")
    app.run()
    assert not app.exception, app.exception
    assert "link's p_mlm_probability=" in " ".join(warnings(app))
    assert app.selectbox(key="mask-strategy").value == "random"  # a link that names a strategy keeps it
    assert app.slider(key="mask-random-mlm_probability").value == 0.15
    assert charts(app), "the page still predicts"
    assert "p_mlm_probability" not in app.query_params and app.query_params["strategy"] == "random"


def test_share_panel_has_the_link_and_a_report(tiny_model_dir):
    app = run_app(text="the cat [MASK] on the mat", model=str(tiny_model_dir))
    app.slider(key="top_k").set_value(3).run()
    link = open_share_panel(app, "explore")
    assert link.startswith("/explore?") and "top_k=3" in link and "text=the%20cat%20%5BMASK%5D" in link
    labels = [b.proto.label for b in app.get("download_button")]
    assert "Download this view as a standalone HTML report" in labels


def finished_run(home, tiny_model_dir, name: str | None = None) -> str:
    """A finished run in ``home``'s store whose model is the tiny model (no training); its id."""
    import shutil

    from mlm_core.training.store import FINISHED, RUNNING, RunStore

    store = RunStore(home / "runs")
    record, _ = store.create({"strategy": "whole-word", "strategy_params": {"mlm_probability": 0.3}, "steps": 20})
    shutil.copytree(tiny_model_dir, store.folder(record.id) / "model")
    store.transition(record.id, RUNNING, pid=2**30)
    store.transition(record.id, FINISHED)
    if name:
        store.rename(record.id, name)
    return record.id


def test_the_model_picker_lists_finished_runs_by_name(tiny_model_dir, tmp_path, monkeypatch):
    """Explore's sidebar, Compare's sides and Fine-tune's "start from" share one picker: runs by name, by id."""
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path))
    run_id = finished_run(tmp_path, tiny_model_dir, name=PAYLOAD)
    app = run_app("the cat [MASK] on the mat .")
    picker = app.selectbox(key="model_choice")
    assert any(o.startswith(f"run: {PAYLOAD} · ") for o in picker.options), picker.options  # by its name
    picker.set_value(f"run:{run_id}").run()
    assert not app.exception, app.exception
    assert app.query_params["model"] == f"run:{run_id}"  # the link names the run by id, never by folder
    assert not errors(app) and charts(app), "the explorer predicted with the run's model"
    assert not [m for m in app.markdown if "<img" in m.value]  # the name is never rendered as HTML


def test_a_link_to_a_run_by_id_opens_it(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path))
    run_id = finished_run(tmp_path, tiny_model_dir)
    app = run_app("the cat [MASK] on the mat .", model=f"run:{run_id}")
    assert app.selectbox(key="model_choice").value == f"run:{run_id}"
    assert not errors(app) and charts(app)
    older = run_app("the cat [MASK] on the mat .", model=str(tmp_path / "runs" / run_id / "model"))
    assert older.selectbox(key="model_choice").value == f"run:{run_id}"  # an older link keeps working...
    assert older.query_params["model"] == f"run:{run_id}"  # ...and now names the run by id
    missing = run_app("the cat [MASK] on the mat .", model="run:20990101-000000-abcdef")
    assert any("no run" in e.lower() for e in errors(missing))  # a clear message, no traceback
    path = run_app("the cat [MASK] on the mat .", model="run:../../etc")
    assert errors(path) and not charts(path)


def test_the_folded_privacy_panel_keeps_what_the_link_and_the_user_set(tiny_model_dir):
    """The privacy/protection/exclusion widgets are drawn only while their panel is open; folded, the
    settings still apply and stay in the link, and opening it shows them."""
    app = AppTest.from_file(APP, default_timeout=120)
    for key, value in {"text": "the cat sat on the mat .", "model": str(tiny_model_dir), "strategy": "random",
                       "p_mlm_probability": "0.9", "protect": "stopwords", "exclude": "punctuation"}.items():
        app.query_params[key] = value
    app.run()
    assert not app.exception and not errors(app)
    assert not app.multiselect and not [s for s in app.selectbox if s.key == "mask-exclude"]  # folded: not drawn
    masked = [chip for chip in app.markdown if "masked" in chip.value]
    assert app.query_params["protect"] == "stopwords" and app.query_params["exclude"] == "punctuation"

    app.session_state["mask-more"] = True  # opened, as a click on it would
    app.run()
    assert app.multiselect(key="mask-protect").value == ["stopwords"]
    assert app.selectbox(key="mask-exclude").value == "punctuation"
    assert [chip.value for chip in app.markdown if "masked" in chip.value] == [m.value for m in masked]
    app.multiselect(key="mask-protect").set_value(["stopwords", "numbers"]).run()
    app.checkbox(key="mask-privacy").check().run()

    app.session_state["mask-more"] = False  # folded again: the new settings hold, from the link
    app.run()
    assert not app.multiselect
    assert set(app.query_params["protect"].split(",")) == {"stopwords", "numbers"} and app.query_params["privacy"] == "1"
    app.session_state["mask-more"] = True
    app.run()
    assert set(app.multiselect(key="mask-protect").value) == {"stopwords", "numbers"}
    assert app.checkbox(key="mask-privacy").value is True
