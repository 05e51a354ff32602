"""The masking engine: which positions a strategy chooses, and what happens to them.

One engine serves the explorer (one ``Tokens`` record, ``apply_strategy``), batch analysis
(``mask_many``) and the trainer (``(B, T)`` blocks of ids, ``mask_batch``/``mask_examples``):
the strategy objects are the same everywhere, so what a user sees on one sentence is exactly
what the trainer does to the corpus.

Composition (``Compose(steps)``; a single strategy is a one-step composition), in this order:

1. text steps (``PrivacyMasking``) rewrite the raw text before tokenization;
2. eligibility: every position that is neither special nor padding. A position that already
   holds the mask token (typed by the user, or put there by privacy masking) stays a mask:
   kind ``"masked"``, label -100 (there is no original to score against), never chosen again;
3. protect steps (``RuleBased(mode="protect")``, ``TokenBatch.protected``) shrink eligibility;
4. select steps (random, whole-word, span, rule targets, manual, adaptive) each choose among
   the eligible positions; the union is chosen;
5. exclusion steps (``AttentionExclusion``) flag eligible positions that are not chosen;
6. corruption, once, with the settings of the first step that chooses tokens: each chosen
   position becomes the mask token with ``mask_replace_prob``, a random token with
   ``random_replace_prob``, else stays unchanged (``DataCollatorForLanguageModeling``
   semantics, draw for draw: same generator, same result).

``ratio`` (α) = chosen positions (typed masks included) / eligible positions (after protection).
Randomness comes only from the ``rng`` argument (an int seed or a ``torch.Generator``).

Example::

    vocab = Vocab.from_tokenizer(tokenizer)
    result = apply_strategy(tokenize(tokenizer, "The cat sat on the mat."), RandomMasking(0.15, exact=True), vocab)
    result.masked_positions, result.labels  # labels: original id where chosen, -100 elsewhere
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, ClassVar

import numpy as np
import torch

from mlm_core.errors import InputError, ModelLoadError, NothingToMaskError
from mlm_core.settings import ParamSpec, Validated, param, param_specs, shown_value
from mlm_core.text.privacy import PrivacyMasking, PrivacyResult
from mlm_core.text.tokens import (
    CONTENT,
    NUMBER,
    PUNCTUATION,
    SPECIAL,
    STOPWORD,
    Tokens,
    tokenize,
    word_category,
)

IGNORE_INDEX = -100  # label of positions that are not predicted (PyTorch cross-entropy's ignore_index)
MASKED = "masked"
RANDOM = "random"
KEPT = "kept"
EXCLUDED = "excluded"
KINDS = (MASKED, RANDOM, KEPT, EXCLUDED)
KIND_BY_CODE = (None, *KINDS)  # BatchMaskResult.kind_codes index this tuple
_CODE = {kind: code for code, kind in enumerate(KIND_BY_CODE)}
CATEGORY_CODES = {STOPWORD: 0, PUNCTUATION: 1, NUMBER: 2, CONTENT: 3, SPECIAL: 4}  # -1: unknown
RULES = ("stopwords", "punctuation", "numbers", "words", "regex")
_RULE_CATEGORY = {"stopwords": STOPWORD, "punctuation": PUNCTUATION, "numbers": NUMBER}
MAX_PATTERN_CHARS = 200  # a longer user regex is almost certainly a paste error
REGEX_TIMEOUT_S = 0.05  # per word; catastrophic backtracking on a short word shows within this
REGEX_BUDGET_S = 2.0  # for one batch: the UI must stay responsive
MAX_DRAWS = 10_000
MAX_COMPOSE_DEPTH = 8  # compositions inside compositions (Compose flattens them anyway)
MAX_COMPOSE_STEPS = 32


# ----------------------------------------------------------------------------- vocabulary


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


# ----------------------------------------------------------------------------- batches


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
        length = max(len(r) for r in records)
        shape = (len(records), length)
        ids = torch.full(shape, pad_id, dtype=torch.long)
        special = torch.ones(shape, dtype=torch.bool)
        word_ids = torch.full(shape, -1, dtype=torch.long)
        categories = torch.full(shape, CATEGORY_CODES[SPECIAL], dtype=torch.int8)
        score_tensor = torch.zeros(shape, dtype=torch.float32) if scores is not None else None
        protect = torch.zeros(shape, dtype=torch.bool)
        words = []
        for b, record in enumerate(records):
            n = len(record)
            ids[b, :n] = torch.tensor(record.ids, dtype=torch.long)
            special[b, :n] = torch.tensor(record.special, dtype=torch.bool)
            word_ids[b, :n] = torch.tensor(
                [-1 if w is None else w for w in record.word_ids], dtype=torch.long
            )
            categories[b, :n] = torch.tensor(
                [CATEGORY_CODES.get(c, -1) for c in record.categories], dtype=torch.int8
            )
            words.append(_word_texts(record))
            if scores is not None and scores[b] is not None:
                row = torch.as_tensor(np.asarray(scores[b], dtype=np.float32))
                if row.shape != (n,):
                    raise InputError(f"Scores need one value per token ({n}); got shape {tuple(row.shape)}.")
                score_tensor[b, :n] = row
            if protected is not None:
                positions = _checked_positions(protected[b], n, "Protected position")
                protect[b, positions] = True
        return cls(
            ids=ids,
            special=special,
            word_ids=word_ids,
            categories=categories,
            words=tuple(words),
            scores=score_tensor,
            protected=protect,
            lengths=tuple(len(r) for r in records),
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


def _checked_positions(positions: Iterable[int], length: int, what: str) -> list[int]:
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


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class MaskResult:
    """What a strategy did to one sequence of ``T`` tokens (arrays are read-only).

    ``kinds[i]`` is ``"masked"``, ``"random"``, ``"kept"``, ``"excluded"`` or ``None`` (untouched).
    Example: for ``[CLS] the cat sat [SEP]`` with "cat" masked: ``input_ids = [101, 1996, 103,
    2938, 102]``, ``labels = [-100, -100, 4937, -100, -100]``, ``kinds = (None, None, "masked",
    None, None)``, ``ratio = 1/3``.
    """

    input_ids: np.ndarray  # (T,) int64: what the model reads
    labels: np.ndarray  # (T,) int64: original id at chosen positions, -100 elsewhere (and at typed masks)
    kinds: tuple[str | None, ...]  # (T,)
    attention_exclude: np.ndarray  # (T,) bool: no position may attend to these
    original_ids: np.ndarray  # (T,) int64: the ids before masking
    n_eligible: int  # positions a step could choose (not special, padding or protected), typed masks included
    ratio: float  # α = chosen / eligible

    def positions_of(self, *kinds: str) -> list[int]:
        return [i for i, kind in enumerate(self.kinds) if kind in kinds]

    @property
    def chosen_positions(self) -> list[int]:
        """Positions the model must predict: masked, random or kept (typed masks included)."""
        return self.positions_of(MASKED, RANDOM, KEPT)

    @property
    def masked_positions(self) -> list[int]:
        return self.positions_of(MASKED)

    @property
    def random_positions(self) -> list[int]:
        return self.positions_of(RANDOM)

    @property
    def kept_positions(self) -> list[int]:
        return self.positions_of(KEPT)

    @property
    def excluded_positions(self) -> list[int]:
        return self.positions_of(EXCLUDED)

    @property
    def is_empty(self) -> bool:
        """True when the strategy touched no position."""
        return all(kind is None for kind in self.kinds)

    def attention_mask(self) -> np.ndarray:
        """(T,) int64 for the model: 0 at excluded positions (a_ij = 0 when token j is excluded)."""
        return (~self.attention_exclude).astype(np.int64)

    def to_dict(self) -> dict:
        """JSON-ready form (``--json`` output)."""
        return {
            "input_ids": self.input_ids.tolist(),
            "labels": self.labels.tolist(),
            "kinds": list(self.kinds),
            "attention_exclude": self.attention_exclude.tolist(),
            "n_eligible": self.n_eligible,
            "ratio": self.ratio,
        }


@dataclass(frozen=True, eq=False)
class BatchMaskResult:
    """``MaskResult`` for a ``(B, T)`` batch, as tensors on the batch's device.

    Feed it to a model as ``model(input_ids=r.input_ids, attention_mask=r.attention_mask(am),
    labels=r.labels)``.
    """

    input_ids: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, -100 where not predicted
    kind_codes: torch.Tensor  # (B, T) int8, index into KIND_BY_CODE (0 = untouched)
    attention_exclude: torch.Tensor  # (B, T) bool
    original_ids: torch.Tensor  # (B, T) int64
    n_eligible: torch.Tensor  # (B,) int64
    n_chosen: torch.Tensor  # (B,) int64
    lengths: tuple[int, ...] | None = None

    @property
    def ratio(self) -> torch.Tensor:
        """(B,) float: α per row (0 for a row with nothing eligible)."""
        return self.n_chosen.double() / self.n_eligible.clamp_min(1).double()

    def attention_mask(self, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) int64: ``attention_mask`` (all ones if None) with excluded positions set to 0."""
        base = torch.ones_like(self.input_ids) if attention_mask is None else attention_mask.long()
        return base.masked_fill(self.attention_exclude, 0)

    def row(self, b: int) -> MaskResult:
        """Row ``b`` as a ``MaskResult`` (padding cut off when the batch came from ``from_tokens``)."""
        n = self.input_ids.shape[1] if self.lengths is None else self.lengths[b]

        def array(t):
            out = t[b, :n].cpu().numpy().copy()
            out.flags.writeable = False
            return out

        return MaskResult(
            input_ids=array(self.input_ids),
            labels=array(self.labels),
            kinds=tuple(KIND_BY_CODE[c] for c in self.kind_codes[b, :n].tolist()),
            attention_exclude=array(self.attention_exclude),
            original_ids=array(self.original_ids),
            n_eligible=int(self.n_eligible[b]),
            ratio=float(self.ratio[b]),
        )

    @staticmethod
    def concat(parts: Sequence[BatchMaskResult]) -> BatchMaskResult:
        names = (
            "input_ids",
            "labels",
            "kind_codes",
            "attention_exclude",
            "original_ids",
            "n_eligible",
            "n_chosen",
        )
        merged = {name: torch.cat([getattr(p, name) for p in parts]) for name in names}
        lengths = None if any(p.lengths is None for p in parts) else sum((p.lengths for p in parts), ())
        return BatchMaskResult(**merged, lengths=lengths)


# ----------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Corruption:
    """What happens to chosen positions (``DataCollatorForLanguageModeling`` names and defaults)."""

    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    random_excludes_special: bool = False  # transformers draws from the whole vocabulary


class MaskingStep(Validated):
    """Base of token-level strategies. A step may protect, select or exclude positions (``(B, T)`` bool).

    ``eligible`` is what the step may touch; ``gen`` is the only source of randomness.
    """

    name: ClassVar[str] = ""

    def protect(self, batch: TokenBatch, eligible: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        return None

    def select(self, batch: TokenBatch, eligible: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        return None

    def exclude(self, batch: TokenBatch, eligible: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        return None

    @property
    def corruption(self) -> Corruption | None:
        return None

    def describe(self) -> str:
        return self.label


_PROB = {"min": 0.0, "max": 1.0}


@dataclass(frozen=True)
class _Corrupting(MaskingStep):
    mask_replace_prob: float = field(
        default=0.8,
        kw_only=True,
        metadata=param("Share of chosen tokens replaced by the mask token.", **_PROB),
    )
    random_replace_prob: float = field(
        default=0.1,
        kw_only=True,
        metadata=param("Share of chosen tokens replaced by a random token.", **_PROB),
    )
    random_excludes_special: bool = field(
        default=False, kw_only=True, metadata=param("Never draw special tokens as random replacements.")
    )

    def _check(self) -> None:
        if self.mask_replace_prob + self.random_replace_prob > 1 + 1e-9:
            raise InputError(
                f"{self.label}: mask_replace_prob + random_replace_prob must not exceed 1 "
                f"(got {self.mask_replace_prob:g} + {self.random_replace_prob:g}); the rest is kept unchanged."
            )

    @property
    def corruption(self) -> Corruption | None:
        return Corruption(self.mask_replace_prob, self.random_replace_prob, self.random_excludes_special)


def _budget(n: torch.Tensor, p: float) -> torch.Tensor:
    """round(p·n) per row (half up), at least 1 when n > 0 and p > 0."""
    k = torch.floor(n.double() * p + 0.5).long()
    return torch.where((n > 0) & (p > 0), k.clamp_min(1), torch.zeros_like(k))


def _rand(batch: TokenBatch, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(batch.shape, generator=gen, device=batch.ids.device)


def _word_uniform(batch: TokenBatch, gen: torch.Generator) -> torch.Tensor:
    """(B, T) uniforms shared by all positions of a word run."""
    return _rand(batch, gen).gather(1, batch.run_ids)


@dataclass(frozen=True)
class RandomMasking(_Corrupting):
    """Random: each eligible token is chosen with rate mlm_probability (BERT, HF collator semantics).

    ``exact=True`` chooses exactly round(p·n) of the n eligible tokens per sequence (at least one).
    Example: ``RandomMasking(0.15)``; ``RandomMasking(0.3, exact=True, mask_replace_prob=1.0)``.
    """

    name: ClassVar[str] = "random"
    label: ClassVar[str] = "random masking"

    mlm_probability: float = field(default=0.15, metadata=param("Share of eligible tokens chosen.", **_PROB))
    exact: bool = field(
        default=False, metadata=param("Choose exactly round(p·n) tokens instead of each with rate p.")
    )

    def select(self, batch, eligible, gen):
        if self.exact:
            scores = _rand(batch, gen).masked_fill(~eligible, 2.0)
            ranks = scores.argsort(1).argsort(1)
            return (ranks < _budget(eligible.sum(1), self.mlm_probability)[:, None]) & eligible
        # Same tensors and calls as DataCollatorForLanguageModeling.torch_mask_tokens: draw-for-draw equal.
        probability = torch.full(batch.shape, self.mlm_probability, device=batch.ids.device)
        probability.masked_fill_(~eligible, 0.0)
        return torch.bernoulli(probability, generator=gen).bool()


@dataclass(frozen=True)
class WholeWordMasking(_Corrupting):
    """Whole-word: all pieces of a word are chosen together; words come from ``word_ids`` (any tokenizer).

    Each word is chosen with rate mlm_probability, so the expected share of tokens is p (the
    transformers collator instead extends per-token draws to words, which raises the rate of
    long words). ``exact=True`` adds words in random order until round(p·n) tokens are reached.
    """

    name: ClassVar[str] = "whole-word"
    label: ClassVar[str] = "whole-word masking"

    mlm_probability: float = field(default=0.15, metadata=param("Share of eligible words chosen.", **_PROB))
    exact: bool = field(default=False, metadata=param("Add words until round(p·n) tokens are chosen."))

    def select(self, batch, eligible, gen):
        if not self.exact:
            return (_word_uniform(batch, gen) < self.mlm_probability) & eligible
        B, T = batch.shape
        runs = batch.run_ids
        word_rank = _rand(batch, gen).argsort(1).argsort(1).gather(1, runs)  # one distinct rank per word
        position = torch.arange(T, device=runs.device).expand(B, T)
        key = torch.where(eligible, word_rank * T + position, torch.full_like(position, T * T + T))
        order = key.argsort(1)  # words in random order, their pieces adjacent
        in_order = eligible.gather(1, order).long()
        before = torch.empty_like(in_order).scatter_(1, order, in_order.cumsum(1) - in_order)  # (B, T)
        big = torch.full_like(before, T + 1)
        word_start = big.scatter_reduce(1, runs, torch.where(eligible, before, big), reduce="amin")
        return eligible & (
            word_start.gather(1, runs) < _budget(eligible.sum(1), self.mlm_probability)[:, None]
        )


@dataclass(frozen=True)
class SpanMasking(_Corrupting):
    """Span: SpanBERT spans of whole words, lengths ~ Geometric(geometric_p) up to max_span_length.

    Spans start at a random unchosen token's word and are added until round(p·n) tokens are
    chosen; the last span stops at the end of the word that reaches the budget. Spans run over
    eligible words (a protected word in between is skipped). Corruption is per token.
    """

    name: ClassVar[str] = "span"
    label: ClassVar[str] = "span masking"

    mlm_probability: float = field(
        default=0.15, metadata=param("Share of eligible tokens to cover.", **_PROB)
    )
    geometric_p: float = field(
        default=0.2,
        metadata=param("Geometric parameter of span lengths (SpanBERT: 0.2).", min=0.01, max=1.0),
    )
    max_span_length: int = field(
        default=10, metadata=param("Longest span, in words (SpanBERT: 10).", min=1, max=100)
    )

    @property
    def length_distribution(self) -> tuple[np.ndarray, np.ndarray]:
        """Span lengths (in words) and their probabilities: the geometric law cut at the maximum."""
        lengths = np.arange(1, self.max_span_length + 1)
        weights = self.geometric_p * (1 - self.geometric_p) ** (lengths - 1)
        return lengths, weights / weights.sum()

    def select(self, batch, eligible, gen):
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
        rng = np.random.default_rng(seed)
        lengths, probs = self.length_distribution
        chosen = np.zeros(batch.shape, dtype=bool)
        eligible_np, runs_np = eligible.cpu().numpy(), batch.run_ids.cpu().numpy()
        budgets = _budget(eligible.sum(1), self.mlm_probability).tolist()
        for b, budget in enumerate(budgets):
            positions = np.flatnonzero(eligible_np[b])
            if budget == 0:
                continue
            words, token_word, sizes = np.unique(
                runs_np[b, positions], return_inverse=True, return_counts=True
            )
            taken = np.zeros(len(words), dtype=bool)
            count = 0
            while count < budget:
                free = np.flatnonzero(~taken[token_word])
                if free.size == 0:
                    break
                anchor = token_word[free[rng.integers(free.size)]]
                for w in range(anchor, min(anchor + int(rng.choice(lengths, p=probs)), len(words))):
                    if count >= budget:
                        break
                    if not taken[w]:
                        taken[w] = True
                        count += int(sizes[w])
            chosen[b, positions[taken[token_word]]] = True
        return torch.from_numpy(chosen).to(eligible.device)


@lru_cache(maxsize=64)
def _compiled(pattern: str, ignore_case: bool):
    import regex  # unlike re, it can time out a match (a guard against catastrophic backtracking)

    if len(pattern) > MAX_PATTERN_CHARS:
        raise InputError(
            f"The pattern has {len(pattern)} characters; the limit is {MAX_PATTERN_CHARS}. Shorten it."
        )
    try:
        return regex.compile(pattern, (regex.IGNORECASE if ignore_case else 0) | regex.V0)
    except regex.error as exc:
        raise InputError(
            f"The pattern {pattern!r} is not a valid regular expression ({exc}). "
            "Put a backslash before special characters such as ( [ . * + ? to match them literally."
        ) from None
    except (KeyError, ValueError, OverflowError, RecursionError):
        # regex raises these, not regex.error, for some patterns: KeyError for an inline "(?V1)"
        # that contradicts the V0 flag (found by tests/fuzz/fuzz_masking.py).
        raise InputError(
            f"The pattern {pattern!r} cannot be used: its inline flags or size are not supported. "
            "Remove (?V1)-style flags and simplify it."
        ) from None


def _rule_matches(
    batch: TokenBatch, rule: str, words: tuple[str, ...], pattern: str, ignore_case: bool, label: str
):
    """(B, T) bool: positions whose whole word matches ``rule``."""
    if rule in _RULE_CATEGORY:
        codes = batch.category_codes
        if codes is None:
            raise InputError(
                f"{label}: the {rule} rule needs each token's category: build the batch with "
                "TokenBatch.from_tokens, or pass categories= or words= to TokenBatch.from_ids."
            )
        return codes == CATEGORY_CODES[_RULE_CATEGORY[rule]]
    if batch.words is None:
        raise InputError(
            f"{label}: the {rule} rule needs the text of each word: build the batch with "
            "TokenBatch.from_tokens, or pass words= to TokenBatch.from_ids."
        )
    if rule == "words":
        wanted = {w.casefold() if ignore_case else w for w in words}
        table = [[(w.casefold() if ignore_case else w) in wanted for w in row] for row in batch.words]
    else:
        compiled = _compiled(pattern, ignore_case)
        deadline = time.monotonic() + REGEX_BUDGET_S
        cache: dict[str, bool] = {}
        table = []
        for row in batch.words:
            table.append([_regex_match(compiled, w, cache, deadline, pattern) for w in row])
    return batch._per_word(table, fill=False, dtype=torch.bool) & ~batch.special


def _regex_match(compiled, word: str, cache: dict[str, bool], deadline: float, pattern: str) -> bool:
    if word not in cache:
        try:
            cache[word] = compiled.fullmatch(word, timeout=REGEX_TIMEOUT_S) is not None
        except TimeoutError:
            raise InputError(
                f"The pattern {pattern!r} takes too long on the word {word[:40]!r}; simplify it "
                "(nested repeats such as (a+)+ are slow)."
            ) from None
        if time.monotonic() > deadline:
            raise InputError(f"The pattern {pattern!r} takes too long on this text; simplify it.")
    return cache[word]


@dataclass(frozen=True)
class RuleBased(_Corrupting):
    """Rule-based: target or protect stopwords, punctuation, numbers, a word list or a regex.

    Rules apply to whole words (all pieces share the decision). ``mode="target"`` chooses the
    matches, ``mode="protect"`` removes them from what other steps may choose ("never mask
    stopwords"). ``rate`` < 1 applies the rule to that random share of the matching words.
    A regex must match the whole word (``fullmatch``). Example:
    ``RuleBased(rule="regex", pattern=r"[A-Z]\\w+", ignore_case=False)`` targets capitalised words.
    """

    name: ClassVar[str] = "rule-based"
    label: ClassVar[str] = "rule-based masking"

    rule: str = field(default="stopwords", metadata=param("Which words the rule matches.", choices=RULES))
    mode: str = field(
        default="target",
        metadata=param("target: mask the matches; protect: never mask them.", choices=("target", "protect")),
    )
    rate: float = field(default=1.0, metadata=param("Share of matching words the rule applies to.", **_PROB))
    words: tuple[str, ...] = field(
        default=(), metadata=param("Word list for the words rule (comma-separated).")
    )
    pattern: str = field(
        default="", metadata=param("Regular expression for the regex rule (matches whole words).")
    )
    ignore_case: bool = field(default=True, metadata=param("Match words and patterns ignoring case."))

    def _check(self) -> None:
        super()._check()
        if self.rule == "words" and not self.words:
            raise InputError(f"{self.label}: the words rule needs at least one word.")
        if self.rule == "regex":
            if not self.pattern:
                raise InputError(f"{self.label}: the regex rule needs a pattern.")
            _compiled(self.pattern, self.ignore_case)

    def describe(self) -> str:
        what = (
            self.rule
            if self.rule in _RULE_CATEGORY
            else f"{self.rule} ({self.pattern or ', '.join(self.words)})"
        )
        return f"rule {self.mode} {what}"

    def _matches(self, batch, gen):
        matches = _rule_matches(batch, self.rule, self.words, self.pattern, self.ignore_case, self.label)
        if self.rate < 1:
            matches = matches & (_word_uniform(batch, gen) < self.rate)
        return matches

    def protect(self, batch, eligible, gen):
        return self._matches(batch, gen) if self.mode == "protect" else None

    def select(self, batch, eligible, gen):
        return self._matches(batch, gen) & eligible if self.mode == "target" else None

    @property
    def corruption(self) -> Corruption | None:
        return super().corruption if self.mode == "target" else None


def _positions_mask(batch: TokenBatch, positions: tuple[int, ...], label: str) -> torch.Tensor:
    """(B, T) bool with ``positions`` set in every row; InputError if out of range or special."""
    out = torch.zeros(batch.shape, dtype=torch.bool, device=batch.ids.device)
    if not positions:
        return out
    length = batch.shape[1] if batch.lengths is None else min(batch.lengths)
    index = _checked_positions(positions, length, f"{label}: position")
    out[:, index] = True
    hit = out & batch.special
    if bool(hit.any()):
        bad = sorted(set(hit.nonzero()[:, 1].tolist()))
        raise InputError(
            f"{label}: position(s) {', '.join(map(str, bad))} hold special tokens ([CLS], [SEP], padding); "
            "pick word tokens instead."
        )
    return out


@dataclass(frozen=True)
class ManualMasking(_Corrupting):
    """Manual: the positions the user clicked (token indexes, special tokens included in the count).

    By default a clicked token becomes the mask token (``mask_replace_prob=1``).
    ``whole_word=True`` extends each click to its whole word.
    """

    name: ClassVar[str] = "manual"
    label: ClassVar[str] = "manual masking"

    positions: tuple[int, ...] = field(
        default=(), metadata=param("Token positions to mask (comma-separated).", min=0)
    )
    whole_word: bool = field(default=False, metadata=param("Extend each chosen token to its whole word."))
    mask_replace_prob: float = field(
        default=1.0,
        kw_only=True,
        metadata=param("Share of chosen tokens replaced by the mask token.", **_PROB),
    )
    random_replace_prob: float = field(
        default=0.0,
        kw_only=True,
        metadata=param("Share of chosen tokens replaced by a random token.", **_PROB),
    )

    def _check(self) -> None:
        super()._check()
        if not self.positions:
            raise InputError(f"{self.label}: click at least one token to mask.")
        if min(self.positions) < 0:
            raise InputError(f"{self.label}: positions count from 0; got {min(self.positions)}.")
        object.__setattr__(self, "positions", tuple(sorted(set(self.positions))))

    def select(self, batch, eligible, gen):
        clicked = _positions_mask(batch, self.positions, self.label)
        if self.whole_word:
            runs = batch.run_ids
            per_run = torch.zeros_like(runs).scatter_reduce(1, runs, clicked.long(), reduce="amax")
            clicked = per_run.gather(1, runs) > 0
        return clicked & eligible


@dataclass(frozen=True)
class AdaptiveMasking(_Corrupting):
    """Adaptive: tokens are chosen with probability proportional to per-token scores.

    The scores (e.g. the current model's loss or surprisal per token) come with the batch
    (``TokenBatch.scores`` or ``apply_strategy(..., scores=...)``), so the engine needs no
    model. The expected number chosen stays p·n: probabilities above 1 are capped and the
    excess goes to the other tokens. ``uniform_mix`` blends in plain random masking so that
    no token is never chosen. Step the rate with a ``RateSchedule`` and ``with_rate``.
    """

    name: ClassVar[str] = "adaptive"
    label: ClassVar[str] = "adaptive masking"

    mlm_probability: float = field(
        default=0.15, metadata=param("Expected share of eligible tokens chosen.", **_PROB)
    )
    uniform_mix: float = field(
        default=0.0, metadata=param("Share of plain random masking mixed in.", **_PROB)
    )

    def probabilities(self, batch: TokenBatch, eligible: torch.Tensor) -> torch.Tensor:
        """(B, T) float64 choice probabilities; each row sums to p·n (unless capping makes it impossible)."""
        if batch.scores is None:
            raise InputError(
                f"{self.label} needs a score per token (e.g. the model's loss on each token): pass scores=."
            )
        weight = batch.scores.double().clamp_min(0) * eligible
        n = eligible.sum(1, keepdim=True).double()
        uniform = eligible.double() / n.clamp_min(1)
        total = weight.sum(1, keepdim=True)
        share = torch.where(total > 0, weight / total.clamp_min(1e-300), uniform)  # all-zero scores: uniform
        share = (1 - self.uniform_mix) * share + self.uniform_mix * uniform
        prob = share * (self.mlm_probability * n)
        for _ in range(64):  # water-filling: a few rounds settle any realistic score distribution
            excess = (prob - 1).clamp_min(0).sum(1, keepdim=True)
            if not bool((excess > 1e-12).any()):
                break
            prob = prob.clamp_max(1)
            free = (prob < 1) & (prob > 0)
            free_mass = (prob * free).sum(1, keepdim=True)
            prob = torch.where(free, prob + excess * prob / free_mass.clamp_min(1e-300), prob)
        return prob.clamp(0, 1)

    def select(self, batch, eligible, gen):
        probability = self.probabilities(batch, eligible).to(torch.float32)
        return torch.bernoulli(probability, generator=gen).bool() & eligible


@dataclass(frozen=True)
class AttentionExclusion(MaskingStep):
    """Attention exclusion: remove tokens from the context instead of replacing them.

    Chosen by positions and/or a rule; they keep their ids, get kind ``"excluded"`` and label
    -100, and ``attention_exclude`` marks them so that no position attends to them.
    """

    name: ClassVar[str] = "attention-exclusion"
    label: ClassVar[str] = "attention exclusion"

    positions: tuple[int, ...] = field(
        default=(), metadata=param("Token positions to exclude (comma-separated).", min=0)
    )
    rule: str = field(
        default="",
        metadata=param(
            "Exclude every word of this kind.", choices=("", "stopwords", "punctuation", "numbers")
        ),
    )

    def _check(self) -> None:
        if not self.positions and not self.rule:
            raise InputError(
                f"{self.label}: give positions to exclude or a rule (stopwords, punctuation, numbers)."
            )
        if self.positions and min(self.positions) < 0:
            raise InputError(f"{self.label}: positions count from 0; got {min(self.positions)}.")
        object.__setattr__(self, "positions", tuple(sorted(set(self.positions))))

    def exclude(self, batch, eligible, gen):
        chosen = _positions_mask(batch, self.positions, self.label)
        if self.rule:
            chosen |= _rule_matches(batch, self.rule, (), "", True, self.label)
        return chosen & eligible


@dataclass(frozen=True)
class Compose(MaskingStep):
    """Several steps as one strategy (see the module docstring for the order they act in).

    Example: ``Compose((PrivacyMasking(), RuleBased(rule="stopwords", mode="protect"),
    RandomMasking(0.15)))``: personal data replaced, stopwords never masked, 15% of the rest.
    """

    name: ClassVar[str] = "compose"
    label: ClassVar[str] = "composed masking"

    steps: tuple = ()

    def _check(self) -> None:
        flat = []
        for step in self.steps if isinstance(self.steps, Iterable) else [self.steps]:
            if isinstance(step, Compose):
                flat.extend(step.steps)
            elif isinstance(step, MaskingStep | PrivacyMasking):
                flat.append(step)
            else:
                raise InputError(f"{self.label}: {step!r} is not a masking strategy.")
        if not flat:
            raise InputError(f"{self.label}: add at least one step.")
        if sum(isinstance(s, PrivacyMasking) for s in flat) > 1:
            raise InputError(f"{self.label}: use one privacy step listing every kind of personal data.")
        object.__setattr__(self, "steps", tuple(flat))

    def describe(self) -> str:
        return " + ".join(s.describe() if isinstance(s, MaskingStep) else s.label for s in self.steps)


# ----------------------------------------------------------------------------- the engine


def _token_steps(strategy) -> list[MaskingStep]:
    steps = strategy.steps if isinstance(strategy, Compose) else (strategy,)
    if not all(isinstance(s, MaskingStep | PrivacyMasking) for s in steps):
        raise InputError(f"{strategy!r} is not a masking strategy; build one with strategy_from_params.")
    return [s for s in steps if isinstance(s, MaskingStep)]


def _privacy_step(strategy) -> PrivacyMasking | None:
    steps = strategy.steps if isinstance(strategy, Compose) else (strategy,)
    return next((s for s in steps if isinstance(s, PrivacyMasking)), None)


def make_generator(rng: int | torch.Generator = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` from an int seed (or the generator itself, checked against ``device``)."""
    device = torch.device(device)
    if isinstance(rng, torch.Generator):
        if rng.device.type != device.type:
            raise InputError(
                f"The generator is on {rng.device.type} but the tokens are on {device.type}: pass a seed."
            )
        return rng
    if isinstance(rng, bool) or not isinstance(rng, (int, np.integer)):
        raise InputError(f"rng must be an int seed or a torch.Generator; got {rng!r}.")
    return torch.Generator(device=device).manual_seed(int(rng) % 2**63)


def _corrupt(
    ids: torch.Tensor, chosen: torch.Tensor, corruption: Corruption, vocab: Vocab, gen: torch.Generator
):
    """Apply the 80/10/10 split to ``chosen``, draw for draw as transformers does; returns (ids, codes)."""
    out = ids.clone()
    codes = torch.zeros(ids.shape, dtype=torch.int8, device=ids.device)
    mask_p, random_p = corruption.mask_replace_prob, corruption.random_replace_prob
    replaced = (
        torch.bernoulli(torch.full(ids.shape, mask_p, device=ids.device), generator=gen).bool() & chosen
    )
    out[replaced] = vocab.mask_token_id
    random = torch.zeros_like(chosen)
    if mask_p < 1 and random_p > 0:
        scaled = min(1.0, random_p / (1 - mask_p))  # share of the not-[MASK] remainder
        random = torch.bernoulli(torch.full(ids.shape, scaled, device=ids.device), generator=gen).bool()
        random &= chosen & ~replaced
        if corruption.random_excludes_special:
            pool = vocab.non_special_ids.to(ids.device)
            words = pool[torch.randint(len(pool), ids.shape, generator=gen, device=ids.device)]
        else:
            words = torch.randint(
                vocab.vocab_size, ids.shape, dtype=torch.long, generator=gen, device=ids.device
            )
        out[random] = words[random]
    codes[replaced] = _CODE[MASKED]
    codes[random] = _CODE[RANDOM]
    codes[chosen & ~replaced & ~random] = _CODE[KEPT]
    return out, codes


def mask_batch(batch: TokenBatch, strategy, vocab: Vocab, rng: int | torch.Generator = 0) -> BatchMaskResult:
    """Apply ``strategy`` to a ``(B, T)`` batch with one generator (the trainer's fast path).

    Text steps (privacy) are not applied here: they run on the raw text (``prepare_text``).
    Example: ``mask_batch(TokenBatch.from_ids(ids, vocab), RandomMasking(), vocab, rng=gen).labels``.
    """
    gen = make_generator(rng, batch.ids.device)
    steps = _token_steps(strategy)
    base = ~batch.special
    preset = base & (batch.ids == vocab.mask_token_id)  # typed masks stay masks
    protected = torch.zeros_like(base) if batch.protected is None else batch.protected.clone()
    for step in steps:
        found = step.protect(batch, base, gen)
        if found is not None:
            protected |= found
    eligible = base & ~protected & ~preset  # (B, T)
    chosen = torch.zeros_like(base)
    for step in steps:
        found = step.select(batch, eligible, gen)
        if found is not None:
            chosen |= found & eligible
    excluded = torch.zeros_like(base)
    for step in steps:
        found = step.exclude(batch, eligible, gen)
        if found is not None:
            excluded |= found
    excluded &= eligible & ~chosen
    corruption = next((s.corruption for s in steps if s.corruption is not None), None) or Corruption()
    input_ids, codes = _corrupt(batch.ids, chosen, corruption, vocab, gen)
    codes[preset] = _CODE[MASKED]
    codes[excluded] = _CODE[EXCLUDED]
    return BatchMaskResult(
        input_ids=input_ids,
        labels=torch.where(chosen, batch.ids, torch.full_like(batch.ids, IGNORE_INDEX)),
        kind_codes=codes,
        attention_exclude=excluded,
        original_ids=batch.ids,
        n_eligible=(eligible | preset).sum(1),
        n_chosen=(chosen | preset).sum(1),
        lengths=batch.lengths,
    )


def apply_strategy(
    tokens: Tokens,
    strategy,
    vocab: Vocab,
    *,
    rng: int | torch.Generator = 0,
    scores: Sequence[float] | np.ndarray | None = None,
    protected: Iterable[int] = (),
    require_eligible: bool = True,
    require_chosen: bool = False,
) -> MaskResult:
    """Apply ``strategy`` to one tokenized text; the same seed gives the same mask.

    ``scores``: (T,) per-token scores for adaptive masking. ``protected``: positions no step
    may touch (``PrivacyResult.protected_positions``). Raises NothingToMaskError, naming the
    rules, when nothing is eligible (``require_eligible``) or nothing was chosen (``require_chosen``).
    """
    protected = list(protected)
    batch = TokenBatch.from_tokens(
        [tokens],
        pad_id=vocab.pad_token_id or 0,
        scores=None if scores is None else [scores],
        protected=[protected],
    )
    result = mask_batch(batch, strategy, vocab, rng).row(0)
    if require_eligible and result.n_eligible == 0:
        reasons = [s.describe() for s in _token_steps(strategy) if getattr(s, "mode", "") == "protect"]
        if protected:
            reasons.append("the protected privacy placeholders")
        raise NothingToMaskError(
            f"Nothing to mask: {' and '.join(reasons) or 'the rules'} left no token that can be masked."
        )
    if require_chosen and result.is_empty:
        raise NothingToMaskError(f"Nothing to mask: {_describe(strategy)} chose no token in this text.")
    return result


def _describe(strategy) -> str:
    return strategy.describe() if isinstance(strategy, MaskingStep) else strategy.label


def prepare_text(text: str, strategy, mask_token: str = "[MASK]") -> PrivacyResult | None:
    """Run the strategy's text steps (privacy) on raw text; None when it has none."""
    privacy = _privacy_step(strategy)
    return None if privacy is None else privacy.apply(text, mask_token=mask_token)


@dataclass(frozen=True, eq=False)
class MaskedText:
    """The outcome of ``mask_text``: the privacy report (or None), the tokens and the mask."""

    privacy: PrivacyResult | None
    tokens: Tokens  # of the text after privacy replacement
    result: MaskResult


def mask_text(
    tokenizer,
    text: str,
    strategy,
    *,
    vocab: Vocab | None = None,
    rng: int | torch.Generator = 0,
    language: str = "en",
    require_chosen: bool = False,
) -> MaskedText:
    """The whole path for one text: privacy on the raw text, tokenize, protect placeholders, mask.

    Example: ``mask_text(tok, "Mail bob@x.org now", Compose((PrivacyMasking(), RandomMasking())))``.
    """
    vocab = vocab or Vocab.from_tokenizer(tokenizer)
    privacy = prepare_text(text, strategy, mask_token=vocab.mask_token)
    tokens = tokenize(tokenizer, text if privacy is None else privacy.text, language=language)
    protected = () if privacy is None else privacy.protected_positions(tokens)
    result = apply_strategy(
        tokens, strategy, vocab, rng=rng, protected=protected, require_chosen=require_chosen
    )
    return MaskedText(privacy=privacy, tokens=tokens, result=result)


# ----------------------------------------------------------------------------- static / dynamic, schedules


@dataclass(frozen=True)
class DrawPolicy(Validated):
    """Static or dynamic masking: which random draw an example gets in a given epoch.

    ``static``: one mask per example, the same every epoch (seeded by the example's key);
    ``dynamic``: a fresh mask each epoch (RoBERTa). Both are reproducible: the seed depends only
    on (seed, key, epoch), never on batch order, so a resumed run masks exactly as before.
    Example: ``DrawPolicy("static").generator_for(example_index, epoch)``.
    """

    label: ClassVar[str] = "draw policy"

    mode: str = field(
        default="dynamic",
        metadata=param(
            "static: one mask per example; dynamic: new each epoch.", choices=("static", "dynamic")
        ),
    )
    seed: int = field(default=0, metadata=param("Base seed of every draw.", min=0))

    def seed_for(self, example_key: int | str, epoch: int = 0) -> int:
        """A 63-bit seed from (seed, key, epoch); the epoch is ignored when static."""
        if isinstance(example_key, np.generic | torch.Tensor):
            example_key = example_key.item()  # np.int64(3) and 3 must name the same example
        draw = 0 if self.mode == "static" else int(epoch)
        digest = hashlib.blake2b(f"{self.seed}|{example_key!r}|{draw}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % 2**63

    def generator_for(self, example_key: int | str, epoch: int = 0, device: str | torch.device = "cpu"):
        return torch.Generator(device=device).manual_seed(self.seed_for(example_key, epoch))


def mask_examples(
    batch: TokenBatch, strategy, vocab: Vocab, keys: Sequence[int | str], epoch: int, policy: DrawPolicy
) -> BatchMaskResult:
    """Mask each row with its own generator from ``policy`` (static or dynamic masking).

    Row ``b`` gets exactly what ``mask_batch(batch.select_rows([b]), ..., rng=policy.generator_for(keys[b],
    epoch))`` gives, whatever else is in the batch. A loop over rows, not tokens.
    """
    if len(keys) != batch.shape[0]:
        raise InputError(f"Give one key per row: {batch.shape[0]} rows, {len(keys)} keys.")
    device = batch.ids.device
    return BatchMaskResult.concat(
        [
            mask_batch(batch.select_rows([b]), strategy, vocab, policy.generator_for(key, epoch, device))
            for b, key in enumerate(keys)
        ]
    )


def mask_many(records: Sequence[Tokens], strategy, vocab: Vocab, *, seed: int = 0) -> list[MaskResult]:
    """Batch analysis: record ``i`` gets the static draw for key ``i`` (independent of the others).

    Records with nothing eligible get an empty result instead of an error.
    """
    policy = DrawPolicy("static", seed)
    return [
        apply_strategy(record, strategy, vocab, rng=policy.generator_for(i), require_eligible=False)
        for i, record in enumerate(records)
    ]


@dataclass(frozen=True)
class RateSchedule(Validated):
    """A masking rate that changes with the training step, e.g. 0.30 → 0.15 (linear or cosine).

    Example: ``RateSchedule("linear", 0.30, 0.15, 1000).rate(500) == 0.225``.
    """

    label: ClassVar[str] = "rate schedule"

    kind: str = field(
        default="constant",
        metadata=param("How the rate moves from start to end.", choices=("constant", "linear", "cosine")),
    )
    start: float = field(default=0.15, metadata=param("Rate at step 0.", **_PROB))
    end: float = field(default=0.15, metadata=param("Rate from total_steps on.", **_PROB))
    total_steps: int = field(default=1000, metadata=param("Steps from start to end.", min=1))

    def rate(self, step: int) -> float:
        if self.kind == "constant":
            return self.start
        t = min(max(step, 0), self.total_steps) / self.total_steps
        if self.kind == "linear":
            return self.start + (self.end - self.start) * t
        return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * t))


def with_rate(strategy, rate: float):
    """The strategy with ``mlm_probability = rate`` (in every step of a Compose that has one)."""
    if isinstance(strategy, Compose):
        return Compose(tuple(with_rate(s, rate) for s in strategy.steps))
    if hasattr(strategy, "mlm_probability"):
        return dataclasses.replace(strategy, mlm_probability=rate)
    return strategy


# ----------------------------------------------------------------------------- frequency strip


def selection_frequency(
    tokens: Tokens,
    strategy,
    vocab: Vocab,
    *,
    draws: int = 200,
    rng: int | torch.Generator = 0,
    scores: Sequence[float] | np.ndarray | None = None,
    protected: Iterable[int] = (),
) -> np.ndarray:
    """(T,) float in [0, 1]: how often each position is touched (any kind) over ``draws`` draws.

    One batched call of ``draws`` copies of the text. Example: with ``RandomMasking(0.15)``
    eligible positions read ≈ 0.15 and special tokens 0.
    """
    if isinstance(draws, bool) or not isinstance(draws, int) or not 1 <= draws <= MAX_DRAWS:
        raise InputError(f"draws must be a whole number from 1 to {MAX_DRAWS}; got {draws!r}.")
    one = TokenBatch.from_tokens(
        [tokens],
        pad_id=vocab.pad_token_id or 0,
        scores=None if scores is None else [scores],
        protected=[list(protected)],
    )
    batch = one.select_rows([0] * draws)
    result = mask_batch(batch, strategy, vocab, rng)
    return (result.kind_codes != 0).double().mean(0).cpu().numpy()


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: its name, class, one-line help and parameters."""

    name: str
    cls: type
    help: str
    params: tuple[ParamSpec, ...]


def _first_line(cls: type) -> str:
    return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


_CLASSES = (
    RandomMasking,
    WholeWordMasking,
    SpanMasking,
    RuleBased,
    PrivacyMasking,
    ManualMasking,
    AdaptiveMasking,
    AttentionExclusion,
    Compose,
)
STRATEGIES: dict[str, StrategySpec] = {
    cls.name: StrategySpec(cls.name, cls, _first_line(cls), param_specs(cls)) for cls in _CLASSES
}


def strategy_from_params(name: str, params: Mapping[str, Any] | None = None):
    """Build a strategy from its registry name and parameters (strings from URLs/CLI or native values).

    Example: ``strategy_from_params("random", {"mlm_probability": "0.3", "exact": "true"})``.
    ``compose`` takes ``{"steps": [{"name": ..., "params": {...}}, ...]}`` (or that list as JSON).
    """
    return _from_params(name, params, depth=0)


def _from_params(name: str, params: Mapping[str, Any] | None, depth: int):
    key = str(name).strip().lower().replace("_", "-")
    if key not in STRATEGIES:
        raise InputError(f"Unknown masking strategy {shown_value(name)}; choose from {', '.join(STRATEGIES)}.")
    spec = STRATEGIES[key]
    if params is not None and not isinstance(params, Mapping):
        raise InputError(
            f"{spec.cls.label}: params must be a mapping of names to values; got {shown_value(params)}."
        )
    params = dict(params or {})
    if spec.cls is Compose:
        return _compose_from_params(params, depth)
    valid = {p.name: p for p in spec.params}
    unknown = [str(k) for k in params if k not in valid]  # keys of a hand-made mapping need not be text
    if unknown:
        raise InputError(
            f"{spec.cls.label}: unknown parameter(s) {', '.join(shown_value(k, 40)[1:-1] for k in unknown)}; "
            f"valid: {', '.join(valid) or 'none'}."
        )
    kwargs = {}
    for param_name, value in params.items():
        try:
            kwargs[param_name] = valid[param_name].parse(value)
        except InputError as exc:
            raise InputError(f"{spec.cls.label}: {exc}") from None
    return spec.cls(**kwargs)


def _compose_from_params(params: dict, depth: int):
    unknown = [str(k) for k in params if k != "steps"]
    if unknown:
        raise InputError(
            f"composed masking: unknown parameter(s) {', '.join(shown_value(k, 40)[1:-1] for k in unknown)}; "
            "valid: steps."
        )
    if depth >= MAX_COMPOSE_DEPTH:  # a hand-made link could nest compositions until the interpreter overflows
        raise InputError(f"composed masking: compositions nest at most {MAX_COMPOSE_DEPTH} levels deep.")
    steps = params.get("steps", [])
    if isinstance(steps, str):
        try:
            steps = json.loads(steps)
        except json.JSONDecodeError as exc:
            raise InputError(f"composed masking: steps must be a JSON list ({exc.msg}).") from None
        except (RecursionError, ValueError):  # brackets nested thousands deep, a 5,000-digit number
            raise InputError("composed masking: steps must be a short JSON list of {name, params}.") from None
    if not isinstance(steps, list | tuple):
        raise InputError("composed masking: steps must be a list of {name, params}.")
    if len(steps) > MAX_COMPOSE_STEPS:  # each step is a pass over every batch
        raise InputError(f"composed masking: at most {MAX_COMPOSE_STEPS} steps; got {len(steps):,}.")
    built = []
    for step in steps:
        if isinstance(step, MaskingStep | PrivacyMasking):
            built.append(step)
        elif isinstance(step, Mapping) and "name" in step:
            built.append(_from_params(step["name"], step.get("params") or {}, depth + 1))
        else:
            raise InputError(f"composed masking: each step needs a name and params; got {shown_value(step)}.")
    return Compose(tuple(built))


def params_of(strategy, as_strings: bool = False) -> dict[str, Any]:
    """The parameters of ``strategy``; ``strategy_from_params(strategy.name, params_of(strategy))`` rebuilds it.

    ``as_strings=True`` gives URL/CLI strings (``ParamSpec.format``).
    """
    if isinstance(strategy, Compose):
        steps = [{"name": s.name, "params": params_of(s)} for s in strategy.steps]
        return {"steps": json.dumps(steps) if as_strings else steps}
    if not hasattr(strategy, "name") or strategy.name not in STRATEGIES:
        raise InputError(f"{strategy!r} is not a registered masking strategy.")
    specs = param_specs(type(strategy))
    return {
        s.name: (s.format(getattr(strategy, s.name)) if as_strings else getattr(strategy, s.name))
        for s in specs
    }
