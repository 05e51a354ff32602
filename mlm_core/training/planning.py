"""Planning a fine-tuning run before it starts: which models can be fine-tuned, a preview of
the first training examples exactly as the trainer will corrupt them, and the device (its time
and disk use: ``costs``).

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mlm_core.errors import InputError, ModelLoadError, RunError
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
from mlm_core.masking.language import text_language
from mlm_core.model.default_model import DEFAULT_MODEL_NAME, base_encoder_dir
from mlm_core.model.families import usable_positions
from mlm_core.settings import shown_value
from mlm_core.text.privacy import PrivacyMasking
from mlm_core.text.tokens import tokenizer_lock
from mlm_core.training.config import TrainConfig, rate_schedule
from mlm_core.training.data import pack, split_texts, training_texts
from mlm_core.training.scratch import SCRATCH_MODELS
from mlm_core.training.store import FINISHED, RunRecord, RunStore, run_ref, run_ref_id

PREVIEW_EXAMPLES = 3
HIDDEN_MODEL = "a model not offered on this server"  # a run's base that browsers may not load, named for them (model_name)


# ----------------------------------------------------------------------------- models


def is_lstm_folder(folder: Path) -> bool:
    """An LSTM model folder an earlier MaskLab saved (lstm.safetensors + lstm_config.json) that could not be
    converted (``run_model_folder``): not a model folder (no explorer, no probes)."""
    return (Path(folder) / "lstm_config.json").is_file() and not (Path(folder) / "config.json").is_file()


def run_model_folder(store: RunStore, record: RunRecord) -> Path | None:
    """The finished model of ``record`` (``<run>/model``), or None when it has none.

    An LSTM an earlier MaskLab saved as lstm.safetensors is converted here, once, into a normal model
    folder (``model.recurrent.convert_legacy_lstm``: config.json and model.safetensors added, its own files
    kept); one that cannot be converted stays as it is (``is_lstm_folder``).
    """
    folder = store.folder(record.id) / "model"
    if record.status != FINISHED or not folder.is_dir():
        return None
    if is_lstm_folder(folder):
        _convert_legacy_lstm(folder)
    return folder


def _convert_legacy_lstm(folder: Path) -> None:
    """Add config.json and model.safetensors to a legacy LSTM folder; config.json last, by rename, so a
    reader meanwhile sees the legacy folder or the whole converted one. Failure leaves the folder as it was."""
    import shutil
    import tempfile

    from safetensors import SafetensorError

    from mlm_core.model.loading import serialized_loading

    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    try:
        with serialized_loading():  # transformers' imports and model building: one at a time
            from mlm_core.model.recurrent import convert_legacy_lstm

            convert_legacy_lstm(folder, work)
        (work / "model.safetensors").replace(folder / "model.safetensors")
        (work / "config.json").replace(folder / "config.json")
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        return
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class ModelOption:
    label: str
    model: str | None  # TrainConfig.model: None = the default model; a run's model as ``run:ID``
    kind: str  # default | scratch | run


def resolve_run_model(model: str, store: RunStore | None = None) -> Path:
    """The model folder of a finished run named ``run:ID`` (in ``store``, by default the app's).

    Only a run id goes through here, never a path: the folder is the store's own ``<ID>/model``.
    Raises ModelLoadError (unknown or unfinished run, an LSTM) with a message that names no folder.
    """
    run_id = run_ref_id(model)
    if run_id is None:
        raise ModelLoadError(f"{shown_value(model, 60)} is not a run reference (run:ID).")
    if store is None:
        from mlm_core.training.jobs import default_store

        store = default_store()
    try:
        record = store.get(run_id)
    except RunError as exc:
        raise ModelLoadError(f"There is no run {shown_value(run_id, 40)} (deleted?); `python -m mlm_core runs list` shows "
                             "the runs.") from exc
    folder = run_model_folder(store, record)
    if folder is None:
        raise ModelLoadError(f"Run {run_id} is {record.status}: its model exists once the run has finished.")
    if is_lstm_folder(folder):
        raise ModelLoadError(f"Run {run_id} holds an LSTM saved by an earlier MaskLab that cannot be converted to a "
                             "model folder (its files are incomplete or damaged): train a new one with scratch-lstm.")
    return folder


def run_ref_of_folder(model: str | None, store: RunStore) -> str | None:
    """``run:ID`` for a run's model folder in ``store`` (how links named runs before references), else None."""
    if not model or run_ref_id(model) is not None:
        return None
    try:
        folder = Path(model).expanduser().resolve()
        inside = folder.name == "model" and folder.parent.parent == store.root.resolve()
        return run_ref(folder.parent.name) if inside and store.get(folder.parent.name) else None
    except (OSError, RunError):
        return None


def model_options(store: RunStore) -> list[ModelOption]:
    """The default model, the scratch models and every finished run's Transformer model (by ``run:ID``)."""
    from mlm_core.training.run_table import run_label  # run_table reads this module's model_name

    options = [ModelOption(f"{DEFAULT_MODEL_NAME} (default, offline)", None, "default")]
    options += [ModelOption(f"{name} ({about})", name, "scratch") for name, about in SCRATCH_MODELS.items()]
    for record in store.list():
        folder = run_model_folder(store, record)
        if folder is not None and not is_lstm_folder(folder):  # an LSTM is not a loadable base model
            options.append(ModelOption(f"run: {run_label(record, status=False)}", run_ref(record.id), "run"))
    return options


def model_name(model: str | None, reveal: Callable[[str], bool] | None = None) -> str:
    """What to call ``TrainConfig.model`` in tables: the default model's name when None.

    ``reveal(name)`` says whether a model named by folder or hub id may be shown by that name; the
    others read ``HIDDEN_MODEL``. Browsers pass the rule of loading (``sources.browser_may_load``): a
    run the command line started from a private folder must not show that folder's path. Runs (by
    id), the default and the scratch models always show. Without ``reveal`` (the command line, the
    local user's own tool) every name shows.

    Example: ``model_name("/home/teacher/private-model", reveal=lambda name: False)`` is HIDDEN_MODEL.
    """
    if model is None:
        return DEFAULT_MODEL_NAME
    if not isinstance(model, str):  # a damaged config: nothing to reveal
        return HIDDEN_MODEL if reveal is not None else str(model)
    if run_ref_id(model) is not None:
        return f"run {run_ref_id(model)}"
    path = Path(model)
    if path.name == "model" and path.parent.parent.name == "runs":  # runs started before run:ID references
        return f"run {path.parent.name}"
    if reveal is None or model == DEFAULT_MODEL_NAME or model in SCRATCH_MODELS or reveal(model):
        return model
    return HIDDEN_MODEL


def _tokenizer_source(model: str | None) -> tuple[str, bool]:
    """(where to load the tokenizer from, local files only) — checked like the model loader does."""
    from mlm_core.model.checks import check_local_folder
    from mlm_core.model.loading import hub_reachable

    if model is None or model == DEFAULT_MODEL_NAME or model in SCRATCH_MODELS:
        return str(base_encoder_dir()), True
    if run_ref_id(model) is not None:
        return str(resolve_run_model(model)), True
    folder = Path(model).expanduser()
    if folder.exists() or model.startswith((".", "/", "~")):
        if is_lstm_folder(folder):
            raise ModelLoadError(f"'{model}' is an LSTM saved by an earlier MaskLab (lstm.safetensors), not a model "
                                 "folder; open it as its run (run:ID) to convert it, or train a new one with scratch-lstm.")
        check_local_folder(folder)  # refuses pickle-only folders and remote code before any loading
        return str(folder), True
    import os

    return model, os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()


@functools.lru_cache(maxsize=8)
def load_tokenizer(model: str | None):
    """The tokenizer a run on ``model`` will use (shared, read-only; lock it around calls)."""
    from mlm_core.model.loading import serialized_loading

    with serialized_loading():  # transformers' lazy module, imported from two sessions at once, can fail
        from transformers import AutoConfig, AutoTokenizer

    source, local_only = _tokenizer_source(model)
    try:
        if model not in (None, DEFAULT_MODEL_NAME, *SCRATCH_MODELS):
            from mlm_core.model.checks import check_config

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
    if model in SCRATCH_MODELS:  # layer.N freezing names BERT's layers; a scratch model's are layers.N
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
            data = pack(train, tokenizer, config.seq_len, needs_word_texts(strategy), text_language(strategy))
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


# ----------------------------------------------------------------------------- device


def device_summary(preferred: str | None = None) -> tuple[str, str]:
    """(device type "cuda"/"cpu", readable name) of what a job on this machine trains on."""
    from mlm_core.model.loading import device_label, pick_device

    device = pick_device(preferred)
    return device.type, device_label(device)
