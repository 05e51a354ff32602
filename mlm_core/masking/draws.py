"""Which random draw each example gets: static or dynamic masking (``DrawPolicy``), masking
many examples at once, and how often each position is chosen over many draws."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from mlm_core.errors import InputError
from mlm_core.masking.assembly import is_adaptive
from mlm_core.masking.batch import TokenBatch, Vocab
from mlm_core.masking.corruption import RowGenerators
from mlm_core.masking.engine import mask_batch, mask_each, row_independent
from mlm_core.masking.results import BatchMaskResult, MaskResult
from mlm_core.masking.schedules import RateSchedule
from mlm_core.settings import Validated, param
from mlm_core.text.tokens import Tokens

MAX_DRAWS = 10_000


@dataclass(frozen=True)
class DrawPolicy(Validated):
    """Static or dynamic masking: which random draw an example gets in a given epoch.

    ``static``: one mask per example, the same every epoch (seeded by the example's key);
    ``dynamic``: a fresh mask each epoch (RoBERTa). Both are reproducible: the seed depends only
    on (seed, key, epoch), never on batch order, so a resumed run masks exactly as before, and
    a row's draw never depends on which process masks it.

    The seed alone makes a mask static only when nothing else that decides it changes over the
    run, so ``check_static`` refuses the two things that do: a rate schedule whose rate moves,
    and adaptive masking (its choice follows the model's losses as they fall).
    Example: ``DrawPolicy("static").generator_for(example_index, epoch)``.
    """

    label: ClassVar[str] = "draw policy"

    mode: str = field(
        default="dynamic",
        metadata=param(
            "Static: one mask per example, drawn once and reused every epoch (so the masking rate must stay "
            "constant and the strategy cannot be adaptive); dynamic: a fresh mask each epoch, as RoBERTa "
            "(static or dynamic masking).", label="When masks are drawn", choices=("static", "dynamic"),
            choice_labels={"static": "once per example (static)", "dynamic": "anew each epoch (dynamic)"},
        ),
    )
    seed: int = field(default=0, metadata=param("Base seed of every draw: the same seed repeats the masks (seed).",
                                                label="Seed", min=0))

    def seed_for(self, example_key: int | str, epoch: int = 0) -> int:
        """A 63-bit seed from (seed, key, epoch); the epoch is ignored when static."""
        if isinstance(example_key, np.generic | torch.Tensor):
            example_key = example_key.item()  # np.int64(3) and 3 must name the same example
        draw = 0 if self.mode == "static" else int(epoch)
        digest = hashlib.blake2b(f"{self.seed}|{example_key!r}|{draw}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % 2**63

    def generator_for(self, example_key: int | str, epoch: int = 0, device: str | torch.device = "cpu"):
        return torch.Generator(device=device).manual_seed(self.seed_for(example_key, epoch))


def check_static(mode: str, strategy, schedule: RateSchedule) -> None:
    """Refuse, with what to change, a static run whose masks could not stay the same each epoch.

    A static mask is one draw per example, so everything that decides it must be fixed for the whole
    run. Two things are not: a rate schedule that moves the rate (a mask drawn once cannot follow it,
    and freezing it at the first rate would make "static" a different rate from the dynamic run it is
    compared with), and adaptive masking (it chooses the tokens the model currently finds hard, which
    change as it learns; frozen at the first draw it is plain random masking under another name).
    """
    if mode != "static":
        return
    if schedule.changes:
        raise InputError(
            f"Static masking draws each block's mask once, so the masking rate cannot change from "
            f"{schedule.start:g} to {schedule.end:g} ({schedule.kind} schedule): use dynamic masking with a "
            "rate schedule, or a constant rate with static masking."
        )
    if is_adaptive(strategy):
        raise InputError(
            "Static masking draws each block's mask once, but adaptive masking chooses the tokens the model "
            "finds hard at the moment, which change as it learns: use dynamic masking with adaptive masking, "
            "or another strategy with static masking."
        )


def mask_examples(
    batch: TokenBatch, strategy, vocab: Vocab, keys: Sequence[int | str], epoch: int, policy: DrawPolicy
) -> BatchMaskResult:
    """Mask each row with its own generator from ``policy`` (static or dynamic masking).

    Row ``b`` gets exactly what ``mask_batch(batch.select_rows([b]), ..., rng=policy.generator_for(keys[b],
    epoch))`` gives, whatever else is in the batch: one call with a generator per row
    (``RowGenerators``); a loop over rows only where a step names positions (``row_independent``).
    """
    if len(keys) != batch.shape[0]:
        raise InputError(f"Give one key per row: {batch.shape[0]} rows, {len(keys)} keys.")
    device = batch.ids.device
    generators = [policy.generator_for(key, epoch, device) for key in keys]
    if row_independent(strategy):
        return mask_batch(batch, strategy, vocab, RowGenerators(generators, [batch.shape[1]] * len(keys)))
    return BatchMaskResult.concat(
        [mask_batch(batch.select_rows([b]), strategy, vocab, generator) for b, generator in enumerate(generators)]
    )


def mask_many(records: Sequence[Tokens], strategy, vocab: Vocab, *, seed: int = 0) -> list[MaskResult]:
    """Batch analysis: record ``i`` gets the static draw for key ``i`` (independent of the others).

    Records with nothing eligible get an empty result instead of an error.
    """
    policy = DrawPolicy("static", seed)
    return mask_each(records, strategy, vocab, [policy.generator_for(i) for i in range(len(records))])


def selection_frequency(
    tokens: Tokens,
    strategy,
    vocab: Vocab,
    *,
    draws: int = 200,
    rng: int | torch.Generator = 0,
    scores: Sequence[float] | np.ndarray | None = None,
    protected: Iterable[int] = (),
) -> np.ndarray:
    """(T,) float in [0, 1]: how often each position is touched (any kind) over ``draws`` draws.

    One batched call of ``draws`` copies of the text. Example: with ``RandomMasking(0.15)``
    eligible positions read ≈ 0.15 and special tokens 0.
    """
    if isinstance(draws, bool) or not isinstance(draws, int) or not 1 <= draws <= MAX_DRAWS:
        raise InputError(f"draws must be a whole number from 1 to {MAX_DRAWS}; got {draws!r}.")
    one = TokenBatch.from_tokens(
        [tokens],
        pad_id=vocab.pad_token_id or 0,
        scores=None if scores is None else [scores],
        protected=[list(protected)],
    )
    batch = one.select_rows([0] * draws)
    result = mask_batch(batch, strategy, vocab, rng)
    return (result.kind_codes != 0).double().mean(0).cpu().numpy()
