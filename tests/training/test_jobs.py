"""Training jobs end to end on the tiny BERT: real job processes, SIGKILL and resume, faults.

Job processes get one torch thread (OMP_NUM_THREADS=1), like this process (the fixture below):
the losses of a resumed run must equal, bit for bit, those of an uninterrupted run computed
here. Every process a test starts is killed by its pid (from the test's own run store).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_VOCAB, build_tiny_bert
from safetensors import SafetensorError
from support import REPO
from support.corpora import corpus_bytes
from support.waiting import wait_for

from mlm_core.errors import CorpusError
from mlm_core.training import TrainConfig, Trainer, checkpoints, costs, jobs
from mlm_core.training.store import (
    CANCELLED,
    DIVERGED,
    FAILED,
    FINAL_STATES,
    FINISHED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    RunError,
)

CORPUS = corpus_bytes()
COMPARED = ("step", "train_loss", "heldout_loss", "perplexity", "masked_accuracy", "masked_top5", "masking_rate",
            "lr", "by_category")

# A job process (`python -m mlm_core.training.jobs ROOT RUN_ID`) with test hooks: slow steps, and saves that
# wait halfway (model.safetensors written, optimizer file and manifest not) until a gate file exists.
# (A gate that never opens holds the save until the test SIGKILLs the process.)
DRIVER = r"""
import os, sys, time
from pathlib import Path
from mlm_core.training import checkpoints
from mlm_core.training import jobs
from mlm_core.training import trainer as training

step_delay = float(os.environ.get("TEST_STEP_DELAY", "0"))
gate = os.environ.get("TEST_SAVE_GATE")
gated_step = os.environ.get("TEST_SAVE_GATE_AT")  # one step's save, or every save
if step_delay:
    real_step = training.Trainer.train_step
    def slow_step(self, step):
        time.sleep(step_delay)
        return real_step(self, step)
    training.Trainer.train_step = slow_step
if gate:
    real_fsync = checkpoints._fsync_file
    def gated(path):
        real_fsync(path)
        folder = path.parent.name
        if path.name == "model.safetensors" and folder.endswith(".tmp") and (
                not gated_step or folder == f"step-{int(gated_step):08d}.tmp"):
            deadline = time.monotonic() + 120
            while not Path(gate).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
    checkpoints._fsync_file = gated
sys.exit(jobs.main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MASKLAB_MAX_RUNS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ours(pid: int | None, store) -> bool:
    """Whether ``pid`` is a job process of this test's store (never some other process)."""
    try:
        return bool(pid) and pid != os.getpid() and str(store.root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture
def store():
    """The run store under MASKLAB_HOME; afterwards, kill what is still alive among its runs' pids."""
    store = jobs.default_store()
    yield store
    for _ in range(2):  # twice: a job being killed may just have handed its slot to a queued run
        live = [r.pid for r in store.list() if r.status == RUNNING and ours(r.pid, store)]
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not live:
            break
        time.sleep(0.5)


@pytest.fixture
def spawned():
    """Driver processes started by the test; killed (by pid) if still alive at the end."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def settings(model_dir, **overrides) -> TrainConfig:
    values = dict(model=str(model_dir), device="cpu", steps=12, batch_size=4, seq_len=32, lr=1e-3,
                  eval_every=1, eval_blocks=8, checkpoint_every=3, heldout_fraction=0.2, seed=3)
    return TrainConfig(**{**values, **overrides})




def wait_final(store, run_id, timeout: float = 90.0):
    return wait_for(lambda: (r := store.get(run_id)).status in FINAL_STATES and r, timeout, f"run {run_id} to end")


def start_driver(store, run_id, spawned, **hooks) -> subprocess.Popen:
    env = {**os.environ, **{k: str(v) for k, v in hooks.items()}}
    log = open(store.folder(run_id) / "log.txt", "ab")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen([sys.executable, "-c", DRIVER, str(store.root), run_id], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    spawned.append(process)
    return process


def compared(rows: list[dict]) -> list[tuple]:
    return [tuple(repr(row.get(key)) for key in COMPARED) for row in rows]


def reference_metrics(store, model_dir) -> list[dict]:
    """The uninterrupted run, in this process."""
    record, _ = jobs.submit(store, settings(model_dir), CORPUS, launch=False)
    assert jobs.execute(store, record.id).status == FINISHED
    return store.metrics(record.id)


# ----------------------------------------------------------------------------- submit


@pytest.mark.parametrize(
    ("data", "name", "message"),
    [
        (b"", "corpus.txt", "empty"),
        (b"\x00\x01\x02binary" * 50, "corpus.txt", "NUL bytes"),
        (b"text,label\n\"unterminated,1\n", "corpus.csv", "Line 2"),
        (b"text,label\nfine,1\nragged,1,extra\n", "corpus.csv", "Line 3: 3 fields"),
        (b"label\n1\n", "corpus.csv", "No column named 'text'"),
        (b'{"text": "ok"}\nnot json\n', "corpus.jsonl", "Line 2"),
        (b"only one line of text", "corpus.txt", "too small"),
        (b"a text\n", "corpus.exe", "Unsupported file type"),
    ],
)
def test_bad_corpora_are_refused_at_submit_and_make_no_run(store, tiny_model_dir, data, name, message):
    column = "text" if name.endswith(".csv") else None
    with pytest.raises(CorpusError if message != "too small" else ValueError, match=message):
        jobs.submit(store, settings(tiny_model_dir, corpus_name=name, corpus_column=column), data)
    assert store.list() == [] and [p.name for p in store.root.iterdir() if p.is_dir()] == []


def test_two_identical_start_requests_make_one_run(store, tiny_model_dir):
    first, created = jobs.submit(store, settings(tiny_model_dir), CORPUS, request_id="click", launch=False)
    second, again = jobs.submit(store, settings(tiny_model_dir), CORPUS, request_id="click", launch=False)
    assert created and not again and first.id == second.id and len(store.list()) == 1
    assert (store.folder(first.id) / jobs.CORPUS_FILE).read_bytes() == CORPUS


def _click(root, model_dir, barrier, results):
    barrier.wait()
    record, created = jobs.submit(jobs.RunStore(root), settings(model_dir), CORPUS, request_id="race", launch=False)
    results.put((record.id, created, (Path(root) / record.id / jobs.CORPUS_FILE).exists()))


def test_two_processes_racing_with_one_request_make_one_run(store, tiny_model_dir):
    context = multiprocessing.get_context("fork")  # fork: no second torch import
    barrier, results = context.Barrier(2), context.Queue()
    clicks = [context.Process(target=_click, args=(str(store.root), tiny_model_dir, barrier, results))
              for _ in range(2)]
    for click in clicks:
        click.start()
    outcomes = [results.get(timeout=30) for _ in clicks]
    for click in clicks:
        click.join(timeout=30)
    assert len({run_id for run_id, _, _ in outcomes}) == 1
    assert sorted(created for _, created, _ in outcomes) == [False, True]
    assert all(has_corpus for _, _, has_corpus in outcomes)  # the loser never sees a run without its corpus
    assert len(store.list()) == 1 and len([p for p in store.root.iterdir() if p.is_dir()]) == 1


# ----------------------------------------------------------------------------- a run, in this process


@pytest.fixture(scope="module")
def tiny_model_with_digits(tmp_path_factory):
    """The tiny BERT plus digit pieces, so numbers are tokens rather than [UNK] (never masked)."""
    digits = [str(d) for d in range(10)] + [f"##{d}" for d in range(10)]
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-digits"), vocab=[*TINY_VOCAB, *digits])


def test_a_tiny_run_finishes_with_every_metric_and_a_loadable_model(store, tiny_model_with_digits):
    from mlm_core.model.loading import load_model

    tiny_model_dir = tiny_model_with_digits
    record, _ = jobs.submit(store, settings(tiny_model_dir, steps=6, eval_every=3, eval_blocks=64), CORPUS,
                            launch=False)
    done = jobs.execute(store, record.id)
    assert done.status == FINISHED and done.step == 6 and done.total_steps == 6 and done.device == "cpu"
    assert done.best_heldout_loss is not None and done.reason is None
    rows = store.metrics(record.id)
    assert [row["step"] for row in rows] == [3, 6]
    for row in rows:
        for key in ("train_loss", "heldout_loss", "perplexity", "masked_accuracy", "masked_top5",
                    "tokens_per_s", "lr", "masking_rate"):
            assert isinstance(row[key], float) and row[key] >= 0, key
        assert row["masked_top5"] >= row["masked_accuracy"] and row["masking_rate"] == 0.15
        assert set(row["by_category"]) == {"stopword", "punctuation", "content", "number"}
        for stats in row["by_category"].values():
            assert stats["n"] > 0 and 0 <= stats["top1"] <= stats["top5"] <= 1
        assert sum(s["n"] for s in row["by_category"].values()) == row["heldout_masked_tokens"]
    assert done.best_heldout_loss == min(row["heldout_loss"] for row in rows)

    folder = store.folder(record.id) / "model"
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    loaded = load_model(str(folder), device="cpu")  # like any Hugging Face model folder
    name = "bert.encoder.layer.0.attention.self.query.weight"
    initial = load_model(str(tiny_model_dir), device="cpu").model.state_dict()[name]
    assert not torch.equal(loaded.model.state_dict()[name], initial)  # trained weights, not the start
    ids = loaded.tokenizer("the cat sat on the [MASK] .", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert loaded.model(input_ids=ids).logits.shape == (1, ids.shape[1], loaded.vocab_size)


def test_a_finished_run_keeps_its_model_and_its_times_not_its_checkpoints(store, tiny_model_dir):
    """Retention: checkpoints serve resume only; once finished the run holds its model (and what it measured)."""
    config = settings(tiny_model_dir, steps=7, eval_every=7, checkpoint_every=2)
    record, _ = jobs.submit(store, config, CORPUS, launch=False)
    seen = []
    real_retain = checkpoints.retain

    def retain(folder, keep_last):
        kept = real_retain(folder, keep_last)
        seen.append([p.name for p in checkpoints.checkpoints(folder)])
        return kept

    checkpoints.retain = retain
    try:
        done = jobs.execute(store, record.id)
    finally:
        checkpoints.retain = real_retain
    assert done.status == FINISHED
    assert seen == [["step-00000002"], ["step-00000004"], ["step-00000006"]]  # one at a time while it ran
    folder = store.folder(record.id)
    assert not (folder / "checkpoints").exists() and (folder / "model" / "model.safetensors").exists()
    pace = costs.read_pace(folder)
    assert pace["startup_s"] > 0 and pace["step"] == 7 and pace["at"] >= pace["t1"] >= pace["t0"]
    assert (pace["timing"]["steps"], pace["timing"]["checkpoints"], pace["timing"]["evals"]) == (7, 3, 1)
    disk = costs.estimate_disk(config, 7, len(CORPUS))
    used = costs.folder_bytes(folder)
    assert used <= disk.final_bytes * 1.5 and used >= costs.folder_bytes(folder / "model")
    estimate = costs.estimate_time(store, config, "cpu", train_blocks=50)
    assert estimate.measured and record.id in estimate.basis  # the next estimate is made from this run


def test_nan_loss_ends_the_run_as_diverged_with_the_step(store, tiny_model_dir, monkeypatch):
    original = Trainer.train_step

    def poisoned(self, step):
        if step == 4:
            with torch.no_grad():
                for parameter in self.model.parameters():
                    parameter.fill_(float("nan"))
        return original(self, step)

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    record, _ = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
    done = jobs.execute(store, record.id)
    assert done.status == DIVERGED and "step 5" in done.reason and "nan" in done.reason


def test_disk_full_interrupts_the_run_and_keeps_the_previous_checkpoint(store, tiny_model_dir, monkeypatch):
    real_save = checkpoints.save_file
    calls = {"n": 0}

    def fills_up(tensors, path):
        calls["n"] += 1
        if calls["n"] > 2:  # the first checkpoint (model + optimizer) fits, the second does not
            raise SafetensorError(f'Error while serializing: I/O error: No space left on device (os error 28) '
                                  f'at path "{path}"')
        real_save(tensors, path)

    monkeypatch.setattr(checkpoints, "save_file", fills_up)
    record, _ = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
    done = jobs.execute(store, record.id)
    assert done.status == INTERRUPTED  # resumable once space is freed (tests/training/test_storage_faults.py)
    assert done.reason.startswith(f"The disk holding the folder of run {record.id} is full")
    assert "stopped at step 6 and can resume from its checkpoint at step 3" in done.reason
    folder = store.folder(record.id) / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["step-00000003"]  # no half-written step 6
    assert checkpoints.verify(folder / "step-00000003")


def test_out_of_memory_every_time_fails_with_the_reason(store, tiny_model_dir, monkeypatch):
    def no_memory(self, step):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(Trainer, "train_step", no_memory)
    record, _ = jobs.submit(store, settings(tiny_model_dir, batch_size=8), CORPUS, launch=False)
    done = jobs.execute(store, record.id)
    assert done.status == FAILED
    assert done.reason.startswith("out of GPU memory at step 1 with a batch of 8 blocks of 32 tokens, even split "
                                  "into 8 pieces; lower batch_size or seq_len (OutOfMemoryError: CUDA out of memory")


def test_cancel_a_queued_or_interrupted_run(store, tiny_model_dir):
    queued, _ = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
    assert store.request_cancel(queued.id).status == CANCELLED
    with pytest.raises(RunError):
        jobs.execute(store, queued.id)
    with pytest.raises(RunError, match="only interrupted"):
        jobs.resume(store, queued.id)

    lost, _ = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
    store.transition(lost.id, RUNNING, pid=2**30)
    assert store.refresh() == [lost.id] and store.get(lost.id).status == INTERRUPTED
    assert store.request_cancel(lost.id).status == CANCELLED


# ----------------------------------------------------------------------------- real job processes


def test_cancel_while_saving_and_the_queue_gets_the_freed_slot(store, tiny_model_dir, spawned):
    """MASKLAB_MAX_RUNS=1: a second run waits; cancelling the first mid-save frees the slot."""
    long_run, _ = jobs.submit(store, settings(tiny_model_dir, steps=100_000, eval_every=10_000,
                                              checkpoint_every=4), CORPUS, launch=False)
    gate = store.root / "save-may-finish"
    start_driver(store, long_run.id, spawned, TEST_SAVE_GATE=gate)  # saves wait halfway for the gate
    wait_for(lambda: store.get(long_run.id).status == RUNNING, what="the long run to start")
    short_run, _ = jobs.submit(store, settings(tiny_model_dir, steps=3), CORPUS)
    assert store.get(short_run.id).status == QUEUED
    assert jobs.launch_pending(store) == []  # the slot is taken

    saves = store.folder(long_run.id) / "checkpoints"
    saving = wait_for(lambda: next(saves.glob("*.tmp"), None) if saves.exists() else None, what="a save")
    flagged = store.request_cancel(long_run.id)
    assert flagged.status == RUNNING and flagged.cancel_requested  # the job stops itself, after the save
    time.sleep(jobs.CANCEL_POLL_S + 0.1)  # so the job's next look at the flag is not skipped as too soon
    gate.touch()

    def both_done():
        runs = store.list()
        assert sum(r.status == RUNNING for r in runs) <= jobs.max_parallel()
        return all(r.status in FINAL_STATES for r in runs)

    wait_for(both_done, 90, "both runs to end")
    cancelled, finished = store.get(long_run.id), store.get(short_run.id)
    step = checkpoints.step_of(saves / saving.name.removesuffix(".tmp"))
    assert cancelled.status == CANCELLED and cancelled.reason == f"cancelled at step {step}"
    assert checkpoints.latest_valid(saves).name == saving.name.removesuffix(".tmp")  # the save completed
    assert not list(saves.glob("*.tmp"))
    assert finished.status == FINISHED and finished.started >= cancelled.finished  # one at a time
    assert (store.folder(short_run.id) / "model" / "model.safetensors").exists()


def test_sigkill_mid_run_and_mid_save_then_resume_gives_the_uninterrupted_losses(
    store, tiny_model_dir, spawned, monkeypatch
):
    """Two runs side by side: one killed between checkpoints, one halfway through writing one."""
    monkeypatch.setenv("MASKLAB_MAX_RUNS", "2")  # both resume at once
    mid_run, _ = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
    mid_save, _ = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
    processes = {
        mid_run.id: start_driver(store, mid_run.id, spawned, TEST_STEP_DELAY=0.1),
        mid_save.id: start_driver(store, mid_save.id, spawned, TEST_SAVE_GATE=store.root / "never",
                                   TEST_SAVE_GATE_AT=6),
    }
    reference = reference_metrics(jobs.RunStore(store.root.parent / "reference"), tiny_model_dir)
    saves = store.folder(mid_save.id) / "checkpoints"
    moments = {  # after the step-6 checkpoint and the step-7 evaluation / while step 6 is half written
        mid_run.id: lambda: any(r["step"] >= 7 for r in store.metrics(mid_run.id)),
        mid_save.id: lambda: (saves / "step-00000006.tmp" / "model.safetensors").exists(),
    }

    def kill_when_due():
        for run_id, due in list(moments.items()):
            if due():
                os.kill(processes[run_id].pid, signal.SIGKILL)
                processes[run_id].wait()
                del moments[run_id]
        return not moments

    wait_for(kill_when_due, what="both moments to kill at")
    assert {store.get(run_id).status for run_id in processes} == {RUNNING}  # nobody has noticed yet
    assert sorted(store.refresh()) == sorted(processes)
    for run_id in processes:
        interrupted = store.get(run_id)
        assert interrupted.status == INTERRUPTED and "stopped unexpectedly" in interrupted.reason
    assert checkpoints.latest_valid(store.folder(mid_run.id) / "checkpoints").name == "step-00000006"
    assert checkpoints.latest_valid(saves).name == "step-00000003"
    assert (saves / "step-00000006.tmp").exists() and not (saves / "step-00000006").exists()
    for run_id, checkpoint in ((mid_run.id, 6), (mid_save.id, 3)):
        assert max(r["step"] for r in store.metrics(run_id)) > checkpoint  # work was lost

    for run_id in processes:
        jobs.resume(store, run_id)  # real `python -m mlm_core.training.jobs` processes
    for run_id in processes:
        done = wait_final(store, run_id)
        assert done.status == FINISHED, (store.folder(run_id) / "log.txt").read_text()[-2000:]
        assert compared(store.metrics(run_id)) == compared(reference)
        assert done.best_heldout_loss == min(r["heldout_loss"] for r in reference)
    assert not list(saves.glob("*.tmp"))  # swept
