"""CLI twins of the Fine-tune and Runs pages: ``train`` (fine-tune in the foreground) and ``runs``
(list, show, resume, cancel or delete stored runs).

    python -m mlm_core train --corpus corpus.txt --strategy whole-word --static --steps 100 --json
    python -m mlm_core runs list
    python -m mlm_core runs resume RUN_ID
    python -m mlm_core runs rename RUN_ID --name "whole-word, long run"

With ``--json``, training streams one JSON object per line, each with the ``run_id`` (the first,
``{"event": "created", "run_id": ...}``, comes before any work, so a script can cancel or resume
the run it started); the last is the run's final record, which names both evaluations:
``best_eval`` (lowest held-out loss) and ``final_eval`` (the last step's: the saved model's), and
``model_path``, the finished model's folder (``predict --model`` takes it; None before the run finishes).
While a corpus over the corpus size limit is tokenized, ``{"event": "preparing", "done_bytes", "total_bytes",
"eta_s"}`` comes every few seconds (without --json, a "Preparing the corpus: 35%" line on stderr).
``run_train`` then returns ``Printed`` so that nothing more is printed.

A run that ends in any state but finished prints its record as usual, then one ``error:`` line on
stderr naming the reason (with real folder paths), and exits non-zero: ``EXIT_RUN_FAILED`` (3) for
failed or diverged, ``EXIT_RUN_INTERRUPTED`` (4) for a run that can be resumed (a full disk, a
read-only folder), ``EXIT_RUN_CANCELLED`` (5). Settings refused before the run starts (a seed out
of range) exit 2 like any bad input. A run index found empty or damaged is rebuilt from the run
folders, with one ``note:`` line on stderr.

Under ``torchrun`` / ``accelerate launch`` (WORLD_SIZE > 1), ``train`` and ``runs resume`` train one
run with every process (``_train_together``): the main process alone uses the run store and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlm_core.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_RUN_CANCELLED,
    EXIT_RUN_FAILED,
    EXIT_RUN_INTERRUPTED,
    Command,
    Printed,
    emit,
    read_user_file,
)
from mlm_core.cli.training import (
    RUN_EXIT_HELP,
    ProgressPrinter,
    add_train_arguments,
    open_store,
    storage_errors,
    train_config_from_args,
)
from mlm_core.errors import InputError, MaskLabError

RUN_ACTIONS = ["list", "show", "rename", "resume", "cancel", "delete"]
# How `train` and `runs resume` exit when the run ends other than finished (see the module's docstring).
EXIT_FOR_STATUS = {"failed": EXIT_RUN_FAILED, "diverged": EXIT_RUN_FAILED, "interrupted": EXIT_RUN_INTERRUPTED,
                   "cancelled": EXIT_RUN_CANCELLED}


def _final_record(store, record) -> dict:
    """The run as JSON: its row, its shown name and both evaluations, each named.

    ``best_eval``: the evaluation with the lowest held-out loss; ``final_eval``: the last one, at
    the last step, i.e. the saved model's when the run finished (the model saved is the final one).
    """
    from mlm_core.training.run_table import best_and_final, run_name

    data = record.as_dict()
    data["name"] = run_name(record)
    metrics = store.metrics(record.id)
    data["best_eval"], data["final_eval"] = best_and_final(metrics)
    from mlm_core.training.planning import run_model_folder

    folder = run_model_folder(store, record)  # a model folder `predict --model` takes, once the run has finished
    data["model_path"] = str(folder) if folder is not None else None
    # Processes that trained it (torchrun / accelerate launch): the last evaluation's, else the launch's.
    data["world_size"] = next((m["world_size"] for m in reversed(metrics) if "world_size" in m),
                              record.config.get("world_size", 1))
    return data


def _run_foreground(store, run_id: str, as_json: bool, first_event: str) -> dict | Printed:
    from mlm_core.training.jobs import execute

    printer = ProgressPrinter(as_json, run_id)
    # The first line names the run before the model loads (seconds): a script can cancel or resume it.
    printer(first_event, {"name": _final_record(store, store.get(run_id))["name"]})
    try:
        record = execute(store, run_id, printer)
    finally:
        printer.close()
    final = _final_record(store, record)
    exit_code = EXIT_FOR_STATUS.get(record.status)
    if as_json:  # the last JSON line is the run's final record; nothing more is printed
        print(json.dumps({"event": "final", **final}, default=str), flush=True)
    elif exit_code:
        emit(format_run(final))
    if exit_code:  # one line saying why, with the real folder where a full or read-only disk stopped it
        from mlm_core.text.corpus import one_line
        from mlm_core.training.jobs import reason_with_paths

        reason = " ".join((reason_with_paths(store, record) or "no reason was recorded").split())
        print(f"error: run {run_id} {record.status}: {one_line(reason, 1000)}", file=sys.stderr, flush=True)
        return Printed(final, exit_code)
    return Printed(final) if as_json else final


def run_train(args: argparse.Namespace) -> dict | Printed:
    with storage_errors(args):
        return _train(args)


def _train(args: argparse.Namespace) -> dict | Printed:
    from mlm_core.training.jobs import submit

    def create():
        if (args.corpus is None) == (args.dataset is None):
            raise InputError("Give --corpus FILE or --dataset PATH (one of them).")
        from mlm_core.text.corpus import MAX_CORPUS_BYTES

        if args.dataset is not None:
            import tempfile

            from mlm_core.text.datasets import open_dataset, write_txt

            source = open_dataset(args.dataset, args.split, args.column)
            as_txt = argparse.Namespace(**{**vars(args), "column": None, "text_unit": "line"})
            config = train_config_from_args(as_txt, f"{source.name}.txt")
            store = open_store(args)
            (store.root / "cache").mkdir(exist_ok=True)
            # written as a txt corpus batch by batch (a big one is then streamed), next to the run store
            with tempfile.TemporaryDirectory(dir=store.root / "cache", prefix="dataset-") as scratch:
                write_txt(source, Path(scratch) / "corpus.txt")
                record, _ = submit(store, config, Path(scratch) / "corpus.txt", launch=False,
                                   world_size=launched_processes())
            return store, record.id
        if args.split is not None:
            raise InputError("--split goes with --dataset.")
        path = Path(args.corpus)
        # over the size limit: streamed (copied into the run, never read whole), else read and checked here
        corpus = path if path.is_file() and path.stat().st_size > MAX_CORPUS_BYTES else read_user_file(
            args.corpus, "corpus file")
        config = train_config_from_args(args, path.name)
        store = open_store(args)
        record, _ = submit(store, config, corpus, launch=False, world_size=launched_processes())
        return store, record.id

    if launched_processes() > 1:
        return _train_together(args, create, "created")
    store, run_id = create()
    return _run_foreground(store, run_id, args.json, "created")


def launched_processes() -> int:
    """How many processes torchrun / accelerate launch started for this command (1 without either)."""
    import os

    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def _train_together(args: argparse.Namespace, start, first_event: str) -> dict | Printed:
    """One run trained by every process of a torchrun / accelerate launch group.

    The main process (rank 0) alone reads the corpus and the run store: ``start()`` creates (or
    resumes) the run there, and it sends the others the run's id, settings and corpus; they train
    their share of each batch and write and print nothing (``jobs.follow``). Every process exits
    with the run's status; a refusal before the run starts exits every process as the main one.
    """
    import sqlite3

    import torch
    from accelerate import PartialState

    from mlm_core.cli.common import EXIT_BUG
    from mlm_core.training.jobs import CORPUS_FILE, follow, leave_group, share_from_main

    state = PartialState(cpu=getattr(args, "device", None) == "cpu" or not torch.cuda.is_available())  # CPU: a gloo group
    if not state.is_main_process:
        shared = share_from_main(None)
        if "exit_code" in shared:
            printed = Printed(exit_code=shared["exit_code"])
        else:
            status = follow(shared["run_id"], shared["config"], shared["corpus"], shared["folder"])
            printed = Printed(exit_code=EXIT_FOR_STATUS.get(status, 0))
        leave_group(state)
        return printed
    try:
        store, run_id = start()
    except BaseException as exc:
        bad_input = isinstance(exc, MaskLabError | OSError | sqlite3.Error | SystemExit)
        share_from_main({"exit_code": EXIT_BAD_INPUT if bad_input else EXIT_BUG})
        raise
    record, folder = store.get(run_id), store.folder(run_id)
    share_from_main({"run_id": run_id, "config": record.config, "corpus": (folder / CORPUS_FILE).read_bytes(),
                     "folder": str(folder)})
    printed = _run_foreground(store, run_id, args.json, first_event)
    leave_group(state)
    return printed


def add_runs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=RUN_ACTIONS)
    parser.add_argument("run_id", nargs="?", help="the run (see runs list)")
    parser.add_argument("--name", default=None, help="rename: the run's new name (empty: the name made from its "
                        "settings)")
    parser.add_argument("--out", default=None, help="run store folder (default ~/.masklab/runs)")
    parser.epilog = RUN_EXIT_HELP


def run_runs(args: argparse.Namespace) -> dict | Printed:
    with storage_errors(args):
        return _runs(args)


def _resume_together(args: argparse.Namespace):
    """The main process's part of ``runs resume`` under torchrun: refuse a streamed run, then resume it."""

    def start():
        from mlm_core.text.corpus import MAX_CORPUS_BYTES
        from mlm_core.training import jobs

        store = open_store(args)
        corpus = store.folder(args.run_id) / jobs.CORPUS_FILE
        jobs.check_shareable(corpus.stat().st_size > MAX_CORPUS_BYTES, launched_processes())
        jobs.resume(store, args.run_id, launch=False)
        return store, args.run_id

    return start


def _runs(args: argparse.Namespace) -> dict | Printed:
    from mlm_core.training import jobs

    if args.action == "resume" and launched_processes() > 1:  # every process trains it, the main one resumes it
        if not args.run_id:
            raise MaskLabError("runs resume needs a run id (see `python -m mlm_core runs list`).")
        return _train_together(args, _resume_together(args), "resumed")
    store = open_store(args)
    if args.action == "list":
        return {"runs": [_final_record(store, r) for r in store.list()]}
    if not args.run_id:
        raise MaskLabError(f"runs {args.action} needs a run id (see `python -m mlm_core runs list`).")
    if args.action == "show":
        store.refresh()
        record = _final_record(store, store.get(args.run_id))
        record["metrics"] = store.metrics(args.run_id)
        return record
    if args.action == "rename":
        if args.name is None:
            raise MaskLabError("runs rename needs --name NAME (--name '' brings back the name made from the settings).")
        return _final_record(store, store.rename(args.run_id, args.name))
    if args.action == "cancel":
        return _final_record(store, store.request_cancel(args.run_id))
    if args.action == "delete":
        store.delete(args.run_id)
        return {"run_id": args.run_id, "deleted": True}
    jobs.resume(store, args.run_id, launch=False)
    return _run_foreground(store, args.run_id, args.json, "resumed")


def _evaluation(label: str, evaluation: dict | None) -> str:
    if not evaluation:
        return f"{label} -"
    return (f"{label} (step {evaluation['step']}): held-out loss {evaluation['heldout_loss']:.3f}, accuracy "
            f"{evaluation.get('masked_accuracy') or 0:.3f}")


def format_run(record: dict) -> str:
    if record.get("deleted"):
        return f"deleted run {record['run_id']}"
    from mlm_core.text.corpus import one_line

    # one_line escapes control characters: a terminal shows them, never runs them
    name = one_line(record.get("name") or "", 100)
    return (f"{record['run_id']}  {record['status']:<11}  step {record['step']}/{record.get('total_steps') or '?'}  "
            f"{name}\n    {_evaluation('final', record.get('final_eval'))}; "
            f"{_evaluation('best', record.get('best_eval'))}"
            + (f"  ({one_line(record['reason'], 300)})" if record.get("reason") else ""))


def format_runs(record: dict) -> str:
    if "runs" in record:
        return "\n".join(format_run(r) for r in record["runs"]) or "no runs yet"
    return format_run(record)


TRAIN = Command("train", "fine-tune a masked LM on a corpus with a masking scheme", add_train_arguments, run_train,
                format_run, json_help="one JSON object per line; the last is the final record")
RUNS = Command("runs", "list, show, rename, resume, cancel or delete training runs", add_runs_arguments, run_runs,
               format_runs, json_help="print JSON")
