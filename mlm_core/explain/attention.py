"""Attention weights and their aggregates, as numpy arrays (no figures).

Conventions: ``att`` is (layers L, heads H, T, T); row i is the query ("from" token i),
column j the key ("to" token j); each row sums to 1. Layer and head indices are 0-based,
like token positions (position 0 is [CLS] / <s>).

* ``attention_maps``: one forward pass, all layers and heads; with ``attention_exclude``, the
  excluded tokens leave the context in one of ``EXCLUDE_MODES`` (``queries_excluded``);
* ``head_mean``, ``rollout`` (Abnar & Zuidema 2020, with the residual term);
* ``word_groups`` / ``merge_words``: word pieces merged into words (rows averaged,
  columns summed, so merged rows still sum to 1; Clark et al. 2019);
* ``from_position``: where one (masked) position looks, per layer and head;
* ``head_overview``: one number per layer and head (entropy, max, attention to a token);
* ``unmasked_ids``: the same sentence without its masks, for masked-vs-unmasked views.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from mlm_core.errors import InputError
from mlm_core.model.families import attention_output_projection
from mlm_core.model.forward import attention_modules, forward
from mlm_core.model.loading import LoadedModel

OVERVIEW_METRICS = ("entropy", "max", "to token")
# How excluded tokens (m = 1) leave the context. keys: no token attends to them (a_ij = 0 when m_j = 1), the
# standard key-padding mask; softmax spreads each row over the tokens left, so rows still sum to 1.
# keys-and-queries: also a_ij = 0 when m_i = 1, as the masking formula states: an excluded token's own
# row is all zero, so its attention output is zero and only the residual stream carries it on.
EXCLUDE_MODES = ("keys", "keys-and-queries")


def check_fits(loaded: LoadedModel, n_tokens: int, what: str = "Attention") -> None:
    """Views over all positions need the whole input in one window."""
    if n_tokens > loaded.max_length:
        raise InputError(
            f"{what} needs the whole text in one pass: it has {n_tokens} tokens and this model takes at "
            f"most {loaded.max_length}. Shorten the text."
        )


def attention_maps(
    loaded: LoadedModel, ids: Sequence[int], attention_exclude: Sequence[bool] | None = None, mode: str = "keys"
) -> np.ndarray:
    """All attention weights for ``ids``: (L, H, T, T) float32, rows sum to 1.

    ``attention_exclude`` (T,) removes tokens from the context the ``mode`` way (``EXCLUDE_MODES``):
    their columns are 0 and the other rows renormalised; with "keys-and-queries" their rows are 0 too.
    Example: ``attention_maps(m, tokenize(m.tokenizer, "A [MASK] sat.").ids)[-1, 0]`` is the
    last layer's first head, a T×T matrix.
    """
    loaded.require_attention("Attention weights")  # a recurrent model has none: one clear message
    if mode not in EXCLUDE_MODES:
        raise InputError(f"The exclusion mode must be one of {', '.join(EXCLUDE_MODES)}; got {mode!r}.")
    check_fits(loaded, len(ids))
    if attention_exclude is not None and len(attention_exclude) != len(ids):
        raise InputError("The exclusion list must have one entry per token.")
    rows = attention_exclude if mode == "keys-and-queries" else None
    with queries_excluded(loaded, rows):
        _, att = forward(loaded, ids, attention_exclude, output_attentions=True)
    return att


@contextlib.contextmanager
def queries_excluded(loaded: LoadedModel, exclude: Sequence[bool] | None):
    """Within the block, every layer's attention rows of the ``exclude``d queries are zero (a_ij = 0 when m_i = 1).

    A row of zeros gives that token an attention output of zero in every head, so the hooks zero the
    heads' concatenated context (B, T, H*d) at those positions, before the attention's own output
    projection where the family has one inside the module (DistilBERT, ModernBERT), and the recorded
    weights' rows, which are then the ones the model used. Hooks are installed and removed under
    ``loaded.lock``, as the head gates are (``forward.heads_gated``). Families that share one attention
    module across layers (ALBERT) are refused by ``attention_modules`` with a message.
    """
    if exclude is None or not any(exclude):
        yield
        return
    with loaded.lock:
        try:
            modules = attention_modules(loaded)
        except InputError:
            raise InputError(
                f"Keys-and-queries exclusion zeroes rows in each layer's own attention module, and "
                f"{loaded.model.config.model_type} shares one module across its layers: exclude keys only."
            ) from None
        keep = torch.tensor([0.0 if e else 1.0 for e in exclude], device=loaded.device)  # (T,)
        handles = []

        def rows_kept(tensor):
            return tensor * keep.to(tensor.dtype)[None, :, None]  # (B, T, H*d)

        def after(_module, _args, output, projected: bool):
            if not isinstance(output, tuple):
                return output if projected else rows_kept(output)
            context, weights, *rest = output
            if not projected:
                context = rows_kept(context)
            if isinstance(weights, torch.Tensor) and weights.dim() == 4:
                weights = weights * keep.to(weights.dtype)[None, None, :, None]  # (B, H, T, T): query rows
            return (context, weights, *rest)

        try:
            for module in modules:
                projection = attention_output_projection(module)
                if projection is not None:
                    handles.append(projection.register_forward_pre_hook(
                        lambda _m, args: (rows_kept(args[0]), *args[1:])))
                # prepend: transformers records attentions with a hook of its own on this module, installed at
                # the first pass that asks for them; ours must run first so that the record has the zero rows.
                handles.append(module.register_forward_hook(
                    lambda m, a, o, projected=projection is not None: after(m, a, o, projected), prepend=True))
            yield
        finally:
            for handle in handles:
                handle.remove()


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
    eye = np.eye(att.shape[-1])
    a_hat = residual * eye + (1.0 - residual) * head_mean(att).astype(np.float64)  # (L, T, T), all layers at once
    a_hat /= a_hat.sum(axis=-1, keepdims=True)
    result = np.empty_like(a_hat)
    current = eye
    for layer in range(len(a_hat)):  # each layer's product needs the one below: L small matrix products
        current = result[layer] = a_hat[layer] @ current
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
    if not np.isfinite(matrix).all():  # a product would spread a NaN from one word to every word
        rows = np.stack([matrix[..., list(g), :].mean(axis=-2) for g in groups], axis=-2)  # (..., W, T)
        return np.stack([rows[..., list(g)].sum(axis=-1) for g in groups], axis=-1)  # (..., W, W)
    summing = group_matrix(groups, matrix.shape[-1])  # (W, T) of 0/1
    averaging = summing / summing.sum(axis=-1, keepdims=True)
    return (averaging @ matrix @ summing.T).astype(matrix.dtype, copy=False)  # (..., W, W), any leading axes


def group_matrix(groups: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """(W, n) with 1 where position j belongs to group g: merging as a matrix product, one call for all heads."""
    summing = np.zeros((len(groups), n))
    for g, members in enumerate(groups):
        summing[g, list(members)] = 1.0
    return summing


def merge_scores(scores: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Per-token scores summed per word (attributions, attention received): (..., T) -> (..., W)."""
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating) or not np.isfinite(scores).all():  # NaN: a product spreads it
        return np.stack([scores[..., list(g)].sum(axis=-1) for g in groups], axis=-1)
    return (scores @ group_matrix(groups, scores.shape[-1]).T).astype(scores.dtype, copy=False)


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
