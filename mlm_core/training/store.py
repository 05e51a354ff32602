"""The run store: one SQLite row per fine-tuning run plus a folder with its files.

    <root>/runs.sqlite            the table below (WAL, busy timeout, one connection per use)
    <root>/<run_id>/config.json   the TrainConfig the run was started with
    <root>/<run_id>/owner.json    who started it: ``{"owner": "browser:1f2e3d4c5b6a7988"}``, written at
                                  creation, before the row (the same value as the row's ``owner``
                                  column; ownership.py says what the ids mean and who may act on a run)
    <root>/<run_id>/metrics.jsonl one JSON object per evaluation
    <root>/<run_id>/log.txt       the job's output
    <root>/<run_id>/checkpoints/  step-N folders (safetensors + manifest), see checkpoints.py
    <root>/<run_id>/model/        the final model, loadable like any Hugging Face model

States and the transitions allowed between them::

    queued ──▶ running ──▶ finished | failed | diverged | cancelled
      │           │  ╲
      │           │   ▶ interrupted ──(resume)──▶ queued
      ▼           ▼
    cancelled  cancelled

A run whose process died without saying so (SIGKILL, power loss, app restart) is found by
``refresh()`` and marked interrupted; it resumes from its newest complete checkpoint.

The run folders are the source of truth; ``runs.sqlite`` is an index of them. Every state change
is also written to ``<run_id>/status.json`` (best effort: status, reason, step, pid, times, name),
so a job that stopped while SQLite could not be written (a full disk) still leaves its reason
for ``refresh()``. An index that is empty (0 bytes), missing while run folders exist, not a
database, or without the ``runs`` table's columns is set aside as ``runs.sqlite.corrupt-<time>``
and rebuilt from the folders (``RunStore.rebuilt_notice`` then says so, once). A run's state
when rebuilt, first rule that applies:

1. ``model/`` holds the final model (it is renamed into place whole): finished;
2. ``status.json`` says failed, diverged or cancelled: that state and its reason;
3. ``status.json`` says running and that process is alive: running; says queued: queued;
4. a checkpoint whose manifest verifies: interrupted, resumable from it;
5. the corpus is there: interrupted, resuming restarts it from the beginning;
6. otherwise: failed (nothing to resume from).

Its owner comes from ``owner.json``, its name, times and pid from ``status.json``; a folder without
a readable ``config.json`` (or with a ``status.json`` of the wrong shape) is left out, and counted
in the notice.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from mlm_core.errors import InputError, RunError, RunIndexRebuilt
from mlm_core.settings import shown_value

QUEUED, RUNNING, FINISHED, FAILED, DIVERGED, CANCELLED, INTERRUPTED = (
    "queued", "running", "finished", "failed", "diverged", "cancelled", "interrupted",
)
STATES = (QUEUED, RUNNING, FINISHED, FAILED, DIVERGED, CANCELLED, INTERRUPTED)
FINAL_STATES = (FINISHED, FAILED, DIVERGED, CANCELLED)
TRANSITIONS = {
    QUEUED: {RUNNING, CANCELLED},
    RUNNING: {FINISHED, FAILED, DIVERGED, CANCELLED, INTERRUPTED},
    INTERRUPTED: {QUEUED, CANCELLED},
    FINISHED: set(),
    FAILED: set(),
    DIVERGED: set(),
    CANCELLED: set(),
}
BUSY_TIMEOUT_MS = 10_000
INDEX_FILE = "runs.sqlite"
INDEX_LOCK = "runs.sqlite.lock"  # held while the index is checked, set aside and rebuilt
CORPUS_FILE = "corpus.data"  # in each run's (and experiment's) folder: the uploaded bytes; the name is in the config
STATUS_FILE = "status.json"  # in each run's folder: its state, for refresh() and a rebuild of the index
# Without these the index cannot answer a query; later columns (name, owner) are added when missing.
REQUIRED_COLUMNS = frozenset({"id", "request_id", "created", "updated", "status", "cancel_requested", "pid",
                              "config", "step", "reason"})
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26  # SQLite's result codes for a damaged file and a file of another kind
# Rebuilds done in this process whose notice nobody has shown yet (store root -> notice): the instance that
# rebuilt may be one the page never sees (the sidebar's model picker opens the store first).
_unshown_notices: dict[str, str] = {}
_unshown_lock = threading.Lock()

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    request_id TEXT UNIQUE,          -- one run per start request (double clicks)
    created REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    config TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER,
    best_heldout_loss REAL,
    best_accuracy REAL,
    device TEXT,
    reason TEXT,                     -- why it failed / diverged / was interrupted
    started REAL,
    finished REAL,
    name TEXT,                       -- the user's name for the run; NULL: named from its settings
    owner TEXT                       -- who started it (ownership.py); NULL: a run from before owners
);
"""
MAX_NAME_CHARS = 80  # a run's name fits a menu line
OWNER_FILE = "owner.json"  # in each run's folder: the owner, for a rebuild of the table from the folders
# How a link, a picker or TrainConfig.model names a finished run's model: by id, never by its
# folder, so no server path reaches a URL and a link cannot name an arbitrary folder.
RUN_REF_PREFIX = "run:"


def run_ref(run_id: str) -> str:
    """``run:ID``: the model reference of run ``run_id``."""
    return f"{RUN_REF_PREFIX}{run_id}"


def run_ref_id(model: str | None) -> str | None:
    """The run id in a ``run:ID`` model reference; None for any other model name."""
    if model and model.strip().startswith(RUN_REF_PREFIX):
        return model.strip()[len(RUN_REF_PREFIX):].strip()
    return None

@dataclass(frozen=True)
class RunRecord:
    id: str
    status: str
    created: float
    updated: float
    config: dict
    step: int
    total_steps: int | None
    best_heldout_loss: float | None
    best_accuracy: float | None
    device: str | None
    reason: str | None
    started: float | None
    finished: float | None
    pid: int | None
    cancel_requested: bool
    name: str | None = None  # set by the user (``RunStore.rename``); run_table.run_name gives the shown name
    owner: str | None = None  # who started it (ownership.py); None: a run from before owners were recorded

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    def as_dict(self) -> dict:
        record = dict(self.__dict__)
        record["run_id"] = record.pop("id")
        record["duration"] = self.duration
        return record


def clean_name(name: str | None) -> str | None:
    """A run name as stored: one line of printable text, at most MAX_NAME_CHARS; None when empty.

    Names are shown in menus, tables, legends and reports: they are escaped where shown, and
    control characters (newlines, terminal escapes) are refused here.
    """
    name = " ".join((name or "").split())
    if not name:
        return None
    if len(name) > MAX_NAME_CHARS:
        raise InputError(f"A run name has at most {MAX_NAME_CHARS} characters; this one has {len(name)}.")
    if any(not ch.isprintable() for ch in name):
        raise InputError("A run name cannot contain control characters.")
    return name


def process_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (psutil: the same answer on Linux, macOS and Windows); a zombie (exited,
    not yet reaped by its parent) counts as dead, one we may not inspect (another user's) as alive."""
    import psutil

    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """A file that is not a database or a corrupt page; not a busy, full or read-only database (those pass)."""
    if isinstance(exc, sqlite3.OperationalError):
        return False
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
    return code in (SQLITE_CORRUPT, SQLITE_NOTADB) or "malformed" in str(exc) or "not a database" in str(exc)


def index_state(root: Path) -> tuple:
    """A cheap fingerprint of a store's index (its files' inode, size and modification time): it changes
    whenever a run is added, changes state or goes, so a listing can be reused until it does."""
    state = []
    for name in (INDEX_FILE, f"{INDEX_FILE}-wal"):  # SQLite writes to the WAL first, to the file at checkpoints
        try:
            info = (Path(root) / name).stat()
            state.append((info.st_ino, info.st_size, info.st_mtime_ns))
        except OSError:
            state.append(None)
    return tuple(state)


def read_folder_status(folder: Path) -> dict:
    """The run folder's ``status.json`` (see the module's docstring); {} when absent or unreadable."""
    try:
        state = json.loads((folder / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


class RunStore:
    """All reads and writes of runs. Safe across threads and processes (SQLite WAL)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # Set when this store found the index empty or damaged and rebuilt it from the run folders:
        # the command line prints it as a note, the pages show it as a warning.
        self.rebuilt_notice: str | None = None
        with self._connect() as db:  # checks the index first; an unusable one is rebuilt (_repair_index)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(runs)")}
            if "name" not in columns:  # a store from before runs had names
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
                    db.execute("ALTER TABLE runs ADD COLUMN name TEXT")
            if "owner" not in columns:  # a store from before runs had owners: its runs keep NULL
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
                    db.execute("ALTER TABLE runs ADD COLUMN owner TEXT")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection to a usable index: one found empty or damaged is rebuilt first (``_repair_index``).

        Damage found only inside a query (a corrupt page) sets the file aside and rebuilds it too; that
        query ends with RunIndexRebuilt (a RunError) asking to try again.
        """
        absent = not (self.root / INDEX_FILE).exists()  # connecting creates an empty file: look first
        seen = self._index_inode()
        db = self._open_index()
        if not self._index_usable(db):
            db.close()
            self._repair_index(absent=absent)
            db = self._open_index()
        try:
            yield db
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            db.close()
            self._repair_index(damaged_inode=seen)
            raise RunIndexRebuilt("The run list was damaged; it has been rebuilt from the run folders. "
                                  "Try again.") from None
        finally:
            db.close()

    def _open_index(self) -> sqlite3.Connection:
        """A connection to the index; RunError (not SQLite's "unable to open database file") when the file
        cannot be opened at all: a folder in its place, or a read-only store that cannot create it or its WAL."""
        path = self.root / INDEX_FILE
        if path.is_dir():
            raise RunError(f"The run store's index {INDEX_FILE} is a folder, not a file: move it away and the "
                           "runs are found again from their folders.")
        try:
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            try:  # opening is lazy: a file that cannot be opened fails here, not in the middle of a query
                db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            except sqlite3.OperationalError:
                raise
            except sqlite3.DatabaseError:  # damage: for _index_usable to find and repair
                pass
        except sqlite3.OperationalError as exc:
            if "unable to open" not in str(exc) and "readonly" not in str(exc):
                raise
            writable = os.access(self.root, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
            why = "cannot be written (a read-only folder or file system)" if not writable else "cannot be opened"
            raise RunError(f"The run store {why}: its runs cannot be listed or changed. Give MaskLab a "
                           "writable MASKLAB_HOME (or --out folder).") from None
        return db

    @staticmethod
    def _index_usable(db: sqlite3.Connection) -> bool:
        """Whether the file is a database with the runs table (an empty file opens as an empty database)."""
        try:
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        except sqlite3.DatabaseError as exc:
            if _is_damage(exc):
                return False
            raise
        return columns >= REQUIRED_COLUMNS

    def _run_folders(self) -> list[Path]:
        """Folders that look like runs: a run id's name and a config.json (readable or not)."""
        return sorted(p for p in self.root.iterdir() if p.is_dir() and (p / "config.json").exists()
                      and all(ch.isalnum() or ch == "-" for ch in p.name))

    def _index_inode(self) -> int | None:
        try:
            return os.stat(self.root / INDEX_FILE).st_ino
        except OSError:
            return None

    def _repair_index(self, damaged_inode: int | None = None, absent: bool = False) -> None:
        """Make the index usable, under a lock so that one process repairs it and the others wait.

        A new store gets its table. An index that is empty while run folders exist, missing, not a
        database or without the table's columns is set aside as ``runs.sqlite.corrupt-<time>`` and
        rebuilt from the run folders; ``rebuilt_notice`` says so. ``absent``: the caller found no
        file (the empty one there now is its connection's).
        ``damaged_inode``: a query found a corrupt page in that file (unless another process has
        replaced it since, it is set aside even though its header and schema read well).
        """
        path = self.root / INDEX_FILE
        with FileLock(self.root / INDEX_LOCK):  # one process repairs; the others wait, then find it done
            if damaged_inode is None:
                with closing(self._open_index()) as db:
                    if self._index_usable(db):  # another process repaired it while we waited
                        return
            elif self._index_inode() != damaged_inode:  # another process rebuilt it while we waited
                return
            folders = self._run_folders()
            size = path.stat().st_size if path.exists() else 0
            existed = path.exists() and not (absent and size == 0)
            if not folders and size == 0:  # a new store: nothing to set aside or rebuild
                with closing(self._open_index()) as db:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(SCHEMA)
                return
            from mlm_core.training.rebuild import build_index, set_aside  # reads checkpoints: imports torch

            aside = set_aside(path) if existed else None
            rebuilt, unreadable = build_index(self, folders)
        what = "missing" if not existed else "empty" if size == 0 else "damaged"
        self.rebuilt_notice = (
            f"The run list ({INDEX_FILE}) was {what}; "
            + (f"it was set aside as {aside.name} and " if aside else "it was ")
            + f"rebuilt from the run folders: {rebuilt} run{'s' if rebuilt != 1 else ''} found"
            + (f", {unreadable} unreadable folder{'s' if unreadable != 1 else ''} left out" if unreadable else "")
            + "."
        )
        with _unshown_lock:
            _unshown_notices[str(self.root.resolve())] = self.rebuilt_notice

    def take_rebuilt_notice(self) -> str | None:
        """The notice of a rebuild of this store's index done in this process, the first time it is asked; then None.

        Example (a page)::

            if notice := store.take_rebuilt_notice():
                st.warning(notice)
        """
        with _unshown_lock:
            return _unshown_notices.pop(str(self.root.resolve()), None)

    def note_in_folder(self, run_id: str, **fields) -> None:
        """Merge ``fields`` into the run folder's ``status.json`` (best effort: a full disk skips it)."""
        folder = self.folder(run_id)
        if not folder.is_dir():  # deleted: never recreate it
            return
        tmp = folder / f"{STATUS_FILE}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps({**read_folder_status(folder), **fields}, default=str))
            tmp.replace(folder / STATUS_FILE)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def folder(self, run_id: str) -> Path:
        if not run_id or not all(ch.isalnum() or ch == "-" for ch in run_id):
            raise RunError(f"{shown_value(run_id, 40)} is not a run id.")  # cut short: an id may be huge
        return self.root / run_id

    def create(
        self, config: dict, request_id: str | None = None, files: dict[str, bytes | Path] | None = None,
        owner: str | None = None,
    ) -> tuple[RunRecord, bool]:
        """A new queued run, or the existing one for the same ``request_id`` (created=False).

        ``files`` (name → bytes, e.g. the corpus) are written into the run's folder before the
        row exists, so no reader or launcher ever sees a run without them; so is ``owner``
        (``OWNER_FILE``), so the folder alone says whose run it is.
        """
        if request_id:
            existing = self._find_request(request_id)
            if existing:
                return existing, False
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = self.folder(run_id)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
        if owner is not None:
            (folder / OWNER_FILE).write_text(json.dumps({"owner": owner}))
        for name, data in (files or {}).items():
            if isinstance(data, Path):  # a corpus too big to hold: copied, never read whole
                shutil.copyfile(data, folder / name)
            else:
                (folder / name).write_bytes(data)
        now = time.time()
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO runs (id, request_id, created, updated, status, config, owner) VALUES (?,?,?,?,?,?,?)",
                    (run_id, request_id, now, now, QUEUED, json.dumps(config, sort_keys=True), owner),
                )
        except sqlite3.IntegrityError:  # the same request won a race in another process
            shutil.rmtree(folder, ignore_errors=True)
            return self._find_request(request_id), False
        return self.get(run_id), True

    def _find_request(self, request_id: str) -> RunRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE request_id = ?", (request_id,)).fetchone()
        return self._record(row) if row else None

    @staticmethod
    def _record(row: sqlite3.Row) -> RunRecord:
        data = dict(row)
        data.pop("request_id")
        data["config"] = json.loads(data["config"])
        data["cancel_requested"] = bool(data["cancel_requested"])
        return RunRecord(**data)

    def get(self, run_id: str) -> RunRecord:
        self.folder(run_id)
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunError(f"No run {shown_value(run_id, 40)}. `python -m mlm_core runs list` shows the runs.")
        return self._record(row)

    def list(self) -> list[RunRecord]:
        self.refresh()
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs ORDER BY created DESC").fetchall()
        return [self._record(row) for row in rows]

    def transition(self, run_id: str, new_status: str, **fields) -> RunRecord:
        """Move a run to ``new_status`` if allowed from its current state (atomic)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                db.execute("ROLLBACK")
                raise RunError(f"No run {shown_value(run_id, 40)}.")
            if new_status not in TRANSITIONS[row["status"]]:
                db.execute("ROLLBACK")
                raise RunError(f"Run {run_id} is {row['status']}; it cannot become {new_status}.")
            now = time.time()
            fields = {"status": new_status, "updated": now, **fields}
            if new_status == RUNNING:
                fields.setdefault("started", now)
            if new_status in FINAL_STATES:
                fields.setdefault("finished", now)
            if new_status == QUEUED:
                fields.update(cancel_requested=0, reason=None, pid=None, finished=None)
            db.execute(
                f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                (*fields.values(), run_id),
            )
            # The folder keeps the state too (refresh() and a rebuild read it); written before the commit, so
            # a state that SQLite then refuses (a full disk) is still in the folder for refresh().
            self.note_in_folder(run_id, **fields)
            db.execute("COMMIT")
        return self.get(run_id)

    def update(self, run_id: str, **fields) -> None:
        """Progress fields (step, best losses, pid, device) without a state change."""
        allowed = {"step", "total_steps", "best_heldout_loss", "best_accuracy", "device", "pid", "reason"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"Cannot update {unknown}")
        fields["updated"] = time.time()
        with self._connect() as db:
            db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                       (*fields.values(), run_id))

    def rename(self, run_id: str, name: str | None) -> RunRecord:
        """Give a run the user's ``name``; an empty name brings back the one made from its settings."""
        self.get(run_id)
        name = clean_name(name)
        with self._connect() as db:
            db.execute("UPDATE runs SET name = ?, updated = ? WHERE id = ?", (name, time.time(), run_id))
        self.note_in_folder(run_id, name=name)  # a rebuilt index keeps the name
        return self.get(run_id)

    def request_cancel(self, run_id: str) -> RunRecord:
        """Cancel now if queued/interrupted; a running job sees the flag and stops itself."""
        record = self.get(run_id)
        if record.status in (QUEUED, INTERRUPTED):
            return self.transition(run_id, CANCELLED, reason="cancelled by the user")
        if record.status == RUNNING:
            with self._connect() as db:
                db.execute("UPDATE runs SET cancel_requested = 1, updated = ? WHERE id = ?", (time.time(), run_id))
            if not process_alive(record.pid):
                return self.transition(run_id, CANCELLED, reason="cancelled by the user")
            return self.get(run_id)
        raise RunError(f"Run {run_id} is already {record.status}.")

    def cancel_requested(self, run_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def refresh(self) -> list[str]:
        """Mark running runs whose process is gone as interrupted; returns their ids."""
        with self._connect() as db:
            rows = db.execute("SELECT id, pid FROM runs WHERE status = ?", (RUNNING,)).fetchall()
        lost = [row["id"] for row in rows if not process_alive(row["pid"])]
        for run_id in lost:
            # A job that could not write its end to SQLite (a full disk) left it in its folder's status.json.
            note = read_folder_status(self.folder(run_id))
            status, reason = INTERRUPTED, "the training process stopped unexpectedly"
            if note.get("status") in (INTERRUPTED, FAILED, DIVERGED, CANCELLED) and note.get("reason"):
                status, reason = note["status"], note["reason"]
            with contextlib.suppress(RunError):  # it may have finished between the two reads
                self.transition(run_id, status, reason=reason)
        return lost

    def delete(self, run_id: str) -> None:
        record = self.get(run_id)
        if record.status == RUNNING and process_alive(record.pid):
            raise RunError(f"Run {run_id} is running; cancel it before deleting it.")
        shutil.rmtree(self.folder(run_id), ignore_errors=True)
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def append_metrics(self, run_id: str, record: dict) -> None:
        with open(self.folder(run_id) / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def truncate_metrics(self, run_id: str, step: int) -> None:
        """Drop evaluations after ``step`` (a resumed run recomputes them from its checkpoint)."""
        path = self.folder(run_id) / "metrics.jsonl"
        if not path.exists():
            return
        kept = "".join(json.dumps(r) + "\n" for r in self.metrics(run_id) if r.get("step", 0) <= step)
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as handle:
            handle.write(kept)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)

    def metrics(self, run_id: str) -> list[dict]:
        path = self.folder(run_id) / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash: everything before it is intact
        return rows
