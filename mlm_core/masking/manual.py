"""Manual masking: the token positions the user clicked; ``positions_mask`` checks such positions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from mlm_core.errors import InputError
from mlm_core.masking.batch import TokenBatch, checked_positions
from mlm_core.masking.corruption import (
    MASK_REPLACE_HELP,
    MASK_REPLACE_LABEL,
    PROB,
    RANDOM_REPLACE_HELP,
    RANDOM_REPLACE_LABEL,
    CorruptingStep,
)
from mlm_core.settings import param


def positions_mask(batch: TokenBatch, positions: tuple[int, ...], label: str) -> torch.Tensor:
    """(B, T) bool with ``positions`` set in every row; InputError if out of range or special."""
    out = torch.zeros(batch.shape, dtype=torch.bool, device=batch.ids.device)
    if not positions:
        return out
    length = batch.shape[1] if batch.lengths is None else min(batch.lengths)
    index = checked_positions(positions, length, f"{label}: position")
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
class ManualMasking(CorruptingStep):
    """Manual: the positions the user clicked (token indexes, special tokens included in the count).

    By default a clicked token becomes the mask token (``mask_replace_prob=1``).
    ``whole_word=True`` extends each click to its whole word.
    """

    name: ClassVar[str] = "manual"
    label: ClassVar[str] = "manual masking"

    positions: tuple[int, ...] = field(
        default=(), metadata=param("Token positions to mask, counting from 0 (positions).",
                                   label="Token positions to mask (comma-separated)", min=0)
    )
    whole_word: bool = field(default=False, metadata=param(
        "Extend each chosen token to all pieces of its word (whole_word).", label="Mask the whole word"))
    mask_replace_prob: float = field(
        default=1.0,
        kw_only=True,
        metadata=param(MASK_REPLACE_HELP, label=MASK_REPLACE_LABEL, **PROB),
    )
    random_replace_prob: float = field(
        default=0.0,
        kw_only=True,
        metadata=param(RANDOM_REPLACE_HELP, label=RANDOM_REPLACE_LABEL, **PROB),
    )

    def _check(self) -> None:
        super()._check()
        if not self.positions:
            raise InputError(f"{self.label}: click at least one token to mask.")
        if min(self.positions) < 0:
            raise InputError(f"{self.label}: positions count from 0; got {min(self.positions)}.")
        object.__setattr__(self, "positions", tuple(sorted(set(self.positions))))

    def select(self, batch, eligible, gen):
        clicked = positions_mask(batch, self.positions, self.label)
        if self.whole_word:
            runs = batch.run_ids
            per_run = torch.zeros_like(runs).scatter_reduce(1, runs, clicked.long(), reduce="amax")
            clicked = per_run.gather(1, runs) > 0
        return clicked & eligible
