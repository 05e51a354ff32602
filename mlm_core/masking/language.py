"""The language a strategy reads its text in, and a strategy set to read another language.

The steps that depend on the language (rules, whole-word, span, exclusion) each declare a
``language`` parameter; tokenization (``tokenize``, the trainer's ``pack``) must use that same
language for the words' categories and, in Chinese, for the words themselves. ``text_language``
is the one place that reads it back from a strategy.
"""

from __future__ import annotations

import dataclasses

from mlm_core.errors import InputError
from mlm_core.masking.engine import Compose, strategy_steps
from mlm_core.settings import shown_value
from mlm_core.text.languages import DEFAULT_LANGUAGE, LANGUAGES


def _has_language(step) -> bool:
    return dataclasses.is_dataclass(step) and any(f.name == "language" for f in dataclasses.fields(step))


def text_language(strategy) -> str:
    """The language of the text ``strategy`` masks: its steps' ``language`` (English when none has one).

    Example: ``text_language(WholeWordMasking(language="zh"))`` is ``"zh"``. Steps that disagree
    raise InputError: one text has one language.
    """
    if strategy is None:
        return DEFAULT_LANGUAGE
    found = {step.language for step in strategy_steps(strategy) if _has_language(step)}
    if len(found) > 1:
        raise InputError(
            f"The masking steps name different languages ({', '.join(sorted(found))}); one text has one "
            "language: give every step the same."
        )
    return found.pop() if found else DEFAULT_LANGUAGE


def with_language(strategy, language: str):
    """``strategy`` with every step that has a ``language`` parameter set to ``language``.

    ``language`` is checked even when no step reads words (random masking), so a wrong code is never ignored.
    """
    if language not in LANGUAGES:
        raise InputError(f"language must be one of {', '.join(LANGUAGES)}; got {shown_value(language)}.")
    if strategy is None:
        return None

    def one(step):
        return dataclasses.replace(step, language=language) if _has_language(step) else step

    if isinstance(strategy, Compose):
        return Compose(tuple(one(step) for step in strategy.steps))
    return one(strategy)
