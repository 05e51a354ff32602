"""The Batch page through AppTest: upload, sweep, run, results, bad files, limits, and a click to the explorer.

Results go to a temporary MASKLAB_HOME. AppTest runs no JavaScript (so no Stop click during a
run and no chart download); dataframe row clicks are simulated through their selection state.
"""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from support import REPO
from support.apptest import open_share_panel
from support.apptest import shown_errors as errors

import ui.batch
from mlm_core.evaluate import WITH_PLL, Throughput, sentence_seed
from mlm_core.views.reports import batch_report
from ui.corpus import UPLOAD
from ui.strategy import NONE

APP = str(REPO / "app.py")
PAGE = "app_pages/batch.py"
PAYLOAD = "<img src=x onerror=alert(1)>"
SENTENCES = b"the cat sat on the mat.\nthe dog ran in the big house!\nparis is the capital of france.\n"


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def open_page(model_dir, start_on_explorer: bool = False, **query) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=120)
    app.query_params["model"] = str(model_dir)
    for key, value in query.items():
        app.query_params[key] = value
    if start_on_explorer:
        app.run()
        assert not app.exception, app.exception
    app.switch_page(PAGE)
    app.run()
    assert not app.exception, app.exception
    return app


def upload(app: AppTest, name: str, data: bytes) -> AppTest:
    app.radio(key="batch-corpus-source").set_value(UPLOAD).run()
    app.get("file_uploader")[0].set_value((name, data, "application/octet-stream"))
    app.run()
    assert not app.exception, app.exception
    return app



def run_analysis(app: AppTest) -> AppTest:
    app.button(key="batch-run").click().run()
    assert not app.exception, app.exception
    assert not errors(app), errors(app)
    return app


def charts(app: AppTest) -> dict[str, dict]:
    return {chart.key: json.loads(chart.proto.spec) for chart in app.get("plotly_chart")}


def test_a_rate_sweep_runs_and_shows_tables_charts_and_exports(tiny_model_dir):
    app = upload(open_page(tiny_model_dir), f"{PAYLOAD}.txt", SENTENCES)
    caption = next(c.value for c in app.caption if "texts" in c.value)
    assert "<img" not in caption and "&lt;img" in caption  # the file name stays text
    app.checkbox(key="batch-sweep").check().run()
    app.text_input(key="batch-rates").set_value("0.2,0.5").run()
    app.number_input(key="batch-seeds").set_value(2).run()
    assert any("3 sentences × 2 configuration(s) × 2 seed(s)" in m.value for m in app.markdown)
    shown = next(m.value for m in app.markdown if "estimated time" in m.value)
    assert "rows" not in shown and ("about" in shown or "under a second" in shown)  # time in words, not rows
    run_analysis(app)
    assert "4 · Results" in [h.value for h in app.header]
    shown = charts(app)
    assert set(shown) == {"batch-categories", "batch-rates-chart"}
    bars = shown["batch-categories"]
    assert [trace["name"] for trace in bars["data"]] == ["random p=0.2", "random p=0.5"]
    assert bars["layout"]["xaxis"]["ticktext"] == ["all", "stopword", "punctuation", "number", "content"]
    curve = [t for t in shown["batch-rates-chart"]["data"] if t.get("mode") == "lines+markers"]
    assert curve[0]["x"] == [0.2, 0.5]
    table = next(d.value for d in app.dataframe if "top1_low" in d.value.columns)
    report = app.session_state[ui.batch.REPORT_KEY]
    empty = report.summary()["n"] == 0  # categories with nothing masked: a caption names them, no row of blanks
    assert len(table) == 10 - empty.sum() and set(table["config"]) == {"random p=0.2", "random p=0.5"}
    assert len(report.summary()) == 10 and report.seeds == (0, 1)
    keys = {button.key for button in app.get("download_button")}
    assert keys == {"batch-download-sentences-csv", "batch-download-sentences-json", "batch-download-tokens-csv",
                    "batch-download-tokens-json", "batch-download-summary", "batch-download-report"}
    app.radio(key="batch-metric").set_value("mean_log_prob").run()  # results survive reruns
    assert not app.exception and "log-probability" in charts(app)["batch-categories"]["layout"]["title"]["text"]


def test_html_in_sentences_stays_text(tiny_model_dir):
    app = upload(open_page(tiny_model_dir), "s.txt", f"{PAYLOAD} the cat sat.\nthe dog ran.\n".encode())
    run_analysis(app)
    for element in (*app.markdown, *app.caption):
        assert "<img" not in element.value
    texts = app.session_state[ui.batch.REPORT_KEY].rows("sentences")["text"].tolist()
    assert texts[0] == f"{PAYLOAD} the cat sat."


def test_the_whole_view_report_holds_the_tables_and_charts_with_text_escaped(tiny_model_dir):
    app = upload(open_page(tiny_model_dir), "s.txt", f"{PAYLOAD} the cat sat.\nthe dog ran.\n".encode())
    app.checkbox(key="batch-sweep").check().run()
    app.text_input(key="batch-rates").set_value("0.2,0.5").run()
    run_analysis(app)
    report = app.session_state[ui.batch.REPORT_KEY]
    page = batch_report(report, "top1")
    assert page.startswith("<!DOCTYPE html>") and "MaskLab batch analysis" in page
    for caption in ("Summary", "Hardest sentences", "Hardest tokens", "by masking rate"):
        assert caption in page
    assert "random p=0.2" in page and "random p=0.5" in page
    assert "<img src=x" not in page and "&lt;img src=x" in page  # the sentence is text in the tables
    assert page.count("Plotly.newPlot") == 2  # two charts, the library embedded once for offline use


@pytest.mark.parametrize(("name", "data", "expected"), [
    ("ragged.csv", b"id,text\n1,the cat\n2,the dog,extra\n", "Line 3"),
    ("bad.jsonl", b'{"text": "the cat"}\n{"text": oops}\n', "Line 2"),
    ("binary.txt", b"\x00\x01\x02" * 100, "binary"),
    ("empty.csv", b"text\n", "has no text"),
])
def test_bad_files_are_rejected_naming_the_line(tiny_model_dir, name, data, expected):
    app = upload(open_page(tiny_model_dir), name, data)
    assert any(expected in e for e in errors(app)), errors(app)
    assert not [b for b in app.button if b.key == "batch-run"]  # nothing to run


def test_a_run_too_big_for_the_page_is_refused(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(ui.batch, "PAGE_MAX_ROWS", 2)  # 3 sentences x 1 configuration: 3 rows
    app = upload(open_page(tiny_model_dir), "s.txt", SENTENCES)
    assert any("mlm_core evaluate" in e for e in errors(app))
    assert app.button(key="batch-run").disabled


def test_no_strategy_and_bad_sweeps_are_messages(tiny_model_dir):
    app = upload(open_page(tiny_model_dir, strategy=NONE), "s.txt", SENTENCES)
    assert any("Choose a masking strategy" in e for e in errors(app))
    app = upload(open_page(tiny_model_dir), "s.txt", SENTENCES)
    app.checkbox(key="batch-sweep").check().run()
    app.text_input(key="batch-rates").set_value("0.5:0.1").run()
    assert any("start:stop:step" in e for e in errors(app))
    app.text_input(key="batch-rates").set_value("0.2").run()
    app.text_input(key="batch-heads").set_value("9:9").run()
    assert any("do not exist" in e for e in errors(app))


def test_a_click_on_a_hard_token_opens_it_in_the_explorer_with_the_same_mask(tiny_model_dir):
    app = upload(open_page(tiny_model_dir, start_on_explorer=True, strategy="whole-word", p_mlm_probability="0.4",
                           exclude="punctuation"), "s.txt", SENTENCES)
    run_analysis(app)
    report = app.session_state[ui.batch.REPORT_KEY]
    hardest = report.hardest_tokens(ui.batch.HARDEST_ROWS)
    row = hardest.iloc[1]
    app.session_state["batch-hard-tokens"] = {"selection": {"rows": [1], "columns": []}}
    app.run()
    assert not app.exception, app.exception
    assert [t.value for t in app.title] == ["Explore"]
    expected_seed = sentence_seed(int(row["seed"]), int(row["sentence"]))
    assert app.query_params["text"] in (row["text"], [row["text"]])
    assert app.number_input(key="mask-seed").value == expected_seed  # the link's seed, not the earlier visit's
    assert app.selectbox(key="mask-strategy").value == "whole-word"
    tokens = report.rows("tokens")
    mine = tokens[(tokens["config"] == row["config"]) & (tokens["sentence"] == row["sentence"])
                  & (tokens["seed"] == row["seed"])]
    predicted = sorted(int(json.loads(c.proto.spec)["layout"]["title"]["text"].split(" ")[1])
                       for c in app.get("plotly_chart") if c.key.startswith("topk-"))
    assert predicted == mine["position"].tolist()  # the explorer masks exactly what the analysis scored


def query_of(app: AppTest) -> dict:
    return {key: app.query_params[key] for key in app.query_params}


def warnings(app: AppTest) -> list[str]:
    """Warning texts as shown (Markdown escapes removed)."""
    return [w.value.replace("\\", "") for w in app.warning]


SETTINGS = [("radio", "batch-corpus-unit"), ("selectbox", "batch-strategy"), ("slider", "batch-whole-word-mlm_probability"),
            ("number_input", "batch-seed"), ("checkbox", "batch-sweep"), ("text_input", "batch-rates"),
            ("multiselect", "batch-strategies"), ("number_input", "batch-seeds"), ("text_input", "batch-heads"),
            ("checkbox", "batch-pll")]


def test_every_setting_round_trips_through_the_url(tiny_model_dir):
    app = open_page(tiny_model_dir)
    app.radio(key="batch-corpus-unit").set_value("paragraph")
    app.selectbox(key="batch-strategy").set_value("whole-word").run()
    app.slider(key="batch-whole-word-mlm_probability").set_value(0.3)
    app.number_input(key="batch-seed").set_value(4)
    app.checkbox(key="batch-sweep").check().run()
    app.text_input(key="batch-rates").set_value("0.2,0.5")
    app.multiselect(key="batch-strategies").set_value(["span"])
    app.number_input(key="batch-seeds").set_value(2)
    app.text_input(key="batch-heads").set_value("0:1")
    app.checkbox(key="batch-pll").check().run()
    assert not app.exception, app.exception
    link = query_of(app)
    assert {k: link[k] for k in ("text_unit", "strategy", "p_mlm_probability", "seed", "sweep", "rates", "also",
                                 "seeds", "heads", "pll")} == {
        "text_unit": "paragraph", "strategy": "whole-word", "p_mlm_probability": "0.3", "seed": "4",
        "sweep": "true", "rates": "0.2,0.5", "also": "span", "seeds": "2", "heads": "0:1", "pll": "true"}
    plan = next(e.label for e in app.expander if "configuration(s)" in e.label)
    assert plan == "4 configuration(s) × 2 seed(s)"  # (whole-word, span) × (0.2, 0.5)

    again = open_page(tiny_model_dir, **link)  # a fresh session that has only the link
    for kind, key in SETTINGS:
        assert getattr(again, kind)(key=key).value == getattr(app, kind)(key=key).value, key
    assert next(e.label for e in again.expander if "configuration(s)" in e.label) == plan
    assert not warnings(again)


def test_a_fresh_page_has_a_short_link(tiny_model_dir):
    app = open_page(tiny_model_dir)
    assert set(query_of(app)) == {"model", "strategy"}  # every other setting is at its default


def test_hostile_url_values_fall_back_with_a_message(tiny_model_dir):
    app = open_page(tiny_model_dir, seeds="abc", rates="zz", also="bogus", corpus="ftp", pll="maybe",
                    heads="<b>x</b>", text_unit="page", seed="-1")
    said = " ".join(warnings(app))
    for name in ("seeds", "rates", "also", "corpus", "pll", "heads", "text_unit", "seed"):
        assert f"link's {name}=" in said, name
    assert "<b>" not in said
    assert app.number_input(key="batch-seeds").value == 1
    assert app.text_input(key="batch-rates").value == ui.batch.DEFAULT_SWEEP
    assert app.multiselect(key="batch-strategies").value == []
    assert app.checkbox(key="batch-pll").value is WITH_PLL
    assert app.text_input(key="batch-heads").value == ""
    assert app.radio(key="batch-corpus-source").value.startswith("Demo")


def test_share_panel_has_the_link_and_says_uploads_stay_out(tiny_model_dir):
    app = upload(open_page(tiny_model_dir), "s.txt", SENTENCES)
    app.number_input(key="batch-seeds").set_value(3).run()
    link = open_share_panel(app, "batch")
    assert link.startswith("/batch?") and "seeds=3" in link and "corpus=upload" in link
    assert any("cannot travel in a link" in c.value for c in app.caption)


def test_the_estimate_is_in_time_from_the_measured_pace_and_options_say_their_cost(tiny_model_dir, monkeypatch):
    timed = []

    def measured(loaded, texts, **_):  # a slow machine: 10 tokens/s masked predictions, 5 tokens/s PLL
        timed.append(len(texts))
        return Throughput({"predict": 10.0, "pll": 5.0})

    monkeypatch.setattr(ui.batch, "measure_throughput", measured)
    app = upload(open_page(tiny_model_dir), "s.txt", SENTENCES)
    assert timed[-1] == 3  # timed on the texts being analysed (first the demo corpus the page opens with)
    assert app.checkbox(key="batch-pll").value is False  # the expensive option is off by default
    plan = next(m.value for m in app.markdown if "estimated time" in m.value)
    words = sum(len(s.split()) + 3 for s in SENTENCES.decode().splitlines())  # ~ tokens: at 10 per second, ~3 s
    assert "rows" not in plan and "about" in plan and " s**" in plan, plan
    assert 1 <= int(plan.split("estimated time **about ")[1].split(" ")[0]) <= words  # seconds, from 10 tokens/s
    assert "adds about" in app.checkbox(key="batch-pll").label and "here" in app.checkbox(key="batch-pll").label
    assert "adds about" in app.number_input(key="batch-seeds").label
    assert "adds about" in app.checkbox(key="batch-sweep").label
    app.checkbox(key="batch-pll").check().run()
    plan = next(m.value for m in app.markdown if "estimated time" in m.value)
    assert "masked predictions about" in plan and "pseudo-log-likelihood about" in plan, plan  # stages named


def display_values(element) -> pd.DataFrame:
    """What a styled dataframe shows in its cells (the Styler's display values)."""
    return pa.ipc.open_stream(element.proto.arrow_data.styler.display_values).read_all().to_pandas()


def test_the_hardest_sentences_are_grouped_and_blanks_are_not_none(tiny_model_dir):
    app = upload(open_page(tiny_model_dir), "s.txt", SENTENCES)
    app.checkbox(key="batch-sweep").check().run()
    app.text_input(key="batch-rates").set_value("0.3,0.6").run()
    run_analysis(app)
    hardest = next(d for d in app.dataframe if d.proto.id.endswith("batch-hard-sentences"))
    frame = hardest.value
    assert frame["sentence"].is_unique and len(frame) == 3  # one row per sentence, not one per configuration
    assert [c for c in frame.columns if c.startswith("log p · ")] == ["log p · random p=0.3", "log p · random p=0.6"]
    summary = next(d for d in app.dataframe if "top1_low" in d.value.columns)
    assert not summary.value.isna().any().any()  # no cell the grid would show as "None"
    assert "pll_per_token" not in summary.value  # not asked for: no column of blanks
    assert (summary.value["n"] > 0).all() and display_values(summary)["top1"].str.endswith("%").all()
    assert summary.value["top1"].dtype.kind == "f"  # complete columns stay numbers
    for element in app.dataframe:
        assert not element.value.isna().any().any(), element.value
