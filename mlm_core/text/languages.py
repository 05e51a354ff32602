"""The language of a text: which stopword list its words are checked against, and how it splits into words.

Stopwords come from spaCy's lists (``spacy/lang/<code>/stop_words.py``; no pipeline or model
needed), so every language spaCy ships a list for can be chosen, Chinese included. Punctuation
needs no list: it is decided by Unicode category, so Chinese ，。！？、；：「」《》 count too.

Chinese is written without spaces and character-level tokenizers (``bert-base-chinese``) make
each character its own word. For whole-word masking as Chinese BERT-wwm does it, the text is
first segmented into words with jieba; ``segment_words`` gives those words, and ``tokenize`` groups
the characters of one word under one word id, so every strategy that works on words (whole-word,
span, rules, exclusion) treats a Chinese word as one unit.

Every strategy step that depends on the language declares it with ``language_field()``: one
declaration, so the registry, the CLI flag ``--language``, the widgets and the link field agree.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import field
from functools import lru_cache
from pathlib import Path

from mlm_core.settings import param

DEFAULT_LANGUAGE = "en"
SEGMENTED_LANGUAGES = ("zh",)  # written without spaces between words: segmented with jieba


def _spacy_stopword_languages() -> tuple[str, ...]:
    """The ISO codes spaCy ships a stopword list for, read from its package folder without importing spaCy
    (importing it costs about a second, and the list of choices is needed when the registry loads)."""
    spec = importlib.util.find_spec("spacy")
    if spec is None or not spec.submodule_search_locations:
        return (DEFAULT_LANGUAGE,)
    lang = Path(next(iter(spec.submodule_search_locations))) / "lang"
    found = sorted(p.parent.name for p in lang.glob("*/stop_words.py"))
    return tuple(found) or (DEFAULT_LANGUAGE,)


LANGUAGES = _spacy_stopword_languages()
LANGUAGE_LABELS = {"en": "English", "zh": "Chinese", "de": "German", "fr": "French", "es": "Spanish",
                   "it": "Italian", "ja": "Japanese", "ru": "Russian", "pt": "Portuguese", "ar": "Arabic"}


def language_field():
    """The ``language`` parameter of a strategy step (declared here once, used by each step that needs it)."""
    return field(default=DEFAULT_LANGUAGE, metadata=param(
        "The language of the text: which stopword list applies (spaCy's, ISO 639-1 code) and, for Chinese, "
        "how characters group into words (jieba word segmentation, as Chinese BERT-wwm) (language).",
        label="Language of the text", choices=LANGUAGES, choice_labels=LANGUAGE_LABELS))


_JIEBA_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _jieba():
    """jieba's segmenter, built on first use: its dictionary takes about a second to load."""
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it logs "Building prefix dict ..." at every first load
    return jieba.Tokenizer()


def segment_words(text: str, language: str) -> list[tuple[int, int]] | None:
    """Word spans ``(start, end)`` of ``text`` for a language written without spaces; None for others.

    Example: ``segment_words("我爱北京天安门", "zh")`` gives ``[(0, 1), (1, 2), (2, 4), (4, 7)]``.
    """
    if language not in SEGMENTED_LANGUAGES:
        return None
    segmenter = _jieba()
    with _JIEBA_LOCK:  # its first call loads the dictionary; one load for concurrent sessions
        return [(start, end) for _, start, end in segmenter.tokenize(text)]
