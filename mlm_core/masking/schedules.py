"""Masking rates over training: ``RateSchedule`` (e.g. 30% → 15%), ``with_rate`` and ``base_rate``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

from mlm_core.masking.corruption import PROB
from mlm_core.masking.engine import Compose, strategy_steps
from mlm_core.settings import Validated, param


@dataclass(frozen=True)
class RateSchedule(Validated):
    """A masking rate that changes with the training step, e.g. 0.30 → 0.15 (linear or cosine).

    Example: ``RateSchedule("linear", 0.30, 0.15, 1000).rate(500) == 0.225``.
    """

    label: ClassVar[str] = "rate schedule"

    kind: str = field(
        default="constant",
        metadata=param("How the masking rate moves from its start to its end value (kind).",
                       label="How the rate changes", choices=("constant", "linear", "cosine")),
    )
    start: float = field(default=0.15, metadata=param("Masking rate at step 0 (start).", label="Rate at the start",
                                                      **PROB))
    end: float = field(default=0.15, metadata=param("Masking rate from the last step of the change on (end).",
                                                    label="Rate at the end", **PROB))
    total_steps: int = field(default=1000, metadata=param("Training steps the change takes (total_steps).",
                                                          label="Steps from start to end", min=1))

    @property
    def changes(self) -> bool:
        """True when the rate is not the same at every step (a constant kind ignores ``end``)."""
        return self.kind != "constant" and self.start != self.end

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


def base_rate(strategy) -> float | None:
    """The strategy's masking rate: its first step's ``mlm_probability`` (protect rules have none), or None.

    Example: ``base_rate(Compose((RuleBased(mode="protect"), RandomMasking(0.3)))) == 0.3``.
    """
    return next(
        (float(s.mlm_probability) for s in strategy_steps(strategy) if hasattr(s, "mlm_probability")), None
    )
