"""The three masking formulas as numbers a class can check: X⊙M, W⊙M and a_ij = 0.

* input masking ``X⊙M``: the textbook examples (``ONE_D``, ``GRID``) and the user's own sentence as
  word-embedding rows times a 0/1 mask (``sentence_input_mask``), next to what the model really
  does (replace the token by [MASK], a learned vector) and the masked ratio α against the rate p;
* parameter masking ``W⊙M``: a magnitude or random mask on one weight matrix of the model, drawn
  as a coarse grid, and the prediction before and after (``parameter_mask_effect``); the shared
  model is never modified (the masked matrix is passed to ``torch.func.functional_call``);
* attention masking ``a_ij = 0``: the attention before and after removing tokens, keys only or
  keys and queries (``attention_mask_comparison``; ``attention.EXCLUDE_MODES``).

Convention: in X⊙M and W⊙M, M = 1 keeps an entry and M = 0 hides it (so [1,2,3,4,5]⊙[0,1,0,1,0] =
[0,2,0,4,0]) and α is the share hidden; in a_ij = 0 the formula's m_i = 1 marks a removed token.
Everything returns numpy arrays and dataclasses; the pages draw them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.explain.attention import EXCLUDE_MODES, attention_maps, check_fits
from mlm_core.explain.predict import PositionPrediction, position_prediction
from mlm_core.explain.whatif import prunable_weights
from mlm_core.masking import RandomMasking, Vocab, apply_strategy
from mlm_core.masking.parameters import parameter_mask
from mlm_core.model.forward import exclusion_mask, forward, run
from mlm_core.model.loading import LoadedModel
from mlm_core.text.tokens import Tokens, tokenize

ONE_D = (np.array([1, 2, 3, 4, 5]), np.array([0, 1, 0, 1, 0]))  # the 1-D example: X⊙M = [0, 2, 0, 4, 0]
GRID = (np.arange(1, 10).reshape(3, 3), np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]]))  # 3×3: 4 of 9 hidden, α = 4/9
SHOWN_DIMENSIONS = 6  # embedding columns a table shows (the model's rows have hundreds)
GRID_CELLS = 48  # a weight mask is drawn as at most 48 × 48 cells, each the share kept in its block
TOP_K = 5


# ----------------------------------------------------------------------------- X⊙M


@dataclass(frozen=True)
class MaskProduct:
    """X, M and X⊙M (same shape); ``alpha`` is the masked ratio, the share of entries with M = 0."""

    x: np.ndarray
    mask: np.ndarray
    product: np.ndarray

    @property
    def alpha(self) -> float:
        return float((self.mask == 0).mean())


def mask_product(x, mask) -> MaskProduct:
    """Elementwise X⊙M with a 0/1 ``mask`` of the same shape (row masks broadcast over columns).

    Example: ``mask_product([1, 2, 3, 4, 5], [0, 1, 0, 1, 0]).product`` is ``[0, 2, 0, 4, 0]``, α = 3/5.
    """
    x, mask = np.asarray(x), np.asarray(mask)
    if not np.isin(mask, (0, 1)).all():
        raise InputError("A mask holds only 0 (hide) and 1 (keep).")
    if mask.shape != x.shape:
        raise InputError(f"X is {x.shape} and M is {mask.shape}: X⊙M needs the same shape.")
    return MaskProduct(x, mask, x * mask)


@dataclass(frozen=True)
class SentenceInputMask:
    """The user's sentence as word-embedding rows X (T, D) and a row mask M (T,): M = 0 at the chosen tokens.

    ``product`` is X⊙M (chosen rows all zero); ``replaced`` is what the model reads instead: the chosen
    rows replaced by the [MASK] token's learned embedding (``mask_row``). Both are cut to the first
    ``SHOWN_DIMENSIONS`` columns; the norms are over all D. ``alpha`` = chosen / eligible tokens (one
    draw), whose average over draws is the masking ``rate``. ``zeroed`` and ``with_mask_token`` are the
    model's top guesses at the chosen positions when it reads each.
    """

    tokens: tuple[str, ...]
    positions: tuple[int, ...]  # the chosen tokens (M = 0)
    eligible: int
    rate: float
    dimensions: int  # D, the model's embedding width
    x: np.ndarray  # (T, SHOWN_DIMENSIONS)
    mask: np.ndarray  # (T,) 0/1
    product: np.ndarray  # (T, SHOWN_DIMENSIONS)
    replaced: np.ndarray  # (T, SHOWN_DIMENSIONS)
    mask_row: np.ndarray  # (SHOWN_DIMENSIONS,)
    mask_row_norm: float
    row_norms: np.ndarray  # (T,) norm of each full row of X
    zeroed: tuple[PositionPrediction, ...]
    with_mask_token: tuple[PositionPrediction, ...]

    @property
    def alpha(self) -> float:
        return len(self.positions) / self.eligible if self.eligible else 0.0


def _chosen_positions(loaded: LoadedModel, tokens: Tokens, rate: float, seed: int) -> list[int]:
    """The typed masks if the text has any, else one random draw at ``rate`` (at least one token)."""
    if tokens.mask_positions:
        return tokens.mask_positions
    strategy = RandomMasking(rate, mask_replace_prob=1.0, random_replace_prob=0.0)  # every chosen token → [MASK]
    result = apply_strategy(tokens, strategy, Vocab.from_tokenizer(loaded.tokenizer), rng=seed, require_chosen=True)
    return result.chosen_positions


def sentence_input_mask(loaded: LoadedModel, text: str, rate: float = 0.15, seed: int = 0) -> SentenceInputMask:
    """X⊙M on ``text``: its word-embedding rows, the tokens a draw at ``rate`` hides (or the typed masks), and
    what the model guesses there when the rows are zeroed versus replaced by [MASK].

    Zeroing removes the token's identity but leaves the position and segment embeddings, so the model
    still reads "some token here"; [MASK] is a vector it was trained on. Example:
    ``sentence_input_mask(m, "The cat sat on the mat.", 0.3).alpha`` is the share of the 6 words hidden.
    """
    tokens = tokenize(loaded.tokenizer, text)
    check_fits(loaded, len(tokens), "The X⊙M view")
    positions = sorted(_chosen_positions(loaded, tokens, rate, seed))
    embedding = loaded.model.get_input_embeddings()
    with torch.no_grad():
        x = embedding.weight[torch.tensor(tokens.ids, device=embedding.weight.device)].float().cpu().numpy()  # (T, D)
        mask_row = embedding.weight[loaded.mask_token_id].float().cpu().numpy()  # (D,)
    keep = np.ones(len(tokens), dtype=np.int64)
    keep[positions] = 0
    replaced = x.copy()
    replaced[positions] = mask_row
    with_mask = [loaded.mask_token_id if i in positions else t for i, t in enumerate(tokens.ids)]
    mask_logits, _ = forward(loaded, with_mask, positions=positions)
    zero_logits = _zeroed_row_logits(loaded, tokens.ids, keep, positions)
    originals = {p: tokens.ids[p] for p in positions if tokens.ids[p] != loaded.mask_token_id}
    shown = slice(0, SHOWN_DIMENSIONS)
    return SentenceInputMask(
        tokens=tokens.tokens, positions=tuple(positions), eligible=len(tokens.eligible_positions), rate=float(rate),
        dimensions=x.shape[1], x=x[:, shown], mask=keep, product=(x * keep[:, None])[:, shown],
        replaced=replaced[:, shown], mask_row=mask_row[shown], mask_row_norm=float(np.linalg.norm(mask_row)),
        row_norms=np.linalg.norm(x, axis=1),
        zeroed=tuple(position_prediction(loaded, zero_logits[k], p, TOP_K, originals.get(p))
                     for k, p in enumerate(positions)),
        with_mask_token=tuple(position_prediction(loaded, mask_logits[k], p, TOP_K, originals.get(p))
                              for k, p in enumerate(positions)),
    )


def _zeroed_row_logits(loaded: LoadedModel, ids: Sequence[int], keep: np.ndarray, positions: Sequence[int]):
    """Logits (P, V) at ``positions`` when the word-embedding rows with ``keep`` = 0 are zero (X⊙M).

    A forward hook on the input embeddings multiplies its output by M, installed and removed under
    ``loaded.lock`` so no other session's pass sees it.
    """
    embedding = loaded.model.get_input_embeddings()
    rows = torch.tensor(keep, dtype=torch.float32, device=loaded.device)[None, :, None]  # (1, T, 1)
    input_ids = torch.tensor([list(ids)], device=loaded.device)
    chosen = (torch.zeros(len(positions), dtype=torch.long, device=loaded.device),
              torch.tensor(list(positions), dtype=torch.long, device=loaded.device))
    with loaded.lock:
        handle = embedding.register_forward_hook(lambda _m, _a, output: output * rows.to(output.dtype))
        try:
            logits, _ = run(loaded, input_ids, None, chosen)
        finally:
            handle.remove()
    return logits


# ----------------------------------------------------------------------------- W⊙M


@dataclass(frozen=True)
class ParameterMaskEffect:
    """One weight matrix under a parameter mask, and the prediction at each mask before and after."""

    name: str
    shape: tuple[int, int]
    kind: str
    sparsity: float
    removed: int  # weights with M = 0
    grid: np.ndarray  # (r, c) share of weights kept per block of the matrix, for a heatmap
    before: tuple[PositionPrediction, ...]
    after: tuple[PositionPrediction, ...]

    @property
    def total(self) -> int:
        return self.shape[0] * self.shape[1]


def weight_matrices(loaded: LoadedModel) -> list[str]:
    """Names of the encoder's weight matrices, bottom layer first (what W⊙M may be applied to)."""
    return list(prunable_weights(loaded))


def mask_grid(keep: torch.Tensor | np.ndarray, cells: int = GRID_CELLS) -> np.ndarray:
    """A 2-D 0/1 mask (R, C) shrunk to at most ``cells`` × ``cells``: each cell the share kept in its block."""
    keep = np.asarray(keep, dtype=np.float64)
    if keep.ndim != 2:
        raise InputError("A weight mask to draw must be a matrix.")
    row_edges = np.linspace(0, keep.shape[0], min(cells, keep.shape[0]) + 1).round().astype(int)
    col_edges = np.linspace(0, keep.shape[1], min(cells, keep.shape[1]) + 1).round().astype(int)
    sums = np.add.reduceat(np.add.reduceat(keep, row_edges[:-1], axis=0), col_edges[:-1], axis=1)
    sizes = np.outer(np.diff(row_edges), np.diff(col_edges))
    return sums / sizes


def parameter_mask_effect(loaded: LoadedModel, text: str, name: str, sparsity: float, kind: str = "magnitude",
                          seed: int = 0) -> ParameterMaskEffect:
    """W⊙M on the matrix ``name``: its mask (``masking.parameters.parameter_mask``) and the guesses at the
    text's masks with W and with W⊙M. The model's own weights are only read.

    Example: ``parameter_mask_effect(m, "Paris is the capital of [MASK].",
    "bert.encoder.layer.5.output.dense.weight", 0.5, "random")``.
    """
    tokens = tokenize(loaded.tokenizer, text)
    check_fits(loaded, len(tokens), "The W⊙M view")
    positions = tokens.mask_positions
    if not positions:
        raise NothingToMaskError(f"Type {loaded.mask_token} where the model should guess a word.")
    weights = prunable_weights(loaded)
    if name not in weights:
        raise InputError(f"{name!r} is not one of this model's encoder weight matrices; choose one of "
                         f"{', '.join(list(weights)[:3])}, ...")
    input_ids = torch.tensor([list(tokens.ids)], device=loaded.device)
    chosen = (torch.zeros(len(positions), dtype=torch.long, device=loaded.device),
              torch.tensor(positions, dtype=torch.long, device=loaded.device))
    with loaded.lock:  # the weight read here is the one the masked pass replaces
        weight = weights[name].detach()
        keep = parameter_mask(weight, sparsity, kind, seed)
        before, _ = run(loaded, input_ids, exclusion_mask(input_ids), chosen)
        after, _ = run(loaded, input_ids, exclusion_mask(input_ids), chosen, params={name: weight * keep})
    return ParameterMaskEffect(
        name=name, shape=tuple(weight.shape), kind=kind, sparsity=float(sparsity), removed=int((~keep).sum()),
        grid=mask_grid(keep.cpu().numpy()),
        before=tuple(position_prediction(loaded, before[k], p, TOP_K, None) for k, p in enumerate(positions)),
        after=tuple(position_prediction(loaded, after[k], p, TOP_K, None) for k, p in enumerate(positions)),
    )


# ----------------------------------------------------------------------------- a_ij = 0


@dataclass(frozen=True)
class AttentionMaskComparison:
    """Attention (L, H, T, T) with nothing removed, with the removed tokens' keys zeroed, and with their keys
    and queries zeroed; ``removed`` (T,) is the formula's m (True = m_i = 1)."""

    tokens: tuple[str, ...]
    removed: tuple[bool, ...]
    before: np.ndarray
    keys: np.ndarray
    keys_and_queries: np.ndarray

    def after(self, mode: str) -> np.ndarray:
        if mode not in EXCLUDE_MODES:
            raise InputError(f"The exclusion mode must be one of {', '.join(EXCLUDE_MODES)}; got {mode!r}.")
        return self.keys if mode == "keys" else self.keys_and_queries


def exclusion_positions(tokens: Tokens, items: Sequence[str]) -> list[int]:
    """Positions named by ``items``: a number is a token position (0 is the first special token), a word
    removes every token of each word that equals it (case-insensitive). Special tokens are never removed.

    Example: for "The cat sat on the mat." ``exclusion_positions(t, ["the", "3"])`` is ``[1, 3, 5]``.
    """
    positions: set[int] = set()
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item.isdecimal():
            position = int(item)
            if not 0 <= position < len(tokens) or tokens.special[position]:
                raise InputError(f"Position {position} is not a word of the text: choose from "
                                 f"{tokens.eligible_positions[0]} to {tokens.eligible_positions[-1]}.")
            positions.add(position)
            continue
        matches = [i for i in tokens.eligible_positions if tokens.word_text(i).casefold() == item.casefold()]
        if not matches:
            words = sorted({tokens.word_text(i) for i in tokens.eligible_positions})
            raise InputError(f"No word of the text is {item!r}; its words are: {', '.join(words)}.")
        positions.update(matches)
    if not positions:
        raise InputError("Name the words or positions to remove from the context (e.g. the,3).")
    if len(positions) == len(tokens.eligible_positions):
        raise InputError("Removing every word leaves nothing to attend to: keep at least one.")
    return sorted(positions)


def attention_mask_comparison(loaded: LoadedModel, text: str, positions: Sequence[int]) -> AttentionMaskComparison:
    """The attention of ``text`` before and after removing ``positions`` from the context, both ways.

    keys: column j = 0 for removed j, each row renormalised by softmax over the tokens left (rows sum
    to 1); keys-and-queries: as keys, and row i = 0 for removed i (those rows sum to 0).
    """
    tokens = tokenize(loaded.tokenizer, text)
    chosen = set(exclusion_positions(tokens, [str(p) for p in positions]))
    removed = [i in chosen for i in range(len(tokens))]
    return AttentionMaskComparison(
        tokens=tokens.tokens, removed=tuple(removed), before=attention_maps(loaded, tokens.ids),
        keys=attention_maps(loaded, tokens.ids, removed, "keys"),
        keys_and_queries=attention_maps(loaded, tokens.ids, removed, "keys-and-queries"),
    )
