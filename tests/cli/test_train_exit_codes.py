"""`train` and `runs resume` exit statuses: a run that ends other than finished exits non-zero with one
``error:`` line saying why (no traceback: that stays in the run's log.txt); settings refused before
the run starts exit 2; a run index rebuilt from the run folders is one ``note:`` line.

The failures are raised inside the real job code in this process (a training step that raises, a
checkpoint write that finds the disk full); one test runs the real command in a subprocess.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO
from support.corpora import corpus_bytes

from mlm_core.cli import main
from mlm_core.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_RUN_CANCELLED,
    EXIT_RUN_FAILED,
    EXIT_RUN_INTERRUPTED,
)
from mlm_core.training import Trainer, checkpoints, jobs
from mlm_core.training.store import FINISHED, INDEX_FILE, INTERRUPTED, RunStore


@pytest.fixture(autouse=True)
def home_on_one_thread(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_bytes(corpus_bytes())
    return path


def train_argv(corpus: Path, model_dir, out: Path, *extra: str) -> list[str]:
    return ["train", "--corpus", str(corpus), "--model", str(model_dir), "--device", "cpu", "--steps", "6",
            "--batch", "4", "--seq-len", "32", "--eval-every", "1", "--checkpoint-evals", "2", "--eval-blocks", "8",
            "--lr", "0.001", "--out", str(out), *extra]


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def only_run(out: Path) -> str:
    (record,) = RunStore(out).list()
    return record.id


def test_a_seed_torch_cannot_take_is_refused_before_the_run_starts(corpus, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(train_argv(corpus, tiny_model_dir, out, "--seed", str(2**70))) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: Training settings: seed must be a whole number from 0 to 4,294,967,295; got "
                   f"{2**70}."]
    assert not out.exists()  # no run was made


def test_a_failed_job_exits_3_with_one_error_line_and_keeps_its_traceback_in_the_log(
        corpus, tiny_model_dir, tmp_path, capsys, monkeypatch):
    def broken(self, step):
        raise RuntimeError("the step broke\nsecond line of the message")

    monkeypatch.setattr(Trainer, "train_step", broken)
    out = tmp_path / "runs"
    assert main([*train_argv(corpus, tiny_model_dir, out), "--json"]) == EXIT_RUN_FAILED
    captured = capsys.readouterr()
    run_id = only_run(out)
    assert captured.err.strip().splitlines() == [f"error: run {run_id} failed: RuntimeError: the step broke"]
    final = json.loads(captured.out.splitlines()[-1])
    assert final["event"] == "final" and final["status"] == "failed"
    log = (RunStore(out).folder(run_id) / "log.txt").read_text()
    assert "Traceback" in log and "second line of the message" in log


def test_out_of_memory_exits_3_naming_memory(corpus, tiny_model_dir, tmp_path, capsys, monkeypatch):
    def no_memory(self, step):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(Trainer, "train_step", no_memory)
    out = tmp_path / "runs"
    assert main(train_argv(corpus, tiny_model_dir, out)) == EXIT_RUN_FAILED
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: run {only_run(out)} failed: ") and "memory" in line


def test_a_full_disk_exits_4_naming_the_folder_and_runs_resume_finishes_it(
        corpus, tiny_model_dir, tmp_path, capsys, monkeypatch):
    real_save, full = checkpoints.save_file, {"on": True}

    def save_file(tensors, path):
        if full["on"] and Path(path).parent.name == "step-00000004.tmp":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_save(tensors, path)

    monkeypatch.setattr(checkpoints, "save_file", save_file)
    out = tmp_path / "runs"
    assert main(train_argv(corpus, tiny_model_dir, out)) == EXIT_RUN_INTERRUPTED
    captured = capsys.readouterr()
    run_id = only_run(out)
    folder = RunStore(out).folder(run_id)
    assert error_lines(captured.err) == [
        f"error: run {run_id} interrupted: The disk holding {folder} is full (No space left on device); the run "
        f"stopped at step 4 and can resume from its checkpoint at step 2 once space is freed: masklab runs resume "
        f"{run_id}"]
    assert f"{run_id}  interrupted" in captured.out  # the run's record, as for a finished run
    assert RunStore(out).get(run_id).status == INTERRUPTED

    full["on"] = False  # space is freed
    assert main(["runs", "resume", run_id, "--out", str(out)]) == EXIT_OK
    assert not error_lines(capsys.readouterr().err)
    assert RunStore(out).get(run_id).status == FINISHED and RunStore(out).get(run_id).step == 6


def test_a_cancelled_run_exits_5(corpus, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(jobs.StoreCallbacks, "should_stop", lambda self: True)  # `runs cancel` from elsewhere
    out = tmp_path / "runs"
    assert main(train_argv(corpus, tiny_model_dir, out)) == EXIT_RUN_CANCELLED
    assert error_lines(capsys.readouterr().err) == [f"error: run {only_run(out)} cancelled: cancelled at step 0"]


def test_resuming_a_run_that_is_not_interrupted_is_bad_input(corpus, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(train_argv(corpus, tiny_model_dir, out)) == EXIT_OK
    run_id = only_run(out)
    capsys.readouterr()
    assert main(["runs", "resume", run_id, "--out", str(out)]) == EXIT_BAD_INPUT
    assert error_lines(capsys.readouterr().err) == [
        f"error: Run {run_id} is finished; only interrupted runs can be resumed."]


@pytest.mark.parametrize("how", ["empty", "garbage"])
def test_runs_list_rebuilds_an_empty_or_garbage_index_with_one_note(corpus, tiny_model_dir, tmp_path, capsys, how):
    out = tmp_path / "runs"
    assert main(train_argv(corpus, tiny_model_dir, out, "--steps", "2")) == EXIT_OK
    run_id = only_run(out)
    for path in out.glob(INDEX_FILE + "*"):
        path.unlink()
    (out / INDEX_FILE).write_bytes(b"" if how == "empty" else os.urandom(4096))
    capsys.readouterr()
    assert main(["runs", "list", "--out", str(out)]) == EXIT_OK
    captured = capsys.readouterr()
    notes = captured.err.strip().splitlines()
    said = "empty" if how == "empty" else "damaged"
    assert len(notes) == 1 and notes[0].startswith(f"note: The run list (runs.sqlite) was {said}")
    assert f"{run_id}  finished" in captured.out and "no runs yet" not in captured.out
    assert main(["runs", "list", "--out", str(out)]) == EXIT_OK
    assert capsys.readouterr().err == ""  # said once


def test_a_failed_run_in_a_subprocess_prints_one_line_and_no_traceback(corpus, tmp_path):
    """The real command: a model folder that does not exist fails inside the job."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mlm_core", "train", "--corpus", str(corpus), "--model", str(tmp_path / "no-model"),
         "--steps", "2", "--out", str(tmp_path / "runs"), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == EXIT_RUN_FAILED
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: run ") and " failed: " in line and "is not a folder" in line


def test_the_help_of_train_and_runs_states_the_exit_statuses(capsys):
    for command in ("train", "runs"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert (f"{EXIT_RUN_FAILED} the run failed or diverged; {EXIT_RUN_INTERRUPTED} it was interrupted and can be "
                f"resumed" in text and f"{EXIT_RUN_CANCELLED} it was cancelled" in text)


def test_a_full_disk_before_the_run_exists_is_one_line_naming_the_store(corpus, tiny_model_dir, tmp_path, capsys,
                                                                        monkeypatch):
    out = tmp_path / "runs"

    def create(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root / "x" / "config.json"))

    monkeypatch.setattr(RunStore, "create", create)
    assert main(train_argv(corpus, tiny_model_dir, out)) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: The disk holding {out} is full (No space left on device); free space and try again."]


def test_resuming_while_sqlite_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    import sqlite3

    out = tmp_path / "runs"
    record, _ = RunStore(out).create({"steps": 2})
    RunStore(out).transition(record.id, "running", pid=None)
    RunStore(out).refresh()  # no process: interrupted

    def transition(self, *args, **kwargs):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(RunStore, "transition", transition)
    assert main(["runs", "resume", record.id, "--out", str(out)]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: Cannot write to {out} (Read-only file system); make it writable and try again."]
