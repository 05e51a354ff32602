"""What a run costs: the time estimate's ingredients, time left while it runs, disk use before and after."""

from __future__ import annotations

import json

import pytest

from mlm_core.training import TrainConfig, costs
from mlm_core.training.store import FINISHED, RUNNING, RunRecord, RunStore

TIMING = {"steps": 10, "step_s": 12.0, "first_step_s": 3.0, "evals": 2, "eval_s": 2.0, "checkpoints": 4,
          "checkpoint_s": 8.0, "final_s": 1.5, "batch_size": 4, "seq_len": 50, "eval_blocks": 10}


def make_finished(store: RunStore, model, device: str, timing: dict | None, startup_s: float = 7.0) -> RunRecord:
    created, _ = store.create({"model": model, "strategy": "random", "masking": "dynamic"})
    store.transition(created.id, RUNNING, pid=1)
    store.update(created.id, device=device)
    if timing is not None:
        costs.write_pace(store.folder(created.id), {"t0": 0, "first_step": 0, "step": 10, "at": 1,
                                                    "startup_s": startup_s, "timing": timing, "load": 0.0})
    return store.transition(created.id, FINISHED)


def test_estimate_adds_start_up_steps_evaluations_checkpoints_and_the_final_save(tmp_path, tiny_model_dir):
    store = RunStore(tmp_path / "runs")
    config = TrainConfig(model=str(tiny_model_dir), steps=100, batch_size=8, seq_len=100, eval_every=30,
                         checkpoint_every=25, eval_blocks=5)
    rough = costs.estimate_time(store, config, "cpu", train_blocks=1000, load=0.0)
    assert not rough.measured and "no finished run" in rough.basis
    make_finished(store, str(tiny_model_dir), "cuda:0", {**TIMING, "step_s": 9e9})  # another device: not used
    make_finished(store, "scratch-lstm", "cpu", {**TIMING, "step_s": 9e9})  # another model: not used
    run = make_finished(store, str(tiny_model_dir), "cpu", TIMING)
    make_finished(store, str(tiny_model_dir), "cpu", None)  # newer, but measured nothing: skipped
    estimate = costs.estimate_time(store, config, "cpu", train_blocks=1000, load=0.0)
    assert estimate.measured and f"run {run.id} measured" in estimate.basis and estimate.steps == 100
    step_s = (12.0 - 3.0) / 9  # the first step's warm-up is start-up, not a step
    parts = estimate.parts
    assert parts["start-up"] == pytest.approx(7.0 + (3.0 - step_s))
    assert parts["training"] == pytest.approx(100 * step_s * (8 * 100) / (4 * 50))  # scaled to batch × length
    assert parts["evaluation"] == pytest.approx(4 * 1.0 * (5 * 100) / (10 * 50))  # steps 30, 60, 90, 100
    assert parts["checkpoints"] == pytest.approx(3 * 2.0)  # steps 25, 50, 75: none at the last step
    assert parts["final save"] == 1.5
    assert estimate.seconds == pytest.approx(sum(parts.values()))


def test_a_busy_machine_is_said_not_guessed(tmp_path, tiny_model_dir):
    store = RunStore(tmp_path / "runs")
    config = TrainConfig(model=str(tiny_model_dir), steps=50)
    idle = costs.estimate_time(store, config, "cpu", 100, load=0.0)
    busy = costs.estimate_time(store, config, "cpu", 100, load=50.0)
    assert busy.seconds == idle.seconds and not idle.note  # the load average lags: no correction...
    assert "busy now (load 50.0" in busy.note  # ...but the page says the run may take longer
    assert not costs.estimate_time(store, config, "cuda", 100, load=50.0).note  # a GPU run: not the CPU's load
    run = make_finished(store, str(tiny_model_dir), "cpu", TIMING)
    folder = store.folder(run.id)
    costs.write_pace(folder, {**costs.read_pace(folder), "load": 50.0})  # it ran on a busy machine
    assert "while the machine was busy (load 50.0)" in costs.estimate_time(store, config, "cpu", 100, load=0).basis


def test_counts_of_evaluations_and_checkpoints_follow_the_trainer():
    config = TrainConfig(steps=20, eval_every=1, checkpoint_every=5)
    assert costs.evaluations(config, 20) == 20 and costs.checkpoints_written(config, 20) == 3
    config = TrainConfig(steps=10, eval_every=3, checkpoint_every=10)
    assert costs.evaluations(config, 10) == 4 and costs.checkpoints_written(config, 10) == 0


def test_default_pace_is_the_measured_reference_scaled_to_the_model(tiny_model_dir):
    reference = costs.REFERENCE_PACE["cpu"]
    assert costs.default_pace(None, "cpu")[0] == reference
    assert costs.default_pace("some/hub-model", "cpu")[0] == reference  # size unknown: the reference
    tiny = costs.default_pace(str(tiny_model_dir), "cpu")[0]
    assert tiny.train_token_s == pytest.approx(reference.train_token_s / costs.SPEEDUP_RANGE[1])
    assert tiny.checkpoint_s < reference.checkpoint_s  # a smaller model writes smaller checkpoints
    assert costs.default_pace("scratch-transformer", "cpu")[0].train_token_s < reference.train_token_s
    assert costs.default_pace("scratch-lstm", "cuda")[0].train_token_s < costs.REFERENCE_PACE["cuda"].train_token_s


def test_time_left_never_rises_while_a_step_runs():
    # The first step ended at 20 s (warm-up), then steps of 5 s: step 4 ended at 35 s; 10 steps in all.
    pace = {"t0": 0.0, "first_step": 0, "t1": 20.0, "s1": 1, "step": 4, "at": 35.0}
    seen = [costs.time_left(pace, 10, now) for now in (35.0, 36.0, 38.0, 40.0, 45.0, 60.0, 120.0)]
    assert seen[0] == pytest.approx(30.0)  # 6 steps at 5 s
    assert all(later <= earlier for earlier, later in zip(seen, seen[1:], strict=False))
    assert seen[-1] == pytest.approx(25.0)  # a slow step: it waits at one step less, never 0 before the end
    assert costs.time_left({**pace, "step": 5, "at": 48.0}, 10, 48.0) == pytest.approx(28 / 4 * 5)
    assert costs.time_left({"t0": 0.0, "first_step": 0, "step": 0, "at": 0.0}, 10, 5.0) is None  # starting
    only_first = {"t0": 0.0, "first_step": 0, "t1": 20.0, "s1": 1, "step": 1, "at": 20.0}
    assert costs.time_left(only_first, 10, 20.0) == pytest.approx(9 * 20.0)
    assert costs.time_left(None, 10) is None


def test_a_resumed_run_counts_only_the_steps_of_its_own_process():
    pace = {"t0": 100.0, "first_step": 50, "t1": 110.0, "s1": 51, "step": 53, "at": 114.0}
    assert costs.time_left(pace, 60, 114.0) == pytest.approx(7 * 2.0)


def test_disk_estimate_from_the_parameter_count(tiny_model_dir):
    from mlm_core.model.loading import load_model

    weights = costs.parameter_count(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), device="cpu").model
    assert weights == sum(p.numel() for p in model.parameters())
    config = TrainConfig(model=str(tiny_model_dir), steps=100, checkpoint_every=10)
    disk = costs.estimate_disk(config, 100, corpus_bytes=1000)
    assert disk.checkpoint_bytes == 12 * weights  # weights + AdamW's two moments, float32
    assert disk.final_bytes == 4 * weights + costs.TOKENIZER_BYTES + 1000
    assert disk.peak_bytes == disk.final_bytes + 2 * disk.checkpoint_bytes  # the kept one + the one being written
    short = costs.estimate_disk(TrainConfig(model=str(tiny_model_dir), steps=5, checkpoint_every=10), 5, 1000)
    assert short.peak_bytes == short.final_bytes  # no checkpoint is ever due
    assert costs.estimate_disk(TrainConfig(model="some/hub-model"), 10, 0) is None  # size unknown: not guessed
    assert costs.parameter_count("scratch-transformer") < costs.parameter_count("scratch-lstm")


def test_folder_size_and_its_note(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"x" * 2_500_000)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1}))
    assert costs.folder_bytes(tmp_path) == 2_500_000 + len(json.dumps({"step": 1}))
    assert costs.disk_note(tmp_path) == "On disk: 2.5 MB (model 2.5 MB)"
    assert costs.folder_bytes(tmp_path / "gone") == 0
    assert costs.format_bytes(999) == "999 B" and costs.format_bytes(349_000_000) == "349.0 MB"
