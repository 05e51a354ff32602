"""Experiments: one training configuration varied over a grid, each configuration trained with several
seeds under the same token budget, one run after another through the job system.

    <store root>/experiments/<experiment_id>/plan.json    what to run (never changes once created)
    <store root>/experiments/<experiment_id>/corpus.data  the corpus every run trains on
    <store root>/experiments/<experiment_id>/state.json   status, driver pid, cancel flag, the run of each cell
    <store root>/experiments/<experiment_id>/log.txt      the driver's output when the app started it

A *cell* is one configuration with one seed; its run is an ordinary run of the run store (the Runs page
lists it). ``drive`` trains the cells in order in its own process (the command line's, or the
``python -m mlm_core.training.experiments ROOT ID`` process the app starts): a finished cell is skipped,
an interrupted run is resumed from its checkpoint, a cancelled one is started again, a failed or
diverged one stays a result. Cancelling an experiment cancels its current run and stops the driver;
resuming it drives the remaining cells.

What may vary (``VARIABLE_KEYS``): the TrainConfig settings that do not change the budget or the
evaluation, the model, the main masking strategy and the never-mask / leave-out-of-context rules.
The budget (steps × batch × block length) and the held-out evaluation are the same for every run,
so configurations are compared on equal terms.

Example::

    plan = make_plan(base_config, masking_parts, vary={"masking": ["static", "dynamic"]}, seeds=3)
    experiment_id = create(store, plan, corpus_bytes)
    drive(store, experiment_id)
    summarize(store, experiment_id)["configurations"][0]["masked_accuracy"]  # {"mean": ..., "ci": [lo, hi]}
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from mlm_core.errors import InputError, MaskLabError, RunError
from mlm_core.masking import (
    EXCLUDE_RULES,
    MAIN_STRATEGIES,
    PROTECT_RULES,
    STRATEGIES,
    build_strategy,
    params_of,
)
from mlm_core.settings import Validated, param, param_specs, shown_value
from mlm_core.training import ownership
from mlm_core.training.config import TrainConfig
from mlm_core.training.store import (
    CANCELLED,
    CORPUS_FILE,
    DIVERGED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    RunStore,
    process_alive,
)

FOLDER = "experiments"
PLAN_FILE, STATE_FILE, LOG_FILE, LOCK_FILE = "plan.json", "state.json", "log.txt", "lock"
# Settings every run of an experiment shares: the token budget (steps × batch_size × seq_len; epochs would
# make it depend on the corpus) and what evaluation and bookkeeping see. The seed comes from ``seeds``.
BUDGET_KEYS = ("steps", "epochs", "batch_size", "seq_len")
SHARED_KEYS = ("text_unit", "seed", "heldout_fraction", "eval_blocks", "eval_every", "checkpoint_every",
               "keep_checkpoints", "log_with", "device")
MASKING_KEYS = ("strategy", "protect", "exclude")  # the masking parts: main strategy, never-mask rules, exclusion
MAX_RUNS = 64  # configurations × seeds: an experiment is a class demo or a study, not a sweep
NONE = "none"  # how a grid value says "no rule" (--vary protect=none,stopwords)
# Experiment states. queued: created, not driven yet; the others as a run's.
EXP_QUEUED, EXP_RUNNING, EXP_FINISHED, EXP_CANCELLED, EXP_INTERRUPTED = (
    "queued", "running", "finished", "cancelled", "interrupted")
POLL_S = 1.0  # how often a driver waiting on a run started by another launcher looks at it


@dataclass
class ExperimentSettings(Validated):
    """The experiment's own settings (the training settings are TrainConfig's)."""

    label = "Experiment settings"
    seeds: int = field(default=3, metadata=param(
        "Runs per configuration, each with its own seed (data order, masks, initial weights); at least 2 "
        "for an interval.", min=1, max=10))


def variable_keys() -> tuple[str, ...]:
    """What ``--vary`` accepts: the model, the masking parts and TrainConfig's settings but the shared ones."""
    own = tuple(s.name for s in param_specs(TrainConfig) if s.name not in BUDGET_KEYS + SHARED_KEYS)
    return ("model", *MASKING_KEYS, *own)


def parse_value(key: str, text) -> object:
    """One grid value of setting ``key``, checked as TrainConfig or the masking registry checks it."""
    if key not in variable_keys():
        if key in BUDGET_KEYS:
            raise InputError(f"{key} cannot vary: every run of an experiment trains on the same number of tokens "
                             "(steps × batch × block length).")
        raise InputError(f"{shown_value(key, 40)} cannot vary; choose from {', '.join(variable_keys())}.")
    raw = str(text).strip()
    if key == "model":
        if not raw:
            raise InputError("model: give a model name (a scratch model, a hub id or a folder).")
        return None if raw.lower() in (NONE, "default") else raw
    if key == "strategy":
        if raw not in MAIN_STRATEGIES:
            raise InputError(f"strategy must be one of {', '.join(MAIN_STRATEGIES)}; got {shown_value(raw, 40)}.")
        return raw
    if key == "protect":
        rules = () if raw.lower() in (NONE, "") else tuple(r.strip() for r in raw.split("+") if r.strip())
        wrong = [r for r in rules if r not in PROTECT_RULES]
        if wrong:
            raise InputError(f"protect must be {NONE} or rules joined by +, from {', '.join(PROTECT_RULES)}; "
                             f"got {shown_value(wrong[0], 40)}.")
        return list(rules)
    if key == "exclude":
        rule = "" if raw.lower() == NONE else raw
        if rule not in EXCLUDE_RULES:
            raise InputError(f"exclude must be {NONE} or one of {', '.join(r for r in EXCLUDE_RULES if r)}; "
                             f"got {shown_value(raw, 40)}.")
        return rule
    return TrainConfig.spec(key).parse(text)


def shown(key: str, value) -> str:
    """A grid value as labels and links write it (``parse_value`` reads it back)."""
    if key == "protect":
        return "+".join(value) or NONE
    if key in ("exclude", "model"):
        return value or NONE
    return value if key == "strategy" else TrainConfig.spec(key).format(value)


def parse_vary(items: Sequence[str]) -> dict[str, list]:
    """``["masking=static,dynamic", "rate_start=0.15,0.3"]`` → ``{"masking": ["static", "dynamic"], ...}``."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not values.strip():
            raise InputError(f"--vary takes KEY=V1,V2,...; got {shown_value(item, 60)}.")
        if key in grid:
            raise InputError(f"--vary {key} is given twice; give all its values once.")
        parsed = [parse_value(key, v) for v in values.split(",") if v.strip()]
        if len({json.dumps(v, default=str) for v in parsed}) != len(parsed):
            raise InputError(f"--vary {key} repeats a value.")
        grid[key] = parsed
    return grid


def grid_configurations(grid: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of the grid's values (the cartesian product), labelled ``key=value, ...``."""
    if not grid:
        return [{"label": "base", "settings": {}}]
    keys = list(grid)
    return [{"label": ", ".join(f"{k}={shown(k, v)}" for k, v in zip(keys, values, strict=True)),
             "settings": dict(zip(keys, values, strict=True))} for values in itertools.product(*grid.values())]


def cell_config(base: TrainConfig, masking: Mapping, settings: Mapping, unset: Sequence[str] = ()) -> TrainConfig:
    """The TrainConfig of one configuration: ``base`` with ``settings`` applied (masking parts rebuilt).

    ``unset``: settings the user left to their defaults. Those that TrainConfig resolves from others (the
    learning rate and sizes from the kind of model) are resolved again for each configuration, so a grid
    over ``model`` gives each model its own defaults rather than the base model's.
    """
    parts = {**masking, **{k: v for k, v in settings.items() if k in MASKING_KEYS}}
    params = dict(parts.get("params") or {})
    name = parts.get("strategy") or "random"
    valid = {p.name for p in STRATEGIES[name].params}
    strategy = build_strategy(name, {k: v for k, v in params.items() if k in valid}, bool(parts.get("privacy")),
                              list(parts.get("protect") or ()), parts.get("exclude") or "")
    trained = {k: v for k, v in settings.items() if k not in MASKING_KEYS}
    derived = {k: None for k in unset if k in resolved_keys()}
    return TrainConfig.from_dict({**base.to_dict(), **derived, **trained, "strategy": strategy.name,
                                  "strategy_params": params_of(strategy)})


def resolved_keys() -> tuple[str, ...]:
    """TrainConfig settings that None leaves to be derived per configuration (not the shared cadence)."""
    return tuple(s.name for s in param_specs(TrainConfig)
                 if s.optional and s.name not in BUDGET_KEYS + SHARED_KEYS)


def make_plan(base: TrainConfig, masking: Mapping, configurations: Sequence[Mapping] | None = None,
              vary: Mapping[str, Sequence] | None = None, seeds: int = ExperimentSettings.seeds,
              title: str | None = None, preset: str | None = None, unset: Sequence[str] = ()) -> dict:
    """What an experiment runs: every configuration's TrainConfig (checked now: bad settings never start a
    run), the seeds and the budget. Give ``vary`` (a grid) or ``configurations`` (``[{label, settings}]``).

    ``masking``: the base masking parts ``{"strategy", "params", "privacy", "protect", "exclude"}``;
    ``unset``: the settings the user left to their defaults (``cell_config``).
    """
    seeds = ExperimentSettings(seeds=seeds).seeds
    if base.steps is None:
        raise InputError("An experiment counts its budget in steps: give steps, not epochs.")
    configurations = list(configurations) if configurations is not None else grid_configurations(vary or {})
    if len(configurations) * seeds > MAX_RUNS:
        raise InputError(f"{len(configurations)} configurations × {seeds} seeds = {len(configurations) * seeds} "
                         f"runs; an experiment has at most {MAX_RUNS}.")
    if len({c["label"] for c in configurations}) != len(configurations):
        raise InputError("Two configurations have the same label.")
    cells = []
    for configuration in configurations:
        settings = {k: parse_value(k, shown(k, v) if not isinstance(v, str) else v)
                    for k, v in configuration["settings"].items()}
        try:
            config = cell_config(base, masking, settings, unset)
        except MaskLabError as exc:
            raise InputError(f"{configuration['label']}: {exc}") from None
        cells.append({"label": configuration["label"], "settings": {k: shown(k, v) for k, v in settings.items()},
                      "config": config.to_dict()})
    return {"title": title, "preset": preset, "configurations": cells,
            "seeds": [base.seed + n for n in range(seeds)], "budget": budget(base)}


def budget(config: TrainConfig) -> dict:
    """The token budget every run of an experiment shares, and a sentence saying so."""
    tokens = config.steps * config.batch_size * config.seq_len
    return {"steps": config.steps, "batch_size": config.batch_size, "seq_len": config.seq_len,
            "token_positions": tokens,
            "note": f"every run trains {config.steps} steps × {config.batch_size} blocks × {config.seq_len} "
                    f"tokens = {tokens:,} token positions, and is evaluated on the same held-out blocks"}


# ----------------------------------------------------------------------------- storage


def root(store: RunStore) -> Path:
    return store.root / FOLDER


def folder(store: RunStore, experiment_id: str) -> Path:
    if not experiment_id or not all(ch.isalnum() or ch == "-" for ch in experiment_id):
        raise RunError(f"{shown_value(experiment_id, 40)} is not an experiment id.")
    path = root(store) / experiment_id
    if not (path / PLAN_FILE).is_file():
        raise RunError(f"No experiment {experiment_id}.")
    return path


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def create(store: RunStore, plan: dict, corpus_bytes: bytes, owner: str | None = None) -> str:
    """Store a new experiment (queued); its id. The plan and corpus are written before its state exists."""
    experiment_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    path = root(store) / experiment_id
    path.mkdir(parents=True)
    (path / CORPUS_FILE).write_bytes(corpus_bytes)
    _write_json(path / PLAN_FILE, {**plan, "id": experiment_id, "created": time.time(),
                                   "owner": owner or ownership.local_owner()})
    _write_json(path / STATE_FILE, {"status": EXP_QUEUED, "runs": {}, "cancel_requested": False, "pid": None,
                                    "reason": None, "updated": time.time()})
    return experiment_id


def plan_of(store: RunStore, experiment_id: str) -> dict:
    return json.loads((folder(store, experiment_id) / PLAN_FILE).read_text())


def state_of(store: RunStore, experiment_id: str) -> dict:
    """The experiment's state; one whose driver died while running reads as interrupted."""
    state = json.loads((folder(store, experiment_id) / STATE_FILE).read_text())
    if state["status"] == EXP_RUNNING and not process_alive(state.get("pid")):
        state = _update(store, experiment_id, status=EXP_INTERRUPTED,
                        reason="the experiment's process stopped unexpectedly")
    return state


def _update(store: RunStore, experiment_id: str, runs: Mapping[str, str] | None = None, **fields) -> dict:
    path = folder(store, experiment_id)
    with FileLock(path / LOCK_FILE):
        state = json.loads((path / STATE_FILE).read_text())
        state.update(fields, updated=time.time())
        state["runs"].update(runs or {})
        _write_json(path / STATE_FILE, state)
    return state


def list_ids(store: RunStore) -> list[str]:
    """Experiment ids, newest first."""
    base = root(store)
    if not base.is_dir():
        return []
    return sorted((p.name for p in base.iterdir() if (p / PLAN_FILE).is_file()), reverse=True)


def cell_key(configuration: int, seed_index: int) -> str:
    return f"{configuration}/{seed_index}"


# ----------------------------------------------------------------------------- acting on an experiment


def check_may_manage(store: RunStore, experiment_id: str, by: str | None) -> dict:
    """RunError with ``ownership.NOT_YOURS`` unless ``by`` may cancel or resume the experiment; its plan."""
    plan = plan_of(store, experiment_id)
    by = by or ownership.local_owner()
    if not (ownership.is_local(by) or ownership.server_policy().others_may_manage_runs or plan.get("owner") == by):
        raise RunError(ownership.NOT_YOURS)
    return plan


def cancel(store: RunStore, experiment_id: str, by: str | None = None) -> dict:
    """Stop the experiment: its current run is cancelled, the driver stops before the next one."""
    check_may_manage(store, experiment_id, by)
    state = state_of(store, experiment_id)
    if state["status"] in (EXP_FINISHED, EXP_CANCELLED):
        raise RunError(f"Experiment {experiment_id} is already {state['status']}.")
    state = _update(store, experiment_id, cancel_requested=True)
    for run_id in state["runs"].values():
        with contextlib.suppress(RunError):
            if store.get(run_id).status in (QUEUED, RUNNING, INTERRUPTED):
                store.request_cancel(run_id)
    if state["status"] != EXP_RUNNING:  # no driver to see the flag
        state = _update(store, experiment_id, status=EXP_CANCELLED, reason="cancelled by the user")
    return state


def prepare_resume(store: RunStore, experiment_id: str, by: str | None = None) -> dict:
    """Make a cancelled or interrupted experiment drivable again (``drive`` or ``launch`` then go on)."""
    check_may_manage(store, experiment_id, by)
    state = state_of(store, experiment_id)
    if state["status"] not in (EXP_CANCELLED, EXP_INTERRUPTED):
        raise RunError(f"Experiment {experiment_id} is {state['status']}; only cancelled or interrupted "
                       "experiments can be resumed.")
    return _update(store, experiment_id, status=EXP_QUEUED, cancel_requested=False, reason=None)


def launch(store: RunStore, experiment_id: str) -> int:
    """Drive a queued experiment in its own process (the app's Start); the process id."""
    path = folder(store, experiment_id)
    with open(path / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlm_core.training.experiments", str(store.root), experiment_id],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the app's process and its restarts
            cwd=str(Path(__file__).resolve().parents[2]),
        )
    _update(store, experiment_id, status=EXP_RUNNING, pid=process.pid)
    return process.pid


Report = Callable[[str, dict], None]


def drive(store: RunStore, experiment_id: str, report: Report | None = None,
          run_printer: Callable[[str], Callable[[str, dict], None]] | None = None) -> dict:
    """Train the experiment's cells in order in this process; its final state.

    ``report(event, data)`` hears ``run`` (a cell begins: started, resumed or skipped) and ``run_end``;
    ``run_printer(run_id)`` gives the printer of one run's own progress (``jobs.execute``). Ctrl-C leaves
    the current run and the experiment interrupted, and goes on.
    """
    report = report or (lambda event, data: None)
    plan = plan_of(store, experiment_id)
    state = state_of(store, experiment_id)
    if state["status"] not in (EXP_QUEUED, EXP_RUNNING) or state["status"] == EXP_RUNNING and \
            state.get("pid") not in (None, os.getpid()):
        raise RunError(f"Experiment {experiment_id} is {state['status']}; it cannot be driven here.")
    _update(store, experiment_id, status=EXP_RUNNING, pid=os.getpid())
    cells = [(c, s) for c in range(len(plan["configurations"])) for s in range(len(plan["seeds"]))]
    try:
        for index, (c, s) in enumerate(cells, 1):
            if state_of(store, experiment_id)["cancel_requested"]:
                return _update(store, experiment_id, status=EXP_CANCELLED, reason="cancelled by the user")
            record = _run_cell(store, plan, experiment_id, c, s, index, len(cells), report, run_printer)
            if record is None:
                continue
            report("run_end", {"run_id": record.id, "status": record.status})
            if record.status == CANCELLED:
                return _update(store, experiment_id, status=EXP_CANCELLED,
                               reason=f"run {record.id} was cancelled")
            if record.status == INTERRUPTED:
                return _update(store, experiment_id, status=EXP_INTERRUPTED,
                               reason=f"run {record.id} was interrupted: {record.reason or ''}".strip())
    except KeyboardInterrupt:
        _update(store, experiment_id, status=EXP_INTERRUPTED, reason="stopped with Ctrl-C")
        raise
    except MaskLabError as exc:  # a limit refused the next run (a full store, the queue): resumable later
        return _update(store, experiment_id, status=EXP_INTERRUPTED, reason=str(exc))
    return _update(store, experiment_id, status=EXP_FINISHED, reason=None)


def _run_cell(store, plan, experiment_id, c, s, index, total, report, run_printer):
    """Train (or skip) one cell; its run's final record, None when it was already done."""
    from mlm_core.training import jobs  # the trainer and torch: loaded when a run trains, not with the page
    key = cell_key(c, s)
    configuration, seed = plan["configurations"][c], plan["seeds"][s]
    about = {"configuration": configuration["label"], "seed": seed, "index": index, "of": total}
    run_id = state_of(store, experiment_id)["runs"].get(key)
    record = None
    if run_id:
        with contextlib.suppress(RunError):  # deleted on the Runs page: the cell is trained again
            record = store.get(run_id)
    if record is not None and record.status in (FINISHED, FAILED, DIVERGED):
        report("run", {**about, "run_id": record.id, "action": "skipped", "status": record.status})
        return None
    if record is not None and record.status == INTERRUPTED:
        jobs.resume(store, record.id, launch=False, by=plan["owner"])
        action = "resumed"
    elif record is not None and record.status in (QUEUED, RUNNING):
        action = "continued"
    else:  # never started, cancelled or deleted: a fresh run
        corpus = folder(store, experiment_id) / CORPUS_FILE  # a path: submit copies it, streaming a big one
        config = TrainConfig.from_dict({**configuration["config"], "seed": seed})
        # One request per cell and attempt: a driver that died between creating the run and recording it
        # finds the same run again when resumed, rather than leaving it queued for nobody.
        request = f"experiment-{experiment_id}-{key}-after-{run_id or 'none'}"
        record, _ = jobs.submit(store, config, corpus, request_id=request, launch=False, owner=plan["owner"])
        _update(store, experiment_id, runs={key: record.id})
        action = "started"
    report("run", {**about, "run_id": record.id, "action": action})
    try:
        return jobs.execute(store, record.id, run_printer(record.id) if run_printer else None)
    except RunError:  # another launcher started it in its own process first: wait for it to end
        return _wait_for(store, experiment_id, record.id)


def _wait_for(store: RunStore, experiment_id: str, run_id: str):
    while True:
        store.refresh()
        record = store.get(run_id)
        if record.status not in (QUEUED, RUNNING):
            return record
        if state_of(store, experiment_id)["cancel_requested"] and not record.cancel_requested:
            store.request_cancel(run_id)
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    """Entry point of a driver process: ``python -m mlm_core.training.experiments ROOT EXPERIMENT_ID``."""
    store_root, experiment_id = (argv or sys.argv[1:])[:2]
    store = RunStore(store_root)
    try:
        state = drive(store, experiment_id)
    except RunError as exc:
        print(f"experiment {experiment_id}: {exc}", flush=True)
        return 2
    print(f"experiment {experiment_id}: {state['status']} {state.get('reason') or ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
