"""Experiments: a grid of configurations × seeds trained one run after another under one token budget.

The runs are tiny (the fixture BERT, a few steps) and trained in this process, as ``experiment`` trains
them in the foreground; cancelling and interrupting are simulated inside the real job code.
"""

from __future__ import annotations

import json
import math

import pytest
from support.cli import run_cli
from support.corpora import corpus_bytes

from mlm_core.cli.common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_CANCELLED
from mlm_core.training import TrainConfig, experiments, jobs
from mlm_core.training.experiment_presets import presets
from mlm_core.training.experiment_results import ONE_SEED_NOTE, interval, summarize
from mlm_core.training.store import FINISHED, INTERRUPTED, RunStore
from mlm_core.views.experiments import experiment_report

# Student's t quantile t(0.975, df) from published tables: the reference the interval is checked against.
T_975 = {1: 12.706204736174707, 2: 4.302652729911275}


@pytest.fixture(autouse=True)
def home_on_one_thread(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_bytes(corpus_bytes())
    return path


def argv(corpus, model_dir, out, *extra) -> list:
    return ["experiment", "--corpus", corpus, "--model", model_dir, "--device", "cpu", "--steps", "4", "--batch",
            "4", "--seq-len", "32", "--eval-blocks", "8", "--lr", "0.001", "--out", out, *extra]


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_interval_is_students_t_over_seeds():
    three = interval([1.0, 2.0, 3.0])  # s = 1
    half = T_975[2] / math.sqrt(3)
    assert three["mean"] == 2.0 and three["n"] == 3
    assert three["ci"] == pytest.approx([2.0 - half, 2.0 + half], abs=1e-3)  # the table has 3 decimals
    two = interval([0.2, 0.4])  # s = 0.1414...
    assert two["ci"] == pytest.approx([0.3 - T_975[1] * 0.1, 0.3 + T_975[1] * 0.1], abs=1e-3)
    assert interval([0.2, 0.4], (0.0, 1.0))["ci"] == [0.0, 1.0]  # cut to the metric's range
    assert interval([0.5]) == {"mean": 0.5, "ci": None, "n": 1}  # one seed: no spread, no interval
    assert interval([]) == {"mean": None, "ci": None, "n": 0}


def test_a_two_by_two_grid_over_two_seeds(corpus, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    status, stdout, err = run_cli(capsys, *argv(corpus, tiny_model_dir, out, "--vary", "masking=static,dynamic",
                                                "--vary", "rate_start=0.15,0.3", "--seeds", "2", "--json"))
    assert status == EXIT_OK, err
    lines = records(stdout)
    first, final = lines[0], lines[-1]
    assert first["event"] == "experiment" and first["runs"] == 8 and first["experiment_id"] == final["experiment_id"]
    assert final["event"] == "final" and final["status"] == "finished"
    assert final["budget"]["token_positions"] == 4 * 4 * 32 and "same" in final["budget"]["note"]
    assert "t(0.975, n−1)" in final["interval"]
    assert [c["label"] for c in final["configurations"]] == [
        "masking=static, rate_start=0.15", "masking=static, rate_start=0.3",
        "masking=dynamic, rate_start=0.15", "masking=dynamic, rate_start=0.3"]
    store = RunStore(out)
    all_runs = [run for c in final["configurations"] for run in c["runs"]]
    assert len(set(all_runs)) == 8
    for configuration in final["configurations"]:
        assert configuration["statuses"] == [FINISHED, FINISHED]
        configs = [store.get(run).config for run in configuration["runs"]]
        assert [c["seed"] for c in configs] == [0, 1]
        assert all(c["masking"] == configuration["settings"]["masking"] for c in configs)
        assert all(c["rate_start"] == float(configuration["settings"]["rate_start"]) for c in configs)
        assert all((c["steps"], c["batch_size"], c["seq_len"]) == (4, 4, 32) for c in configs)
        # the mean and interval are those of the runs' final evaluations (the reference: each run's metrics)
        finals = [store.metrics(run)[-1] for run in configuration["runs"]]
        for name, key in (("masked_accuracy", "masked_accuracy"), ("held_out_loss", "heldout_loss"),
                          ("perplexity", "perplexity")):
            values = [f[key] for f in finals]
            mean = sum(values) / 2
            half = T_975[1] * abs(values[0] - values[1]) / 2  # s/√2 = |a − b| / 2 for two values
            assert configuration[name]["mean"] == pytest.approx(mean)
            low = 0.0 if name != "perplexity" else 1.0
            high = 1.0 if name == "masked_accuracy" else math.inf
            expected = [max(low, mean - half), min(high, mean + half)]
            assert configuration[name]["ci"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
        categories = configuration["accuracy_by_category"]
        assert categories and set(categories) <= {"stopword", "punctuation", "content", "number", "other"}
        assert all(set(v) == {"mean", "ci", "n"} for v in categories.values())


def test_one_seed_says_why_there_is_no_interval(corpus, tiny_model_dir, tmp_path, capsys):
    status, stdout, _ = run_cli(capsys, *argv(corpus, tiny_model_dir, tmp_path / "runs", "--steps", "2",
                                             "--seeds", "1", "--json"))
    final = records(stdout)[-1]
    assert status == EXIT_OK and final["ci_note"] == ONE_SEED_NOTE
    assert final["configurations"][0]["masked_accuracy"]["ci"] is None
    assert final["configurations"][0]["label"] == "base"


def test_cancel_then_resume_skips_finished_runs(corpus, tiny_model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs"
    started: list[str] = []
    original = jobs.StoreCallbacks.on_start

    def on_start(self, info):
        started.append(self.run_id)
        original(self, info)

    # `experiment --cancel` from another terminal while the second run trains: the run's cancel flag is read
    # by the job, which stops; the driver sees the experiment's flag and stops too.
    def should_stop(self):
        if len(started) == 2:
            experiments.cancel(RunStore(out), only_experiment(out))
        return self.store.cancel_requested(self.run_id)

    monkeypatch.setattr(jobs.StoreCallbacks, "on_start", on_start)
    monkeypatch.setattr(jobs.StoreCallbacks, "should_stop", should_stop)
    status, stdout, err = run_cli(capsys, *argv(corpus, tiny_model_dir, out, "--vary", "masking=static,dynamic",
                                                "--seeds", "2", "--json"))
    experiment_id = only_experiment(out)
    assert status == EXIT_RUN_CANCELLED
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: experiment {experiment_id} cancelled: run {started[1]} was cancelled; "
        f"go on with: experiment --resume {experiment_id}"]
    cancelled = records(stdout)[-1]
    assert cancelled["configurations"][0]["statuses"] == [FINISHED, "cancelled"]
    first_finished = RunStore(out).get(started[0]).finished

    monkeypatch.setattr(jobs.StoreCallbacks, "should_stop", lambda self: False)
    started.clear()
    status, stdout, err = run_cli(capsys, "experiment", "--resume", experiment_id, "--out", out, "--json")
    assert status == EXIT_OK, err
    runs = [line for line in records(stdout) if line["event"] == "run"]
    assert [r["action"] for r in runs] == ["skipped", "started", "started", "started"]
    final = records(stdout)[-1]
    assert final["status"] == "finished" and final["configurations"][0]["runs"][0] == runs[0]["run_id"]
    assert RunStore(out).get(runs[0]["run_id"]).finished == first_finished  # not trained again
    assert len(started) == 3


def test_an_interrupted_experiment_resumes_its_interrupted_run(corpus, tiny_model_dir, tmp_path, capsys,
                                                                monkeypatch):
    out = tmp_path / "runs"
    calls = {"runs": 0}
    original_start, original_step = jobs.StoreCallbacks.on_start, jobs.StoreCallbacks.on_step

    def on_start(self, info):
        calls["runs"] += 1
        original_start(self, info)

    def on_step(self, step, total, loss):  # Ctrl-C in the second run, after its checkpoint at step 2
        original_step(self, step, total, loss)
        if calls["runs"] == 2 and step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(jobs.StoreCallbacks, "on_start", on_start)
    monkeypatch.setattr(jobs.StoreCallbacks, "on_step", on_step)
    status, stdout, _ = run_cli(capsys, *argv(corpus, tiny_model_dir, out, "--vary", "masking=static,dynamic",
                                             "--seeds", "1", "--eval-every", "1", "--checkpoint-evals", "2",
                                             "--json"))
    assert status == EXIT_INTERRUPTED
    experiment_id = only_experiment(out)
    interrupted = [r["run_id"] for r in records(stdout) if r["event"] == "run"][-1]
    assert RunStore(out).get(interrupted).status == INTERRUPTED
    assert experiments.state_of(RunStore(out), experiment_id)["status"] == experiments.EXP_INTERRUPTED

    monkeypatch.setattr(jobs.StoreCallbacks, "on_step", original_step)
    status, stdout, err = run_cli(capsys, "experiment", "--resume", experiment_id, "--out", out, "--json")
    assert status == EXIT_OK, err
    runs = [r for r in records(stdout) if r["event"] == "run"]
    assert [(r["action"], r["run_id"]) for r in runs][:2] == [("skipped", runs[0]["run_id"]), ("resumed", interrupted)]
    starts = [r for r in records(stdout) if r["event"] == "start" and r["run_id"] == interrupted]
    assert starts[0]["resumed_from"] == 2  # from its checkpoint, not from the beginning
    assert RunStore(out).get(interrupted).status == FINISHED


def only_experiment(out) -> str:
    (experiment_id,) = experiments.list_ids(RunStore(out))
    return experiment_id


@pytest.mark.parametrize(("vary", "says"), [
    ("colour=red,blue", "'colour' cannot vary; choose from model,"),
    ("steps=4,8", "steps cannot vary: every run of an experiment trains on the same number of tokens"),
    ("masking=static,sometimes", "masking must be one of"),
    ("lr=fast", "lr must be a number"),
    ("rate_start=0.15,2", "rate_start must be a number from 0.01 to 1"),
    ("protect=verbs", "protect must be none or rules joined by +"),
    ("masking", "--vary takes KEY=V1,V2,..."),
])
def test_a_bad_vary_is_one_error_line_and_exit_2(corpus, tiny_model_dir, tmp_path, capsys, vary, says):
    status, stdout, err = run_cli(capsys, *argv(corpus, tiny_model_dir, tmp_path / "runs", "--vary", vary))
    assert status == EXIT_BAD_INPUT and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    assert not (tmp_path / "runs" / experiments.FOLDER).exists()  # nothing started


def test_every_preset_plans_valid_runs_with_its_page_text():
    assert {"static-vs-dynamic", "masking-rates", "stopwords", "architectures"} <= set(presets())
    for preset in presets().values():
        plan = preset.plan("demo_corpus.txt")
        assert len(plan["configurations"]) >= 2 and len(plan["seeds"]) == preset.seeds
        assert preset.claim and preset.can_show and preset.cannot_show and preset.measured
        budgets = {(c["config"]["steps"], c["config"]["batch_size"], c["config"]["seq_len"])
                   for c in plan["configurations"]}
        assert len(budgets) == 1  # one token budget for every configuration
        for configuration in plan["configurations"]:
            TrainConfig.from_dict(configuration["config"])  # valid as stored


def test_a_grid_over_models_gives_each_model_its_own_defaults():
    base = TrainConfig(model="scratch-lstm", steps=10)
    plan = experiments.make_plan(base, {"strategy": "random"},
                                 vary={"model": ["scratch-lstm", "scratch-transformer", None]}, seeds=1,
                                 unset=experiments.resolved_keys())
    by_model = {c["config"]["model"]: c["config"] for c in plan["configurations"]}
    assert by_model["scratch-lstm"]["lr"] == by_model["scratch-transformer"]["lr"] == 1e-3
    assert by_model[None]["lr"] == 5e-5  # the pre-trained default model is fine-tuned gently


def test_the_html_report_escapes_every_string(corpus, tiny_model_dir, tmp_path):
    store = RunStore(tmp_path / "runs")
    hostile = "<img src=x onerror=alert(1)>"
    base = TrainConfig(model=str(tiny_model_dir), device="cpu", steps=2, batch_size=4, seq_len=32, eval_blocks=8,
                       lr=1e-3, corpus_name="tiny.txt")
    plan = experiments.make_plan(base, {"strategy": "random"}, seeds=1, title=f"title {hostile}",
                                 configurations=[{"label": hostile, "settings": {"masking": "static"}}])
    experiment_id = experiments.create(store, plan, corpus.read_bytes())
    assert experiments.drive(store, experiment_id)["status"] == experiments.EXP_FINISHED
    page = experiment_report(summarize(store, experiment_id), {"claim": f"claim {hostile}"})
    assert hostile not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script" in page  # Plotly's own library, embedded once: the file works offline
