"""Strategies from page settings, and what a built strategy needs before it can run.

The explorer's masking panel, the CLI's ``--strategy`` options, Compare, Teach, batch
analysis and fine-tuning all build their strategy here, in one order: privacy first, then
protection rules, then the main strategy, then attention exclusion (``build_strategy``).
``is_adaptive`` and ``needs_word_texts`` tell a caller what to hand the engine (per-token
scores, the text of each word) for any strategy, composed or not.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlm_core.masking.adaptive import AdaptiveMasking
from mlm_core.masking.engine import Compose, strategy_steps
from mlm_core.masking.exclusion import AttentionExclusion
from mlm_core.masking.language import text_language, with_language
from mlm_core.masking.registry import strategy_from_params
from mlm_core.masking.rules import CATEGORY_RULES, RuleBased

MAIN_STRATEGIES = ("random", "whole-word", "span", "rule-based", "adaptive")  # the explorer's choices
PROTECT_RULES = CATEGORY_RULES  # "never mask": the rules that need only each token's category
EXCLUDE_RULES = ("", *CATEGORY_RULES)  # "" excludes nothing


def build_strategy(
    name: str | None,
    params: dict | None = None,
    privacy: bool = False,
    protect: Sequence[str] = (),
    exclude: str = "",
    language: str | None = None,
):
    """The explorer's composition, shared by the pages and the CLI: privacy first, then
    protection rules, then the main strategy, then attention exclusion. None if nothing.

    ``language`` (None: the main strategy's own) is set on every step that reads words.
    Example: ``build_strategy("span", {"mlm_probability": 0.3}, privacy=True, protect=["stopwords"])``.
    """
    main = None if not name or name == "none" else strategy_from_params(name, params or {})
    return with_language(compose(
        strategy_from_params("privacy", {}) if privacy else None,
        *(RuleBased(rule=rule, mode="protect") for rule in protect),
        main,
        AttentionExclusion(rule=exclude) if exclude else None,
    ), language or text_language(main))


def compose(*steps) -> object | None:
    """One strategy from the explorer's parts (privacy, protection, main, exclusion); None if empty."""
    present = [s for s in steps if s is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else Compose(tuple(present))


def is_adaptive(strategy) -> bool:
    """True when a step needs per-token scores (``TokenBatch.scores``, e.g. the model's surprisal)."""
    return any(isinstance(s, AdaptiveMasking) for s in strategy_steps(strategy))


def needs_word_texts(strategy) -> bool:
    """Word-list and regex rules look at word texts; the other strategies need only ids."""
    return any(isinstance(s, RuleBased) and s.rule in ("words", "regex") for s in strategy_steps(strategy))
