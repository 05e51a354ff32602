"""Counts of one (configuration, seed) and the metrics with 95% intervals computed from them.

``Tally`` adds up across chunks and processes; ``group_metrics`` pools seeds: a t-interval over
seeds with two seeds or more, else Wilson (accuracy) and normal (log-probability) intervals.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mlm_core.text.tokens import CATEGORIES

GROUPS = ("all", *CATEGORIES)  # rows of the summary: every predicted token, then by category
GROUP_OF = {category: row for row, category in enumerate(GROUPS) if row}  # a token's category -> its row
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093)  # t(0.975, df) for df = 1 .. 19 (MAX_SEEDS - 1)


def _t975(df: int) -> float:
    return T_975[df - 1] if 1 <= df <= len(T_975) else 1.96


@dataclass
class Tally:
    """Counts of one (configuration, seed): they add up across chunks and processes.

    ``counts[g]`` for g in ``GROUPS`` holds (n, top-1 hits, top-5 hits, Σ log p, Σ (log p)²).
    """

    counts: np.ndarray = field(default_factory=lambda: np.zeros((len(GROUPS), 5)))
    sentences: int = 0  # read (skipped ones included)
    skipped: int = 0  # nothing to mask in them (empty after normalisation, ...)
    truncated: int = 0  # longer than the model's limit: cut to its first tokens
    nothing_chosen: int = 0  # the strategy chose no token in them
    pll_sentences: int = 0
    pll_tokens: int = 0
    pll_sum: float = 0.0
    pll_sq: float = 0.0  # Σ over sentences of (PLL per token)²

    def add_predictions(self, groups: np.ndarray, rank: np.ndarray, log_p: np.ndarray) -> None:
        """Count predicted tokens, all at once: ``groups`` (N,) each token's row of ``GROUPS`` (-1: in
        "all" only), ``rank`` of the original among the guesses (1 = first), ``log_p`` its log-probability."""
        log_p = np.asarray(log_p, dtype=np.float64)
        values = np.stack([np.ones_like(log_p), rank == 1, rank <= 5, log_p, np.square(log_p)], axis=1)  # (N, 5)
        self.counts[0] += values.sum(0)
        known = groups > 0
        np.add.at(self.counts, groups[known], values[known])

    def add(self, other: Tally) -> None:
        self.counts += other.counts
        for name in ("sentences", "skipped", "truncated", "nothing_chosen", "pll_sentences", "pll_tokens",
                     "pll_sum", "pll_sq"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["counts"] = self.counts.tolist()
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> Tally:
        values = dict(data)
        values["counts"] = np.asarray(values["counts"], dtype=np.float64)
        return cls(**values)


def group_metrics(tallies: Sequence[Tally], group: int) -> dict:
    """Pooled n/top1/top5/mean log-prob of one group over seeds, with 95% intervals."""
    rows = np.stack([t.counts[group] for t in tallies])  # (seeds, 5)
    n, hit1, hit5, lp, lp_sq = rows.sum(0)
    out: dict = {"n": int(n)}
    if n == 0:
        return out | {"top1": None, "top5": None, "mean_log_prob": None}
    out |= {"top1": hit1 / n, "top5": hit5 / n, "mean_log_prob": lp / n}
    per_seed = rows[rows[:, 0] > 0]
    if len(per_seed) >= 2:
        k = len(per_seed)
        for name, values in (("top1", per_seed[:, 1] / per_seed[:, 0]), ("top5", per_seed[:, 2] / per_seed[:, 0]),
                             ("mean_log_prob", per_seed[:, 3] / per_seed[:, 0])):
            half = _t975(k - 1) * float(np.std(values, ddof=1)) / math.sqrt(k)
            out[f"{name}_ci"] = [out[name] - half, out[name] + half]
    else:
        for name, hits in (("top1", hit1), ("top5", hit5)):
            out[f"{name}_ci"] = list(wilson(hits, n))
        sd = math.sqrt(max(0.0, lp_sq / n - (lp / n) ** 2) * n / max(1.0, n - 1))
        half = 1.96 * sd / math.sqrt(n)
        out["mean_log_prob_ci"] = [lp / n - half, lp / n + half]
    for name, (low, high) in (("top1", (0.0, 1.0)), ("top5", (0.0, 1.0)), ("mean_log_prob", (-math.inf, 0.0))):
        if f"{name}_ci" in out:  # a t-interval over few seeds can reach past what is possible
            out[f"{name}_ci"] = [min(max(v, low), high) for v in out[f"{name}_ci"]]
    return out


def wilson(hits: float, n: float, z: float = 1.96) -> tuple[float, float]:
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
