"""The memory a fine-tuning run needs at its peak, checked against what the machine has before it starts.

``estimate_memory`` builds the peak from the model's config, the batch, the block length and the masking
rate (weights, gradients and AdamW's moments, activations, logits at the masks); ``check_memory`` compares
it with the memory free now before a run is stored (``jobs.submit``, used by the Fine-tune page and
``train``). A step that runs out of CPU memory all the same ends the run with a message naming its batch
(``out_of_cpu_memory``, in the trainer). Sizes of models come from ``costs`` (``local_model_config``,
``parameter_count``), the one place that reads a model's config for an estimate.

Example: ``check_memory(TrainConfig(batch_size=4096, seq_len=512))`` raises MemoryLimitError naming the
estimate, what is free and a batch size that fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlm_core.errors import MaskLabError
from mlm_core.model.families import RECURRENT_MODEL_TYPE
from mlm_core.training.config import TrainConfig
from mlm_core.training.costs import format_bytes, local_model_config, parameter_count, scratch_sizes
from mlm_core.training.store import run_ref_id

# Calibrated against the peak resident memory of three training steps and an evaluation on a CPU
# (one thread, the demo corpus); the measurements are in ``estimate_memory``'s docstring.
PROCESS_BYTES = 500_000_000  # python, torch, transformers and accelerate imported; tokenizer, corpus, allocator
CUDA_CONTEXT_BYTES = 500_000_000  # what the CUDA runtime and its kernels take on the GPU before any tensor
# Per weight: the float32 weight (4), its gradient (4), AdamW's two moments (8) and the fused step's
# temporaries and the gradient clipping's (4).
TRAINING_BYTES_PER_WEIGHT = 20
EMBEDDING_BYTES_PER_WIDTH = 14  # per token: the summed embeddings, their LayerNorm and dropout (mask and output)
LOGIT_BYTES = 16  # per masked position and vocabulary entry: logits, log-softmax, and the gradients of both
ACTIVATION_SCALE = {"cpu": 1.0, "cuda": 0.5}  # bf16 autocast on a GPU halves most saved activations
# What the batch's tensors take beyond their count above: the backward pass's transient gradients and the
# allocator's free blocks. Fitted to the measurements in ``estimate_memory`` (1.0 left peaks 20% too low).
ALLOCATOR_OVERHEAD = 1.3
USABLE_FRACTION = 0.9  # of the memory available: the rest stays with the app and the system


@dataclass(frozen=True)
class MemoryEstimate:
    """A run's estimated peak memory on its device, in bytes, by kind (see ``estimate_memory``)."""

    peak_bytes: int
    parts: dict  # "process" (or "GPU runtime"), "model and optimizer", "activations", "predictions at the masks"
    fixed_bytes: int  # whatever the batch size
    per_block_bytes: int  # what each block of the batch adds
    batch_size: int
    seq_len: int
    device_type: str

    def fitting_batch(self, usable_bytes: int) -> int:
        """The largest power-of-two batch (at most this one) whose estimate fits ``usable_bytes``; 0: none."""
        room = (usable_bytes - self.fixed_bytes) // max(1, self.per_block_bytes)
        if room < 1:
            return 0
        return min(self.batch_size, 1 << (int(room).bit_length() - 1))


def training_device_type(config: TrainConfig) -> str:
    """"cuda" or "cpu": where the Trainer puts a run of ``config`` (the GPU when there is one)."""
    import torch

    wants_cpu = (config.device or "").startswith("cpu")
    return "cuda" if not wants_cpu and torch.cuda.is_available() else "cpu"


def _memory_shape(model: str | None, sizes: tuple = ()) -> dict | None:
    """Layers, width, feed-forward width, heads and vocabulary of ``model`` from its config; None: unknown.

    Besides what ``local_model_config`` finds (the default and scratch models, a finished run, a local
    folder), a hub model already in the local cache; nothing is downloaded.
    """
    data = local_model_config(model, sizes)  # the default and scratch models, a finished run, a local folder
    if data is None and model and run_ref_id(model) is None:
        from mlm_core.model.loading import serialized_loading

        try:
            with serialized_loading():  # transformers' first imports are not thread-safe
                from transformers import AutoConfig

                data = AutoConfig.from_pretrained(model, local_files_only=True).to_dict()
        except (MaskLabError, OSError, ValueError):
            return None
    try:
        hidden = int(data.get("hidden_size") or data["dim"])  # BERT-like, else DistilBERT's names
        recurrent = data.get("model_type") == RECURRENT_MODEL_TYPE  # no feed-forward layer, no attention
        return {"layers": int(data.get("num_hidden_layers") or data["n_layers"]), "hidden": hidden,
                "intermediate": 0 if recurrent else int(data.get("intermediate_size") or data.get("hidden_dim")
                                                        or 4 * hidden),
                "heads": 0 if recurrent else int(data.get("num_attention_heads") or data.get("n_heads") or 1),
                "vocab": int(data["vocab_size"])}
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _weights_of(model: str | None, shape: dict, sizes: tuple = ()) -> int:
    """Parameter count: exact where ``parameter_count`` can build the model, else from the shape."""
    counted = parameter_count(model, sizes) if model is None or not model.startswith("run:") else None
    if counted:
        return counted
    h, i, layers = shape["hidden"], shape["intermediate"], shape["layers"]
    return shape["vocab"] * h + 512 * h + layers * (4 * h * h + 2 * h * i) + h * h  # embeddings, layers, head


def _highest_rate(config: TrainConfig) -> float:
    """The highest masking rate of the run (``rate_schedule``'s start or end): the most masked positions."""
    from mlm_core.masking import base_rate, strategy_from_params

    base = base_rate(strategy_from_params(config.strategy, config.strategy_params))
    start = config.rate_start if config.rate_start is not None else (0.15 if base is None else base)
    end = config.rate_end if config.rate_end is not None else start
    return max(start, end)


def estimate_memory(config: TrainConfig, device_type: str = "cpu") -> MemoryEstimate | None:
    """The peak memory of a run of ``config`` on ``device_type`` (None when the model's shape is unknown).

    With W weights, batch b, block length s, L layers of width h, feed-forward width I, a heads,
    vocabulary V and masking rate r (the schedule's highest), in bytes::

        fixed     = process (500 MB on the CPU; the CUDA runtime on a GPU) + W × 20
                    (float32 weight 4, gradient 4, AdamW's moments 8, step temporaries 4)
        per block = c × s × (14 h + L × (34 h + 8 I + 9 a s))     activations kept for the backward pass
                  + 1.3 × r × s × V × 16                           logits at the masks, log-softmax, gradients
        peak      = fixed + b × per block

    The activation term is the float32 form of the per-layer count in Korthikanti et al. 2022
    ("Reducing activation recomputation in large transformer models"): the inputs of every linear
    layer, the attention scores, softmax and dropout (a s per token), the GELU input and output
    (8 I); c is 1.3 on the CPU (``ALLOCATOR_OVERHEAD``) and half that on a GPU, where bf16 autocast
    halves the saved tensors. Every weight is counted as trained (freezing only lowers the peak). The
    batch is the configured one, not capped by the corpus's size: the check is made before the
    corpus is packed.

    Peak resident memory measured on a 2-core CPU (one thread, the demo corpus, three steps and an
    evaluation; two runs of the same setting differed by up to 17%) against this estimate::

        model                batch × length   measured        estimated
        scratch-transformer   8 × 64            649 MB          653 MB
        scratch-transformer   8 × 128           685 MB          723 MB
        scratch-transformer  32 × 128         1,046 MB        1,127 MB
        scratch-transformer  64 × 256         2,453-2,490 MB  2,939 MB
        default (MiniLM-L6)   8 × 64          1,074 MB        1,136 MB
        default (MiniLM-L6)   8 × 128         1,279 MB        1,372 MB
        default (MiniLM-L6)  32 × 64          1,655 MB        1,680 MB
        default (MiniLM-L6)  32 × 128         2,455-2,865 MB  2,625 MB
        default (MiniLM-L6)  64 × 256         9,378 MB        9,402 MB
        default (MiniLM-L6)  16 × 512         6,602 MB        6,945 MB

    Example: ``estimate_memory(TrainConfig(batch_size=4096, seq_len=512)).peak_bytes`` is about 1.5 TB.
    """
    shape = _memory_shape(config.model, scratch_sizes(config))
    if shape is None:
        return None
    layers, h, i, heads, vocab = (shape[k] for k in ("layers", "hidden", "intermediate", "heads", "vocab"))
    s, b = config.seq_len, config.batch_size
    weights = _weights_of(config.model, shape, scratch_sizes(config))
    runtime = CUDA_CONTEXT_BYTES if device_type == "cuda" else PROCESS_BYTES
    training_state = weights * TRAINING_BYTES_PER_WEIGHT
    scale = ACTIVATION_SCALE.get(device_type, 1.0)
    activations = int(ALLOCATOR_OVERHEAD * scale * s * (EMBEDDING_BYTES_PER_WIDTH * h
                                                         + layers * (34 * h + 8 * i + 9 * heads * s)))
    logits = int(ALLOCATOR_OVERHEAD * _highest_rate(config) * s * vocab * LOGIT_BYTES)
    parts = {"GPU runtime" if device_type == "cuda" else "process": runtime,
             "model and optimizer": training_state, "activations": b * activations,
             "predictions at the masks": b * logits}
    return MemoryEstimate(sum(parts.values()), parts, runtime + training_state, activations + logits, b, s,
                          device_type)


def _cgroup_room() -> int | None:
    """Bytes this process's cgroup (a container's memory limit) still allows; None without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def available_memory(device_type: str) -> int | None:
    """Bytes a new run can use now: free GPU memory, or the RAM the system (and a container's limit)
    can give; None when it cannot be told."""
    if device_type == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info()[0])
        except RuntimeError:
            return None
    try:
        import psutil
    except ImportError:  # accelerate requires it; without it the check is skipped, not the run
        return None
    room = int(psutil.virtual_memory().available)
    limit = _cgroup_room()
    return room if limit is None else min(room, limit)


def memory_refusal(estimate: MemoryEstimate, available: int) -> str:
    """Why a run does not fit, with the estimate, what is available and a batch size (or length) that fits."""
    usable = int(available * USABLE_FRACTION)
    parts = ", ".join(f"{name} {format_bytes(size)}" for name, size in estimate.parts.items())
    where = "the GPU has" if estimate.device_type == "cuda" else "this machine has"
    head = (f"This run needs about {format_bytes(estimate.peak_bytes)} of memory at batch {estimate.batch_size:,} × "
            f"{estimate.seq_len:,} tokens ({parts}); {where} {format_bytes(available)} available.")
    batch = estimate.fitting_batch(usable)
    if batch:
        return (f"{head} Choose a batch size of {batch:,} or less (or shorter blocks); the trainer has no "
                "gradient accumulation, so more steps make up for the smaller batch.")
    length = estimate.seq_len // 2
    while length >= TrainConfig.spec("seq_len").min:
        per_block = estimate.per_block_bytes * length / estimate.seq_len  # it grows faster than s: an upper bound
        if estimate.fixed_bytes + per_block <= usable:
            return f"{head} Even one block does not fit: choose blocks of {length:,} tokens or fewer."
        length //= 2
    return f"{head} Even one short block does not fit: choose a smaller model."


def check_memory(config: TrainConfig, device_type: str | None = None,
                 available: int | None = None) -> MemoryEstimate | None:
    """Refuse a run whose estimated peak memory does not fit before it is stored or started.

    ``jobs.submit`` calls it, so the Fine-tune page and ``train`` refuse the same runs with the same
    message (MemoryLimitError naming the estimate, the memory available and a batch size that
    fits). ``device_type`` defaults to where the Trainer will run; ``available`` to what
    ``available_memory`` reads now. Returns the estimate (None when the model's shape or the
    available memory is unknown: then nothing is refused and the trainer's own guard remains).

    Example: a batch of 4096 blocks of 512 tokens on the default model is refused on any machine
    with less than about 1.7 TB free.
    """
    from mlm_core.errors import MemoryLimitError

    device_type = device_type or training_device_type(config)
    estimate = estimate_memory(config, device_type)
    if estimate is None:
        return None
    available = available_memory(device_type) if available is None else available
    if available is not None and estimate.peak_bytes > available * USABLE_FRACTION:
        raise MemoryLimitError(memory_refusal(estimate, available))
    return estimate


def memory_note(config: TrainConfig, device_type: str | None = None) -> str:
    """The Fine-tune page's line on memory: the estimated peak and what is free now, or why it will be
    refused (``memory_refusal``); empty when it cannot be estimated."""
    device_type = device_type or training_device_type(config)
    estimate = estimate_memory(config, device_type)
    available = available_memory(device_type)
    if estimate is None or available is None:
        return ""
    if estimate.peak_bytes > available * USABLE_FRACTION:
        return f"**Memory:** {memory_refusal(estimate, available)}"
    where = "on the GPU" if device_type == "cuda" else "on this machine"
    return (f"**Memory:** about {format_bytes(estimate.peak_bytes)} at its peak; "
            f"{format_bytes(available)} is available {where} now.")


def out_of_cpu_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the CPU running out of memory (torch's allocator says so in a RuntimeError)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and "DefaultCPUAllocator" in text and "allocate" in text


def out_of_memory_message(batch_size: int, seq_len: int, step: int) -> str:
    """What a run that ran out of memory during a step tells its user (no traceback)."""
    smaller = max(1, batch_size // 2)
    return (f"Out of memory at step {step:,} with batch {batch_size:,} × {seq_len:,} tokens: the machine could not "
            f"give the run more memory. Start it again with a smaller batch (e.g. {smaller:,}) or shorter blocks.")
