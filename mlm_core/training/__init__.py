"""Fine-tuning with any masking scheme: configuration, data, models, the loop, checkpoints and runs.

Modules, in the order data flows through them:

* ``config``: ``TrainConfig``, every training setting declared once (limits, help, cadence rule);
* ``data``: a corpus split, tokenized and packed into blocks (``prepare_data``);
* ``scratch``: the models trained from random weights and ``build_model``;
* ``trainer``: ``Trainer``, the loop, reporting through ``TrainingCallbacks``;
* ``checkpoints``: crash-safe safetensors checkpoints, kept only as long as resume needs them;
* ``store``: the run store (SQLite row + folder per run);
* ``jobs``: each run in its own OS process, bound to the store (also ``python -m mlm_core.training.jobs``,
  so it is not imported here);
* ``planning``: what the Fine-tune page shows before a start (models, preview, device);
* ``costs``: a run's time (estimate before, time left during) and disk use, from what runs measured;
* ``run_table``, ``probes``: tables and before/after probes of finished runs.
"""

from mlm_core.training.config import CHECKPOINT_EVALS, EVALUATIONS_PER_RUN, TrainConfig, rate_schedule
from mlm_core.training.data import PackedData, pack, prepare_data, split_texts, training_texts
from mlm_core.training.scratch import SCRATCH_MODELS, build_model
from mlm_core.training.store import FINAL_STATES, STATES, RunRecord, RunStore
from mlm_core.training.trainer import Trainer, TrainingCallbacks, apply_freezing, pruning_masks

__all__ = [
    "CHECKPOINT_EVALS",
    "EVALUATIONS_PER_RUN",
    "FINAL_STATES",
    "SCRATCH_MODELS",
    "STATES",
    "PackedData",
    "RunRecord",
    "RunStore",
    "TrainConfig",
    "Trainer",
    "TrainingCallbacks",
    "apply_freezing",
    "build_model",
    "pack",
    "prepare_data",
    "pruning_masks",
    "rate_schedule",
    "split_texts",
    "training_texts",
]
