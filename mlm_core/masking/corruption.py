"""What happens to chosen positions (the 80/10/10 corruption) and the base of every step.

``MaskingStep`` is the base of token-level strategies: a step may protect, select or
exclude positions. ``CorruptingStep`` adds the ``DataCollatorForLanguageModeling``
corruption settings; ``corrupt`` applies them draw for draw as transformers does.
``make_generator`` turns a seed into the only source of randomness.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from mlm_core.errors import InputError
from mlm_core.masking.batch import TokenBatch, Vocab
from mlm_core.masking.results import KEPT, KIND_CODE, MASKED, RANDOM
from mlm_core.settings import Validated, param


@dataclass(frozen=True)
class Corruption:
    """What happens to chosen positions (``DataCollatorForLanguageModeling`` names and defaults)."""

    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    random_excludes_special: bool = False  # transformers draws from the whole vocabulary


class MaskingStep(Validated):
    """Base of token-level strategies. A step may protect, select or exclude positions (``(B, T)`` bool).

    ``eligible`` is what the step may touch; ``gen`` is the only source of randomness.
    """

    name: ClassVar[str] = ""

    def protect(self, batch: TokenBatch, eligible: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        return None

    def select(self, batch: TokenBatch, eligible: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        return None

    def exclude(self, batch: TokenBatch, eligible: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        return None

    @property
    def corruption(self) -> Corruption | None:
        return None

    def describe(self) -> str:
        return self.label


PROB = {"min": 0.0, "max": 1.0}
# Shared by every step that corrupts (manual masking declares other defaults with the same words).
MASK_REPLACE_LABEL = "Chosen tokens shown as the mask token"
MASK_REPLACE_HELP = "Share of the chosen tokens replaced by the mask token (mask_replace_prob in Hugging Face)."
RANDOM_REPLACE_LABEL = "Chosen tokens replaced by a random word"
RANDOM_REPLACE_HELP = ("Share of the chosen tokens replaced by a random token; the rest stay unchanged but are "
                       "still predicted (random_replace_prob in Hugging Face).")


@dataclass(frozen=True)
class CorruptingStep(MaskingStep):
    mask_replace_prob: float = field(
        default=0.8,
        kw_only=True,
        metadata=param(MASK_REPLACE_HELP + " BERT: 0.8.", label=MASK_REPLACE_LABEL, **PROB),
    )
    random_replace_prob: float = field(
        default=0.1,
        kw_only=True,
        metadata=param(RANDOM_REPLACE_HELP + " BERT: 0.1.", label=RANDOM_REPLACE_LABEL, **PROB),
    )
    random_excludes_special: bool = field(
        default=False, kw_only=True, metadata=param(
            "Random replacements never use special tokens such as [CLS] or [SEP]; Hugging Face draws from the "
            "whole vocabulary (random_excludes_special).", label="No special tokens as random words")
    )

    def _check(self) -> None:
        if self.mask_replace_prob + self.random_replace_prob > 1 + 1e-9:
            raise InputError(
                f"{self.label}: mask_replace_prob + random_replace_prob must not exceed 1 "
                f"(got {self.mask_replace_prob:g} + {self.random_replace_prob:g}); the rest is kept unchanged."
            )

    @property
    def corruption(self) -> Corruption | None:
        return Corruption(self.mask_replace_prob, self.random_replace_prob, self.random_excludes_special)


def token_budget(n: torch.Tensor, p: float) -> torch.Tensor:
    """round(p·n) per row (half up), at least 1 when n > 0 and p > 0."""
    k = torch.floor(n.double() * p + 0.5).long()
    return torch.where((n > 0) & (p > 0), k.clamp_min(1), torch.zeros_like(k))


class RowGenerators:
    """One generator per row of a batch: row ``b`` draws exactly the numbers it would draw masked
    alone, a batch of one row ``widths[b]`` wide, whatever else is in the batch.

    Why: a text's mask must depend on its own seed only (the batch analysis, static and dynamic
    masking), which used to mean one ``mask_batch`` call per text; with one generator per row, one
    call masks them all, and only the draws themselves loop over rows. Every random draw of a
    step goes through the helpers below (``uniforms``, ``bernoulli``, ``randint``, ``numpy_rngs``),
    which take either a plain generator or this. Beyond a row's width the helpers fill a value no
    step reads there (padding is never eligible); ``uniforms`` fills 2.0, above every draw, so
    ranks taken over a whole row are those of the row alone.
    """

    def __init__(self, generators: Sequence[torch.Generator], widths: Sequence[int]) -> None:
        if not generators or len(generators) != len(widths):
            raise InputError(f"Give one generator per row: {len(widths)} rows, {len(generators)} generators.")
        self.generators = tuple(generators)
        self.widths = tuple(int(w) for w in widths)
        self.device = self.generators[0].device

    def fill(self, shape, value, dtype, device, draw: Callable[[torch.Generator, int, int], torch.Tensor]):
        """(B, T) of ``value`` with row ``b``'s first ``widths[b]`` entries from ``draw(generator, b, width)``."""
        if len(shape) != 2 or shape[0] != len(self.generators) or max(self.widths) > shape[1]:
            raise InputError(f"A batch of shape {tuple(shape)} does not match {len(self.generators)} rows "
                             f"of widths up to {max(self.widths)}.")
        out = torch.full(shape, value, dtype=dtype, device=device)
        for b, (generator, width) in enumerate(zip(self.generators, self.widths)):
            out[b, :width] = draw(generator, b, width)[0]
        return out


Draws = torch.Generator | RowGenerators  # what every step's ``gen`` is


def uniforms(batch: TokenBatch, gen: Draws) -> torch.Tensor:
    """(B, T) uniforms on [0, 1)."""
    device = batch.ids.device
    if isinstance(gen, RowGenerators):
        return gen.fill(batch.shape, 2.0, torch.float32, device,
                        lambda g, _b, width: torch.rand((1, width), generator=g, device=device))
    return torch.rand(batch.shape, generator=gen, device=device)


def bernoulli(probability: torch.Tensor, gen: Draws) -> torch.Tensor:
    """(B, T) bool: each entry True with its ``probability``."""
    if isinstance(gen, RowGenerators):
        return gen.fill(probability.shape, False, torch.bool, probability.device, lambda g, b, width: torch.bernoulli(
            probability[b : b + 1, :width].contiguous(), generator=g).bool())
    return torch.bernoulli(probability, generator=gen).bool()


def randint(high: int, shape, gen: Draws, device) -> torch.Tensor:
    """(B, T) int64 uniform on [0, high)."""
    if isinstance(gen, RowGenerators):
        return gen.fill(shape, 0, torch.long, device,
                        lambda g, _b, width: torch.randint(high, (1, width), generator=g, device=device))
    return torch.randint(high, shape, generator=gen, device=device)


def numpy_rngs(gen: Draws, rows: int) -> list[np.random.Generator]:
    """A numpy generator for each row, seeded from ``gen``: with one torch generator, one numpy
    generator shared by the rows in turn; with ``RowGenerators``, each row its own."""
    def seeded(generator: torch.Generator) -> np.random.Generator:
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))

    if isinstance(gen, RowGenerators):
        return [seeded(g) for g in gen.generators]
    return [seeded(gen)] * rows


def word_uniforms(batch: TokenBatch, gen: Draws) -> torch.Tensor:
    """(B, T) uniforms shared by all positions of a word run."""
    return uniforms(batch, gen).gather(1, batch.run_ids)


def make_generator(rng: int | Draws = 0, device: torch.device | str = "cpu") -> Draws:
    """A ``torch.Generator`` from an int seed (or the generator, or ``RowGenerators``, itself, checked against
    ``device``)."""
    device = torch.device(device)
    if isinstance(rng, torch.Generator | RowGenerators):
        if rng.device.type != device.type:
            raise InputError(
                f"The generator is on {rng.device.type} but the tokens are on {device.type}: pass a seed."
            )
        return rng
    if isinstance(rng, bool) or not isinstance(rng, (int, np.integer)):
        raise InputError(f"rng must be an int seed or a torch.Generator; got {rng!r}.")
    return torch.Generator(device=device).manual_seed(int(rng) % 2**63)


def corrupt(
    ids: torch.Tensor, chosen: torch.Tensor, corruption: Corruption, vocab: Vocab, gen: torch.Generator
):
    """Apply the 80/10/10 split to ``chosen``, draw for draw as transformers does; returns (ids, codes)."""
    out = ids.clone()
    codes = torch.zeros(ids.shape, dtype=torch.int8, device=ids.device)
    mask_p, random_p = corruption.mask_replace_prob, corruption.random_replace_prob
    replaced = bernoulli(torch.full(ids.shape, mask_p, device=ids.device), gen) & chosen
    out[replaced] = vocab.mask_token_id
    random = torch.zeros_like(chosen)
    if mask_p < 1 and random_p > 0:
        scaled = min(1.0, random_p / (1 - mask_p))  # share of the not-[MASK] remainder
        random = bernoulli(torch.full(ids.shape, scaled, device=ids.device), gen)
        random &= chosen & ~replaced
        if corruption.random_excludes_special:
            pool = vocab.non_special_ids.to(ids.device)
            words = pool[randint(len(pool), ids.shape, gen, ids.device)]
        else:
            words = randint(vocab.vocab_size, ids.shape, gen, ids.device)
        out[random] = words[random]
    codes[replaced] = KIND_CODE[MASKED]
    codes[random] = KIND_CODE[RANDOM]
    codes[chosen & ~replaced & ~random] = KIND_CODE[KEPT]
    return out, codes
