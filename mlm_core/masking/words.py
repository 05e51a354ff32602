"""Strategies that choose whole words: whole-word masking and SpanBERT span masking."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from mlm_core.masking.corruption import (
    PROB,
    CorruptingStep,
    numpy_rngs,
    token_budget,
    uniforms,
    word_uniforms,
)
from mlm_core.settings import param
from mlm_core.text.languages import language_field


@dataclass(frozen=True)
class WholeWordMasking(CorruptingStep):
    """Whole-word: all pieces of a word are chosen together; words come from ``word_ids`` (any tokenizer).

    With ``language="zh"`` the text is segmented into words first (jieba) and all characters of a
    chosen word are masked together, as Chinese BERT-wwm does for character-level tokenizers.

    Each word is chosen with rate mlm_probability, so the expected share of tokens is p (the
    transformers collator instead extends per-token draws to words, which raises the rate of
    long words). ``exact=True`` adds words in random order until round(p·n) tokens are reached.
    """

    name: ClassVar[str] = "whole-word"
    label: ClassVar[str] = "whole-word masking"

    mlm_probability: float = field(default=0.15, metadata=param(
        "Each word that may be masked is chosen with this probability, all its pieces together "
        "(mlm_probability).", label="Share of words to mask", **PROB))
    exact: bool = field(default=False, metadata=param(
        "On: whole words are added until round(share × tokens that may be masked) tokens are masked. Off: each "
        "word is drawn on its own (exact).", label="Mask exactly that share"))
    language: str = language_field()  # Chinese: words from jieba, all their characters masked together

    def select(self, batch, eligible, gen):
        if not self.exact:
            return (word_uniforms(batch, gen) < self.mlm_probability) & eligible
        B, T = batch.shape
        runs = batch.run_ids
        word_rank = uniforms(batch, gen).argsort(1).argsort(1).gather(1, runs)  # one distinct rank per word
        position = torch.arange(T, device=runs.device).expand(B, T)
        key = torch.where(eligible, word_rank * T + position, torch.full_like(position, T * T + T))
        order = key.argsort(1)  # words in random order, their pieces adjacent
        in_order = eligible.gather(1, order).long()
        before = torch.empty_like(in_order).scatter_(1, order, in_order.cumsum(1) - in_order)  # (B, T)
        big = torch.full_like(before, T + 1)
        word_start = big.scatter_reduce(1, runs, torch.where(eligible, before, big), reduce="amin")
        return eligible & (
            word_start.gather(1, runs) < token_budget(eligible.sum(1), self.mlm_probability)[:, None]
        )


@dataclass(frozen=True)
class SpanMasking(CorruptingStep):
    """Span: SpanBERT spans of whole words, lengths ~ Geometric(geometric_p) up to max_span_length.

    Spans start at a random unchosen token's word and are added until round(p·n) tokens are
    chosen; the last span stops at the end of the word that reaches the budget. Spans run over
    eligible words (a protected word in between is skipped). Corruption is per token.
    """

    name: ClassVar[str] = "span"
    label: ClassVar[str] = "span masking"

    mlm_probability: float = field(default=0.15, metadata=param(
        "Spans of whole words are added until this share of the tokens that may be masked is covered "
        "(mlm_probability).", label="Share of tokens to cover with spans", **PROB))
    geometric_p: float = field(default=0.2, metadata=param(
        "Span lengths follow a geometric distribution with this parameter: the higher, the shorter the spans "
        "(about 1/p words on average before the cap). SpanBERT: 0.2 (geometric_p).",
        label="Span length setting (higher = shorter)", min=0.01, max=1.0))
    max_span_length: int = field(default=10, metadata=param(
        "No span is longer than this many words. SpanBERT: 10 (max_span_length).",
        label="Longest span, in words", min=1, max=100))
    language: str = language_field()

    @property
    def length_distribution(self) -> tuple[np.ndarray, np.ndarray]:
        """Span lengths (in words) and their probabilities: the geometric law cut at the maximum."""
        lengths = np.arange(1, self.max_span_length + 1)
        weights = self.geometric_p * (1 - self.geometric_p) ** (lengths - 1)
        return lengths, weights / weights.sum()

    def select(self, batch, eligible, gen):
        rngs = numpy_rngs(gen, batch.shape[0])
        lengths, probs = self.length_distribution
        chosen = np.zeros(batch.shape, dtype=bool)
        eligible_np, runs_np = eligible.cpu().numpy(), batch.run_ids.cpu().numpy()
        budgets = token_budget(eligible.sum(1), self.mlm_probability).tolist()
        for b, budget in enumerate(budgets):
            rng = rngs[b]
            positions = np.flatnonzero(eligible_np[b])
            if budget == 0:
                continue
            words, token_word, sizes = np.unique(
                runs_np[b, positions], return_inverse=True, return_counts=True
            )
            taken = np.zeros(len(words), dtype=bool)
            count = 0
            while count < budget:
                free = np.flatnonzero(~taken[token_word])
                if free.size == 0:
                    break
                anchor = token_word[free[rng.integers(free.size)]]
                for w in range(anchor, min(anchor + int(rng.choice(lengths, p=probs)), len(words))):
                    if count >= budget:
                        break
                    if not taken[w]:
                        taken[w] = True
                        count += int(sizes[w])
            chosen[b, positions[taken[token_word]]] = True
        return torch.from_numpy(chosen).to(eligible.device)
