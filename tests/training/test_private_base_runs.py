"""Runs the command line started from a private folder, as browsers see them: the Runs page (table, search,
compare, one run, probes) and the Fine-tune page's followed run never show that folder's path or name, offer
no explorer link and load no model; the command line, the local user's own tool, still shows the path.
"""

from __future__ import annotations

import json
import shutil

import pytest
from support.apptest import offering_server, open_app_page

import mlm_core.model.loading
import ui.runs
from mlm_core.cli.registry import main
from mlm_core.model.sources import browser_may_load
from mlm_core.training.planning import HIDDEN_MODEL, model_name
from mlm_core.training.run_table import config_table, run_label, run_reason, runs_table
from mlm_core.training.store import FAILED, FINISHED, RUNNING, RunStore
from ui.runs import PRIVATE_PROBES_NOTE

PRIVATE_NAME = "teacher-private-model-x7"  # distinctive: its last part must not show either


@pytest.fixture
def server(tmp_path, monkeypatch, tiny_model_dir):
    """An operator who offers one folder; the local user's private model folder beside it."""
    shutil.copytree(tiny_model_dir, tmp_path / "offered" / "tiny")
    shutil.copytree(tiny_model_dir, tmp_path / "home-of-teacher" / PRIVATE_NAME)
    with offering_server(monkeypatch, tmp_path / "home", tmp_path / "offered"):
        yield tmp_path


@pytest.fixture
def private(server) -> str:
    return str(server / "home-of-teacher" / PRIVATE_NAME)


@pytest.fixture
def loads(monkeypatch):
    """The name of every model loaded: read from disk (shared cache or fresh copy) or asked of ui.runs."""
    names = []
    real_uncached, real_load = mlm_core.model.loading._load_uncached, ui.runs.load_model

    def reading(name, device):
        names.append(name)
        return real_uncached(name, device)

    def loading(name, *args, **kwargs):
        names.append(name)
        return real_load(name, *args, **kwargs)

    monkeypatch.setattr(mlm_core.model.loading, "_load_uncached", reading)
    monkeypatch.setattr(ui.runs, "load_model", loading)
    return names


def add_run(server, base: str | None, *, status: str = FINISHED, reason: str | None = None,
            name: str | None = None) -> str:
    """A run in the app's store that started from ``base`` (config as the command line writes it); a
    finished one has a copy of the tiny model as its model. Unnamed: the page makes its name."""
    store = RunStore(server / "home" / "runs")
    record, _ = store.create({"model": base, "strategy": "random", "strategy_params": {}, "steps": 4})
    store.transition(record.id, RUNNING)
    store.transition(record.id, status, **({"reason": reason} if reason else {}))
    if status == FINISHED:
        shutil.copytree(server / "offered" / "tiny", store.folder(record.id) / "model")
    if name:
        store.rename(record.id, name)
    return record.id


def every_string(app) -> str:
    """Everything the page sent to the browser, main area and sidebar: each element's message as text
    (markdown, captions, widget labels and options, charts' specs, dataframes' bytes) and each
    dataframe's cells, index and column names."""
    parts = []

    def walk(node):
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(app.main)
    walk(app.sidebar)
    for frame in app.dataframe:
        value = frame.value
        value = getattr(value, "data", value)  # a Styler's data
        parts += [str(cell) for cell in value.to_numpy().ravel()]
        parts += [str(label) for label in [*value.index, *value.columns]]
    return "\n".join(parts)


def assert_hidden(app, private: str) -> None:
    shown = every_string(app)
    assert private not in shown and PRIVATE_NAME not in shown


def test_the_runs_page_never_shows_a_private_base_folder(server, private, loads):
    offered = str(server / "offered" / "tiny")
    public_run = add_run(server, offered, name="from-the-offered-folder")
    failed_run = add_run(server, private, status=FAILED,
                         reason=f"Cannot load the tokenizer of '{private}': {private}/tokenizer.json is damaged.")
    private_run = add_run(server, private)
    app = open_app_page("app_pages/runs.py")
    assert_hidden(app, private)
    table = app.dataframe[0].value.set_index("run")
    assert table.loc[private_run, "model"] == HIDDEN_MODEL
    assert HIDDEN_MODEL in table.loc[private_run, "name"]  # the name made from the settings names the model
    assert table.loc[public_run, "model"] == offered  # an offered folder is not hidden

    app.text_input(key="runs-search").set_value(PRIVATE_NAME).run()  # the search cannot probe the path either
    assert app.dataframe[0].value.empty
    app.text_input(key="runs-search").set_value("").run()

    app.multiselect(key="runs-compare").set_value([private_run, failed_run, public_run]).run()
    assert_hidden(app, private)
    settings = app.dataframe[1].value
    settings = getattr(settings, "data", settings)
    assert HIDDEN_MODEL in list(settings.loc["model"]) and offered in list(settings.loc["model"])

    for run_id in (failed_run, private_run):
        app.selectbox(key="runs-one").set_value(run_id).run()
        assert not app.exception
        assert_hidden(app, private)
        assert not [button for button in app.button if button.key in ("act-explore", "probe-run")]
        if run_id == failed_run:  # its reason quoted the folder: redacted
            assert any(caption.value.startswith("Reason:") and "a model not offered" in caption.value
                       for caption in app.caption)
    assert any(info.value == PRIVATE_PROBES_NOTE for info in app.info)
    assert loads == []  # neither the private base nor the run's model was loaded

    app.selectbox(key="runs-one").set_value(public_run).run()
    assert [button for button in app.button if button.key == "act-explore"]
    assert [button for button in app.button if button.key == "probe-run"]
    assert loads == []  # probes load on request only


def test_a_followed_private_run_on_the_finetune_page_hides_its_base(server, private):
    private_run = add_run(server, private)
    app = open_app_page("app_pages/finetune.py", {"run": private_run})
    shown = every_string(app)
    assert f"run {private_run}" in shown and HIDDEN_MODEL in shown  # the followed run is there, its base hidden
    assert_hidden(app, private)


def test_the_command_line_still_shows_the_path(server, private, capsys):
    private_run = add_run(server, private)
    assert main(["runs", "show", private_run, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["model"] == private
    assert main(["runs", "show", private_run]) == 0
    assert PRIVATE_NAME in capsys.readouterr().out  # the name made from the settings, by the folder's name
    assert main(["runs", "list", "--json"]) == 0
    assert private in capsys.readouterr().out


def test_names_hide_only_what_browsers_may_not_load(server, private):
    offered = str(server / "offered" / "tiny")
    assert model_name(private) == private
    assert model_name(private, reveal=browser_may_load) == HIDDEN_MODEL
    assert model_name(f"{server}/offered/../home-of-teacher//{PRIVATE_NAME}/", reveal=browser_may_load) == HIDDEN_MODEL
    assert model_name("teacher/private-exam-model", reveal=browser_may_load) == HIDDEN_MODEL  # an unlisted hub id
    assert model_name(offered, reveal=browser_may_load) == offered
    never = lambda name: False  # noqa: E731 - a rule that reveals nothing
    assert model_name("scratch-lstm", reveal=never) == "scratch-lstm"
    assert model_name("run:ab12cd", reveal=never) == "run ab12cd"
    assert model_name(None, reveal=never) == model_name(None)
    assert model_name(["a", "list"], reveal=never) == HIDDEN_MODEL  # a damaged config


def test_reasons_labels_and_settings_are_redacted_for_browsers(server, private):
    spelled = f"{server}/home-of-teacher/./{PRIVATE_NAME}/"  # as typed; loaders quote the resolved path
    run_id = add_run(server, spelled, status=FAILED, reason=f"Cannot read {private}/config.json (from {spelled}).")
    record = RunStore(server / "home" / "runs").get(run_id)
    reason = run_reason(record, browser_may_load)
    assert PRIVATE_NAME not in reason and reason.startswith(f"Cannot read {HIDDEN_MODEL}/config.json")
    assert run_reason(record) == record.reason  # the command line's
    label = run_label(record, reveal=browser_may_load)
    assert PRIVATE_NAME not in label and HIDDEN_MODEL in label
    assert PRIVATE_NAME in run_label(record)
    table = config_table({label: record.config}, reveal=browser_may_load)
    assert table.loc["model", label] == HIDDEN_MODEL
    assert config_table({"run": record.config}).loc["model", "run"] == spelled
    frame = runs_table([record], reveal=browser_may_load)
    assert PRIVATE_NAME not in " ".join(map(str, frame.iloc[0]))
