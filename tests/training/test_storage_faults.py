"""Storage faults: a full disk or quota, a read-only or forbidden run folder, and a run index (runs.sqlite)
found empty or damaged.

A fault is raised in this process at a chosen step by replacing one write (safetensors' save_file, an
fsync, a metrics line, the final model's tokenizer files, SQLite's progress write) with one that raises
the OSError the system gives (ENOSPC, EDQUOT, EROFS, EACCES) or SQLite's "database or disk is full".
Making a real disk full needs root's mount rights, and a chmod'ed folder is writable for root (these
tests may run as root), so the errors are raised rather than provoked. Then "space returns" (the fault
is switched off) and the run resumes: its evaluations must equal, bit for bit, those of a run never
interrupted (one torch thread, as in test_jobs.py).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from support.corpora import corpus_bytes

from mlm_core.errors import RunError, RunIndexRebuilt
from mlm_core.training import TrainConfig, Trainer, checkpoints, jobs
from mlm_core.training.store import (
    CANCELLED,
    FINISHED,
    INDEX_FILE,
    INTERRUPTED,
    RUNNING,
    STATUS_FILE,
    RunStore,
)

CORPUS = corpus_bytes()
COMPARED = ("step", "train_loss", "heldout_loss", "perplexity", "masked_accuracy", "masked_top5", "masking_rate",
            "lr", "by_category")
OWNER = "browser:0123456789abcdef"


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(jobs, "STATUS_RETRY_S", 0.0)


@pytest.fixture
def store():
    return jobs.default_store()


def settings(model_dir, **overrides) -> TrainConfig:
    values = dict(model=str(model_dir), device="cpu", steps=12, batch_size=4, seq_len=32, lr=1e-3,
                  eval_every=1, eval_blocks=8, checkpoint_every=3, heldout_fraction=0.2, seed=3)
    return TrainConfig(**{**values, **overrides})


def compared(rows: list[dict]) -> list[tuple]:
    return [tuple(repr(row.get(key)) for key in COMPARED) for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> list[dict]:
    """The evaluations of the run never interrupted."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = RunStore(tmp_path_factory.mktemp("reference") / "runs")
        record, _ = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
        assert jobs.execute(store, record.id).status == FINISHED
        return store.metrics(record.id)
    finally:
        torch.set_num_threads(threads)


class Fault:
    """A storage error raised by one write while ``active``; switching it off is "space returns"."""

    def __init__(self, number: int):
        self.number, self.active, self.raised = number, True, 0

    def error(self, path=None) -> OSError:
        self.raised += 1
        return OSError(self.number, os.strerror(self.number), None if path is None else str(path))


def during_checkpoint(monkeypatch, number: int, step: int) -> Fault:
    """The model file of checkpoint ``step`` cannot be written."""
    fault, real = Fault(number), checkpoints.save_file

    def save_file(tensors, path):
        if fault.active and Path(path).parent.name == f"step-{step:08d}.tmp":
            raise fault.error(path)
        real(tensors, path)

    monkeypatch.setattr(checkpoints, "save_file", save_file)
    return fault


def during_checkpoint_fsync(monkeypatch, number: int, step: int) -> Fault:
    """Checkpoint ``step``'s files are written, its fsync fails (as a read-only remount does)."""
    fault, real = Fault(number), checkpoints._fsync_file

    def fsync_file(path):
        if fault.active and path.parent.name == f"step-{step:08d}.tmp":
            raise fault.error(path)
        real(path)

    monkeypatch.setattr(checkpoints, "_fsync_file", fsync_file)
    return fault


def during_metrics(monkeypatch, number: int, step: int) -> Fault:
    """The metrics line of ``step`` is cut halfway (no newline), then the write fails."""
    fault, real = Fault(number), RunStore.append_metrics

    def append_metrics(self, run_id, record):
        if fault.active and record["step"] == step:
            with open(self.folder(run_id) / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record)[:20])
            raise fault.error()  # a write through an open file names no path
        real(self, run_id, record)

    monkeypatch.setattr(RunStore, "append_metrics", append_metrics)
    return fault


def during_final_model(monkeypatch, number: int, step: int) -> Fault:
    """The final model's weights are written, its tokenizer files are not (``step``: the last one)."""
    fault, real_init = Fault(number), Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        real_save = self.tokenizer.save_pretrained

        def save_pretrained(folder, *a, **k):
            if fault.active:
                raise fault.error(Path(folder) / "tokenizer.json")
            return real_save(folder, *a, **k)

        self.tokenizer.save_pretrained = save_pretrained

    monkeypatch.setattr(Trainer, "__init__", init)
    return fault


# ----------------------------------------------------------------------------- a fault, then resume


@pytest.mark.parametrize(
    ("inject", "number", "at", "stopped", "checkpoint", "says"),
    [
        (during_checkpoint, errno.ENOSPC, 6, 6, 3, "The disk holding the folder of run {id} is full "
                                                   "(No space left on device)"),
        (during_checkpoint, errno.ENOSPC, 3, 3, None, "The disk holding the folder of run {id} is full"),
        (during_metrics, errno.EDQUOT, 7, 7, 6, "The disk holding the folder of run {id} is full "
                                                "(Disk quota exceeded)"),
        (during_checkpoint_fsync, errno.EROFS, 9, 9, 6, "Cannot write to the folder of run {id} "
                                                        "(Read-only file system)"),
        (during_checkpoint, errno.EACCES, 6, 6, 3, "Cannot write to the folder of run {id} (Permission denied)"),
        (during_final_model, errno.ENOSPC, 12, 12, 9, "The disk holding the folder of run {id} is full"),
    ],
    ids=["enospc-checkpoint", "enospc-first-checkpoint", "edquot-metrics", "erofs-fsync", "eacces-checkpoint",
         "enospc-final-model"],
)
def test_a_storage_fault_interrupts_the_run_and_it_resumes_to_the_uninterrupted_result(
        store, tiny_model_dir, reference, monkeypatch, inject, number, at, stopped, checkpoint, says):
    fault = inject(monkeypatch, number, at)
    record, _ = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
    done = jobs.execute(store, record.id)
    assert fault.raised == 1
    assert done.status == INTERRUPTED and store.get(record.id).status == INTERRUPTED  # stored, not only returned
    assert done.reason.startswith(says.format(id=record.id))
    assert f"the run stopped at step {stopped} and " in done.reason
    assert done.reason.endswith(f"masklab runs resume {record.id}")
    folder = store.folder(record.id)
    latest = checkpoints.latest_valid(folder / "checkpoints")
    if checkpoint is None:  # never a checkpoint it does not have
        assert latest is None and "checkpoint at step" not in done.reason
        assert "will restart from the beginning (no checkpoint was saved)" in done.reason
    else:  # the checkpoint it names is on disk and verifies
        assert f"can resume from its checkpoint at step {checkpoint} once" in done.reason
        assert checkpoints.step_of(latest) == checkpoint and checkpoints.verify(latest)
    assert not list((folder / "checkpoints").glob("*.tmp")) and not (folder / "model.tmp").exists()
    assert not (folder / "model").exists()
    # The command line names the real folder; the stored reason (shown in the browser) does not.
    assert str(folder) in jobs.reason_with_paths(store, done) and str(folder) not in done.reason
    assert "Traceback" in (folder / "log.txt").read_text()  # the traceback is kept, in the run's log

    fault.active = False  # space returns
    jobs.resume(store, record.id, launch=False)
    resumed = jobs.execute(store, record.id)
    assert resumed.status == FINISHED and resumed.step == 12
    assert compared(store.metrics(record.id)) == compared(reference)
    assert (folder / "model" / "model.safetensors").exists()


def test_sqlite_full_during_a_progress_write_names_the_store_folder(store, tiny_model_dir, monkeypatch):
    real_update = RunStore.update

    def update(self, run_id, **fields):
        if fields.get("step") == 5:
            raise sqlite3.OperationalError("database or disk is full")
        real_update(self, run_id, **fields)

    monkeypatch.setattr(jobs, "STATUS_EVERY_S", 0.0)  # every step writes its progress
    monkeypatch.setattr(RunStore, "update", update)
    record, _ = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
    done = jobs.execute(store, record.id)
    assert done.status == INTERRUPTED
    assert done.reason.startswith("The disk holding the run store's folder is full")
    assert "stopped at step 5 and can resume from its checkpoint at step 3" in done.reason
    assert f"The disk holding {store.root} is full" in jobs.reason_with_paths(store, done)


def test_a_permission_error_outside_the_run_store_fails_the_run(store, tiny_model_dir, monkeypatch, tmp_path):
    """Not a storage fault of the run: a model or corpus it may not read will not come back by itself."""
    elsewhere = tmp_path / "elsewhere" / "weights.safetensors"

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(elsewhere))

    monkeypatch.setattr(jobs, "load_corpus", denied)
    record, _ = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
    done = jobs.execute(store, record.id)
    assert done.status == "failed" and done.reason.startswith("PermissionError: [Errno 13] Permission denied")


@pytest.mark.parametrize("refusals", [2, 99], ids=["retried", "left-in-the-folder"])
def test_a_status_write_sqlite_refuses_is_retried_then_left_for_refresh(store, tiny_model_dir, monkeypatch, refusals):
    during_checkpoint(monkeypatch, errno.ENOSPC, 6)
    real_transition, refused = RunStore.transition, {"n": 0}

    def transition(self, run_id, new_status, **fields):
        if new_status == INTERRUPTED and refused["n"] < refusals:
            refused["n"] += 1
            raise sqlite3.OperationalError("database or disk is full")
        return real_transition(self, run_id, new_status, **fields)

    monkeypatch.setattr(RunStore, "transition", transition)
    record, _ = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
    done = jobs.execute(store, record.id)
    assert done.status == INTERRUPTED and "checkpoint at step 3" in done.reason
    if refusals < jobs.STATUS_WRITE_TRIES:
        assert store.get(record.id).status == INTERRUPTED and refused["n"] == refusals
        return
    assert refused["n"] == jobs.STATUS_WRITE_TRIES
    assert store.get(record.id).status == RUNNING  # SQLite never took it...
    note = json.loads((store.folder(record.id) / STATUS_FILE).read_text())
    assert note["status"] == INTERRUPTED and note["reason"] == done.reason  # ...the folder did
    refused["n"] = refusals  # SQLite takes writes again
    ended = subprocess.Popen(["true"])  # a pid that has ended: this process, once it has exited
    ended.wait()
    store.update(record.id, pid=ended.pid)
    assert store.refresh() == [record.id]
    assert store.get(record.id).status == INTERRUPTED and store.get(record.id).reason == done.reason


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), checkpoints.FULL),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), checkpoints.FULL),
        (SafetensorError('I/O error: No space left on device (os error 28) at path "x"'), checkpoints.FULL),
        (sqlite3.OperationalError("database or disk is full"), checkpoints.FULL),
        (OSError(errno.EROFS, "Read-only file system", "/anywhere"), checkpoints.READ_ONLY),
        (sqlite3.OperationalError("attempt to write a readonly database"), checkpoints.READ_ONLY),
        (PermissionError(errno.EACCES, "Permission denied", "{root}/run/log.txt"), checkpoints.READ_ONLY),
        (PermissionError(errno.EACCES, "Permission denied", "/elsewhere/model"), None),
        (PermissionError(errno.EACCES, "Permission denied"), None),  # no path: not known to be the run's
        (OSError(errno.EIO, "Input/output error"), None),
        (sqlite3.OperationalError("database is locked"), None),
        (RuntimeError("boom"), None),
    ],
)
def test_storage_faults_are_told_apart_from_other_errors(tmp_path, exc, kind):
    if isinstance(exc, OSError) and exc.filename and "{root}" in exc.filename:
        exc = PermissionError(exc.errno, exc.strerror, exc.filename.format(root=tmp_path))
    wrapped = RuntimeError("while saving")
    wrapped.__cause__ = exc  # found also behind the error a library raised from it
    for error in (exc, wrapped):
        fault = checkpoints.storage_fault(error, tmp_path)
        assert (fault.kind if fault else None) == kind


# ----------------------------------------------------------------------------- the index rebuilt from the folders


@pytest.fixture(scope="module")
def template_root(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict[str, str]]:
    """A run store with a finished run (renamed, owned), one interrupted with a checkpoint at step 3, one
    cancelled, one queued and never started, and a folder whose config.json is garbage."""
    root = tmp_path_factory.mktemp("store") / "runs"
    store = RunStore(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ids = {}
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(jobs, "STATUS_RETRY_S", 0.0)
            ids["finished"] = jobs.submit(store, settings(tiny_model_dir, steps=4), CORPUS, launch=False,
                                          owner=OWNER)[0].id
            assert jobs.execute(store, ids["finished"]).status == FINISHED
            store.rename(ids["finished"], "kept through a rebuild")
            ids["interrupted"] = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)[0].id
            during_checkpoint(patch, errno.ENOSPC, 6)
            assert jobs.execute(store, ids["interrupted"]).status == INTERRUPTED
        ids["cancelled"] = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)[0].id
        store.request_cancel(ids["cancelled"])
        ids["queued"] = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)[0].id
    finally:
        torch.set_num_threads(threads)
    garbage = root / "20260101-000000-badcfg"
    garbage.mkdir()
    (garbage / "config.json").write_bytes(b"\x00not json")
    return root, ids


def damage(index: Path, how: str) -> bytes | None:
    """Damage the run index as ``how`` says; returns the bytes left in it (None: no file)."""
    if how == "missing":
        for path in index.parent.glob(INDEX_FILE + "*"):
            path.unlink()
        return None
    if how == "empty":
        index.write_bytes(b"")
    elif how == "garbage":
        index.write_bytes(os.urandom(3000) + b"\x00" * 5000)
    elif how == "schema":  # a database, but not ours
        for path in index.parent.glob(INDEX_FILE + "*"):
            path.unlink()
        with sqlite3.connect(index) as db:
            db.execute("CREATE TABLE runs (id TEXT, colour TEXT)")
        db.close()
    elif how == "corrupt page":  # SQLite's header intact, the schema page overwritten
        data = bytearray(index.read_bytes())
        data[100:4096] = os.urandom(3996)
        index.write_bytes(bytes(data))
    return index.read_bytes()


@pytest.mark.parametrize("how", ["empty", "garbage", "schema", "corrupt page", "missing"])
def test_an_empty_or_damaged_index_is_set_aside_and_rebuilt_from_the_run_folders(template_root, tmp_path, how):
    template, ids = template_root
    root = tmp_path / "runs"
    shutil.copytree(template, root)
    with sqlite3.connect(root / INDEX_FILE) as db:  # everything in the main file: a damage hits the whole index
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    left = damage(root / INDEX_FILE, how)

    store = RunStore(root)
    what = {"missing": "missing", "empty": "empty"}.get(how, "damaged")
    assert store.rebuilt_notice.startswith(f"The run list (runs.sqlite) was {what};")
    assert "rebuilt from the run folders: 4 runs found, 1 unreadable folder left out." in store.rebuilt_notice
    assert str(root) not in store.rebuilt_notice  # shown in the browser: no server path
    assert store.take_rebuilt_notice() == store.rebuilt_notice and store.take_rebuilt_notice() is None  # once
    assert RunStore(root).rebuilt_notice is None  # the next opener finds a good index
    aside = sorted(root.glob(INDEX_FILE + ".corrupt-*"))
    if left is None:
        assert not aside
    else:
        assert [p.name for p in aside if not p.name.endswith(("-wal", "-shm"))] == [aside[0].name]
        assert aside[0].read_bytes() == left and aside[0].name in store.rebuilt_notice

    runs = {r.id: r for r in store.list()}
    assert set(runs) == set(ids.values())
    finished = runs[ids["finished"]]
    assert finished.status == FINISHED and finished.step == 4 and finished.best_heldout_loss is not None
    assert finished.name == "kept through a rebuild" and finished.owner == OWNER
    interrupted = runs[ids["interrupted"]]
    assert interrupted.status == INTERRUPTED and interrupted.step == 3
    assert "can resume from its checkpoint at step 3" in interrupted.reason  # the reason it stopped with
    assert runs[ids["cancelled"]].status == CANCELLED
    queued = runs[ids["queued"]]
    assert queued.status == INTERRUPTED and "restarts from the beginning" in queued.reason


def test_a_rebuilt_interrupted_run_resumes_to_the_uninterrupted_result(template_root, tmp_path, reference):
    template, ids = template_root
    root = tmp_path / "runs"
    shutil.copytree(template, root)
    damage(root / INDEX_FILE, "garbage")
    store = RunStore(root)
    assert store.rebuilt_notice
    jobs.resume(store, ids["interrupted"], launch=False)
    done = jobs.execute(store, ids["interrupted"])
    assert done.status == FINISHED and done.step == 12
    assert compared(store.metrics(ids["interrupted"])) == compared(reference)


def test_an_index_damaged_while_open_is_rebuilt_on_the_next_use(template_root, tmp_path):
    """A store opened before the damage (a page's, a job's) repairs it on its next query."""
    template, ids = template_root
    root = tmp_path / "runs"
    shutil.copytree(template, root)
    store = RunStore(root)
    assert store.rebuilt_notice is None
    damage(root / INDEX_FILE, "garbage")
    assert store.get(ids["finished"]).status == FINISHED
    assert store.rebuilt_notice and store.take_rebuilt_notice()


def test_a_new_store_is_not_a_rebuild(tmp_path):
    store = RunStore(tmp_path / "fresh")
    assert store.rebuilt_notice is None and store.list() == []
    assert not list((tmp_path / "fresh").glob("*.corrupt-*"))


def test_a_corrupt_page_found_by_a_query_rebuilds_the_index_and_asks_to_try_again(template_root, tmp_path):
    template, ids = template_root
    root = tmp_path / "runs"
    shutil.copytree(template, root)
    with sqlite3.connect(root / INDEX_FILE) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = db.execute("PRAGMA page_size").fetchone()[0]
        runs_page = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
    db.close()
    store = RunStore(root)
    data = bytearray((root / INDEX_FILE).read_bytes())
    data[(runs_page - 1) * page:runs_page * page] = os.urandom(page)  # the table's rows; the schema reads well
    (root / INDEX_FILE).write_bytes(bytes(data))
    with pytest.raises(RunIndexRebuilt, match="rebuilt from the run folders. Try again"):
        store.list()
    assert {r.id for r in store.list()} == set(ids.values())
    assert store.take_rebuilt_notice().startswith("The run list (runs.sqlite) was damaged")


def test_the_runs_page_warns_once_that_the_run_list_was_rebuilt(template_root, tmp_path, monkeypatch):
    from support.apptest import clear_streamlit_caches, open_app_page

    template, ids = template_root
    root = tmp_path / "home" / "runs"  # MASKLAB_HOME/runs: the app's store
    shutil.copytree(template, root)
    damage(root / INDEX_FILE, "garbage")
    clear_streamlit_caches()
    try:
        app = open_app_page("app_pages/runs.py")
        warnings = [w.value for w in app.warning if "rebuilt from the run folders" in w.value]
        assert len(warnings) == 1 and "4 runs found" in warnings[0] and str(root) not in warnings[0]
        assert set(app.dataframe[0].value["run"]) == set(ids.values())
        app.run()
        assert not app.exception and not [w for w in app.warning if "rebuilt" in w.value]  # once
    finally:
        clear_streamlit_caches()


@pytest.mark.parametrize("damage_config", [
    lambda config: {**config, "steps": 10**30},  # more than SQLite's integers hold
    lambda config: "[" * 100_000 + "]" * 100_000,  # nesting deeper than the parser goes
])
def test_one_damaged_run_folder_is_left_out_of_a_rebuild_not_the_whole_store(template_root, tmp_path, damage_config):
    template, ids = template_root
    root = tmp_path / "runs"
    shutil.copytree(template, root)
    config_file = root / ids["finished"] / "config.json"
    damaged = damage_config(json.loads(config_file.read_text()))
    config_file.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    damage(root / INDEX_FILE, "garbage")
    store = RunStore(root)
    assert "2 unreadable folders left out" in store.rebuilt_notice
    assert ids["finished"] not in {r.id for r in store.list()} and ids["interrupted"] in {r.id for r in store.list()}
    assert len(list(root.glob(INDEX_FILE + ".corrupt-*"))) == 1  # rebuilt once, not at every opening


def test_an_index_that_is_a_folder_is_a_clear_error(tmp_path):
    from mlm_core.cli import main

    (tmp_path / "runs" / INDEX_FILE).mkdir(parents=True)
    with pytest.raises(RunError, match="is a folder, not a file"):
        RunStore(tmp_path / "runs").list()
    assert main(["runs", "list", "--out", str(tmp_path / "runs")]) == 2


def test_a_store_sqlite_cannot_open_is_a_clear_error(tmp_path, monkeypatch):
    """A read-only file system: SQLite says only "unable to open database file"."""
    root = tmp_path / "runs"
    RunStore(root)
    real_connect = sqlite3.connect

    def refuse(path, *args, **kwargs):
        if Path(path).name == INDEX_FILE:
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(path, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", refuse)
    with pytest.raises(RunError, match="cannot be opened: its runs cannot be listed or changed"):
        RunStore(root).list()
