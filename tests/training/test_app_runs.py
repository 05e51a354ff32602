"""The Runs page through AppTest: table, filters, compare, probes, explorer, resume, delete.

Finished tiny runs are trained once per module in this process (seconds) and copied into
each test's MASKLAB_HOME. A job process a test starts (resume) is killed by its pid from
that test's store when the test ends.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
import torch
from streamlit.testing.v1 import AppTest
from support.apptest import clear_streamlit_caches, kill_running_jobs, open_app_page
from support.corpora import corpus_bytes

from mlm_core.training import TrainConfig, jobs
from mlm_core.training.store import FINAL_STATES, FINISHED, INTERRUPTED, RUNNING, RunStore
from ui.identity import SESSION_OWNER_KEY
from ui.runs import LSTM_NOTE, TYPED

PAGE = "app_pages/runs.py"
OWNER = "browser:0123456789abcdef"  # the browser these tests open the page in; it started the runs
WAIT_S = 150


def tiny_config(model_dir, **overrides) -> TrainConfig:
    values = dict(model=str(model_dir), device="cpu", steps=4, batch_size=4, seq_len=32, lr=1e-3, eval_every=2,
                  eval_blocks=8, checkpoint_every=2, heldout_fraction=0.2, corpus_name="tiny.txt")
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def template_home(tmp_path_factory, tiny_model_dir):
    """A run store with three finished runs: random/dynamic, whole-word/static and a scratch LSTM."""
    home = tmp_path_factory.mktemp("runs-home")
    store = RunStore(home / "runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for config in (
            tiny_config(tiny_model_dir),
            tiny_config(tiny_model_dir, strategy="whole-word", masking="static", lr=5e-4),
            tiny_config(None, model="scratch-lstm", steps=2, batch_size=2, seq_len=16, eval_every=1),
        ):
            record, _ = jobs.submit(store, config, corpus_bytes(), launch=False, owner=OWNER)
            assert jobs.execute(store, record.id).status == FINISHED
            time.sleep(0.01)  # distinct creation times: a stable order
    finally:
        torch.set_num_threads(threads)
    return home


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch, template_home):
    shutil.copytree(template_home, tmp_path / "home")
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MASKLAB_MAX_RUNS", "1")
    clear_streamlit_caches()
    yield
    clear_streamlit_caches()


@pytest.fixture
def store():
    """This test's store; afterwards, kill the job processes still alive among its runs (by pid)."""
    store = jobs.default_store()
    yield store
    kill_running_jobs(store)


def runs_by_strategy(store) -> dict[str, str]:
    return {("lstm" if r.config["model"] == "scratch-lstm" else r.config["strategy"]): r.id for r in store.list()}


def open_page() -> AppTest:
    return open_app_page(PAGE, session={SESSION_OWNER_KEY: OWNER})


def choose(app: AppTest, run_id: str) -> AppTest:
    app.selectbox(key="runs-one").set_value(run_id).run()
    assert not app.exception, app.exception
    return app


def table(app: AppTest):
    return app.dataframe[0].value


def test_table_lists_filters_and_sorts(store):
    app = open_page()
    frame = table(app)
    assert len(frame) == 3
    assert {"status", "model", "strategy", "masking", "steps", "best held-out loss", "best accuracy", "device",
            "duration"} <= set(frame.columns)
    assert set(frame["status"]) == {"finished"} and set(frame["masking"]) == {"dynamic", "static"}
    assert frame["best held-out loss"].notna().all()
    app.multiselect(key="runs-status").set_value(["failed"]).run()
    assert len(table(app)) == 0
    app.multiselect(key="runs-status").set_value([]).run()
    app.text_input(key="runs-search").set_value("whole").run()
    assert list(table(app)["strategy"]) == ["whole-word"]
    app.text_input(key="runs-search").set_value("").run()
    app.selectbox(key="runs-sort").set_value("best held-out loss").run()
    app.toggle(key="runs-desc").set_value(False).run()
    losses = list(table(app)["best held-out loss"])
    assert losses == sorted(losses)


def test_a_run_not_evaluated_yet_shows_blanks_not_none(store, tiny_model_dir):
    """The grid draws a missing number as "None": a column with gaps becomes text, blank in the gaps."""
    jobs.submit(store, tiny_config(tiny_model_dir), corpus_bytes(), launch=False, owner=OWNER)  # queued: no loss yet
    frame = table(open_page())
    assert len(frame) == 4 and frame.notna().all().all()
    assert sorted(frame["best held-out loss"])[0] == ""
    assert all(float(v) > 0 for v in frame["best held-out loss"] if v)  # the others, as numbers in text


def test_compare_two_runs_overlays_curves_and_highlights_differences(store):
    ids = runs_by_strategy(store)
    app = open_page()
    app.multiselect(key="runs-compare").set_value([ids["random"], ids["whole-word"]]).run()
    assert not app.exception, app.exception
    specs = [json.loads(c.proto.spec) for c in app.get("plotly_chart")][:-4]  # the last four: the one-run view's
    titles = [s["layout"]["title"]["text"] for s in specs]
    assert {"train loss", "held-out loss", "held-out perplexity", "masked-token accuracy", "tokens/s"} <= set(titles)
    assert any(t.startswith("accuracy: ") for t in titles)  # by token category
    assert all(len(s["data"]) == 2 for s in specs)  # one curve per run on each chart
    assert all(trace["x"][-1] == 4 for s in specs for trace in s["data"])  # x = step
    configs = app.dataframe[1].value
    differing = list(configs.index[:3])
    assert {"masking", "strategy", "lr"} <= set(differing)  # differences first (and highlighted)
    app.toggle(key="compare-only").set_value(True).run()
    assert set(app.dataframe[1].value.index) == {"masking", "strategy", "lr"}
    (report,) = [b for b in app.get("download_button") if b.key == "compare-report"]
    assert report.proto.label == "Download this comparison as a standalone HTML report"


def test_before_after_probes_on_typed_sentences(store, tiny_model_dir):
    app = choose(open_page(), runs_by_strategy(store)["random"])
    app.radio(key="probe-source").set_value(TYPED).run()
    app.text_area(key="probe-text").set_value("the cat sat on the [MASK] . | mat\nthe dog ran .").run()
    app.button(key="probe-run").click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    probes = app.dataframe[1].value
    assert list(probes["sentence"]) == [1, 2, 2, 2, 2]  # one mask, then every token of "the dog ran ." in turn
    assert list(probes["original"]) == ["mat", "the", "dog", "ran", "."]
    assert probes["change"].notna().all()
    assert (probes["change"] - (probes["p after"] - probes["p before"])).abs().max() < 1e-9
    charts = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    assert len(charts) == 4 + 2  # the run's curves, then the top-k of the base model and of the run
    charts = charts[-2:]
    assert "before" in charts[0]["layout"]["title"]["text"] and "after" in charts[1]["layout"]["title"]["text"]


def test_preset_probes_run_on_the_shipped_sentences(store):
    app = choose(open_page(), runs_by_strategy(store)["whole-word"])
    app.button(key="probe-run").click().run()
    assert not app.exception and not app.error
    assert len(app.dataframe[1].value) >= 50  # the cloze list in assets/


def test_open_a_run_in_the_explorer(store):
    run_id = runs_by_strategy(store)["random"]
    app = choose(open_page(), run_id)
    app.button(key="act-explore").click().run()
    assert not app.exception, app.exception
    # The explorer's sidebar read ?model=run:ID and lists the run by name: no server path anywhere.
    assert app.query_params["model"] == f"run:{run_id}"
    assert app.selectbox(key="model_choice").value == f"run:{run_id}"
    assert not [t for t in app.sidebar.text_input if str(store.root) in str(t.value)]
    assert not app.sidebar.error, [e.value for e in app.sidebar.error]
    assert app.get("plotly_chart"), "the explorer predicted with the run's model"


def test_one_run_shows_its_curves_and_an_editable_name(store):
    run_id = runs_by_strategy(store)["whole-word"]
    app = choose(open_page(), run_id)
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in app.get("plotly_chart")]
    assert {"loss", "masked-token accuracy (overall and by category)"} <= set(titles)
    box = app.text_input(key=f"run-name-{run_id}")
    assert box.value.startswith("whole-word 15% static · ")  # named from its settings
    box.set_value("<b>ww</b> *run*").run()
    assert not app.exception, app.exception
    assert store.get(run_id).name == "<b>ww</b> *run*"
    assert app.text_input(key=f"run-name-{run_id}").value == "<b>ww</b> *run*"
    assert table(app).set_index("run").loc[run_id, "name"] == "<b>ww</b> *run*"
    assert not [m for m in app.markdown if "<b>ww" in m.value and m.allow_html]  # never rendered as HTML
    app.text_input(key=f"run-name-{run_id}").set_value("").run()
    assert store.get(run_id).name is None


def test_lstm_runs_open_in_the_explorer_like_any_model(store):
    app = choose(open_page(), runs_by_strategy(store)["lstm"])
    assert not any(LSTM_NOTE in c.value for c in app.caption)
    assert [b for b in app.button if b.key == "act-explore"]
    assert app.get("download_button"), "the model can be downloaded"


def test_download_offers_the_model_zip(store):
    app = choose(open_page(), runs_by_strategy(store)["random"])
    button = app.get("download_button")[0]
    assert button.label.endswith("(.zip)")


def test_resume_an_interrupted_run(store, tiny_model_dir):
    record, _ = jobs.submit(store, tiny_config(tiny_model_dir, steps=6), corpus_bytes(), launch=False, owner=OWNER)
    gone = subprocess.Popen(["true"])
    gone.wait()
    store.transition(record.id, RUNNING, pid=gone.pid)  # a job whose process died without a word
    app = choose(open_page(), record.id)  # listing the runs marks it interrupted
    assert store.get(record.id).status == INTERRUPTED
    app.button(key="act-resume").click().run()
    assert not app.exception, app.exception
    deadline = time.monotonic() + WAIT_S
    while store.get(record.id).status not in FINAL_STATES:
        assert time.monotonic() < deadline, f"the resumed run is still {store.get(record.id).status}"
        time.sleep(1.0)
    assert store.get(record.id).status == FINISHED, store.get(record.id).reason
    app.run()
    assert table(app).set_index("run").loc[record.id, "status"] == FINISHED


def test_delete_asks_for_confirmation_then_removes_the_files(store):
    run_id = runs_by_strategy(store)["whole-word"]
    folder = store.folder(run_id)
    app = choose(open_page(), run_id)
    app.button(key="act-delete").click().run()
    assert any("cannot be undone" in w.value for w in app.warning)
    app.button(key="act-delete-no").click().run()
    assert folder.exists() and len(store.list()) == 3
    app.button(key="act-delete").click().run()
    app.button(key="act-delete-yes").click().run()
    assert not app.exception, app.exception
    assert not folder.exists()
    assert run_id not in {r.id for r in store.list()}
    assert run_id not in set(table(app)["run"])


def test_follow_a_queued_run_live_from_the_runs_page(store, tiny_model_dir):
    record, _ = jobs.submit(store, tiny_config(tiny_model_dir), corpus_bytes(), launch=False, owner=OWNER)
    app = choose(open_page(), record.id)
    app.button(key="act-follow").click().run()
    assert not app.exception, app.exception
    bar = app.get("progress")[0]  # the Fine-tune page, following the run
    assert "queued" in bar.text and any(record.id in m.value for m in app.markdown)
    app.button(key=f"cancel-{record.id}").click().run()
    assert store.get(record.id).status == "cancelled"
