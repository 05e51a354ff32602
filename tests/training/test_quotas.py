"""The operator's limits on starting runs: the queue, runs per owner, the run store's disk use, and
settings from a link bounded like the widgets.

Each test sets its limits through MASKLAB_* variables and reads them again (reload_policy); the run
store is in tmp_path. Runs are only queued (launch=False): no job process is started.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from support.apptest import clear_streamlit_caches, open_app_page
from support.corpora import corpus_bytes

from mlm_core.policy import reload_policy
from mlm_core.training import TrainConfig, jobs, ownership
from mlm_core.training.store import CANCELLED, FINISHED, INTERRUPTED, QUEUED, RUNNING, RunError

ALICE, BOB, CAROL = "browser:aaaaaaaaaaaaaaaa", "browser:bbbbbbbbbbbbbbbb", "browser:cccccccccccccccc"
FINETUNE_PAGE = "app_pages/finetune.py"
LIMITS = ("MAX_QUEUED_RUNS", "MAX_RUNS_PER_OWNER", "RUN_STORE_QUOTA_MB", "MAX_RUN_MINUTES")


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    for name in LIMITS:
        monkeypatch.delenv(f"MASKLAB_{name}", raising=False)
    reload_policy()
    yield
    for name in LIMITS:
        monkeypatch.delenv(f"MASKLAB_{name}", raising=False)
    reload_policy()


@pytest.fixture
def store():
    return jobs.default_store()


def limits(monkeypatch, **values) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"MASKLAB_{name.upper()}", str(value))
    reload_policy()


def settings() -> TrainConfig:
    return TrainConfig(steps=2, batch_size=2, seq_len=16, corpus_name="tiny.txt")


def start(store, owner: str | None, corpus: bytes | None = None, request_id: str | None = None):
    record, _ = jobs.submit(store, settings(), corpus or corpus_bytes(40), request_id=request_id, launch=False,
                            owner=owner)
    return record


def test_a_full_queue_refuses_the_next_start_until_one_ends(store, monkeypatch):
    limits(monkeypatch, max_queued_runs=2)
    first, _ = start(store, ALICE), start(store, BOB)
    with pytest.raises(RunError) as refused:
        start(store, CAROL)
    assert str(refused.value) == ("This server already has 2 runs waiting or training (its limit); "
                                  "start again when one ends.")
    assert len(store.list()) == 2  # nothing half created
    operators = start(store, None)  # the operator's own command line is not held back
    assert operators.owner == ownership.local_owner()
    ownership.cancel(store, first.id, ALICE)
    ownership.cancel(store, operators.id, ownership.local_owner())
    assert start(store, CAROL).status == QUEUED


def test_one_owner_may_have_max_runs_per_owner_waiting_or_training(store, monkeypatch):
    limits(monkeypatch, max_runs_per_owner=1)
    mine = start(store, ALICE, request_id="click-1")
    with pytest.raises(RunError, match="You already have 1 run waiting or training"):
        start(store, ALICE)
    assert start(store, ALICE, request_id="click-1").id == mine.id  # a second click is the same run, not a refusal
    assert start(store, BOB).owner == BOB  # another owner has their own allowance
    assert [start(store, None).owner for _ in range(2)] == [ownership.local_owner()] * 2  # the command line is exempt
    store.transition(mine.id, RUNNING, pid=os.getpid())  # training (a live process) counts as much as waiting
    with pytest.raises(RunError, match="You already have 1 run"):
        start(store, ALICE)


def test_resuming_needs_room_in_the_queue(store, monkeypatch):
    limits(monkeypatch, max_queued_runs=1)
    record = start(store, ALICE)
    store.transition(record.id, RUNNING, pid=None)
    store.transition(record.id, INTERRUPTED)
    start(store, BOB)  # the one place in the queue
    with pytest.raises(RunError, match="This server already has 1 runs? waiting"):
        jobs.resume(store, record.id, launch=False, by=ALICE)
    assert store.get(record.id).status == INTERRUPTED


def test_a_burst_of_starts_gets_no_more_than_the_limit(store, monkeypatch):
    """Twenty starts at the same moment (a script): the check and the creation are one step."""
    limits(monkeypatch, max_queued_runs=8)
    start(store, ALICE)  # one start first: the imports a first start makes are not what is raced here
    barrier, outcomes = threading.Barrier(20), []

    def click(n: int) -> None:
        barrier.wait()
        try:
            outcomes.append(start(store, f"browser:{n:016x}"))
        except RunError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=click, args=(n,)) for n in range(20)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    refused = [o for o in outcomes if isinstance(o, RunError)]
    assert len(outcomes) == 20 and len(refused) == 13, elapsed
    assert all("its limit" in str(exc) for exc in refused)
    assert sum(r.status == QUEUED for r in store.list()) == 8
    assert len([p for p in store.root.iterdir() if p.is_dir()]) == 8  # no folder left by a refused start


def test_the_disk_quota_counts_the_store_and_the_new_corpus(store, monkeypatch):
    limits(monkeypatch, run_store_quota_mb=10)
    (store.root / "earlier-run-files.bin").write_bytes(b"\1" * 8_000_000)  # allocated, not sparse
    ownership.forget_disk_use(store.root)
    big = b"the cat sat on the mat .\n" * 100_000  # 2.5 MB: 8 + 2.5 > 10
    for owner in (ALICE, None):  # the command line too: the disk is the machine's
        with pytest.raises(RunError) as refused:
            start(store, owner, big)
        message = str(refused.value)
        assert message.startswith("The run store is full: 8.0 MB written, of the 10.0 MB this server allows")
        assert str(store.root) not in message and "/" not in message  # no server path
    assert not store.list()  # nothing half created


def test_the_disk_quota_counts_what_started_runs_will_still_write(store, monkeypatch):
    """Two starts into an almost empty store: each run's checkpoints and model are reserved when it starts,
    so the second is refused before the two of them fill the disk."""
    small = TrainConfig(model="scratch-transformer", steps=3, batch_size=2, seq_len=16, corpus_name="tiny.txt")
    peak = ownership.peak_disk_bytes(small.to_dict(), 0)
    assert peak > 5_000_000  # a checkpoint (weights and optimizer state) and the model
    limits(monkeypatch, run_store_quota_mb=int(1.5 * peak / 1_000_000) + 1)
    first, _ = jobs.submit(store, small, corpus_bytes(40), launch=False, owner=ALICE)
    with pytest.raises(RunError, match="that running runs will still write") as refused:
        jobs.submit(store, small, corpus_bytes(40), launch=False, owner=BOB)
    assert "this run needs about" in str(refused.value)
    assert [r.id for r in store.list()] == [first.id]
    ownership.cancel(store, first.id, ALICE)  # a cancelled run writes no more
    assert jobs.submit(store, small, corpus_bytes(40), launch=False, owner=BOB)[0].owner == BOB


def test_disk_use_is_measured_once_per_burst_and_counts_what_a_start_adds(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    (root / "a.bin").write_bytes(b"\1" * 100_000)
    measured = ownership.store_disk_use(root)
    assert measured >= 100_000
    (root / "b.bin").write_bytes(b"\1" * 100_000)
    assert ownership.store_disk_use(root) == measured  # within DISK_USE_MAX_AGE_S: not walked again
    ownership.note_disk_use(root, 100_000)
    assert ownership.store_disk_use(root) == measured + 100_000  # what a start wrote is counted at once
    assert ownership.store_disk_use(root, max_age_s=0) >= 200_000
    (root / "c.bin").hardlink_to(root / "a.bin")  # one file, two names: counted once
    assert ownership.store_disk_use(root, max_age_s=0) < 300_000


def test_disk_use_of_a_store_of_many_runs_is_quick(tmp_path):
    root = tmp_path / "store"
    for run in range(300):  # 300 runs of 10 files: a busy term's store
        folder = root / f"run-{run}" / "checkpoints"
        folder.mkdir(parents=True)
        for n in range(10):
            (folder / f"f{n}").write_bytes(b"\1" * 100)
    began = time.perf_counter()
    ownership.store_disk_use(root, max_age_s=0)
    assert time.perf_counter() - began < 2.0


# ----------------------------------------------------------------------------- settings from a link


@pytest.fixture
def page_caches():
    clear_streamlit_caches()
    yield
    clear_streamlit_caches()


def link_warnings(app) -> str:
    return " ".join(w.value.replace("\\", "") for w in app.warning)


def test_a_link_is_bounded_exactly_like_the_widget(store, page_caches):
    steps_max, batch_max = TrainConfig.spec("steps").max, TrainConfig.spec("batch_size").max
    at_limit = open_app_page(FINETUNE_PAGE, {"steps": str(int(steps_max)), "batch": str(int(batch_max))})
    steps, batch = at_limit.number_input(key="ft-steps"), at_limit.number_input(key="ft-batch")
    assert steps.max == steps_max and batch.max == batch_max  # the widget's own bounds...
    assert steps.value == steps_max and batch.value == batch_max  # ...and a link may reach them, no further
    over = open_app_page(FINETUNE_PAGE, {"steps": "1000001", "batch": "4097", "seq_len": "4096"})
    said = link_warnings(over)
    for name in ("steps", "batch", "seq_len"):
        assert f"link's {name}=" in said, name
    assert over.number_input(key="ft-steps").value == TrainConfig.spec("steps").default
    assert over.number_input(key="ft-batch").value == TrainConfig.spec("batch_size").default
    seq = over.number_input(key="ft-seq")  # the widget's range is the model's, tighter than TrainConfig's
    assert seq.max < TrainConfig.spec("seq_len").max and seq.value <= seq.max
    exponent = open_app_page(FINETUNE_PAGE, {"steps": "1e6"})
    assert "link's steps=" in link_warnings(exponent)
    assert exponent.number_input(key="ft-steps").value == TrainConfig.spec("steps").default


def test_a_browser_run_longer_than_the_operator_allows_is_refused(store, monkeypatch):
    limits(monkeypatch, max_run_minutes=30)
    with pytest.raises(RunError, match=r"estimated to take 2 h 00 min; this server allows runs of up to 30 min"):
        jobs.submit(store, settings(), corpus_bytes(40), launch=False, owner=ALICE, estimated_s=7200)
    assert store.list() == []
    record, _ = jobs.submit(store, settings(), corpus_bytes(40), launch=False, owner=ALICE, estimated_s=1700)
    assert record.owner == ALICE
    local, _ = jobs.submit(store, settings(), corpus_bytes(40), launch=False, estimated_s=7200)  # the operator's own
    assert local.owner == ownership.local_owner()


class LateClock:
    """The time module as a job sees it, an hour later from the first step on: the run outlives its limit."""

    def __init__(self) -> None:
        self.started = False

    def __getattr__(self, name):
        return getattr(time, name)

    def monotonic(self) -> float:
        return time.monotonic() + (3600.0 if self.started else 0.0)


def tiny_run(store, tiny_model_dir, owner):
    config = TrainConfig(model=str(tiny_model_dir), steps=40, batch_size=2, seq_len=16, corpus_name="tiny.txt",
                         checkpoint_every=5, eval_every=5)
    record, _ = jobs.submit(store, config, corpus_bytes(60), launch=False, owner=owner)
    return record


def test_a_browser_run_is_stopped_at_the_time_limit_while_it_runs(store, monkeypatch, tiny_model_dir):
    """The estimate at the start can be steered (an unusual corpus, a model of unknown size): the job
    itself stops a browser user's run once it has trained for max_run_minutes."""
    limits(monkeypatch, max_run_minutes=30)
    clock = LateClock()
    monkeypatch.setattr(jobs, "time", clock)
    record = tiny_run(store, tiny_model_dir, ALICE)
    original = jobs.StoreCallbacks.on_step

    def on_step(self, step, total, loss):
        original(self, step, total, loss)
        clock.started = step >= 3

    monkeypatch.setattr(jobs.StoreCallbacks, "on_step", on_step)
    done = jobs.execute(store, record.id)
    assert done.status == CANCELLED and done.step < 40
    assert "this server allows a browser user's run to train for up to 30 min 00 s (max_run_minutes)" in done.reason


def test_the_operators_own_run_has_no_time_limit(store, monkeypatch, tiny_model_dir):
    limits(monkeypatch, max_run_minutes=1)
    clock = LateClock()
    clock.started = True
    monkeypatch.setattr(jobs, "time", clock)
    record = tiny_run(store, tiny_model_dir, None)  # the command line
    assert jobs.execute(store, record.id).status == FINISHED


def test_a_store_over_its_quota_interrupts_a_browser_run_resumably(store, monkeypatch, tiny_model_dir):
    record = tiny_run(store, tiny_model_dir, ALICE)
    limits(monkeypatch, run_store_quota_mb=10)
    (store.root / "someone-elses-files.bin").write_bytes(b"\1" * 11_000_000)
    ownership.forget_disk_use(store.root)
    done = jobs.execute(store, record.id)
    assert done.status == INTERRUPTED
    assert "the run store is over its quota of 10.0 MB" in done.reason and "masklab runs resume" in done.reason
    (store.root / "someone-elses-files.bin").unlink()
    ownership.forget_disk_use(store.root)
    jobs.resume(store, record.id, launch=False, by=ALICE)
    assert jobs.execute(store, record.id).status == FINISHED
