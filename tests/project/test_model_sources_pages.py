"""Models a browser may load, through the pages (AppTest): a link or a typed name reaches only what the
operator offers (model_sources, <MASKLAB_HOME>/models, the built-in model, runs of public models), and a
refusal says nothing about the server's files. The rule itself is tested in tests/models/test_model_sources.py.
"""

from __future__ import annotations

import re
import shutil

import pytest
from support.apptest import offering_server, open_app_page
from support.hostile import build_pickle_only

import mlm_core.model.loading
from mlm_core.model.sources import refusal_message
from mlm_core.policy import reload_policy
from mlm_core.settings import shown_value
from mlm_core.training import planning
from mlm_core.training.store import FINISHED, RUNNING, RunStore, run_ref
from ui.models import OTHER_MODEL
from ui.strategy import NONE

REFUSED = "This server does not offer"


@pytest.fixture
def server(tmp_path, monkeypatch, tiny_model_dir):
    """An operator who offers one folder (holding a real tiny model); a private folder beside it."""
    offered, private = tmp_path / "offered", tmp_path / "private"
    shutil.copytree(tiny_model_dir, offered / "tiny")
    shutil.copytree(tiny_model_dir, private / "secret")
    build_pickle_only(tiny_model_dir, private / "pickled", tmp_path / "ran")
    with offering_server(monkeypatch, tmp_path / "home", offered):
        yield tmp_path


@pytest.fixture
def loads(monkeypatch):
    """The name of every model read from disk (the shared cache and fresh copies both go through here)."""
    names = []
    real = mlm_core.model.loading._load_uncached

    def recording(name, device):
        names.append(name)
        return real(name, device)

    monkeypatch.setattr(mlm_core.model.loading, "_load_uncached", recording)
    return names


def everything_shown(app) -> str:
    blocks = [*app.markdown, *app.caption, *app.info, *app.warning, *app.error, *app.sidebar.markdown,
              *app.sidebar.caption, *app.sidebar.info, *app.sidebar.error]
    return "\n".join(str(block.value) for block in blocks)


def refusals(app) -> list[str]:
    """Every refusal on the page, sidebar included, once each, as the user reads it (unescaped)."""
    return [re.sub(r"\\(.)", r"\1", e.value) for e in app.error if REFUSED in e.value]


def refused_as(app, name: str) -> str:
    """The one refusal the page shows for ``name``, with the quoted name taken out."""
    shown = refusals(app)
    assert len(shown) == 1, shown
    assert shown[0] == refusal_message(name)
    return shown[0].replace(shown_value(name), "NAME")


def finished_run(home, base: str | None, model_source, name: str) -> str:
    """A finished run called ``name`` in ``home``'s store that started from ``base``; its model is a copy of
    ``model_source``."""
    store = RunStore(home / "runs")
    record, _ = store.create({"model": base, "strategy": "random", "strategy_params": {}})
    store.transition(record.id, RUNNING)
    store.transition(record.id, FINISHED)
    shutil.copytree(model_source, store.folder(record.id) / "model")
    store.rename(record.id, name)
    return record.id


def test_links_to_anything_not_offered_read_the_same_and_load_nothing(server, loads):
    names = ["/etc", str(server / "private" / "secret"), str(server / "private" / "pickled"),
             str(server / "private" / "nowhere"), str(server / "offered" / ".." / "private" / "secret"),
             "roberta-base"]
    rests = set()
    for name in names:
        app = open_app_page(None, {"model": name, "strategy": NONE, "text": "the cat [MASK] on the mat ."})
        rests.add(refused_as(app, name))
        shown = everything_shown(app)
        assert "pytorch_model.bin" not in shown and "config.json" not in shown and "not a folder" not in shown
    assert len(rests) == 1
    assert loads == []
    assert not (server / "ran").exists()


def test_typed_under_other_is_refused_the_same_way(server, loads):
    app = open_app_page(None, {"strategy": NONE})
    app.sidebar.selectbox(key="model_choice").set_value(OTHER_MODEL).run()
    assert any(str(server / "offered") in info.value or "folder the operator offers" in info.value
               for info in app.sidebar.info)  # the box says what this server accepts
    secret = str(server / "private" / "secret")
    app.sidebar.text_input(key="model_other").set_value(secret).run()
    assert not app.exception
    refused_as(app, secret)
    assert secret not in loads


def test_a_link_inside_the_offered_folder_pointing_out_is_refused(server, loads):
    escape = server / "offered" / "escape"
    escape.symlink_to(server / "private" / "secret", target_is_directory=True)
    app = open_app_page(None, {"model": str(escape), "strategy": NONE})
    refused_as(app, str(escape))
    assert loads == []


def test_an_offered_model_loads_by_any_spelling_and_is_listed_by_name(server, loads):
    offered = server / "offered"
    for spelling in (f"{offered}/tiny", f"{offered}//tiny/", f"{offered}/tiny/../tiny"):
        app = open_app_page(None, {"model": spelling, "strategy": NONE, "text": "the cat [MASK] on the mat ."})
        assert not refusals(app), spelling
        assert any("2 layers" in caption.value for caption in app.sidebar.caption), spelling
    picker = app.sidebar.selectbox(key="model_choice")
    assert "tiny" in picker.options and str(offered / "tiny") not in picker.options


def test_with_nothing_offered_the_other_box_says_so(server, monkeypatch):
    monkeypatch.setenv("MASKLAB_MODEL_SOURCES", "")
    reload_policy()
    app = open_app_page(None, {"strategy": NONE})
    app.sidebar.selectbox(key="model_choice").set_value(OTHER_MODEL).run()
    assert any("offers only the listed models" in info.value for info in app.sidebar.info)
    assert "tiny" not in app.sidebar.selectbox(key="model_choice").options


def test_compare_and_finetune_refuse_the_same_names(server, loads, monkeypatch):
    secret = str(server / "private" / "secret")
    tokenizer_reads = []
    real_source = planning._tokenizer_source
    monkeypatch.setattr(planning, "_tokenizer_source", lambda model: tokenizer_reads.append(model) or real_source(model))
    app = open_app_page("app_pages/compare.py", {"a_model": secret, "b_model": "/etc"})
    assert sorted(refusals(app)) == sorted([refusal_message(secret), refusal_message("/etc")])
    app = open_app_page("app_pages/finetune.py", {"model": secret})
    assert refusals(app) == [refusal_message(secret)]
    assert secret not in tokenizer_reads and loads == []  # Start from the folder would train on its weights
    offered = str(server / "offered" / "tiny")
    app = open_app_page("app_pages/finetune.py", {"model": offered})
    assert not refusals(app) and offered in tokenizer_reads


def test_a_run_from_a_private_folder_is_neither_loaded_nor_listed_nor_downloaded(server, loads):
    home = server / "home"
    private_run = finished_run(home, str(server / "private" / "secret"), server / "private" / "secret",
                               "from-the-private-folder")
    public_run = finished_run(home, None, server / "offered" / "tiny", "from-the-default")
    app = open_app_page(None, {"model": run_ref(private_run), "strategy": NONE})
    refused_as(app, run_ref(private_run))
    assert loads == []
    options = app.sidebar.selectbox(key="model_choice").options
    assert not any("from-the-private-folder" in option for option in options)
    assert any("from-the-default" in option for option in options)

    runs = open_app_page("app_pages/runs.py")
    for run_id, offered in ((private_run, False), (public_run, True)):
        runs.selectbox(key="runs-one").set_value(run_id).run()
        assert not runs.exception
        zips = [button for button in runs.get("download_button") if button.key == "act-zip"]
        assert bool(zips) == offered, run_id
        assert any("not downloadable here" in caption.value for caption in runs.caption) != offered
