"""CLI twin of the Experiments page: ``experiment`` trains a grid of configurations × seeds under one token
budget, one run after another, and prints each configuration's means with 95% intervals.

    python -m mlm_core experiment --corpus corpus.txt --model scratch-lstm --steps 150 \\
        --vary masking=static,dynamic --vary rate_start=0.15,0.3 --seeds 3 --json
    python -m mlm_core experiment --preset static-vs-dynamic
    python -m mlm_core experiment --cancel EXPERIMENT_ID      (from another terminal)
    python -m mlm_core experiment --resume EXPERIMENT_ID      (skips finished runs, resumes the interrupted one)
    python -m mlm_core experiment --show EXPERIMENT_ID

The base configuration takes every ``train`` flag; ``--vary KEY=V1,V2,...`` (repeatable: every
combination) names a training setting as TrainConfig does (``masking``, ``rate_start``, ``lr``, ...), or
``model``, ``strategy``, ``protect`` (never-mask rules joined by +, or none) or ``exclude``. With ``--json``
every line is a JSON object: the first names the experiment (``{"event": "experiment", "experiment_id":
...}``), then each run's progress, and the last (``"event": "final"``) holds ``configurations: [{label,
settings, runs, masked_accuracy: {mean, ci}, held_out_loss, perplexity, accuracy_by_category}]``.
Exit statuses as ``train``: 0 when every run finished, else the worst of 3 (a run failed or diverged),
4 (interrupted: resumable), 5 (cancelled), with one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlm_core.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUN_CANCELLED,
    EXIT_RUN_FAILED,
    EXIT_RUN_INTERRUPTED,
    Command,
    Printed,
    emit,
    read_user_file,
    strategy_from_args,
)
from mlm_core.cli.training import (
    ProgressPrinter,
    add_setting_flag,
    add_train_arguments,
    open_store,
    storage_errors,
    train_config_from_args,
    train_setting_specs,
)
from mlm_core.errors import InputError
from mlm_core.settings import param_specs

EXIT_HELP = (f"Exit status: {EXIT_OK} every run finished; {EXIT_BAD_INPUT} bad input (a --vary key or value, "
             f"settings refused before any run starts); {EXIT_RUN_FAILED} a run failed or diverged; "
             f"{EXIT_RUN_INTERRUPTED} the experiment was interrupted (experiment --resume ID goes on); "
             f"{EXIT_RUN_CANCELLED} it was cancelled; {EXIT_INTERRUPTED} Ctrl-C (resumable too).")


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    from mlm_core.training.experiment_presets import presets
    from mlm_core.training.experiments import ExperimentSettings, variable_keys

    add_train_arguments(parser)
    parser.epilog = EXIT_HELP
    group = parser.add_argument_group("experiment")
    group.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                       help="values of one setting to compare; repeat for a grid (every combination). Keys: "
                            + ", ".join(variable_keys()))
    for spec in param_specs(ExperimentSettings):
        add_setting_flag(group, spec, spec.name)
    group.add_argument("--preset", choices=list(presets()), default=None,
                       help="a shipped experiment (assets/experiments); the demo corpus unless --corpus")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--resume", metavar="EXPERIMENT_ID", help="go on with a cancelled or interrupted experiment")
    action.add_argument("--cancel", metavar="EXPERIMENT_ID", help="cancel an experiment and its current run")
    action.add_argument("--show", metavar="EXPERIMENT_ID", help="print an experiment's result so far")
    action.add_argument("--list", action="store_true", help="list the experiments")


def _masking_flags_given(args: argparse.Namespace) -> bool:
    params = any(v is not None for k, v in vars(args).items() if k.startswith("param_"))
    return bool(args.strategy or params or args.rate or args.privacy or args.protect or args.exclude)


def _corpus(args: argparse.Namespace, default: Path | None) -> tuple[bytes, argparse.Namespace, str]:
    """The corpus bytes, the arguments that describe how to read them, and its display name."""
    if args.corpus is not None and args.dataset is not None:
        raise InputError("Give --corpus FILE or --dataset PATH, not both.")
    if args.dataset is not None:
        from mlm_core.text.corpus import MAX_CORPUS_BYTES
        from mlm_core.text.datasets import materialize_txt, open_dataset

        source = open_dataset(args.dataset, args.split, args.column)
        data = materialize_txt(source, MAX_CORPUS_BYTES)
        return data, argparse.Namespace(**{**vars(args), "column": None, "text_unit": "line"}), f"{source.name}.txt"
    name = args.corpus or (str(default) if default else None)
    if name is None:
        raise InputError("Give --corpus FILE, --dataset PATH or --preset NAME.")
    return read_user_file(name, "corpus file"), args, Path(name).name


def _plan(args: argparse.Namespace) -> tuple[dict, bytes]:
    from mlm_core.resources import asset
    from mlm_core.training.experiment_presets import preset
    from mlm_core.training.experiments import make_plan, parse_vary

    if args.preset:
        if args.vary:
            raise InputError("--vary goes without --preset: a preset compares its own configurations.")
        if _masking_flags_given(args):
            raise InputError("Masking flags go without --preset: a preset sets its own masking.")
        chosen = preset(args.preset)
        data, how, name = _corpus(args, asset("demo_corpus.txt"))
        given = {spec.name: getattr(args, spec.name) for spec in train_setting_specs()}
        given.pop("checkpoint_evals", None)
        overrides = {**given, "model": args.model, "device": args.device, "corpus_column": how.column,
                     "text_unit": how.text_unit}
        return chosen.plan(name, seeds=args.seeds, **overrides), data
    grid = parse_vary(args.vary)  # bad keys and values are refused before the corpus is read
    data, how, name = _corpus(args, None)
    if args.epochs is not None:
        raise InputError("An experiment counts its budget in steps: give --steps, not --epochs.")
    strategy_from_args(how)  # the base masking flags, checked as train checks them
    base = train_config_from_args(how, name)
    given = {k[len("param_"):]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
    if args.rate is not None:
        given["rate" if args.strategy == "rule-based" else "mlm_probability"] = args.rate
    protect = [rule.strip() for rule in args.protect.split(",") if rule.strip()]
    masking = {"strategy": args.strategy or "random", "params": given, "privacy": args.privacy,
               "protect": protect, "exclude": args.exclude}
    from mlm_core.training.experiments import ExperimentSettings

    seeds = args.seeds if args.seeds is not None else ExperimentSettings.seeds
    unset = [spec.name for spec in train_setting_specs() if getattr(args, spec.name) is None]
    return make_plan(base, masking, vary=grid, seeds=seeds, unset=unset), data


def run_experiment(args: argparse.Namespace) -> dict | Printed:
    with storage_errors(args):
        return _experiment(args)


def _experiment(args: argparse.Namespace) -> dict | Printed:
    from mlm_core.training import experiment_results as results
    from mlm_core.training import experiments

    if args.list:
        store = open_store(args)
        return {"experiments": [{"experiment_id": i, **_brief(store, i)} for i in experiments.list_ids(store)]}
    if args.show:
        return results.summarize(open_store(args), args.show)
    if args.cancel:
        store = open_store(args)
        experiments.cancel(store, args.cancel)
        return results.summarize(store, args.cancel)
    if args.resume:
        store = open_store(args)
        experiments.prepare_resume(store, args.resume)
        experiment_id = args.resume
    else:
        plan, data = _plan(args)
        store = open_store(args)
        experiment_id = experiments.create(store, plan, data)
    return _drive(store, experiment_id, args.json)


def _brief(store, experiment_id: str) -> dict:
    from mlm_core.training import experiments

    plan, state = experiments.plan_of(store, experiment_id), experiments.state_of(store, experiment_id)
    return {"title": plan.get("title"), "status": state["status"],
            "configurations": [c["label"] for c in plan["configurations"]], "seeds": plan["seeds"]}


def _drive(store, experiment_id: str, as_json: bool) -> Printed:
    from mlm_core.training import experiment_results as results
    from mlm_core.training import experiments

    plan = experiments.plan_of(store, experiment_id)
    total = len(plan["configurations"]) * len(plan["seeds"])
    first = {"event": "experiment", "experiment_id": experiment_id, "title": plan.get("title"),
             "configurations": [c["label"] for c in plan["configurations"]], "seeds": plan["seeds"],
             "runs": total, "budget": plan["budget"]}

    def report(event: str, data: dict) -> None:
        if as_json:
            print(json.dumps({"event": event, "experiment_id": experiment_id, **data}, default=str), flush=True)
        elif event == "run":
            emit_err(f"run {data['index']}/{data['of']} ({data['configuration']}, seed {data['seed']}): "
                     f"{data['action']} {data['run_id']}")

    report("experiment", {k: v for k, v in first.items() if k not in ("event", "experiment_id")})
    if not as_json:
        emit_err(f"{plan['budget']['note']}.")
    printers: list = []

    def run_printer(run_id: str):
        for old in printers:
            old.close()
        printers[:] = [ProgressPrinter(as_json, run_id)]
        return printers[0]

    try:
        experiments.drive(store, experiment_id, report, run_printer)
    finally:
        for printer in printers:
            printer.close()
    summary = results.summarize(store, experiment_id)
    if as_json:
        print(json.dumps({"event": "final", **summary}, default=str), flush=True)
    else:
        emit(results.format_summary(summary))
    return Printed(summary, _exit_code(summary))


def _exit_code(summary: dict) -> int:
    """As ``train``: cancelled 5, interrupted 4, a failed or diverged run 3; one error: line saying which."""
    from mlm_core.training import experiment_results as results

    status, reason = summary["status"], summary.get("reason")
    if status in ("cancelled", "interrupted"):
        print(f"error: experiment {summary['experiment_id']} {status}: {reason or 'no reason was recorded'}; "
              f"go on with: experiment --resume {summary['experiment_id']}", file=sys.stderr, flush=True)
        return EXIT_RUN_CANCELLED if status == "cancelled" else EXIT_RUN_INTERRUPTED
    failed = results.failed_runs(summary)
    if failed:
        runs = ", ".join(f"{run_id} {status}" for run_id, status in failed)
        print(f"error: experiment {summary['experiment_id']}: {len(failed)} run(s) did not finish: {runs}",
              file=sys.stderr, flush=True)
        return EXIT_RUN_FAILED
    return EXIT_OK


def emit_err(line: str) -> None:
    from mlm_core.cli.common import terminal_text

    print(terminal_text(line), file=sys.stderr, flush=True)


def format_experiment(record: dict) -> str:
    from mlm_core.training import experiment_results as results

    if "experiments" in record:
        return "\n".join(f"{e['experiment_id']}  {e['status']:<11}  {e.get('title') or ''}  "
                         f"{len(e['configurations'])} configurations × {len(e['seeds'])} seeds"
                         for e in record["experiments"]) or "no experiments yet"
    return results.format_summary(record)


EXPERIMENT = Command("experiment", "compare training configurations over seeds under one token budget",
                     add_experiment_arguments, run_experiment, format_experiment,
                     json_help="one JSON object per line; the last is the result with intervals")
