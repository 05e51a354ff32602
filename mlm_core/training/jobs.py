"""Training jobs: each run in its own OS process, bound to the run store.

``submit()`` validates a corpus and settings, stores them with the run and launches it
(at most ``max_parallel()`` at once; the rest wait queued). ``execute()`` is what the job
process (``python -m mlm_core.training.jobs ROOT RUN_ID``) and the CLI's foreground ``train`` /
``runs resume`` call: it drives the Trainer and turns every outcome into a final state
with a reason, so the UI never has to read a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from mlm_core.errors import Cancelled, Diverged, MaskLabError
from mlm_core.policy import masklab_home  # noqa: F401 - re-exported: callers import it from here
from mlm_core.text.corpus import Corpus, read_corpus
from mlm_core.training import checkpoints
from mlm_core.training.config import TrainConfig
from mlm_core.training.costs import others_load, read_pace, write_pace
from mlm_core.training.data import split_texts
from mlm_core.training.store import (
    CANCELLED,
    DIVERGED,
    FAILED,
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

CORPUS_FILE = "corpus.data"  # the uploaded bytes; the user's file name is kept only in the config
STATUS_EVERY_S = 1.0  # how often a job writes its step to SQLite (cheap, but not every step)
CANCEL_POLL_S = 0.5  # how often a job reads its cancel flag
DISK_FULL = "the disk is full; the last complete checkpoint is intact. Free space and start again."


def default_store() -> RunStore:
    return RunStore(masklab_home() / "runs")


def max_parallel() -> int:
    """Runs trained at once (default 1: one job already uses every core or the GPU)."""
    return max(1, int(os.environ.get("MASKLAB_MAX_RUNS", "1")))


class StoreCallbacks(TrainingCallbacks):
    """Progress into the run store, plus an optional printer (the CLI's progress output)."""

    def __init__(self, store: RunStore, run_id: str, printer: Callable[[str, dict], None] | None = None):
        self.store, self.run_id, self.printer = store, run_id, printer
        self.folder = store.folder(run_id)
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._pace: dict = {}
        self._loads: list[float] = []  # load averages seen while it ran, for the next estimate

    def on_start(self, info: dict) -> None:
        best = info.get("best") or {}  # a resumed run's best so far (from its checkpoint)
        self.store.update(self.run_id, device=info["device"], total_steps=info["total_steps"],
                          best_heldout_loss=best.get("heldout_loss"), best_accuracy=best.get("masked_accuracy"))
        # The pace of this process: when its first step began (start-up measured up to here), and then
        # when each written step ended. Time left is made from completed steps only (costs.time_left).
        now, started = time.time(), self.store.get(self.run_id).started
        self._pace = {"t0": now, "first_step": info["resumed_from"], "step": info["resumed_from"], "at": now,
                      "startup_s": now - started if started else None}
        self._write_pace()
        if self.printer:
            self.printer("start", info)

    def on_step(self, step: int, total: int, loss: float) -> None:
        now = time.monotonic()
        if now - self._last_write >= STATUS_EVERY_S or step == total:
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
        self.store.update(self.run_id, step=record["step"])
        if self.printer:
            self.printer("eval", record)

    def on_best(self, best: dict) -> None:
        self.store.update(self.run_id, best_heldout_loss=best["heldout_loss"], best_accuracy=best["masked_accuracy"])

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self._last_cancel_check < CANCEL_POLL_S:
            return False
        self._last_cancel_check = now
        return self.store.cancel_requested(self.run_id)


def submit(
    store: RunStore,
    config: TrainConfig,
    corpus_bytes: bytes,
    request_id: str | None = None,
    launch: bool = True,
) -> tuple[RunRecord, bool]:
    """Validate, store and (by default) launch a run. Returns (run, created).

    The same ``request_id`` twice (a double click on Start) gives the same run.
    """
    corpus = read_corpus(corpus_bytes, config.corpus_name, config.corpus_column, config.text_unit)  # CorpusError
    split_texts(corpus.texts, config.heldout_fraction)  # too small to hold a text out: say so now, not in the job
    # The corpus is in the folder before the run exists: a racing launcher never starts it without one.
    record, created = store.create(config.to_dict(), request_id, files={CORPUS_FILE: corpus_bytes})
    if launch:
        launch_pending(store)
    return store.get(record.id), created


@contextlib.contextmanager
def _launch_lock(store: RunStore):
    with open(store.root / "launch.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def resume(store: RunStore, run_id: str, launch: bool = True) -> RunRecord:
    """Put an interrupted run back in the queue (it continues from its newest checkpoint)."""
    store.refresh()
    record = store.get(run_id)
    if record.status != INTERRUPTED:
        raise RunError(f"Run {run_id} is {record.status}; only interrupted runs can be resumed.")
    store.transition(run_id, QUEUED)
    if launch:
        launch_pending(store)
    return store.get(run_id)


def load_corpus(store: RunStore, run_id: str, config: TrainConfig) -> Corpus:
    data = (store.folder(run_id) / CORPUS_FILE).read_bytes()
    return read_corpus(data, config.corpus_name, config.corpus_column, config.text_unit)


def execute(store: RunStore, run_id: str, printer: Callable[[str, dict], None] | None = None) -> RunRecord:
    """Train run ``run_id`` in this process until it reaches a final state."""
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
    folder = store.folder(run_id)
    checkpoints.sweep_temporaries(folder / "checkpoints")
    try:
        config = TrainConfig.from_dict(record.config)
        corpus = load_corpus(store, run_id, config)
        trainer = Trainer(config, corpus, folder, StoreCallbacks(store, run_id, printer), store.root / "cache")
        resume_from = checkpoints.latest_valid(folder / "checkpoints")
        # Evaluations after the checkpoint were logged by the dead process; they are recomputed.
        store.truncate_metrics(run_id, checkpoints.step_of(resume_from) if resume_from else 0)
        result = trainer.run(resume_from)
        best = result.get("best", {})
        with contextlib.suppress(OSError):  # the next estimate's basis; without it, the reference pace
            write_pace(folder, {**(read_pace(folder) or {}), "timing": result["timing"]})
        done = store.transition(
            run_id, FINISHED, step=result["step"],
            best_heldout_loss=best.get("heldout_loss"), best_accuracy=best.get("masked_accuracy"),
        )
        # Finished: nothing can resume it any more, so its checkpoints only take space (three times the
        # model's size with AdamW's state). Deleted only now: a crash before the state is committed
        # leaves an interrupted run that resumes from them.
        checkpoints.remove_all(folder / "checkpoints")
        return done
    except Cancelled as exc:
        return store.transition(run_id, CANCELLED, reason=str(exc), step=exc.step)
    except Diverged as exc:
        return store.transition(run_id, DIVERGED, reason=str(exc))
    except MaskLabError as exc:
        return store.transition(run_id, FAILED, reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - any other failure must still end the run cleanly
        traceback.print_exc()
        if checkpoints.is_disk_full(exc):  # safetensors reports it as SafetensorError, not OSError
            return store.transition(run_id, FAILED, reason=DISK_FULL)
        if isinstance(exc, OSError):
            return store.transition(run_id, FAILED, reason=f"{type(exc).__name__}: {exc}")
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "out of memory" in reason.lower():
            reason = f"out of GPU memory even with the batch split into pieces: {reason}"
        return store.transition(run_id, FAILED, reason=f"{type(exc).__name__}: {reason}")


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
        launch_pending(store)  # hand the freed slot to the next queued run
    return 0


if __name__ == "__main__":
    sys.exit(main())
