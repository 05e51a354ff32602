"""Which models a browser may load (mlm_core.model.sources): the operator's folders and hub ids, the
built-in model, finished runs of public models; resolved paths, so no spelling steps outside."""

from __future__ import annotations

import os
import shutil

import pytest

from mlm_core.errors import ModelLoadError
from mlm_core.model.default_model import DEFAULT_MODEL_NAME
from mlm_core.model.sources import (
    browser_may_download_run,
    browser_may_load,
    browser_model_options,
    check_browser_model,
    public_run_ids,
)
from mlm_core.policy import reload_policy, replace_policy
from mlm_core.settings import shown_value
from mlm_core.training.store import FINISHED, RUNNING, RunStore, run_ref

HUB_ID = "bert-base-uncased"


@pytest.fixture
def server(tmp_path, monkeypatch, tiny_model_dir):
    """A home, an offered folder with one real model in it, and a private folder with another."""
    offered, private = tmp_path / "offered", tmp_path / "private"
    shutil.copytree(tiny_model_dir, offered / "tiny")
    shutil.copytree(tiny_model_dir, private / "secret")
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MASKLAB_MODEL_SOURCES", os.pathsep.join([str(offered), HUB_ID]))
    monkeypatch.delenv("MASKLAB_CONFIG", raising=False)
    reload_policy()
    yield tmp_path
    monkeypatch.undo()
    reload_policy()


def finished_run(home, base: str | None) -> str:
    """A finished run in the store under ``home`` that started from ``base``, with a model folder."""
    store = RunStore(home / "runs")
    record, _ = store.create({"model": base})
    store.transition(record.id, RUNNING)
    store.transition(record.id, FINISHED)
    (store.folder(record.id) / "model").mkdir()
    return record.id


def refusal(name: str) -> str:
    with pytest.raises(ModelLoadError) as caught:
        check_browser_model(name)
    return str(caught.value)


def test_a_refusal_reads_the_same_whether_the_folder_exists_or_not(server):
    names = ["/etc", str(server / "private" / "secret"), str(server / "private" / "nothing-here"), "/"]
    messages = {refusal(name).replace(shown_value(name), "NAME") for name in names}
    assert len(messages) == 1
    (message,) = messages
    assert "This server does not offer NAME" in message and "model_sources" in message
    assert "config.json" not in message and "safetensors" not in message


def test_a_huge_name_is_quoted_cut_short(server):
    message = refusal("/" + "x" * 5000)
    assert len(message) < 400 and "…" in message


def test_the_operators_folders_and_anything_below_them(server):
    offered = server / "offered"
    assert browser_may_load(str(offered / "tiny"))
    assert browser_may_load(str(offered))
    assert browser_may_load(str(offered / "tiny") + "/")
    assert browser_may_load(str(offered).replace("/", "//") + "//tiny//")  # F/ and F// are one folder
    assert browser_may_load(str(offered / "missing"))  # inside: the loader says what is wrong with it
    check_browser_model(str(offered / "tiny"))  # no exception


@pytest.mark.parametrize("escape", ["offered/../private/secret", "offered/tiny/../../private/secret",
                                    "offered/..", "offered/../offered-not"])
def test_dot_dot_cannot_step_outside(server, escape):
    assert not browser_may_load(str(server / escape))


def test_a_name_that_starts_like_an_offered_folder_is_not_inside_it(server):
    (server / "offered-twin").mkdir()
    assert not browser_may_load(str(server / "offered-twin"))


def test_a_link_inside_an_offered_folder_pointing_out_is_refused(server):
    offered = server / "offered"
    (offered / "escape").symlink_to(server / "private" / "secret", target_is_directory=True)
    (offered / "etc").symlink_to("/etc", target_is_directory=True)
    (offered / "alias").symlink_to(offered / "tiny", target_is_directory=True)  # stays inside: fine
    assert not browser_may_load(str(offered / "escape"))
    assert not browser_may_load(str(offered / "etc" / "ssl"))
    assert browser_may_load(str(offered / "alias"))
    assert [label for _, label in browser_model_options()] == ["tiny"]  # the link out is not listed


def test_hub_ids_match_exactly(server):
    assert browser_may_load(HUB_ID)
    assert browser_may_load(f"  {HUB_ID} ")  # the loader strips the name too
    for other in ("bert-base-cased", HUB_ID.upper(), f"{HUB_ID}x", f"google/{HUB_ID}", "roberta-base"):
        assert not browser_may_load(other), other


def test_a_hub_id_that_names_a_local_folder_is_judged_as_the_folder(server, monkeypatch):
    monkeypatch.chdir(server / "private")
    assert not browser_may_load("secret")  # the loader would read ./secret, which nobody offered


def test_the_default_model_the_home_models_folder_and_odd_names(server):
    assert browser_may_load(DEFAULT_MODEL_NAME) and browser_may_load(None) and browser_may_load("")
    assert browser_may_load(str(server / "home" / "models" / "anything"))
    for odd in ("a\x00b", "~root", "~", "../" * 40 + "etc", "x" * 10_000):
        assert not browser_may_load(odd), odd[:20]


def test_nothing_extra_by_default_and_everything_with_a_star(server):
    private = str(server / "private" / "secret")
    assert not browser_may_load(HUB_ID, replace_policy(model_sources=()))
    assert not browser_may_load(str(server / "offered" / "tiny"), replace_policy(model_sources=()))
    anything = replace_policy(model_sources=("*",))
    assert browser_may_load(private, anything) and browser_may_load("/etc", anything)
    assert browser_may_load("roberta-base", anything)


def test_runs_are_as_public_as_the_model_they_started_from(server):
    home = server / "home"
    public = {
        "default": finished_run(home, None),
        "scratch": finished_run(home, "scratch-transformer"),
        "offered": finished_run(home, str(server / "offered" / "tiny")),
        "hub": finished_run(home, HUB_ID),
    }
    private = finished_run(home, str(server / "private" / "secret"))
    on_private = finished_run(home, run_ref(private))  # fine-tuned again: still the private weights
    on_public = finished_run(home, run_ref(public["offered"]))
    for run_id in [*public.values(), on_public]:
        assert browser_may_load(run_ref(run_id)) and browser_may_download_run(run_id), run_id
    for run_id in (private, on_private):
        assert not browser_may_load(run_ref(run_id))
        assert not browser_may_download_run(run_id)
        assert not browser_may_download_run(RunStore(home / "runs").get(run_id))
        assert refusal(run_ref(run_id)) == refusal(run_ref(run_id)).replace(str(server), "")  # no folder named
    assert browser_may_download_run(private, replace_policy(model_sources=("*",)))
    assert not browser_may_download_run("no-such-run")


def test_a_run_named_by_its_folder_is_judged_by_its_base(server):
    """Runs started before run:ID references stored their base as the run's model folder."""
    home = server / "home"
    private = finished_run(home, str(server / "private" / "secret"))
    on_folder = finished_run(home, str(home / "runs" / private / "model"))
    assert not browser_may_load(run_ref(on_folder))


def test_the_picker_lists_offered_model_folders_by_name(server):
    offered = server / "offered"
    (offered / "notes").mkdir()  # no config.json: not a model
    shutil.copytree(offered / "tiny", server / "home" / "models" / "classroom")
    options = browser_model_options()
    assert [label for _, label in options] == ["classroom", "tiny"]
    assert all(browser_may_load(name) for name, _ in options)
    narrowed = browser_model_options(replace_policy(model_sources=(str(offered / "tiny"),)))
    assert [label for _, label in narrowed] == ["classroom", "tiny"]  # a model folder offered itself


def test_one_pass_over_the_runs_agrees_with_each_check(server):
    home = server / "home"
    store = RunStore(home / "runs")
    public = finished_run(home, None)
    private = finished_run(home, str(server / "private" / "secret"))
    on_public, on_private = finished_run(home, run_ref(public)), finished_run(home, run_ref(private))
    gone = finished_run(home, None)
    on_gone = finished_run(home, run_ref(gone))
    store.delete(gone)  # what it started from can no longer be told: not offered
    assert public_run_ids(store.list()) == {public, on_public}
    assert {run_id for run_id in (public, private, on_public, on_private, on_gone)
            if browser_may_load(run_ref(run_id))} == {public, on_public}
    assert public_run_ids(store.list(), replace_policy(model_sources=("*",))) == {public, private, on_public,
                                                                                  on_private, on_gone}
