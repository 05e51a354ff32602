"""Side-by-side what-ifs: the same text under two settings (A and B), and one-word sentence variants.

A side is a model plus a masking setting (strategy, seed, attention exclusion, heads switched off).
``compare`` predicts every position masked in either side on both sides, so each row shows what A
and B make of the same blank; with the same strategy and seed both sides draw the same mask, so the
differences come from the model, the exclusion or the heads.

``word_swap`` edits one word ("he" → "she") and ranks the vocabulary by how much each token's
probability at the mask moved.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.explain.attention import attention_maps, head_mean, rollout
from mlm_core.explain.exploration import Exploration, explore
from mlm_core.explain.predict import Prediction, predict, special_id_tensor
from mlm_core.explain.whatif import parse_heads
from mlm_core.model.forward import forward, head_gates, heads_gated
from mlm_core.model.loading import LoadedModel
from mlm_core.text.tokens import tokenize

ATTENTION_VIEWS = ("mean", "rollout")
SWAP_TOP = 15  # rows of the ranked list of probability changes


@dataclass(frozen=True)
class Side:
    """One side's settings. ``strategy`` comes from ``masking.build_strategy``; heads are (layer, head)."""

    strategy: object | None = None
    seed: int = 0
    heads_off: tuple[tuple[int, int], ...] = ()
    label: str = ""


@dataclass(frozen=True)
class SideResult:
    exploration: Exploration  # the side's own masking and predictions
    prediction: Prediction  # predictions at every compared position (heads applied)
    attentions: np.ndarray | None  # (L, H, T, T) with the side's exclusion and heads


@dataclass(frozen=True)
class Comparison:
    tokens: tuple[str, ...]  # the text as both models read it
    positions: tuple[int, ...]  # masked in A or B
    a: SideResult
    b: SideResult
    table: pd.DataFrame = field(repr=False)  # one row per position

    def attention_difference(self, view: str = "mean", layer: int = -1) -> np.ndarray:
        """(T, T) B minus A at ``layer`` (head mean or rollout); needs models of the same depth."""
        if view not in ATTENTION_VIEWS:
            raise InputError(f"Attention view must be one of {', '.join(ATTENTION_VIEWS)}; got {view!r}.")
        if self.a.attentions is None or self.b.attentions is None:
            raise InputError("Attention is shown only for texts that fit in one window.")
        if self.a.attentions.shape[:2] != self.b.attentions.shape[:2]:
            raise InputError("A and B have different numbers of layers or heads; their attention cannot be subtracted.")
        pick = head_mean if view == "mean" else rollout
        return pick(self.b.attentions)[layer] - pick(self.a.attentions)[layer]


def _gated(loaded: LoadedModel, heads_off: Sequence[tuple[int, int]]):
    return heads_gated(loaded, head_gates(loaded, heads_off)) if heads_off else contextlib.nullcontext()


def _exclusion(exploration: Exploration) -> list[bool] | None:
    mask = exploration.mask
    return mask.attention_exclude.tolist() if mask is not None and mask.attention_exclude.any() else None


def _side(loaded: LoadedModel, exploration: Exploration, positions, heads_off, top_k) -> SideResult:
    originals = {p: exploration.tokens.ids[p] for p in positions}
    exclude = _exclusion(exploration)
    ids = exploration.input_ids
    with _gated(loaded, heads_off):
        prediction = predict(loaded, ids, positions, originals, top_k, attention_exclude=exclude)
        attentions = attention_maps(loaded, ids, exclude) if len(ids) <= loaded.max_length else None
    return SideResult(exploration, prediction, attentions)


def compare(
    text: str,
    loaded_a: LoadedModel,
    side_a: Side,
    loaded_b: LoadedModel,
    side_b: Side,
    top_k: int = 5,
) -> Comparison:
    """Predict every position masked in A or B on both sides. Both models must read the text alike.

    Example: ``compare("the cat [MASK] on the mat", m, Side(), m, Side(heads_off=((0, 1),)))``.
    """
    parse_heads(loaded_a, side_a.heads_off)
    parse_heads(loaded_b, side_b.heads_off)
    ex_a = _explore_side(loaded_a, text, side_a, top_k, "A")
    ex_b = _explore_side(loaded_b, text, side_b, top_k, "B")
    if ex_a.tokens.tokens != ex_b.tokens.tokens:
        raise InputError(
            "A and B read the text as different tokens (different tokenizers, or privacy masking on one "
            "side only); choose models that share a tokenizer and the same privacy setting."
        )
    positions = tuple(sorted(set(ex_a.prediction.positions) | set(ex_b.prediction.positions)))
    a = _side(loaded_a, ex_a, positions, side_a.heads_off, top_k)
    b = _side(loaded_b, ex_b, positions, side_b.heads_off, top_k)
    rows = []
    for p, pa, pb in zip(positions, a.prediction.predictions, b.prediction.predictions):
        rows.append({
            "position": p,
            "original": pa.original_token,
            "A masked": ex_a.kinds[p] or "—",
            "B masked": ex_b.kinds[p] or "—",
            "A top-k": ", ".join(f"{c.token} {c.prob:.0%}" for c in pa.top),
            "B top-k": ", ".join(f"{c.token} {c.prob:.0%}" for c in pb.top),
            "p(original) A": pa.original_prob,
            "p(original) B": pb.original_prob,
            "difference B−A": (pb.original_prob or 0.0) - (pa.original_prob or 0.0),
        })
    return Comparison(tuple(ex_a.tokens.tokens), positions, a, b, pd.DataFrame(rows))


def _explore_side(loaded, text, side: Side, top_k: int, name: str) -> Exploration:
    try:
        return explore(loaded, text, side.strategy, side.seed, top_k=top_k)
    except NothingToMaskError as exc:
        raise NothingToMaskError(f"Side {name}: {exc}") from exc


# --------------------------------------------------------------------------- sentence variants


@dataclass(frozen=True)
class Swap:
    original: str
    variant: str
    positions: tuple[int, ...]  # mask positions in the original text
    table: pd.DataFrame  # mask, token, p original, p variant, change; largest |change| first


def swap_word(text: str, old: str, new: str) -> str:
    """``text`` with every whole-word ``old`` replaced by ``new`` (case-insensitive); InputError if absent."""
    old, new = old.strip(), new.strip()
    if not old:
        raise InputError("Type the word to replace (e.g. he).")
    pattern = re.compile(rf"(?<!\w){re.escape(old)}(?!\w)", re.IGNORECASE)
    if not pattern.search(text):
        raise InputError(f"The word {old!r} is not in the text.")
    return pattern.sub(lambda _m: new, text)


def word_swap(loaded: LoadedModel, text: str, old: str, new: str, top: int = SWAP_TOP) -> Swap:
    """How the predictions at each typed mask shift when ``old`` becomes ``new``.

    The k-th mask of the original is matched with the k-th mask of the variant (the edit may change
    the number of tokens). Returns the ``top`` tokens with the largest probability change per mask.
    """
    variant = swap_word(text, old, new)
    ids_o = tokenize(loaded.tokenizer, text).ids
    ids_v = tokenize(loaded.tokenizer, variant).ids
    masks_o = [i for i, t in enumerate(ids_o) if t == loaded.mask_token_id]
    masks_v = [i for i, t in enumerate(ids_v) if t == loaded.mask_token_id]
    if not masks_o:
        raise NothingToMaskError(f"Type {loaded.mask_token} where a word should be predicted to compare variants.")
    if len(masks_o) != len(masks_v):
        raise InputError("The edit changed the number of masks; replace a word that is not the mask.")
    special = special_id_tensor(loaded)
    rows = []
    for k, (po, pv) in enumerate(zip(masks_o, masks_v)):
        probs = []
        for ids, p in ((ids_o, po), (ids_v, pv)):
            logits, _ = forward(loaded, ids, positions=[p])
            prob = torch.softmax(logits[0], dim=-1)
            prob[special] = 0.0
            probs.append(prob.cpu().numpy())
        change = probs[1] - probs[0]  # (V,)
        for token_id in np.argsort(-np.abs(change))[:top]:
            rows.append({
                "mask": k + 1,
                "token": loaded.tokenizer.convert_ids_to_tokens(int(token_id)),
                "p original": float(probs[0][token_id]),
                "p variant": float(probs[1][token_id]),
                "change": float(change[token_id]),
            })
    return Swap(text, variant, tuple(masks_o), pd.DataFrame(rows))


# --------------------------------------------------------------------------- leave one word out


def leave_one_out(loaded: LoadedModel, exploration: Exploration, position: int) -> pd.DataFrame:
    """For each context token, the drop in p(best guess at ``position``) when it is removed from the
    context (attention exclusion). Columns: position, token, p before, p after, drop; largest drop first."""
    from mlm_core.explain.whatif import exclude_tokens

    tokens = exploration.tokens
    ids = exploration.input_ids
    masked = set(exploration.prediction.positions)
    rows = []
    for i in range(len(ids)):
        if tokens.special[i] or i in masked:
            continue
        exclude = [j == i for j in range(len(ids))]
        (whatif,) = exclude_tokens(loaded, ids, [position], exclude, top_k=1)
        before, after = whatif.reference_before or 0.0, whatif.reference_after or 0.0
        rows.append({"position": i, "token": tokens.tokens[i], "p before": before, "p after": after,
                     "drop": before - after})
    frame = pd.DataFrame(rows, columns=["position", "token", "p before", "p after", "drop"])
    return frame.sort_values("drop", ascending=False, kind="stable").reset_index(drop=True)
