"""Hostile input through the pages (Streamlit AppTest): every row of RELIABILITY.md's bad-input tables
that the page suites (tests/test_app_*.py) did not cover yet. Each test names its row.

The CLI twins are in tests/cli/test_hostile_cli.py; the parsers' property tests in tests/text/test_corpus.py and
tests/masking/test_masking_properties.py; the fuzzers in tests/fuzz/. AppTest runs no JavaScript, so "shown as
literal text" is checked on what the page hands to the browser: the escaped form in every block that
may hold HTML, and no raw tag anywhere.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from streamlit.testing.v1 import AppTest
from support.apptest import clear_streamlit_caches, kill_running_jobs, open_app_page
from support.apptest import shown_errors as errors
from support.corpora import corpus_bytes
from support.hostile import (
    HOSTILE_TOKENS,
    INVISIBLE_ONLY,
    LONG_FILLER,
    ODD_SCRIPTS,
    PAYLOAD,
    build_gpt2,
    build_hostile_vocab_bert,
    build_pickle_only,
    build_tiny_roberta,
)

import mlm_core.explain.exploration
from mlm_core.policy import reload_policy
from mlm_core.text.corpus import MAX_CORPUS_BYTES
from mlm_core.text.tokens import tokenize
from mlm_core.training import TrainConfig, jobs
from mlm_core.views.html import escape_markdown
from ui.corpus import UPLOAD
from ui.strategy import NONE


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))  # runs and results of one test stay in it
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    clear_streamlit_caches()
    yield
    clear_streamlit_caches()


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    return build_tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="module")
def hostile_vocab_dir(tmp_path_factory):
    return build_hostile_vocab_bert(tmp_path_factory.mktemp("hostile-vocab"))


@pytest.fixture
def model_calls(monkeypatch):
    """Every call the explorer makes to the model's predict (the page reaches it only through explore)."""
    calls = []
    real = mlm_core.explain.exploration.predict

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(mlm_core.explain.exploration, "predict", counting)
    return calls


def explorer(model_dir, text: str | None = None, **query) -> AppTest:
    """The Explore page on ``model_dir`` (no masking strategy unless one is given), run once."""
    params = {"model": str(model_dir), "strategy": NONE, **query}
    if text is not None:
        params["text"] = text
    return open_app_page(None, params)


def type_text(app: AppTest, text: str) -> AppTest:
    app.text_area(key="text").input(text).run()
    assert not app.exception, app.exception
    return app



def topk_charts(app: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in app.get("plotly_chart") if c.key.startswith("topk-")]


def token_strip(app: AppTest) -> str:
    return next(m.value for m in app.markdown if m.allow_html)  # the page draws its chips first


def everything_shown(app: AppTest) -> list[str]:
    """The text of every element that renders Markdown or HTML, in the main area and the sidebar."""
    kinds = ("markdown", "caption", "error", "warning", "info", "success", "title", "header", "subheader")
    return [el.value for kind in kinds for el in (*app.get(kind), *app.sidebar.get(kind))]


# ----------------------------------------------------------------------------- bad text input


@pytest.mark.parametrize("text", INVISIBLE_ONLY, ids=["control", "bidi", "zero-width"])
def test_invisible_text_says_nothing_to_mask_without_a_model_call(tiny_model_dir, model_calls, text):
    # RELIABILITY "Bad text input", row 1: only control / bidi / zero-width characters -> "nothing to mask",
    # no model call (the page suite covers empty and spaces).
    app = explorer(tiny_model_dir)  # the default sentence: one model call
    model_calls.clear()
    type_text(app, text)
    assert any("Nothing to mask" in e for e in errors(app)), errors(app)
    assert topk_charts(app) == []
    assert model_calls == []


def test_rules_that_leave_nothing_name_the_rule(tiny_model_dir, model_calls):
    # Row 2: no maskable token after the rules (only stopwords, punctuation) -> the message names them.
    app = explorer(tiny_model_dir, "the of and , .", strategy="random", protect="stopwords,punctuation")
    message = next(e for e in errors(app) if "Nothing to mask" in e)
    assert "stopwords" in message and "punctuation" in message
    assert topk_charts(app) == [] and model_calls == []


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("[MASK] [MASK] [MASK]", {}),  # only masks
        ("the cat sat on the mat", {"strategy": "random", "p_mlm_probability": "1"}),  # a rate of 1
    ],
)
def test_masking_everything_is_refused_at_the_stated_cap(tiny_model_dir, model_calls, text, query):
    # Row 3: every token masked -> allowed up to a stated cap (80%), said in the message.
    app = explorer(tiny_model_dir, text, **query)
    assert any("limit is 80%" in e for e in errors(app)), errors(app)
    assert topk_charts(app) == [] and model_calls == []


def test_several_masks_are_labelled_independent_and_special_tokens_stay(tiny_model_dir):
    # Row 3: special tokens never masked; predictions labelled as independent unless joint filling is chosen.
    app = explorer(
        tiny_model_dir,
        "[MASK] cat sat on the mat and the dog ran in the [MASK]",
        strategy="random",
        p_mlm_probability="0.3",
    )
    assert any("independently" in i.value for i in app.info)
    strip = token_strip(app)
    assert strip.count(">[CLS]</span>") == 1 and strip.count(">[SEP]</span>") == 1
    chips = strip.split("<span")[1:]
    assert re.search(r'title="0"', chips[0]) and re.search(r'title="\d+"', chips[-1])  # untouched: no kind
    app.radio(key="fill").set_value("joint").run()
    assert not app.exception and not any("independently" in i.value for i in app.info)


def test_masks_at_both_ends_of_a_long_text_are_all_predicted(tiny_model_dir):
    # Row 4: longer than the model's maximum -> windowed around the masks with a notice; no mask dropped.
    app = explorer(tiny_model_dir, f"[MASK] {LONG_FILLER} [MASK]")
    titles = [spec["layout"]["title"]["text"] for spec in topk_charts(app)]
    assert len(titles) == 2 and titles[0].startswith("position 1 ")
    assert any("window" in i.value for i in app.info)


def test_the_active_mask_token_is_shown_and_only_it_is_honoured(tiny_model_dir, roberta_dir):
    # Row 5: the typed mask token is honoured; the other model's stays text; the UI shows the active one.
    bert = explorer(tiny_model_dir, "the cat <mask> sat")
    assert any(m.value == "Mask token: `[MASK]`" for m in bert.sidebar.markdown)
    assert "[MASK]" in bert.text_area(key="text").label
    assert any("No masked position" in e for e in errors(bert)) and topk_charts(bert) == []

    roberta = explorer(roberta_dir, "the cat [MASK] sat")
    assert any(m.value == "Mask token: `<mask>`" for m in roberta.sidebar.markdown)
    assert "<mask>" in roberta.text_area(key="text").label
    assert any("No masked position" in e for e in errors(roberta))
    type_text(roberta, "the cat <mask> on the mat")
    assert not errors(roberta) and len(topk_charts(roberta)) == 1


def test_typed_control_strings_stay_text(tiny_model_dir, tiny_tokenizer):
    # Row 6: typed [CLS], [SEP], </s>, <pad> are text, never control tokens.
    text = "[CLS] the [MASK] [SEP] </s> <pad>"
    app = explorer(tiny_model_dir, text)
    assert len(topk_charts(app)) == 1
    strip = token_strip(app)
    assert strip.count(">[CLS]</span>") == 1 and strip.count(">[SEP]</span>") == 1  # only the frame's own
    tokens = tokenize(tiny_tokenizer, text)
    assert len(strip.split("<span")) - 1 == len(tokens)  # one chip per token, the typed ones as word pieces


def test_odd_scripts_render_without_an_error(tiny_model_dir, tiny_tokenizer):
    # Row 7: emoji, ZWJ, combining marks, RTL, CJK, NUL (and U+FFFD, what a browser sends for a lone
    # surrogate: it cannot put one in a request) -> no exception, one chip per token.
    app = explorer(tiny_model_dir, ODD_SCRIPTS)
    assert not errors(app) and len(topk_charts(app)) == 1
    tokens = tokenize(tiny_tokenizer, ODD_SCRIPTS)
    assert len(token_strip(app).split("<span")) - 1 == len(tokens)
    (pills,) = app.get("button_group")
    assert list(pills.options) == [
        tokens.tokens[i] for i in tokens.eligible_positions if tokens.ids[i] != tiny_tokenizer.mask_token_id
    ]


def test_html_in_a_vocabulary_stays_literal(hostile_vocab_dir):
    # Row 8: HTML/JS in vocabularies -> literal text in chips, charts and the filled-in sentence.
    app = explorer(hostile_vocab_dir, "the cat [MASK] sat")
    (spec,) = topk_charts(app)
    labels = spec["layout"]["yaxis"]["ticktext"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in labels  # Plotly decodes the entities: shown as typed
    assert not any("<" in label for label in labels)
    filled = next(m.value for m in app.markdown if m.value.startswith("**Filled in:**"))
    assert "&lt;" in filled  # the best guess is one of the tags
    for shown in everything_shown(app):
        assert not any(token in shown for token in HOSTILE_TOKENS), shown
    app.get("button_group")[0].set_value([2]).run()  # click "cat": its chart title names the original
    assert not app.exception and len(topk_charts(app)) == 2


def queued_run_named(payload: str):
    store = jobs.default_store()
    config = TrainConfig(
        model=payload, device="cpu", steps=2, batch_size=2, seq_len=16, corpus_name=f"{payload}.txt"
    )
    record, _ = jobs.submit(store, config, corpus_bytes(), launch=False)
    return store, record


@pytest.fixture
def models_shown(monkeypatch):
    """A server that offers any model ('*'): the run list then shows every model's name as typed (the
    default hides names browsers may not load), which is what these tests need to escape."""
    monkeypatch.setenv("MASKLAB_MODEL_SOURCES", "*")
    reload_policy()
    yield
    monkeypatch.undo()
    reload_policy()


def test_html_in_the_run_list_stays_literal(models_shown):
    # Row 8: HTML in the run list (a run's model and corpus names come from the user).
    store, record = queued_run_named(PAYLOAD)
    try:
        app = open_app_page("app_pages/runs.py")
        assert app.dataframe[0].value.iloc[0]["model"] == PAYLOAD  # a data grid shows cells as text
        assert record.id in app.selectbox(key="runs-one").value
        for shown in everything_shown(app):
            assert "<img" not in shown, shown
    finally:
        kill_running_jobs(store)


def test_a_failed_runs_reason_stays_literal(models_shown):
    # Row 8, run list: a failed run's reason quotes the model name the user typed. Streamlit shows raw HTML
    # in Markdown as text, but Markdown itself is live: this name would render as a link and bold text.
    name = f"[click](https://example.org) **{PAYLOAD}**"
    store, record = queued_run_named(name)
    assert jobs.execute(store, record.id).status == "failed"  # no such model: it fails before training
    app = open_app_page("app_pages/runs.py")
    reason = next(c.value for c in app.caption if c.value.startswith("Reason:"))
    assert escape_markdown(name) in reason


# ----------------------------------------------------------------------------- uploaded corpora


def batch_upload(model_dir, name: str, data: bytes) -> AppTest:
    app = open_app_page("app_pages/batch.py", {"model": str(model_dir)})
    app.radio(key="batch-corpus-source").set_value(UPLOAD).run()
    app.get("file_uploader")[0].set_value((name, data, "application/octet-stream"))
    app.run()
    assert not app.exception, app.exception
    return app


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("zero.txt", b"", "empty"),  # an empty file (the page suites cover header-only CSV)
        ("quote.csv", b'id,text\n1,"the cat\n', "Line 2"),  # an unterminated quote
        (
            "nul.txt",
            b"the cat sat.\nthe\x00dog ran.\n",
            "Line 2: the file contains NUL",
        ),  # NUL bytes mid-file
        ("field.csv", b'id,text\n1,"' + b"a" * 200_000 + b'"\n', "Line 2: one text has 200,000 characters"),
        ("nofield.jsonl", b'{"n": 1}\n', "Line 1: the object has no text field"),  # a missing text column
        ("invisible.txt", "\u200b\n\u200d\u200e\n \u2060\n".encode(), "invisible"),  # "nothing to mask" lines
        (
            f"{PAYLOAD}.jsonl",
            b'{"<b>": 1}\n',
            "&lt;img src=x onerror=alert(1)&gt;.jsonl cannot be used",  # errors() drops Markdown escapes
        ),
    ],
)
def test_bad_uploads_name_the_line_or_the_limit(tiny_model_dir, name, data, expected):
    # RELIABILITY "Uploaded corpora": each gets a clear message naming the line or the limit; nothing is
    # imported (no run button).
    app = batch_upload(tiny_model_dir, name, data)
    messages = errors(app)
    assert any(expected in e for e in messages), messages
    assert not [b for b in app.button if b.key == "batch-run"]
    for shown in everything_shown(app):
        assert "<img" not in shown  # the file name is quoted in the message, escaped


def test_a_file_over_the_size_limit_is_refused_naming_the_limit(tiny_model_dir, tmp_path):
    # "Uploaded corpora": a file over the size limit (50 MB, as the upload box says).
    app = batch_upload(tiny_model_dir, "big.txt", b"the cat sat.\n" * (MAX_CORPUS_BYTES // 13 + 1))
    assert any("the limit is 50 MB" in e for e in errors(app)), errors(app)
    assert not [b for b in app.button if b.key == "batch-run"]


@pytest.mark.parametrize(
    ("name", "data", "texts", "encoding", "notice"),
    [
        (
            "latin.txt",
            "crème brûlée\nthe cat\n".encode("latin-1"),
            ["crème brûlée", "the cat"],
            "cp1252",
            True,
        ),
        ("utf16.txt", "naïve\n東京\n".encode("utf-16"), ["naïve", "東京"], "utf-16", False),
        ("bom.csv", "\ufefftext,label\nthe cat,1\n".encode(), ["the cat"], "utf-8", False),
    ],
)
def test_other_encodings_are_read_and_said(tiny_model_dir, name, data, texts, encoding, notice):
    # "Uploaded corpora": Latin-1 / UTF-16 / BOM are read correctly; a guessed encoding is said.
    app = batch_upload(tiny_model_dir, name, data)
    assert not errors(app)
    caption = next(c.value for c in app.caption if "texts" in c.value)
    assert caption.endswith(encoding) and ("column text" in caption) == name.endswith(".csv")
    assert any("Windows-1252" in w.value for w in app.warning) == notice
    preview = next(d.value for d in app.dataframe if "first texts" in d.value.columns)
    assert preview["first texts"].tolist() == texts


def test_a_bad_upload_starts_no_run(tmp_path):
    # "Uploaded corpora": nothing is half imported (Fine-tune: no run in the store, Start disabled).
    store = jobs.default_store()
    app = open_app_page("app_pages/finetune.py")
    app.radio(key="ft-corpus-source").set_value(UPLOAD).run()
    app.get("file_uploader")[0].set_value(("zero.csv", b"", "text/csv"))
    app.run()
    assert not app.exception, app.exception
    assert any("empty" in e for e in errors(app))
    assert app.button(key="ft-start").disabled
    time.sleep(0.1)
    assert store.list() == []


# ----------------------------------------------------------------------------- models


def test_model_folders_that_must_not_load_are_refused_in_the_sidebar(tiny_model_dir, tmp_path):
    # RELIABILITY "Models": a pickle-only folder is refused before unpickling; a model without a mask
    # token (GPT-2) is refused with an explanation; the page shows the message, never a traceback.
    marker = tmp_path / "pickle-was-executed"
    pickled = build_pickle_only(tiny_model_dir, tmp_path / "pickled", marker)
    app = explorer(pickled, "the [MASK] sat")
    assert any("pickle" in e for e in errors(app)), errors(app)
    assert not marker.exists() and topk_charts(app) == []

    gpt2 = explorer(build_gpt2(tiny_model_dir, tmp_path / "gpt2"), "the [MASK] sat")
    assert any("masked language model" in e for e in errors(gpt2)), errors(gpt2)
    assert topk_charts(gpt2) == []


def test_the_tokenizer_lock_can_be_taken_again_by_its_holder(tiny_tokenizer):
    # Found by test_a_bad_upload_starts_no_run: the Fine-tune preview holds the tokenizer's lock around
    # training.pack, which takes it again for each encode; a plain Lock hung the page forever.
    import threading

    from mlm_core.text.tokens import tokenizer_lock

    done = threading.Event()

    def nested():
        with tokenizer_lock(tiny_tokenizer), tokenizer_lock(tiny_tokenizer):
            done.set()

    threading.Thread(target=nested, daemon=True).start()
    assert done.wait(10)
