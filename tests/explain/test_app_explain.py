"""The "why?" panels (ui/explain.py) through AppTest on the tiny model: every control, exports,
and messages instead of tracebacks for bad input."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest
from support import REPO

from ui.explain import ATTENTION_VIEWS, WHATIFS

TEXT = "the cat sat on the [MASK] , the dog ran ."
CLICKED = [2]  # "cat": a mask with a known original, beside the typed one


def panels(model_dir, text, clicked, exclude_rule=None):
    import streamlit as st

    from mlm_core.explain.exploration import explore
    from mlm_core.masking import strategy_from_params
    from mlm_core.model.loading import load_model
    from ui.explain import attention_panel, attribution_panel, interference_panel

    loaded = load_model(model_dir, device="cpu")
    strategy = strategy_from_params("attention-exclusion", {"rule": exclude_rule}) if exclude_rule else None
    exploration = explore(loaded, text, strategy, manual_positions=clicked)
    attention_tab, whatif_tab, why_tab = st.tabs(["Attention", "What if", "Why"])
    with attention_tab:
        attention_panel(loaded, exploration)
    with whatif_tab:
        interference_panel(loaded, exploration)
    with why_tab:
        attribution_panel(loaded, exploration)


def run(model_dir, text=TEXT, clicked=CLICKED) -> AppTest:
    app = AppTest.from_function(panels, default_timeout=120, args=(str(model_dir), text, clicked))
    app.run()
    check(app)
    return app


def check(app: AppTest) -> None:
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]


def specs(app: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]


def configs(app: AppTest) -> list[dict]:
    return [json.loads(chart.proto.config) for chart in app.get("plotly_chart")]


def downloads(app: AppTest) -> list[str]:
    return [d.proto.label for d in app.get("download_button")]


def key_starting(widgets, prefix: str):
    (widget,) = [w for w in widgets if w.key and w.key.startswith(prefix)]
    return widget


def test_attention_every_view(tiny_model_dir):
    app = run(tiny_model_dir)
    for view in ATTENTION_VIEWS:
        app.selectbox(key="xa-view").set_value(view).run()
        check(app)
        assert specs(app), view
        assert {"Numbers (CSV)", "Numbers (JSON)"} <= set(downloads(app)), view


def test_attention_one_head_controls(tiny_model_dir):
    app = run(tiny_model_dir)
    app.selectbox(key="xa-layer-2x2").set_value(0).run()
    app.selectbox(key="xa-head-2x2").set_value(1).run()
    check(app)
    spec = specs(app)[0]
    assert spec["layout"]["title"]["text"] == "Layer 0, head 1"
    assert spec["layout"]["xaxis"]["ticktext"] == ["[CLS]", "the", "[MASK]", "sat", "on", "the", "[MASK]", ",",
                                                   "the", "dog", "ran", ".", "[SEP]"]
    assert len(spec["layout"]["shapes"]) == 4  # two masks, row and column each
    app.radio(key="xa-image").set_value("svg").run()
    assert configs(app)[0]["toImageButtonOptions"]["format"] == "svg"
    app.toggle(key="xa-merge").set_value(True).run()
    check(app)


def test_attention_aggregate_controls(tiny_model_dir):
    app = run(tiny_model_dir)
    app.selectbox(key="xa-view").set_value("Rollout").run()
    app.slider(key="xa-residual").set_value(0.8).run()
    app.selectbox(key="xa-layer-2x2").set_value(0).run()
    check(app)
    assert "layers 0–0" in specs(app)[0]["layout"]["title"]["text"]
    app.selectbox(key="xa-view").set_value("From the mask").run()
    key_starting(app.selectbox, "xa-position-").set_value(2).run()
    app.selectbox(key="xa-head-2x2-m").set_value(1).run()
    check(app)
    assert "position 2" in specs(app)[0]["layout"]["title"]["text"]
    app.selectbox(key="xa-view").set_value("Layer × head overview").run()
    for metric in ("entropy", "max", "to token"):
        app.selectbox(key="xa-metric").set_value(metric).run()
        check(app)
    key_starting(app.selectbox, "xa-target-").set_value(1).run()
    check(app)
    app.selectbox(key="xa-view").set_value("Masked vs unmasked").run()
    app.selectbox(key="xa-head-2x2-m").set_value("mean").run()
    for mode in ("side by side", "difference"):
        app.radio(key="xa-compare").set_value(mode).run()
        check(app)
    assert any("first guess" in c.value for c in app.caption)  # the typed mask has no original


def test_interference_exclusion(tiny_model_dir):
    app = run(tiny_model_dir)
    assert any("Pick tokens" in i.value for i in app.info)
    app.multiselect(key="xi-rules").set_value(["stopword"]).run()
    check(app)
    assert app.dataframe and specs(app)
    key_starting(app.multiselect, "xi-tokens-").set_value([9]).run()  # "dog"
    app.radio(key="xi-image").set_value("svg").run()
    check(app)
    assert "Numbers (JSON)" in downloads(app)


def test_interference_heads(tiny_model_dir):
    app = run(tiny_model_dir)
    app.radio(key="xi-kind").set_value(WHATIFS[1]).run()
    assert any("Choose heads" in i.value for i in app.info)
    app.multiselect(key="xi-layers-off-2x2").set_value([0]).run()
    check(app)
    app.multiselect(key="xi-heads-off-2x2").set_value([(1, 1)]).run()
    check(app)
    assert len(app.dataframe) == 1
    key_starting(app.selectbox, "xi-importance-position-").set_value(6).run()
    app.button(key="xi-importance-run").click().run()
    check(app)
    titles = [s["layout"]["title"]["text"] for s in specs(app)]
    assert any(t.startswith("Drop in p(") for t in titles)


def test_interference_pruning(tiny_model_dir):
    app = run(tiny_model_dir)
    app.radio(key="xi-kind").set_value(WHATIFS[2]).run()
    check(app)
    app.slider(key="xi-sparsity").set_value(0.7).run()
    app.radio(key="xi-scope").set_value("global").run()
    check(app)
    assert any("weights set to zero" in c.value for c in app.caption)
    app.multiselect(key="xi-prune-layers-2x2").set_value([]).run()
    check(app)
    assert any("at least one layer" in i.value for i in app.info)


def test_attribution_controls(tiny_model_dir):
    app = run(tiny_model_dir)
    assert not specs(app) or all("Attribution" not in s["layout"]["title"]["text"] for s in specs(app))
    key_starting(app.selectbox, "xt-position-").set_value(6).run()
    app.slider(key="xt-steps").set_value(8).run()
    app.selectbox(key="xt-baseline").set_value("mask").run()
    app.button(key="xt-run").click().run()
    check(app)
    summary = [m.value for m in app.markdown if "Integrated Gradients" in m.value]
    assert summary and "8 steps" in summary[0] and "convergence delta" in summary[0] and "\\[mask\\]" in summary[0]
    app.toggle(key="xt-merge").set_value(True).run()
    app.radio(key="xt-image").set_value("svg").run()
    check(app)
    assert "Attribution to" in specs(app)[-1]["layout"]["title"]["text"]
    for method in ("saliency", "input_x_gradient"):
        app.radio(key="xt-method").set_value(method).run()
        app.button(key="xt-run").click().run()
        check(app)
        assert any(m.value.startswith("**Saliency**" if method == "saliency" else "**Input") for m in app.markdown)
    app.text_input(key="xt-target").set_value("dog").run()
    app.button(key="xt-run").click().run()
    check(app)
    assert any("p('dog')" in m.value for m in app.markdown)


def test_attribution_bad_target_gives_a_message(tiny_model_dir):
    app = run(tiny_model_dir)
    app.text_input(key="xt-target").set_value("cats").run()
    app.button(key="xt-run").click().run()
    assert not app.exception
    assert any("not one token" in e.value for e in app.error)


def test_too_long_text_gives_messages_not_tracebacks(tiny_model_dir):
    app = AppTest.from_function(panels, default_timeout=120,
                                args=(str(tiny_model_dir), "the cat sat . " * 20 + "[MASK] .", []))
    app.run()
    assert not app.exception
    shown = [*app.error, *app.info]  # attention says it as a notice, what-ifs as an error
    assert any("Shorten the text" in e.value for e in shown)
    app.button(key="xt-run").click().run()
    assert not app.exception
    assert sum("Shorten the text" in e.value for e in [*app.error, *app.info]) >= 2


@pytest.mark.parametrize("kind", WHATIFS)
def test_whatif_kinds_render(tiny_model_dir, kind):
    app = run(tiny_model_dir)
    app.radio(key="xi-kind").set_value(kind).run()
    check(app)


def test_panels_keep_the_strategys_exclusion(tiny_model_dir):
    app = AppTest.from_function(panels, default_timeout=120,
                                args=(str(tiny_model_dir), TEXT, CLICKED, "punctuation"))
    app.run()
    check(app)
    app.radio(key="xi-kind").set_value(WHATIFS[1]).run()
    app.multiselect(key="xi-layers-off-2x2").set_value([1]).run()
    check(app)
    assert any("already excluded" in c.value for c in app.caption)
    app.selectbox(key="xa-view").set_value("Masked vs unmasked").run()
    app.button(key="xt-run").click().run()
    check(app)
    assert any("Integrated Gradients" in m.value for m in app.markdown)


def test_every_view_with_word_pieces_merged(tiny_model_dir):
    app = run(tiny_model_dir, text="the cats sat on the [MASK] , the dogs ran .", clicked=[2])  # "cat" of "cats"
    app.toggle(key="xa-merge").set_value(True).run()
    for view in ATTENTION_VIEWS:
        app.selectbox(key="xa-view").set_value(view).run()
        check(app)
    spec = specs(app)[0]
    assert "dogs" in spec["layout"]["xaxis"]["ticktext"] and "##s" not in spec["layout"]["xaxis"]["ticktext"]
    app.toggle(key="xt-merge").set_value(True).run()
    app.button(key="xt-run").click().run()
    check(app)
    assert "dogs" in specs(app)[-1]["layout"]["xaxis"]["ticktext"]


def test_attention_view_layer_and_head_round_trip_through_the_url(tiny_model_dir):
    from streamlit.testing.v1 import AppTest

    app_file = REPO / "app.py"

    first = AppTest.from_file(str(app_file), default_timeout=120)
    first.query_params.update(model=str(tiny_model_dir), text="the cat sat on the [MASK] .", strategy="none")
    first.run()
    layer = next(w for w in first.selectbox if w.key and w.key.startswith("xa-layer-"))
    layer.set_value(0).run()
    head = next(w for w in first.selectbox if w.key and w.key.startswith("xa-head-"))
    head.set_value(1).run()
    assert not first.exception
    link = {k: first.query_params[k] for k in first.query_params}
    assert (link["layer"], link["head"]) == ("0", "1")

    second = AppTest.from_file(str(app_file), default_timeout=120)
    second.query_params.update(link)
    second.run()
    assert next(w for w in second.selectbox if w.key.startswith("xa-layer-")).value == 0
    assert next(w for w in second.selectbox if w.key.startswith("xa-head-")).value == 1
