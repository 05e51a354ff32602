"""The masking engine's input: ``Vocab`` (what it needs from a tokenizer) and ``TokenBatch``
(``(B, T)`` token ids with what strategies know about them: special positions, words,
categories, scores, protected positions).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from mlm_core.errors import InputError, ModelLoadError
from mlm_core.text.tokens import (
    CONTENT,
    NUMBER,
    PUNCTUATION,
    SPECIAL,
    STOPWORD,
    Tokens,
    word_category,
)

CATEGORY_CODES = {STOPWORD: 0, PUNCTUATION: 1, NUMBER: 2, CONTENT: 3, SPECIAL: 4}  # -1: unknown


@dataclass(frozen=True)
class Vocab:
    """What strategies need from a tokenizer: the mask id, the vocabulary size and the special ids.

    Example: ``Vocab.from_tokenizer(AutoTokenizer.from_pretrained("bert-base-uncased"))`` gives
    ``mask_token_id=103, vocab_size=30522, special_ids=(0, 100, 101, 102, 103)``.
    """

    mask_token_id: int
    vocab_size: int  # random replacements are drawn from range(vocab_size), as in transformers
    special_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    mask_token: str = "[MASK]"

    def __post_init__(self) -> None:
        if self.vocab_size < 1 or not 0 <= self.mask_token_id < self.vocab_size:
            raise InputError(
                f"The mask id {self.mask_token_id} is outside a vocabulary of {self.vocab_size} tokens."
            )
        object.__setattr__(self, "special_ids", tuple(sorted({int(i) for i in self.special_ids})))

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocab:
        if tokenizer.mask_token_id is None:
            raise ModelLoadError(
                "This tokenizer has no mask token, so it cannot be used for masked language modelling "
                "(GPT-style models are not supported): choose a BERT, RoBERTa, ALBERT or similar model."
            )
        return cls(
            mask_token_id=int(tokenizer.mask_token_id),
            vocab_size=len(tokenizer),
            special_ids=tuple(tokenizer.all_special_ids),
            pad_token_id=tokenizer.pad_token_id,
            mask_token=str(tokenizer.mask_token),
        )

    @cached_property
    def non_special_ids(self) -> torch.Tensor:
        """(V - n_special,) int64: the ids random replacement may draw when specials are excluded."""
        keep = torch.ones(self.vocab_size, dtype=torch.bool)
        keep[[i for i in self.special_ids if i < self.vocab_size]] = False
        return keep.nonzero().squeeze(1)


@dataclass(frozen=True, eq=False)
class TokenBatch:
    """Token ids and what strategies know about them, as ``(B, T)`` tensors.

    Build it with ``from_tokens`` (explorer, batch analysis) or ``from_ids`` (the trainer's
    packed blocks). Words are maximal runs of one ``word_ids`` value, so packed sentences
    need no renumbering; ``words[b][w]`` is the text of word id ``w`` in row ``b`` (rules on
    word lists and regexes need it).
    """

    ids: torch.Tensor  # (B, T) int64
    special: torch.Tensor  # (B, T) bool: special or padding, never chosen and never replaced
    word_ids: torch.Tensor  # (B, T) int64, -1 at special/padding positions
    categories: torch.Tensor | None = None  # (B, T) int8 codes of CATEGORY_CODES, -1 unknown
    words: tuple[tuple[str, ...], ...] | None = None
    scores: torch.Tensor | None = None  # (B, T) float, >= 0: adaptive masking's per-token scores
    protected: torch.Tensor | None = None  # (B, T) bool: positions no step may touch (privacy placeholders)
    lengths: tuple[int, ...] | None = None  # unpadded length of each row (from_tokens)

    def __post_init__(self) -> None:
        if self.ids.dim() != 2 or self.ids.shape[1] == 0:
            raise InputError(
                f"Token ids must have shape (batch, length) with length > 0; got {tuple(self.ids.shape)}."
            )
        for name in ("special", "word_ids", "categories", "scores", "protected"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != tuple(self.ids.shape):
                raise InputError(
                    f"{name} must have the same shape as the ids {tuple(self.ids.shape)}; got {tuple(value.shape)}."
                )
        if self.words is not None and len(self.words) != self.ids.shape[0]:
            raise InputError(
                f"words must have one entry per row ({self.ids.shape[0]}); got {len(self.words)}."
            )
        if self.scores is not None and not bool(
            torch.isfinite(self.scores).all() and (self.scores >= 0).all()
        ):
            raise InputError("Scores must be finite and non-negative (e.g. each token's loss or surprisal).")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.ids.shape)

    @classmethod
    def from_tokens(
        cls,
        records: Sequence[Tokens],
        *,
        pad_id: int = 0,
        scores: Sequence[Sequence[float] | None] | None = None,
        protected: Sequence[Iterable[int]] | None = None,
    ) -> TokenBatch:
        """Pad ``records`` to one ``(B, T)`` batch; ``scores``/``protected`` give one entry per record."""
        if not records:
            raise InputError("No text to mask.")
        # Filled through flat (row, column) indexes: four small tensors per record took most of masking
        # a batch analysis's sentences (17 of 32 ms for 400 sentences).
        lengths = [len(r) for r in records]
        shape = (len(records), max(lengths))
        total = sum(lengths)
        rows = np.repeat(np.arange(len(records)), lengths)
        columns = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        chain = itertools.chain.from_iterable

        def padded(values, fill, dtype) -> torch.Tensor:
            array = np.full(shape, fill, dtype=dtype)
            array[rows, columns] = np.fromiter(values, dtype=dtype, count=total)
            return torch.from_numpy(array)

        ids = padded(chain(r.ids for r in records), pad_id, np.int64)
        special = padded(chain(r.special for r in records), True, np.bool_)
        word_ids = padded((-1 if w is None else w for w in chain(r.word_ids for r in records)), -1, np.int64)
        categories = padded((CATEGORY_CODES.get(c, -1) for c in chain(r.categories for r in records)),
                            CATEGORY_CODES[SPECIAL], np.int8)
        score_tensor = torch.zeros(shape, dtype=torch.float32) if scores is not None else None
        protect = torch.zeros(shape, dtype=torch.bool)
        words = []
        for b, record in enumerate(records):
            n = lengths[b]
            words.append(_word_texts(record))
            if scores is not None and scores[b] is not None:
                row = torch.as_tensor(np.asarray(scores[b], dtype=np.float32))
                if row.shape != (n,):
                    raise InputError(f"Scores need one value per token ({n}); got shape {tuple(row.shape)}.")
                score_tensor[b, :n] = row
            if protected is not None:
                positions = checked_positions(protected[b], n, "Protected position")
                if positions:
                    protect[b, positions] = True
        return cls(
            ids=ids,
            special=special,
            word_ids=word_ids,
            categories=categories,
            words=tuple(words),
            scores=score_tensor,
            protected=protect,
            lengths=tuple(lengths),
        )

    @classmethod
    def from_ids(
        cls,
        input_ids,
        vocab: Vocab,
        *,
        special_tokens_mask=None,
        attention_mask=None,
        word_ids=None,
        categories=None,
        words: Sequence[Sequence[str]] | None = None,
        scores=None,
        protected=None,
    ) -> TokenBatch:
        """A batch from raw ``(B, T)`` ids (a list, numpy array or tensor; one row may be 1-D).

        Without ``special_tokens_mask`` every id in ``vocab.special_ids`` but the mask id is special; padding
        (``attention_mask == 0``) is always special. Without ``word_ids`` each token is its own
        word. ``categories`` may be codes or category strings (``tokens.CATEGORIES``).
        """
        ids = _as_2d(input_ids, torch.long)
        if special_tokens_mask is None:
            # A mask id in the data is a typed mask (kept as a mask), as in ``tokenize``.
            control = [i for i in vocab.special_ids if i != vocab.mask_token_id] or [-1]
            special = torch.isin(ids, torch.tensor(control, device=ids.device))
        else:
            special = _as_2d(special_tokens_mask, torch.bool, ids.device)
        if attention_mask is not None:
            special = special | ~_as_2d(attention_mask, torch.bool, ids.device)
        if vocab.pad_token_id is not None:
            special = special | (ids == vocab.pad_token_id)
        if word_ids is None:
            wid = torch.arange(ids.shape[1], device=ids.device).expand_as(ids).clone()
        elif isinstance(word_ids, torch.Tensor):
            wid = _as_2d(word_ids, torch.long, ids.device)
        else:
            rows = [word_ids] if word_ids and not isinstance(word_ids[0], (list, tuple)) else word_ids
            wid = torch.tensor(
                [[-1 if w is None else int(w) for w in row] for row in rows], device=ids.device
            )
        wid = wid.masked_fill(special, -1)
        codes = None
        if categories is not None:
            if isinstance(categories, torch.Tensor | np.ndarray):
                codes = _as_2d(categories, torch.int8, ids.device)
            else:
                rows = [categories] if isinstance(categories[0], str) else categories
                codes = torch.tensor(
                    [[CATEGORY_CODES.get(c, -1) for c in row] for row in rows], dtype=torch.int8
                )
        return cls(
            ids=ids,
            special=special,
            word_ids=wid,
            categories=codes,
            words=None if words is None else tuple(tuple(row) for row in words),
            scores=None if scores is None else _as_2d(scores, torch.float32, ids.device),
            protected=None if protected is None else _as_2d(protected, torch.bool, ids.device),
        )

    def select_rows(self, rows: Sequence[int]) -> TokenBatch:
        """The batch of the given rows (in that order)."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.ids.device)

        def pick(t):
            return None if t is None else t.index_select(0, index)

        return TokenBatch(
            ids=pick(self.ids),
            special=pick(self.special),
            word_ids=pick(self.word_ids),
            categories=pick(self.categories),
            words=None if self.words is None else tuple(self.words[r] for r in rows),
            scores=pick(self.scores),
            protected=pick(self.protected),
            lengths=None if self.lengths is None else tuple(self.lengths[r] for r in rows),
        )

    @cached_property
    def run_ids(self) -> torch.Tensor:
        """(B, T) int64: index of each position's word run; every special/padding token is its own run."""
        wid, sp = self.word_ids, self.special
        start = torch.ones_like(sp)
        start[:, 1:] = (wid[:, 1:] != wid[:, :-1]) | sp[:, 1:] | sp[:, :-1]
        return start.long().cumsum(1) - 1

    @cached_property
    def category_codes(self) -> torch.Tensor | None:
        """(B, T) int8 categories, from ``categories`` or else computed from ``words``; None if unknown."""
        if self.categories is not None:
            return self.categories
        if self.words is None:
            return None
        table = [[CATEGORY_CODES[word_category(w)] for w in row] for row in self.words]
        return self._per_word(table, fill=CATEGORY_CODES[SPECIAL], dtype=torch.int8)

    def _per_word(self, table: list[list], fill, dtype) -> torch.Tensor:
        """Spread one value per word id (``table[b][w]``) to every position of that word."""
        width = max([len(row) for row in table] + [1])
        padded = torch.tensor([list(row) + [fill] * (width - len(row)) for row in table], dtype=dtype)
        padded = torch.cat([padded, torch.full((len(table), 1), fill, dtype=dtype)], dim=1).to(
            self.ids.device
        )
        wid = self.word_ids
        if int(wid.max()) >= width:
            raise InputError("word_ids point past the end of words: give the text of every word id.")
        index = torch.where(wid < 0, width, wid)  # special positions read the fill column
        return padded.gather(1, index)


def _word_texts(record: Tokens) -> tuple[str, ...]:
    spans: dict[int, list[int]] = {}
    for (s, e), w in zip(record.offsets, record.word_ids, strict=True):
        if w is not None:
            span = spans.setdefault(w, [s, e])
            span[0], span[1] = min(span[0], s), max(span[1], e)
    n_words = max(spans, default=-1) + 1
    return tuple(record.text[spans[w][0] : spans[w][1]] if w in spans else "" for w in range(n_words))


def _as_2d(value, dtype: torch.dtype, device=None) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    tensor = tensor.to(dtype=dtype, device=device)
    return tensor.unsqueeze(0) if tensor.dim() == 1 else tensor


def checked_positions(positions: Iterable[int], length: int, what: str) -> list[int]:
    out = []
    for position in positions:
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
            raise InputError(f"{what} {position!r} is not a whole number.")
        if not 0 <= position < length:
            raise InputError(
                f"{what} {position} is outside the text: it has {length} tokens (0 to {length - 1})."
            )
        out.append(int(position))
    return out
