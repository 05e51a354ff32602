"""Runs belong to whoever started them: others may view them, not cancel, delete, rename, resume or download.

Two browsers, A and B, share one server (MASKLAB_HOME in tmp_path). The rule is checked in mlm_core
(ownership.py), on the Runs and Fine-tune pages through AppTest (B sees no buttons), and against
forged events (a page state B sets by hand still meets the check).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
from types import SimpleNamespace

import pytest
import streamlit
from streamlit.runtime.context import StreamlitCookies, StreamlitHeaders
from support.apptest import clear_streamlit_caches, open_app_page
from support.corpora import corpus_bytes

from mlm_core.policy import reload_policy, replace_policy
from mlm_core.training import TrainConfig, jobs, ownership
from mlm_core.training.store import (
    CANCELLED,
    FINISHED,
    INTERRUPTED,
    OWNER_FILE,
    QUEUED,
    RUNNING,
    RunError,
    RunStore,
)
from ui import identity
from ui.identity import SESSION_OWNER_KEY

ALICE, BOB = "browser:aaaaaaaaaaaaaaaa", "browser:bbbbbbbbbbbbbbbb"
RUNS_PAGE, FINETUNE_PAGE = "app_pages/runs.py", "app_pages/finetune.py"
ACTION_KEYS = {"act-cancel", "act-delete", "act-resume", "act-delete-yes"}


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MASKLAB_OTHERS_MAY_MANAGE_RUNS", raising=False)
    reload_policy()
    clear_streamlit_caches()
    yield
    monkeypatch.delenv("MASKLAB_OTHERS_MAY_MANAGE_RUNS", raising=False)
    clear_streamlit_caches()
    reload_policy()


@pytest.fixture
def store():
    return jobs.default_store()


def settings() -> TrainConfig:
    return TrainConfig(steps=2, batch_size=2, seq_len=16, corpus_name="tiny.txt")  # the default model


def start(store, owner: str):
    record, created = jobs.submit(store, settings(), corpus_bytes(40), launch=False, owner=owner)
    assert created
    return record


def finished_run(store, owner: str):
    """A run of ``owner`` that has finished with a model folder (no training: the states and the folder)."""
    record = start(store, owner)
    store.transition(record.id, RUNNING, pid=None)
    store.transition(record.id, FINISHED)
    model = store.folder(record.id) / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return store.get(record.id)


def interrupted_run(store, owner: str):
    record = start(store, owner)
    gone = subprocess.Popen(["true"])
    gone.wait()
    store.transition(record.id, RUNNING, pid=gone.pid)  # its process died without a word
    store.refresh()
    assert store.get(record.id).status == INTERRUPTED
    return record


def open_as(owner: str, page: str = RUNS_PAGE, **query):
    return open_app_page(page, query, session={SESSION_OWNER_KEY: owner})


def choose(app, run_id: str):
    app.selectbox(key="runs-one").set_value(run_id).run()
    assert not app.exception, app.exception
    return app


def keys_shown(app) -> set[str]:
    return {b.key for b in app.button} | {b.key for b in app.get("download_button")}


def captions(app) -> list[str]:
    return [c.value for c in app.caption]


# ----------------------------------------------------------------------------- the rule in mlm_core


def test_the_owner_is_stored_in_the_row_and_in_the_run_folder(store):
    record = start(store, ALICE)
    assert store.get(record.id).owner == ALICE
    assert json.loads((store.folder(record.id) / OWNER_FILE).read_text()) == {"owner": ALICE}
    cli_run, _ = jobs.submit(store, settings(), corpus_bytes(40), launch=False)  # the command line's
    assert cli_run.owner == ownership.local_owner() and cli_run.owner.startswith("local:")
    assert json.loads((store.folder(cli_run.id) / OWNER_FILE).read_text())["owner"] == cli_run.owner


def test_a_store_from_before_owners_gains_the_column_and_keeps_its_runs(tmp_path):
    root = tmp_path / "old-store"
    root.mkdir()
    with sqlite3.connect(root / "runs.sqlite") as db:  # the table as it was before runs had owners
        db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, request_id TEXT UNIQUE, created REAL NOT NULL, "
                   "updated REAL NOT NULL, status TEXT NOT NULL, cancel_requested INTEGER NOT NULL DEFAULT 0, "
                   "pid INTEGER, config TEXT NOT NULL, step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER, "
                   "best_heldout_loss REAL, best_accuracy REAL, device TEXT, reason TEXT, started REAL, "
                   "finished REAL, name TEXT)")
        db.execute("INSERT INTO runs (id, created, updated, status, config) VALUES "
                   "('20200101-000000-abcdef', 1, 1, 'finished', '{}')")
    store = RunStore(root)
    (old,) = store.list()
    assert old.owner is None
    assert not ownership.may_manage(old, ALICE)  # nobody's run from before: the operator's
    assert ownership.may_manage(old, ownership.local_owner())
    new, _ = store.create({}, owner=BOB)
    assert store.get(new.id).owner == BOB


def test_another_owner_cannot_cancel_delete_rename_or_resume(store):
    queued = start(store, ALICE)
    interrupted = interrupted_run(store, ALICE)
    for action in (lambda: ownership.cancel(store, queued.id, BOB),
                   lambda: ownership.delete(store, queued.id, BOB),
                   lambda: ownership.rename(store, queued.id, "mine now", BOB),
                   lambda: jobs.resume(store, interrupted.id, launch=False, by=BOB)):
        with pytest.raises(RunError, match="Started by another user"):
            action()
    assert store.get(queued.id).status == QUEUED and store.get(queued.id).name is None
    assert store.folder(queued.id).exists()
    assert store.get(interrupted.id).status == INTERRUPTED
    # The owner may; so may the machine's own user (the command line).
    assert ownership.rename(store, queued.id, "alice's", ALICE).name == "alice's"
    assert jobs.resume(store, interrupted.id, launch=False, by=ALICE).status == QUEUED
    assert ownership.cancel(store, queued.id, ownership.local_owner()).status == CANCELLED


def test_others_may_manage_when_the_operator_allows_it(store, monkeypatch):
    record = start(store, ALICE)
    assert not ownership.may_manage(record, BOB)
    assert ownership.may_manage(record, BOB, replace_policy(others_may_manage_runs=True))
    monkeypatch.setenv("MASKLAB_OTHERS_MAY_MANAGE_RUNS", "true")
    reload_policy()
    assert ownership.rename(store, record.id, "bob's", BOB).name == "bob's"
    assert ownership.cancel(store, record.id, BOB).status == CANCELLED
    ownership.delete(store, record.id, BOB)
    assert not store.folder(record.id).exists()


# ----------------------------------------------------------------------------- who the browser is


def fake_context(monkeypatch, headers=None, cookies=None):
    """What a browser's request carries, as Streamlit hands it to a page."""
    monkeypatch.setattr(streamlit, "context", SimpleNamespace(
        headers=StreamlitHeaders((headers or {}).items()), cookies=StreamlitCookies(cookies or {})))


def xsrf_cookie(token: bytes, mask: bytes) -> str:
    """The cookie as Tornado writes it: version 2, a mask, the token XOR the mask, a time."""
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(token))
    return f"2|{mask.hex()}|{masked.hex()}|1700000000"


def test_the_browser_id_is_a_hash_of_the_xsrf_token_and_survives_a_new_mask(monkeypatch):
    token = bytes(range(32))
    fake_context(monkeypatch, cookies={"_streamlit_xsrf": xsrf_cookie(token, b"\x01\x02\x03\x04")})
    first = identity.current_owner()
    assert first == "browser:" + hashlib.sha256(token).hexdigest()[:16]
    fake_context(monkeypatch, cookies={"_streamlit_xsrf": xsrf_cookie(token, b"\xff\x00\xaa\x55")})
    assert identity.current_owner() == first  # the same browser after a reload
    fake_context(monkeypatch, cookies={"_streamlit_xsrf": xsrf_cookie(bytes(32), b"\x01\x02\x03\x04")})
    assert identity.current_owner() != first  # another browser
    assert identity.browser_owner("not-a-tornado-cookie").startswith("browser:")


def test_the_operators_proxy_header_names_the_user(monkeypatch):
    cookie = {"_streamlit_xsrf": xsrf_cookie(bytes(32), b"\x01\x02\x03\x04")}
    fake_context(monkeypatch, headers={"X-Forwarded-User": "alice@example.org"}, cookies=cookie)
    assert identity.current_owner().startswith("browser:")  # no header configured: the header is not trusted
    monkeypatch.setenv("MASKLAB_USER_HEADER", "X-Forwarded-User")
    reload_policy()
    assert identity.current_owner() == "user:alice@example.org"
    fake_context(monkeypatch, cookies=cookie)  # a request without the header: the browser
    assert identity.current_owner().startswith("browser:")
    monkeypatch.delenv("MASKLAB_USER_HEADER")


def test_without_a_cookie_the_session_keeps_one_random_id(store):
    start(store, ALICE)  # the Runs page asks who the browser is for the run it shows
    app = open_app_page(RUNS_PAGE)
    owner = app.session_state[SESSION_OWNER_KEY]
    assert owner.startswith("browser:") and len(owner) == len("browser:") + 16
    app.run()
    assert app.session_state[SESSION_OWNER_KEY] == owner
    assert open_app_page(RUNS_PAGE).session_state[SESSION_OWNER_KEY] != owner  # another browser


# ----------------------------------------------------------------------------- the pages


def test_the_runs_page_offers_no_action_on_another_users_run(store):
    finished = finished_run(store, ALICE)
    queued = start(store, ALICE)
    app = choose(open_as(BOB), finished.id)
    assert not keys_shown(app) & (ACTION_KEYS | {"act-zip"})
    assert ownership.NOT_YOURS in captions(app)
    assert app.text_input(key=f"run-name-shown-{finished.id}").disabled
    assert app.get("plotly_chart") or any("No evaluation yet" in c for c in captions(app))  # still viewable
    choose(app, queued.id)
    assert not keys_shown(app) & ACTION_KEYS and ownership.NOT_YOURS in captions(app)
    # Alice, who started them, has every action.
    mine = choose(open_as(ALICE), finished.id)
    assert {"act-delete", "act-zip"} <= keys_shown(mine)
    choose(mine, queued.id)
    assert {"act-cancel", "act-delete"} <= keys_shown(mine) and ownership.NOT_YOURS not in captions(mine)


def test_forged_page_state_does_not_delete_or_rename_another_users_run(store):
    record = start(store, ALICE)
    app = open_as(BOB)
    app.session_state["confirm-delete"] = record.id  # as if B had pressed a Delete button never shown
    app.session_state[f"run-name-{record.id}"] = "taken over"  # as if B had typed into a box never shown
    choose(app, record.id)
    assert "act-delete-yes" not in keys_shown(app)
    assert store.folder(record.id).exists() and store.get(record.id).name is None


def test_the_operator_setting_lets_others_act_on_the_page(store, monkeypatch):
    monkeypatch.setenv("MASKLAB_OTHERS_MAY_MANAGE_RUNS", "true")
    reload_policy()
    record = start(store, ALICE)
    app = choose(open_as(BOB), record.id)
    assert {"act-cancel", "act-delete"} <= keys_shown(app)
    app.button(key="act-delete").click().run()
    app.button(key="act-delete-yes").click().run()
    assert not app.exception, app.exception
    assert not store.folder(record.id).exists()


def test_the_live_panel_offers_cancel_to_the_owner_only(store):
    record = start(store, ALICE)
    app = open_as(BOB, FINETUNE_PAGE, run=record.id)
    assert app.get("progress"), "B may follow the run"
    assert f"cancel-{record.id}" not in keys_shown(app) and ownership.NOT_YOURS in captions(app)
    mine = open_as(ALICE, FINETUNE_PAGE, run=record.id)
    mine.button(key=f"cancel-{record.id}").click().run()
    assert store.get(record.id).status == CANCELLED


def test_a_model_fine_tuned_from_another_users_run_cannot_be_downloaded(tmp_path):
    """Fine-tuning another user's run for one step at a tiny learning rate and downloading one's own run
    would take their model home: downloading needs ownership of every run in the chain."""
    store = RunStore(tmp_path / "runs")
    alice_run, _ = store.create({"model": None, "steps": 2}, owner="browser:aaaaaaaaaaaaaaaa")
    bobs_copy, _ = store.create({"model": f"run:{alice_run.id}", "steps": 1}, owner="browser:bbbbbbbbbbbbbbbb")
    bobs_second, _ = store.create({"model": f"run:{bobs_copy.id}", "steps": 1}, owner="browser:bbbbbbbbbbbbbbbb")
    bob, alice = "browser:bbbbbbbbbbbbbbbb", "browser:aaaaaaaaaaaaaaaa"
    assert ownership.may_manage(bobs_copy, bob)  # still his to cancel, rename or delete
    assert not ownership.may_download_model(store, bobs_copy, bob)
    assert not ownership.may_download_model(store, bobs_second, bob)  # however long the chain
    assert ownership.may_download_model(store, alice_run, alice)
    assert not ownership.may_download_model(store, bobs_copy, alice)  # not hers either: Bob's run
    assert ownership.may_download_model(store, bobs_copy, ownership.local_owner())  # the operator may
    store.delete(alice_run.id)
    assert not ownership.may_download_model(store, bobs_copy, bob)  # a deleted base's owner is unknown
