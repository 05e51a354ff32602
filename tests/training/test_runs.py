"""The run store: SQLite rows + folders, the state machine, crash detection (no training here)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

from mlm_core.errors import MaskLabError, ModelLoadError
from mlm_core.training import jobs
from mlm_core.training.store import (
    CANCELLED,
    FINAL_STATES,
    FINISHED,
    INTERRUPTED,
    MAX_NAME_CHARS,
    QUEUED,
    RUNNING,
    STATES,
    TRANSITIONS,
    RunError,
    RunStore,
    index_state,
    process_alive,
)

DEAD_PID = 2**30  # above any Linux pid_max: never a live process
ALIVE_PID = os.getpid()


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs")


def test_create_get_list_and_folder(store):
    record, created = store.create({"lr": 0.1})
    assert created and record.status == QUEUED and record.config == {"lr": 0.1}
    assert json.loads((store.folder(record.id) / "config.json").read_text()) == {"lr": 0.1}
    assert store.get(record.id) == record
    assert [r.id for r in store.list()] == [record.id]
    with sqlite3.connect(store.root / "runs.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "x y", "run;drop"])
def test_run_ids_are_never_paths(store, bad):
    with pytest.raises(RunError):
        store.folder(bad)
    with pytest.raises(RunError):
        store.get(bad)


def test_unknown_run_says_how_to_list_runs(store):
    with pytest.raises(RunError, match="runs list"):
        store.get("20990101-000000-abcdef")


def test_the_same_request_id_gives_one_run(store):
    first, created_first = store.create({"a": 1}, request_id="click-1")
    second, created_second = store.create({"a": 1}, request_id="click-1")
    assert created_first and not created_second and first.id == second.id
    assert len(store.list()) == 1


def test_racing_threads_with_one_request_id_make_one_run(store):
    barrier, results = threading.Barrier(8), []

    def click():
        barrier.wait()
        results.append(store.create({"a": 1}, request_id="double-click"))

    threads = [threading.Thread(target=click) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({record.id for record, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert [p.name for p in store.root.iterdir() if p.is_dir()] == [results[0][0].id]  # no stray folders


def test_files_given_at_creation_exist_before_the_run_is_visible(store, monkeypatch):
    seen = []
    original = RunStore._find_request

    def spy(self, request_id):  # called by a racing request right after the insert
        found = original(self, request_id)
        if found:
            seen.append((self.folder(found.id) / "corpus.data").exists())
        return found

    record, _ = store.create({"a": 1}, request_id="r", files={"corpus.data": b"text"})
    monkeypatch.setattr(RunStore, "_find_request", spy)
    again, created = store.create({"a": 1}, request_id="r", files={"corpus.data": b"other"})
    assert not created and again.id == record.id and seen == [True]
    assert (store.folder(record.id) / "corpus.data").read_bytes() == b"text"


def test_transitions_follow_the_table(store):
    record, _ = store.create({})
    with pytest.raises(RunError, match="cannot become finished"):
        store.transition(record.id, FINISHED)
    running = store.transition(record.id, RUNNING, pid=ALIVE_PID)
    assert running.started is not None and running.finished is None and running.pid == ALIVE_PID
    done = store.transition(record.id, FINISHED, step=10)
    assert done.finished is not None and done.step == 10
    for state in STATES:
        with pytest.raises(RunError):
            store.transition(record.id, state)
    with pytest.raises(RunError, match="No run"):
        store.transition("20990101-000000-abcdef", RUNNING)


def test_refresh_marks_dead_processes_interrupted_and_spares_live_ones(store):
    dead, _ = store.create({})
    alive, _ = store.create({})
    store.transition(dead.id, RUNNING, pid=DEAD_PID)
    store.transition(alive.id, RUNNING, pid=ALIVE_PID)
    assert store.refresh() == [dead.id]
    assert store.get(dead.id).status == INTERRUPTED and "stopped unexpectedly" in store.get(dead.id).reason
    assert store.get(alive.id).status == RUNNING
    assert store.refresh() == []


def test_a_zombie_counts_as_dead():
    import subprocess

    child = subprocess.Popen(["true"])
    for _ in range(200):
        if not process_alive(child.pid):
            break
        threading.Event().wait(0.01)
    assert not process_alive(child.pid)  # exited, not reaped yet
    child.wait()
    assert not process_alive(None) and not process_alive(DEAD_PID) and process_alive(ALIVE_PID)


def test_cancel_in_every_state(store):
    queued, _ = store.create({})
    assert store.request_cancel(queued.id).status == CANCELLED

    running, _ = store.create({})
    store.transition(running.id, RUNNING, pid=ALIVE_PID)
    flagged = store.request_cancel(running.id)
    assert flagged.status == RUNNING and flagged.cancel_requested and store.cancel_requested(running.id)

    orphan, _ = store.create({})
    store.transition(orphan.id, RUNNING, pid=DEAD_PID)
    assert store.request_cancel(orphan.id).status == CANCELLED  # nobody would read the flag

    interrupted, _ = store.create({})
    store.transition(interrupted.id, RUNNING, pid=DEAD_PID)
    store.refresh()
    assert store.request_cancel(interrupted.id).status == CANCELLED

    with pytest.raises(RunError, match="already cancelled"):
        store.request_cancel(queued.id)


def test_metrics_survive_a_torn_last_line_and_truncate_for_resume(store):
    record, _ = store.create({})
    for step in (1, 2, 3):
        store.append_metrics(record.id, {"step": step, "heldout_loss": 1.0 / step})
    with open(store.folder(record.id) / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 4, "heldout_')  # the process died mid-write
    assert [r["step"] for r in store.metrics(record.id)] == [1, 2, 3]
    store.truncate_metrics(record.id, 2)  # resuming from the step-2 checkpoint
    assert [r["step"] for r in store.metrics(record.id)] == [1, 2]
    store.append_metrics(record.id, {"step": 3, "heldout_loss": 0.3})
    assert [r["step"] for r in store.metrics(record.id)] == [1, 2, 3]
    assert store.metrics(store.create({})[0].id) == []


def test_update_refuses_unknown_fields_and_delete_refuses_live_runs(store):
    record, _ = store.create({})
    with pytest.raises(ValueError):
        store.update(record.id, status=FINISHED)
    store.transition(record.id, RUNNING, pid=ALIVE_PID)
    with pytest.raises(RunError, match="cancel it"):
        store.delete(record.id)
    store.update(record.id, pid=DEAD_PID)
    store.delete(record.id)
    assert store.list() == [] and not store.folder(record.id).exists()


# ----------------------------------------------------------------------------- the state machine


class RunStateMachine(RuleBasedStateMachine):
    """Random create/transition/cancel/refresh/resume sequences against a model of the table."""

    runs = Bundle("runs")

    def __init__(self):
        super().__init__()
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.store = RunStore(self.tmp.name)
        self.status: dict[str, str] = {}
        self.alive: dict[str, bool] = {}
        self.requests: dict[str, str] = {}
        self.final_seen: dict[str, str] = {}

    def teardown(self):
        self.tmp.cleanup()

    @initialize()
    def start(self):
        pass

    @rule(target=runs, request=st.sampled_from([None, "a", "b"]))
    def create(self, request):
        record, created = self.store.create({"x": 1}, request_id=request)
        assert created == (request is None or request not in self.requests)
        if created:
            self.status[record.id], self.alive[record.id] = QUEUED, False
            if request:
                self.requests[request] = record.id
        else:
            assert record.id == self.requests[request]
        return record.id

    @rule(run=runs, target_state=st.sampled_from(STATES), alive=st.booleans())
    def transition(self, run, target_state, alive):
        allowed = target_state in TRANSITIONS[self.status[run]]
        if not allowed:
            with pytest.raises(RunError):
                self.store.transition(run, target_state, pid=ALIVE_PID if alive else DEAD_PID)
            return
        fields = {"pid": ALIVE_PID if alive else DEAD_PID} if target_state == RUNNING else {}
        record = self.store.transition(run, target_state, **fields)
        self.status[run] = target_state
        if target_state == RUNNING:
            self.alive[run] = alive
        assert record.status == target_state

    @precondition(lambda self: self.status)
    @rule(run=runs)
    def the_process_dies(self, run):
        if self.status[run] == RUNNING:
            self.store.update(run, pid=DEAD_PID)
            self.alive[run] = False

    @rule(run=runs)
    def request_cancel(self, run):
        status = self.status[run]
        if status in FINAL_STATES:
            with pytest.raises(RunError):
                self.store.request_cancel(run)
            return
        record = self.store.request_cancel(run)
        if status == RUNNING and self.alive[run]:
            assert record.status == RUNNING and record.cancel_requested
        else:
            assert record.status == CANCELLED
            self.status[run] = CANCELLED

    @rule()
    def refresh(self):
        lost = self.store.refresh()
        expected = sorted(r for r, s in self.status.items() if s == RUNNING and not self.alive[r])
        assert sorted(lost) == expected
        for run in lost:
            self.status[run] = INTERRUPTED

    @rule(run=runs)
    def resume(self, run):
        self.refresh()  # jobs.resume refreshes first
        if self.status[run] != INTERRUPTED:
            with pytest.raises(RunError, match="only interrupted runs"):
                jobs.resume(self.store, run, launch=False)
            return
        record = jobs.resume(self.store, run, launch=False)
        assert record.status == QUEUED and not record.cancel_requested and record.pid is None
        assert record.reason is None and record.finished is None
        self.status[run] = QUEUED

    @invariant()
    def matches_the_model(self):
        for run, status in self.status.items():
            record = self.store.get(run)
            assert record.status == status and status in STATES
            assert (record.finished is not None) == (status in FINAL_STATES)
            if status == RUNNING:
                assert record.started is not None and record.pid is not None
            if status == QUEUED:
                assert not record.cancel_requested and record.pid is None

    @invariant()
    def final_states_are_absorbing(self):
        for run, status in self.status.items():
            if run in self.final_seen:
                assert status == self.final_seen[run]
            elif status in FINAL_STATES:
                self.final_seen[run] = status


TestRunStateMachine = RunStateMachine.TestCase
TestRunStateMachine.settings = settings(
    max_examples=30, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ----------------------------------------------------------------------------- names and references (issue 17)


def test_runs_are_named_from_their_settings_and_renamed_in_the_store(store):
    from mlm_core.training.run_table import run_label, run_name, runs_table

    record, _ = store.create({"strategy": "whole-word", "strategy_params": {"mlm_probability": 0.3}, "steps": 200,
                              "masking": "static", "model": "google/bert_uncased_L-2_H-128"})
    assert run_name(record) == "whole-word 30% static · bert_uncased_L-2_H-128 · 200 steps"
    renamed = store.rename(record.id, "  my <b>first</b>\trun ")
    assert renamed.name == "my <b>first</b> run" and run_name(renamed) == renamed.name  # stored as typed, one line
    assert run_label(renamed).startswith("my <b>first</b> run · ") and run_label(renamed).endswith(" · queued")
    assert runs_table([renamed]).loc[0, "name"] == "my <b>first</b> run"
    assert store.rename(record.id, "   ").name is None  # emptied: the settings' name again
    with pytest.raises(MaskLabError, match="at most"):
        store.rename(record.id, "x" * (MAX_NAME_CHARS + 1))
    with pytest.raises(MaskLabError, match="control"):
        store.rename(record.id, "a\x1b[2Jb")


def test_a_store_from_before_names_gains_the_column(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    with sqlite3.connect(root / "runs.sqlite") as db:  # the schema without ``name``
        db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, request_id TEXT UNIQUE, created REAL NOT NULL, "
                   "updated REAL NOT NULL, status TEXT NOT NULL, cancel_requested INTEGER NOT NULL DEFAULT 0, "
                   "pid INTEGER, config TEXT NOT NULL, step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER, "
                   "best_heldout_loss REAL, best_accuracy REAL, device TEXT, reason TEXT, started REAL, finished REAL)")
        db.execute("INSERT INTO runs (id, created, updated, status, config) VALUES ('r-old', 1, 1, 'queued', '{}')")
    store = RunStore(root)
    assert store.get("r-old").name is None
    assert store.rename("r-old", "kept").name == "kept"


@pytest.mark.parametrize("reference", ["run:../etc", "run:/etc/passwd", "run:", "run:a/b", "run:20990101-000000-abcdef"])
def test_run_references_name_runs_of_the_store_never_paths(store, reference):
    from mlm_core.training.planning import resolve_run_model

    with pytest.raises(ModelLoadError) as refused:
        resolve_run_model(reference, store)
    assert str(store.root) not in str(refused.value)


def test_an_unfinished_run_has_no_model_yet(store):
    from mlm_core.training.planning import resolve_run_model

    record, _ = store.create({})
    with pytest.raises(ModelLoadError, match="queued"):
        resolve_run_model(f"run:{record.id}", store)


def test_load_model_takes_a_run_by_id(tmp_path, monkeypatch, tiny_model_dir):
    """``run:ID`` loads the run's model from the app's store; the name stays the reference."""
    import shutil

    from mlm_core.model.loading import load_model
    from mlm_core.training.planning import model_name

    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    store = jobs.default_store()
    record, _ = store.create({})
    shutil.copytree(tiny_model_dir, store.folder(record.id) / "model")
    with pytest.raises(ModelLoadError, match="queued"):
        load_model(f"run:{record.id}", device="cpu")
    store.transition(record.id, RUNNING, pid=DEAD_PID)
    store.transition(record.id, FINISHED)
    loaded = load_model(f"run:{record.id}", device="cpu")
    assert loaded.name == f"run:{record.id}" and loaded.mask_token == "[MASK]"
    assert model_name(f"run:{record.id}") == f"run {record.id}"
    broken, _ = store.create({})
    (store.folder(broken.id) / "model").mkdir()
    (store.folder(broken.id) / "model" / "config.json").write_text("{}")  # no weights
    store.transition(broken.id, RUNNING, pid=DEAD_PID)
    store.transition(broken.id, FINISHED)
    with pytest.raises(ModelLoadError) as refused:
        load_model(f"run:{broken.id}", device="cpu")
    assert f"run:{broken.id}" in str(refused.value) and str(store.root) not in str(refused.value)


def test_the_best_and_the_final_evaluation_are_both_named():
    from mlm_core.training.run_table import best_and_final

    metrics = [{"step": 2, "heldout_loss": 2.0, "masked_accuracy": 0.3}, {"step": 4, "heldout_loss": 2.5,
               "masked_accuracy": 0.2}]
    best, final = best_and_final(metrics)
    assert (best["step"], best["heldout_loss"], final["step"], final["heldout_loss"]) == (2, 2.0, 4, 2.5)
    assert best_and_final([]) == (None, None)


def test_the_index_state_moves_with_every_change_and_only_then(store):
    """The sidebar reuses its list of run models until this changes (ui.models.run_models)."""
    quiet = index_state(store.root)
    store.list()
    assert index_state(store.root) == quiet  # reading changes nothing
    record, _ = store.create({"lr": 0.1})
    added = index_state(store.root)
    assert added != quiet
    store.transition(record.id, RUNNING, pid=ALIVE_PID)
    store.transition(record.id, FINISHED)
    assert index_state(store.root) != added
    assert index_state(store.root / "missing") == (None, None)
