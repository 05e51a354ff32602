"""The batch analysis's estimate (mlm_core.evaluate.estimate): planned work in the engine's units,
throughput measured through the engine's own code, stage names, time left; and the hardest
sentences grouped by sentence."""

from __future__ import annotations

import inspect
import math

import pytest

from mlm_core.cli.evaluate import add_evaluate_arguments
from mlm_core.evaluate import (
    PER_CONFIG,
    STAGES,
    WITH_PLL,
    EvalConfig,
    Throughput,
    describe_seconds,
    estimate,
    evaluate,
    evaluate_distributed,
    measure_throughput,
    plan_work,
    time_left,
)
from mlm_core.evaluate.estimate import forget_measurements, record_run

SENTENCES = ["the cat sat on the mat.", "the dog ran in the big house!", "paris is the capital of france, he said.",
             "she sat on a small red tree?"]


@pytest.fixture(autouse=True)
def fresh_measurements():
    forget_measurements()
    yield
    forget_measurements()


def test_pll_is_off_by_default_everywhere_from_one_declaration():
    import argparse

    assert WITH_PLL is False
    assert inspect.signature(evaluate).parameters["with_pll"].default is WITH_PLL
    assert inspect.signature(evaluate_distributed).parameters["with_pll"].default is WITH_PLL
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    assert parser.parse_args(["f.txt"]).pll is None  # run_evaluate reads WITH_PLL (the parser stays light)
    assert parser.parse_args(["f.txt", "--pll"]).pll is True
    assert parser.parse_args(["f.txt", "--no-pll"]).pll is False  # the old flag keeps working


@pytest.mark.parametrize("with_pll", [False, True])
def test_progress_counts_the_units_the_estimate_plans_and_pll_moves_within_itself(tiny_loaded, tmp_path, with_pll):
    configs = [EvalConfig(), EvalConfig("span", exclude="punctuation")]
    work = plan_work(tiny_loaded, SENTENCES, configs, [0, 1], with_pll)
    seen = []
    evaluate(tiny_loaded, SENTENCES, configs, seeds=[0, 1], with_pll=with_pll, cache_dir=tmp_path, max_tokens=64,
             progress=lambda *a: seen.append(a))
    done, total, _ = seen[-1]
    assert done == total == round(work.tokens["predict"] + work.tokens["pll"])  # the planned units, exactly
    assert all(t == total for _, t, _ in seen) and [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    stages = [what.split(" · ")[0] for _, _, what in seen]
    assert set(stages) == {STAGES["predict"], STAGES["pll"]} if with_pll else {STAGES["predict"]}
    if with_pll:  # the long stage reports after each pass, not once at its end
        inside = [d for d, _, what in seen if what == STAGES["pll"]]
        assert len(inside) >= 4 and len(set(inside)) >= 3 and inside[0] < total / 2
    assert work.rows["predict"] == len(SENTENCES) * 4


def test_throughput_is_measured_here_remembered_and_corrected_by_runs(tiny_loaded, tmp_path, monkeypatch):
    measured = measure_throughput(tiny_loaded, SENTENCES * 20)
    assert measured.source == "measured" and set(measured.tokens_per_second) == set(STAGES)
    assert all(0 < rate < math.inf for rate in measured.tokens_per_second.values())
    from mlm_core.evaluate import engine

    monkeypatch.setattr(engine._Engine, "_pll", lambda *a: pytest.fail("timed again"))
    assert measure_throughput(tiny_loaded, SENTENCES) is measured  # remembered per model and device
    monkeypatch.undo()
    record_run(tiny_loaded, {"predict": 5000, "pll": 0}, {"predict": 2.0, "pll": 0.0})
    learned = measure_throughput(tiny_loaded, SENTENCES)
    assert learned.source == "last run" and learned.tokens_per_second["predict"] == 2500
    assert learned.tokens_per_second["pll"] == measured.tokens_per_second["pll"]  # a stage that did not run
    record_run(tiny_loaded, {"predict": 10, "pll": 0}, {"predict": 0.01, "pll": 0.0})  # too short to say much
    assert measure_throughput(tiny_loaded, SENTENCES).tokens_per_second["predict"] == 2500


def test_the_estimate_is_planned_tokens_over_measured_pace_with_named_stages(tiny_loaded):
    pace = Throughput({"predict": 10.0, "pll": 5.0}, overhead_s=1.0)
    work = plan_work(tiny_loaded, SENTENCES, [EvalConfig()], [0], True)
    guess = estimate(work, pace)
    assert guess.stages["predict"] == pytest.approx(work.tokens["predict"] / 10)
    assert guess.stages["pll"] == pytest.approx(work.tokens["pll"] / 5)
    assert guess.seconds == pytest.approx(1.0 + guess.stages["predict"] + guess.stages["pll"])
    assert "masked predictions about" in guess.describe() and "pseudo-log-likelihood about" in guess.describe()
    assert "pll" not in estimate(plan_work(tiny_loaded, SENTENCES, [EvalConfig()], [0], False), pace).stages


def test_times_read_as_words_and_time_left_follows_the_pace():
    assert [describe_seconds(s) for s in (0.4, 8, 44, 150, 1500, 9000)] == [
        "under a second", "about 8 s", "about 45 s", "about 2.5 min", "about 25 min", "about 2.5 h"]
    assert time_left(0, 100, 0.0, planned=60) == 60  # before any progress: the estimate
    assert time_left(50, 100, 30.0) == pytest.approx(30)  # half done in 30 s: 30 s left
    assert time_left(50, 100, 30.0, planned=10) == pytest.approx(30)  # the pace wins once a quarter is done
    assert time_left(1, None, 3.0) is None


def test_hardest_sentences_name_each_sentence_once(tiny_loaded, tmp_path):
    configs = [EvalConfig("random", {"mlm_probability": 0.4}), EvalConfig("random", {"mlm_probability": 0.8})]
    report = evaluate(tiny_loaded, SENTENCES, configs, seeds=[0, 1], cache_dir=tmp_path)
    hardest = report.hardest_sentences(10)
    rows = report.rows("sentences")
    rows = rows[rows["predicted"] > 0]
    assert hardest["sentence"].is_unique and len(hardest) == rows["sentence"].nunique()
    columns = [PER_CONFIG + c.label for c in configs]
    assert [c for c in hardest.columns if c.startswith(PER_CONFIG)] == columns
    for _, row in hardest.iterrows():
        mine = rows[rows["sentence"] == row["sentence"]]
        assert row["mean_log_prob"] == mine["mean_log_prob"].min()  # shown where it was hardest
        for config in configs:
            expected = mine.loc[mine["config"] == config.label, "mean_log_prob"].mean()
            assert row[PER_CONFIG + config.label] == pytest.approx(expected, nan_ok=True)
    assert list(hardest["mean_log_prob"]) == sorted(hardest["mean_log_prob"])
    single = evaluate(tiny_loaded, SENTENCES, configs[0], cache_dir=tmp_path).hardest_sentences(10)
    assert not [c for c in single.columns if c.startswith(PER_CONFIG)]  # one configuration: nothing to compare
