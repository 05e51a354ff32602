"""What a fine-tuning run costs: its time before it starts, its time left while it runs, its disk use
(its memory: ``memory.py``).

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

Memory: ``memory.py`` (the peak of a run, checked against what the machine has before it starts).

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
from mlm_core.training.config import RECURRENT_SCRATCH_MODELS, TrainConfig, is_scratch
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


SCRATCH_SIZE_SETTINGS = ("scratch_hidden", "scratch_layers", "scratch_heads", "scratch_embedding")


def scratch_sizes(config: TrainConfig) -> tuple:
    """A scratch model's sizes in ``config`` (``SCRATCH_SIZE_SETTINGS``' values), () for any other model."""
    return tuple(getattr(config, name) for name in SCRATCH_SIZE_SETTINGS) if is_scratch(config.model) else ()


def local_model_config(model: str | None, sizes: tuple = ()) -> dict | None:
    """config.json of ``model`` when it is on this machine (the default model's is packaged); a scratch
    model's at ``sizes`` (``scratch_sizes``; () for its default sizes)."""
    from mlm_core.model.default_model import base_encoder_dir

    if is_scratch(model):  # as training.build_model makes it
        from mlm_core.model.loading import serialized_loading
        from mlm_core.training.scratch import scratch_model_config

        config = TrainConfig(model=model, **dict(zip(SCRATCH_SIZE_SETTINGS, sizes, strict=False)))
        with serialized_loading():  # transformers' first imports are not thread-safe
            return scratch_model_config(config, REFERENCE_SHAPE[3]).to_dict()
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
    data = local_model_config(model)
    try:
        return (int(data["num_hidden_layers"]), int(data["hidden_size"]),
                int(data.get("intermediate_size") or 4 * data["hidden_size"]), int(data["vocab_size"]))
    except (KeyError, TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=16)
def parameter_count(model: str | None, sizes: tuple = ()) -> int | None:
    """Weights of ``model`` (a scratch model at ``sizes``) as the trainer builds it, counted on the meta
    device (no memory); None: unknown."""
    import torch

    with torch.device("meta"):
        data = local_model_config(model, sizes)
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
    weights = parameter_count(config.model, scratch_sizes(config))
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
        # less the tokenizing of a streamed corpus (over the upload limit), which a run on an upload does not spend
        startup_s=(startup_s if startup_s is not None else fallback.startup_s) + warmup
        - (timing.get("streamed_data_s") or 0.0),
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
    if model in RECURRENT_SCRATCH_MODELS:
        factor, how = 1 / LSTM_SPEEDUP, f"the default model's measured pace, scaled to the {model} model"
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
