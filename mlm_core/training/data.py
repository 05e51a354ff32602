"""A corpus as the trainer reads it: texts split into train/held-out, tokenized once, packed into blocks.

``prepare_data`` is the whole path (personal data replaced first when the strategy says so →
``split_texts`` by a hash of each text → ``pack`` into ``[CLS] content [SEP]`` blocks), cached on
disk by (corpus, tokenizer, block length, split). The Fine-tune page's preview runs the same
functions, so it shows exactly the blocks the job trains on.

Example::

    train, heldout = prepare_data(corpus, tokenizer, TrainConfig(seq_len=64), cache_dir=None)
    train.ids.shape  # (N, 64)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mlm_core.errors import InputError
from mlm_core.masking import (
    CATEGORY_CODES,
    TokenBatch,
    Vocab,
    needs_word_texts,
    privacy_step,
    strategy_from_params,
)
from mlm_core.text.corpus import Corpus
from mlm_core.text.tokens import tokenizer_lock, word_category
from mlm_core.training.config import TrainConfig


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


def training_texts(texts: tuple[str, ...], strategy, tokenizer) -> tuple[str, ...]:
    """The corpus as the model will read it: personal data replaced first when the strategy says so."""
    privacy = privacy_step(strategy)
    if privacy is None:
        return texts
    return tuple(privacy.apply(text, mask_token=tokenizer.mask_token).text for text in texts)



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

