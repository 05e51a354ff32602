"""Checks on a model's files before anything is allocated: what a config.json or a safetensors header
claims is read with bounds, checked against the file sizes and the operator's limits, and a lie is
refused with one clear ``ModelLoadError``.

A model folder comes from whoever typed its name: its config may declare 100,000 layers or a
vocabulary of a billion words, its safetensors header may declare tensors the file does not hold,
and any of its files may be a link to somewhere else on the machine. transformers would believe
all of it and allocate what the config says. Here:

* ``check_links`` refuses links in the folder that lead outside it;
* ``check_tokenizer_files`` refuses tokenizer files that are not regular files or are larger than
  ``MAX_TOKENIZER_FILE_BYTES`` (parsing one costs twice its size in memory);
* ``read_config_file`` reads config.json (at most ``MAX_CONFIG_BYTES``, UTF-8, a JSON object, finite numbers);
* ``check_layer_counts`` compares every layer count in the config, and every other whole number whose
  key names a repeat count (``REPEAT_WORDS``), with ``server_policy().max_model_layers`` (first: even an
  empty model of 100,000 layers is slow to build);
* ``check_sizes`` refuses a family's size keys (``SIZE_KEYS``: the recurrent model's vocabulary, widths and
  layers) that are not positive whole numbers, before its config class sees them;
* ``read_weights`` reads each safetensors header (8-byte length, then JSON) and checks that its
  tensors tile the file exactly, as the safetensors library itself requires; a shard index
  (``*.safetensors.index.json``) may name only safetensors files of the folder itself;
* ``check_model_size`` sizes the model from its config on torch's meta device (no memory) and
  refuses it when it would take more than ``server_policy().model_memory_fraction`` of the
  available memory, or when the config describes far more parameters than the weights hold.

Example: ``read_weights(Path("bert"), "bert").elements`` is the number of values stored in
``bert/*.safetensors``, known without reading a single weight.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mlm_core.errors import ModelLoadError
from mlm_core.model.families import RECURRENT_MODEL_TYPE

MAX_CONFIG_BYTES = 1_000_000  # real configs are a few kB; a bigger one is not a config
# Headers of real checkpoints (thousands of tensors) stay under a few MB; the safetensors library's own
# bound is 100 MB, but parsing that much JSON into Python objects would take gigabytes.
MAX_SAFETENSORS_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSOR_RANK = 64  # real tensors have a handful of dimensions; multiplying out a million takes a minute
MAX_CONFIG_DEPTH = 8  # nested sub-configs (text_config, vision_config, ...) searched for layer counts
# How much more the config may describe than the weights hold: a checkpoint may lack its head or tied
# copies (checked later with a clearer message), but not most of the model.
MAX_CONFIG_TO_WEIGHTS_RATIO = 2

# Tokenizer files transformers may parse (any sentencepiece "*.model" too), refused above this size: the
# largest real ones (multilingual tokenizer.json) are about 20 MB, and parsing takes twice the file in memory.
MAX_TOKENIZER_FILE_BYTES = 64 * 1024 * 1024
TOKENIZER_FILE_NAMES = frozenset({
    "tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json",
})
SENTENCEPIECE_SUFFIX = ".model"  # spiece.model (ALBERT), sentencepiece.bpe.model (XLM-R, CamemBERT)
# A shard index of a real checkpoint lists a few thousand tensors: well under a megabyte.
MAX_WEIGHT_INDEX_BYTES = 16 * 1024 * 1024
WEIGHT_INDEX_SUFFIX = ".safetensors.index.json"

# Layer counts under the names model families use; any other integer key ending in "layers" counts too.
LAYER_KEYS = frozenset({
    "num_hidden_layers", "num_layers", "n_layers", "n_layer", "encoder_layers", "decoder_layers",
    "num_encoder_layers", "num_decoder_layers", "num_hidden_groups", "inner_group_num", "block_sizes",
})
# Keys that size a model of a family whose config class MaskLab declares itself (model.recurrent): each must be
# a positive whole number. How large they may be is the memory check's (check_model_size) and, for layers,
# check_layer_counts'.
SIZE_KEYS = {
    RECURRENT_MODEL_TYPE: ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers"),
}
# Words in a key that make its whole-number value a count of repeated modules (num_self_attends_per_block,
# depth, ...): each is bounded like a layer count, since each repeat is built even on the meta device.
REPEAT_WORDS = ("layer", "block", "attend", "depth", "repeat", "group")

# Bits per value of every dtype a safetensors header may name (safetensors 0.8).
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
SAFETENSORS_FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                            "F64": torch.float64}


@dataclass(frozen=True)
class WeightsSummary:
    """What the safetensors files of a folder hold, from their headers only."""

    files: int
    tensor_bytes: int
    elements: int
    float_dtype: torch.dtype | None  # the widest floating dtype stored (what transformers loads as "auto")


def check_links(folder: Path, name: str) -> None:
    """Refuse a folder whose entries are links that lead outside it (config, tokenizer files, weights).

    Only the folder's own entries are checked: transformers reads a model's files from the top level.
    A link inside the folder (``model.safetensors -> shards/a.safetensors``) is fine.
    """
    root = folder.resolve()
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise ModelLoadError(f"Cannot read the model folder '{name}': {exc.strerror or exc}.") from None
    for entry in entries:
        if entry.is_symlink() and not _leads_inside(Path(entry.path), root):
            raise ModelLoadError(
                f"'{name}' holds a link ({entry.name}) that leads outside the model folder; MaskLab reads "
                "only the folder's own files. Copy the file into the folder instead."
            )


def _leads_inside(link: Path, root: Path) -> bool:
    try:
        return link.resolve().is_relative_to(root)  # the whole chain of links followed
    except (OSError, RuntimeError):  # a loop of links leads nowhere
        return False


def check_tokenizer_files(folder: Path, name: str) -> None:
    """Refuse tokenizer files that could block (a pipe, a device) or that are too large to parse.

    Checked before anything is parsed; the folder's links were checked first (``check_links``).
    """
    for path in folder.iterdir():
        if path.name not in TOKENIZER_FILE_NAMES and not path.name.endswith(SENTENCEPIECE_SUFFIX):
            continue
        try:
            regular = path.is_file()
            size = path.stat().st_size if regular else 0
        except OSError:  # a link loop: check_links refused those, but the folder may change meanwhile
            regular, size = False, 0
        if not regular:
            raise ModelLoadError(f"{path.name[:60]} in '{name}' is not a regular file; the tokenizer cannot be read.")
        if size > MAX_TOKENIZER_FILE_BYTES:
            raise ModelLoadError(
                f"{path.name[:60]} in '{name}' is larger than {MAX_TOKENIZER_FILE_BYTES // 2**20} MB; a tokenizer's "
                "files are a few MB."
            )


def read_config_file(folder: Path, name: str) -> dict:
    """config.json as a dict, read with bounds: one clear refusal for anything that is not a small JSON object."""
    path = folder / "config.json"
    if not path.is_file():  # a pipe or a device named config.json: opening it could block
        raise ModelLoadError(f"'{name}' is not a model folder: it has no config.json.")
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ModelLoadError(f"Cannot read config.json in '{name}': {exc.strerror or exc}.") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelLoadError(
            f"config.json in '{name}' is larger than {MAX_CONFIG_BYTES:,} bytes; a model's config is a few kB."
        )
    try:
        config = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelLoadError(f"config.json in '{name}' is not UTF-8 text.") from None
    except RecursionError:  # json.loads recurses once per nesting level
        raise ModelLoadError(f"config.json in '{name}' is nested too deeply to be a model's config.") from None
    except ValueError as exc:  # JSONDecodeError, and integers longer than Python converts
        raise ModelLoadError(f"config.json in '{name}' is not valid JSON ({str(exc).splitlines()[0]}).") from None
    if not isinstance(config, dict):
        raise ModelLoadError(
            f"config.json in '{name}' is a JSON {type(config).__name__}, not an object of settings."
        )
    check_finite(config, name)
    return config


def check_finite(config: dict, name: str) -> None:
    """Refuse a config holding NaN or an infinity anywhere (Python's JSON reads NaN, Infinity and 1e999):
    ``layer_norm_eps: Infinity`` gives a model whose every prediction is uniform.

    Walked without recursion: json.loads accepts nesting deeper than a recursive walk could follow.
    """
    pending = [("", config)]
    while pending:
        key, value = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            shown = f" ({key[:60]})" if key else ""
            raise ModelLoadError(
                f"config.json in '{name}' holds a number that is not finite{shown}: {value}. A model's "
                "settings are finite numbers."
            )
        if isinstance(value, dict):
            pending.extend((str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            pending.extend((key, v) for v in value)


def layer_counts(config: dict, depth: int = 0):
    """(key, value) of every layer count in ``config`` and its nested sub-configs."""
    if depth > MAX_CONFIG_DEPTH:
        return
    for key, value in config.items():
        if isinstance(value, dict):
            yield from layer_counts(value, depth + 1)
        elif isinstance(key, str) and (key in LAYER_KEYS or key.endswith("layers")):
            yield key, value


def repeat_counts(config: dict, depth: int = 0):
    """(key, value) of every other whole number (or list of them) whose key names a repeat (``REPEAT_WORDS``)."""
    if depth > MAX_CONFIG_DEPTH:
        return
    for key, value in config.items():
        if isinstance(value, dict):
            yield from repeat_counts(value, depth + 1)
        elif (isinstance(key, str) and key not in LAYER_KEYS and not key.endswith("layers")
              and any(word in key.lower() for word in REPEAT_WORDS)):
            values = value if isinstance(value, list) else [value]
            if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                yield key, value


def check_layer_counts(config: dict, name: str, max_layers: int) -> None:
    """Refuse a config whose layer counts are not whole numbers or exceed ``max_layers``.

    Checked before the model is built at all: building even an empty model of 100,000 layers on
    the meta device takes minutes.
    """
    for key, value in layer_counts(config):
        values = value if isinstance(value, list) else [value]
        if value is None or not values:
            continue
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ModelLoadError(
                f"config.json in '{name}' gives {key} as {json.dumps(value)[:40]}, not a whole number."
            )
        if sum(values) > max_layers:
            raise ModelLoadError(
                f"'{name}' declares {sum(values):,} layers ({key}); this server loads models of at most "
                f"{max_layers:,} layers (the operator's max_model_layers)."
            )
    for key, value in repeat_counts(config):
        total = sum(value) if isinstance(value, list) else value
        if total > max_layers or total < 0:
            raise ModelLoadError(
                f"'{name}' declares {total:,} repeats ({key[:60]}); this server loads models of at most "
                f"{max_layers:,} layers (the operator's max_model_layers)."
            )


def check_sizes(config: dict, name: str) -> None:
    """Refuse a config whose size keys (``SIZE_KEYS`` of its model type) are not positive whole numbers."""
    for key in SIZE_KEYS.get(config.get("model_type"), ()):
        value = config.get(key)
        if key in config and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ModelLoadError(
                f"config.json in '{name}' gives {key} as {json.dumps(value)[:40]}, not a positive whole number."
            )


def read_safetensors_header(path: Path, name: str, shown: str) -> dict[str, dict]:
    """The tensors a safetensors file declares (name -> dtype, shape, data_offsets), checked against its size.

    The format: 8 bytes, little-endian, the header's length N; N bytes of JSON; the tensors' bytes.
    The tensors must tile the data exactly (no gap, no overlap, nothing past the end), as the
    safetensors library requires; any other header is refused here, before anything is mapped.
    """
    where = f"{shown} in '{name}'"
    if not path.is_file():  # a folder, a pipe or a device named *.safetensors: opening it could block
        raise ModelLoadError(f"{where} is not a regular file.")
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            prefix = file.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
            if len(prefix) < 8 or length < 2 or length > min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):
                raise ModelLoadError(
                    f"{where} is not a safetensors file: its header length does not fit the file "
                    "(truncated or damaged)."
                )
            raw = file.read(length)
    except OSError as exc:
        raise ModelLoadError(f"Cannot read {where}: {exc.strerror or exc}.") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ModelLoadError(f"{where} has a damaged header (not a JSON object).") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{where} has a damaged header (not a JSON object).")
    data_bytes = size - 8 - length
    spans = []
    for tensor, entry in header.items():
        if tensor == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise ModelLoadError(f"{where} has damaged metadata (it must map names to text).")
            continue
        spans.append((*_tensor_span(entry, where, tensor[:60]), tensor))
    spans.sort()
    position = 0
    for begin, end, tensor in spans:
        if begin != position:
            raise ModelLoadError(
                f"{where} declares tensors that overlap or leave gaps (at {tensor[:60]!r}); the file is damaged."
            )
        position = end
    if position != data_bytes:
        raise ModelLoadError(
            f"{where} declares {position:,} bytes of tensors but holds {data_bytes:,}; the file is truncated "
            "or its header is wrong."
        )
    return {tensor: entry for tensor, entry in header.items() if tensor != "__metadata__"}


def _tensor_span(entry, where: str, tensor: str) -> tuple[int, int]:
    """(begin, end) of one tensor's bytes, after checking that its dtype and shape give exactly that many."""
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) \
            or entry["dtype"] not in SAFETENSORS_DTYPE_BITS:
        raise ModelLoadError(f"{where} declares tensor {tensor!r} with an unknown dtype; the header is damaged.")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and len(shape) <= MAX_TENSOR_RANK and all(whole(d) for d in shape)
            and isinstance(offsets, list) and len(offsets) == 2 and all(whole(o) for o in offsets)):
        raise ModelLoadError(f"{where} declares tensor {tensor!r} without a valid shape and offsets.")
    bits = math.prod(shape) * SAFETENSORS_DTYPE_BITS[entry["dtype"]]
    begin, end = offsets
    if bits % 8 or end < begin or end - begin != bits // 8:
        raise ModelLoadError(
            f"{where} declares tensor {tensor!r} whose shape does not match its bytes; the header is damaged."
        )
    return begin, end


def check_weight_indexes(folder: Path, name: str) -> None:
    """Refuse a shard index (``model.safetensors.index.json``) naming any file but a safetensors file of the folder.

    transformers opens every file an index's ``weight_map`` names, wherever it is: ``../../elsewhere``
    would load another folder's weights, a pipe would block the load. A shard must be a plain file name
    (no folder, no ``..``) of a regular ``*.safetensors`` file here, whose header ``read_weights`` checks.
    """
    for path in folder.iterdir():
        if not path.name.endswith(WEIGHT_INDEX_SUFFIX):
            continue
        where = f"{path.name[:60]} in '{name}'"
        try:
            if not path.is_file():
                raise ModelLoadError(f"{where} is not a regular file.")
            with path.open("rb") as file:
                raw = file.read(MAX_WEIGHT_INDEX_BYTES + 1)
        except OSError as exc:
            raise ModelLoadError(f"Cannot read {where}: {exc.strerror or exc}.") from None
        if len(raw) > MAX_WEIGHT_INDEX_BYTES:
            raise ModelLoadError(f"{where} is larger than {MAX_WEIGHT_INDEX_BYTES // 2**20} MB; a shard index is small.")
        try:
            index = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ModelLoadError(f"{where} is not a valid shard index (not JSON).") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ModelLoadError(f"{where} is not a valid shard index (no weight_map of file names).")
        for shard in sorted(set(weight_map.values())):
            plain = shard not in ("", ".", "..") and not any(c in shard for c in "/\\\0")
            if not (plain and shard.endswith(".safetensors") and (folder / shard).is_file()):
                raise ModelLoadError(
                    f"{where} names weights ({shard[:60]!r}) that are not a safetensors file of the model folder; "
                    "MaskLab reads only the folder's own files."
                )


def read_weights(folder: Path, name: str) -> WeightsSummary:
    """What the folder's safetensors files hold, from their checked headers (shard indexes checked first)."""
    check_weight_indexes(folder, name)
    tensor_bytes = elements = files = 0
    widest: torch.dtype | None = None
    for path in sorted(folder.glob("*.safetensors")):
        header = read_safetensors_header(path, name, path.name)
        files += 1
        for entry in header.values():
            begin, end = entry["data_offsets"]
            tensor_bytes += end - begin
            elements += math.prod(entry["shape"])
            dtype = SAFETENSORS_FLOAT_DTYPES.get(entry["dtype"])
            if dtype is not None and (widest is None or dtype.itemsize > widest.itemsize):
                widest = dtype
    return WeightsSummary(files=files, tensor_bytes=tensor_bytes, elements=elements, float_dtype=widest)


def available_memory(device: torch.device) -> int:
    """Bytes free for a model about to be loaded: the machine's available memory (transformers reads the
    weights on the CPU first), and the GPU's free memory when the model goes there."""
    import psutil

    free = psutil.virtual_memory().available
    if device.type == "cuda":
        free = min(free, torch.cuda.mem_get_info(device)[0])
    return free


@dataclass(frozen=True)
class ModelSize:
    """A model's size computed from its config on the meta device."""

    parameters: int
    bytes: int


def size_from_config(config, name: str, dtype: torch.dtype) -> ModelSize:
    """Parameters and bytes of the masked LM ``config`` describes, built on the meta device (nothing allocated).

    Loading swaps process-wide state in transformers: call this under the loader's lock.
    """
    from transformers import AutoModelForMaskedLM

    from mlm_core.model.loading import quiet_transformers

    try:
        with torch.device("meta"), quiet_transformers():
            model = AutoModelForMaskedLM.from_config(config, attn_implementation="eager")
    except ValueError as exc:  # transformers' refusal of a model type without a masked-LM class
        raise ModelLoadError(
            f"'{name}' cannot be loaded as a masked language model ({getattr(config, 'model_type', '?')}): "
            f"{first_line(exc)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure to build what an untrusted config describes is a refusal
        raise ModelLoadError(
            f"config.json of '{name}' does not describe a model that can be built "
            f"({type(exc).__name__}: {first_line(exc)})."
        ) from None
    parameters = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return ModelSize(parameters=parameters, bytes=parameters * dtype.itemsize + buffers)


def load_dtype(config, weights: WeightsSummary | None) -> torch.dtype:
    """The dtype transformers will load the weights as (its default, dtype="auto"): the config's, else the
    stored one, else float32."""
    declared = getattr(config, "dtype", None)
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    if isinstance(declared, torch.dtype) and declared.is_floating_point:
        return declared
    if weights is not None and weights.float_dtype is not None:
        return weights.float_dtype
    return torch.float32


def check_model_size(config, name: str, device: torch.device, memory_fraction: float,
                     weights: WeightsSummary | None = None) -> ModelSize:
    """Refuse a model that would take more than ``memory_fraction`` of the free memory, or whose config
    describes far more parameters than its weights hold (a config that lies)."""
    size = size_from_config(config, name, load_dtype(config, weights))
    budget = int(memory_fraction * available_memory(device))
    if size.bytes > budget:
        raise ModelLoadError(
            f"'{name}' would take {_gigabytes(size.bytes)} of memory ({size.parameters:,} parameters, from its "
            f"config); this server allows one model {_gigabytes(budget)} ({memory_fraction:.0%} of the memory "
            "free now, the operator's model_memory_fraction)."
        )
    if weights is not None and size.parameters > MAX_CONFIG_TO_WEIGHTS_RATIO * weights.elements:
        raise ModelLoadError(
            f"config.json of '{name}' describes {size.parameters:,} parameters but its weights hold "
            f"{weights.elements:,} values: the config does not match the weights."
        )
    return size


def _gigabytes(count: int) -> str:
    return f"{count / 1e9:,.2f} GB" if count >= 1e7 else f"{count / 1e6:,.1f} MB"


def first_line(exc: BaseException) -> str:
    """An exception's first non-blank line, shortened: messages are one line (the CLI prints one `error:` line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__
