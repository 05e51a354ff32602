"""The Compare page through AppTest on the tiny BERT: table, head masking, variants, URL round-trips."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest
from support.apptest import open_app_page, open_share_panel
from support.apptest import shown_errors as errors

from mlm_core.explain.compare import Side, compare
from mlm_core.masking import build_strategy

PAGE = "app_pages/compare.py"
TEXT = "the cat [MASK] on the mat"
PAYLOAD = "<img src=x onerror=alert(1)>"


pytestmark = pytest.mark.usefixtures("clean_streamlit_caches")


def run_page(query: dict) -> AppTest:
    return open_app_page(PAGE, query)


def tiny_query(tiny_model_dir, **extra) -> dict:
    return {"text": TEXT, "a_model": str(tiny_model_dir), "b_model": str(tiny_model_dir), **extra}


def table(app: AppTest):
    return next(d.value for d in app.dataframe if "difference B−A" in d.value.columns)



def summary(app: AppTest):
    return next(d.value for d in app.dataframe if "mean p(original)" in d.value.columns)


def charts_shown(app: AppTest) -> int:
    return len(app.get("plotly_chart"))


def test_identical_sides_say_no_difference(tiny_model_dir):
    """The first screen's state: both sides alike give a message, not an empty chart with a broken scale."""
    app = run_page(tiny_query(tiny_model_dir))
    assert app.title[0].value == "Compare"
    frame = table(app)
    assert list(frame["position"]) == [3] and list(frame["masked in"]) == ["both"]
    assert list(frame["difference B−A"]) == ["+0.0%"]
    said = " ".join(i.value for i in app.info)
    assert "No difference." in said and "Both sides use the same settings" in said
    assert "No attention difference" in said
    assert charts_shown(app) == 0  # neither the difference bars nor the attention map
    assert list(summary(app)["side"]) == ["A", "B"]
    assert not errors(app)
    open_share_panel(app, "compare")
    assert app.get("download_button"), "no report download"


def test_one_sided_masks_are_listed_not_compared(tiny_model_dir, tiny_loaded):
    text = "the cat sat on the [MASK] and the dog ran in the house"
    app = run_page(tiny_query(tiny_model_dir, text=text, a_strategy="random", a_p_mlm_probability="0.4",
                              a_seed="3"))
    assert not errors(app)
    frame = table(app).set_index("position")
    expected = compare(text, tiny_loaded, Side(build_strategy("random", {"mlm_probability": 0.4}), 3),
                       tiny_loaded, Side())
    a_only = list(expected.one_sided["position"])
    assert a_only and all(frame.loc[p, "masked in"].startswith("A only") for p in a_only)
    assert all(frame.loc[p, "difference B−A"] == "" and frame.loc[p, "p B"] == "" for p in a_only)  # blank, not None
    assert "None" not in table(app).to_string() and "nan" not in table(app).to_string()
    captions = " ".join(c.value for c in app.caption)
    assert "Masked in A only, not compared (B sees these tokens)" in captions
    assert not any("No difference." in i.value for i in app.info)
    sides = summary(app).set_index("side")
    assert sides.loc["A", "masks"] == len(expected.a.prediction.predictions)
    assert sides.loc["A", "only on this side"] == len(a_only) and sides.loc["B", "only on this side"] == 0
    assert sides.loc["B", "mean p(original)"] == ""  # B has only the typed mask: no original
    a_mean = expected.summary.set_index("side").loc["A", "mean p(original)"]
    assert sides.loc["A", "mean p(original)"] == f"{a_mean:.1%}"
    assert charts_shown(app) >= 1  # the typed mask, masked on both sides, is charted


def test_heads_off_on_b_matches_the_library(tiny_model_dir, tiny_loaded):
    app = run_page(tiny_query(tiny_model_dir))
    app.multiselect(key="b_heads").set_value(["0:1", "1:0"]).run()
    assert not app.exception
    assert app.query_params["b_heads"] == "0:1,1:0"  # layer:head, as Batch links and the CLI write heads
    expected = compare(TEXT, tiny_loaded, Side(), tiny_loaded, Side(heads_off=((0, 1), (1, 0))))
    assert table(app)["p B"].tolist() == [f"{p:.1%}" for p in expected.table["p B"]]
    assert not any("No attention difference" in i.value for i in app.info)  # switched-off heads attend differently


def test_an_old_link_with_layer_dot_head_opens_the_same_view(tiny_model_dir):
    old = run_page(tiny_query(tiny_model_dir, b_heads="0.1,1.0"))  # links shared before layer:head
    new = run_page(tiny_query(tiny_model_dir, b_heads="0:1,1:0"))
    assert old.multiselect(key="b_heads").value == new.multiselect(key="b_heads").value == ["0:1", "1:0"]
    assert table(old).equals(table(new)) and not old.warning
    assert old.query_params["b_heads"] == "0:1,1:0"  # the link is rewritten in the one spelling


def test_url_round_trip(tiny_model_dir, tiny_loaded):
    app = run_page(tiny_query(tiny_model_dir, text="the cat sat on the [MASK] and the dog ran in the house"))
    app.selectbox(key="a_strategy").set_value("random").run()
    app.selectbox(key="b_strategy").set_value("random").run()
    app.slider(key="a-random-mlm_probability").set_value(0.4).run()
    app.number_input(key="a_seed").set_value(7).run()
    app.selectbox(key="b_exclude").set_value("stopwords").run()
    app.selectbox(key="att").set_value("rollout").run()
    app.selectbox(key="layer").set_value(0).run()
    app.text_input(key="swap_from").input("cat").run()
    app.text_input(key="swap_to").input("dog").run()
    assert not app.exception and not errors(app)
    query = app.query_params.to_dict() if hasattr(app.query_params, "to_dict") else dict(app.query_params)
    assert query["a_strategy"] == "random" and query["a_p_mlm_probability"] == "0.4" and query["a_seed"] == "7"
    assert query["b_exclude"] == "stopwords" and query["att"] == "rollout" and query["layer"] == "0"
    again = run_page(query)
    for kind, key in [("selectbox", "a_strategy"), ("selectbox", "b_strategy"), ("slider", "a-random-mlm_probability"),
                      ("number_input", "a_seed"), ("selectbox", "b_exclude"), ("selectbox", "att"),
                      ("selectbox", "layer"), ("text_input", "swap_from"), ("text_input", "swap_to")]:
        assert getattr(again, kind)(key=key).value == getattr(app, kind)(key=key).value, key
    assert table(again).equals(table(app))
    strategy = build_strategy("random", {"mlm_probability": 0.4})
    expected = compare(query["text"], tiny_loaded, Side(strategy, 7), tiny_loaded,
                       Side(build_strategy("random", {}, exclude="stopwords"), 0))
    assert list(table(again)["position"]) == list(expected.positions)


def test_word_swap_table(tiny_model_dir):
    app = run_page(tiny_query(tiny_model_dir, text="he sat on the [MASK] .", swap_from="he", swap_to="she"))
    swap = next(d.value for d in app.dataframe if "change" in d.value.columns)
    assert len(swap) > 0 and swap["change"].abs().is_monotonic_decreasing
    assert not errors(app)


def test_missing_word_and_bad_heads_are_messages(tiny_model_dir):
    app = run_page(tiny_query(tiny_model_dir, swap_from="zebra", b_heads="9.9,0.0"))
    assert any("not in the text" in e for e in errors(app))
    assert app.multiselect(key="b_heads").value == ["0:0"]  # a head the model lacks is dropped from the link


def test_no_mask_and_html_are_messages(tiny_model_dir):
    app = run_page(tiny_query(tiny_model_dir, text=f"{PAYLOAD} the cat"))
    assert any("No masked position" in e for e in errors(app))
    html_blocks = [m.value for m in app.markdown if m.allow_html]
    assert all("<img" not in block for block in html_blocks)


def test_share_link_and_hostile_values(tiny_model_dir):
    app = run_page(tiny_query(tiny_model_dir, a_seed="--5", topk="99", layer="²"))
    said = " ".join(w.value.replace("\\", "") for w in app.warning)
    assert "link's a_seed='--5'" in said and "link's layer=" in said and "link's topk='99'" in said
    assert app.number_input(key="a_seed").value == 0 and app.slider(key="topk").value == 5
    app.number_input(key="b_seed").set_value(3).run()
    link = open_share_panel(app, "compare")
    assert link.startswith("/compare?") and "b_seed=3" in link and "a_seed" not in link
    assert "Download this view as a standalone HTML report" in [b.proto.label for b in app.get("download_button")]


def test_an_unknown_strategy_in_the_link_is_said_not_silently_dropped(tiny_model_dir):
    app = run_page(tiny_query(tiny_model_dir, a_strategy="<b>nope</b>"))
    said = " ".join(w.value.replace("\\", "") for w in app.warning)
    assert "link's a_strategy='&lt;b&gt;nope&lt;/b&gt;' cannot be used" in said and "<b>" not in said
    assert app.selectbox(key="a_strategy").index == 0 and not app.exception  # none: typed or clicked masks


def test_first_screen_with_the_default_model():
    """/compare with no parameters: the default model fills the typed mask on both sides and says so plainly."""
    app = run_page({})
    assert not errors(app)
    sides = summary(app)
    assert list(sides["masks"]) == [1, 1] and list(sides["typed (no original)"]) == [1, 1]
    assert all(g.split(": ", 1)[1].startswith("paris") for g in sides["first guesses"])
    assert any("No difference." in i.value and "same settings" in i.value for i in app.info)
    assert list(table(app)["compared token"]) == ["paris (A's guess)"]
    assert charts_shown(app) == 0
