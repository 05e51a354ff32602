"""Rule-based masking: target or protect stopwords, punctuation, numbers, a word list or a regex.

``rule_matches`` is shared with attention exclusion, which excludes words by the same rules.
User regexes run under a time limit (the ``regex`` library), so a pasted pattern with
catastrophic backtracking gives a clear message instead of a frozen page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar

import torch

from mlm_core.errors import InputError
from mlm_core.masking.batch import CATEGORY_CODES, TokenBatch
from mlm_core.masking.corruption import PROB, CorruptingStep, Corruption, word_uniforms
from mlm_core.settings import param
from mlm_core.text.languages import DEFAULT_LANGUAGE, language_field
from mlm_core.text.tokens import NUMBER, PUNCTUATION, STOPWORD

RULE_CATEGORY = {"stopwords": STOPWORD, "punctuation": PUNCTUATION, "numbers": NUMBER}
CATEGORY_RULES = tuple(RULE_CATEGORY)  # the rules that need only each token's category
RULES = (*CATEGORY_RULES, "words", "regex")
MAX_PATTERN_CHARS = 200  # a longer user regex is almost certainly a paste error
REGEX_TIMEOUT_S = 0.05  # per word; catastrophic backtracking on a short word shows within this
REGEX_BUDGET_S = 2.0  # for one batch: the UI must stay responsive


@lru_cache(maxsize=64)
def compiled_pattern(pattern: str, ignore_case: bool):
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


def rule_matches(
    batch: TokenBatch, rule: str, words: tuple[str, ...], pattern: str, ignore_case: bool, label: str
):
    """(B, T) bool: positions whose whole word matches ``rule``."""
    if rule in RULE_CATEGORY:
        codes = batch.category_codes
        if codes is None:
            raise InputError(
                f"{label}: the {rule} rule needs each token's category: build the batch with "
                "TokenBatch.from_tokens, or pass categories= or words= to TokenBatch.from_ids."
            )
        return codes == CATEGORY_CODES[RULE_CATEGORY[rule]]
    if batch.words is None:
        raise InputError(
            f"{label}: the {rule} rule needs the text of each word: build the batch with "
            "TokenBatch.from_tokens, or pass words= to TokenBatch.from_ids."
        )
    if rule == "words":
        wanted = {w.casefold() if ignore_case else w for w in words}
        table = [[(w.casefold() if ignore_case else w) in wanted for w in row] for row in batch.words]
    else:
        compiled = compiled_pattern(pattern, ignore_case)
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
class RuleBased(CorruptingStep):
    """Rule-based: target or protect stopwords, punctuation, numbers, a word list or a regex.

    Rules apply to whole words (all pieces share the decision); ``language`` picks the stopword list
    (spaCy's, any language it ships one for) and, for Chinese, the words themselves (jieba). ``mode="target"`` chooses the
    matches, ``mode="protect"`` removes them from what other steps may choose ("never mask
    stopwords"). ``rate`` < 1 applies the rule to that random share of the matching words.
    A regex must match the whole word (``fullmatch``). Example:
    ``RuleBased(rule="regex", pattern=r"[A-Z]\\w+", ignore_case=False)`` targets capitalised words.
    """

    name: ClassVar[str] = "rule-based"
    label: ClassVar[str] = "rule-based masking"

    rule: str = field(default="stopwords", metadata=param(
        "Stopwords come from a maintained multilingual list; punctuation by Unicode category; or your own word "
        "list or regular expression (rule).", label="Which words", choices=RULES,
        choice_labels={"words": "words I list", "regex": "a regular expression"}))
    mode: str = field(default="target", metadata=param(
        "Mask them: the matching words are masked. Never mask them: other strategies may not choose them "
        "(mode: target or protect).", label="What to do with them", choices=("target", "protect"),
        choice_labels={"target": "mask them", "protect": "never mask them"}))
    rate: float = field(default=1.0, metadata=param(
        "1 masks every matching word; 0.5 a random half of them (rate).", label="Share of matching words", **PROB))
    words: tuple[str, ...] = field(default=(), metadata=param(
        "The words to match, comma-separated (words).", label="Words (comma-separated)"))
    pattern: str = field(default="", metadata=param(
        "A Python regular expression that must match a whole word, e.g. [A-Z]\\w+ for capitalised words (pattern).",
        label="Regular expression"))
    ignore_case: bool = field(default=True, metadata=param(
        "On: 'The' matches 'the' (ignore_case).", label="Ignore upper and lower case"))
    language: str = language_field()

    def _check(self) -> None:
        super()._check()
        if self.rule == "words" and not self.words:
            raise InputError(f"{self.label}: the words rule needs at least one word.")
        if self.rule == "regex":
            if not self.pattern:
                raise InputError(f"{self.label}: the regex rule needs a pattern.")
            compiled_pattern(self.pattern, self.ignore_case)

    def describe(self) -> str:
        what = (
            self.rule
            if self.rule in RULE_CATEGORY
            else f"{self.rule} ({self.pattern or ', '.join(self.words)})"
        )
        return f"rule {self.mode} {what}" + (f" ({self.language})" if self.language != DEFAULT_LANGUAGE else "")

    def _matches(self, batch, gen):
        matches = rule_matches(batch, self.rule, self.words, self.pattern, self.ignore_case, self.label)
        if self.rate < 1:
            matches = matches & (word_uniforms(batch, gen) < self.rate)
        return matches

    def protect(self, batch, eligible, gen):
        return self._matches(batch, gen) if self.mode == "protect" else None

    def select(self, batch, eligible, gen):
        return self._matches(batch, gen) & eligible if self.mode == "target" else None

    @property
    def corruption(self) -> Corruption | None:
        return super().corruption if self.mode == "target" else None
