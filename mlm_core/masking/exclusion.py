"""Attention exclusion: remove tokens from the context (a_ij = 0 when token j is excluded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from mlm_core.errors import InputError
from mlm_core.masking.corruption import MaskingStep
from mlm_core.masking.manual import positions_mask
from mlm_core.masking.rules import CATEGORY_RULES, rule_matches
from mlm_core.settings import param
from mlm_core.text.languages import language_field


@dataclass(frozen=True)
class AttentionExclusion(MaskingStep):
    """Attention exclusion: remove tokens from the context instead of replacing them.

    Chosen by positions and/or a rule; they keep their ids, get kind ``"excluded"`` and label
    -100, and ``attention_exclude`` marks them so that no position attends to them.
    """

    name: ClassVar[str] = "attention-exclusion"
    label: ClassVar[str] = "attention exclusion"

    positions: tuple[int, ...] = field(
        default=(), metadata=param("Token positions no other token may attend to, counting from 0 (positions).",
                                   label="Token positions to remove from the context", min=0)
    )
    rule: str = field(
        default="",
        metadata=param("Every word of this kind is removed from the context: no token attends to it (rule).",
                       label="Remove every word of this kind", choices=("", *CATEGORY_RULES)),
    )
    language: str = language_field()  # whose stopwords the rule removes

    def _check(self) -> None:
        if not self.positions and not self.rule:
            raise InputError(
                f"{self.label}: give positions to exclude or a rule (stopwords, punctuation, numbers)."
            )
        if self.positions and min(self.positions) < 0:
            raise InputError(f"{self.label}: positions count from 0; got {min(self.positions)}.")
        object.__setattr__(self, "positions", tuple(sorted(set(self.positions))))

    def exclude(self, batch, eligible, gen):
        chosen = positions_mask(batch, self.positions, self.label)
        if self.rule:
            chosen |= rule_matches(batch, self.rule, (), "", True, self.label)
        return chosen & eligible
