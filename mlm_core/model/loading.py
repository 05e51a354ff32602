"""Loading masked language models safely, once, for every session.

``load_model(name)`` accepts the default model's name (or None), a local folder, a
Hugging Face hub id or a finished run's model by its id (``run:ID``). Whatever the source, the same rules hold:

* weights from safetensors only; a folder with only pickle weights (``*.bin``, ``*.pt``)
  is refused before anything is unpickled;
* no remote code: ``trust_remote_code=False``, and a config that asks for custom code
  (``auto_map``) is refused;
* the model must be a masked LM with a mask token (GPT-2 and friends are refused);
* eager attention, so attention weights come back;
* device chosen automatically (CUDA when present, else CPU).

Loaded models are kept in a small bounded cache shared by all sessions (one copy each);
``LoadedModel.lock`` serialises forward passes that record attentions or install hooks,
since transformers and captum keep that state on the shared module.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mlm_core.errors import ModelLoadError
from mlm_core.model.default_model import ADAPTER_DIR, ADAPTER_FILE, DEFAULT_MODEL_NAME, base_encoder_dir
from mlm_core.model.families import model_type, usable_positions

MAX_LOADED_MODELS = 3  # each small model is ~100 MB; a class rarely uses more than two at once
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


APP_TORCH_THREADS = 1  # see use_app_threads


def use_app_threads() -> int:
    """Set torch's intra-op threads for the app server: ``MASKLAB_TORCH_THREADS``, else 1.

    Every session's forward passes queue on the model's lock, so the server gains its
    parallelism from sessions, not from threads inside one matrix product; with torch's default
    (one thread per core) the idle threads spin and the sessions compete for the cores. Measured
    by benchmarks/classroom.py (README, "Reliability and performance"). Training jobs run in
    their own processes and choose their own threads.
    """
    raw = os.environ.get("MASKLAB_TORCH_THREADS", "")
    threads = int(raw) if raw.isdecimal() and int(raw) > 0 else APP_TORCH_THREADS
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def pick_device(preferred: str | None = None) -> torch.device:
    """``preferred`` if given ("cpu", "cuda", "cuda:1"), else CUDA when available, else CPU."""
    if preferred:
        device = torch.device(preferred)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("CUDA was requested but no GPU is available here; choose the CPU.")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_label(device: torch.device) -> str:
    """Human-readable device name, e.g. 'CPU (2 threads)' or 'NVIDIA H100 (cuda:0)'."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"CPU ({torch.get_num_threads()} threads)"


@dataclass
class LoadedModel:
    """A masked LM in eval mode with its tokenizer, ready for every analysis."""

    name: str
    model: torch.nn.Module = field(repr=False)  # a full module repr buries test failures and logs
    tokenizer: object = field(repr=False)
    device: torch.device
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def mask_token(self) -> str:
        return self.tokenizer.mask_token

    @property
    def mask_token_id(self) -> int:
        return self.tokenizer.mask_token_id

    @property
    def max_length(self) -> int:
        """Longest input the model accepts, special tokens included."""
        positions = usable_positions(model_type(self.model), getattr(self.model.config, "max_position_embeddings", 512))
        return min(positions, self.tokenizer.model_max_length or positions)

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.model.config.num_attention_heads

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "type": self.model.config.model_type,
            "layers": self.num_layers,
            "heads": self.num_heads,
            "hidden": self.model.config.hidden_size,
            "vocabulary": self.vocab_size,
            "max_length": self.max_length,
            "mask_token": self.mask_token,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "device": device_label(self.device),
        }


_cache: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
_cache_lock = threading.Lock()
_load_locks: dict[tuple[str, str], threading.Lock] = {}


def load_model(name: str | None = None, device: str | None = None) -> LoadedModel:
    """The model called ``name`` (default model when None), loaded once and shared.

    Raises ModelLoadError with a message that says what to do.
    """
    name = (name or DEFAULT_MODEL_NAME).strip()
    target = pick_device(device)
    key = (name, str(target))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        load_lock = _load_locks.setdefault(key, threading.Lock())
    with load_lock:  # two sessions asking at once load it once
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        loaded = _load_uncached(name, target)
        with _cache_lock:
            _cache[key] = loaded
            while len(_cache) > MAX_LOADED_MODELS:
                _cache.popitem(last=False)
        return loaded


def load_fresh(name: str | None = None, device: str | None = "cpu") -> LoadedModel:
    """A private copy in train mode (for fine-tuning), never the shared cached one."""
    loaded = _load_uncached((name or DEFAULT_MODEL_NAME).strip(), pick_device(device))
    loaded.model.train()
    return loaded


def loaded_model_count() -> int:
    """How many models are in memory (the classroom load test checks there is one copy)."""
    with _cache_lock:
        return len(_cache)


def _load_uncached(name: str, device: torch.device) -> LoadedModel:
    if name == DEFAULT_MODEL_NAME:
        model, tokenizer = _assemble_default_model()
    else:
        model, tokenizer = _load_pretrained(name)
    if tokenizer.mask_token is None or tokenizer.mask_token_id is None:
        raise ModelLoadError(
            f"'{name}' has no mask token, so it is not a masked language model "
            "(GPT-2 and other left-to-right models cannot fill in blanks). Choose a BERT-like model."
        )
    model.to(device).eval()
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, device=device)


@contextlib.contextmanager
def quiet_transformers():
    """Silence load reports (e.g. the default model's head being 'newly initialised')."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def _assemble_default_model():
    from transformers import AutoTokenizer, BertForMaskedLM

    from mlm_core.model.default_model import load_adapter, merge_adapter

    adapter = ADAPTER_DIR / ADAPTER_FILE
    if not adapter.exists():
        raise ModelLoadError(f"The default model's adapter is missing ({adapter}); reinstall MaskLab.")
    base = base_encoder_dir()
    with quiet_transformers():
        model = BertForMaskedLM.from_pretrained(base, use_safetensors=True, attn_implementation="eager")
    tensors, scale = load_adapter(adapter)
    merge_adapter(model, tensors, scale)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model.config.name_or_path = DEFAULT_MODEL_NAME
    return model, tokenizer


def check_local_folder(folder: Path) -> None:
    """Refuse folders that are not safe, loadable masked-LM checkpoints (before any loading)."""
    if not folder.is_dir():
        raise ModelLoadError(f"'{folder}' is not a folder. Give a model folder or a hub id.")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"'{folder}' is not a model folder: it has no config.json.")
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if not any(f.endswith(".safetensors") for f in files):
        if any(f.endswith(PICKLE_SUFFIXES) for f in files):
            raise ModelLoadError(
                f"'{folder}' has only pickle weights ({', '.join(f for f in files if f.endswith(PICKLE_SUFFIXES))}). "
                "Pickle files can run code when loaded, so MaskLab loads safetensors only: convert the "
                "weights to model.safetensors with a tool you trust."
            )
        raise ModelLoadError(f"'{folder}' has no model weights (model.safetensors).")
    check_config(json.loads((folder / "config.json").read_text()), str(folder))


def check_config(config: dict, name: str) -> None:
    """Refuse configs that ask for custom code."""
    if config.get("auto_map") or config.get("trust_remote_code"):
        raise ModelLoadError(
            f"'{name}' asks to run its own code (auto_map in config.json). MaskLab never runs remote "
            "code; choose a model built into transformers."
        )


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether huggingface.co answers on its HTTPS port (fails fast when offline)."""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def run_model_folder(name: str) -> Path | None:
    """The folder of a finished run's model when ``name`` is a run reference (``run:ID``), else None.

    Only the run store's own folders are reached this way (the id is checked, no path is taken).
    """
    from mlm_core.training.store import run_ref_id

    if run_ref_id(name) is None:
        return None
    from mlm_core.training.planning import resolve_run_model

    return resolve_run_model(name)


def _load_pretrained(name: str):
    run_folder = run_model_folder(name)
    if run_folder is None:
        return _load_source(name, Path(name).expanduser())
    try:
        return _load_source(name, run_folder)
    except ModelLoadError as exc:  # a run is named by its id: its messages never show the server's folder
        raise ModelLoadError(str(exc).replace(str(run_folder), name)) from exc


def _load_source(name: str, folder: Path):
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    is_local = folder.exists() or name.startswith((".", "/", "~"))
    if is_local:
        check_local_folder(folder)
        source = str(folder)
    else:
        source = name
    # A cached hub model loads offline; otherwise ask the hub only if it can be reached at
    # all, so that an offline machine answers at once instead of after minutes of retries.
    local_only = is_local or os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        hint = (
            "it is not in the local cache and the Hugging Face hub cannot be reached"
            if local_only and not is_local
            else str(exc).splitlines()[0]
        )
        raise ModelLoadError(f"Cannot find model '{name}': {hint}. Check the id or give a local folder.") from exc
    check_config(config.to_dict(), name)
    try:
        with quiet_transformers():
            model, info = AutoModelForMaskedLM.from_pretrained(
                source,
                use_safetensors=True,
                trust_remote_code=False,
                attn_implementation="eager",
                local_files_only=local_only,
                output_loading_info=True,
            )
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
    except ValueError as exc:
        raise ModelLoadError(
            f"'{name}' cannot be loaded as a masked language model ({config.model_type}): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(
            f"Cannot load '{name}': {str(exc).splitlines()[0]} (MaskLab needs model.safetensors)."
        ) from exc
    check_head(name, model, info["missing_keys"])
    return model, tokenizer


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
