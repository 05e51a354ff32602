"""The settings of a training run, each declared once: ``TrainConfig`` and the evaluation cadence.

Every tunable field carries ``mlm_core.settings.param`` metadata (help, limits, choices), so one
declaration drives the validation here, the ``train`` command's flags, the Fine-tune page's widgets
and link fields, and the limits quoted in messages. ``TrainConfig.spec("lr")`` reads one back.

``SCRATCH_MODELS`` names the models trained from random weights (``TrainConfig.model``), with their
default sizes (``SCRATCH_SIZES``; the ``scratch_*`` settings change them) and the optimizer settings a
model from scratch needs (``OPTIMIZER_DEFAULTS``: a pre-trained model is fine-tuned gently, one from
random weights needs a learning rate about 20 times higher to learn in a short run). ``lr`` and
``warmup_ratio`` left at None take their kind's default, and are stored resolved.

``TrainConfig.cadence`` is the one rule for how often a run is evaluated and checkpointed when
the user leaves it to us: about ``EVALUATIONS_PER_RUN`` evaluations, a checkpoint every
``CHECKPOINT_EVALS.default`` of them. ``rate_schedule`` is the masking rate over a run of a config.

Example::

    TrainConfig(steps=400).eval_every       # 20: about 20 evaluations per run
    TrainConfig.cadence(400, eval_every=50)  # {"eval_every": 50, "checkpoint_every": 250}
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

from mlm_core.errors import InputError
from mlm_core.masking import DrawPolicy, RateSchedule, base_rate, strategy_from_params
from mlm_core.masking.draws import check_static
from mlm_core.masking.parameters import MAX_PARAM_SPARSITY, PARAM_MASK_KINDS
from mlm_core.settings import ParamSpec, Validated, param, param_specs
from mlm_core.text.corpus import TEXT_UNITS
from mlm_core.training.tracking import TRACKERS

EVALUATIONS_PER_RUN = 20  # the automatic cadence: enough points for a curve, little time spent on them
STEPS_ASSUMED_FOR_EPOCHS = 1000  # a run counted in epochs has no step count before its corpus is packed
DEFAULT_EPOCHS = 1.0  # what a run starts at when its length is switched from steps to epochs
# Resume takes the newest checkpoint whose manifest verifies: one is all it needs. While the next one is
# written the previous one stays (checkpoints.retain), so a run briefly holds two on disk.
CHECKPOINTS_RESUME_NEEDS = 1
# The largest seed a run accepts: torch.manual_seed takes 64 bits, and the data order seeds a generator with
# seed * 1_000_003 + epoch (trainer.Trainer.rows_for), which must fit them too; 32 bits leave room.
MAX_SEED = 2**32 - 1
CHECKPOINT_EVALS = ParamSpec(
    "checkpoint_evals", "int", 5,
    "Checkpoint every N evaluations (a checkpoint is what an interrupted run resumes from).", 1, 1000,
)


# Models trained from random weights, by the name TrainConfig.model takes, and the sizes each gets where its
# scratch_* setting is None (embedding None: as wide as hidden; a Transformer's embeddings are always as wide
# as its layers, and a recurrent model has no heads). Their tokenizer is the default model's.
SCRATCH_SIZES = {
    "scratch-transformer": {"hidden": 128, "layers": 2, "heads": 4},
    "scratch-lstm": {"hidden": 256, "layers": 2, "embedding": None},
    "scratch-gru": {"hidden": 256, "layers": 2, "embedding": None},
}
RECURRENT_SCRATCH_MODELS = {"scratch-lstm": "lstm", "scratch-gru": "gru"}  # model name → recurrent cell
_SCRATCH_KINDS = {"scratch-transformer": "a small Transformer (ModernBERT)", "scratch-lstm": "a bidirectional LSTM, no attention",
                  "scratch-gru": "a bidirectional GRU, no attention"}
SCRATCH_MODELS = {  # name → what it is, as the model pickers, ``train --help`` and the README list them
    name: f"{kind}, from random weights; {SCRATCH_SIZES[name]['layers']} layers × {SCRATCH_SIZES[name]['hidden']} "
          "wide by default"
    for name, kind in _SCRATCH_KINDS.items()
}
# Peak learning rate and warm-up share by kind of model, where lr / warmup_ratio are None. Measured on the
# demo corpus (README, "Command line"): from random weights 5e-5 stays near the unigram baseline, 1e-3 learns
# within the default 200 steps (each scratch model), 3e-3 sent a scratch BERT back to the baseline. The longer
# warm-up eases the larger first steps from random weights (not tuned separately).
OPTIMIZER_DEFAULTS = {
    "pretrained": {"lr": 5e-5, "warmup_ratio": 0.06},
    "scratch": {"lr": 1e-3, "warmup_ratio": 0.1},
}


def is_scratch(model: str | None) -> bool:
    """Whether ``model`` (TrainConfig.model) is one of ``SCRATCH_MODELS``."""
    return isinstance(model, str) and model in SCRATCH_MODELS


def _by_kind(name: str) -> str:
    """How a setting's default depends on the kind of model, as its help says it."""
    pretrained, scratch = OPTIMIZER_DEFAULTS["pretrained"][name], OPTIMIZER_DEFAULTS["scratch"][name]
    return f"default: {pretrained:g} for a pre-trained model, {scratch:g} for one trained from scratch"


def _scratch_default(size: str) -> str:
    """The default of the scratch_``size`` setting per scratch model, as its help says it."""
    shown = [f"{sizes[size]} ({name.removeprefix('scratch-')})" for name, sizes in SCRATCH_SIZES.items() if size in sizes]
    return "default: " + ", ".join(shown)


def _choices(cls: type, name: str) -> tuple[str, ...]:
    """The choices of setting ``name`` of ``cls``, where the masking engine declares them."""
    return next(spec.choices for spec in param_specs(cls) if spec.name == name)


@dataclass
class TrainConfig(Validated):
    """Everything a run needs; stored as the run's config.json. Defaults suit a CPU demo.

    ``steps`` wins when both ``steps`` and ``epochs`` are set. ``eval_every`` and
    ``checkpoint_every`` left at None follow ``cadence`` (and are stored resolved).
    """

    label: ClassVar[str] = "Training settings"

    corpus_name: str = "corpus.txt"  # display name; its suffix picks the format
    corpus_column: str | None = None  # the text column of a CSV/TSV/JSONL corpus
    text_unit: str = field(default="line", metadata=param(
        "txt corpora: one text per line or per paragraph.", choices=TEXT_UNITS))
    model: str | None = None  # hub id, folder, None (default model) or one of SCRATCH_MODELS
    strategy: str = "random"
    strategy_params: dict = field(default_factory=dict)
    masking: str = field(default="dynamic", metadata=param(
        "static: one mask per block, drawn once and reused every epoch, so a static run refuses a rate "
        "schedule that changes the rate and adaptive masking (both would change the mask); dynamic: a fresh "
        "mask each epoch.", choices=_choices(DrawPolicy, "mode")))
    rate_schedule: str = field(default="constant", metadata=param(
        "How the masking rate moves from rate_start to rate_end over the run.",
        choices=_choices(RateSchedule, "kind")))
    rate_start: float | None = field(default=None, metadata=param(
        "Masking rate at the start of the run (default: the strategy's own rate).", min=0.01, max=1.0))
    rate_end: float | None = field(default=None, metadata=param(
        "Masking rate at the end of the run (default: rate_start).", min=0.01, max=1.0))
    steps: int | None = field(default=200, metadata=param(
        "Length of the run in optimizer steps (or give epochs).", min=1, max=1_000_000))
    epochs: float | None = field(default=None, metadata=param(
        "Length of the run in passes over the corpus (used when steps is None).", min=0.1, max=1000))
    batch_size: int = field(default=16, metadata=param("Blocks per optimizer step.", min=1, max=4096))
    seq_len: int = field(default=128, metadata=param(
        "Block length in tokens, special tokens included.", min=8, max=4096))
    lr: float | None = field(default=None, metadata=param(  # above 0.5 AdamW only diverges
        f"Peak learning rate (warm-up, then linear decay to 0; {_by_kind('lr')}).", min=1e-7, max=0.5))
    warmup_ratio: float | None = field(default=None, metadata=param(
        f"Share of the steps spent warming the learning rate up ({_by_kind('warmup_ratio')}).", min=0.0, max=0.99))
    weight_decay: float = field(default=0.01, metadata=param("AdamW weight decay.", min=0.0, max=1.0))
    grad_clip: float = field(default=1.0, metadata=param("Gradient norm clipping (0: off).", min=0.0))
    freeze: list[str] = field(default_factory=list)  # "embeddings", "layer.N", "all-but-head"
    prune_sparsity: float = field(default=0.0, metadata=param(
        "Share of encoder weights masked to zero before training and kept at zero (parameter masking W⊙M; "
        "which ones: prune_mask).", min=0.0, max=MAX_PARAM_SPARSITY))
    prune_mask: str = field(default="magnitude", metadata=param(
        "Which weights prune_sparsity masks: magnitude, the smallest over all encoder matrices together; "
        "random, the same share of each matrix drawn at random (from the seed).", choices=PARAM_MASK_KINDS))
    heldout_fraction: float = field(default=0.05, metadata=param(
        "Share of the texts held out for evaluation.", min=0.001, max=0.5))
    eval_every: int | None = field(default=None, metadata=param(
        f"Evaluate every N steps (default: about {EVALUATIONS_PER_RUN} evaluations per run).",
        min=1, max=1_000_000))
    eval_blocks: int = field(default=64, metadata=param(  # bounds the cost of one evaluation
        "Held-out blocks per evaluation.", min=1, max=1_000_000))
    checkpoint_every: int | None = field(default=None, metadata=param(
        f"Checkpoint every N steps (default: every {CHECKPOINT_EVALS.default} evaluations).",
        min=1, max=1_000_000))
    keep_checkpoints: int = field(default=CHECKPOINTS_RESUME_NEEDS, metadata=param(
        "Newest verified checkpoints kept while the run goes (resume needs only the newest; an older one "
        "is deleted only once a newer one verifies). A finished run keeps none: its model is the result.",
        min=1, max=1_000_000))
    seed: int = field(default=0, metadata=param("Seed of the data order, the masks and the dropout.", min=0,
                                                max=MAX_SEED))
    scratch_hidden: int | None = field(default=None, metadata=param(
        f"Models trained from scratch: width of each layer ({_scratch_default('hidden')}).", min=8, max=4096))
    scratch_layers: int | None = field(default=None, metadata=param(
        f"Models trained from scratch: number of layers ({_scratch_default('layers')}).", min=1, max=48))
    scratch_heads: int | None = field(default=None, metadata=param(
        f"scratch-transformer: attention heads, dividing the width ({_scratch_default('heads')}).", min=1, max=64))
    scratch_embedding: int | None = field(default=None, metadata=param(
        "scratch-lstm and scratch-gru: width of the token embeddings (default: scratch_hidden).",
        min=8, max=4096))
    device: str | None = None  # None: GPU when present
    log_with: tuple[str, ...] = field(default=(), metadata=param(
        "Experiment trackers that log each evaluation, inside the run folder and offline "
        "(tensorboard: <run>/tensorboard, mlflow: <run>/mlruns, wandb: offline in <run>/wandb).",
        choices=TRACKERS))

    def _check(self) -> None:
        if self.steps is None and self.epochs is None:
            raise InputError(f"{self.label}: give steps or epochs.")
        derived = self.cadence(self.steps, self.eval_every)
        if self.eval_every is None:
            self.eval_every = derived["eval_every"]
        if self.checkpoint_every is None:
            self.checkpoint_every = derived["checkpoint_every"]
        self._resolve_model_settings()
        strategy = strategy_from_params(self.strategy, self.strategy_params)  # validates (raises InputError)
        check_static(self.masking, strategy, rate_schedule(strategy, self, 1))  # static must stay static

    def _resolve_model_settings(self) -> None:
        """Fill lr, warm-up and a scratch model's sizes from their kind's defaults; refuse sizes that do not fit."""
        kind = "scratch" if is_scratch(self.model) else "pretrained"
        for name, value in OPTIMIZER_DEFAULTS[kind].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        given = {size: getattr(self, f"scratch_{size}") for size in ("hidden", "layers", "heads", "embedding")}
        if kind == "pretrained":
            if any(value is not None for value in given.values()):
                raise InputError(f"{self.label}: the scratch_* sizes apply to models trained from scratch "
                                 f"({', '.join(SCRATCH_MODELS)}); a pre-trained model keeps its own sizes.")
            return
        defaults = SCRATCH_SIZES[self.model]
        for size, value in given.items():
            if value is not None and size not in defaults:
                other = "scratch-transformer" if size == "heads" else "scratch-lstm and scratch-gru"
                raise InputError(f"{self.label}: scratch_{size} applies to {other} only, not {self.model}.")
            if value is None and size in defaults:  # stored resolved: the run's config says what was built
                setattr(self, f"scratch_{size}", defaults[size] or self.scratch_hidden)
        if self.scratch_heads is not None and self.scratch_hidden % self.scratch_heads:
            raise InputError(f"{self.label}: scratch_hidden ({self.scratch_hidden}) must be divisible by "
                             f"scratch_heads ({self.scratch_heads}): each head takes an equal share of the width.")
        if self.model in RECURRENT_SCRATCH_MODELS and self.scratch_hidden % 2:
            raise InputError(f"{self.label}: scratch_hidden ({self.scratch_hidden}) must be even for {self.model}: "
                             "its two directions take half the width each.")

    @classmethod
    def cadence(cls, steps: int | None, eval_every: int | None = None,
                checkpoint_evals: int | None = None) -> dict[str, int]:
        """``eval_every`` and ``checkpoint_every`` of a run of ``steps`` steps (None: counted in epochs).

        ``eval_every`` None: about ``EVALUATIONS_PER_RUN`` evaluations; a checkpoint every
        ``checkpoint_evals`` evaluations (default ``CHECKPOINT_EVALS.default``).
        """
        if eval_every is None:
            eval_every = max(1, (steps or STEPS_ASSUMED_FOR_EPOCHS) // EVALUATIONS_PER_RUN)
        evals = CHECKPOINT_EVALS.parse(CHECKPOINT_EVALS.default if checkpoint_evals is None else checkpoint_evals)
        most = cls.spec("checkpoint_every").max  # past the last step a checkpoint is never due anyway
        return {"eval_every": eval_every, "checkpoint_every": int(min(eval_every * evals, most))}

    def total_steps(self, train_blocks: int) -> int:
        """Optimizer steps of this run over ``train_blocks`` training blocks: ``steps``, else ``epochs`` passes."""
        if self.steps is not None:
            return self.steps
        batch = max(1, min(self.batch_size, train_blocks))  # a small corpus: one batch of all its blocks
        return max(1, math.ceil(self.epochs * max(1, train_blocks // batch)))

    @classmethod
    def spec(cls, name: str) -> ParamSpec:
        """The declaration of setting ``name`` (help, default, limits)."""
        return next(spec for spec in param_specs(cls) if spec.name == name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def rate_schedule(strategy, config: TrainConfig, total_steps: int) -> RateSchedule:
    """The masking rate over the run: config's start/end, else the strategy's own rate throughout."""
    base = base_rate(strategy)
    base = 0.15 if base is None else base  # a strategy without a rate (rules only) still needs one
    start = config.rate_start if config.rate_start is not None else base
    end = config.rate_end if config.rate_end is not None else start
    return RateSchedule(config.rate_schedule, start, end, max(1, total_steps))

