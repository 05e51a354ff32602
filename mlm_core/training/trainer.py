"""MLM fine-tuning with any masking scheme, reporting through callbacks.

The loop in one sentence: blocks of packed token ids → the masking engine (static or
dynamic draws, rate schedule, adaptive scores) → logits only at masked positions →
AdamW with warm-up and linear decay → metrics and checkpoints through callbacks. Nothing
here knows about Streamlit or the run store; ``jobs.py`` binds the callbacks to the store.

Accelerate carries the device handling (GPU with bf16 autocast when present, else CPU) and
lets ``accelerate launch`` run the same code on several GPUs.

Resuming is exact on the CPU: the data order and every mask depend only on (seed, epoch,
block), and the checkpoint holds the trainable weights, the optimizer, the RNG state and
the adaptive statistics, so a resumed run computes the same losses as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mlm_core.errors import Cancelled, Diverged, InputError
from mlm_core.masking import (
    CATEGORY_CODES,
    AdaptiveMasking,
    Compose,
    DrawPolicy,
    RandomMasking,
    RateSchedule,
    RuleBased,
    TokenBatch,
    Vocab,
    mask_examples,
    strategy_from_params,
    with_rate,
)
from mlm_core.text.corpus import Corpus
from mlm_core.text.privacy import PrivacyMasking
from mlm_core.text.tokens import tokenizer_lock, word_category
from mlm_core.training import checkpoints

SCRATCH_MODELS = ("scratch-transformer", "scratch-lstm")
EVAL_MASK_SEED = 1234  # every run is evaluated on the same masks, so runs compare
EVAL_MLM_PROBABILITY = 0.15
MAX_OOM_RETRIES = 3
CATEGORY_NAMES = {code: name for name, code in CATEGORY_CODES.items()}


@dataclass
class TrainConfig:
    """Everything a run needs; stored as the run's config.json. Defaults suit a CPU demo."""

    corpus_name: str = "corpus.txt"  # display name; its suffix picks the format
    corpus_column: str | None = None  # the text column of a CSV/TSV/JSONL corpus
    text_unit: str = "line"  # txt corpora: one text per line or per paragraph
    model: str | None = None  # hub id, folder, None (default model) or one of SCRATCH_MODELS
    strategy: str = "random"
    strategy_params: dict = field(default_factory=dict)
    masking: str = "dynamic"  # static: one mask per block for the whole run; dynamic: new each epoch
    rate_schedule: str = "constant"  # constant | linear | cosine (from rate_start to rate_end)
    rate_start: float | None = None  # None: the strategy's own rate
    rate_end: float | None = None
    steps: int | None = 200  # or epochs (steps wins when both are set)
    epochs: float | None = None
    batch_size: int = 16
    seq_len: int = 128  # block length, special tokens included
    lr: float = 5e-5
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    freeze: list[str] = field(default_factory=list)  # "embeddings", "layer.N", "all-but-head"
    prune_sparsity: float = 0.0  # magnitude pruning of encoder weights, masks fixed during training
    heldout_fraction: float = 0.05
    eval_every: int = 50
    eval_blocks: int = 64  # held-out blocks per evaluation (bounded cost)
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    device: str | None = None  # None: GPU when present

    def __post_init__(self) -> None:
        problems = []
        if self.masking not in ("static", "dynamic"):
            problems.append("masking must be static or dynamic")
        if self.rate_schedule not in ("constant", "linear", "cosine"):
            problems.append("rate_schedule must be constant, linear or cosine")
        if self.steps is None and self.epochs is None:
            problems.append("give steps or epochs")
        if self.steps is not None and not 1 <= self.steps <= 1_000_000:
            problems.append("steps must be from 1 to 1,000,000")
        if self.epochs is not None and not 0 < self.epochs <= 1000:
            problems.append("epochs must be above 0 and at most 1000")
        if not 1 <= self.batch_size <= 4096:
            problems.append("batch_size must be from 1 to 4096")
        if not 8 <= self.seq_len <= 4096:
            problems.append("seq_len must be from 8 to 4096")
        if not 0 < self.lr < 1:
            problems.append("lr must be between 0 and 1")
        if not 0 <= self.prune_sparsity < 1:
            problems.append("prune_sparsity must be in [0, 1)")
        if not 0 < self.heldout_fraction < 0.5:
            problems.append("heldout_fraction must be between 0 and 0.5")
        for name in ("eval_every", "eval_blocks", "checkpoint_every", "keep_checkpoints"):
            if not 1 <= getattr(self, name) <= 1_000_000:  # 0 would divide by zero or keep no checkpoint
                problems.append(f"{name} must be from 1 to 1,000,000")
        if not 0 <= self.warmup_ratio < 1:
            problems.append("warmup_ratio must be in [0, 1)")
        if self.weight_decay < 0 or self.grad_clip < 0:
            problems.append("weight_decay and grad_clip must not be negative")
        for rate in (self.rate_start, self.rate_end):
            if rate is not None and not 0 < rate <= 1:
                problems.append("masking rates must be in (0, 1]")
        if problems:
            raise InputError("Training settings: " + "; ".join(problems) + ".")
        strategy_from_params(self.strategy, self.strategy_params)  # validates (raises InputError)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class TrainingCallbacks:
    """Hooks the trainer calls; override what you need (the run store binds all of them)."""

    def on_start(self, info: dict) -> None: ...
    def on_step(self, step: int, total: int, loss: float) -> None: ...
    def on_eval(self, record: dict) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    def should_stop(self) -> bool:
        return False






# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PackedData:
    """Blocks of ``seq_len`` tokens, each ``[CLS] content [SEP]``; word ids are block-local."""

    ids: torch.Tensor  # (N, L) int64
    word_ids: torch.Tensor  # (N, L) int64, -1 at specials and padding
    categories: torch.Tensor  # (N, L) int8 codes
    special: torch.Tensor  # (N, L) bool
    words: tuple[tuple[str, ...], ...] | None  # per block, word id → text (only for word-list/regex rules)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batch(self, rows: list[int], vocab: Vocab) -> TokenBatch:
        index = torch.tensor(rows)
        return TokenBatch.from_ids(
            self.ids[index],
            vocab,
            special_tokens_mask=self.special[index],
            word_ids=self.word_ids[index],
            categories=self.categories[index],
            words=None if self.words is None else [self.words[r] for r in rows],
        )


def split_texts(texts: tuple[str, ...], heldout_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split by a hash of each text (stable when the file grows)."""
    train, heldout = [], []
    for text in texts:
        bucket = int(hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) / 0xFFFFFFFF
        (heldout if bucket < heldout_fraction else train).append(text)
    if len(texts) < 2:
        raise InputError("The corpus is too small: it needs at least two texts (one is held out).")
    if not heldout:
        heldout.append(train.pop())
    if not train:
        train.append(heldout.pop())
    return train, heldout


def pack(texts: list[str], tokenizer, seq_len: int, keep_words: bool) -> PackedData:
    """Tokenize ``texts`` once and cut the stream into full blocks (no padding waste).

    Texts are separated by the tokenizer's separator token; a short final remainder is
    padded so small corpora still give at least one block.
    """
    separator = tokenizer.sep_token_id
    content = seq_len - 2
    ids: list[int] = []
    words: list[int] = []
    cats: list[int] = []
    word_texts: list[str] = []
    for start in range(0, len(texts), 512):
        chunk = texts[start : start + 512]
        with tokenizer_lock(tokenizer):  # the app's preview shares this tokenizer with other sessions
            encoded = tokenizer(chunk, add_special_tokens=False, split_special_tokens=True,
                                return_offsets_mapping=True)
        for row, text in enumerate(chunk):
            word_ids = encoded.word_ids(row)
            offsets = encoded["offset_mapping"][row]
            spans: dict[int, list[int]] = {}
            for w, (s, e) in zip(word_ids, offsets):
                span = spans.setdefault(w, [s, e])
                span[1] = e
            base = len(word_texts)
            for w in sorted(spans):
                word_texts.append(text[spans[w][0] : spans[w][1]])
            codes = {w: CATEGORY_CODES[word_category(word_texts[base + i])] for i, w in enumerate(sorted(spans))}
            order = {w: i for i, w in enumerate(sorted(spans))}
            ids.extend(encoded["input_ids"][row])
            words.extend(base + order[w] for w in word_ids)
            cats.extend(codes[w] for w in word_ids)
            if separator is not None:
                ids.append(separator)
                words.append(-1)
                cats.append(CATEGORY_CODES["special"])
    if not ids:
        raise InputError("The corpus produced no tokens for this model.")
    n_blocks = max(1, len(ids) // content)
    total = n_blocks * content
    pad_to = total - len(ids) if len(ids) < total else 0
    stream_ids = np.array(ids[:total] + [tokenizer.pad_token_id or 0] * pad_to, dtype=np.int64).reshape(n_blocks, content)
    stream_words = np.array(words[:total] + [-1] * pad_to, dtype=np.int64).reshape(n_blocks, content)
    stream_cats = np.array(cats[:total] + [CATEGORY_CODES["special"]] * pad_to, dtype=np.int8).reshape(n_blocks, content)
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end_id = separator if separator is not None else tokenizer.eos_token_id
    block_ids = np.concatenate(
        [np.full((n_blocks, 1), cls_id), stream_ids, np.full((n_blocks, 1), end_id)], axis=1
    )
    special = np.isin(block_ids, list(set(tokenizer.all_special_ids)))
    block_words = np.concatenate([np.full((n_blocks, 1), -1), stream_words, np.full((n_blocks, 1), -1)], axis=1)
    block_words = np.where(special, -1, block_words)
    block_cats = np.concatenate(
        [np.full((n_blocks, 1), CATEGORY_CODES["special"], dtype=np.int8), stream_cats,
         np.full((n_blocks, 1), CATEGORY_CODES["special"], dtype=np.int8)], axis=1
    )
    local_words = None
    if keep_words:
        local_words = []
        for b in range(n_blocks):
            present = block_words[b][block_words[b] >= 0]
            low = int(present.min()) if present.size else 0
            high = int(present.max()) if present.size else -1
            local_words.append(tuple(word_texts[low : high + 1]))
            block_words[b] = np.where(block_words[b] >= 0, block_words[b] - low, -1)
    else:
        # Make ids block-local anyway: word runs are what strategies use.
        lows = np.where(block_words >= 0, block_words, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
        block_words = np.where(block_words >= 0, block_words - np.minimum(lows, block_words.max() + 1), -1)
    return PackedData(
        ids=torch.from_numpy(block_ids),
        word_ids=torch.from_numpy(block_words),
        categories=torch.from_numpy(block_cats),
        special=torch.from_numpy(special),
        words=None if local_words is None else tuple(local_words),
    )


def strategy_steps(strategy) -> tuple:
    return tuple(strategy.steps) if isinstance(strategy, Compose) else (strategy,)


def privacy_step(strategy) -> PrivacyMasking | None:
    return next((s for s in strategy_steps(strategy) if isinstance(s, PrivacyMasking)), None)


def training_texts(texts: tuple[str, ...], strategy, tokenizer) -> tuple[str, ...]:
    """The corpus as the model will read it: personal data replaced first when the strategy says so."""
    privacy = privacy_step(strategy)
    if privacy is None:
        return texts
    return tuple(privacy.apply(text, mask_token=tokenizer.mask_token).text for text in texts)


def rate_schedule(strategy, config: TrainConfig, total_steps: int) -> RateSchedule:
    """The masking rate over the run: config's start/end, else the strategy's own rate throughout."""
    base = next(  # the first step with a rate (a combined strategy's protect rules have none)
        (s.mlm_probability for s in strategy_steps(strategy) if hasattr(s, "mlm_probability")), 0.15
    )
    start = config.rate_start if config.rate_start is not None else base
    end = config.rate_end if config.rate_end is not None else start
    return RateSchedule(config.rate_schedule, start, end, max(1, total_steps))


def needs_word_texts(strategy) -> bool:
    """Word-list and regex rules look at word texts; the other strategies need only ids."""
    return any(isinstance(s, RuleBased) and s.rule in ("words", "regex") for s in strategy_steps(strategy))


def is_adaptive(strategy) -> bool:
    return any(isinstance(s, AdaptiveMasking) for s in strategy_steps(strategy))


def prepare_data(corpus: Corpus, tokenizer, config: TrainConfig, cache_dir: Path | None):
    """(train, heldout) packed data, cached by (corpus hash, tokenizer, block length, split)."""
    strategy = strategy_from_params(config.strategy, config.strategy_params)
    keep_words = needs_word_texts(strategy)
    privacy = privacy_step(strategy)
    key = hashlib.sha256(
        f"{corpus.sha256}|{corpus.column}|{tokenizer.name_or_path}|{len(tokenizer)}|{config.seq_len}|"
        f"{config.heldout_fraction}|{keep_words}|{privacy!r}".encode()
    ).hexdigest()[:24]
    if cache_dir is not None and not keep_words:
        cached = cache_dir / f"blocks-{key}.safetensors"
        if cached.exists():
            tensors = load_file(str(cached))
            return tuple(
                PackedData(tensors[f"{s}.ids"], tensors[f"{s}.word_ids"], tensors[f"{s}.categories"],
                           tensors[f"{s}.special"], None)
                for s in ("train", "heldout")
            )
    train_texts, heldout_texts = split_texts(training_texts(corpus.texts, strategy, tokenizer),
                                             config.heldout_fraction)
    train = pack(train_texts, tokenizer, config.seq_len, keep_words)
    heldout = pack(heldout_texts, tokenizer, config.seq_len, keep_words)
    if cache_dir is not None and not keep_words:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, data in (("train", train), ("heldout", heldout)):
            tensors.update({f"{name}.ids": data.ids, f"{name}.word_ids": data.word_ids,
                            f"{name}.categories": data.categories, f"{name}.special": data.special})
        tmp = cache_dir / f"blocks-{key}.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(cache_dir / f"blocks-{key}.safetensors")
    return train, heldout


# ----------------------------------------------------------------------------- models


class LSTMForMaskedLM(nn.Module):
    """A bidirectional LSTM masked LM for contrast with Transformers (no attention weights)."""

    def __init__(self, vocab_size: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, hidden)
        self.lstm = nn.LSTM(hidden, hidden // 2, num_layers=layers, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(hidden)
        self.decoder = nn.Linear(hidden, vocab_size)
        self.config = {"model_type": "lstm", "vocab_size": vocab_size, "hidden": hidden, "layers": layers}

    def hidden_states(self, input_ids, attention_mask=None):
        embedded = self.embeddings(input_ids)
        if attention_mask is not None:
            embedded = embedded * attention_mask.unsqueeze(-1)  # excluded/padding tokens carry nothing
        return self.norm(self.lstm(embedded)[0])  # (B, T, H)

    def forward(self, input_ids, attention_mask=None):
        return self.decoder(self.hidden_states(input_ids, attention_mask))


def build_model(config: TrainConfig):
    """(model in train mode, tokenizer) — a fresh copy, never the app's shared one."""
    from mlm_core.model import loading as models

    if config.model in SCRATCH_MODELS:
        from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

        from mlm_core.model.default_model import base_encoder_dir

        tokenizer = AutoTokenizer.from_pretrained(base_encoder_dir())
        torch.manual_seed(config.seed)
        if config.model == "scratch-lstm":
            return LSTMForMaskedLM(len(tokenizer)), tokenizer
        small = BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=512, max_position_embeddings=max(512, config.seq_len))
        return BertForMaskedLM(small), tokenizer
    loaded = models.load_fresh(config.model)
    return loaded.model, loaded.tokenizer


def _encoder_and_head(model) -> tuple[Callable, Callable] | None:
    """Functions (hidden states, head) for known masked-LM families, so logits are computed
    only at masked positions: the vocabulary projection is most of a small model's compute."""
    if isinstance(model, LSTMForMaskedLM):
        return model.hidden_states, model.decoder
    kind = getattr(model.config, "model_type", "")
    if kind == "bert":
        return (lambda i, a: model.bert(input_ids=i, attention_mask=a).last_hidden_state), model.cls
    if kind in ("roberta", "xlm-roberta", "camembert"):
        return (lambda i, a: model.roberta(input_ids=i, attention_mask=a).last_hidden_state), model.lm_head
    if kind == "distilbert":
        def head(hidden):
            hidden = model.vocab_layer_norm(model.activation(model.vocab_transform(hidden)))
            return model.vocab_projector(hidden)
        return (lambda i, a: model.distilbert(input_ids=i, attention_mask=a).last_hidden_state), head
    if kind == "albert":
        return (lambda i, a: model.albert(input_ids=i, attention_mask=a).last_hidden_state), model.predictions
    return None


def masked_logits(model, input_ids, attention_mask, chosen) -> torch.Tensor:
    """(M, V) logits at the ``chosen`` positions (M = chosen.sum())."""
    parts = _encoder_and_head(model)
    if parts is None:  # unknown family: full logits, then pick
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[chosen]
    encoder, head = parts
    return head(encoder(input_ids, attention_mask)[chosen])


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


def pruning_masks(model, sparsity: float) -> dict[str, torch.Tensor]:
    """Global magnitude pruning over the encoder's weight matrices; masks stay fixed."""
    if sparsity <= 0:
        return {}
    weights = {n: p for n, p in model.named_parameters() if p.dim() == 2 and "embeddings" not in n
               and p.requires_grad}
    if not weights:
        return {}
    magnitudes = torch.cat([p.detach().abs().flatten() for p in weights.values()])
    threshold = torch.quantile(magnitudes.float()[:: max(1, magnitudes.numel() // 1_000_000)], sparsity)
    return {n: (p.detach().abs() > threshold) for n, p in weights.items()}


# ----------------------------------------------------------------------------- training


class Trainer:
    """Runs one training run; ``run()`` returns the final record (see ``TrainingCallbacks``)."""

    def __init__(self, config: TrainConfig, corpus: Corpus, out_dir: Path,
                 callbacks: TrainingCallbacks | None = None, cache_dir: Path | None = None):
        from accelerate import Accelerator

        self.config = config
        self.out_dir = Path(out_dir)
        self.callbacks = callbacks or TrainingCallbacks()
        use_cpu = config.device == "cpu" or not torch.cuda.is_available()
        self.accelerator = Accelerator(cpu=use_cpu, mixed_precision="no" if use_cpu else "bf16")
        self.model, self.tokenizer = build_model(config)
        self.vocab = Vocab.from_tokenizer(self.tokenizer)
        self.train_data, self.heldout = prepare_data(corpus, self.tokenizer, config, cache_dir)
        self.strategy = strategy_from_params(config.strategy, config.strategy_params)
        self.policy = DrawPolicy(config.masking, config.seed)
        self.schedule = rate_schedule(self.strategy, config, self.total_steps)
        apply_freezing(self.model, config.freeze)
        self.prune = pruning_masks(self.model, config.prune_sparsity)
        self.trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        # fused: one kernel over all parameters; the default loops over them in Python on the CPU,
        # which cost more than the forward pass of the default model there.
        self.optimizer = torch.optim.AdamW([p for _, p in self.trainable], lr=config.lr,
                                           weight_decay=config.weight_decay, fused=True)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.micro_batches = 1  # raised when CUDA runs out of memory
        self.pending_losses: list[float] = []  # train losses since the last evaluation (checkpointed)
        self.token_loss = torch.full((self.vocab.vocab_size,), 1.0)  # adaptive: running loss per token id
        self.eval_batch = self._eval_masks()

    # -- sizes and schedules

    @property
    def batch_size(self) -> int:
        return min(self.config.batch_size, len(self.train_data))

    @property
    def batches_per_epoch(self) -> int:
        return max(1, len(self.train_data) // self.batch_size)

    @property
    def total_steps(self) -> int:
        if self.config.steps is not None:
            return self.config.steps
        return max(1, math.ceil(self.config.epochs * self.batches_per_epoch))

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
        optimizer_tensors, optimizer_rest = checkpoints.flatten_optimizer(self.optimizer.state_dict())
        optimizer_tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            optimizer_tensors["rng.cuda"] = torch.cuda.get_rng_state()
        optimizer_tensors["adaptive.token_loss"] = self.token_loss.clone()
        state = {"step": step, "best": best, "optimizer": optimizer_rest, "micro_batches": self.micro_batches,
                 "pending_losses": self.pending_losses}
        path = checkpoints.save_checkpoint(self.out_dir / "checkpoints", step, self._unique_tensors(),
                                           optimizer_tensors, state)
        keep = {best.get("step", -1)}
        checkpoints.prune(self.out_dir / "checkpoints", self.config.keep_checkpoints, keep)
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
        model_tensors, optimizer_tensors, state = checkpoints.load_checkpoint(checkpoint)
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
        # Under `accelerate launch` each process takes its share of the batch; DDP averages the
        # gradients. One process (the default) takes every row.
        rows = rows[self.accelerator.process_index :: self.accelerator.num_processes] or rows
        masked, rate = self.mask(rows, epoch, step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        device = self.accelerator.device
        total_loss, tokens = 0.0, 0
        chosen_all = masked.labels != -100
        n_chosen = max(1, int(chosen_all.sum()))
        for part in torch.arange(len(rows)).chunk(self.micro_batches):
            labels = masked.labels[part].to(device)
            chosen = labels != -100
            if not chosen.any():
                continue
            inputs = masked.input_ids[part].to(device)
            attention = self.attention(masked, part).to(device)
            with self.accelerator.autocast():
                logits = masked_logits(self.model, inputs, attention, chosen)  # (M, V)
                losses = nn.functional.cross_entropy(logits.float(), labels[chosen], reduction="none")
            loss = losses.sum() / n_chosen  # the mean over the whole batch, whatever the split
            if not torch.isfinite(loss):
                raise Diverged(f"the loss became {loss.item()} at step {step + 1}")
            self.accelerator.backward(loss)
            total_loss += loss.item()
            tokens += int(attention.sum())
            with torch.no_grad():  # adaptive masking: remember which tokens are hard
                ids = labels[chosen].cpu()
                self.token_loss[ids] = 0.9 * self.token_loss[ids] + 0.1 * losses.detach().float().cpu()
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

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
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
                logits = masked_logits(self.model, masked.input_ids[part].to(device), attention, chosen).float()
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
        self.model.train()
        step, best = 0, {}
        torch.manual_seed(self.config.seed)  # dropout draws from the global RNG: same seed, same run
        if resume_from is not None:
            step, best = self.restore(resume_from)  # ...and a resumed run continues its RNG state
        device = self.accelerator.device
        self.callbacks.on_start({"device": str(device), "total_steps": self.total_steps,
                                 "train_blocks": len(self.train_data), "heldout_blocks": len(self.heldout),
                                 "resumed_from": step, "best": best})
        busy, tokens_since = 0.0, 0  # busy: seconds spent in training steps
        record: dict = {}
        while step < self.total_steps:
            if self.callbacks.should_stop():
                raise Cancelled(step)
            tick = time.perf_counter()
            loss, tokens, rate = self._step_with_oom_retry(step)
            busy += time.perf_counter() - tick
            step += 1
            tokens_since += tokens
            self.pending_losses.append(loss)
            self.callbacks.on_step(step, self.total_steps, loss)
            if step % self.config.eval_every == 0 or step == self.total_steps:
                record = {"step": step, "train_loss": float(np.mean(self.pending_losses)),
                          "lr": self.learning_rate(step - 1),
                          "masking_rate": rate, "tokens_per_s": tokens_since / max(busy, 1e-9), "time": time.time(),
                          **self.evaluate()}
                if record.get("heldout_loss", math.inf) < best.get("heldout_loss", math.inf):
                    best = {"step": step, "heldout_loss": record["heldout_loss"],
                            "masked_accuracy": record["masked_accuracy"]}
                self.callbacks.on_eval(record)
                busy, tokens_since, self.pending_losses = 0.0, 0, []
            due = step % self.config.checkpoint_every == 0 and step < self.total_steps
            if due and self.accelerator.is_main_process:  # one writer of checkpoints
                self.callbacks.on_checkpoint(step, self.save(step, best))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.save_final_model()
        return {"step": step, "best": best, **record}

    def _step_with_oom_retry(self, step: int):
        for attempt in range(MAX_OOM_RETRIES + 1):
            try:
                return self.train_step(step)
            except torch.cuda.OutOfMemoryError:
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                if attempt == MAX_OOM_RETRIES or self.micro_batches >= self.batch_size:
                    raise
                self.micro_batches *= 2  # same effective batch, smaller pieces
        raise AssertionError("unreachable")

    def save_final_model(self) -> Path:
        """The trained model as a normal Hugging Face folder (safetensors), loadable anywhere."""
        folder = self.out_dir / "model"
        tmp = self.out_dir / "model.tmp"
        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, LSTMForMaskedLM):
            tmp.mkdir(parents=True, exist_ok=True)
            save_file(self._unique_tensors(), str(tmp / "lstm.safetensors"))
            (tmp / "lstm_config.json").write_text(json.dumps(model.config))
        else:
            from mlm_core.model.loading import quiet_transformers

            with quiet_transformers():
                model.save_pretrained(tmp, safe_serialization=True)
        self.tokenizer.save_pretrained(tmp)
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        tmp.rename(folder)
        return folder
