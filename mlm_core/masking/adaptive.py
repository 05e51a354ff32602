"""Adaptive masking: tokens chosen with probability proportional to per-token scores (e.g. surprisal)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from mlm_core.errors import InputError
from mlm_core.masking.batch import TokenBatch
from mlm_core.masking.corruption import PROB, CorruptingStep, bernoulli
from mlm_core.settings import param


@dataclass(frozen=True)
class AdaptiveMasking(CorruptingStep):
    """Adaptive: tokens are chosen with probability proportional to per-token scores.

    The scores (e.g. the current model's loss or surprisal per token) come with the batch
    (``TokenBatch.scores`` or ``apply_strategy(..., scores=...)``), so the engine needs no
    model. The expected number chosen stays p·n: probabilities above 1 are capped and the
    excess goes to the other tokens. ``uniform_mix`` blends in plain random masking so that
    no token is never chosen. Step the rate with a ``RateSchedule`` and ``with_rate``.
    """

    name: ClassVar[str] = "adaptive"
    label: ClassVar[str] = "adaptive masking"

    mlm_probability: float = field(default=0.15, metadata=param(
        "On average this share of the tokens that may be masked is chosen; tokens the model finds hard are "
        "chosen more often (mlm_probability).", label="Share of tokens to mask (on average)", **PROB))
    uniform_mix: float = field(default=0.0, metadata=param(
        "0: only how hard each token is decides; 1: plain random masking. A little keeps every token "
        "possible (uniform_mix).", label="Share of plain random masking mixed in", **PROB))

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
        return bernoulli(probability, gen) & eligible
