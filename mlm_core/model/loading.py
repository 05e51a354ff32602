"""Loading masked language models safely, once, for every session.

``load_model(name)`` accepts the default model's name (or None), a local folder, a
Hugging Face hub id or a finished run's model by its id (``run:ID``). Whatever the source, the same rules hold:

* weights from safetensors only; a folder with only pickle weights (``*.bin``, ``*.pt``)
  is refused before anything is unpickled;
* no remote code: ``trust_remote_code=False``, and a config that asks for custom code
  (``auto_map``) is refused;
* the model must be a masked LM of a family MaskLab supports (``families.SUPPORTED_MODEL_TYPES``,
  refused before anything is built) with a mask token and a vocabulary (GPT-2 and friends are refused);
* one forward pass takes at most ``MAX_TOKENS_PER_PASS`` tokens, whatever positions the config claims;
* eager attention, so attention weights come back;
* device chosen automatically (CUDA when present, else CPU);
* nothing is allocated before the files are checked (mlm_core.model.inspection): links out of the
  folder, a config.json or safetensors header that is malformed or lies, a model bigger than the
  operator's limits (``max_model_layers``, ``model_memory_fraction``) are refused first;
* a tokenizer whose ids go past the model's vocabulary is refused.

Those refusals are mlm_core.model.checks; this module finds, builds and keeps the models.

Loaded models are kept in a small bounded cache shared by all sessions (one copy of each folder,
however its path is spelled); ``LoadedModel.lock`` serialises forward passes that record attentions
or install hooks, since transformers and captum keep that state on the shared module. Loading itself
runs under one process-wide lock (``serialized_loading``): transformers swaps class-wide and
process-wide state while it builds a model (``PreTrainedModel.tie_weights``, torch's init functions,
the default dtype), and two loads at once could leave it swapped for every later load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mlm_core.errors import InputError, ModelLoadError
from mlm_core.model.checks import (
    check_config,
    check_head,
    check_local_folder,
    check_tokenizer_fits,
    check_tokenizer_has_words,
)
from mlm_core.model.default_model import ADAPTER_DIR, ADAPTER_FILE, DEFAULT_MODEL_NAME, base_encoder_dir
from mlm_core.model.families import (
    attention_free_message,
    has_attention,
    model_type,
    usable_positions,
)
from mlm_core.model.inspection import (
    check_finite,
    check_layer_counts,
    check_model_size,
    check_sizes,
    first_line,
)
from mlm_core.model.layout import column_major_linears
from mlm_core.policy import server_policy
from mlm_core.settings import shown_value

MAX_LOADED_MODELS = 3  # each small model is ~100 MB; a class rarely uses more than two at once
# Longest input of one forward pass, whatever the position table allows (rotary models such as ModernBERT
# may claim a billion positions): the attention maps alone hold layers x heads x T x T values, 5 GB at
# T = 25,000 on a small model. Longer texts are predicted in windows (explain.predict.plan_windows).
MAX_TOKENS_PER_PASS = 1024


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


DEVICE_FORMS = "cpu, cuda, cuda:N (N the GPU's number) or mps"
# "cpu:0" too: Accelerate names the CPU that way in each process of ``accelerate launch``
_DEVICE_PATTERN = re.compile(r"cpu(:0)?|mps(:0)?|cuda(:\d{1,3})?")


def pick_device(preferred: str | None = None) -> torch.device:
    """``preferred`` if given ("cpu", "cuda", "cuda:1", "mps"), else CUDA when available, else CPU.

    Only devices that hold a usable model are accepted: torch also knows "meta" (tensors without
    data), "xla", ..., on which every prediction would fail later with a confusing error.
    """
    if preferred is None or not str(preferred).strip():
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(preferred).strip().lower()
    if not _DEVICE_PATTERN.fullmatch(text):
        raise ModelLoadError(f"Unknown device {shown_value(str(preferred), 40)}: use {DEVICE_FORMS}.")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError("CUDA was requested but no GPU is available here; choose the CPU.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"There is no GPU {text} here: this machine has {torch.cuda.device_count()} "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})."
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("mps (Apple's GPU) was requested but is not available here; choose the CPU.")
    return device


def device_label(device: torch.device) -> str:
    """Human-readable device name, e.g. 'CPU (2 threads)' or 'NVIDIA H100 (cuda:0)'."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'' if threads == 1 else 's'})"


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

    @functools.cached_property
    def mask_token_id(self) -> int:  # a tokenizer lookup (about 5 µs): asked for inside loops over tokens
        return self.tokenizer.mask_token_id

    @functools.cached_property
    def special_ids(self) -> tuple[int, ...]:
        """The tokenizer's special ids, sorted: never offered as a prediction, never masked. Cached: the
        tokenizer builds the list anew on every call (about 45 µs, a hundredth of a prediction)."""
        return tuple(sorted(set(self.tokenizer.all_special_ids)))

    @functools.cached_property
    def special_id_tensor(self) -> torch.Tensor:
        """``special_ids`` on the model's device, for indexing a row of vocabulary scores."""
        return torch.tensor(self.special_ids, device=self.device)

    @property
    def max_length(self) -> int:
        """Longest input of one forward pass, special tokens included (never above ``MAX_TOKENS_PER_PASS``)."""
        positions = usable_positions(model_type(self.model), getattr(self.model.config, "max_position_embeddings", 512))
        return min(positions, self.tokenizer.model_max_length or positions, MAX_TOKENS_PER_PASS)

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.model.config.num_attention_heads

    @property
    def has_attention(self) -> bool:
        """False for a recurrent model (LSTM/GRU): no attention weights, no heads to switch off."""
        return has_attention(self.model)

    def require_attention(self, what: str) -> None:
        """Raise InputError naming ``what`` (an attention view) when the model has no attention."""
        if not self.has_attention:
            raise InputError(attention_free_message(what, self.model))

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
_cache_lock = threading.Lock()  # held only to look up or store: never while loading
_loading_lock = threading.RLock()  # every load in the process, one at a time (module docstring)
_transformers_ready = False
_unload_listeners: list = []  # called with each model object the cache drops (on_unload)


def on_unload(listener) -> None:
    """Call ``listener(model)`` whenever the shared cache drops a model (results computed with it go stale)."""
    _unload_listeners.append(listener)


@contextlib.contextmanager
def serialized_loading():
    """Hold the process-wide loading lock, with transformers' classes imported.

    Everything that builds models or tokenizers with transformers in this process (from_pretrained,
    from_config, also on the meta device) runs under it. The first entry imports transformers'
    auto classes: its lazy module, imported from two threads at once, could answer
    ``ImportError: cannot import name 'AutoConfig'``.
    """
    global _transformers_ready
    with _loading_lock:
        if not _transformers_ready:
            from transformers import (  # noqa: F401 - imported for their side effect, under the lock
                AutoConfig,
                AutoModelForMaskedLM,
                AutoTokenizer,
                BertForMaskedLM,
            )

            from mlm_core.model import recurrent

            recurrent.register()  # the recurrent masked LM loads like a built-in family (no remote code)
            _transformers_ready = True
        yield


def model_identity(name: str) -> str:
    """What the cache knows a model by: the resolved folder for a local path (so 'F/', 'F//' and
    './F' share one copy), the name itself for the default model, a run reference or a hub id."""
    from mlm_core.training.store import run_ref_id

    if name == DEFAULT_MODEL_NAME or run_ref_id(name) is not None:
        return name
    try:
        folder = _expanded(name)
        if folder.exists() or name.startswith((".", "/", "~")):
            return str(folder.resolve())
    except (OSError, ValueError, RuntimeError):  # too long, a NUL byte, a link loop: the loader says why
        pass
    return name


def _expanded(name: str) -> Path:
    """``name`` as a path, ``~`` expanded where it can be (``~nobody/x`` stays as written)."""
    try:
        return Path(name).expanduser()
    except RuntimeError:  # no such user's home: the folder does not exist, and the loader says so
        return Path(name)


def load_model(name: str | None = None, device: str | None = None) -> LoadedModel:
    """The model called ``name`` (default model when None), loaded once and shared.

    A folder spelled another way ('F//', './F') gives the same model, tokenizer and lock under the
    caller's spelling. Raises ModelLoadError with a message that says what to do.
    """
    name, target, key = _cache_key(name, device)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _as_named(_cache[key], name)
    with serialized_loading():  # two sessions asking at once load it once, and never two models at once
        with _cache_lock:
            if key in _cache:
                return _as_named(_cache[key], name)
        loaded = _load_uncached(name, target)
        if target.type == "cpu":  # the shared copy serves inference only: a faster layout (model.layout)
            column_major_linears(loaded.model)
        with _cache_lock:
            _cache[key] = loaded
            dropped = [_cache.popitem(last=False)[1] for _ in range(len(_cache) - MAX_LOADED_MODELS)]
        for gone in dropped:
            for listener in _unload_listeners:
                listener(gone.model)
        return loaded


def is_loaded(name: str | None = None, device: str | None = None) -> bool:
    """Whether ``load_model(name, device)`` would answer at once (the page then shows no spinner)."""
    key = _cache_key(name, device)[2]
    with _cache_lock:
        return key in _cache


def _cache_key(name: str | None, device: str | None) -> tuple[str, torch.device, tuple[str, str]]:
    """(the name, default model when None; the device; the shared cache's key)."""
    name = (name or "").strip() or DEFAULT_MODEL_NAME
    target = pick_device(device)
    return name, target, (model_identity(name), str(target))


def _as_named(loaded: LoadedModel, name: str) -> LoadedModel:
    """The cached model under the caller's own spelling of its name (another caller's path is never shown)."""
    return loaded if loaded.name == name else dataclasses.replace(loaded, name=name)


def load_fresh(name: str | None = None, device: str | None = "cpu") -> LoadedModel:
    """A private copy in train mode (for fine-tuning), never the shared cached one."""
    target = pick_device(device)
    with serialized_loading():
        loaded = _load_uncached((name or "").strip() or DEFAULT_MODEL_NAME, target)
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
        model, tokenizer = _load_pretrained(name, device)
    if tokenizer.mask_token is None or tokenizer.mask_token_id is None:
        raise ModelLoadError(
            f"'{name}' has no mask token, so it is not a masked language model "
            "(GPT-2 and other left-to-right models cannot fill in blanks). Choose a BERT-like model."
        )
    check_tokenizer_fits(name, model, tokenizer)
    # MaskLab cuts long texts into windows itself (predict.plan_windows): transformers' warning that a text
    # is longer than the model would only print a stray line before MaskLab's own notice or error.
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
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


def _load_pretrained(name: str, device: torch.device):
    run_folder = run_model_folder(name)
    if run_folder is None:
        return _load_source(name, _expanded(name), device)
    try:
        return _load_source(name, run_folder, device)
    except ModelLoadError as exc:  # a run is named by its id: its messages never show the server's folder
        raise ModelLoadError(str(exc).replace(str(run_folder), name)) from exc


def _load_source(name: str, folder: Path, device: torch.device):
    """Model and tokenizer from a local folder or a hub id; the caller holds ``serialized_loading``."""
    from safetensors import SafetensorError
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    try:
        is_local = folder.exists() or name.startswith((".", "/", "~"))
    except (OSError, ValueError):  # a name too long for a path or with a NUL byte: no hub id either
        is_local = True
    weights = None
    if is_local:
        checked = check_local_folder(folder, name)
        config, weights = _config_from_dict(checked.config, name), checked.weights
        source = str(folder)
    else:
        source = name
    # A cached hub model loads offline; otherwise ask the hub only if it can be reached at
    # all, so that an offline machine answers at once instead of after minutes of retries.
    local_only = is_local or os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()
    if not is_local:
        config = _hub_config(name, local_only)
    check_model_size(config, name, device, server_policy().model_memory_fraction, weights)
    try:
        with quiet_transformers():
            model, info = AutoModelForMaskedLM.from_pretrained(
                source,
                config=config,  # the checked config, not config.json read again
                use_safetensors=True,
                trust_remote_code=False,
                attn_implementation="eager",
                local_files_only=local_only,
                output_loading_info=True,
            )
    except ValueError as exc:
        raise ModelLoadError(
            f"'{name}' cannot be loaded as a masked language model ({config.model_type}): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(
            f"Cannot load '{name}': {str(exc).splitlines()[0]} (MaskLab needs model.safetensors)."
        ) from exc
    except (SafetensorError, RuntimeError) as exc:
        if "ignore_mismatched_sizes" in str(exc):  # transformers reports the shapes in its log, which is quiet here
            raise ModelLoadError(
                f"The weights of '{name}' do not have the shapes its config.json gives (a vocabulary, width or "
                "length that differs): the config does not match the weights."
            ) from exc
        raise ModelLoadError(
            f"Cannot load the weights of '{name}' ({type(exc).__name__}: {first_line(exc)})."
        ) from exc
    check_head(name, model, info["missing_keys"])
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, config=config, trust_remote_code=False, local_files_only=local_only
        )
    except Exception as exc:  # noqa: BLE001 - tokenizer files are parsed by several libraries, each failing its own way
        raise ModelLoadError(
            f"The tokenizer of '{name}' cannot be loaded ({type(exc).__name__}: {first_line(exc)})."
        ) from exc
    check_tokenizer_has_words(name, tokenizer)
    return model, tokenizer


def _config_from_dict(config: dict, name: str):
    """The transformers config a checked config.json describes (no file is read again)."""
    from transformers import CONFIG_MAPPING

    kind = config.get("model_type")
    if not isinstance(kind, str) or kind not in CONFIG_MAPPING:
        shown = shown_value(kind, 40) if kind is not None else "no model_type"
        raise ModelLoadError(
            f"config.json of '{name}' names {shown}, not a model type transformers knows "
            "(e.g. bert, roberta, distilbert)."
        )
    try:
        with quiet_transformers():  # its warnings about odd values would print past the CLI's one error line
            return CONFIG_MAPPING[kind].from_dict(config)
    except Exception as exc:  # noqa: BLE001 - an untrusted config's values reach each config class's own checks
        raise ModelLoadError(
            f"config.json of '{name}' has settings that do not fit a {kind} model "
            f"({type(exc).__name__}: {first_line(exc)})."
        ) from None


def _hub_config(name: str, local_only: bool):
    """The config of a hub model (from the local cache when offline), checked like a folder's."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        hint = (
            "it is not in the local cache and the Hugging Face hub cannot be reached"
            if local_only
            else str(exc).splitlines()[0]
        )
        raise ModelLoadError(f"Cannot find model '{name}': {hint}. Check the id or give a local folder.") from exc
    except RecursionError:
        raise ModelLoadError(f"config.json of '{name}' is nested too deeply to be a model's config.") from None
    settings = config.to_dict()
    check_finite(settings, name)
    check_config(settings, name)
    check_layer_counts(settings, name, server_policy().max_model_layers)
    check_sizes(settings, name)
    return config
