"""The Experiments page through AppTest: presets and their text, a grid set up by hand, starting an
experiment (its own process, killed by pid when the test ends), and a finished experiment's result.

A finished tiny experiment is trained once per module in this process and copied into each test's
MASKLAB_HOME.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time

import pytest
import torch
from support.apptest import clear_streamlit_caches, kill_running_jobs, open_app_page, shown_errors
from support.corpora import corpus_bytes

from mlm_core.training import TrainConfig, experiments
from mlm_core.training.experiment_presets import presets
from mlm_core.training.store import RunStore
from ui.identity import SESSION_OWNER_KEY

PAGE = "app_pages/experiments.py"
OWNER = "browser:0123456789abcdef"
HOSTILE = "<b>bold</b> [link](http://x)"
WAIT_S = 180


@pytest.fixture(scope="module")
def template_home(tmp_path_factory, tiny_model_dir):
    """A store holding one finished experiment: two configurations × two seeds of the tiny BERT."""
    home = tmp_path_factory.mktemp("experiments-home")
    store = RunStore(home / "runs")
    base = TrainConfig(model=str(tiny_model_dir), device="cpu", steps=2, batch_size=4, seq_len=32, eval_blocks=8,
                       lr=1e-3, heldout_fraction=0.2, corpus_name="tiny.txt")
    plan = experiments.make_plan(base, {"strategy": "random"}, seeds=2, title=HOSTILE,
                                 vary={"masking": ["static", "dynamic"]})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        experiment_id = experiments.create(store, plan, corpus_bytes(), owner=OWNER)
        assert experiments.drive(store, experiment_id)["status"] == experiments.EXP_FINISHED
    finally:
        torch.set_num_threads(threads)
    return home, experiment_id


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch, template_home):
    shutil.copytree(template_home[0], tmp_path / "home")
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    clear_streamlit_caches()
    yield
    store = RunStore(tmp_path / "home" / "runs")
    kill_running_jobs(store)
    for experiment_id in experiments.list_ids(store):  # a driver a test started, by its recorded pid
        pid = experiments.state_of(store, experiment_id).get("pid")
        if pid and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    clear_streamlit_caches()


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "home" / "runs")


def test_a_preset_shows_its_claim_limits_and_measured_answer():
    app = open_app_page(PAGE)
    preset = presets()["static-vs-dynamic"]
    assert app.selectbox(key="exp-preset").value == "static-vs-dynamic"  # the page opens on the best-known claim
    assert not app.exception, app.exception
    texts = " ".join(m.value for m in app.markdown) + " ".join(i.value for i in app.info)
    assert "The claim" in texts and "cannot show" in texts and "Measured" in texts
    assert "RoBERTa" in texts
    assert any("2 configurations × 3 seeds = 6 runs" in m.value for m in app.markdown)
    assert not app.button(key="exp-start").disabled
    assert preset.measured


def test_a_finished_experiment_reads_as_a_chart_a_table_and_a_report(template_home):
    _, experiment_id = template_home
    app = open_app_page(PAGE, {"experiment": experiment_id})
    assert not app.exception, app.exception
    assert any(experiment_id in m.value and "finished" in m.value for m in app.markdown)
    assert "<b>" not in " ".join(m.value for m in app.markdown)  # the title is shown escaped
    assert len(app.get("plotly_chart")) == 3  # accuracy, loss, perplexity: one tab each
    table = app.dataframe[-1]  # after the corpus preview
    assert set(table.value["configuration"]) == {"masking=static", "masking=dynamic"}
    assert {"mean", "ci_low", "ci_high", "runs"} <= set(table.value.columns)
    assert app.get("download_button")
    assert not {"exp-cancel", "exp-resume"} & {b.key for b in app.button}  # finished: nothing to act on


def own_grid(model_dir, key: str, values: str):
    """The page with "Your own grid" on ``model_dir``, varying ``key`` over the typed ``values``."""
    app = open_app_page(PAGE)
    app.radio(key="exp-how").set_value("Your own grid").run()
    app.selectbox(key="exp-model").set_value("Other: hub id or local folder").run()
    app.text_input(key="exp-model-other").set_value(str(model_dir)).run()
    app.selectbox(key="exp-vary-key-0").set_value(key).run()
    app.text_input(key="exp-vary-values-0").set_value(values).run()
    assert not app.exception, app.exception
    return app


def test_a_bad_grid_value_is_one_message_and_nothing_starts(tiny_model_dir, store):
    app = own_grid(tiny_model_dir, "masking", "static,sometimes")
    assert any("masking must be one of" in e for e in shown_errors(app))
    assert app.button(key="exp-start").disabled


def test_start_a_grid_follow_it_and_cancel_it(tiny_model_dir, store):
    app = open_app_page(PAGE, session={SESSION_OWNER_KEY: OWNER})
    app.radio(key="exp-how").set_value("Your own grid").run()
    app.selectbox(key="exp-model").set_value("Other: hub id or local folder").run()
    app.text_input(key="exp-model-other").set_value(str(tiny_model_dir)).run()
    app.number_input(key="exp-steps").set_value(200_000).run()  # long enough to be cancelled while it trains
    app.number_input(key="exp-batch_size").set_value(2)
    app.number_input(key="exp-seq_len").set_value(16)
    app.selectbox(key="exp-vary-key-0").set_value("masking").run()
    app.text_input(key="exp-vary-values-0").set_value("static,dynamic").run()
    app.number_input(key="exp-seeds").set_value(1).run()
    assert not shown_errors(app), shown_errors(app)
    app.button(key="exp-start").click().run()
    assert not app.exception, app.exception
    experiment_id = app.query_params["experiment"][0] if isinstance(app.query_params["experiment"], list) \
        else app.query_params["experiment"]
    deadline = time.monotonic() + WAIT_S
    while not experiments.state_of(store, experiment_id)["runs"]:
        assert time.monotonic() < deadline, "the experiment did not start its first run"
        time.sleep(1.0)
    app.run()
    app.button(key="exp-cancel").click().run()
    while experiments.state_of(store, experiment_id)["status"] != experiments.EXP_CANCELLED:
        assert time.monotonic() < deadline, "the experiment was not cancelled"
        time.sleep(1.0)
        app.run()
    app.run()
    assert not app.exception, app.exception
    assert app.button(key="exp-resume")  # offered to its owner
    (run_id,) = experiments.state_of(store, experiment_id)["runs"].values()
    assert store.get(run_id).status == "cancelled"


def test_a_varied_model_meets_the_servers_model_sources(tiny_model_dir):
    app = own_grid(tiny_model_dir, "model", "scratch-lstm,/etc")
    assert any("This server does not offer '/etc'" in e for e in shown_errors(app)), shown_errors(app)
    assert app.button(key="exp-start").disabled
