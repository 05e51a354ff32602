"""Planning a fine-tuning run before it starts: which models can be fine-tuned, a preview of
the first training examples exactly as the trainer will corrupt them, the device, and an
estimate of the time.

The preview goes through the trainer's own functions (``split_texts`` → ``pack`` →
``mask_examples`` with the run's ``DrawPolicy`` and rate at step 0), so what the page shows
is block for block what the job does in its first epoch (and in every epoch when static).

Example::

    tokenizer = load_tokenizer(None)
    examples = preview_examples(tokenizer, corpus.texts, TrainConfig(seq_len=64))
    examples[0].kinds  # per position: "masked" / "random" / "kept" / "excluded" / None
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mlm_core.errors import InputError, ModelLoadError
from mlm_core.masking import (
    KIND_BY_CODE,
    DrawPolicy,
    Vocab,
    base_rate,
    compose,
    is_adaptive,
    mask_examples,
    needs_word_texts,
    params_of,
    strategy_from_params,
    strategy_steps,
    with_rate,
)
from mlm_core.model.default_model import DEFAULT_MODEL_NAME, base_encoder_dir
from mlm_core.model.families import usable_positions
from mlm_core.text.privacy import PrivacyMasking
from mlm_core.text.tokens import tokenizer_lock
from mlm_core.training.config import TrainConfig, rate_schedule
from mlm_core.training.data import pack, split_texts, training_texts
from mlm_core.training.scratch import SCRATCH_MODELS
from mlm_core.training.store import FINISHED, RunRecord, RunStore

PREVIEW_EXAMPLES = 3
# Rough throughput (the trainer's tokens/s) when no finished run on this device and model has
# measured it: a 6-layer, 384-wide BERT (the default model) on a 2-core CPU / one GPU. Other
# Transformers are scaled by their compute per token (see ``_cost_per_token``).
REFERENCE_TOKENS_PER_S = {"cpu": 1_500, "cuda": 60_000}
LSTM_TOKENS_PER_S = {"cpu": 6_000, "cuda": 150_000}
REFERENCE_SHAPE = (6, 384, 1536, 30522)  # layers, hidden, intermediate, vocabulary of the default model
SPEEDUP_RANGE = (0.02, 10.0)  # small models are bound by per-step overhead, not by arithmetic
STARTUP_S = 15.0  # process start, model load, tokenizing the corpus
SAMPLE_TEXTS = 200  # texts tokenized to estimate the corpus's token count


# ----------------------------------------------------------------------------- models


def is_lstm_folder(folder: Path) -> bool:
    """A scratch-LSTM run's model folder: not a Hugging Face model (no explorer, no probes)."""
    return (Path(folder) / "lstm_config.json").is_file()


def run_model_folder(store: RunStore, record: RunRecord) -> Path | None:
    """The finished model of ``record`` (``<run>/model``), or None when it has none."""
    folder = store.folder(record.id) / "model"
    return folder if record.status == FINISHED and folder.is_dir() else None


@dataclass(frozen=True)
class ModelOption:
    label: str
    model: str | None  # TrainConfig.model: None = the default model
    kind: str  # default | scratch | run


def model_options(store: RunStore) -> list[ModelOption]:
    """The default model, the two scratch models and every finished run's Transformer model."""
    options = [
        ModelOption(f"{DEFAULT_MODEL_NAME} (default, offline)", None, "default"),
        ModelOption("scratch-transformer (a tiny BERT from random weights)", "scratch-transformer", "scratch"),
        ModelOption("scratch-lstm (a bidirectional LSTM from random weights)", "scratch-lstm", "scratch"),
    ]
    for record in store.list():
        folder = run_model_folder(store, record)
        if folder is not None and not is_lstm_folder(folder):  # an LSTM is not a loadable base model
            config = record.config
            options.append(ModelOption(
                f"run {record.id} ({model_name(config.get('model'))}, {config.get('strategy')}/"
                f"{config.get('masking')}, {record.step} steps)", str(folder), "run"))
    return options


def model_name(model: str | None) -> str:
    """What to call ``TrainConfig.model`` in tables: the default model's name when None."""
    if model is None:
        return DEFAULT_MODEL_NAME
    path = Path(model)
    if path.name == "model" and path.parent.parent.name == "runs":
        return f"run {path.parent.name}"
    return str(model)


def _tokenizer_source(model: str | None) -> tuple[str, bool]:
    """(where to load the tokenizer from, local files only) — checked like the model loader does."""
    from mlm_core.model.loading import check_local_folder, hub_reachable

    if model is None or model == DEFAULT_MODEL_NAME or model in SCRATCH_MODELS:
        return str(base_encoder_dir()), True
    folder = Path(model).expanduser()
    if folder.exists() or model.startswith((".", "/", "~")):
        if is_lstm_folder(folder):
            raise ModelLoadError(f"'{model}' is an LSTM run's model: it cannot be fine-tuned further here. "
                                 "Choose scratch-lstm to train a new LSTM.")
        check_local_folder(folder)  # refuses pickle-only folders and remote code before any loading
        return str(folder), True
    import os

    return model, os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()


@functools.lru_cache(maxsize=8)
def load_tokenizer(model: str | None):
    """The tokenizer a run on ``model`` will use (shared, read-only; lock it around calls)."""
    from transformers import AutoConfig, AutoTokenizer

    source, local_only = _tokenizer_source(model)
    try:
        if model not in (None, DEFAULT_MODEL_NAME, *SCRATCH_MODELS):
            from mlm_core.model.loading import check_config

            check_config(AutoConfig.from_pretrained(source, local_files_only=local_only).to_dict(), model)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ModelLoadError):
            raise
        hint = "it is not cached and the hub cannot be reached" if local_only else str(exc).splitlines()[0]
        raise ModelLoadError(f"Cannot load the tokenizer of '{model}': {hint}.") from exc
    if tokenizer.mask_token is None:
        raise ModelLoadError(f"'{model}' has no mask token: it is not a masked language model.")
    return tokenizer


def model_limits(model: str | None) -> tuple[int | None, int]:
    """(encoder layers or None when unknown, longest block in tokens) of ``model``."""
    if model == "scratch-transformer":
        return 2, 512
    if model == "scratch-lstm":
        return None, 512
    source, _ = _tokenizer_source(model)
    config = Path(source) / "config.json"
    if not config.is_file():
        return None, 512
    data = json.loads(config.read_text())
    positions = usable_positions(data.get("model_type", ""), data.get("max_position_embeddings") or 512)
    return data.get("num_hidden_layers") or data.get("n_layers"), max(8, min(positions, 4096))


# ----------------------------------------------------------------------------- masking


def training_strategy(strategy) -> tuple[str, dict, list[str]]:
    """(registry name, params, notices) of the explorer's composed strategy, as the trainer takes it.

    Privacy replacement stays in: the trainer applies it to the corpus before packing.
    """
    if strategy is None:
        raise InputError("Choose a masking strategy: training needs one to choose the positions to predict.")
    steps = strategy_steps(strategy)
    notices = []
    if all(isinstance(s, PrivacyMasking) for s in steps):
        raise InputError("Privacy replacement alone chooses no positions: choose a masking strategy.")
    if any(isinstance(s, PrivacyMasking) for s in steps):
        notices.append("Personal data (e-mails, URLs, phone numbers, numbers) is replaced in the corpus "
                       "before training.")
    strategy = compose(*steps)
    return strategy.name, params_of(strategy), notices


def strategy_rate(name: str, params: dict) -> float | None:
    """The masking rate (mlm_probability) of the strategy or of its first step that has one."""
    return base_rate(strategy_from_params(name, params))


# ----------------------------------------------------------------------------- preview


@dataclass(frozen=True)
class PreviewExample:
    """One training block as the model reads it at step 0 (T = the block length)."""

    block: int  # index among the training blocks
    tokens: tuple[str, ...]  # (T,) after corruption
    originals: tuple[str, ...]  # (T,) before
    kinds: tuple[str | None, ...]  # (T,) masked / random / kept / excluded / None
    special: tuple[bool, ...]  # (T,)
    rate: float  # the masking rate at step 0

    @property
    def chosen(self) -> int:
        return sum(kind in ("masked", "random", "kept") for kind in self.kinds)


def _first_blocks(tokenizer, texts, config: TrainConfig, strategy, wanted: int):
    """The first ``wanted`` training blocks, packing only as much of the corpus as they need."""
    size = 256
    while True:
        prefix = training_texts(tuple(texts[:size]), strategy, tokenizer)
        train, _ = split_texts(prefix, config.heldout_fraction)
        with tokenizer_lock(tokenizer):
            data = pack(train, tokenizer, config.seq_len, needs_word_texts(strategy))
        if len(data) > wanted or size >= len(texts):  # one more than shown: the last is never padded
            return data
        size *= 4


def preview_examples(tokenizer, texts, config: TrainConfig, n: int = PREVIEW_EXAMPLES) -> list[PreviewExample]:
    """The first ``n`` training blocks corrupted as the trainer corrupts them in epoch 0."""
    strategy = strategy_from_params(config.strategy, config.strategy_params)
    data = _first_blocks(tokenizer, texts, config, strategy, n)
    vocab = Vocab.from_tokenizer(tokenizer)
    rate = rate_schedule(strategy, config, config.steps or 1).rate(0)  # as the Trainer at step 0
    rows = list(range(min(n, len(data))))
    batch = data.batch(rows, vocab)
    if is_adaptive(strategy):  # the trainer's running token losses start at 1.0: uniform scores
        batch = dataclasses.replace(batch, scores=torch.ones(batch.shape))
    masked = mask_examples(batch, with_rate(strategy, rate), vocab, rows, 0, DrawPolicy(config.masking, config.seed))
    examples = []
    with tokenizer_lock(tokenizer):
        shown = [tokenizer.convert_ids_to_tokens(masked.input_ids[b].tolist()) for b in range(len(rows))]
        originals = [tokenizer.convert_ids_to_tokens(masked.original_ids[b].tolist()) for b in range(len(rows))]
    for b, row in enumerate(rows):
        examples.append(PreviewExample(
            block=row,
            tokens=tuple(shown[b]),
            originals=tuple(originals[b]),
            kinds=tuple(KIND_BY_CODE[int(c)] for c in masked.kind_codes[b]),
            special=tuple(bool(s) for s in batch.special[b]),
            rate=rate,
        ))
    return examples


# ----------------------------------------------------------------------------- device and time


def device_summary(preferred: str | None = None) -> tuple[str, str]:
    """(device type "cuda"/"cpu", readable name) of what a job on this machine trains on."""
    from mlm_core.model.loading import device_label, pick_device

    device = pick_device(preferred)
    return device.type, device_label(device)


def estimate_train_blocks(tokenizer, texts, seq_len: int, heldout_fraction: float) -> int:
    """Training blocks of the whole corpus, from the tokens per character of a sample."""
    sample = list(texts[:SAMPLE_TEXTS])
    if not sample:
        return 0
    with tokenizer_lock(tokenizer):
        counts = tokenizer(sample, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    per_char = sum(len(c) + 1 for c in counts) / max(1, sum(len(t) for t in sample))  # +1: separators
    tokens = per_char * sum(len(t) for t in texts) * (1 - heldout_fraction)
    return max(1, int(tokens // (seq_len - 2)))


@dataclass(frozen=True)
class Estimate:
    seconds: float
    steps: int
    tokens_per_s: float
    basis: str  # where the throughput comes from, said in the UI
    measured: bool


def measured_speed(store: RunStore, model: str | None, device_type: str) -> tuple[float, RunRecord] | None:
    """Median tokens/s of the latest finished run on the same model and device type, if any."""
    for record in store.list():  # newest first
        if record.status != FINISHED or record.config.get("model") != model:
            continue
        if (record.device or "").split(":")[0] != device_type:
            continue
        speeds = sorted(m["tokens_per_s"] for m in store.metrics(record.id) if m.get("tokens_per_s"))
        if speeds:
            return speeds[len(speeds) // 2], record
    return None


def _cost_per_token(shape: tuple[int, int, int, int]) -> float:
    """Multiply-adds per token of a BERT-like encoder, plus the vocabulary head at the 15% masked."""
    layers, hidden, intermediate, vocab = shape
    return layers * (4 * hidden * hidden + 2 * hidden * intermediate) + 0.15 * hidden * vocab


def _model_shape(model: str | None) -> tuple[int, int, int, int] | None:
    if model is None or model == DEFAULT_MODEL_NAME:
        return REFERENCE_SHAPE
    if model == "scratch-transformer":  # as training.build_model makes it
        return 2, 128, 512, REFERENCE_SHAPE[3]
    config = Path(model).expanduser() / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    try:
        return (int(data["num_hidden_layers"]), int(data["hidden_size"]),
                int(data.get("intermediate_size") or 4 * data["hidden_size"]), int(data["vocab_size"]))
    except (KeyError, TypeError, ValueError):
        return None


def default_speed(model: str | None, device_type: str) -> tuple[float, str]:
    """(rough tokens/s, how it was made) for ``model`` on ``device_type`` with nothing measured."""
    device = "cuda" if device_type == "cuda" else "cpu"
    if model == "scratch-lstm":
        return LSTM_TOKENS_PER_S[device], "a rough default speed for the scratch LSTM"
    shape = _model_shape(model)
    reference = REFERENCE_TOKENS_PER_S[device]
    if shape is None:
        return reference, "a rough default speed for a model the size of the default model"
    low, high = SPEEDUP_RANGE
    factor = min(high, max(low, _cost_per_token(REFERENCE_SHAPE) / _cost_per_token(shape)))
    return reference * factor, "a rough default speed, scaled to the size of this model"


def estimate_time(store: RunStore, config: TrainConfig, device_type: str, train_blocks: int) -> Estimate:
    """Seconds a run of ``config`` should take: training tokens / speed, plus evaluations and start-up.

    The speed is the one the latest finished run on the same model and device measured, else
    a rough default (``default_speed``); ``Estimate.basis`` says which.
    """
    batch = max(1, min(config.batch_size, train_blocks or config.batch_size))
    steps = config.total_steps(max(1, train_blocks))  # the trainer's count, over the estimated blocks
    measured = measured_speed(store, config.model, device_type)
    if measured:
        speed, record = measured
        basis = f"the speed run {record.id} measured on this device and model ({speed:,.0f} tokens/s)"
    else:
        speed, how = default_speed(config.model, device_type)
        basis = f"{how}, {speed:,.0f} tokens/s (no finished run on this device and model has measured one yet)"
    train_tokens = steps * batch * config.seq_len
    evaluations = steps // max(1, config.eval_every) + 1
    eval_tokens = evaluations * min(config.eval_blocks, max(1, train_blocks // 10)) * config.seq_len
    seconds = STARTUP_S + train_tokens / speed + eval_tokens / (3 * speed)  # a forward pass ≈ 1/3 of a step
    return Estimate(seconds, steps, speed, basis, measured is not None)
