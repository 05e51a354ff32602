"""What a model must pass to be loaded: its folder before anything is read beyond config.json and the
safetensors headers (``check_local_folder``, ``check_config``), and the built model and tokenizer after
(``check_tokenizer_has_words``, ``check_tokenizer_fits``, ``check_head``). Every refusal is a
ModelLoadError whose message says what to do; the loading itself is mlm_core.model.loading's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mlm_core.errors import ModelLoadError
from mlm_core.model.families import SUPPORTED_MODEL_TYPES
from mlm_core.model.inspection import (
    WeightsSummary,
    check_layer_counts,
    check_links,
    check_sizes,
    check_tokenizer_files,
    read_config_file,
    read_weights,
)
from mlm_core.policy import server_policy
from mlm_core.settings import shown_value

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass(frozen=True)
class CheckedFolder:
    """A local model folder's config.json and what its weights hold, both checked (``check_local_folder``)."""

    config: dict
    weights: WeightsSummary


def check_local_folder(folder: Path, name: str | None = None) -> CheckedFolder:
    """Refuse folders that are not safe, loadable masked-LM checkpoints (before any loading).

    Reads only config.json and the safetensors headers, with bounds (mlm_core.model.inspection);
    ``name`` is the folder as the caller spelled it, the only path a message shows.
    """
    name = name or str(folder)
    try:
        is_folder = folder.is_dir()
    except (OSError, ValueError):  # a name too long, a NUL byte
        is_folder = False
    if not is_folder:
        raise ModelLoadError(f"'{name}' is not a folder. Give a model folder or a hub id.")
    check_links(folder, name)  # first: nothing below may read a file that leads outside the folder
    check_tokenizer_files(folder, name)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"'{name}' is not a model folder: it has no config.json.")
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if not any(f.endswith(".safetensors") for f in files):
        if any(f.endswith(PICKLE_SUFFIXES) for f in files):
            raise ModelLoadError(
                f"'{name}' has only pickle weights ({', '.join(f for f in files if f.endswith(PICKLE_SUFFIXES))}). "
                "Pickle files can run code when loaded, so MaskLab loads safetensors only: convert the "
                "weights to model.safetensors with a tool you trust."
            )
        raise ModelLoadError(f"'{name}' has no model weights (model.safetensors).")
    config = read_config_file(folder, name)
    check_config(config, name)  # the model type first: the layer checks know only the supported families' keys
    check_layer_counts(config, name, server_policy().max_model_layers)
    check_sizes(config, name)
    return CheckedFolder(config=config, weights=read_weights(folder, name))


def check_config(config: dict, name: str) -> None:
    """Refuse configs that ask for custom code or name a model type outside ``SUPPORTED_MODEL_TYPES``.

    Checked before anything is built: another family's config (Perceiver's
    ``num_self_attends_per_block``, ...) sizes its model under keys the layer checks do not know.
    """
    if not isinstance(config, dict):
        raise ModelLoadError(f"config.json of '{name}' is not an object of settings.")
    if config.get("auto_map") or config.get("trust_remote_code"):
        raise ModelLoadError(
            f"'{name}' asks to run its own code (auto_map in config.json). MaskLab never runs remote "
            "code; choose a model built into transformers."
        )
    kind = config.get("model_type")
    if kind not in SUPPORTED_MODEL_TYPES:
        shown = shown_value(kind, 40) if kind is not None else "no model_type"
        raise ModelLoadError(
            f"'{name}' cannot be loaded as a masked language model ({shown}): MaskLab loads the families "
            f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}."
        )


def check_tokenizer_has_words(name: str, tokenizer) -> None:
    """Refuse a tokenizer that knows only its special tokens: transformers builds one, without a word,
    from a folder that lacks its vocabulary, and every prediction would be a special token."""
    specials = set(tokenizer.all_special_tokens)
    if not any(token not in specials for token in tokenizer.get_vocab()):
        raise ModelLoadError(
            f"The tokenizer of '{name}' has no words, only special tokens: its vocabulary file "
            "(vocab.txt or tokenizer.json) is missing."
        )


def check_tokenizer_fits(name: str, model: torch.nn.Module, tokenizer) -> None:
    """Refuse a tokenizer that produces ids the model has no row for (every such prediction would fail)."""
    embeddings = model.get_input_embeddings()
    rows = embeddings.weight.shape[0] if embeddings is not None else model.config.vocab_size
    if tokenizer.mask_token_id >= rows:
        raise ModelLoadError(
            f"The tokenizer of '{name}' gives its mask token id {tokenizer.mask_token_id}, but the model's "
            f"vocabulary has only {rows:,} entries: the tokenizer does not belong to this model."
        )
    if len(tokenizer) > rows:
        raise ModelLoadError(
            f"The tokenizer of '{name}' has {len(tokenizer):,} tokens, but the model's vocabulary only "
            f"{rows:,}: the tokenizer does not belong to this model."
        )


def check_head(name: str, model: torch.nn.Module, missing_keys) -> None:
    """Refuse checkpoints without a masked-LM head (a bare encoder or a classifier).

    transformers would initialise the missing head at random, silently under our quiet
    loading, and every prediction would be noise.
    """
    prefix = f"{model.base_model_prefix}."
    head = sorted(key for key in missing_keys if not key.startswith(prefix))
    if head:
        architectures = ", ".join(getattr(model.config, "architectures", None) or ["unknown"])
        raise ModelLoadError(
            f"'{name}' has no masked-language-model head (its checkpoint is {architectures}; missing "
            f"{head[0]}{' …' if len(head) > 1 else ''}), so its predictions would be random. "
            "Choose a checkpoint trained for fill-mask (e.g. a *ForMaskedLM model)."
        )
