"""Who a run belongs to, who may act on it, and the operator's limits on starting runs.

A run records its owner (the run store's ``owner`` column, and ``owner.json`` in its folder):

* ``user:<name>``: a signed-in user (named by the operator's proxy header, or Streamlit's sign-in);
* ``browser:<16 hex>``: one browser, when nobody is signed in (ui/identity.py makes the id);
* ``local:<OS user>``: the command line and the Python API, i.e. the machine's own user.

Everyone may view every run (its row, curves, metrics and probes). Cancelling, deleting, resuming,
renaming and downloading the model take ownership (``may_manage``; downloading also takes ownership
of every run it was fine-tuned from, ``may_download_model``), unless the operator set
``others_may_manage_runs``; the machine's own user may manage every run, and a run from before
owners were recorded is treated as the machine's.

Starting a run (``check_start``, called by ``jobs.submit`` and ``jobs.resume``) is bounded by the
operator's ``max_queued_runs`` (runs waiting or training on the server) and ``max_runs_per_owner``
(the same, per owner), both of which the machine's own user is exempt from, and ``run_store_quota_mb`` (the store's
disk use plus the new run's corpus copy). Limiting the runs one owner has waiting or training also
bounds how fast one owner can start runs: a loop of starts is refused after the first few.

Example::

    may_manage(record, "browser:1f2e3d4c5b6a7988", server_policy())  # False for another's run
    check_start(store, "browser:1f2e3d4c5b6a7988", corpus_bytes=2_000_000)  # RunError past a limit
"""

from __future__ import annotations

import getpass
import os
import stat
import threading
import time
from pathlib import Path

from mlm_core.errors import MaskLabError, RunError
from mlm_core.policy import ServerPolicy, server_policy
from mlm_core.training.costs import format_bytes
from mlm_core.training.run_table import format_duration
from mlm_core.training.store import QUEUED, RUNNING, RunRecord, RunStore, run_ref_id

LOCAL_PREFIX, USER_PREFIX, BROWSER_PREFIX = "local:", "user:", "browser:"
NOT_YOURS = "Started by another user; only they (or the operator) can cancel or delete it."
DISK_USE_MAX_AGE_S = 5.0  # a burst of starts reads the store's size once; a walk of a big store takes a while

_disk_use: dict[Path, tuple[float, int]] = {}  # store root -> (monotonic time measured, bytes)
_disk_use_lock = threading.Lock()


def local_owner() -> str:
    """``local:<OS user name>``: the owner of runs started from the command line or the Python API."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (some containers)
        name = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return LOCAL_PREFIX + name


def is_local(owner: str | None) -> bool:
    """Whether ``owner`` is the machine's own user (the command line), who may manage every run."""
    return bool(owner) and owner.startswith(LOCAL_PREFIX)


def may_manage(record: RunRecord, owner: str, policy: ServerPolicy | None = None) -> bool:
    """Whether ``owner`` may cancel, delete, resume, rename or download the model of run ``record``."""
    policy = policy or server_policy()
    return is_local(owner) or policy.others_may_manage_runs or (record.owner is not None and record.owner == owner)


MAX_RUN_CHAIN = 32  # runs started from runs started from runs ...: deeper is refused rather than walked


def may_download_model(store: RunStore, record: RunRecord, owner: str, policy: ServerPolicy | None = None) -> bool:
    """Whether ``owner`` may download the model of ``record``: they may manage it and every run it was
    fine-tuned from (``run:ID`` bases, followed back to the first).

    Otherwise anyone could take another user's model home by fine-tuning it for one step at a learning
    rate of 1e-7 and downloading their own, nearly identical, run.
    """
    policy = policy or server_policy()
    if is_local(owner) or policy.others_may_manage_runs:
        return True
    current: RunRecord | None = record
    for _ in range(MAX_RUN_CHAIN):
        if current is None or not may_manage(current, owner, policy):
            return False
        base = run_ref_id(str(current.config.get("model") or ""))
        if base is None:
            return True
        try:
            current = store.get(base)
        except RunError:  # a base run since deleted: its owner cannot be known, so nobody else downloads
            return False
    return False


def check_may_manage(record: RunRecord, owner: str, policy: ServerPolicy | None = None) -> None:
    """RunError with ``NOT_YOURS`` unless ``may_manage``."""
    if not may_manage(record, owner, policy):
        raise RunError(NOT_YOURS)


# ----------------------------------------------------------------------------- actions that need ownership
# The pages call these, not the store's methods: a forged button event still meets the check.


def cancel(store: RunStore, run_id: str, owner: str) -> RunRecord:
    check_may_manage(store.get(run_id), owner)
    return store.request_cancel(run_id)


def delete(store: RunStore, run_id: str, owner: str) -> None:
    check_may_manage(store.get(run_id), owner)
    store.delete(run_id)
    forget_disk_use(store.root)


def rename(store: RunStore, run_id: str, name: str | None, owner: str) -> RunRecord:
    check_may_manage(store.get(run_id), owner)
    return store.rename(run_id, name)


# ----------------------------------------------------------------------------- limits on starting runs


def active_runs(store: RunStore) -> list[RunRecord]:
    """Runs waiting or training (runs whose process died are marked interrupted first, and not counted)."""
    return [record for record in store.list() if record.status in (QUEUED, RUNNING)]


def check_start(store: RunStore, owner: str, corpus_bytes: int = 0, policy: ServerPolicy | None = None,
                resuming: RunRecord | None = None, estimated_s: float | None = None,
                disk_bytes: int | None = None) -> None:
    """RunError saying which limit a new run of ``owner`` (or ``resuming``, put back in the queue) would pass.

    ``corpus_bytes``: the size of the corpus copy the new run adds to the store; ``disk_bytes``: what it
    will write besides (its checkpoints and model at their peak, ``peak_disk_bytes``); ``estimated_s``:
    the run's estimated time (``costs.estimate_time``, as the page shows it), bounded for browser users.
    """
    policy = policy or server_policy()
    if estimated_s is not None and not is_local(owner) and estimated_s > policy.max_run_minutes * 60:
        raise RunError(f"This run is estimated to take {format_duration(estimated_s)}; this server allows runs of "
                       f"up to {format_duration(policy.max_run_minutes * 60)}. Use fewer steps, a smaller batch or "
                       "shorter blocks.")
    active = active_runs(store)
    limit = policy.max_queued_runs
    # the machine's own user (the command line) is the operator: the queue limit protects the server from
    # browsers, so it does not stop the operator's own starts (the disk quota still does: the disk is finite)
    if len(active) >= limit and not is_local(owner):
        raise RunError(f"This server already has {len(active)} run{'' if len(active) == 1 else 's'} waiting or training "
                       f"({'its limit' if len(active) == limit else f'its limit is {limit}'}); "
                       "start again when one ends.")
    run_owner = resuming.owner if resuming is not None else owner
    if not is_local(owner) and not is_local(run_owner):
        mine = sum(1 for record in active if record.owner == run_owner)
        if mine >= policy.max_runs_per_owner:
            runs = "run" if mine == 1 else "runs"
            raise RunError(f"You already have {mine} {runs} waiting or training, the most one user may have on "
                           "this server; start again when one ends (or cancel one on the Runs page).")
    quota = policy.run_store_quota_mb * 1_000_000
    used = store_disk_use(store.root)
    # What the runs already started will still write (checkpoints, their model) counts as used: twenty starts
    # into an almost empty store would otherwise all pass and fill the disk afterwards.
    growing = sum(still_to_write(store, record) for record in active if record.id != getattr(resuming, "id", None))
    needs = corpus_bytes + (disk_bytes or 0)
    if used + growing + needs > quota:
        parts = f"{format_bytes(used)} written"
        if growing:
            parts += f" and {format_bytes(growing)} that running runs will still write"
        this_run = f", and this run needs about {format_bytes(needs)}" if needs else ""
        raise RunError(f"The run store is full: {parts}, of the {format_bytes(quota)} this server allows{this_run}. "
                       "Delete runs you no longer need, or wait for runs to finish, then start again.")


def peak_disk_bytes(config: dict, corpus_bytes: int) -> int:
    """The most a run of ``config`` holds on disk while it trains (``costs.estimate_disk``); 0 when unknown."""
    from mlm_core.training.config import TrainConfig
    from mlm_core.training.costs import estimate_disk

    try:
        settings = TrainConfig.from_dict(config)
    except (MaskLabError, TypeError):
        return 0
    # checkpoints kept are bounded by keep_checkpoints, so a long run's peak is that of any run with several
    estimate = estimate_disk(settings, settings.steps or 10**6, corpus_bytes)
    return estimate.peak_bytes if estimate else 0


def still_to_write(store: RunStore, record: RunRecord) -> int:
    """Bytes an active run is expected to add to its folder before it ends (its peak less what it holds)."""
    from mlm_core.training.costs import folder_bytes

    folder = store.folder(record.id)
    corpus = sum(path.stat().st_size for path in folder.glob("corpus.*") if path.is_file())
    return max(0, peak_disk_bytes(record.config, corpus) - folder_bytes(folder))


def store_disk_use(root: Path, max_age_s: float = DISK_USE_MAX_AGE_S) -> int:
    """Bytes the store under ``root`` takes on disk, measured at most every ``max_age_s`` seconds.

    Allocated blocks, not file sizes (a checkpoint being written is counted as it grows); a file
    with several hard links is counted once.
    """
    root = Path(root)
    with _disk_use_lock:
        measured = _disk_use.get(root)
        if measured is not None and time.monotonic() - measured[0] < max_age_s:
            return measured[1]
    used = _walk_disk_use(root)
    with _disk_use_lock:
        _disk_use[root] = (time.monotonic(), used)
    return used


def note_disk_use(root: Path, added_bytes: int) -> None:
    """Count ``added_bytes`` just written into the store until the next measurement (a burst of starts)."""
    with _disk_use_lock:
        measured = _disk_use.get(Path(root))
        if measured is not None:
            _disk_use[Path(root)] = (measured[0], measured[1] + added_bytes)


def forget_disk_use(root: Path) -> None:
    """Measure again on the next check (after a delete frees space)."""
    with _disk_use_lock:
        _disk_use.pop(Path(root), None)


def _walk_disk_use(root: Path) -> int:
    total, seen = 0, set()
    pending = [root]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:  # deleted while walked, or unreadable: nothing to count there
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                pending.append(Path(entry.path))
                continue
            if info.st_nlink > 1:
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
            blocks = getattr(info, "st_blocks", None)
            total += blocks * 512 if blocks is not None else info.st_size
    return total
