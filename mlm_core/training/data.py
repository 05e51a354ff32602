"""A corpus as the trainer reads it: texts split into train/held-out, tokenized once, packed into blocks.

``prepare_data`` is the whole path (personal data replaced first when the strategy says so →
``split_texts`` by a hash of each text → ``pack`` into ``[CLS] content [SEP]`` blocks), cached on
disk by (corpus, tokenizer, block length, split). The Fine-tune page's preview runs the same
functions, so it shows exactly the blocks the job trains on.

One packer serves every corpus: ``Blocks`` cuts a split's token stream (``encode_chunk``: a chunk of
``CHUNK_TEXTS`` texts at a time) into blocks and hands them to a sink. ``pack`` collects them in
memory (a corpus read whole, and the preview); ``streaming`` writes them to memory-mapped files as a
corpus too big to hold is read.

Example::

    train, heldout = prepare_data(corpus, tokenizer, TrainConfig(seq_len=64), cache_dir=None)
    train.ids.shape  # (N, 64)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain, repeat
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
from mlm_core.masking.language import text_language
from mlm_core.text.corpus import Corpus, StreamedCorpus
from mlm_core.text.languages import DEFAULT_LANGUAGE, SEGMENTED_LANGUAGES
from mlm_core.text.tokens import segmented_word_ids, tokenizer_lock, word_category
from mlm_core.training.config import TrainConfig

CHUNK_TEXTS = 512  # texts tokenized per call: the tokenizer's batch, and the packer's unit of memory
# PackedData's arrays and their types (the streamed cache stores them raw, in this order)
BLOCK_ARRAYS = {"ids": np.int64, "word_ids": np.int64, "categories": np.int8, "special": np.bool_}
SPECIAL_CODE = CATEGORY_CODES["special"]
_CATEGORY_CACHE_WORDS = 1_000_000  # distinct words whose category is remembered (then forgotten, bounding memory)


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


def is_held_out(text: str, heldout_fraction: float) -> bool:
    """Whether ``text`` is held out: a hash of the text alone, so the split is stable when the file grows."""
    return int(hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) / 0xFFFFFFFF < heldout_fraction


def split_texts(texts: tuple[str, ...], heldout_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split by ``is_held_out`` (stable when the file grows)."""
    train, heldout = [], []
    for text in texts:
        (heldout if is_held_out(text, heldout_fraction) else train).append(text)
    if len(texts) < 2:
        raise InputError("The corpus is too small: it needs at least two texts (one is held out).")
    if not heldout:
        heldout.append(train.pop())
    if not train:
        train.append(heldout.pop())
    return train, heldout


class Categories:
    """word_category by the word's text, remembered: a corpus repeats the same words millions of times."""

    def __init__(self, language: str = DEFAULT_LANGUAGE):
        self.language = language
        self.codes: dict[str, int] = {}

    def of(self, words: list[str]) -> np.ndarray:
        """(len(words),) int8 category codes; dictionary look-ups run in C, only new words in Python."""
        codes = np.fromiter(map(self.codes.get, words, repeat(-1, len(words))), np.int8, len(words))
        missing = np.flatnonzero(codes < 0)
        if len(self.codes) + len(missing) > _CATEGORY_CACHE_WORDS:
            self.codes.clear()
        for i in missing.tolist():
            code = self.codes.get(words[i])
            if code is None:
                code = self.codes[words[i]] = CATEGORY_CODES[word_category(words[i], self.language)]
            codes[i] = code
        return codes


def _encodings(texts: list[str], tokenizer) -> list:
    """The tokenizer's own encodings of ``texts``: no special tokens added, typed special tokens split as
    text. The Rust tokenizer is called directly: transformers' conversion of every encoding into Python
    lists took as long as the tokenizing itself."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    with tokenizer_lock(tokenizer):  # the app's preview shares this tokenizer with other sessions
        if backend is None or backend.truncation is not None or backend.padding is not None:
            return tokenizer(texts, add_special_tokens=False, split_special_tokens=True,
                             return_offsets_mapping=True).encodings
        before = backend.encode_special_tokens
        backend.encode_special_tokens = True
        try:
            return backend.encode_batch(texts, add_special_tokens=False)
        finally:
            backend.encode_special_tokens = before


def encode_chunk(texts: list[str], tokenizer, first_word: int, categories: Categories
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(ids, word ids, category codes, word texts) of ``texts`` as one stream, a separator after each text.

    Words are numbered from ``first_word`` in text order, each text's words in the order the tokenizer
    numbers them (for Chinese, jieba's words: their characters share an id); a word's text runs from its
    first token's start to its last token's end. ``word texts[i]`` is the text of word ``first_word + i``.
    """
    encodings = _encodings(texts, tokenizer)
    rows = len(texts)
    lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, rows)
    total = int(lengths.sum())
    ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int64, total)
    if categories.language in SEGMENTED_LANGUAGES:
        word_lists = (segmented_word_ids(text, categories.language, e.ids, e.offsets, e.word_ids,
                                         tokenizer.mask_token_id) for text, e in zip(texts, encodings))
    else:
        word_lists = (e.word_ids for e in encodings)
    words = np.fromiter(chain.from_iterable(word_lists), np.int64, total)
    offsets = np.fromiter(chain.from_iterable(chain.from_iterable(e.offsets for e in encodings)), np.int64,
                          2 * total).reshape(total, 2)
    row_of = np.repeat(np.arange(rows), lengths)
    key = row_of * (int(words.max(initial=0)) + 1) + words  # (text, word), sorted in text and word order
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    last = total - 1 - np.unique(key[::-1], return_index=True)[1]
    word_rows, starts, ends = row_of[first].tolist(), offsets[first, 0].tolist(), offsets[last, 1].tolist()
    word_texts = [texts[r][s:e] for r, s, e in zip(word_rows, starts, ends)]
    codes = categories.of(word_texts)
    token_words = first_word + inverse
    token_codes = codes[inverse]
    separator = tokenizer.sep_token_id
    if separator is None:
        return ids, token_words, token_codes, word_texts
    # Each text's tokens move right by the separators before them; the separators fill the gaps.
    place = np.arange(total) + row_of
    out_ids = np.full(total + rows, separator, dtype=np.int64)
    out_words = np.full(total + rows, -1, dtype=np.int64)
    out_codes = np.full(total + rows, SPECIAL_CODE, dtype=np.int8)
    out_ids[place], out_words[place], out_codes[place] = ids, token_words, token_codes
    return out_ids, out_words, out_codes, word_texts


BlockSink = Callable[[dict[str, np.ndarray], list[tuple[str, ...]] | None], None]


class Blocks:
    """Cuts one split's token stream into ``[CLS] content [SEP]`` blocks, handing whole blocks to ``sink``.

    ``add_texts`` tokenizes texts (``encode_chunk``) and appends them to the stream; ``sink(arrays,
    words)`` receives each run of whole blocks as the ``BLOCK_ARRAYS`` arrays of shape (n, seq_len), word
    ids block-local, and with ``keep_words`` each block's word texts (word id → text). Memory is the
    chunk being cut, plus the word texts of the words not yet in a block.
    """

    def __init__(self, tokenizer, seq_len: int, sink: BlockSink, keep_words: bool = False):
        self.tokenizer, self.sink, self.keep_words = tokenizer, sink, keep_words
        self.content = seq_len - 2
        self.blocks = 0
        self.next_word = 0  # words are numbered per split, in text order
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pending_tokens = 0
        self.word_texts: list[str] = []  # keep_words: texts of the words from ``word_base`` on
        self.word_base = 0
        cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        self.cls, self.end, self.pad = cls, end, tokenizer.pad_token_id or 0
        self.special_ids = np.array(sorted(set(tokenizer.all_special_ids)))

    def add_texts(self, texts: list[str], categories: Categories) -> None:
        ids, words, codes, word_texts = encode_chunk(texts, self.tokenizer, self.next_word, categories)
        self.next_word += len(word_texts)
        if self.keep_words:
            self.word_texts += word_texts
        self.pending.append((ids, words, codes))
        self.pending_tokens += len(ids)
        if self.pending_tokens >= self.content:
            ids, words, codes = (np.concatenate(parts) for parts in zip(*self.pending))
            whole = len(ids) // self.content * self.content
            self._emit(ids[:whole], words[:whole], codes[:whole])
            self.pending = [(ids[whole:], words[whole:], codes[whole:])]
            self.pending_tokens = len(ids) - whole

    def finish(self) -> int:
        """The block count. A stream shorter than one block is padded to one; a longer one's remainder
        (less than a block) is left out."""
        if self.blocks == 0:
            if not self.pending_tokens:
                raise InputError("The corpus produced no tokens for this model.")
            ids, words, codes = (np.concatenate(parts) for parts in zip(*self.pending))
            pad = self.content - len(ids)
            self._emit(np.concatenate([ids, np.full(pad, self.pad, dtype=np.int64)]),
                       np.concatenate([words, np.full(pad, -1, dtype=np.int64)]),
                       np.concatenate([codes, np.full(pad, SPECIAL_CODE, dtype=np.int8)]))
        return self.blocks

    def _emit(self, ids: np.ndarray, words: np.ndarray, codes: np.ndarray) -> None:
        n = len(ids) // self.content
        ids = ids.reshape(n, self.content)
        block_ids = np.concatenate([np.full((n, 1), self.cls), ids, np.full((n, 1), self.end)], axis=1)
        special = np.isin(block_ids, self.special_ids)
        column = np.full((n, 1), -1)
        block_words = np.concatenate([column, words.reshape(n, self.content), column], axis=1)
        block_words = np.where(special, -1, block_words)
        present = block_words >= 0
        lows = np.where(present, block_words, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
        word_texts = None
        if self.keep_words:
            highs = np.where(present, block_words, -1).max(axis=1)
            word_texts = [tuple(self.word_texts[low - self.word_base : high + 1 - self.word_base])
                          if high >= 0 else () for low, high in zip(lows[:, 0].tolist(), highs.tolist())]
            if highs.max() >= 0:  # the words of emitted blocks are not needed again (a word cut by a block
                # edge is still in the stream: it starts the next block, so its text stays)
                keep_from = int(highs.max())
                del self.word_texts[: keep_from - self.word_base]
                self.word_base = keep_from
        block_words = np.where(present, block_words - lows, -1)
        code_column = np.full((n, 1), SPECIAL_CODE, dtype=np.int8)
        block_codes = np.concatenate([code_column, codes.reshape(n, self.content), code_column], axis=1)
        arrays = {"ids": block_ids, "word_ids": block_words, "categories": block_codes, "special": special}
        self.sink({name: np.ascontiguousarray(arrays[name], dtype=dtype) for name, dtype in BLOCK_ARRAYS.items()},
                  word_texts)
        self.blocks += n


def pack(texts: list[str], tokenizer, seq_len: int, keep_words: bool, language: str = DEFAULT_LANGUAGE) -> PackedData:
    """``texts`` tokenized once, a separator after each, cut into blocks in memory (``Blocks``).

    ``language`` decides the words' categories (its stopwords) and, for Chinese, the words (jieba);
    ``keep_words`` keeps each block's word texts (word-list and regex rules need them).
    """
    parts: list[dict[str, np.ndarray]] = []
    words: list[tuple[str, ...]] = []

    def collect(arrays: dict[str, np.ndarray], word_texts: list[tuple[str, ...]] | None) -> None:
        parts.append(arrays)
        words.extend(word_texts or ())

    blocks = Blocks(tokenizer, seq_len, collect, keep_words)
    categories = Categories(language)
    for start in range(0, len(texts), CHUNK_TEXTS):
        blocks.add_texts(texts[start : start + CHUNK_TEXTS], categories)
    blocks.finish()
    tensors = {name: torch.from_numpy(np.concatenate([part[name] for part in parts])) for name in BLOCK_ARRAYS}
    return PackedData(tensors["ids"], tensors["word_ids"], tensors["categories"], tensors["special"],
                      tuple(words) if keep_words else None)


def training_texts(texts: tuple[str, ...], strategy, tokenizer) -> tuple[str, ...]:
    """The corpus as the model will read it: personal data replaced first when the strategy says so."""
    privacy = privacy_step(strategy)
    if privacy is None:
        return texts
    return tuple(result.text for result in privacy.apply_many(texts, mask_token=tokenizer.mask_token))



def cache_key(corpus: Corpus | StreamedCorpus, tokenizer, config: TrainConfig) -> str:
    """What packed blocks depend on: the corpus's bytes and column, the tokenizer, block length, split and rules."""
    strategy = strategy_from_params(config.strategy, config.strategy_params)
    return hashlib.sha256(
        f"{corpus.sha256}|{corpus.column}|{tokenizer.name_or_path}|{len(tokenizer)}|{config.seq_len}|"
        f"{config.heldout_fraction}|{needs_word_texts(strategy)}|{privacy_step(strategy)!r}|"
        f"{text_language(strategy)}".encode()
    ).hexdigest()[:24]


def prepare_data(corpus: Corpus | StreamedCorpus, tokenizer, config: TrainConfig, cache_dir: Path | None,
                 progress: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None):
    """(train, heldout) packed data, cached by (corpus hash, tokenizer, block length, split).

    A corpus too big to read whole is packed as it is read, into memory-mapped files (``streaming``);
    while it is, ``progress`` receives ``{"done_bytes", "total_bytes", "eta_s"}`` now and then and
    ``should_stop`` is asked between chunks (True: ``Cancelled``). A corpus read whole takes seconds.
    """
    if isinstance(corpus, StreamedCorpus):
        from mlm_core.training.streaming import prepare_streamed

        return prepare_streamed(corpus, tokenizer, config, cache_dir, progress, should_stop)
    strategy = strategy_from_params(config.strategy, config.strategy_params)
    keep_words = needs_word_texts(strategy)
    key = cache_key(corpus, tokenizer, config)
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
    language = text_language(strategy)
    train = pack(train_texts, tokenizer, config.seq_len, keep_words, language)
    heldout = pack(heldout_texts, tokenizer, config.seq_len, keep_words, language)
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

