"""Predictions at masked positions, joint filling and pseudo-log-likelihood.

Every function takes token ids (already masked by the user or a strategy) and returns
plain dataclasses and numpy arrays, never figures.

Inputs longer than the model's limit are split into windows around the masked positions;
every masked position is predicted in a window that contains it, and a notice says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.model.forward import forward, in_turn_logits
from mlm_core.model.loading import LoadedModel
from mlm_core.policy import server_policy

FILL_MODES = ("independent", "joint")
MAX_TOP_K = 100


@dataclass(frozen=True)
class Candidate:
    token: str
    token_id: int
    prob: float


@dataclass(frozen=True)
class PositionPrediction:
    """The model's guesses for one masked position."""

    position: int
    top: tuple[Candidate, ...]
    original_id: int | None = None  # the token that was there before masking, when known
    original_token: str | None = None
    original_prob: float | None = None
    original_rank: int | None = None  # 1 = the model's first choice
    fill_step: int | None = None  # joint filling: 1 = filled first

    @property
    def hit(self) -> bool | None:
        return None if self.original_id is None else self.top[0].token_id == self.original_id


@dataclass(frozen=True)
class Prediction:
    """Predictions for all masked positions of one input.

    ``log_prob`` is the sum of the log-probabilities of the filled tokens: with
    ``fill="joint"`` it is the joint log-probability of the filled sentence (chain rule,
    most confident first); with ``fill="independent"`` each position ignores the others'
    fillings, so it is only the product of independent guesses.
    """

    input_ids: tuple[int, ...]
    positions: tuple[int, ...]
    predictions: tuple[PositionPrediction, ...]
    filled_ids: tuple[int, ...]
    fill: str
    log_prob: float
    attentions: np.ndarray | None = None  # (layers, heads, T, T) when asked for and T fits
    notices: tuple[str, ...] = ()

    @property
    def joint_prob(self) -> float:
        return math.exp(self.log_prob)


@dataclass(frozen=True)
class Window:
    start: int  # first content position (in the full sequence) inside the window
    end: int  # one past the last


def plan_windows(length: int, positions: Sequence[int], max_length: int) -> list[Window]:
    """Windows of at most ``max_length - 2`` content tokens covering every position.

    Example: ``plan_windows(1000, [10, 900], 512)`` gives two windows, one around each mask.
    Positions index the full sequence, whose first and last tokens are special.
    """
    inner = max_length - 2
    content_start, content_end = 1, length - 1
    if length <= max_length:
        return [Window(content_start, content_end)]
    windows: list[Window] = []
    for position in sorted(positions):
        if windows and windows[-1].start <= position < windows[-1].end:
            continue
        start = max(content_start, min(position - inner // 2, content_end - inner))
        windows.append(Window(start, start + inner))
    return windows


def _check(loaded: LoadedModel, ids: Sequence[int], positions: Sequence[int], top_k: int, fill: str) -> None:
    if not 1 <= top_k <= MAX_TOP_K:
        raise InputError(f"top-k must be between 1 and {MAX_TOP_K}; got {top_k}.")
    if fill not in FILL_MODES:
        raise InputError(f"fill must be one of {', '.join(FILL_MODES)}; got {fill!r}.")
    if not positions:
        raise NothingToMaskError(
            f"No masked position: type {loaded.mask_token} where a word should be predicted, "
            "click a token, or choose a masking strategy."
        )
    bad = [p for p in positions if not 0 < p < len(ids) - 1]
    if bad:
        raise InputError(f"Positions {bad} are outside the text (special tokens cannot be masked).")


def count_true(mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """How many entries of the bool ``mask`` are True along ``dim`` (int32). Why not ``mask.sum``: it
    widens every entry to int64 first, which made it the slowest step of ranking a (M, V) batch of
    guesses (10.5 of 37 ms for 165 masks of the default model, against 1.2 ms summed as bytes)."""
    return mask.view(torch.uint8).sum(dim, dtype=torch.int32)


def position_prediction(  # also used by the what-ifs, probes and comparisons: one way to rank guesses
    loaded: LoadedModel, logits: torch.Tensor, position: int, top_k: int, original_id: int | None, step=None
) -> PositionPrediction:
    probs = torch.softmax(logits, dim=-1)  # (V,)
    ranked = probs.clone()
    ranked[loaded.special_id_tensor] = -1.0  # never offer [CLS], [SEP], [MASK] ... as a word
    values, indices = ranked.topk(top_k)
    names = loaded.tokenizer.convert_ids_to_tokens(indices.tolist())
    top = tuple(Candidate(n, int(i), float(v)) for n, i, v in zip(names, indices.tolist(), values.tolist()))
    original = {}
    if original_id is not None:
        original_prob = float(probs[original_id])
        original = {
            "original_id": int(original_id),
            "original_token": loaded.tokenizer.convert_ids_to_tokens(int(original_id)),
            "original_prob": original_prob,
            "original_rank": int(count_true(ranked > original_prob)) + 1,
        }
    return PositionPrediction(position=position, top=top, fill_step=step, **original)


def predict(
    loaded: LoadedModel,
    ids: Sequence[int],
    positions: Sequence[int] | None = None,
    originals: dict[int, int] | None = None,
    top_k: int = 5,
    fill: str = "independent",
    attention_exclude: Sequence[bool] | None = None,
    output_attentions: bool = False,
) -> Prediction:
    """Top-k guesses at ``positions`` (default: wherever the mask token is).

    ``originals`` maps a position to the id that was there before masking (for hit/miss and
    the original token's probability). ``fill="joint"`` fills one position at a time, most
    confident first, each guess conditioned on the previous ones.

    Joint filling costs one forward pass per mask (300 masks took two minutes on a CPU), so with
    more than the server's ``max_joint_fill_masks`` the masks are filled independently instead, in
    one pass: the result's ``fill`` is then "independent" and a notice says why. A user who asked for
    joint filling still gets every guess, sooner, and is told they ignore one another; refusing would
    leave nothing to look at for a request that can be served.
    Example: ``predict(m, tokenize(m.tokenizer, "Paris is the capital of [MASK].").ids)``.
    """
    ids = [int(i) for i in ids]
    if positions is None:
        positions = [i for i, t in enumerate(ids) if t == loaded.mask_token_id]
    positions = sorted(set(int(p) for p in positions))
    _check(loaded, ids, positions, top_k, fill)
    originals = originals or {}
    windows = plan_windows(len(ids), positions, loaded.max_length)
    notices = []
    joint_limit = server_policy().max_joint_fill_masks
    if fill == "joint" and len(positions) > joint_limit:
        notices.append(
            f"Joint filling takes one pass of the model per mask; this text has {len(positions):,} masks and this "
            f"server fills at most {joint_limit:,} jointly, so they were filled independently: each guess ignores "
            "the others."
        )
        fill = "independent"
    if len(windows) > 1 or len(ids) > loaded.max_length:
        notices.append(
            f"The input has {len(ids)} tokens, more than this model's {loaded.max_length}; each mask was "
            f"predicted in a window of {loaded.max_length} tokens around it ({len(windows)} window(s))."
        )
    filled = list(ids)
    results: dict[int, PositionPrediction] = {}
    log_prob = 0.0
    attentions = None
    for window in windows:
        # Windows may overlap: a position already predicted in an earlier window is not redone.
        inside = [p for p in positions if window.start <= p < window.end and p not in results]
        offset = window.start - 1  # window token k corresponds to full position k + offset

        def window_ids(source, window=window):
            return [source[0], *source[window.start : window.end], source[-1]]

        exclude = None if attention_exclude is None else window_ids(list(attention_exclude))
        want_attention = output_attentions and len(ids) <= loaded.max_length
        if fill == "independent":
            rows = [p - offset for p in inside]
            logits, attentions = forward(loaded, window_ids(ids), exclude, want_attention, positions=rows)
            for row, p in enumerate(inside):
                results[p] = position_prediction(loaded, logits[row], p, top_k, originals.get(p))
                filled[p] = results[p].top[0].token_id
                log_prob += math.log(max(results[p].top[0].prob, 1e-45))
        else:
            remaining = list(inside)
            step = 0
            while remaining:
                # The first step sees the input unfilled: its attentions are the input's attentions.
                rows = [p - offset for p in remaining]
                logits, step_attentions = forward(
                    loaded, window_ids(filled), exclude, want_attention and step == 0, positions=rows
                )
                if step == 0 and want_attention:
                    attentions = step_attentions
                probs = torch.softmax(logits, dim=-1)  # (P, V)
                probs[:, loaded.special_id_tensor] = 0.0
                row = int(probs.max(dim=-1).values.argmax())
                best = remaining[row]
                step += 1
                results[best] = position_prediction(
                    loaded, logits[row], best, top_k, originals.get(best), step
                )
                filled[best] = results[best].top[0].token_id
                log_prob += math.log(max(results[best].top[0].prob, 1e-45))
                remaining.remove(best)
    if output_attentions and attentions is None and loaded.has_attention:  # a recurrent model has none to show
        notices.append("Attention is shown only for inputs that fit in one window.")
    return Prediction(
        input_ids=tuple(ids),
        positions=tuple(positions),
        predictions=tuple(results[p] for p in positions),
        filled_ids=tuple(filled),
        fill=fill,
        log_prob=log_prob,
        attentions=attentions,
        notices=tuple(notices),
    )


def pseudo_log_likelihood(loaded: LoadedModel, ids: Sequence[int]) -> tuple[float, np.ndarray]:
    """PLL (Salazar et al. 2020): mask each non-special token in turn, sum log p(original).

    Returns (total, per-position log-probabilities with NaN at special positions), shape (T,).
    """
    ids = [int(i) for i in ids]
    if len(ids) > loaded.max_length:
        raise InputError(f"Pseudo-log-likelihood needs at most {loaded.max_length} tokens; got {len(ids)}.")
    special = set(loaded.special_ids)
    positions = [i for i, t in enumerate(ids) if t not in special]
    scores = np.full(len(ids), np.nan)
    for rows, logits in in_turn_logits(loaded, [(ids, p, None) for p in positions]):
        chunk = [positions[k] for k in rows]
        log_probs = torch.log_softmax(logits, dim=-1)  # (B, V)
        targets = torch.tensor([ids[p] for p in chunk], device=loaded.device)
        scores[chunk] = log_probs[torch.arange(len(chunk), device=loaded.device), targets].cpu().numpy()
    return float(np.nansum(scores)), scores


def fill_text(loaded: LoadedModel, ids: Sequence[int]) -> str:
    """Decoded text without special tokens (for showing a filled-in sentence)."""
    return loaded.tokenizer.decode(list(ids), skip_special_tokens=True)
