"""The run store: one SQLite row per fine-tuning run plus a folder with its files.

    <root>/runs.sqlite            the table below (WAL, busy timeout, one connection per use)
    <root>/<run_id>/config.json   the TrainConfig the run was started with
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
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlm_core.errors import InputError, RunError

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
    name TEXT                        -- the user's name for the run; NULL: named from its settings
);
"""
MAX_NAME_CHARS = 80  # a run's name fits a menu line
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
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) counts as dead
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


class RunStore:
    """All reads and writes of runs. Safe across threads and processes (SQLite WAL)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(runs)")}
            if "name" not in columns:  # a store from before runs had names
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
                    db.execute("ALTER TABLE runs ADD COLUMN name TEXT")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / "runs.sqlite", timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        try:
            yield db
        finally:
            db.close()

    def folder(self, run_id: str) -> Path:
        if not run_id or not all(ch.isalnum() or ch == "-" for ch in run_id):
            raise RunError(f"'{run_id}' is not a run id.")
        return self.root / run_id

    def create(
        self, config: dict, request_id: str | None = None, files: dict[str, bytes] | None = None
    ) -> tuple[RunRecord, bool]:
        """A new queued run, or the existing one for the same ``request_id`` (created=False).

        ``files`` (name → bytes, e.g. the corpus) are written into the run's folder before the
        row exists, so no reader or launcher ever sees a run without them.
        """
        if request_id:
            existing = self._find_request(request_id)
            if existing:
                return existing, False
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = self.folder(run_id)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
        for name, data in (files or {}).items():
            (folder / name).write_bytes(data)
        now = time.time()
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO runs (id, request_id, created, updated, status, config) VALUES (?,?,?,?,?,?)",
                    (run_id, request_id, now, now, QUEUED, json.dumps(config, sort_keys=True)),
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
            raise RunError(f"No run '{run_id}'. `python -m mlm_core runs list` shows the runs.")
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
                raise RunError(f"No run '{run_id}'.")
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
            with contextlib.suppress(RunError):  # it may have finished between the two reads
                self.transition(run_id, INTERRUPTED, reason="the training process stopped unexpectedly")
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
