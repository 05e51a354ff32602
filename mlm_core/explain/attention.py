"""Attention weights and their aggregates, as numpy arrays (no figures).

Conventions: ``att`` is (layers L, heads H, T, T); row i is the query ("from" token i),
column j the key ("to" token j); each row sums to 1. Layer and head indices are 0-based,
like token positions (position 0 is [CLS] / <s>).

* ``attention_maps``: one forward pass, all layers and heads;
* ``head_mean``, ``rollout`` (Abnar & Zuidema 2020, with the residual term);
* ``word_groups`` / ``merge_words``: word pieces merged into words (rows averaged,
  columns summed, so merged rows still sum to 1; Clark et al. 2019);
* ``from_position``: where one (masked) position looks, per layer and head;
* ``head_overview``: one number per layer and head (entropy, max, attention to a token);
* ``unmasked_ids``: the same sentence without its masks, for masked-vs-unmasked views.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlm_core.errors import InputError
from mlm_core.model.forward import forward
from mlm_core.model.loading import LoadedModel

OVERVIEW_METRICS = ("entropy", "max", "to token")


def check_fits(loaded: LoadedModel, n_tokens: int, what: str = "Attention") -> None:
    """Views over all positions need the whole input in one window."""
    if n_tokens > loaded.max_length:
        raise InputError(
            f"{what} needs the whole text in one pass: it has {n_tokens} tokens and this model takes at "
            f"most {loaded.max_length}. Shorten the text."
        )


def attention_maps(
    loaded: LoadedModel, ids: Sequence[int], attention_exclude: Sequence[bool] | None = None
) -> np.ndarray:
    """All attention weights for ``ids``: (L, H, T, T) float32, rows sum to 1.

    Example: ``attention_maps(m, tokenize(m.tokenizer, "A [MASK] sat.").ids)[-1, 0]`` is the
    last layer's first head, a T×T matrix.
    """
    check_fits(loaded, len(ids))
    _, att = forward(loaded, ids, attention_exclude, output_attentions=True)
    return att


def head_mean(att: np.ndarray) -> np.ndarray:
    """Mean over heads: (L, H, T, T) -> (L, T, T)."""
    return att.mean(axis=1)


def rollout(att: np.ndarray, residual: float = 0.5) -> np.ndarray:
    """Attention rollout through the layers: (L, H, T, T) -> (L, T, T), cumulative.

    Each layer's head-mean ``A`` becomes ``residual * I + (1 - residual) * A`` (the skip
    connection carries the token itself along), rows renormalised, and the layers are
    multiplied from the bottom up: ``R_l = Â_l @ R_{l-1}``. ``rollout(att)[-1]`` says how much
    each input token flows into each output position; ``[l]`` stops after layer l.
    """
    if not 0.0 <= residual <= 1.0:
        raise InputError(f"The residual weight must be between 0 and 1; got {residual}.")
    mean = head_mean(att).astype(np.float64)  # (L, T, T)
    eye = np.eye(mean.shape[-1])
    result = np.empty_like(mean)
    current = eye
    for layer, a in enumerate(mean):
        a_hat = residual * eye + (1.0 - residual) * a
        a_hat /= a_hat.sum(axis=-1, keepdims=True)
        current = a_hat @ current
        result[layer] = current
    return result.astype(np.float32)


def word_groups(word_ids: Sequence[int | None]) -> list[list[int]]:
    """Positions grouped into words: consecutive pieces of one word together, specials alone.

    Example: word ids ``None 0 1 1 2 None`` give ``[[0], [1], [2, 3], [4], [5]]``.
    """
    groups: list[list[int]] = []
    previous = object()
    for position, word in enumerate(word_ids):
        if word is not None and word == previous:
            groups[-1].append(position)
        else:
            groups.append([position])
        previous = word
    return groups


def group_labels(tokens: Sequence[str], groups: Sequence[Sequence[int]], tokenizer) -> list[str]:
    """One label per group, built from the (possibly masked) tokens, e.g. 'play ##ing' -> 'playing'."""
    labels = []
    for group in groups:
        pieces = [tokens[i] for i in group]
        if len(pieces) == 1:
            labels.append(pieces[0])
            continue
        labels.append(tokenizer.convert_tokens_to_string(pieces).strip() or "".join(pieces))
    return labels


def merge_words(matrix: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Merge the last two axes (from, to) of an attention array into words: (..., T, T) -> (..., W, W).

    Rows (from) are averaged over a word's pieces, columns (to) summed, so rows that summed
    to 1 still do.
    """
    rows = np.stack([matrix[..., list(g), :].mean(axis=-2) for g in groups], axis=-2)  # (..., W, T)
    return np.stack([rows[..., list(g)].sum(axis=-1) for g in groups], axis=-1)  # (..., W, W)


def merge_scores(scores: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Per-token scores summed per word (attributions, attention received): (..., T) -> (..., W)."""
    return np.stack([scores[..., list(g)].sum(axis=-1) for g in groups], axis=-1)


def from_position(att: np.ndarray, position: int) -> np.ndarray:
    """Where ``position`` looks: (L, H, T, T) -> (L, H, T), each row sums to 1."""
    if not 0 <= position < att.shape[-1]:
        raise InputError(f"Position {position} is outside the text (0..{att.shape[-1] - 1}).")
    return att[:, :, position, :]


def entropy_bits(rows: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits along the last axis."""
    p = np.clip(rows.astype(np.float64), 1e-12, 1.0)
    return -(p * np.log2(p)).sum(axis=-1)


def head_overview(
    att: np.ndarray, position: int | None = None, metric: str = "entropy", target: int | None = None
) -> np.ndarray:
    """One number per layer and head: (L, H, T, T) -> (L, H).

    ``metric``: "entropy" (bits; low = focused head) of the row of ``position`` (mean over
    all rows when None); "max" (largest single weight of that row); "to token" (weight from
    ``position`` to ``target``).
    """
    if metric not in OVERVIEW_METRICS:
        raise InputError(f"metric must be one of {', '.join(OVERVIEW_METRICS)}; got {metric!r}.")
    rows = att if position is None else from_position(att, position)[:, :, None, :]  # (L, H, R, T)
    if metric == "entropy":
        return entropy_bits(rows).mean(axis=-1).astype(np.float32)
    if metric == "max":
        return rows.max(axis=-1).mean(axis=-1).astype(np.float32)
    if target is None or not 0 <= target < att.shape[-1]:
        raise InputError("Choose the token to measure attention to (a position inside the text).")
    return rows[..., target].mean(axis=-1).astype(np.float32)


def unmasked_ids(original_ids: Sequence[int], filled_ids: Sequence[int], mask_token_id: int) -> list[int]:
    """The sentence without masks: each masked token gets back its original id, or, where the
    user typed the mask (no original exists), the model's top prediction from ``filled_ids``.
    """
    return [int(f) if int(o) == mask_token_id else int(o) for o, f in zip(original_ids, filled_ids)]


def masked_vs_unmasked(
    loaded: LoadedModel,
    masked: Sequence[int],
    unmasked: Sequence[int],
    attention_exclude: Sequence[bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Attention with and without the masks, (L, H, T, T) each; their difference is masked - unmasked.

    Both passes keep the same ``attention_exclude``, so only the masks differ.
    """
    if len(masked) != len(unmasked):
        raise InputError("The masked and unmasked sentences must have the same tokens.")
    return attention_maps(loaded, masked, attention_exclude), attention_maps(loaded, unmasked, attention_exclude)
