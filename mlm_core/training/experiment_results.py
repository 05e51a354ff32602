"""An experiment's result: per configuration, the mean of each metric over its seeds with a 95% interval.

Each run contributes its final evaluation (the last step: the saved model's), made on the same held-out
blocks with the same evaluation masks for every run of the experiment (the trainer's fixed evaluation
masking), so the runs differ only by their configuration and seed.

The interval is Student's t over seeds: ``mean ± t(0.975, n−1) · s / √n``, ``s`` the sample standard
deviation of the n seeds' values. It says how much the mean would move with other seeds on this corpus
and budget; with one seed there is no spread to estimate, so ``ci`` is None (``ONE_SEED_NOTE``).

Example::

    interval([0.21, 0.23, 0.22])  # {"mean": 0.22, "ci": [0.195..., 0.244...], "n": 3}
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from mlm_core.evaluate.tally import T_975
from mlm_core.training import experiments
from mlm_core.training.store import FINISHED, RunStore

CI_METHOD = ("95% t-interval over seeds: mean ± t(0.975, n−1) · s/√n, with s the sample standard deviation of "
             "the n runs' final held-out evaluations (one value per seed), cut to the metric's range "
             "(accuracy 0 to 1, loss from 0, perplexity from 1)")
ONE_SEED_NOTE = "ci is null where fewer than 2 runs finished: one seed gives no spread to estimate an interval from"
METRICS = {"masked_accuracy": "masked_accuracy", "held_out_loss": "heldout_loss", "perplexity": "perplexity"}
# Where each metric can lie: a t-interval on few seeds can reach past it (an accuracy below 0 means nothing).
RANGES = {"masked_accuracy": (0.0, 1.0), "held_out_loss": (0.0, math.inf), "perplexity": (1.0, math.inf),
          "category": (0.0, 1.0)}
METRIC_LABELS = {"masked_accuracy": "masked-token accuracy (top-1)", "held_out_loss": "held-out loss",
                 "perplexity": "perplexity"}


def interval(values: Sequence[float], bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict:
    """Mean and the t-based 95% interval of ``values`` (one per seed), cut to ``bounds``; ``ci`` None for
    fewer than 2 values."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return {"mean": None, "ci": None, "n": 0}
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci": None, "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_975[n - 2] * sd / math.sqrt(n)  # t(0.975, n − 1); seeds are at most ExperimentSettings' max
    low, high = bounds
    return {"mean": mean, "ci": [max(low, mean - half), min(high, mean + half)], "n": n}


def final_evaluation(store: RunStore, run_id: str) -> dict | None:
    """The run's last evaluation with a held-out loss (by_category included); None when it has none."""
    rows = [m for m in store.metrics(run_id) if isinstance(m.get("heldout_loss"), int | float)]
    return rows[-1] if rows else None


def summarize(store: RunStore, experiment_id: str) -> dict:
    """The experiment as one record: its plan, state, budget and, per configuration, the runs and the
    intervals of masked accuracy, held-out loss, perplexity and accuracy by token category.

    Only finished runs count; ``finished`` says how many per configuration.
    """
    plan = experiments.plan_of(store, experiment_id)
    state = experiments.state_of(store, experiment_id)
    store.refresh()
    configurations = []
    for c, configuration in enumerate(plan["configurations"]):
        run_ids = [state["runs"].get(experiments.cell_key(c, s)) for s in range(len(plan["seeds"]))]
        evaluations, statuses = [], []
        for run_id in run_ids:
            status = None
            if run_id is not None:
                try:
                    status = store.get(run_id).status
                except experiments.RunError:  # deleted since
                    status = "deleted"
            statuses.append(status)
            evaluation = final_evaluation(store, run_id) if status == FINISHED else None
            if evaluation is not None:
                evaluations.append(evaluation)
        row = {"label": configuration["label"], "settings": configuration["settings"], "runs": run_ids,
               "statuses": statuses, "finished": len(evaluations)}
        for name, key in METRICS.items():
            row[name] = interval([e.get(key) for e in evaluations], RANGES[name])
        categories = sorted({k for e in evaluations for k in e.get("by_category") or {}})
        row["accuracy_by_category"] = {
            category: interval([e["by_category"][category]["top1"] for e in evaluations
                                if category in (e.get("by_category") or {})], RANGES["category"])
            for category in categories}
        configurations.append(row)
    return {"experiment_id": experiment_id, "title": plan.get("title"), "preset": plan.get("preset"),
            "status": state["status"], "reason": state.get("reason"), "seeds": plan["seeds"],
            "budget": plan["budget"], "interval": CI_METHOD,
            **({"ci_note": ONE_SEED_NOTE} if any(r["finished"] < 2 for r in configurations) else {}),
            "configurations": configurations}


def failed_runs(summary: dict) -> list[tuple[str, str]]:
    """(run id, status) of every run that ended other than finished, or never ran."""
    return [(run_id or "-", status or "not started") for row in summary["configurations"]
            for run_id, status in zip(row["runs"], row["statuses"], strict=True) if status != FINISHED]


def summary_frame(summary: dict) -> pd.DataFrame:
    """One row per configuration and metric (token categories as ``accuracy: <category>``): mean, interval, n."""
    rows = []
    for row in summary["configurations"]:
        measured = [(METRIC_LABELS[name], row[name]) for name in METRICS]
        measured += [(f"accuracy: {category}", value) for category, value in row["accuracy_by_category"].items()]
        for metric, value in measured:
            ci = value["ci"] or [None, None]
            rows.append({"configuration": row["label"], "metric": metric, "mean": value["mean"],
                         "ci_low": ci[0], "ci_high": ci[1], "runs": value["n"]})
    return pd.DataFrame(rows, columns=["configuration", "metric", "mean", "ci_low", "ci_high", "runs"])


def format_summary(summary: dict) -> str:
    """The summary as terminal text: one line per configuration, then the method."""
    lines = [f"experiment {summary['experiment_id']} {summary['status']}"
             + (f" ({summary['reason']})" if summary.get("reason") else ""), summary["budget"]["note"] + "."]
    for row in summary["configurations"]:
        parts = []
        for name in METRICS:
            value = row[name]
            if value["mean"] is None:
                parts.append(f"{name} -")
                continue
            ci = f" [{value['ci'][0]:.3f}, {value['ci'][1]:.3f}]" if value["ci"] else ""
            parts.append(f"{name} {value['mean']:.3f}{ci}")
        lines.append(f"  {row['label']}: {'; '.join(parts)}  ({row['finished']}/{len(row['runs'])} runs finished)")
    lines.append(f"Intervals: {summary['interval']}." + (f" {summary['ci_note']}." if summary.get("ci_note") else ""))
    return "\n".join(lines)
