"""Tokenization into a ``Tokens`` record that every later step shares.

Two rules make typed text safe and predictable:

* the model's own mask string (``[MASK]``, ``<mask>``) typed by the user is honoured as a
  mask; every other special string (``[CLS]``, ``</s>``, ``<pad>``) is split into ordinary
  word pieces, so typing it never injects a control token;
* offsets always point into the original text, so highlights line up with what was typed,
  whatever the script (emoji, combining marks, RTL, CJK).

Each token also gets a category (stopword, punctuation, number, content, special) from its
whole word, so all pieces of a word share one category.
"""

from __future__ import annotations

import importlib.util
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.text.languages import DEFAULT_LANGUAGE, LANGUAGES, segment_words

MAX_TEXT_CHARS = 100_000
STOPWORD = "stopword"
PUNCTUATION = "punctuation"
NUMBER = "number"
CONTENT = "content"
SPECIAL = "special"
CATEGORIES = (STOPWORD, PUNCTUATION, NUMBER, CONTENT)

# Fast tokenizers are not thread-safe ("Already borrowed"); one lock per tokenizer object.
# Every call that encodes must hold it, not only the ones that pass ``split_special_tokens=True``:
# transformers stores that choice on the shared Rust backend (``encode_special_tokens``) before each
# encode, so an unlocked call with the default (False) between another thread's setting and its
# encode turned a typed "[CLS]" into the real control token there.
# Re-entrant: a caller that holds it may call a helper that takes it again in the same thread
# (finetune._first_blocks holds it around training.pack, which locks each encode); a plain Lock
# deadlocked the Fine-tune page's preview there.
_TOKENIZER_LOCKS: dict[int, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


def tokenizer_lock(tokenizer) -> threading.RLock:
    with _LOCKS_GUARD:
        return _TOKENIZER_LOCKS.setdefault(id(tokenizer), threading.RLock())


@dataclass(frozen=True)
class Tokens:
    """A tokenized text. All lists have one entry per token, special tokens included.

    Example: ``tokenize(tok, "Hi [MASK].")`` gives tokens ``[CLS] hi [MASK] . [SEP]``,
    offsets ``(0,0) (0,2) (3,9) (9,10) (0,0)`` and ``mask_positions == [2]``.
    """

    text: str
    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]  # character span in ``text``; (0, 0) for specials
    word_ids: tuple[int | None, ...]  # None for special tokens
    special: tuple[bool, ...]
    categories: tuple[str, ...]
    mask_token_id: int

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def mask_positions(self) -> list[int]:
        """Positions holding the mask token (typed by the user or set by a strategy)."""
        return [i for i, token_id in enumerate(self.ids) if token_id == self.mask_token_id]

    @property
    def eligible_positions(self) -> list[int]:
        """Positions a strategy may choose: everything but special tokens."""
        return [i for i, is_special in enumerate(self.special) if not is_special]

    def word_text(self, position: int) -> str:
        """The whole word (from the original text) that the token at ``position`` belongs to."""
        word = self.word_ids[position]
        if word is None:
            return self.tokens[position]
        spans = [self.offsets[i] for i, w in enumerate(self.word_ids) if w == word]
        return self.text[min(s for s, _ in spans) : max(e for _, e in spans)]

    def with_ids(self, ids: list[int] | tuple[int, ...], tokenizer) -> Tokens:
        """The same positions with other ids (e.g. after masking); offsets stay the original ones."""
        if len(ids) != len(self.ids):
            raise InputError("Masking must keep the number of tokens.")
        return Tokens(
            text=self.text,
            ids=tuple(int(i) for i in ids),
            tokens=tuple(tokenizer.convert_ids_to_tokens([int(i) for i in ids])),
            offsets=self.offsets,
            word_ids=self.word_ids,
            special=self.special,
            categories=self.categories,
            mask_token_id=self.mask_token_id,
        )


def has_visible(text: str) -> bool:
    """Whether the text has a character other than spaces, format and control characters: what decides
    'nothing to mask'."""
    return any(unicodedata.category(ch)[0] not in "CZ" for ch in text)


def check_text(text: str) -> None:
    """Raise InputError for text that cannot be tokenized meaningfully."""
    if not isinstance(text, str) or not has_visible(text):
        raise NothingToMaskError("Nothing to mask: the text is empty or contains only spaces or invisible characters.")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"The text has {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}. Shorten it.")


@lru_cache(maxsize=8)
def _special_frame(tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The special ids a tokenizer puts before and after a single sequence."""
    with tokenizer_lock(tokenizer):  # encodes on the shared backend (see tokenizer_lock)
        bare = tokenizer("x", add_special_tokens=False)["input_ids"]
        full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return tuple(full[:start]), tuple(full[start + len(bare) :])
    return (), ()


@lru_cache(maxsize=8)
def _frame_tokens(tokenizer) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """The token strings of ``_special_frame``'s ids, and of the mask token's id."""
    prefix, suffix = _special_frame(tokenizer)
    return (tuple(tokenizer.convert_ids_to_tokens(list(prefix))), tuple(tokenizer.convert_ids_to_tokens(list(suffix))),
            tokenizer.convert_ids_to_tokens(tokenizer.mask_token_id))


@lru_cache(maxsize=8)
def stopwords(language: str = DEFAULT_LANGUAGE) -> frozenset[str]:
    """spaCy's stopword list for ``language`` (ISO 639-1, ``languages.LANGUAGES``; no model needed).

    spaCy's lists hold function words ("the", "of", "would"); broader lists such as
    stopwords-iso also count "hello" or "world", which would surprise a class.
    """
    if language not in LANGUAGES:
        raise InputError(
            f"No stopword list for language {str(language)[:20]!r}. Use an ISO 639-1 code such as en, de, fr or zh."
        )
    # spaCy's stop_words file alone, run as a module of its own (each is a plain word list): importing
    # spacy.lang.<code>.stop_words runs spacy/__init__ first (261 modules, 2.3 s on a 2-core CPU), which
    # a class's first sentences on a fresh server waited for; get_lang_class would import even more.
    folder = Path(importlib.util.find_spec("spacy").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location(f"masklab_stop_words_{language}",
                                                  folder / "lang" / language / "stop_words.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return frozenset(word.lower() for word in module.STOP_WORDS)


def word_category(word: str, language: str = DEFAULT_LANGUAGE) -> str:
    """stopword / punctuation / number / content for one word of the original text."""
    if len(word) <= CACHED_WORD_CHARS:  # a corpus repeats its words: the batch analysis asks about each again
        return _cached_category(word, language)
    return _category(word, language)


CACHED_WORD_CHARS = 32  # longer words are rare and would let hostile text fill the cache with big keys


@lru_cache(maxsize=65536)
def _cached_category(word: str, language: str) -> str:
    return _category(word, language)


def _category(word: str, language: str) -> str:
    stripped = word.strip()
    if not stripped:
        return PUNCTUATION
    if all(unicodedata.category(ch)[0] in "PS" for ch in stripped):
        return PUNCTUATION  # Unicode punctuation and symbols, not only ASCII
    if any(ch.isdigit() for ch in stripped) and all(ch.isdigit() or ch in ".,:/-%" for ch in stripped):
        return NUMBER
    if stripped.lower() in stopwords(language):
        return STOPWORD
    return CONTENT


_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD (one for one, so offsets stay valid).

    Tokenizers refuse strings that cannot be encoded as UTF-8 (a TypeError otherwise).
    """
    return _SURROGATE.sub("\ufffd", text)


def _with_marks(text: str, start: int, end: int, spans) -> list[tuple[int, int]]:
    """Spans of one piece in ``text`` coordinates, each stretched over the combining marks after it.

    Uncased tokenizers strip accents, so "e" + U+0301 maps to the "e" alone; the highlight must
    cover the accent too.
    """
    shifted = [(start + s, start + e) for s, e in spans]
    result = []
    for k, (s, e) in enumerate(shifted):
        limit = shifted[k + 1][0] if k + 1 < len(shifted) else end
        while s < e < limit and unicodedata.category(text[e]).startswith("M"):
            e += 1
        result.append((s, e))
    return result


def _mask_pattern(mask_token: str | None) -> re.Pattern | None:
    return re.compile(re.escape(mask_token)) if mask_token else None


def segmented_word_ids(text: str, language: str, ids: list[int], offsets: list, word_ids: list[int], mask_id: int) -> list[int]:
    """Word ids regrouped by the language's word segmentation (Chinese: jieba); unchanged for other languages.

    A token starts a new word only where the tokenizer starts a word *and* the segmenter starts one,
    so a word piece is never cut from its word and the characters of one Chinese word share an id.
    """
    spans = segment_words(text, language)
    if spans is None:
        return word_ids
    starts = {start for start, _ in spans}
    regrouped: list[int] = []
    for i, (token_id, (start, _), word) in enumerate(zip(ids, offsets, word_ids)):
        if i == 0:
            regrouped.append(0)
            continue
        new_word = (
            token_id == mask_id or ids[i - 1] == mask_id or (word != word_ids[i - 1] and start in starts)
        )
        regrouped.append(regrouped[-1] + int(new_word))
    return regrouped


def tokenize(tokenizer, text: str, language: str = DEFAULT_LANGUAGE) -> Tokens:
    """Tokenize ``text`` for a masked LM (see the module docstring for the rules).

    ``language`` picks the stopword list of each word's category and, for Chinese, groups the
    characters of each jieba word under one word id (``mlm_core.text.languages``).

    Raises InputError for empty/invisible text or text over ``MAX_TEXT_CHARS``.
    """
    result = tokenize_many(tokenizer, [text], language)[0]
    if isinstance(result, InputError):
        raise result
    return result


def tokenize_many(tokenizer, texts: Sequence[str], language: str = DEFAULT_LANGUAGE) -> list[Tokens | InputError]:
    """``tokenize`` of each text, with one call of the tokenizer for all of them; a text that
    ``tokenize`` refuses gets its InputError (not raised) in its place.

    Why: on a short sentence the tokenizer call's own overhead was most of tokenizing, and the batch
    analysis tokenizes a thousand at a time.
    """
    mask_token = tokenizer.mask_token
    pattern = _mask_pattern(mask_token)
    plans: list[list[tuple[int, int, bool]] | InputError] = []
    pieces_to_encode = []
    for text in texts:
        try:
            check_text(text)
        except InputError as exc:
            plans.append(exc)
            continue
        pieces = _pieces(text, pattern)
        plans.append(pieces)
        pieces_to_encode.extend(encodable(text[start:end]) for start, end, is_mask in pieces
                                if not is_mask and start != end)
    with tokenizer_lock(tokenizer):
        encoded = tokenizer(
            pieces_to_encode,
            add_special_tokens=False,
            split_special_tokens=True,  # typed [CLS] or </s> stays text
            return_offsets_mapping=True,
        ) if pieces_to_encode else None
        encodings = encoded.encodings if encoded is not None else []
        results: list[Tokens | InputError] = []
        next_piece = 0
        for text, plan in zip(texts, plans):
            if isinstance(plan, InputError):
                results.append(plan)
                continue
            try:
                results.append(_assemble(tokenizer, text, plan, encodings, next_piece, language))
            except InputError as exc:
                results.append(exc)
            next_piece += sum(1 for start, end, is_mask in plan if not is_mask and start != end)
    return results


def _pieces(text: str, pattern: re.Pattern | None) -> list[tuple[int, int, bool]]:
    """(start, end, is_mask) spans of ``text``: the typed mask strings and the text between them."""
    cursor = 0
    pieces: list[tuple[int, int, bool]] = []
    for match in pattern.finditer(text) if pattern else ():
        # The space before a mask belongs to the mask (RoBERTa's <mask> is lstrip): tokenized on
        # its own it would become a stray "Ġ"/"▁" token the model never saw before a mask.
        before = match.start()
        while before > cursor and text[before - 1].isspace():
            before -= 1
        pieces.append((cursor, before, False))
        pieces.append((match.start(), match.end(), True))
        cursor = match.end()
    pieces.append((cursor, len(text), False))
    return pieces


def _assemble(tokenizer, text: str, pieces, encodings, next_piece: int, language: str) -> Tokens:
    """The ``Tokens`` of ``text`` from its pieces, the encoded ones read from ``encodings`` (the fast
    tokenizer's own objects: no per-item lookups) from index ``next_piece`` on. Called under the
    tokenizer's lock."""
    mask_id = tokenizer.mask_token_id
    prefix, suffix = _special_frame(tokenizer)
    prefix_tokens, suffix_tokens, mask_token = _frame_tokens(tokenizer)
    ids, tokens, offsets, word_ids = [], list(prefix_tokens), [], []
    word_base = 0
    plain = text.isascii()  # no combining marks to stretch a span over (``_with_marks``)
    for start, end, is_mask in pieces:
        if is_mask:
            ids.append(mask_id)
            tokens.append(mask_token)
            offsets.append((start, end))
            word_ids.append(word_base)
            word_base += 1
            continue
        if start == end:
            continue
        encoding = encodings[next_piece]
        piece_words = encoding.word_ids
        ids.extend(encoding.ids)
        tokens.extend(encoding.tokens)
        offsets.extend([(start + s, start + e) for s, e in encoding.offsets] if plain
                       else _with_marks(text, start, end, encoding.offsets))
        word_ids.extend(None if word is None else word_base + word for word in piece_words)
        used = [w for w in piece_words if w is not None]
        word_base += (max(used) + 1) if used else 0
        next_piece += 1
    if not ids:
        raise NothingToMaskError("Nothing to mask: the text produced no tokens for this model.")
    tokens.extend(suffix_tokens)
    word_ids = segmented_word_ids(text, language, ids, offsets, word_ids, mask_id)

    word_spans: dict[int, list[int]] = {}
    for (s, e), word in zip(offsets, word_ids):
        span = word_spans.get(word)
        if span is None:
            word_spans[word] = [s, e]
        else:
            span[0], span[1] = min(span[0], s), max(span[1], e)
    word_categories = {word: word_category(text[s:e], language) for word, (s, e) in word_spans.items()}
    # a mask's word is unknown until predicted: it counts as a content slot
    categories = [CONTENT if token_id == mask_id else word_categories[word] for token_id, word in zip(ids, word_ids)]

    n_prefix, n_suffix = len(prefix), len(suffix)
    return Tokens(
        text=text,
        ids=tuple(prefix) + tuple(ids) + tuple(suffix),
        tokens=tuple(tokens),
        offsets=((0, 0),) * n_prefix + tuple(offsets) + ((0, 0),) * n_suffix,
        word_ids=(None,) * n_prefix + tuple(word_ids) + (None,) * n_suffix,
        special=(True,) * n_prefix + (False,) * len(ids) + (True,) * n_suffix,
        categories=(SPECIAL,) * n_prefix + tuple(categories) + (SPECIAL,) * n_suffix,
        mask_token_id=mask_id,
    )
