"""Jobs chaos: a tiny run SIGKILLed 20 times at random moments, inside checkpoint saves too, resumed
after each kill, ends with the very losses and model of an uninterrupted run; and an app restarted
while a run goes on finds it running and follows it.

Job processes. Importing torch and transformers costs seconds (tens of seconds on a busy 2-core
machine), more than the tiny run itself, so most job processes are forked from a warm "fork server"
(``SERVER`` below): it plays the app, calling the real ``jobs.resume`` / ``jobs.launch_pending``, with
``subprocess.Popen`` replaced by a fork that runs ``jobs.main`` as ``python -m mlm_core.training.jobs`` would.
The first start and the final resume go through the real ``python -m mlm_core.training.jobs`` command.

Kill moments (seeded): at a random step, at a random time during start-up, or held at a point of a
save (model file written, optimizer file, state, manifest, after the rename, halfway through pruning
an old checkpoint, the final model before/after its rename), halfway through a metrics line, and
inside an open SQLite write transaction. A held process writes a marker file and sleeps until the
test kills it. After every kill: the run is found dead and marked interrupted, its record and the
other run's are intact, what it logged is a prefix of the uninterrupted run's, and it lost at most
the steps since its newest complete checkpoint, which never moves back.

Every process a test starts is SIGKILLed by the pid it recorded, and only if that pid's command
line is one of this test's (the server's or a job of this test's store).

``MASKLAB_WRITE_RESULTS=1`` also writes the figures to benchmarks/results/chaos.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import REPO
from support.apptest import clear_streamlit_caches, open_app_page
from support.corpora import corpus_bytes
from support.waiting import wait_for

from mlm_core.training import TrainConfig, checkpoints, jobs
from mlm_core.training.store import (
    CANCELLED,
    FINAL_STATES,
    FINISHED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    RunStore,
    process_alive,
)
from ui.identity import SESSION_OWNER_KEY

RESULTS = REPO / "benchmarks" / "results" / "chaos.json"
KILLS = 20
SEED = 9
STEPS = 42
CHECKPOINT_EVERY = 3
WINDOW = 8  # a random-step kill lands at most this many steps past the resume point
WAIT_S = 240.0  # a fresh `python -m mlm_core.training.jobs` imports torch: slow on a busy 2-core machine
COMPARED = ("step", "train_loss", "heldout_loss", "perplexity", "masked_accuracy", "masked_top5", "masking_rate",
            "lr", "heldout_masked_tokens", "by_category")
# Points of a save where a job can be held (and killed); the value says whether it needs a checkpoint save
# still ahead of it. The two final-model points come last: after them only the last steps remain.
SAVE_POINTS = {
    "model file written": True,  # model.safetensors in step-N.tmp, not yet fsynced
    "optimizer file written": True,
    "state written": True,
    "manifest written": True,  # complete, fsynced, not yet renamed
    "renamed": True,  # step-N in place, folder not yet fsynced
    "pruning": True,  # an old checkpoint half deleted
    "final model before rename": False,  # model.tmp complete
    "final model written": False,  # model/ in place, run not yet marked finished
}
LEAVES_TEMPORARY = {"model file written", "optimizer file written", "state written", "manifest written",
                    "final model before rename"}
OTHER_POINTS = ("metrics line cut", "database write open")
RANDOM_KINDS = ("random step", "random start-up time")

SERVER = r'''
import json, os, shutil, signal, sqlite3, sys, time, traceback
from pathlib import Path

import torch
torch.set_num_threads(1)
import accelerate, transformers  # noqa: F401  (what a job imports: paid once, here)
from transformers import BertForMaskedLM, BertTokenizerFast  # noqa: F401
from mlm_core.training import checkpoints
from mlm_core.training import jobs
from mlm_core.training import trainer as training
from mlm_core.training.store import RunStore

HOOK = {}


def install(hook):
    """Hold the job at the hook's point (its nth occurrence): write the marker, sleep until killed."""
    point = hook.get("point")
    if not point:
        return
    nth, marker, seen = int(hook.get("nth", 1)), Path(hook["marker"]), [0]

    def due():
        seen[0] += 1
        return seen[0] == nth

    def hold():
        partial = marker.with_name(marker.name + ".partial")
        partial.write_text(point)
        partial.rename(marker)
        time.sleep(180)  # the test kills us long before this
        os._exit(75)  # the test is gone: never finish the run by accident

    files = {"model file written": ("model.safetensors", False), "optimizer file written": ("optimizer.safetensors", True),
             "state written": ("state.json", True), "manifest written": ("manifest.json", True)}
    if point in files:
        name, after = files[point]
        real_fsync = checkpoints._fsync_file

        def fsync(path):
            if after:
                real_fsync(path)
            if path.name == name and path.parent.name.endswith(".tmp") and due():
                hold()
            if not after:
                real_fsync(path)
        checkpoints._fsync_file = fsync
    elif point == "renamed":
        real_dir = checkpoints._fsync_dir

        def fsync_dir(path):
            if due():
                hold()
            real_dir(path)
        checkpoints._fsync_dir = fsync_dir
    elif point == "pruning":
        real_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            if checkpoints.STEP_PATTERN.match(Path(path).name) and due():
                (Path(path) / "optimizer.safetensors").unlink()
                hold()
            return real_rmtree(path, *args, **kwargs)
        shutil.rmtree = rmtree
    elif point == "final model before rename":
        real_rename = Path.rename

        def rename(self, target):
            if self.name == "model.tmp" and due():
                hold()
            return real_rename(self, target)
        Path.rename = rename
    elif point == "final model written":
        real_final = training.Trainer.save_final_model

        def save_final_model(self):
            folder = real_final(self)
            if due():
                hold()
            return folder
        training.Trainer.save_final_model = save_final_model
    elif point == "metrics line cut":
        real_append = RunStore.append_metrics

        def append_metrics(self, run_id, record):
            if due():
                line = json.dumps(record) + "\n"
                with open(self.folder(run_id) / "metrics.jsonl", "a") as handle:
                    handle.write(line[: len(line) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                hold()
            real_append(self, run_id, record)
        RunStore.append_metrics = append_metrics
    elif point == "database write open":
        real_update = RunStore.update

        def update(self, run_id, **fields):
            if due():
                db = sqlite3.connect(self.root / "runs.sqlite", timeout=30, isolation_level=None)
                db.execute("BEGIN IMMEDIATE")
                db.execute("UPDATE runs SET step = -7, reason = 'never committed' WHERE id = ?", (run_id,))
                hold()
            real_update(self, run_id, **fields)
        RunStore.update = update
    else:
        raise ValueError(point)


class ForkedJob:
    """Stands in for Popen([python, -m, mlm_core.training.jobs, ROOT, RUN_ID], ...): the same job, forked warm."""

    def __init__(self, args, stdout=None, stderr=None, stdin=None, start_new_session=False, cwd=None, **_):
        hook = dict(HOOK)
        sys.stdout.flush()
        pid = os.fork()
        if pid:
            self.pid = pid
            return
        code = 70
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            if start_new_session:
                os.setsid()
            if cwd:
                os.chdir(cwd)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(stdout.fileno(), 1)
            os.dup2(stdout.fileno(), 2)
            os.closerange(3, 65536)  # like Popen(close_fds=True): the launcher's lock is not the job's
            install(hook)
            code = jobs.main([str(a) for a in args[-2:]])
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)


def app_process(root):
    """An app process that launches the queued run and exits at once (the app 'restarts')."""
    sys.stdout.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        jobs.launch_pending(RunStore(root))
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


jobs.subprocess.Popen = ForkedJob
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed or finished jobs are reaped at once
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    try:
        store = RunStore(request["root"])
        HOOK.clear()
        HOOK.update(request.get("hook") or {})
        reply = {}
        if request["op"] == "resume":
            jobs.resume(store, request["run"])
        elif request["op"] == "app":
            reply["app_pid"] = app_process(request["root"])
        record = store.get(request["run"])
        reply.update(status=record.status, pid=record.pid)
    except Exception as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(reply), flush=True)
'''


# ----------------------------------------------------------------------------- processes


class ForkServer:
    """The warm server process and the job pids it forked (for the cleanup)."""

    def __init__(self, folder: Path):
        self.token = str(folder)  # in the server's command line, so in every forked job's
        began = time.monotonic()
        self.log = open(folder / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, self.token], cwd=REPO, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True,
                                        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
        self.pids: list[int] = []
        assert "ready" in self._reply(WAIT_S), (folder / "server.log").read_text()[-3000:]
        self.startup_s = time.monotonic() - began

    def _reply(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        assert line, f"the fork server did not answer (exit {self.process.poll()})"
        return json.loads(line)

    def request(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self._reply(WAIT_S)
        assert "error" not in reply, reply
        if reply.get("pid"):
            self.pids.append(reply["pid"])
        return reply

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def ours(pid: int | None, marks: tuple[str, ...]) -> bool:
    """Whether ``pid`` runs a command line of this test's (an argument is the server's token or the store's
    root), never some other process."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, TypeError):
        return False
    return bool(pid) and pid != os.getpid() and any(mark.encode() in arguments for mark in marks)


def kill(pid: int, marks: tuple[str, ...]) -> None:
    assert ours(pid, marks), f"pid {pid} is not one of this test's processes"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not process_alive(pid), 30, f"pid {pid} to die")




@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job processes: bit-identical sums, no spinning threads
    monkeypatch.setenv("MASKLAB_MAX_RUNS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference run in this process: the same sums as the jobs'
    yield
    torch.set_num_threads(before)


@pytest.fixture
def store():
    return jobs.default_store()


@pytest.fixture(scope="module")
def fork_server(tmp_path_factory):
    """One warm server for the module (its imports are the slow part)."""
    server = ForkServer(tmp_path_factory.mktemp("fork-server"))
    yield server
    server.stop()


@pytest.fixture
def server(fork_server, store):
    """The fork server; afterwards every job it or the test started and that still lives is killed by pid."""
    yield fork_server
    marks = (fork_server.token, str(store.root))
    pids = set(fork_server.pids) | {r.pid for r in store.list() if r.status == RUNNING}
    for pid in pids:
        if process_alive(pid) and ours(pid, marks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    fork_server.pids.clear()


# ----------------------------------------------------------------------------- the chaos run


def settings(model_dir, **overrides) -> TrainConfig:
    values = dict(model=str(model_dir), device="cpu", steps=STEPS, batch_size=4, seq_len=32, lr=1e-3, eval_every=1,
                  eval_blocks=8, checkpoint_every=CHECKPOINT_EVERY, keep_checkpoints=2, heldout_fraction=0.2, seed=3,
                  corpus_name="tiny.txt")
    return TrainConfig(**{**values, **overrides})


def compared(rows: list[dict]) -> list[tuple]:
    return [tuple(repr(row.get(key)) for key in COMPARED) for row in rows]


def numbers(value) -> list[float]:
    if isinstance(value, dict):
        return [x for key in sorted(value) for x in numbers(value[key])]
    return [float(value)] if isinstance(value, (int, float)) else []


def max_difference(rows: list[dict], reference: list[dict]) -> float:
    """Largest absolute difference over every compared number of every evaluation."""
    assert [r["step"] for r in rows] == [r["step"] for r in reference]
    worst = 0.0
    for row, ref in zip(rows, reference):
        for key in COMPARED:
            got, want = numbers(row.get(key)), numbers(ref.get(key))
            assert len(got) == len(want), key
            worst = max([worst, *(abs(a - b) for a, b in zip(got, want))])
    return worst


def plan(rng: random.Random) -> list[str]:
    """What each of the 20 kills aims at: every save point and the other held points at least once,
    the rest at random moments; the first kill hits the real `python -m mlm_core.training.jobs` at a random step."""
    middle = [p for p, ahead in SAVE_POINTS.items() if ahead] + list(OTHER_POINTS)
    middle += [rng.choice(RANDOM_KINDS) for _ in range(KILLS - 3 - len(middle))]
    rng.shuffle(middle)
    return ["random step", *middle, "final model before rename", "final model written"]


class Chaos:
    """One run, killed and resumed; keeps the figures."""

    def __init__(self, store: RunStore, server: ForkServer, run_id: str, reference: list[dict], rng: random.Random):
        self.store, self.server, self.run_id, self.reference, self.rng = store, server, run_id, reference, rng
        self.folder = store.folder(run_id)
        self.saves = self.folder / "checkpoints"
        self.marker = store.root / "held"
        self.marks = (server.token, str(store.root))
        self.resume_step = 0  # newest complete checkpoint
        self.kills: list[dict] = []
        self.startups: list[float] = []  # seconds from a launch to the first new evaluation
        self.leftovers: dict[Path, tuple] = {}  # half-written saves a killed job left (swept by the next)

    def temporaries(self) -> dict[Path, tuple]:
        """Half-written checkpoint folders and final model, with what tells a new one from an old one."""
        found = {}
        for path in [*self.saves.glob("*.tmp"), self.folder / "model.tmp"]:
            with contextlib.suppress(FileNotFoundError):
                info = path.stat()
                found[path] = (info.st_ino, info.st_ctime_ns, info.st_mtime_ns)
        return found

    def newest(self) -> int:
        found = checkpoints.latest_valid(self.saves)
        return checkpoints.step_of(found) if found else 0

    def saves_ahead(self) -> int:
        return len(range(self.resume_step + CHECKPOINT_EVERY - self.resume_step % CHECKPOINT_EVERY, STEPS,
                         CHECKPOINT_EVERY))

    def launch(self, hook: dict | None) -> int:
        """Resume (or, the first time, start) the run from the fork server; returns the job's pid."""
        self.leftovers = self.temporaries()
        reply = self.server.request(op="resume", root=str(self.store.root), run=self.run_id, hook=hook)
        assert reply["status"] == RUNNING and process_alive(reply["pid"]), reply
        return reply["pid"]

    def kill_held(self, aim: str) -> tuple[int, str]:
        nth = 1
        if aim in ("model file written", "optimizer file written", "state written", "manifest written", "renamed"):
            nth = self.rng.randint(1, min(2, self.saves_ahead()))
        elif aim == "metrics line cut":
            nth = self.rng.randint(1, min(WINDOW, STEPS - self.resume_step - 1))
        elif aim == "database write open":
            nth = self.rng.randint(1, 4)
        pid = self.launch({"point": aim, "nth": nth, "marker": str(self.marker)})
        wait_for(lambda: self.marker.exists() or not process_alive(pid), what=f"the job to reach '{aim}'")
        assert self.marker.exists(), (self.folder / "log.txt").read_text()[-3000:]
        assert self.marker.read_text() == aim
        kill(pid, self.marks)
        self.marker.unlink()
        return pid, f"{aim} (occurrence {nth})"

    def kill_at_random(self, aim: str, pid: int | None = None) -> tuple[int, str]:
        """Kill at a random step (plus a random part of a step), or at a random time during start-up."""
        started = time.monotonic()
        forked = pid is None
        pid = pid or self.launch(None)
        cap = min(self.resume_step + WINDOW, STEPS - 1)
        target = self.rng.randint(self.resume_step + 1, cap)
        startup = sorted(self.startups)[len(self.startups) // 2] if self.startups else 1.0
        delay = self.rng.uniform(0.0, startup)
        first_row = None

        def due():
            nonlocal first_row
            assert process_alive(pid), f"the job ended before its kill:\n{(self.folder / 'log.txt').read_text()[-3000:]}"
            rows = self.store.metrics(self.run_id)
            newer = rows and rows[-1]["step"] > self.resume_step
            if newer and first_row is None:
                first_row = time.monotonic() - started
            if aim == "random start-up time" and time.monotonic() - started >= delay:
                return True
            return bool(rows) and rows[-1]["step"] >= (target if aim == "random step" else cap)

        wait_for(due, what=f"the moment to kill ({aim})")
        if aim == "random step":
            time.sleep(self.rng.uniform(0.0, 0.05))  # somewhere inside the next step (or its save)
        kill(pid, self.marks)
        if forked and first_row is not None:
            self.startups.append(first_row)
        moment = f"{aim} ({'step ' + str(target) if aim == 'random step' else f'{delay:.2f} s after launch'})"
        return pid, moment

    def after_kill(self, aim: str, pid: int, moment: str, reference_run: str) -> None:
        """Everything a kill may and may not do to the run store."""
        # Killed inside a save: a half-written save that this process wrote (not one an earlier kill left).
        saving = any(self.leftovers.get(path) != ident for path, ident in self.temporaries().items())
        if aim in SAVE_POINTS or aim in OTHER_POINTS:
            assert saving == (aim in LEAVES_TEMPORARY), (moment, saving)  # held where it was meant to be
        assert self.store.get(self.run_id).status == RUNNING  # nobody has noticed yet
        assert self.store.refresh() == [self.run_id]
        record = self.store.get(self.run_id)
        assert record.status == INTERRUPTED and "stopped unexpectedly" in record.reason
        assert record.step >= 0  # an uncommitted write never shows
        assert sorted(r.id for r in self.store.list()) == sorted([self.run_id, reference_run])  # no record lost
        assert self.store.get(reference_run).status == FINISHED
        rows = self.store.metrics(self.run_id)
        assert compared(rows) == compared(self.reference[: len(rows)]), moment  # the same numbers, so far
        newest = self.newest()
        assert newest >= self.resume_step, f"a complete checkpoint was lost at {moment}"
        lost = (rows[-1]["step"] if rows else 0) - newest
        assert 0 <= lost <= CHECKPOINT_EVERY, (moment, lost)  # at most the steps since the newest checkpoint
        self.kills.append({"aim": aim, "pid": pid, "moment": moment, "saving": saving, "resume_from": newest,
                           "lost": lost})
        self.resume_step = newest


def test_twenty_sigkills_lose_no_run_and_resume_to_the_uninterrupted_result(store, server, tiny_model_dir):
    began = time.monotonic()
    rng = random.Random(SEED)
    reference_run, _ = jobs.submit(store, settings(tiny_model_dir), corpus_bytes(), launch=False)
    assert jobs.execute(store, reference_run.id).status == FINISHED  # uninterrupted, in this process
    reference = store.metrics(reference_run.id)
    assert [r["step"] for r in reference] == list(range(1, STEPS + 1))

    record, _ = jobs.submit(store, settings(tiny_model_dir), corpus_bytes())  # the real launcher and command
    chaos = Chaos(store, server, record.id, reference, rng)
    first = store.get(record.id)
    assert first.status == RUNNING and ours(first.pid, (str(store.root),))
    assert b"mlm_core.training.jobs" in Path(f"/proc/{first.pid}/cmdline").read_bytes()
    aims = plan(rng)
    for number, aim in enumerate(aims, 1):
        if SAVE_POINTS.get(aim) and chaos.saves_ahead() < (2 if aim == "pruning" else 1):
            aim = "random step"  # no checkpoint save left where this one would be
        if number == 1:
            pid, moment = chaos.kill_at_random(aim, pid=first.pid)
        elif aim in SAVE_POINTS or aim in OTHER_POINTS:
            pid, moment = chaos.kill_held(aim)
        else:
            pid, moment = chaos.kill_at_random(aim)
        chaos.after_kill(aim, pid, moment, reference_run.id)

    resumed = jobs.resume(store, record.id)  # the real launcher again, to the end
    assert resumed.status == RUNNING and b"mlm_core.training.jobs" in Path(f"/proc/{resumed.pid}/cmdline").read_bytes()
    done = wait_for(lambda: (r := store.get(record.id)).status in FINAL_STATES and r, WAIT_S, "the run to end")
    log = (chaos.folder / "log.txt").read_text()
    assert done.status == FINISHED and done.step == STEPS, log[-3000:]

    rows = store.metrics(record.id)
    assert compared(rows) == compared(reference)  # every evaluation, bit for bit
    difference = max_difference(rows, reference)
    assert difference == 0.0
    assert done.best_heldout_loss == store.get(reference_run.id).best_heldout_loss
    final = load_file(str(chaos.folder / "model" / "model.safetensors"))
    expected = load_file(str(store.folder(reference_run.id) / "model" / "model.safetensors"))
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    assert not list(chaos.saves.glob("*.tmp")) and not (chaos.folder / "model.tmp").exists()
    assert all(checkpoints.verify(p) for p in checkpoints.checkpoints(chaos.saves))
    assert len(chaos.kills) == KILLS and log.count("Traceback") == 0

    held_in_save = sum(k["aim"] in SAVE_POINTS for k in chaos.kills)
    in_save = sum(k["aim"] in SAVE_POINTS or k["saving"] for k in chaos.kills)  # random ones landing in a save too
    assert held_in_save >= 6
    if os.environ.get("MASKLAB_WRITE_RESULTS") == "1":
        figures = [
            ("SIGKILLs", len(chaos.kills)),
            ("SIGKILLs during a checkpoint or final-model save", in_save),
            ("SIGKILLs that left a half-written save behind", sum(k["saving"] for k in chaos.kills)),
            ("SIGKILLs at a random step or start-up moment", sum(k["aim"] in RANDOM_KINDS for k in chaos.kills)),
            ("SIGKILLs with a metrics line half written or a database write open",
             sum(k["aim"] in OTHER_POINTS for k in chaos.kills)),
            ("resumes", len(chaos.kills)),
            ("runs lost or not resumable", 0),
            ("steps recomputed after kills", sum(k["lost"] for k in chaos.kills)),
            ("max abs difference from the uninterrupted run (losses and metrics)", difference),
            ("wall time (s), reference run and 21 job processes", round(time.monotonic() - began, 1)),
            ("fork server start-up (s), paid once per module", round(server.startup_s, 1)),
        ]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        partial = RESULTS.with_suffix(".json.partial")
        partial.write_text(json.dumps({"title": "Jobs chaos", "rows": [{"name": n, "value": v} for n, v in figures]},
                                      indent=1) + "\n")
        os.replace(partial, RESULTS)
    print("\n".join(f"kill {n:2d}: {k['moment']}, resume from step {k['resume_from']}, lost {k['lost']}"
                    + (" [mid-save]" if k["saving"] else "") for n, k in enumerate(chaos.kills, 1)))


def test_a_job_claims_its_run_even_when_the_launcher_marks_it_running_first(store, tiny_model_dir, monkeypatch):
    """launch_pending records the job's pid right after starting it; a quick job may read "queued" just
    before that lands. It must still run (it used to exit, leaving a dead pid on a "running" run)."""
    record, _ = jobs.submit(store, settings(tiny_model_dir, steps=3), corpus_bytes(), launch=False)
    real_get = RunStore.get

    def launcher_lands_after_the_read(self, run_id):
        found = real_get(self, run_id)
        if found.status == QUEUED:
            self.transition(run_id, RUNNING, pid=os.getpid())  # what launch_pending does, with the job's pid
        return found

    monkeypatch.setattr(RunStore, "get", launcher_lands_after_the_read)
    done = jobs.execute(store, record.id)
    assert done.status == FINISHED and done.step == 3


# ----------------------------------------------------------------------------- the app restarts


def progress_step(app) -> int:
    """The step the followed run's progress bar shows ("step 1,234/200,000 · about 5 min left")."""
    text = app.get("progress")[0].text
    found = re.search(r"step ([\d,]+)/", text)
    assert found, text
    return int(found.group(1).replace(",", ""))


def test_an_app_restarted_while_a_run_goes_on_reattaches_to_it(store, server, tiny_model_dir):
    config = settings(tiny_model_dir, steps=200_000, eval_every=25, checkpoint_every=1_000)
    browser = "browser:0123456789abcdef"  # the browser that started it comes back after the restart
    record, _ = jobs.submit(store, config, corpus_bytes(), launch=False, owner=browser)
    app_pid = server.request(op="app", root=str(store.root), run=record.id)["app_pid"]
    # The app that launched the job exits; the job (its own session) goes on training.
    wait_for(lambda: not process_alive(app_pid), what="the old app process to exit")
    running = wait_for(lambda: (r := store.get(record.id)).status == RUNNING and r.step > 0 and r,
                       what="the job to train")
    server.pids.append(running.pid)
    assert running.pid != app_pid and process_alive(running.pid) and ours(running.pid, (server.token,))

    # The restarted app: a new store object, empty caches; finding runs must not mark this one lost.
    clear_streamlit_caches()
    fresh = RunStore(store.root)
    assert fresh.refresh() == []
    again = fresh.get(record.id)
    assert again.status == RUNNING and again.pid == running.pid
    wait_for(lambda: fresh.get(record.id).step > again.step, what="the step to advance")

    try:
        app = open_app_page("app_pages/runs.py", session={SESSION_OWNER_KEY: browser})  # found from the store alone
        frame = app.dataframe[0].value.set_index("run")
        assert frame.loc[record.id, "status"] == RUNNING
        app.selectbox(key="runs-one").set_value(record.id).run()
        app.button(key="act-follow").click().run()  # to the Fine-tune page, following the run
        assert not app.exception, app.exception
        assert any(record.id in m.value for m in app.markdown)
        assert record.id in str(app.query_params["run"])  # the URL follows the run
        first = progress_step(app)
        app.switch_page("app_pages/finetune.py")  # AppTest re-runs its first page otherwise; a browser stays here
        assert "left" in app.get("progress")[0].text  # running, with an estimate: not queued, not interrupted

        def advanced():
            app.run()  # what the fragment's timer does in a browser
            assert not app.exception, app.exception
            return progress_step(app) > first

        wait_for(advanced, what="the followed run's progress to advance")
        assert store.get(record.id).status == RUNNING and process_alive(running.pid)

        app.button(key=f"cancel-{record.id}").click().run()  # the re-attached page still controls the job
        assert not app.exception, app.exception
        done = wait_for(lambda: (r := store.get(record.id)).status in FINAL_STATES and r, what="the cancel")
        assert done.status == CANCELLED and done.reason.startswith("cancelled at step")
        app.run()
        assert "cancelled" in app.get("progress")[0].text
    finally:
        clear_streamlit_caches()
