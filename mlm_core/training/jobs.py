"""Training jobs: each run in its own OS process, bound to the run store.

``submit()`` validates a corpus and settings, checks the operator's limits on starting runs
(ownership.py), stores them with the run and its owner and launches it (at most ``max_parallel()``
at once; the rest wait queued). ``execute()`` is what the job
process (``python -m mlm_core.training.jobs ROOT RUN_ID``) and the CLI's foreground ``train`` /
``runs resume`` call: it drives the Trainer and turns every outcome into a final state
with a reason, so the UI never has to read a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from mlm_core.errors import Cancelled, Diverged, MaskLabError, RunIndexRebuilt
from mlm_core.policy import (
    ServerPolicy,
    masklab_home,  # noqa: F401 - re-exported: callers import it from here
    server_policy,
)
from mlm_core.text.corpus import Corpus, StreamedCorpus, open_corpus_file, read_corpus
from mlm_core.training import checkpoints, ownership, tracking
from mlm_core.training.config import TrainConfig
from mlm_core.training.costs import format_bytes, others_load, read_pace, write_pace
from mlm_core.training.data import split_texts
from mlm_core.training.memory import check_memory
from mlm_core.training.run_table import format_duration
from mlm_core.training.store import (
    CANCELLED,
    CORPUS_FILE,
    DIVERGED,
    FAILED,
    FINAL_STATES,
    FINISHED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    RunError,
    RunRecord,
    RunStore,
    process_alive,
)
from mlm_core.training.trainer import Trainer, TrainingCallbacks

STATUS_EVERY_S = 1.0  # how often a job writes its step to SQLite (cheap, but not every step)
CANCEL_POLL_S = 0.5  # how often a job reads its cancel flag
STATUS_WRITE_TRIES = 4  # a final state that SQLite refuses (a full disk) is tried again this many times...
STATUS_RETRY_S = 0.25  # ...this far apart, then left in the run folder for refresh() (store.note_in_folder)
RESUME_COMMAND = "masklab runs resume"
# How a stored reason names a folder: a run's reason is shown in the browser, which must not learn server
# paths, so it names the run; the command line puts the real path in its place (``reason_with_paths``).
RUN_FOLDER_PHRASE = "the folder of run {run_id}"
STORE_FOLDER_PHRASE = "the run store's folder"


def default_store_root() -> Path:
    return masklab_home() / "runs"


def default_store() -> RunStore:
    return RunStore(default_store_root())


def max_parallel() -> int:
    """Runs trained at once (default 1: one job already uses every core or the GPU)."""
    return max(1, int(os.environ.get("MASKLAB_MAX_RUNS", "1")))


class StoreCallbacks(TrainingCallbacks):
    """Progress into the run store, plus an optional printer (the CLI's progress output)."""

    def __init__(self, store: RunStore, run_id: str, printer: Callable[[str, dict], None] | None = None):
        self.store, self.run_id, self.printer = store, run_id, printer
        self.folder = store.folder(run_id)
        # A browser user's run is bounded while it runs too, not only by its estimate at the start (an
        # estimate can be steered: an unusual corpus, a model of unknown size). None: the operator's own run.
        self.owner = store.get(run_id).owner
        self.deadline: float | None = None
        self.stop: tuple[str, str] | None = None  # (state, reason) when the server's limits stopped the run
        self.step = 0  # the last completed step: where a run that stops now stopped
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._pace: dict = {}
        self._loads: list[float] = []  # load averages seen while it ran, for the next estimate

    def on_preparing(self, progress: dict) -> None:
        # In the pace file, which the Runs page reads; on_start replaces it with the steps' pace.
        self._pace = {"preparing": progress}
        self._write_pace()
        if self.printer:
            self.printer("preparing", progress)

    def on_start(self, info: dict) -> None:
        best = info.get("best") or {}  # a resumed run's best so far (from its checkpoint)
        self.step = info["resumed_from"]
        with contextlib.suppress(RunIndexRebuilt):  # progress only: the rebuilt index has the run (its folder)
            self.store.update(self.run_id, device=info["device"], total_steps=info["total_steps"],
                              best_heldout_loss=best.get("heldout_loss"), best_accuracy=best.get("masked_accuracy"))
        # The pace of this process: when its first step began (start-up measured up to here), and then
        # when each written step ended. Time left is made from completed steps only (costs.time_left).
        now, started = time.time(), self.store.get(self.run_id).started
        if not ownership.is_local(self.owner or ownership.local_owner()):
            self.deadline = time.monotonic() + server_policy().max_run_minutes * 60
        self._pace = {"t0": now, "first_step": info["resumed_from"], "step": info["resumed_from"], "at": now,
                      "startup_s": now - started if started else None}
        self._write_pace()
        if self.printer:
            self.printer("start", info)

    def on_step(self, step: int, total: int, loss: float) -> None:
        self.step = step
        now = time.monotonic()
        if now - self._last_write >= STATUS_EVERY_S or step == total:
            with contextlib.suppress(RunIndexRebuilt):  # progress only (see on_start)
                self.store.update(self.run_id, step=step)
            self._pace.update(step=step, at=time.time(), load=self._others_load())
            self._pace.setdefault("t1", self._pace["at"])  # the first step warms up: the rate is taken after it
            self._pace.setdefault("s1", step)
            self._write_pace()
            self._last_write = now
        if self.printer:
            self.printer("step", {"step": step, "total": total, "loss": loss})

    def _write_pace(self) -> None:
        with contextlib.suppress(OSError):  # only progress and estimates read it: never a reason to stop a run
            write_pace(self.folder, self._pace)

    def _others_load(self) -> float:
        """Mean load average while this job ran, less its own threads: what other work kept busy."""
        import torch

        self._loads.append(others_load())
        return max(0.0, sum(self._loads) / len(self._loads) - torch.get_num_threads())

    def on_eval(self, record: dict) -> None:
        self.store.append_metrics(self.run_id, record)
        with contextlib.suppress(RunIndexRebuilt):  # progress only (see on_start)
            self.store.update(self.run_id, step=record["step"])
        if self.printer:
            self.printer("eval", record)

    def on_best(self, best: dict) -> None:
        with contextlib.suppress(RunIndexRebuilt):  # progress only (see on_start)
            self.store.update(self.run_id, best_heldout_loss=best["heldout_loss"],
                              best_accuracy=best["masked_accuracy"])

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self._last_cancel_check < CANCEL_POLL_S:
            return False
        self._last_cancel_check = now
        self.stop = self._over_a_limit(now)
        if self.stop is not None:
            return True
        try:
            return self.store.cancel_requested(self.run_id)
        except RunIndexRebuilt:  # asked again at the next poll
            return False

    def _over_a_limit(self, now: float) -> tuple[str, str] | None:
        """(state, reason) when a browser user's run has used its time or the store its disk quota."""
        if self.deadline is None:
            return None
        policy = server_policy()
        if now > self.deadline:
            allowed = format_duration(policy.max_run_minutes * 60)
            return CANCELLED, (f"stopped at step {self.step}: this server allows a browser user's run to train "
                               f"for up to {allowed} (max_run_minutes)")
        quota = policy.run_store_quota_mb * 1_000_000
        if ownership.store_disk_use(self.store.root) > quota:
            return INTERRUPTED, (f"stopped at step {self.step}: the run store is over its quota of "
                                 f"{format_bytes(quota)}; it {resume_clause(self.folder)} once runs are deleted: "
                                 f"{RESUME_COMMAND} {self.run_id}")
        return None


def submit(
    store: RunStore,
    config: TrainConfig,
    corpus_bytes: bytes | Path,
    request_id: str | None = None,
    launch: bool = True,
    owner: str | None = None,
    policy: ServerPolicy | None = None,
    estimated_s: float | None = None,
    world_size: int = 1,
) -> tuple[RunRecord, bool]:
    """Validate, store and (by default) launch a run of ``owner``. Returns (run, created).

    The same ``request_id`` twice (a double click on Start) gives the same run. ``owner`` defaults
    to the machine's own user (ownership.local_owner); a start past one of the operator's limits
    (ownership.check_start: queue, runs per owner, disk, a browser run's estimated time) is a RunError
    saying which. ``world_size``: the processes that will train it (torchrun / accelerate launch), kept
    in its config when more than one. ``corpus_bytes`` may be a file's Path: one over the corpus size
    limit is then copied and streamed (``streaming``), its tokenized blocks counted in the disk check.
    """
    owner = owner or ownership.local_owner()
    if isinstance(corpus_bytes, Path):
        corpus = open_corpus_file(corpus_bytes, config.corpus_name, config.corpus_column, config.text_unit)
        corpus_size = corpus_bytes.stat().st_size
    else:
        corpus = read_corpus(corpus_bytes, config.corpus_name, config.corpus_column, config.text_unit)  # CorpusError
        corpus_size = len(corpus_bytes)
    blocks_disk = 0
    if isinstance(corpus, StreamedCorpus):
        from mlm_core.training.streaming import streamed_disk_bytes

        check_shareable(streamed=True, world_size=world_size)
        blocks_disk = streamed_disk_bytes(corpus, config, store.root)  # a strategy that cannot stream; a full disk
    else:
        split_texts(corpus.texts, config.heldout_fraction)  # too small to hold a text out: say so now, not in the job
    check_memory(config)  # a batch the machine cannot hold is refused here, not by the kernel's OOM killer
    tracking.check_installed(config.log_with)  # a tracker's missing package: said now, not as a failed run
    existing = store._find_request(request_id) if request_id else None
    if existing is not None:  # a second click on Start is answered with the run, not with a limit
        return existing, False
    # Checked and created under one lock: twenty starts at once cannot all pass a check made before any exists.
    with _launch_lock(store):
        ownership.check_start(store, owner, corpus_size, policy, estimated_s=estimated_s,
                              disk_bytes=ownership.peak_disk_bytes(config.to_dict(), 0) + blocks_disk)
        # The corpus is in the folder before the run exists: a racing launcher never starts it without one.
        stored_config = config.to_dict() | ({"world_size": world_size} if world_size > 1 else {})
        record, created = store.create(stored_config, request_id, files={CORPUS_FILE: corpus_bytes}, owner=owner)
        if created:
            ownership.note_disk_use(store.root, corpus_size)
    if launch:
        launch_pending(store)
    return store.get(record.id), created


def _launch_lock(store: RunStore) -> FileLock:
    """One launcher (or start check) at a time across processes and threads: a lock file in the store
    (filelock: flock on POSIX, msvcrt on Windows; each call opens its own handle, so threads wait too)."""
    return FileLock(store.root / "launch.lock")


def launch_pending(store: RunStore) -> list[str]:
    """Start queued runs in their own processes while fewer than ``max_parallel()`` run."""
    started = []
    with _launch_lock(store):  # two launchers never exceed the limit or start a run twice
        store.refresh()
        runs = store.list()
        running = sum(1 for r in runs if r.status == RUNNING)
        for record in sorted((r for r in runs if r.status == QUEUED), key=lambda r: r.created):
            if running >= max_parallel():
                break
            folder = store.folder(record.id)
            with open(folder / "log.txt", "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "mlm_core.training.jobs", str(store.root), record.id],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # survives the app's process and its restarts
                    cwd=str(Path(__file__).resolve().parents[2]),
                )
            with contextlib.suppress(RunError):  # the job process may have marked itself running first
                store.transition(record.id, RUNNING, pid=process.pid)
            running += 1
            started.append(record.id)
    return started


def resume(store: RunStore, run_id: str, launch: bool = True, by: str | None = None) -> RunRecord:
    """Put an interrupted run back in the queue (it continues from its newest checkpoint).

    ``by``: who asks (default: the machine's own user); they must be allowed to manage the run
    (ownership.may_manage), and the queue must have room (ownership.check_start).
    """
    by = by or ownership.local_owner()
    store.refresh()
    record = store.get(run_id)
    ownership.check_may_manage(record, by)
    if record.status != INTERRUPTED:
        raise RunError(f"Run {run_id} is {record.status}; only interrupted runs can be resumed.")
    with _launch_lock(store):
        ownership.check_start(store, by, resuming=record)
        store.transition(run_id, QUEUED)
    if launch:
        launch_pending(store)
    return store.get(run_id)


def check_shareable(streamed: bool, world_size: int) -> None:
    """A streamed corpus (over the corpus size limit) trains in one process: the main process sends the
    others the corpus itself (they may be on other machines), which a corpus larger than memory cannot be."""
    if streamed and world_size > 1:
        raise MaskLabError("A corpus over the corpus size limit trains in one process; launch it without "
                           "torchrun / accelerate launch, or split the corpus.")


def load_corpus(store: RunStore, run_id: str, config: TrainConfig) -> Corpus | StreamedCorpus:
    """The run's corpus: read whole, or streamed when over the corpus size limit (``open_corpus_file``)."""
    return open_corpus_file(store.folder(run_id) / CORPUS_FILE, config.corpus_name, config.corpus_column,
                            config.text_unit)


def execute(store: RunStore, run_id: str, printer: Callable[[str, dict], None] | None = None) -> RunRecord:
    """Train run ``run_id`` in this process until it reaches a final state, and return its record.

    Under torchrun / accelerate launch this is the main process's part (see ``follow`` for the
    others'): once training has ended on every process together (finished, cancelled, diverged, or
    an error the processes agreed to stop on), the run's final state is sent to them, so that every
    process exits with the same status. An error on one process only ends it without that, and the
    launcher stops the others.

    Every outcome becomes a state with a one-line reason (RunError only when the run cannot be
    started here; KeyboardInterrupt goes on after the run is marked interrupted):

    - finished; cancelled (the user's request); diverged (NaN/inf loss, with the step);
    - interrupted by the storage (``checkpoints.storage_fault``: a full disk or quota, a read-only
      folder): the reason names the folder, the step reached and the newest checkpoint that
      verifies (or says the run restarts from the beginning), and how to resume;
    - failed: a MaskLabError's message, out of memory with the batch that caused it, or any other
      error's first line; its traceback goes to the run's log.txt, never to the terminal.

    A state that SQLite refuses to store (its disk is full too) is tried again briefly, then left
    in the run folder, where ``RunStore.refresh`` finds it once this process has ended.
    """
    record = store.get(run_id)
    if record.status == QUEUED:
        try:
            record = store.transition(run_id, RUNNING, pid=os.getpid())
        except RunError:
            # launch_pending marks the run running with this process's pid right after starting it;
            # when that lands between the read above and this transition, the run is ours all the same.
            # (Refusing here left a dead pid on a "running" run: interrupted before its first step.)
            record = store.get(run_id)
    if record.status != RUNNING or process_alive(record.pid) and record.pid != os.getpid():
        raise RunError(f"Run {run_id} is {record.status}; it cannot be started here.")
    ended_together: list[bool] = []  # set once the processes' training has ended at the same point
    record = _execute_started(store, record, printer, ended_together)
    if ended_together:
        share_from_main(record.status)
    return record


def share_from_main(value):
    """``value`` of the main process, on every process of a torchrun / accelerate launch group (one broadcast)."""
    from accelerate.utils import broadcast_object_list

    shared = [value]
    broadcast_object_list(shared, from_process=0)
    return shared[0]


def leave_group(state) -> None:
    """End this process's part in its torchrun / accelerate launch group before the process exits.

    Why: a gloo group left for the interpreter's exit is torn down in a destructor, which aborted the
    process ("terminate called without an active exception", exit -6) in about one of twelve two-process
    runs on a busy 2-core machine, after the run had finished: the launcher then reported a failure.
    Call it on the way out of a normal return only; a process that failed leaves to the launcher.
    """
    state.destroy_process_group()


def follow(run_id: str, config: dict, corpus_bytes: bytes, folder: str) -> str:
    """A non-main process's part of run ``run_id`` (torchrun / accelerate launch); returns the run's final state.

    It trains its share of every batch (see ``trainer``) and writes nothing: no store row, no file
    (no data cache, no checkpoint). ``config``, ``corpus_bytes`` and the main process's
    ``folder`` come from the main process, which reads the store: it may be on another machine.
    An error on this process alone returns failed at once (the launcher then stops the others).
    """
    trainer_config = TrainConfig.from_dict(config)
    trainer: Trainer | None = None
    try:
        corpus = read_corpus(corpus_bytes, trainer_config.corpus_name, trainer_config.corpus_column,
                             trainer_config.text_unit)
        trainer = Trainer(trainer_config, corpus, Path(folder), TrainingCallbacks(), cache_dir=None)
        trainer.run()
    except BaseException as exc:
        if trainer is None or not trainer.ended_together:
            if not isinstance(exc, MaskLabError | KeyboardInterrupt):  # its traceback for the launcher's log
                traceback.print_exc()
            if isinstance(exc, Exception):
                return FAILED  # this process's own failure
            raise
    return share_from_main(None)  # ended with the others: the main process says in which final state


def _execute_started(store: RunStore, record: RunRecord, printer, ended_together: list[bool]) -> RunRecord:
    """``execute`` once the run is this process's: train it and turn the outcome into its final state."""
    run_id = record.id
    folder = store.folder(run_id)
    checkpoints.sweep_temporaries(folder / "checkpoints")
    callbacks = StoreCallbacks(store, run_id, printer)
    trainer: Trainer | None = None
    try:
        config = TrainConfig.from_dict(record.config)
        corpus = load_corpus(store, run_id, config)
        trainer = Trainer(config, corpus, folder, callbacks, store.root / "cache")
        resume_from = checkpoints.latest_valid(folder / "checkpoints")
        callbacks.step = checkpoints.step_of(resume_from) if resume_from else 0
        # Evaluations after the checkpoint were logged by the dead process; they are recomputed.
        store.truncate_metrics(run_id, callbacks.step)
        result = trainer.run(resume_from)
        best = result.get("best", {})
        with contextlib.suppress(OSError):  # the next estimate's basis; without it, the reference pace
            write_pace(folder, {**(read_pace(folder) or {}), "timing": result["timing"]})
        # strict: a finished state SQLite refuses is a storage fault like any other (the run resumes from its
        # checkpoints, which are still there), never a "finished" that only this process believes.
        done = _set_state(store, record, FINISHED, strict=True, step=result["step"],
                          best_heldout_loss=best.get("heldout_loss"), best_accuracy=best.get("masked_accuracy"))
        # Finished: nothing can resume it any more, so its checkpoints only take space (three times the
        # model's size with AdamW's state). Deleted only now: a crash before the state is committed
        # leaves an interrupted run that resumes from them.
        checkpoints.remove_all(folder / "checkpoints")
        return done
    except Cancelled as exc:
        state, reason = callbacks.stop or (CANCELLED, str(exc))
        return _set_state(store, record, state, reason=reason, step=exc.step)
    except Diverged as exc:
        return _set_state(store, record, DIVERGED, reason=str(exc), step=callbacks.step)
    except MaskLabError as exc:
        return _set_state(store, record, FAILED, reason=str(exc), step=callbacks.step)
    except KeyboardInterrupt:  # Ctrl-C on a foreground `train`: resumable like any interrupted run
        reason = f"stopped with Ctrl-C at step {callbacks.step}; it {resume_clause(folder)}: {RESUME_COMMAND} {run_id}"
        _set_state(store, record, INTERRUPTED, reason=reason, step=callbacks.step)
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure must still end the run cleanly
        _log_traceback(folder)
        fault = checkpoints.storage_fault(exc, store.root)
        if fault is not None:
            reason = storage_fault_reason(store, run_id, fault, callbacks.step)
            return _set_state(store, record, INTERRUPTED, reason=reason, step=callbacks.step)
        return _set_state(store, record, FAILED, reason=failure_reason(exc, trainer, callbacks.step),
                          step=callbacks.step)
    finally:
        if trainer is not None and trainer.processes > 1 and trainer.ended_together:
            ended_together.append(True)


def _log_traceback(folder: Path) -> None:
    """The current exception's traceback into the run's log.txt (best effort: the disk may be full)."""
    with contextlib.suppress(OSError), open(folder / "log.txt", "a") as log:
        traceback.print_exc(file=log)


def _set_state(store: RunStore, record: RunRecord, status: str, strict: bool = False, **fields) -> RunRecord:
    """Store the run's new state, trying again briefly when SQLite cannot be written (a full disk).

    ``strict``: raise what the store raised. Otherwise a state that cannot be stored is written to
    the run's folder (``RunStore.note_in_folder``, read by ``refresh()`` once this process has
    ended) and the record this process knows is returned, so the caller still reports it.
    """
    for attempt in range(STATUS_WRITE_TRIES):
        try:
            return store.transition(record.id, status, **fields)
        except RunError:
            if strict:
                raise
            break  # the row is gone or moved on (another process, a rebuilt index): only the folder is left
        except (sqlite3.Error, OSError):
            if strict and attempt == STATUS_WRITE_TRIES - 1:
                raise
            time.sleep(STATUS_RETRY_S)
    store.note_in_folder(record.id, status=status, **fields)
    now = time.time()
    return dataclasses.replace(record, status=status, reason=fields.get("reason"), updated=now,
                               step=fields.get("step", record.step), finished=now if status in FINAL_STATES else None)


def resume_clause(folder: Path) -> str:
    """What resuming the run in ``folder`` does, from the checkpoints really on disk (the newest that verifies)."""
    checkpoints.sweep_temporaries(folder / "checkpoints")  # a half-written checkpoint only takes space
    latest = checkpoints.latest_valid(folder / "checkpoints")
    if latest is None:
        return "will restart from the beginning (no checkpoint was saved)"
    return f"can resume from its checkpoint at step {checkpoints.step_of(latest)}"


def storage_fault_reason(store: RunStore, run_id: str, fault: checkpoints.StorageFault, step: int) -> str:
    """Why a run stopped on a storage fault and what to do; the folder named as ``reason_with_paths`` expects.

    Example: "The disk holding the folder of run 20260101-120000-ab12cd is full (No space left on
    device); the run stopped at step 6 and can resume from its checkpoint at step 3 once space is
    freed: masklab runs resume 20260101-120000-ab12cd".
    """
    folder = store.folder(run_id)
    written = Path(fault.path) if fault.path else folder  # a write through an open file names no path
    if fault.database or not checkpoints.is_inside(written, folder) and checkpoints.is_inside(written, store.root):
        place = STORE_FOLDER_PHRASE  # the index (runs.sqlite) or the store's cache
    elif not checkpoints.is_inside(written, store.root):
        place = "a folder the run writes to"  # a cache elsewhere; the browser must not learn where
    else:
        place = RUN_FOLDER_PHRASE.format(run_id=run_id)
    then = f"the run stopped at step {step} and {resume_clause(folder)}"
    if fault.kind == checkpoints.FULL:
        return (f"The disk holding {place} is full ({fault.strerror}); {then} once space is freed: "
                f"{RESUME_COMMAND} {run_id}")
    return (f"Cannot write to {place} ({fault.strerror}); {then} once it is writable again: "
            f"{RESUME_COMMAND} {run_id}")


def reason_with_paths(store: RunStore, record: RunRecord) -> str:
    """The run's reason with the folders it names as real paths: for the command line, not the browser."""
    reason = record.reason or ""
    reason = reason.replace(RUN_FOLDER_PHRASE.format(run_id=record.id), str(store.folder(record.id)))
    return reason.replace(STORE_FOLDER_PHRASE, str(store.root))


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or torch's CPU allocator failing."""
    import torch

    text = str(exc).lower()
    return isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def failure_reason(exc: BaseException, trainer: Trainer | None, step: int) -> str:
    """One line for a failed run: out of memory names the batch that did not fit, anything else its first line."""
    first_line = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    detail = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    if not is_out_of_memory(exc):
        return detail
    if trainer is None:
        return f"out of memory while loading the model and the corpus ({detail})"
    import torch

    where = "GPU memory" if isinstance(exc, torch.cuda.OutOfMemoryError) else "memory"
    split = f", even split into {trainer.micro_batches} pieces" if trainer.micro_batches > 1 else ""
    return (f"out of {where} at step {step + 1} with a batch of {trainer.batch_size} blocks of "
            f"{trainer.config.seq_len} tokens{split}; lower batch_size or seq_len ({detail})")


def main(argv: list[str] | None = None) -> int:
    """Entry point of a job process: ``python -m mlm_core.training.jobs ROOT RUN_ID``."""
    root, run_id = (argv or sys.argv[1:])[:2]
    store = RunStore(root)
    try:
        record = execute(store, run_id)
        print(f"run {run_id}: {record.status} {record.reason or ''}", flush=True)
    except RunError as exc:
        print(f"run {run_id}: {exc}", flush=True)
        return 2
    finally:
        with contextlib.suppress(sqlite3.Error, OSError):  # a full disk: the next launcher starts it
            launch_pending(store)  # hand the freed slot to the next queued run
    return 0


if __name__ == "__main__":
    sys.exit(main())
