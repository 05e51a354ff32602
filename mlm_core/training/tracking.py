"""Experiment trackers of a training run (TensorBoard, MLflow, Weights & Biases), through Accelerate.

A run names its trackers in ``TrainConfig.log_with``. Each one writes inside the run folder and
never reaches the network: TensorBoard event files in ``<run>/tensorboard/``, an MLflow file store
in ``<run>/mlruns``, Weights & Biases in offline mode under ``<run>/wandb``. At each evaluation
the main process logs the scalars the Runs page plots (``scalars``), at the evaluation's step; ``finish``
closes the trackers when the run ends.

The packages are optional: ``check_installed`` says which one is missing before a run starts.

Example::

    check_installed(("tensorboard",))  # InputError("TensorBoard logging needs ...") without it
    scalars({"step": 10, "train_loss": 2.5, "by_category": {"content": {"n": 4, "top1": 0.5, "top5": 0.75}}})
    # {"train_loss": 2.5, "accuracy_by_category/content/top1": 0.5, "accuracy_by_category/content/top5": 0.75}
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from mlm_core.errors import InputError

TRACKERS = ("tensorboard", "mlflow", "wandb")  # Accelerate's names for them
TENSORBOARD_FOLDER = "tensorboard"
MLFLOW_FOLDER = "mlruns"
PROJECT_NAME = "masklab"  # the MLflow experiment and the W&B project every run logs under
# What a tracker needs installed, and what its message calls it.
PACKAGES = {"tensorboard": ("tensorboard", "TensorBoard"), "mlflow": ("mlflow", "MLflow"),
            "wandb": ("wandb", "Weights & Biases")}
# The evaluation record's scalars, as the Runs page shows them (trainer.Trainer.run builds the record).
EVALUATION_SCALARS = ("train_loss", "heldout_loss", "perplexity", "masked_accuracy", "masked_top5",
                      "masking_rate", "tokens_per_s", "lr")


def missing_package_message(names: tuple[str, ...] | list[str]) -> str | None:
    """Why the trackers ``names`` cannot log here (the first one whose package is missing), or None."""
    for name in names:
        package, shown = PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            return f"{shown} logging needs the {package} package: pip install {package}"
    return None


def check_installed(names: tuple[str, ...] | list[str]) -> None:
    """InputError naming the package to install when a tracker of ``names`` is missing one."""
    message = missing_package_message(names)
    if message:
        raise InputError(message)


def tensorboard_command(run_folder: str) -> str:
    """The command that opens a run's TensorBoard logs (``run_folder`` as the reader may see it)."""
    return f"tensorboard --logdir {run_folder}/{TENSORBOARD_FOLDER}"


def accelerator_options(names: tuple[str, ...] | list[str], run_folder: Path) -> dict:
    """``Accelerator(...)`` keyword arguments that log to ``names`` inside ``run_folder`` ({} for none).

    Each tracker is built here rather than named, so that each writes to its own folder under its own
    name (Accelerate would give all of them the one project name of ``init_trackers``).
    """
    if not names:
        return {}
    check_installed(names)
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    run_folder = Path(run_folder)
    run_name = run_folder.name  # the run id
    trackers = []
    for name in names:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(TENSORBOARD_FOLDER, run_folder))
        elif name == "mlflow":
            store = run_folder / MLFLOW_FOLDER
            # MLflow reads its store from the environment; without it, ./mlruns in whatever folder the job runs.
            os.environ["MLFLOW_TRACKING_URI"] = store.resolve().as_uri()
            # MLflow 3 refuses a file store unless asked: a folder per run needs no database server.
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
            trackers.append(MLflowTracker(PROJECT_NAME, str(store), run_name=run_name))
        elif name == "wandb":
            # Offline: the files stay in the run folder (`wandb sync` uploads them later, if ever).
            os.environ["WANDB_MODE"] = "offline"
            os.environ["WANDB_DIR"] = str(run_folder)
            trackers.append(WandBTracker(PROJECT_NAME, name=run_name, dir=str(run_folder), mode="offline"))
    return {"log_with": trackers, "project_dir": str(run_folder)}


def hyperparameters(config: dict) -> dict:
    """A run's settings as trackers store them: numbers, text and booleans (lists and dicts as text)."""
    import json

    return {key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value, default=str)
            for key, value in config.items() if value is not None}


def start(accelerator, config: dict) -> None:
    """Open the trackers of ``accelerator`` (main process only), with the run's settings."""
    if accelerator.is_main_process and accelerator.log_with:
        accelerator.init_trackers(PROJECT_NAME, config=hyperparameters(config))


def scalars(record: dict) -> dict[str, float]:
    """The scalars of evaluation ``record``: the Runs page's, accuracy by category flattened to tags."""
    values = {name: float(record[name]) for name in EVALUATION_SCALARS if record.get(name) is not None}
    for category, stats in sorted((record.get("by_category") or {}).items()):
        for measure in ("top1", "top5"):
            values[f"accuracy_by_category/{category}/{measure}"] = float(stats[measure])
    return values


def log_evaluation(accelerator, record: dict) -> None:
    """Log evaluation ``record`` at its step (main process only; nothing without trackers)."""
    if accelerator.is_main_process and accelerator.trackers:
        accelerator.log(scalars(record), step=int(record["step"]))


def finish(accelerator) -> None:
    """Close the trackers of ``accelerator`` (main process; nothing without trackers).

    What ``accelerator.end_training()`` does for trackers, without its other half: it also destroys the
    process group, which would end a multi-process run's communication for whatever follows the loop.
    """
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []  # closed once, however often this is called
