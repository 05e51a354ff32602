"""Experiment trackers (TrainConfig.log_with): TensorBoard event files that hold the Runs page's metrics,
the message for a missing package, the ``--log-with`` flag, and the Fine-tune page's checkbox."""

from __future__ import annotations

import argparse
import importlib.util

import pytest
import torch
from support.apptest import clear_streamlit_caches, kill_running_jobs, open_app_page
from support.corpora import corpus_bytes

from mlm_core.cli import main
from mlm_core.cli.training import add_train_arguments, train_config_from_args
from mlm_core.errors import InputError
from mlm_core.training import TrainConfig, jobs, tracking
from mlm_core.training.store import FINISHED

CORPUS = corpus_bytes()
MISSING_TENSORBOARD = "TensorBoard logging needs the tensorboard package: pip install tensorboard"


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def store():
    store = jobs.default_store()
    yield store
    kill_running_jobs(store)


def settings(model_dir, **overrides) -> TrainConfig:
    values = dict(model=str(model_dir), device="cpu", steps=6, batch_size=4, seq_len=32, lr=1e-3, eval_every=3,
                  eval_blocks=16, heldout_fraction=0.2, seed=3, log_with=("tensorboard",))
    return TrainConfig(**{**values, **overrides})


def without(package: str, monkeypatch) -> None:
    """Make ``package`` look uninstalled to the trackers' check."""
    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *args: None if name == package else real(name, *args))


def test_tensorboard_holds_the_metrics_of_every_evaluation_at_their_steps(store, tiny_model_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record, _ = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
    assert jobs.execute(store, record.id).status == FINISHED
    rows = store.metrics(record.id)
    assert [row["step"] for row in rows] == [3, 6]

    folder = store.folder(record.id)
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert not (folder / "mlruns").exists() and not (folder / "wandb").exists()  # only the trackers asked for
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert set(tracking.EVALUATION_SCALARS) <= tags
    for name in tracking.EVALUATION_SCALARS:
        logged = events.Scalars(name)
        assert [event.step for event in logged] == [row["step"] for row in rows], name
        # event files keep 32-bit floats
        assert [event.value for event in logged] == pytest.approx([row[name] for row in rows], rel=1e-6), name
    for category, stats in rows[-1]["by_category"].items():
        logged = events.Scalars(f"accuracy_by_category/{category}/top1")
        assert logged[-1].step == 6 and logged[-1].value == pytest.approx(stats["top1"], rel=1e-6)


def test_a_run_without_trackers_writes_no_tracker_files(store, tiny_model_dir):
    record, _ = jobs.submit(store, settings(tiny_model_dir, steps=3, log_with=()), CORPUS, launch=False)
    assert jobs.execute(store, record.id).status == FINISHED
    assert not (store.folder(record.id) / "tensorboard").exists()


def test_a_missing_package_is_refused_before_the_run_exists(store, tiny_model_dir, monkeypatch):
    without("tensorboard", monkeypatch)
    with pytest.raises(InputError) as refused:
        jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
    assert str(refused.value) == MISSING_TENSORBOARD
    assert store.list() == []
    without("wandb", monkeypatch)
    assert tracking.missing_package_message(("wandb",)) == (
        "Weights & Biases logging needs the wandb package: pip install wandb")


def test_the_cli_says_which_package_is_missing_and_exits_2(tmp_path, tiny_model_dir, monkeypatch, capsys):
    without("tensorboard", monkeypatch)
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(CORPUS)
    capsys.readouterr()
    status = main(["train", "--corpus", str(corpus), "--model", str(tiny_model_dir), "--steps", "2",
                   "--device", "cpu", "--log-with", "tensorboard", "--out", str(tmp_path / "runs")])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.strip() == f"error: {MISSING_TENSORBOARD}"


def parse_train(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_train_arguments(parser)
    return parser.parse_args(["--corpus", "corpus.txt", *argv])


def test_log_with_is_repeatable_or_a_comma_list_and_stored_in_the_run(store, tiny_model_dir):
    assert train_config_from_args(parse_train(), "corpus.txt").log_with == ()
    args = parse_train("--model", str(tiny_model_dir), "--log-with", "tensorboard", "--log-with", "mlflow,wandb",
                       "--log-with", "tensorboard")
    config = train_config_from_args(args, "corpus.txt")
    assert config.log_with == ("tensorboard", "mlflow", "wandb")
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parse_train("--log-with", "tensorboard,comet")
    record, _ = jobs.submit(store, train_config_from_args(parse_train("--model", str(tiny_model_dir), "--log-with",
                                                                      "tensorboard"), "corpus.txt"),
                            CORPUS, launch=False)
    stored = store.get(record.id).config
    assert stored["log_with"] == ["tensorboard"]  # JSON keeps a list...
    assert TrainConfig.from_dict(stored).log_with == ("tensorboard",)  # ...read back as the setting


@pytest.fixture
def clean_caches():
    clear_streamlit_caches()
    yield
    clear_streamlit_caches()


def test_the_finetune_page_offers_tensorboard_and_shows_the_command_without_server_paths(
        store, tiny_model_dir, tmp_path, clean_caches):
    app = open_app_page("app_pages/finetune.py")
    box = app.checkbox(key="ft-tensorboard")
    assert box.label == "Log to TensorBoard" and box.value is False
    box.check().run()
    assert app.query_params["log_with"] == "tensorboard"  # in the link, as the CLI names it
    assert not any("tensorboard --logdir" in block.value for block in app.code)  # no run followed yet
    assert open_app_page("app_pages/finetune.py", {"log_with": "tensorboard"}).checkbox(key="ft-tensorboard").value

    record, _ = jobs.submit(store, settings(tiny_model_dir), CORPUS, launch=False)
    app = open_app_page("app_pages/finetune.py", {"run": record.id})
    commands = [block.value for block in app.code]
    assert f"tensorboard --logdir $MASKLAB_HOME/runs/{record.id}/tensorboard" in commands
    shown = " ".join([*commands, *(c.value for c in app.caption), *(m.value for m in app.markdown)])
    assert str(tmp_path) not in shown

    plain, _ = jobs.submit(store, settings(tiny_model_dir, log_with=()), CORPUS, launch=False)
    app = open_app_page("app_pages/finetune.py", {"run": plain.id})
    assert not any("tensorboard --logdir" in block.value for block in app.code)
