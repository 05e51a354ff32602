"""What a strategy did: ``MaskResult`` for one sequence, ``BatchMaskResult`` for a ``(B, T)`` batch.

Each position has a kind: ``"masked"`` (became the mask token), ``"random"`` (became a random
token), ``"kept"`` (chosen but unchanged), ``"excluded"`` (removed from the context by attention
exclusion) or ``None`` (untouched). Labels follow transformers: the original id where chosen,
-100 elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100  # label of positions that are not predicted (PyTorch cross-entropy's ignore_index)
MASKED = "masked"
RANDOM = "random"
KEPT = "kept"
EXCLUDED = "excluded"
KINDS = (MASKED, RANDOM, KEPT, EXCLUDED)
KIND_BY_CODE = (None, *KINDS)  # BatchMaskResult.kind_codes index this tuple
KIND_CODE = {kind: code for code, kind in enumerate(KIND_BY_CODE)}


@dataclass(frozen=True, eq=False)
class MaskResult:
    """What a strategy did to one sequence of ``T`` tokens (arrays are read-only).

    ``kinds[i]`` is ``"masked"``, ``"random"``, ``"kept"``, ``"excluded"`` or ``None`` (untouched).
    Example: for ``[CLS] the cat sat [SEP]`` with "cat" masked: ``input_ids = [101, 1996, 103,
    2938, 102]``, ``labels = [-100, -100, 4937, -100, -100]``, ``kinds = (None, None, "masked",
    None, None)``, ``ratio = 1/3``.
    """

    input_ids: np.ndarray  # (T,) int64: what the model reads
    labels: np.ndarray  # (T,) int64: original id at chosen positions, -100 elsewhere (and at typed masks)
    kinds: tuple[str | None, ...]  # (T,)
    attention_exclude: np.ndarray  # (T,) bool: no position may attend to these
    original_ids: np.ndarray  # (T,) int64: the ids before masking
    n_eligible: int  # positions a step could choose (not special, padding or protected), typed masks included
    ratio: float  # α = chosen / eligible

    def positions_of(self, *kinds: str) -> list[int]:
        return [i for i, kind in enumerate(self.kinds) if kind in kinds]

    @property
    def chosen_positions(self) -> list[int]:
        """Positions the model must predict: masked, random or kept (typed masks included)."""
        return self.positions_of(MASKED, RANDOM, KEPT)

    @property
    def masked_positions(self) -> list[int]:
        return self.positions_of(MASKED)

    @property
    def random_positions(self) -> list[int]:
        return self.positions_of(RANDOM)

    @property
    def kept_positions(self) -> list[int]:
        return self.positions_of(KEPT)

    @property
    def excluded_positions(self) -> list[int]:
        return self.positions_of(EXCLUDED)

    @property
    def is_empty(self) -> bool:
        """True when the strategy touched no position."""
        return all(kind is None for kind in self.kinds)

    def attention_mask(self) -> np.ndarray:
        """(T,) int64 for the model: 0 at excluded positions (a_ij = 0 when token j is excluded)."""
        return (~self.attention_exclude).astype(np.int64)

    def to_dict(self) -> dict:
        """JSON-ready form (``--json`` output)."""
        return {
            "input_ids": self.input_ids.tolist(),
            "labels": self.labels.tolist(),
            "kinds": list(self.kinds),
            "attention_exclude": self.attention_exclude.tolist(),
            "n_eligible": self.n_eligible,
            "ratio": self.ratio,
        }


@dataclass(frozen=True, eq=False)
class BatchMaskResult:
    """``MaskResult`` for a ``(B, T)`` batch, as tensors on the batch's device.

    Feed it to a model as ``model(input_ids=r.input_ids, attention_mask=r.attention_mask(am),
    labels=r.labels)``.
    """

    input_ids: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, -100 where not predicted
    kind_codes: torch.Tensor  # (B, T) int8, index into KIND_BY_CODE (0 = untouched)
    attention_exclude: torch.Tensor  # (B, T) bool
    original_ids: torch.Tensor  # (B, T) int64
    n_eligible: torch.Tensor  # (B,) int64
    n_chosen: torch.Tensor  # (B,) int64
    lengths: tuple[int, ...] | None = None

    @property
    def ratio(self) -> torch.Tensor:
        """(B,) float: α per row (0 for a row with nothing eligible)."""
        return self.n_chosen.double() / self.n_eligible.clamp_min(1).double()

    def attention_mask(self, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) int64: ``attention_mask`` (all ones if None) with excluded positions set to 0."""
        base = torch.ones_like(self.input_ids) if attention_mask is None else attention_mask.long()
        return base.masked_fill(self.attention_exclude, 0)

    def row(self, b: int) -> MaskResult:
        """Row ``b`` as a ``MaskResult`` (padding cut off when the batch came from ``from_tokens``)."""
        return self.rows([b])[0]

    def rows(self, which: Sequence[int] | None = None) -> list[MaskResult]:
        """Rows ``which`` (default all) as ``MaskResult``s; each tensor crosses to numpy once for all of them."""
        which = range(self.input_ids.shape[0]) if which is None else which
        width = self.input_ids.shape[1]
        tables = {name: getattr(self, name).cpu().numpy() for name in
                  ("input_ids", "labels", "attention_exclude", "original_ids", "kind_codes")}
        n_eligible, ratio = self.n_eligible.tolist(), self.ratio.tolist()

        def array(name: str, b: int, n: int) -> np.ndarray:
            part = tables[name][b, :n].copy()
            part.flags.writeable = False
            return part

        out = []
        for b in which:
            n = width if self.lengths is None else self.lengths[b]
            out.append(MaskResult(
                input_ids=array("input_ids", b, n),
                labels=array("labels", b, n),
                kinds=tuple(KIND_BY_CODE[c] for c in tables["kind_codes"][b, :n].tolist()),
                attention_exclude=array("attention_exclude", b, n),
                original_ids=array("original_ids", b, n),
                n_eligible=int(n_eligible[b]),
                ratio=float(ratio[b]),
            ))
        return out

    @staticmethod
    def concat(parts: Sequence[BatchMaskResult]) -> BatchMaskResult:
        names = (
            "input_ids",
            "labels",
            "kind_codes",
            "attention_exclude",
            "original_ids",
            "n_eligible",
            "n_chosen",
        )
        merged = {name: torch.cat([getattr(p, name) for p in parts]) for name in names}
        lengths = None if any(p.lengths is None for p in parts) else sum((p.lengths for p in parts), ())
        return BatchMaskResult(**merged, lengths=lengths)
