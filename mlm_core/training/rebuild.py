"""The run index rebuilt from the run folders, which are the source of truth (the rules for each run's state
are in ``store``'s module docstring): the damaged index is set aside, a new one is written beside it and
renamed into place. ``RunStore._repair_index`` calls this, under the index lock.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from mlm_core.training.store import (
    CANCELLED,
    DIVERGED,
    FAILED,
    FINAL_STATES,
    FINISHED,
    INDEX_FILE,
    INTERRUPTED,
    OWNER_FILE,
    QUEUED,
    RUNNING,
    SCHEMA,
    RunStore,
    process_alive,
    read_folder_status,
)


def created_from_id(run_id: str, folder: Path) -> float:
    """When a run was created: its id starts with the local time (``RunStore.create``), else the folder's time."""
    try:
        return time.mktime(time.strptime(run_id[:15], "%Y%m%d-%H%M%S"))
    except ValueError:
        return folder.stat().st_mtime


def owner_in_folder(folder: Path) -> str | None:
    """The owner ``owner.json`` names (written when the run was created), else None."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text()).get("owner")
    except (OSError, ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) and owner else None


def set_aside(path: Path) -> Path:
    """Rename the index (and its WAL files) to ``runs.sqlite.corrupt-<time>``, never over an earlier one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    count = 1
    while target.exists():
        count += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{count}")
    # The WAL first: SQLite would replay an old WAL into a new file of the same name.
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.replace(target.with_name(target.name + suffix))
    path.replace(target)
    return target

def build_index(store: RunStore, folders: list[Path]) -> tuple[int, int]:
    """Write a new index from ``folders`` beside the old one, then rename it into place (readers never
    see it half built). Returns (runs rebuilt, folders left out)."""
    building = store.root / f"{INDEX_FILE}.rebuilding"
    for leftover in (building, building.with_name(building.name + "-journal")):
        leftover.unlink(missing_ok=True)
    rows = [row for row in (row_from_folder_or_none(store, folder) for folder in folders) if row]
    with closing(sqlite3.connect(building, isolation_level=None)) as db:
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        for extra in ("name", "owner"):  # the columns later stores added (see __init__)
            if extra not in columns:
                db.execute(f"ALTER TABLE runs ADD COLUMN {extra} TEXT")
                columns.add(extra)
        db.execute("BEGIN")
        written = 0
        for row in rows:
            row = {key: value for key, value in row.items() if key in columns}
            try:
                db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                           tuple(row.values()))
            except (OverflowError, sqlite3.Error):  # a value SQLite cannot hold (steps=10**30): left out
                continue
            written += 1
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=WAL")  # kept in the file's header
    building.replace(store.root / INDEX_FILE)
    return written, len(folders) - written

def row_from_folder_or_none(store: RunStore, folder: Path) -> dict | None:
    try:
        return row_from_folder(store, folder)
    # a status.json or metrics line of the wrong shape, numbers too big for anything, nesting too deep:
    # one damaged folder is left out, never the reason the whole store cannot be read
    except (TypeError, ValueError, AttributeError, OverflowError, RecursionError):
        return None

def row_from_folder(store: RunStore, folder: Path) -> dict | None:
    """The index row of the run in ``folder`` (the rules in the module's docstring); None without a config."""
    from mlm_core.training import checkpoints  # imports torch: only when a rebuild needs it

    try:
        config = json.loads((folder / "config.json").read_text())
        if not isinstance(config, dict):
            return None
    except (OSError, ValueError):
        return None
    note = read_folder_status(folder)
    metrics = store.metrics(folder.name)
    evaluated = [m for m in metrics if isinstance(m.get("heldout_loss"), int | float)]
    best = min(evaluated, key=lambda m: m["heldout_loss"], default={})
    last_step = max((m.get("step", 0) for m in metrics if isinstance(m.get("step"), int)), default=0)
    model = folder / "model"
    checkpoint = checkpoints.latest_valid(folder / "checkpoints")
    noted, pid, reason = note.get("status"), None, note.get("reason")
    if model.is_dir() and any(model.glob("*.safetensors")):
        status, step, reason = FINISHED, max(last_step, note.get("step") or 0), None
    elif noted in (FAILED, DIVERGED, CANCELLED):
        status, step = noted, note.get("step") or last_step
    elif noted == RUNNING and process_alive(note.get("pid")):
        status, step, pid = RUNNING, last_step, note.get("pid")
    elif noted == QUEUED:
        status, step = QUEUED, 0
    elif checkpoint is not None:
        status, step = INTERRUPTED, checkpoints.step_of(checkpoint)
        if noted != INTERRUPTED or not reason:
            reason = f"found on disk when the run list was rebuilt; it resumes from its checkpoint at step {step}"
    elif (folder / "corpus.data").exists():
        status, step = INTERRUPTED, 0
        if noted != INTERRUPTED or not reason:
            reason = ("found on disk when the run list was rebuilt; it has no checkpoint, so it restarts "
                      "from the beginning")
    else:
        status, step, reason = FAILED, last_step, "found on disk without its corpus when the run list was rebuilt"
    now = time.time()
    return {
        "id": folder.name, "created": note.get("created") or created_from_id(folder.name, folder), "updated": now,
        "status": status, "pid": pid, "config": json.dumps(config, sort_keys=True), "step": int(step or 0),
        "total_steps": note.get("total_steps") or config.get("steps"),
        "best_heldout_loss": best.get("heldout_loss"), "best_accuracy": best.get("masked_accuracy"),
        "device": note.get("device"), "reason": reason, "started": note.get("started"),
        "finished": note.get("finished") if status in FINAL_STATES else None, "name": note.get("name"),
        "owner": owner_in_folder(folder),
    }
