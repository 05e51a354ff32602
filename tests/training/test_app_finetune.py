"""The Fine-tune page through AppTest: corpus checks, preview, start a tiny run, follow it, cancel it.

Runs go to a temporary MASKLAB_HOME; every job process a test starts is killed by its pid
(read from that store) when the test ends. AppTest runs no JavaScript, so the live fragment
is exercised by re-running the page; tests/browser/ watches the real polling.
"""

from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest
from support.apptest import clear_streamlit_caches, kill_running_jobs, open_app_page, open_share_panel
from support.apptest import shown_errors as errors
from support.corpora import corpus_bytes

from mlm_core.training import TrainConfig, jobs
from mlm_core.training.store import CANCELLED, FINAL_STATES, FINISHED, RUNNING
from ui.corpus import UPLOAD
from ui.identity import SESSION_OWNER_KEY

PAGE = "app_pages/finetune.py"
WAIT_S = 150  # a job process imports torch and transformers on a busy 2-core machine


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # job processes: one thread each
    monkeypatch.setenv("MASKLAB_MAX_RUNS", "1")
    clear_streamlit_caches()
    yield
    clear_streamlit_caches()


@pytest.fixture
def store():
    """The page's run store; afterwards, kill the job processes still alive among its runs (by pid)."""
    store = jobs.default_store()
    yield store
    kill_running_jobs(store)


def open_page(**query) -> AppTest:
    return open_app_page(PAGE, query)


def upload(app: AppTest, name: str, data: bytes) -> AppTest:
    app.radio(key="ft-corpus-source").set_value(UPLOAD).run()
    app.get("file_uploader")[0].set_value((name, data, "application/octet-stream"))
    app.run()
    assert not app.exception, app.exception
    return app


def tiny_settings(app: AppTest, model_dir, steps: int) -> AppTest:
    """Upload a corpus over the tiny vocabulary, choose the tiny BERT and small sizes."""
    upload(app, "tiny.txt", corpus_bytes())
    app.selectbox(key="ft-model").set_value("Other: hub id or local folder").run()
    app.text_input(key="ft-model-other").set_value(str(model_dir)).run()
    app.number_input(key="ft-steps").set_value(steps)
    app.number_input(key="ft-batch").set_value(4)
    app.number_input(key="ft-seq").set_value(32)
    app.number_input(key="ft-lr").set_value(1e-3)
    app.run()
    assert not app.exception, app.exception
    assert not errors(app), errors(app)
    return app



def start(app: AppTest) -> AppTest:
    app.button(key="ft-start").click().run()
    assert not app.exception, app.exception
    return app


def wait_for_state(app: AppTest, store, run_id: str, states, timeout: float = WAIT_S):
    """Re-run the page (as the fragment's timer would) until the run reaches one of ``states``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.run()
        assert not app.exception, app.exception
        if store.get(run_id).status in states:
            app.run()  # the page as it looks once the run has ended
            return store.get(run_id)
        time.sleep(1.0)
    raise AssertionError(f"run {run_id} stayed {store.get(run_id).status} for {timeout} s")


def test_demo_corpus_shows_preview_device_and_estimate(store):
    app = open_page()
    assert not errors(app)
    captions = [c.value for c in app.caption]
    assert any("3,000 texts" in c for c in captions)  # the demo corpus: size and counts
    assert sum(c.startswith("Block ") for c in captions) == 3  # three corrupted training examples...
    more = next(e for e in app.expander if e.label.endswith("more examples"))  # ...one shown, the others folded
    assert more.label == "2 more examples" and sum(c.value.startswith("Block ") for c in more.caption) == 2
    chips = [m.value for m in app.markdown if 'title="' in m.value]
    assert len(chips) == 3 and all("[MASK]" in c for c in chips)
    summary = next(m.value for m in app.markdown if m.value.startswith("**Device:**"))
    assert "CPU" in summary or "NVIDIA" in summary
    assert "estimated time" in summary
    basis = next(c for c in captions if c.startswith("Estimated from"))
    assert "no finished run" in basis  # nothing measured here yet: said so
    for part in ("start-up", "training", "evaluation", "checkpoints", "final save"):
        assert part in basis
    disk = next(c for c in captions if c.startswith("**Disk:**"))
    assert "MB once finished" in disk and "while it runs" in disk
    # Start, the estimate and the disk use come before the corpus, the model and the masking.
    order = [e.value for e in app.main if getattr(e, "type", "") in ("markdown", "header", "button")]
    assert order.index(summary) < order.index("1 · Corpus")
    assert [e.key for e in app.main if getattr(e, "type", "") in ("button", "header")][:2] == ["ft-start", None]
    assert not app.button(key="ft-start").disabled


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("ragged.csv", b"id,text\n1,the cat\n2,the dog,extra\n", "Line 3"),
        ("bad.jsonl", b'{"text": "the cat"}\n{"text": oops}\n', "Line 2"),
        ("empty.csv", b"text\n", "has no text"),
        ("binary.txt", b"\x00\x01\x02" * 100, "binary"),
        ("long.txt", b"ok line\n" + b"x" * 100_001 + b"\n", "Line 2"),
    ],
)
def test_bad_uploads_are_rejected_naming_the_line(store, name, data, expected):
    app = upload(open_page(), name, data)
    assert any(expected in e for e in errors(app)), errors(app)
    assert app.button(key="ft-start").disabled  # nothing can start from a bad file
    assert store.list() == []


def test_table_upload_offers_a_column_picker_and_html_names_stay_text(store):
    data = b"id,review,label\n" + b"".join(b"%d,the cat sat on the mat number %d,pos\n" % (i, i) for i in range(40))
    app = upload(open_page(), "<img src=x onerror=alert(1)>.csv", data)
    assert app.selectbox(key="ft-corpus-column").value == "review"  # the preferred name is chosen
    summary = next(c.value for c in app.caption if "texts" in c.value)
    assert "<img" not in summary and "&lt;img" in summary
    app.selectbox(key="ft-corpus-column").set_value("label").run()
    assert not app.exception
    assert app.dataframe[0].value.iloc[0, 0] == "pos"  # the preview follows the chosen column


def test_start_a_tiny_run_follow_it_to_the_end(store, tiny_model_dir):
    app = tiny_settings(open_page(), tiny_model_dir, steps=8)
    request = app.session_state["ft-request"]
    start(app)
    runs = store.list()
    assert len(runs) == 1  # the run appears at once...
    run_id = runs[0].id
    assert app.query_params["run"] == [run_id] or app.query_params["run"] == run_id  # ...in the URL
    assert app.get("progress"), "the live panel shows a progress bar"
    config = runs[0].config
    assert config["model"] == str(tiny_model_dir) and config["steps"] == 8 and config["seq_len"] == 32
    assert config["corpus_name"] == "tiny.txt"
    start(app)  # a second click with the same request: no second run
    assert len(store.list()) == 1
    assert any("second click" in i.value for i in app.info)
    assert app.session_state["ft-request"] == request
    record = wait_for_state(app, store, run_id, FINAL_STATES)
    assert record.status == FINISHED, record.reason
    bar = app.get("progress")[0]
    assert bar.value == 100 and "finished" in bar.text
    titles = [c.proto.spec for c in app.get("plotly_chart")]
    assert len(titles) == 4 and any("held-out perplexity" in t for t in titles)
    assert any("masked-token accuracy" in t for t in titles)
    # The next estimate on this model and device comes from the finished run.
    app.number_input(key="ft-steps").set_value(9).run()
    assert app.session_state["ft-request"] != request  # renewed: the next Start is a new run
    basis = next(c.value.replace("\\", "") for c in app.caption if c.value.startswith("Estimated from"))
    assert f"run {run_id} measured on this device" in basis


def test_cancel_a_running_run_and_come_back_to_it(store, tiny_model_dir):
    app = tiny_settings(open_page(), tiny_model_dir, steps=200_000)
    start(app)
    run_id = store.list()[0].id
    deadline = time.monotonic() + WAIT_S
    while store.get(run_id).status != RUNNING or store.get(run_id).step == 0:  # a job that is really training
        assert time.monotonic() < deadline, "the job did not start training"
        time.sleep(1.0)
    # A new session of the same browser (closed and opened again: the same owner) re-attaches from the URL
    # and can cancel.
    again = open_app_page(PAGE, {"run": run_id}, session={SESSION_OWNER_KEY: app.session_state[SESSION_OWNER_KEY]})
    assert any(run_id in m.value for m in again.markdown)
    again.button(key=f"cancel-{run_id}").click().run()
    record = wait_for_state(again, store, run_id, FINAL_STATES)
    assert record.status == CANCELLED
    assert "cancelled" in again.get("progress")[0].text


def test_unknown_run_in_the_url_is_a_message(store):
    app = open_page(run="20990101-000000-abcdef")
    assert any("no run" in w.value for w in app.warning)
    assert not app.get("progress")


def test_a_queued_run_from_elsewhere_is_followed(store, tiny_model_dir):
    config = TrainConfig(model=str(tiny_model_dir), steps=2, batch_size=2, seq_len=16, corpus_name="c.txt")
    owner = "browser:00000000000000aa"  # started in another tab of this browser
    record, _ = jobs.submit(store, config, corpus_bytes(40), launch=False, owner=owner)
    app = open_app_page(PAGE, {"run": record.id}, session={SESSION_OWNER_KEY: owner})
    bar = app.get("progress")[0]
    assert bar.value == 0 and "queued" in bar.text
    app.button(key=f"cancel-{record.id}").click().run()
    assert store.get(record.id).status == CANCELLED
    assert "cancelled" in app.get("progress")[0].text
    app.button(key=f"unfollow-{record.id}").click().run()
    assert not app.exception, app.exception
    assert not app.get("progress") and "run" not in app.query_params


def test_a_followed_run_deleted_elsewhere_is_let_go(store, tiny_model_dir):
    config = TrainConfig(model=str(tiny_model_dir), steps=2, batch_size=2, seq_len=16, corpus_name="c.txt")
    record, _ = jobs.submit(store, config, corpus_bytes(40), launch=False)
    app = open_page(run=record.id)
    assert app.get("progress")
    store.request_cancel(record.id)
    store.delete(record.id)  # e.g. from the Runs page in another tab
    app.run()
    assert not app.exception, app.exception
    assert not app.get("progress") and "run" not in app.query_params


def query_of(app: AppTest) -> dict:
    return {key: app.query_params[key] for key in app.query_params}


def warnings(app: AppTest) -> list[str]:
    """Warning texts as shown (Markdown escapes removed)."""
    return [w.value.replace("\\", "") for w in app.warning]


SETTINGS = [("radio", "ft-corpus-unit"), ("selectbox", "ft-model"), ("text_input", "ft-model-other"),
            ("selectbox", "ft-strategy"), ("number_input", "ft-seed"), ("radio", "ft-masking"),
            ("radio", "ft-schedule"), ("slider", "ft-rate-start"), ("slider", "ft-rate-end"), ("radio", "ft-unit"), ("number_input", "ft-epochs"),
            ("number_input", "ft-batch"), ("number_input", "ft-seq"), ("number_input", "ft-lr"),
            ("multiselect", "ft-freeze"), ("number_input", "ft-eval"), ("number_input", "ft-ckpt")]


def test_every_setting_round_trips_through_the_url(store, tiny_model_dir):
    app = open_page()
    assert set(query_of(app)) == {"strategy"}  # a fresh page: every other setting at its default, a short link
    app.selectbox(key="ft-model").set_value("Other: hub id or local folder").run()
    app.text_input(key="ft-model-other").set_value(str(tiny_model_dir))
    app.selectbox(key="ft-strategy").set_value("whole-word").run()
    app.number_input(key="ft-seed").set_value(5)
    app.radio(key="ft-schedule").set_value("linear").run()  # static refuses a moving rate: test_static_masking
    app.slider(key="ft-rate-start").set_value(0.4)
    app.slider(key="ft-rate-end").set_value(0.1)
    app.radio(key="ft-unit").set_value("epochs").run()
    app.number_input(key="ft-epochs").set_value(2.5)
    app.number_input(key="ft-batch").set_value(8)
    app.number_input(key="ft-seq").set_value(32)
    app.number_input(key="ft-lr").set_value(1e-3)
    app.multiselect(key="ft-freeze").set_value(["embeddings", "layer.0"])
    app.number_input(key="ft-eval").set_value(10)
    app.number_input(key="ft-ckpt").set_value(2).run()
    assert not app.exception and not errors(app), errors(app)
    link = query_of(app)
    assert link == {"model": str(tiny_model_dir), "strategy": "whole-word", "seed": "5",
                    "schedule": "linear", "rate_start": "0.4", "rate_end": "0.1", "length_in": "epochs",
                    "epochs": "2.5", "batch": "8", "seq_len": "32", "lr": "0.001", "freeze": "embeddings,layer.0",
                    "eval_every": "10", "checkpoint_evals": "2"}

    again = open_page(**link)  # a fresh session (a colleague's browser) that has only the link
    assert not errors(again) and not warnings(again)
    for kind, key in SETTINGS:
        assert getattr(again, kind)(key=key).value == getattr(app, kind)(key=key).value, key
    blocks = [c.value for c in app.caption if c.value.startswith("Block ")]
    assert len(blocks) == 3 and blocks == [c.value for c in again.caption if c.value.startswith("Block ")]
    chips = [m.value for m in app.markdown if 'title="' in m.value]
    assert chips == [m.value for m in again.markdown if 'title="' in m.value]  # the same corrupted examples
    code = open_share_panel(again, "finetune")
    assert code.startswith("/finetune?") and "schedule=linear" in code
    assert any("cannot travel in a link" in c.value for c in again.caption)


def test_hostile_url_values_fall_back_with_a_message(store):
    app = open_page(steps="abc", lr="-1", masking="weird", schedule="linear", rate_start="5", rate_end="x", freeze="layer.99",
                    batch="0", length_in="years", corpus="ftp", text_unit="x", seed="abc", strategy="<i>nope</i>")
    said = " ".join(warnings(app))
    for name in ("steps", "lr", "masking", "rate_start", "rate_end", "freeze", "batch", "length_in", "corpus", "text_unit", "seed",
                 "strategy"):
        assert f"link's {name}=" in said, name
    assert "<i>" not in said
    assert app.radio(key="ft-schedule").value == "linear"  # the valid part of the link is kept
    assert app.slider(key="ft-rate-start").value == 0.3  # the sliders' own defaults for random at 15%
    assert app.slider(key="ft-rate-end").value == 0.15
    assert "rate_start" not in app.query_params and "rate_end" not in app.query_params  # defaults stay out
    assert app.number_input(key="ft-steps").value == 200 and app.number_input(key="ft-batch").value == 16
    assert app.number_input(key="ft-lr").value == 5e-5 and app.multiselect(key="ft-freeze").value == []
    assert app.radio(key="ft-masking").value == "dynamic" and app.selectbox(key="ft-strategy").value == "random"
    assert not app.button(key="ft-start").disabled  # a usable page, not a traceback


def test_an_unknown_model_in_the_url_is_a_message(store):
    app = open_page(model="no-such-org/no-such-model")
    assert app.selectbox(key="ft-model").value == "Other: hub id or local folder"
    assert app.text_input(key="ft-model-other").value == "no-such-org/no-such-model"
    assert errors(app) and app.button(key="ft-start").disabled
