"""What a fine-tuning run costs: its time before it starts, its time left while it runs, its disk use
and its memory.

Time. A run is start-up (process start, imports, model load, tokenizing the corpus), then
training steps, evaluations, checkpoints and the final save. ``Trainer.timing`` measures each
of these and the job stores them with the run (``pace.json``); ``estimate_time`` rebuilds a new
run's time from the latest finished run on the same model and device, scaled to the new batch,
block length and evaluation size, else from ``REFERENCE_PACE`` (measured on a 2-core CPU with the
default model), scaled by the model's compute per token and size. The older estimate counted
training tokens at a fixed speed plus a fixed start-up only, and came out 2-5 times too low (56 s
for a 20-step run that took 129 s here; 36 s for 170 s on a user's machine): it left out the
checkpoints (270 MB written, fsynced and hashed each) and the first step's warm-up, undercounted
evaluations (every step of a run under 40 steps), and ignored how busy the machine was.

Other work sharing the CPU slows a run down a lot (2 s a step idle, 20 s with 9 other busy threads
on 2 cores) and the load average lags by a minute, too much to correct for reliably: the estimate
takes the pace as measured and says when the machine is busy now (``BUSY_LOAD``) or was busy
while the run it is made from was measured.

Time left while a run goes (``time_left``): the rate of the steps completed in this process
(evaluations and checkpoints included), counted down from the moment the last step ended, and
never below one step less than that, so it does not rise while a step is running.

Disk (``estimate_disk``): the model's parameter count gives its size (4 bytes a weight); a
checkpoint also holds AdamW's two moments (8 bytes a weight). While a run goes it keeps
``keep_checkpoints`` checkpoints plus the one being written; once finished, only the model.

Memory (``estimate_memory``, ``check_memory``): the peak of a run from the model's config, the
batch, the block length and the masking rate (weights, gradients and AdamW's moments, activations,
logits at the masks), checked against the memory free now before a run is stored (``jobs.submit``,
used by the Fine-tune page and ``train``). A step that runs out of CPU memory all the same ends the
run with a message naming its batch (``out_of_cpu_memory``, in the trainer).

Example::

    estimate = estimate_time(store, TrainConfig(steps=20), "cpu", train_blocks=241)
    estimate.seconds, estimate.parts  # total, and {"start-up": ..., "training": ..., ...}
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mlm_core.errors import MaskLabError
from mlm_core.model.default_model import DEFAULT_MODEL_NAME
from mlm_core.training.config import TrainConfig
from mlm_core.training.store import FINISHED, RunRecord, RunStore, run_ref_id

PACE_FILE = "pace.json"  # in the run folder: start-up, when steps ended, and at the end the timing totals
BYTES_PER_WEIGHT = 4  # float32, as the trainer keeps and saves weights
CHECKPOINT_BYTES_PER_WEIGHT = 3 * BYTES_PER_WEIGHT  # the weights and AdamW's two moments
TOKENIZER_BYTES = 1_000_000  # vocab.txt + tokenizer.json of a BERT-like model, about
SAMPLE_TEXTS = 200  # texts tokenized to estimate the corpus's token count
REFERENCE_SHAPE = (6, 384, 1536, 30522)  # layers, hidden, intermediate, vocabulary of the default model
SPEEDUP_RANGE = (0.02, 10.0)  # small models are bound by per-step overhead, not by arithmetic


@dataclass(frozen=True)
class Pace:
    """Seconds per unit of work of one model on one device."""

    startup_s: float  # process start to the first step: imports, model load, tokenizing
    train_token_s: float  # per training token (batch × block length), backward and optimizer included
    eval_token_s: float  # per evaluated token (a forward pass)
    checkpoint_s: float  # per checkpoint: write, fsync, checksum, verify
    final_s: float  # saving the final model


# The default model, batch 16 × 128 tokens, on an idle 2-core CPU: 1.5 s a step (benchmarks/train.py:
# 1,329 tokens/s with one thread at load 1.4), and, in CPU time with one thread on a shared machine,
# an evaluation of 14 blocks at 0.27 of a step (0.45 s), a checkpoint 1.5 s (write, fsync, checksum and
# verify 270 MB), about 12 s from process start to the first step (imports 6 s, building the trainer
# 5 s). A busy machine is slower: the first finished run replaces these with what it measured there.
# GPU figures are rough (no GPU measurement).
REFERENCE_PACE = {
    "cpu": Pace(startup_s=12.0, train_token_s=1.5 / 2048, eval_token_s=0.45 / (14 * 128), checkpoint_s=1.5,
                final_s=0.5),
    "cuda": Pace(startup_s=25.0, train_token_s=1 / 60_000, eval_token_s=1 / 180_000, checkpoint_s=2.0,
                 final_s=1.0),
}
LSTM_SPEEDUP = 4.0


BUSY_LOAD = 1.0  # busy threads per core (the app's own included) from which the estimate warns it may take longer


def busy(load: float) -> bool:
    return load >= BUSY_LOAD * (os.cpu_count() or 1)


def others_load() -> float:
    """The 1-minute load average: other work on this machine, as a run about to start sees it."""
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this system
        return 0.0


# ----------------------------------------------------------------------------- sizes


def estimate_train_blocks(tokenizer, texts, seq_len: int, heldout_fraction: float) -> int:
    """Training blocks of the whole corpus, from the tokens per character of a sample.

    The sample is drawn from the whole corpus, not its first texts: a file whose first lines are plain
    prose and the rest tokenise into many more pieces per character (punctuation runs, digits, another
    script) would otherwise be underestimated several times over, and with it the run's time.
    """
    import random

    from mlm_core.text.tokens import tokenizer_lock

    texts = list(texts)
    chosen = random.Random(len(texts)).sample(range(len(texts)), min(SAMPLE_TEXTS, len(texts)))
    sample = [texts[i] for i in sorted(chosen)]
    if not sample:
        return 0
    with tokenizer_lock(tokenizer):
        counts = tokenizer(sample, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    per_char = sum(len(c) + 1 for c in counts) / max(1, sum(len(t) for t in sample))  # +1: separators
    tokens = per_char * sum(len(t) for t in texts) * (1 - heldout_fraction)
    return max(1, int(tokens // (seq_len - 2)))


def _model_config(model: str | None) -> dict | None:
    """config.json of ``model`` when it is on this machine (the default model's is packaged)."""
    from mlm_core.model.default_model import base_encoder_dir

    if model == "scratch-transformer":  # as training.build_model makes it
        return {"model_type": "bert", "vocab_size": REFERENCE_SHAPE[3], "hidden_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512}
    if model is None or model == DEFAULT_MODEL_NAME:
        path = Path(base_encoder_dir()) / "config.json"
    elif run_ref_id(model) is not None:  # a finished run's model: its own folder, not a path called "run:ID"
        from mlm_core.training.planning import resolve_run_model

        try:
            path = resolve_run_model(model) / "config.json"
        except MaskLabError:
            return None
    else:
        path = Path(model).expanduser() / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


def _model_shape(model: str | None) -> tuple[int, int, int, int] | None:
    data = _model_config(model)
    try:
        return (int(data["num_hidden_layers"]), int(data["hidden_size"]),
                int(data.get("intermediate_size") or 4 * data["hidden_size"]), int(data["vocab_size"]))
    except (KeyError, TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=16)
def parameter_count(model: str | None) -> int | None:
    """Weights of ``model`` as the trainer builds it, counted on the meta device (no memory); None: unknown."""
    import torch

    from mlm_core.training.scratch import LSTMForMaskedLM

    with torch.device("meta"):
        if model == "scratch-lstm":
            return sum(p.numel() for p in LSTMForMaskedLM(REFERENCE_SHAPE[3]).parameters())
        data = _model_config(model)
        if data is None:
            return None
        from mlm_core.model.loading import quiet_transformers, serialized_loading

        try:
            # from_config sets torch's default dtype for the whole process, and transformers' lazy imports
            # are not thread-safe on first use: one build, load or first import at a time
            with serialized_loading(), quiet_transformers():
                from transformers import AutoConfig, AutoModelForMaskedLM

                config = AutoConfig.for_model(**data)
                built = AutoModelForMaskedLM.from_config(config)
        except (ValueError, KeyError, TypeError, OSError):
            return None
        return sum(p.numel() for p in built.parameters())  # tied weights once, as safetensors stores them


@dataclass(frozen=True)
class DiskEstimate:
    model_bytes: int  # the final model folder
    checkpoint_bytes: int  # one checkpoint
    peak_bytes: int  # the most the run's folder holds while it goes
    final_bytes: int  # the finished run's folder


def checkpoints_written(config: TrainConfig, steps: int) -> int:
    """Checkpoints a run of ``steps`` steps writes (none at the last step: the model is saved instead)."""
    return max(0, (steps - 1) // max(1, config.checkpoint_every))


def estimate_disk(config: TrainConfig, steps: int, corpus_bytes: int) -> DiskEstimate | None:
    """Disk use of a run of ``config`` (None when the model's size is unknown)."""
    weights = parameter_count(config.model)
    if weights is None:
        return None
    model = weights * BYTES_PER_WEIGHT + TOKENIZER_BYTES
    checkpoint = weights * CHECKPOINT_BYTES_PER_WEIGHT
    final = model + corpus_bytes
    held = min(checkpoints_written(config, steps), config.keep_checkpoints + 1)  # + the one being written
    return DiskEstimate(model, checkpoint, final + held * checkpoint, final)


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (0 when it is gone)."""
    total = 0
    for path in Path(folder).rglob("*"):
        with contextlib.suppress(OSError):  # a checkpoint removed while we count
            if path.is_file():
                total += path.stat().st_size
    return total


def disk_note(folder: Path) -> str:
    """The run folder's measured disk use, in words: total, of which checkpoints and model."""
    folder = Path(folder)
    total, saves, model = (folder_bytes(folder), folder_bytes(folder / "checkpoints"),
                           folder_bytes(folder / "model"))
    parts = [f"model {format_bytes(model)}" if model else "", f"checkpoints {format_bytes(saves)}" if saves else ""]
    detail = ", ".join(p for p in parts if p)
    return f"On disk: {format_bytes(total)}" + (f" ({detail})" if detail else "")


def format_bytes(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit in ("B", "kB") else f"{size:,.1f} {unit}"
        size /= 1000
    return f"{size:,.1f} GB"


# ----------------------------------------------------------------------------- pace of a run


def write_pace(folder: Path, pace: dict) -> None:
    """Atomically replace the run's pace file (a reader never sees half of it)."""
    tmp = Path(folder) / f"{PACE_FILE}.tmp"
    tmp.write_text(json.dumps(pace))
    os.replace(tmp, Path(folder) / PACE_FILE)


def read_pace(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / PACE_FILE).read_text())
    except (OSError, ValueError):
        return None


def time_left(pace: dict | None, total: int, now: float | None = None) -> float | None:
    """Seconds left of a running run from its completed steps' rate; None before a step has ended.

    The rate is (when the last step ended − when the first ended) / steps ended since (the first step
    warms up, several times longer; while it is the only one, the rate is its time).
    From the last step's end it counts down, but never below one step less: it does not rise while
    a step runs, and it does not reach 0 before the last step.
    """
    if not pace or not total:
        return None
    done = pace.get("step", 0) - pace.get("first_step", 0)
    if done <= 0:
        return None
    now = time.time() if now is None else now
    if pace["step"] > pace.get("s1", pace["step"]):  # the first step warms up: after it, leave it out
        rate = max(0.0, pace["at"] - pace["t1"]) / (pace["step"] - pace["s1"])
    else:
        rate = max(0.0, pace["at"] - pace["t0"]) / done
    left = rate * max(0, total - pace["step"])
    return max(left - rate, left - max(0.0, now - pace["at"]), 0.0)


# ----------------------------------------------------------------------------- time estimate


@dataclass(frozen=True)
class Estimate:
    seconds: float
    steps: int
    parts: dict  # seconds by kind: start-up, training, evaluation, checkpoints, final save
    basis: str  # where the pace comes from, said in the UI
    measured: bool
    note: str = ""  # a busy machine: the run may take longer than estimated


def _pace_of(timing: dict, startup_s: float | None, fallback: Pace) -> Pace | None:
    """A finished run's ``Trainer.timing`` (and start-up) as a Pace; None when it measured no step."""
    steps = timing.get("steps") or 0
    if not steps:
        return None
    evals = timing.get("evals") or 0
    saves = timing.get("checkpoints") or 0
    tokens = timing["batch_size"] * timing["seq_len"]
    first = timing.get("first_step_s") or 0.0
    if steps > 1 and first:  # the first step's warm-up counts as start-up, the others give the step time
        step_s = (timing["step_s"] - first) / (steps - 1)
        warmup = max(0.0, first - step_s)
    else:
        step_s, warmup = timing["step_s"] / steps, 0.0
    pace = Pace(
        startup_s=(startup_s if startup_s is not None else fallback.startup_s) + warmup,
        train_token_s=step_s / tokens,
        eval_token_s=(timing["eval_s"] / (evals * max(1, timing["eval_blocks"]) * timing["seq_len"])
                      if evals else fallback.eval_token_s),
        checkpoint_s=timing["checkpoint_s"] / saves if saves else fallback.checkpoint_s,
        final_s=timing.get("final_s") or fallback.final_s,
    )
    return pace


def measured_pace(store: RunStore, model: str | None, device_type: str,
                  fallback: Pace) -> tuple[Pace, RunRecord, float | None] | None:
    """(pace, run, the load other work put on the machine meanwhile or None) of the latest finished
    run on the same model and device type that measured one, if any."""
    for record in store.list():  # newest first
        if record.status != FINISHED or record.config.get("model") != model:
            continue
        if (record.device or "").split(":")[0] != device_type:
            continue
        pace = read_pace(store.folder(record.id)) or {}
        measured = _pace_of(pace.get("timing") or {}, pace.get("startup_s"), fallback)
        if measured is not None:
            return measured, record, pace.get("load")
    return None


def _cost_per_token(shape: tuple[int, int, int, int]) -> float:
    """Multiply-adds per token of a BERT-like encoder, plus the vocabulary head at the 15% masked."""
    layers, hidden, intermediate, vocab = shape
    return layers * (4 * hidden * hidden + 2 * hidden * intermediate) + 0.15 * hidden * vocab


def default_pace(model: str | None, device_type: str) -> tuple[Pace, str]:
    """(pace, how it was made) for ``model`` on ``device_type`` with nothing measured on this machine."""
    reference = REFERENCE_PACE["cuda" if device_type == "cuda" else "cpu"]
    if model == "scratch-lstm":
        factor, how = 1 / LSTM_SPEEDUP, "the default model's measured pace, scaled to the scratch LSTM"
    elif (shape := _model_shape(model)) is None:
        return reference, "the default model's measured pace (this model's size is unknown)"
    else:
        low, high = SPEEDUP_RANGE
        factor = 1 / min(high, max(low, _cost_per_token(REFERENCE_SHAPE) / _cost_per_token(shape)))
        how = ("the pace measured with it on a 2-core CPU" if model in (None, DEFAULT_MODEL_NAME)
               else "the default model's measured pace, scaled to this model's size")
    size = (parameter_count(model) or parameter_count(None)) / parameter_count(None)
    return replace(reference, train_token_s=reference.train_token_s * factor,
                   eval_token_s=reference.eval_token_s * factor, checkpoint_s=reference.checkpoint_s * size,
                   final_s=reference.final_s * size), how


def evaluations(config: TrainConfig, steps: int) -> int:
    """Evaluations of a run: every ``eval_every`` steps and at the last step."""
    every = max(1, config.eval_every)
    return steps // every + (1 if steps % every else 0)


def estimate_time(store: RunStore, config: TrainConfig, device_type: str, train_blocks: int,
                  load: float | None = None) -> Estimate:
    """Seconds a run of ``config`` should take, from start to finish, by kind of work (see the module).

    ``load``: other work on the machine (default: the load average now); when it is busy, or the
    measured run ran on a busy machine, the basis says so (the time is not corrected for it).
    """
    batch = max(1, min(config.batch_size, train_blocks or config.batch_size))
    steps = config.total_steps(max(1, train_blocks))  # the trainer's count, over the estimated blocks
    load = (others_load() if load is None else load) if device_type != "cuda" else 0.0
    fallback, how = default_pace(config.model, device_type)
    found = measured_pace(store, config.model, device_type, fallback)
    if found:
        pace, record, then = found
        basis = f"the times run {record.id} measured on this device and model"
        if then is not None and busy(then):
            basis += f" while the machine was busy (load {then:.1f})"
    else:
        pace = fallback
        basis = f"{how} (no finished run on this device and model has measured it here yet)"
    note = ""
    if device_type != "cuda" and busy(load):
        note = (f"The machine is busy now (load {load:.1f} on {os.cpu_count()} cores): the run may take "
                "several times longer.")
    heldout_blocks = max(1, math.ceil(train_blocks * config.heldout_fraction / (1 - config.heldout_fraction)))
    eval_tokens = min(config.eval_blocks, heldout_blocks) * config.seq_len
    parts = {
        "start-up": pace.startup_s,
        "training": steps * batch * config.seq_len * pace.train_token_s,
        "evaluation": evaluations(config, steps) * eval_tokens * pace.eval_token_s,
        "checkpoints": checkpoints_written(config, steps) * pace.checkpoint_s,
        "final save": pace.final_s,
    }
    return Estimate(sum(parts.values()), steps, parts, basis, found is not None, note)


# ----------------------------------------------------------------------------- memory

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
LSTM_SHAPE = {"layers": 2, "hidden": 256, "intermediate": 0, "heads": 0}  # as scratch.LSTMForMaskedLM builds it


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


def _memory_shape(model: str | None) -> dict | None:
    """Layers, width, feed-forward width, heads and vocabulary of ``model`` from its config; None: unknown.

    Besides what ``_model_config`` finds (the default and scratch models, a finished run, a local
    folder), a hub model already in the local cache; nothing is downloaded.
    """
    if model == "scratch-lstm":
        return {**LSTM_SHAPE, "vocab": REFERENCE_SHAPE[3]}
    data = _model_config(model)  # the default and scratch models, a finished run, a local folder
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
        return {"layers": int(data.get("num_hidden_layers") or data["n_layers"]), "hidden": hidden,
                "intermediate": int(data.get("intermediate_size") or data.get("hidden_dim") or 4 * hidden),
                "heads": int(data.get("num_attention_heads") or data.get("n_heads") or 1),
                "vocab": int(data["vocab_size"])}
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _weights_of(model: str | None, shape: dict) -> int:
    """Parameter count: exact where ``parameter_count`` can build the model, else from the shape."""
    counted = parameter_count(model) if model is None or not model.startswith("run:") else None
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
    shape = _memory_shape(config.model)
    if shape is None:
        return None
    layers, h, i, heads, vocab = (shape[k] for k in ("layers", "hidden", "intermediate", "heads", "vocab"))
    s, b = config.seq_len, config.batch_size
    weights = _weights_of(config.model, shape)
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
