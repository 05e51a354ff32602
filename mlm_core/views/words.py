"""Word pieces merged into words for display: one grouping shared by the page's panels and the CLI.

``word_view`` groups a text's positions (each token alone, or a word's pieces together) and names
each group; the view then merges what is drawn over those positions the one way every chart and
table does it (``mlm_core.explain.attention``: attention rows averaged and columns summed, scores
summed). Example::

    view = word_view(tokens.tokens, tokens.word_ids, tokenizer, merge=True)
    view.labels, view.matrix(attention[layer, head]), view.positions(masked_positions)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from mlm_core.explain.attention import group_labels, merge_scores, merge_words, word_groups


@dataclass(frozen=True)
class WordView:
    """Positions in display groups: ``groups[g]`` holds the positions shown as ``labels[g]``."""

    groups: tuple[tuple[int, ...], ...]
    labels: tuple[str, ...]
    merged: bool  # False: one group per token, and the merges below change nothing

    def group_of(self, position: int) -> int:
        """The group that shows ``position``."""
        return next(g for g, members in enumerate(self.groups) if position in members)

    def positions(self, positions: Iterable[int]) -> list[int]:
        """The groups (sorted, once each) that hold any of ``positions``: what a chart highlights."""
        wanted = set(positions)
        return [g for g, members in enumerate(self.groups) if wanted.intersection(members)]

    def matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Attention over positions, (..., T, T) -> (..., W, W): rows averaged, columns summed per word."""
        return merge_words(matrix, self.groups) if self.merged else matrix

    def scores(self, scores: np.ndarray) -> np.ndarray:
        """Per-token scores, (..., T) -> (..., W): summed per word."""
        return merge_scores(np.asarray(scores), self.groups) if self.merged else scores


def word_view(tokens: Sequence[str], word_ids: Sequence[int | None], tokenizer, merge: bool = True) -> WordView:
    """``tokens`` (the text's, or a masked copy's) shown by word when ``merge``, else one per token.

    ``word_ids`` come from the tokenization (``Tokens.word_ids``); specials stay alone.
    """
    groups = word_groups(word_ids) if merge else [[i] for i in range(len(tokens))]
    return WordView(tuple(map(tuple, groups)), tuple(group_labels(tokens, groups, tokenizer)), merge)
