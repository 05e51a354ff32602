"""BERT's random masking: each eligible token chosen with rate ``mlm_probability``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from mlm_core.masking.corruption import PROB, CorruptingStep, bernoulli, token_budget, uniforms
from mlm_core.settings import param


@dataclass(frozen=True)
class RandomMasking(CorruptingStep):
    """Random: each eligible token is chosen with rate mlm_probability (BERT, HF collator semantics).

    ``exact=True`` chooses exactly round(p·n) of the n eligible tokens per sequence (at least one).
    Example: ``RandomMasking(0.15)``; ``RandomMasking(0.3, exact=True, mask_replace_prob=1.0)``.
    """

    name: ClassVar[str] = "random"
    label: ClassVar[str] = "random masking"

    mlm_probability: float = field(default=0.15, metadata=param(
        "Each token that may be masked is chosen with this probability: 0.15 masks about 15% of them "
        "(mlm_probability in Hugging Face).", label="Share of tokens to mask", **PROB))
    exact: bool = field(default=False, metadata=param(
        "On: exactly round(share × tokens that may be masked), at least one. Off: each token is drawn on its own, "
        "so the count varies from draw to draw (exact).", label="Mask exactly that share"))

    def select(self, batch, eligible, gen):
        if self.exact:
            scores = uniforms(batch, gen).masked_fill(~eligible, 2.0)
            ranks = scores.argsort(1).argsort(1)
            return (ranks < token_budget(eligible.sum(1), self.mlm_probability)[:, None]) & eligible
        # Same tensors and calls as DataCollatorForLanguageModeling.torch_mask_tokens: draw-for-draw equal.
        probability = torch.full(batch.shape, self.mlm_probability, device=batch.ids.device)
        probability.masked_fill_(~eligible, 0.0)
        return bernoulli(probability, gen)
