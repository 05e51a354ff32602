"""Crash-safe checkpoints: safetensors files, a manifest with checksums written last.

A checkpoint is a folder ``step-00000120`` holding ``model.safetensors`` (every weight),
``optimizer.safetensors`` (the optimizer's tensors, the RNG state, the adaptive per-token losses)
and ``state.json`` (the step, the best evaluation, the optimizer's other state and hyper-parameters,
the micro-batch split and the train losses since the last evaluation). There is no scheduler or
data position to save: the learning rate, the data order and the masks follow from the step
(``trainer.Trainer.save`` says what is written). It is written as ``step-00000120.tmp``: every file is
fsynced, then ``manifest.json`` (sizes and SHA-256 of the others) is written and fsynced,
then the folder is renamed. A SIGKILL at any moment leaves either a complete checkpoint or
a ``.tmp`` folder that ``sweep_temporaries`` removes; resume takes the newest checkpoint
whose manifest verifies, else the one before.
``retain`` deletes older checkpoints only once a newer one verifies.

Storage faults (``storage_fault``): a full disk or quota (ENOSPC, EDQUOT) and a folder that cannot
be written (EROFS; EACCES/EPERM on a path inside the run store) are told apart from other errors,
also where a library reports them only in its message (safetensors' ``SafetensorError``) or
SQLite does (``database or disk is full``). A run that meets one is interrupted, not failed: its
newest checkpoint that verifies is still there, and it resumes once the disk has room again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

STEP_PATTERN = re.compile(r"^step-(\d{8})$")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able rest."""
    tensors, scalars = {}, {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in rest["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(
    folder: Path,
    step: int,
    model_tensors: dict[str, torch.Tensor],
    optimizer_tensors: dict[str, torch.Tensor],
    state: dict,
) -> Path:
    """Write checkpoint ``step`` atomically into ``folder``; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    tmp = folder / f"step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = {
        "model.safetensors": lambda p: save_file(
            {k: v.detach().cpu().contiguous() for k, v in model_tensors.items()}, str(p)
        ),
        "optimizer.safetensors": lambda p: save_file(optimizer_tensors, str(p)),
        "state.json": lambda p: p.write_text(json.dumps(state)),
    }
    manifest = {"step": step, "files": {}}
    try:
        for name, write in files.items():
            write(tmp / name)
            _fsync_file(tmp / name)
            manifest["files"][name] = {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _fsync_file(tmp / "manifest.json")
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written copy only takes space (disk full)
        fault = storage_fault(exc)
        if isinstance(exc, SafetensorError) and fault:  # the same OSError a plain write would raise
            raise OSError(fault.errno, f"{fault.strerror} while writing {tmp.name}", str(tmp)) from exc
        raise
    if final.exists():  # a previous attempt at this step completed; replace it whole
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(folder)
    return final


def step_of(checkpoint: Path) -> int:
    return int(STEP_PATTERN.match(checkpoint.name).group(1))


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, also when a library reports it only in its message (safetensors' SafetensorError)."""
    fault = storage_fault(exc)
    return fault is not None and fault.kind == FULL


FULL, READ_ONLY = "full", "read-only"
# errno → how the system words it, by kind; the wording is also how a library that hides the errno says it
FULL_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}
READ_ONLY_ERRNOS = {errno.EROFS: "Read-only file system"}
DENIED_ERRNOS = {errno.EACCES: "Permission denied", errno.EPERM: "Operation not permitted"}
SQLITE_FULL, SQLITE_READONLY = 13, 8  # SQLite's primary result codes (the low byte of an extended one)
_QUOTED_PATH = re.compile(r'path "([^"]+)"')


@dataclass(frozen=True)
class StorageFault:
    """Why a write failed because of the storage: ``kind`` is FULL or READ_ONLY; ``path``: what was written."""

    kind: str
    errno: int
    strerror: str
    path: str | None = None
    database: bool = False  # SQLite reported it (the run store's index, in the store's folder)


def _fault_of_one(exc: BaseException, inside: Path | None) -> StorageFault | None:
    if isinstance(exc, sqlite3.OperationalError):
        code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        if code == SQLITE_FULL or "database or disk is full" in str(exc):
            return StorageFault(FULL, errno.ENOSPC, FULL_ERRNOS[errno.ENOSPC], database=True)
        if code == SQLITE_READONLY or "readonly database" in str(exc):
            return StorageFault(READ_ONLY, errno.EROFS, READ_ONLY_ERRNOS[errno.EROFS], database=True)
        return None
    if isinstance(exc, OSError) and exc.errno is not None:
        number, path = exc.errno, exc.filename
    else:  # a library's error that only names the cause in its text, e.g. "... (os error 28) at path "x""
        text = str(exc)
        number = next((n for n, words in {**FULL_ERRNOS, **READ_ONLY_ERRNOS, **DENIED_ERRNOS}.items()
                       if words in text or f"os error {n})" in text), None)
        found = _QUOTED_PATH.search(text)
        path = found.group(1) if found else None
    if number in FULL_ERRNOS:
        return StorageFault(FULL, number, FULL_ERRNOS[number], path and str(path))
    if number in READ_ONLY_ERRNOS:
        return StorageFault(READ_ONLY, number, READ_ONLY_ERRNOS[number], path and str(path))
    if number in DENIED_ERRNOS and path and inside is not None and is_inside(Path(path), inside):
        # Only inside the run store: a model folder we may not read is the user's error, not the disk's.
        return StorageFault(READ_ONLY, number, DENIED_ERRNOS[number], str(path))
    return None


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved: a relative store root works too)."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def storage_fault(exc: BaseException, inside: Path | None = None) -> StorageFault | None:
    """The storage fault behind ``exc`` (or what it was raised from), else None.

    A full disk or quota is FULL; a read-only file system READ_ONLY, and so is a permission error
    on a path inside ``inside`` (the run store). Example::

        storage_fault(OSError(errno.ENOSPC, "No space left on device")).kind   # "full"
        storage_fault(PermissionError(errno.EACCES, "denied", "/srv/runs/x/log.txt"), Path("/srv/runs")).kind
        # "read-only"
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        fault = _fault_of_one(exc, inside)
        if fault:
            return fault
        exc = exc.__cause__ or exc.__context__
    return None


def verify(checkpoint: Path) -> bool:
    """True when the manifest exists and every file matches its size and checksum."""
    try:
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        return all(
            (checkpoint / name).stat().st_size == meta["bytes"] and _sha256(checkpoint / name) == meta["sha256"]
            for name, meta in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError):
        return False


def checkpoints(folder: Path) -> list[Path]:
    """Complete-looking checkpoint folders, oldest first (not yet verified)."""
    if not folder.exists():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and STEP_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_PATTERN.match(p.name).group(1)))


def latest_valid(folder: Path) -> Path | None:
    """The newest checkpoint whose manifest verifies."""
    for candidate in reversed(checkpoints(folder)):
        if verify(candidate):
            return candidate
    return None


def load_checkpoint(checkpoint: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    return (
        load_file(str(checkpoint / "model.safetensors")),
        load_file(str(checkpoint / "optimizer.safetensors")),
        json.loads((checkpoint / "state.json").read_text()),
    )


def sweep_temporaries(folder: Path) -> None:
    """Remove half-written checkpoints left by a crash."""
    if folder.exists():
        for path in folder.glob("*.tmp"):
            shutil.rmtree(path, ignore_errors=True)


def retain(folder: Path, keep_last: int) -> list[Path]:
    """Keep the newest ``keep_last`` checkpoints that verify; delete every older one. Returns the kept.

    A checkpoint is deleted only once ``keep_last`` newer ones verify, so the previous checkpoint
    stays on disk until the one written after it is complete and checked (a crash or a damaged
    write in between still leaves something to resume from). Unverified checkpoints newer than
    the kept ones stay too: ``latest_valid`` skips them and a rewrite of their step replaces them.
    """
    kept: list[Path] = []
    for path in reversed(checkpoints(folder)):
        if len(kept) >= keep_last:
            shutil.rmtree(path, ignore_errors=True)
        elif verify(path):
            kept.append(path)
    return kept


def remove_all(folder: Path) -> None:
    """Delete every checkpoint of a run that no longer needs them (it finished: its model is the result).

    The folder is renamed away first, in one step, so that no reader (a rebuild of the run index, a
    resume) ever finds a checkpoint half deleted; then the renamed copy is deleted.
    """
    going = folder.with_name(folder.name + ".deleting")
    shutil.rmtree(going, ignore_errors=True)  # left by a crash during an earlier deletion
    with contextlib.suppress(OSError):
        folder.rename(going)
    shutil.rmtree(going, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)  # where the rename failed
