"""The training loop: ``Trainer`` runs one MLM fine-tuning run and reports through ``TrainingCallbacks``.

The loop in one sentence: blocks of packed token ids (``data``) → the masking engine (static or
dynamic draws, rate schedule, adaptive scores) → logits only at masked positions → AdamW with
warm-up and linear decay → metrics and checkpoints through callbacks. Nothing here knows about
Streamlit or the run store; ``jobs.py`` binds the callbacks to the store.

Accelerate carries the device handling (GPU with bf16 autocast when present, else CPU) and
lets ``torchrun`` / ``accelerate launch`` run the same code in several processes (DDP; gloo on the
CPU, NCCL on GPUs). Each process takes every ``num_processes``-th row of the step's global batch,
from its ``process_index`` on, and masks those rows itself: a row's draw depends only on (seed,
epoch, row) (``DrawPolicy``), never on the process, so the union of the processes' masks is the
one-process run's. Each process's loss is its rows' summed token losses over the masked tokens
of the GLOBAL batch (one all-reduce of the count), times ``num_processes`` because DDP averages
gradients: the gradient is the one-process run's. Every process seeds the same dropout RNG, so a
run with dropout draws other dropout masks than a one-process run (the draws per row differ); with
dropout off the losses are the one-process run's. Adaptive masking's per-token losses are kept per
process, from its own rows. Only the main process evaluates, reports through the callbacks and
writes checkpoints and the final model; its ``should_stop`` (and any error in that reporting) is
agreed by all processes before each step, so all stop at the same step.

Resuming is exact on the CPU. The data order, every mask and the learning rate depend only on
(seed, epoch, block, step), so nothing but the step is saved for them; a checkpoint holds the
model's weights, the optimizer state, the RNG state, the adaptive per-token losses, the best
evaluation so far and the train losses since the last evaluation (see ``Trainer.save``). A
resumed run computes the same losses as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlm_core.errors import Cancelled, Diverged, InputError, MemoryLimitError
from mlm_core.masking import (
    CATEGORY_CODES,
    DrawPolicy,
    RandomMasking,
    Vocab,
    is_adaptive,
    mask_examples,
    strategy_from_params,
    with_rate,
)
from mlm_core.masking.parameters import parameter_mask
from mlm_core.model.forward import masked_logits
from mlm_core.text.corpus import Corpus, StreamedCorpus
from mlm_core.training import checkpoints, memory, tracking
from mlm_core.training.config import TrainConfig, rate_schedule
from mlm_core.training.data import prepare_data
from mlm_core.training.scratch import build_model

EVAL_MASK_SEED = 1234  # every run is evaluated on the same masks, so runs compare
EVAL_MLM_PROBABILITY = 0.15
MAX_OOM_RETRIES = 3
CATEGORY_NAMES = {code: name for name, code in CATEGORY_CODES.items()}


class TrainingCallbacks:
    """Hooks the trainer calls; override what you need (the run store binds all of them)."""

    def on_preparing(self, progress: dict) -> None:
        """A corpus too big to hold is being tokenized: ``{"done_bytes", "total_bytes", "eta_s"}``, every few s."""
    def on_start(self, info: dict) -> None: ...
    def on_step(self, step: int, total: int, loss: float) -> None: ...
    def on_eval(self, record: dict) -> None: ...
    def on_best(self, best: dict) -> None:
        """A new best evaluation: ``{"step", "heldout_loss", "masked_accuracy"}`` (after its ``on_eval``)."""
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    def should_stop(self) -> bool:
        return False


def apply_freezing(model, freeze: list[str]) -> None:
    for name, parameter in model.named_parameters():
        frozen = any(
            (rule == "embeddings" and "embeddings" in name)
            or (rule.startswith("layer.") and f".{rule}." in f".{name}")
            or (rule == "all-but-head" and not any(h in name for h in ("cls.", "lm_head", "vocab_", "predictions", "decoder")))
            for rule in freeze
        )
        parameter.requires_grad_(not frozen)
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError("Every parameter is frozen: unfreeze something to train.")


def pruning_masks(model, sparsity: float, kind: str = "magnitude", seed: int = 0) -> dict[str, torch.Tensor]:
    """Fixed parameter masks (W⊙M) over the encoder's weight matrices, by parameter name.

    ``magnitude``: one global threshold over all of them (the smallest weights go); ``random``: each matrix
    loses exactly ``sparsity`` of its weights, drawn from (seed, name), so every process draws the same.
    """
    if sparsity <= 0:
        return {}
    weights = {n: p for n, p in model.named_parameters() if p.dim() == 2 and "embeddings" not in n
               and p.requires_grad}
    if not weights:
        return {}
    if kind == "random":
        return {n: parameter_mask(p, sparsity, "random", DrawPolicy("static", seed).seed_for(n))
                for n, p in weights.items()}
    magnitudes = torch.cat([p.detach().abs().flatten() for p in weights.values()])
    threshold = torch.quantile(magnitudes.float()[:: max(1, magnitudes.numel() // 1_000_000)], sparsity)
    return {n: (p.detach().abs() > threshold) for n, p in weights.items()}



# ----------------------------------------------------------------------------- training


class Trainer:
    """Runs one training run; ``run()`` returns the final record (see ``TrainingCallbacks``)."""

    def __init__(self, config: TrainConfig, corpus: Corpus | StreamedCorpus, out_dir: Path,
                 callbacks: TrainingCallbacks | None = None, cache_dir: Path | None = None):
        from accelerate import Accelerator

        self.config = config
        self.out_dir = Path(out_dir)
        self.callbacks = callbacks or TrainingCallbacks()
        use_cpu = config.device == "cpu" or not torch.cuda.is_available()
        self.accelerator = Accelerator(cpu=use_cpu, mixed_precision="no" if use_cpu else "bf16",
                                       **tracking.accelerator_options(config.log_with, self.out_dir))
        self.model, self.tokenizer = build_model(config)
        self.vocab = Vocab.from_tokenizer(self.tokenizer)
        prepare_started = time.perf_counter()
        # Its progress and a stop between chunks: a GB takes about half an hour. (A streamed corpus trains in one
        # process, so no other process waits on this one's stop.)
        self.train_data, self.heldout = prepare_data(corpus, self.tokenizer, config, cache_dir,
                                                     self.callbacks.on_preparing, self.callbacks.should_stop)
        # A corpus too big to hold is tokenized as it is read (minutes a GB): not part of the next run's start-up.
        streamed_s = time.perf_counter() - prepare_started if isinstance(corpus, StreamedCorpus) else 0.0
        self.strategy = strategy_from_params(config.strategy, config.strategy_params)
        self.policy = DrawPolicy(config.masking, config.seed)
        self.schedule = rate_schedule(self.strategy, config, self.total_steps)
        apply_freezing(self.model, config.freeze)
        self.prune = pruning_masks(self.model, config.prune_sparsity, config.prune_mask, config.seed)
        with torch.no_grad():  # W⊙M from the first step on (after each step the masks are applied again)
            for name, parameter in self.model.named_parameters():
                if name in self.prune:
                    parameter.mul_(self.prune[name])
        self.trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.processes = self.accelerator.num_processes
        # True once training has ended at the same point on every process (finished, or a stop they all
        # agreed on): the main process then tells the others the run's final state (jobs.execute).
        self.ended_together = False
        if self.batch_size < self.processes:
            raise InputError(f"A batch of {self.batch_size} blocks cannot be split over {self.processes} "
                             "processes: use a batch of at least one block per process.")
        # fused: one kernel over all parameters; the default loops over them in Python on the CPU,
        # which cost more than the forward pass of the default model there.
        self.optimizer = torch.optim.AdamW([p for _, p in self.trainable], lr=config.lr,
                                           weight_decay=config.weight_decay, fused=True)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.micro_batches = 1  # raised when CUDA runs out of memory
        self.pending_losses: list[float] = []  # train losses since the last evaluation (checkpointed)
        self.token_loss = torch.full((self.vocab.vocab_size,), 1.0)  # adaptive: running loss per token id
        self.eval_batch = self._eval_masks()
        # Seconds spent per kind of work (totals and counts): the next run's time estimate is made from
        # them (planning.estimate_time), so it is measured on this machine with this model.
        self.timing = {"steps": 0, "step_s": 0.0, "evals": 0, "eval_s": 0.0, "checkpoints": 0,
                       "checkpoint_s": 0.0, "final_s": 0.0, "first_step_s": 0.0, "batch_size": self.batch_size,
                       "seq_len": config.seq_len, "eval_blocks": len(self.eval_batch[0].ids),
                       "streamed_data_s": streamed_s}

    # -- sizes and schedules

    @property
    def batch_size(self) -> int:
        return min(self.config.batch_size, len(self.train_data))

    @property
    def batches_per_epoch(self) -> int:
        return max(1, len(self.train_data) // self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.config.total_steps(len(self.train_data))

    def learning_rate(self, step: int) -> float:
        warmup = max(1, int(self.config.warmup_ratio * self.total_steps))
        if step < warmup:
            return self.config.lr * (step + 1) / warmup
        return self.config.lr * max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))

    def rows_for(self, step: int) -> tuple[list[int], int]:
        """Block indices of ``step`` and its epoch: a fresh permutation per (seed, epoch)."""
        epoch, offset = divmod(step, self.batches_per_epoch)
        order = torch.randperm(len(self.train_data), generator=torch.Generator().manual_seed(
            self.config.seed * 1_000_003 + epoch))
        start = offset * self.batch_size
        return order[start : start + self.batch_size].tolist(), epoch

    # -- masking

    def attention(self, masked, rows: torch.Tensor) -> torch.Tensor:
        """(b, T) int64 attention mask of ``rows``: 0 for padding and attention-excluded tokens."""
        ids = masked.original_ids[rows]
        pad = self.tokenizer.pad_token_id
        real = torch.ones_like(ids) if pad is None else (ids != pad).long()
        return real.masked_fill(masked.attention_exclude[rows], 0)

    def _eval_masks(self):
        rows = list(range(min(self.config.eval_blocks, len(self.heldout))))
        batch = self.heldout.batch(rows, self.vocab)
        policy = DrawPolicy("static", EVAL_MASK_SEED)
        return batch, mask_examples(batch, RandomMasking(EVAL_MLM_PROBABILITY), self.vocab, rows, 0, policy)

    def mask(self, rows: list[int], epoch: int, step: int):
        batch = self.train_data.batch(rows, self.vocab)
        rate = self.schedule.rate(step)
        strategy = with_rate(self.strategy, rate)
        if is_adaptive(self.strategy):
            batch = dataclasses.replace(batch, scores=self.token_loss[batch.ids])
        return mask_examples(batch, strategy, self.vocab, rows, epoch, self.policy), rate

    # -- checkpoints

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        model = self.accelerator.unwrap_model(self.model)
        return {name: p.detach() for name, p in model.state_dict().items()}

    def save(self, step: int, best: dict) -> Path:
        """Checkpoint ``step`` (see ``checkpoints``): what an exact resume needs and nothing it can recompute.

        model.safetensors: every weight (tied copies once); optimizer.safetensors: AdamW's tensors,
        the torch (and CUDA) RNG state, the adaptive per-token losses; state.json: the step, the best
        evaluation, AdamW's other state and hyper-parameters, the micro-batch split and the train losses
        since the last evaluation. The data order, the masks and the learning rate follow from the step.
        """
        optimizer_tensors, optimizer_rest = checkpoints.flatten_optimizer(self.optimizer.state_dict())
        optimizer_tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            optimizer_tensors["rng.cuda"] = torch.cuda.get_rng_state()
        optimizer_tensors["adaptive.token_loss"] = self.token_loss.clone()
        state = {"step": step, "best": best, "optimizer": optimizer_rest, "micro_batches": self.micro_batches,
                 "pending_losses": self.pending_losses}
        path = checkpoints.save_checkpoint(self.out_dir / "checkpoints", step, self._unique_tensors(),
                                           optimizer_tensors, state)
        # Only what resume needs: older checkpoints go once this one verifies (config.keep_checkpoints).
        checkpoints.retain(self.out_dir / "checkpoints", self.config.keep_checkpoints)
        return path

    def _unique_tensors(self) -> dict[str, torch.Tensor]:
        """State dict without tied duplicates (safetensors refuses shared storage)."""
        seen, tensors = set(), {}
        for name, tensor in self._state_tensors().items():
            key = (tensor.data_ptr(), tensor.shape)
            if key in seen:
                continue
            seen.add(key)
            tensors[name] = tensor.contiguous()
        return tensors

    def restore(self, checkpoint: Path) -> tuple[int, dict]:
        return self.restore_loaded(*checkpoints.load_checkpoint(checkpoint))

    def restore_loaded(self, model_tensors: dict, optimizer_tensors: dict, state: dict) -> tuple[int, dict]:
        """``restore`` from a checkpoint already read (``checkpoints.load_checkpoint``); returns (step, best)."""
        optimizer_tensors = dict(optimizer_tensors)
        model = self.accelerator.unwrap_model(self.model)
        model.load_state_dict(model_tensors, strict=False)
        torch.set_rng_state(optimizer_tensors.pop("rng.torch"))
        if "rng.cuda" in optimizer_tensors:
            cuda_state = optimizer_tensors.pop("rng.cuda")
            if torch.cuda.is_available():
                torch.cuda.set_rng_state(cuda_state)
        self.token_loss = optimizer_tensors.pop("adaptive.token_loss")
        self.optimizer.load_state_dict(checkpoints.unflatten_optimizer(optimizer_tensors, state["optimizer"]))
        self.micro_batches = state.get("micro_batches", 1)
        self.pending_losses = list(state.get("pending_losses", []))
        return state["step"], state["best"]

    # -- the loop

    def train_step(self, step: int) -> tuple[float, int, float]:
        rows, epoch = self.rows_for(step)
        # Several processes (torchrun, accelerate launch): each takes its share of the global batch (see
        # the module's docstring). One process (the default) takes every row.
        rows = rows[self.accelerator.process_index :: self.processes]
        masked, rate = self.mask(rows, epoch, step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        device = self.accelerator.device
        total_loss, tokens = 0.0, 0
        n_chosen = int((masked.labels != -100).sum())
        if self.processes > 1:  # the mean over the GLOBAL batch's masked tokens
            n_chosen = int(self._sum_over_processes([n_chosen])[0])
        n_chosen = max(1, n_chosen)
        for part in torch.arange(len(rows)).chunk(self.micro_batches):
            labels = masked.labels[part].to(device)
            chosen = labels != -100
            if not chosen.any():
                if self.processes == 1:
                    continue
                # DDP all-reduces gradients inside every backward pass: each process must run as many. A
                # part with nothing masked takes its first position, whose label (-100) adds no loss.
                chosen = torch.zeros_like(chosen)
                chosen[0, 0] = True
            inputs = masked.input_ids[part].to(device)
            attention = self.attention(masked, part).to(device)
            with self.accelerator.autocast():
                logits = masked_logits(self.model, inputs, attention, chosen)  # (M, V)
                losses = nn.functional.cross_entropy(logits.float(), labels[chosen], reduction="none")
            loss = losses.sum() / n_chosen  # this part's share of the global batch's mean, whatever the split
            if self.processes == 1 and not torch.isfinite(loss):
                raise Diverged(f"the loss became {loss.item()} at step {step + 1}")
            self.accelerator.backward(loss * self.processes)  # DDP averages the processes' gradients
            total_loss += loss.item()
            tokens += int(attention.sum())
            with torch.no_grad():  # adaptive masking: remember which tokens are hard
                targets = labels[chosen]
                real = targets != -100
                ids = targets[real].cpu()
                self.token_loss[ids] = 0.9 * self.token_loss[ids] + 0.1 * losses.detach()[real].float().cpu()
        if self.processes > 1:  # the global batch's loss and tokens; a NaN anywhere stops every process
            total_loss, tokens = self._sum_over_processes([total_loss, tokens])
            tokens = int(tokens)
            if not math.isfinite(total_loss):
                self.ended_together = True
                raise Diverged(f"the loss became {total_loss} at step {step + 1}")
        if self.config.grad_clip:
            self.accelerator.clip_grad_norm_([p for _, p in self.trainable], self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.prune:
            with torch.no_grad():
                for name, parameter in self.trainable:
                    if name in self.prune:
                        parameter.mul_(self.prune[name])
        return total_loss, tokens, rate

    def _sum_over_processes(self, values: list[float]) -> list[float]:
        """Each value summed over every process (one all-reduce; float64 keeps losses exact enough)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def _agreed(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any: the processes stop at the same step."""
        if self.processes == 1:
            return flag
        return self._sum_over_processes([float(flag)])[0] > 0

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        model = self.accelerator.unwrap_model(self.model)  # no DDP hooks: only the main process evaluates
        batch, masked = self.eval_batch
        device = self.accelerator.device
        loss_sum, count, top1, top5 = 0.0, 0, 0, 0
        per_category: dict[str, list[int]] = {}
        for part in torch.arange(batch.shape[0]).split(16):
            labels = masked.labels[part].to(device)
            chosen = labels != -100
            if not chosen.any():
                continue
            attention = self.attention(masked, part).to(device)
            with self.accelerator.autocast():
                logits = masked_logits(model, masked.input_ids[part].to(device), attention, chosen).float()
            targets = labels[chosen]
            loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
            best = logits.topk(5, dim=-1).indices
            hit1 = (best[:, 0] == targets).cpu()
            hit5 = (best == targets[:, None]).any(-1).cpu()
            count += len(targets)
            top1 += int(hit1.sum())
            top5 += int(hit5.sum())
            codes = batch.categories[part][chosen.cpu()]
            for code in codes.unique().tolist():
                name = CATEGORY_NAMES.get(code, "other")
                selected = codes == code
                stats = per_category.setdefault(name, [0, 0, 0])
                stats[0] += int(selected.sum())
                stats[1] += int(hit1[selected].sum())
                stats[2] += int(hit5[selected].sum())
        self.model.train()
        if count == 0:
            return {}
        loss = loss_sum / count
        return {
            "heldout_loss": loss,
            "perplexity": math.exp(min(loss, 50)),
            "masked_accuracy": top1 / count,
            "masked_top5": top5 / count,
            "heldout_masked_tokens": count,
            "by_category": {k: {"n": n, "top1": a / n, "top5": b / n} for k, (n, a, b) in per_category.items()},
        }

    def run(self, resume_from: Path | None = None) -> dict:
        """Train to ``total_steps`` (from ``resume_from``, a checkpoint, when given); the final record.

        Several processes: only the main process's ``resume_from`` is read; it sends the checkpoint
        to the others (one broadcast), so they need no access to its folder.
        """
        self.model.train()
        step, best = 0, {}
        torch.manual_seed(self.config.seed)  # dropout draws from the global RNG: same seed, same run
        loaded = checkpoints.load_checkpoint(resume_from) if resume_from is not None else None
        if self.processes > 1:
            from accelerate.utils import broadcast_object_list

            shared = [loaded if self.accelerator.is_main_process else None]
            broadcast_object_list(shared, from_process=0)
            loaded = shared[0]
        if loaded is not None:
            step, best = self.restore_loaded(*loaded)  # ...and a resumed run continues its RNG state
        device = self.accelerator.device
        # Only the main process reports (the others' callbacks do nothing); an error there is held until
        # every process has agreed to stop, so none is left waiting for the others in an all-reduce.
        held: list[Exception] = []
        self._report(held, self.callbacks.on_start, {
            "device": str(device), "total_steps": self.total_steps, "train_blocks": len(self.train_data),
            "heldout_blocks": len(self.heldout), "resumed_from": step, "best": best,
            "world_size": self.processes})
        self._report(held, tracking.start, self.accelerator, self.config.to_dict())  # TrainConfig.log_with
        busy, tokens_since = 0.0, 0  # busy: seconds spent in training steps
        record: dict = {}
        while step < self.total_steps:
            stop = not held and self._report(held, self.callbacks.should_stop)
            if self._agreed(bool(stop or held)):
                self.ended_together = True
                if held:
                    raise held[0]
                raise Cancelled(step)
            tick = time.perf_counter()
            loss, tokens, rate = self._step_with_oom_retry(step)
            busy += time.perf_counter() - tick
            self._timed("step", tick)
            step += 1
            tokens_since += tokens
            self.pending_losses.append(loss)
            self._report(held, self.callbacks.on_step, step, self.total_steps, loss)
            if step % self.config.eval_every == 0 or step == self.total_steps:
                if self.accelerator.is_main_process:
                    tick = time.perf_counter()
                    record = {"step": step, "train_loss": float(np.mean(self.pending_losses)),
                              "lr": self.learning_rate(step - 1), "masking_rate": rate,
                              "tokens_per_s": tokens_since / max(busy, 1e-9), "time": time.time(),
                              "world_size": self.processes, **self.evaluate()}
                    self._timed("eval", tick)
                    improved = record.get("heldout_loss", math.inf) < best.get("heldout_loss", math.inf)
                    if improved:  # the one place the best is kept: it is checkpointed and reported from here
                        best = {"step": step, "heldout_loss": record["heldout_loss"],
                                "masked_accuracy": record["masked_accuracy"]}
                    self._report(held, self.callbacks.on_eval, record)
                    self._report(held, tracking.log_evaluation, self.accelerator, record)
                    if improved:
                        self._report(held, self.callbacks.on_best, best)
                busy, tokens_since, self.pending_losses = 0.0, 0, []
            due = step % self.config.checkpoint_every == 0 and step < self.total_steps
            if due and self.accelerator.is_main_process and not held:  # one writer of checkpoints
                tick = time.perf_counter()
                path = self._report(held, self.save, step, best)
                self._timed("checkpoint", tick)
                if path is not None:
                    self._report(held, self.callbacks.on_checkpoint, step, path)
        ended = self._agreed(bool(held))
        self.ended_together = True
        if ended:
            if held:
                raise held[0]
            raise Cancelled(step)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            tick = time.perf_counter()
            self.save_final_model()
            self.timing["final_s"] = time.perf_counter() - tick
            tracking.finish(self.accelerator)  # closes the trackers (nothing without them)
        return {"step": step, "best": best, "timing": dict(self.timing), **record}

    def _report(self, held: list[Exception], action, *args):
        """``action(*args)``; with several processes an error is kept in ``held`` (raised once all agree)."""
        if self.processes == 1:
            return action(*args)
        if held:
            return None
        try:
            return action(*args)
        except Exception as exc:  # noqa: BLE001 - raised at the next agreement, on this process
            held.append(exc)
            return None

    def _timed(self, kind: str, since: float) -> None:
        seconds = time.perf_counter() - since
        if kind == "step" and not self.timing["steps"]:  # the first step warms up (several times longer)
            self.timing["first_step_s"] = seconds
        self.timing[f"{kind}s"] += 1
        self.timing[f"{kind}_s"] += seconds

    def _step_with_oom_retry(self, step: int):
        for attempt in range(MAX_OOM_RETRIES + 1):
            try:
                return self.train_step(step)
            except torch.cuda.OutOfMemoryError:
                if self.processes > 1:  # a smaller split on one process only would desynchronise DDP
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                if attempt == MAX_OOM_RETRIES or self.micro_batches >= self.batch_size:
                    raise
                self.micro_batches *= 2  # same effective batch, smaller pieces
            except (MemoryError, RuntimeError) as exc:  # the CPU out of memory: end the run with a message
                if not memory.out_of_cpu_memory(exc):
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                raise MemoryLimitError(memory.out_of_memory_message(self.batch_size, self.config.seq_len, step + 1)) from None
        raise AssertionError("unreachable")

    def save_final_model(self) -> Path:
        """The trained model as a normal Hugging Face folder (safetensors), loadable anywhere."""
        folder = self.out_dir / "model"
        tmp = self.out_dir / "model.tmp"
        model = self.accelerator.unwrap_model(self.model)
        try:
            from mlm_core.model.loading import quiet_transformers

            with quiet_transformers():  # every model, the recurrent ones too, is a transformers model class
                model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
        except Exception:
            # A disk that fills up here leaves a half-written copy: it only takes space, and the run's
            # checkpoints (kept until it is marked finished) are what it resumes from.
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        return folder
