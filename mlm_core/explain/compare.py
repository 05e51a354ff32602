"""Side-by-side what-ifs: the same text under two settings (A and B), and one-word sentence variants.

A side is a model plus a masking setting (strategy, seed, attention exclusion, heads switched off).
``compare`` lists every position masked in either side. A position masked on both sides is compared:
the difference is what B minus A give the original token (for a typed mask, which has no original,
the token A guesses first). A position masked on one side only is marked "A only" / "B only" and
never compared: the other side sees the token itself, so its "prediction" there would be a copy of
the input, not a guess. With the same strategy and seed both sides draw the same mask, so the
differences come from the model, the exclusion or the heads.

``word_swap`` edits one word ("he" → "she") and ranks the vocabulary by how much each token's
probability at the mask moved.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.explain.attention import head_mean, rollout
from mlm_core.explain.exploration import Exploration, check_mask_count, explore
from mlm_core.explain.predict import PositionPrediction, Prediction, predict
from mlm_core.explain.whatif import parse_heads
from mlm_core.model.forward import forward, head_gates, heads_gated
from mlm_core.model.loading import LoadedModel
from mlm_core.text.tokens import tokenize

ATTENTION_VIEWS = ("mean", "rollout")
SWAP_TOP = 15  # rows of the ranked list of probability changes
# Below this a probability difference is floating-point noise, not a change: the page shows
# probabilities to 0.1 percentage point, so "no difference" never hides a visible one.
SAME_TOLERANCE = 1e-4
BOTH, A_ONLY, B_ONLY = "both", "A only", "B only"  # the "masked in" column
NOT_PREDICTED = "— (not masked here)"  # a side's top-k cell where that side sees the token
KIND_WORDS = {"random": "random token", "kept": "kept"}  # BERT's 10% / 10%; "masked" needs no note
DIFFERENCE = "difference B−A"
SUMMARY_GUESSES = 4  # top guesses listed per side in the summary


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
    prediction: Prediction  # predictions at this side's own masked positions (heads applied)
    attentions: np.ndarray | None  # (L, H, T, T) with the side's exclusion and heads

    @property
    def by_position(self) -> dict[int, PositionPrediction]:
        return {p.position: p for p in self.prediction.predictions}


@dataclass(frozen=True)
class Comparison:
    """Columns of ``table``: position, token, masked in, compared token, difference B−A, p A, p B,
    A top-k, B top-k. ``difference``, ``p A`` and ``p B`` are NaN where they do not apply (one-sided)."""

    tokens: tuple[str, ...]  # the text as both models read it
    positions: tuple[int, ...]  # masked in A or B
    a: SideResult
    b: SideResult
    table: pd.DataFrame = field(repr=False)  # one row per position
    summary: pd.DataFrame = field(repr=False)  # one row per side

    @property
    def shared(self) -> pd.DataFrame:
        """The rows masked on both sides: the only ones whose difference means something."""
        return self.table[self.table["masked in"] == BOTH]

    @property
    def one_sided(self) -> pd.DataFrame:
        return self.table[self.table["masked in"] != BOTH]

    @property
    def same_result(self) -> bool:
        """Both sides mask the same positions and give the same guesses with the same probabilities."""
        if len(self.one_sided):
            return False
        for pa, pb in zip(self.a.prediction.predictions, self.b.prediction.predictions):
            if [c.token_id for c in pa.top] != [c.token_id for c in pb.top]:
                return False
            if any(abs(ca.prob - cb.prob) > SAME_TOLERANCE for ca, cb in zip(pa.top, pb.top)):
                return False
        return bool((self.table[DIFFERENCE].abs() <= SAME_TOLERANCE).all())

    def attention_difference(self, view: str = "mean", layer: int = -1) -> np.ndarray:
        """(T, T) B minus A at ``layer`` (head mean or rollout); needs models of the same depth."""
        if view not in ATTENTION_VIEWS:
            raise InputError(f"Attention view must be one of {', '.join(ATTENTION_VIEWS)}; got {view!r}.")
        if self.a.attentions is None or self.b.attentions is None:
            raise InputError("Attention is shown only for texts that fit in one window, and only when both models "
                             "have attention weights (a recurrent LSTM or GRU model has none).")
        if self.a.attentions.shape[:2] != self.b.attentions.shape[:2]:
            raise InputError("A and B have different numbers of layers or heads; their attention cannot be subtracted.")
        pick = head_mean if view == "mean" else rollout
        return pick(self.b.attentions)[layer] - pick(self.a.attentions)[layer]


def _gated(loaded: LoadedModel, heads_off: Sequence[tuple[int, int]]):
    return heads_gated(loaded, head_gates(loaded, heads_off)) if heads_off else contextlib.nullcontext()


def _exclusion(exploration: Exploration) -> list[bool] | None:
    mask = exploration.mask
    return mask.attention_exclude.tolist() if mask is not None and mask.attention_exclude.any() else None


def _side(loaded: LoadedModel, exploration: Exploration, heads_off, top_k) -> SideResult:
    """The side's predictions and attention at its own masked positions, with its heads switched off.

    The exploration's own forward pass already carries the attention; only switched-off heads need
    a second pass (the exploration ran without the head gates)."""
    own = exploration.prediction
    if heads_off:
        originals = {p.position: p.original_id for p in own.predictions if p.original_id is not None}
        with _gated(loaded, heads_off):
            own = predict(loaded, exploration.input_ids, own.positions, originals, top_k,
                          attention_exclude=_exclusion(exploration), output_attentions=True)
    return SideResult(exploration, own, own.attentions)


def _prob_of(prediction: PositionPrediction, loaded: LoadedModel, ids, token_id: int, heads_off, exclude) -> float:
    """p(token_id) at the prediction's position (the reference of a typed mask is A's first guess)."""
    for candidate in prediction.top:
        if candidate.token_id == token_id:
            return candidate.prob
    if token_id >= len(loaded.tokenizer):  # B's vocabulary lacks A's guess (same tokens, other vocabularies)
        return math.nan
    position = prediction.position
    with _gated(loaded, heads_off):  # predict() windows long texts as the side's own prediction did
        again = predict(loaded, ids, [position], {position: token_id}, 1, attention_exclude=exclude)
    return float(again.predictions[0].original_prob)


def _topk(prediction: PositionPrediction | None) -> str:
    return NOT_PREDICTED if prediction is None else ", ".join(f"{c.token} {c.prob:.0%}" for c in prediction.top)


def _masked_in(p: int, ex_a: Exploration, ex_b: Exploration, in_a: bool, in_b: bool) -> str:
    where = BOTH if in_a and in_b else A_ONLY if in_a else B_ONLY
    kinds = {"A": ex_a.kinds[p] if in_a else None, "B": ex_b.kinds[p] if in_b else None}
    if where == BOTH and kinds["A"] == kinds["B"]:
        notes = [KIND_WORDS[kinds["A"]]] if kinds["A"] in KIND_WORDS else []
    else:
        notes = [f"{s}: {KIND_WORDS[k]}" for s, k in kinds.items() if k in KIND_WORDS]
    return " · ".join([where, *notes])


def compare(
    text: str,
    loaded_a: LoadedModel,
    side_a: Side,
    loaded_b: LoadedModel,
    side_b: Side,
    top_k: int = 5,
) -> Comparison:
    """Every position masked in A or B; the ones masked on both sides compared. Both models must
    read the text alike.

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
    a = _side(loaded_a, ex_a, side_a.heads_off, top_k)
    b = _side(loaded_b, ex_b, side_b.heads_off, top_k)
    at_a, at_b = a.by_position, b.by_position
    rows = []
    for p in positions:
        pa, pb = at_a.get(p), at_b.get(p)
        row = {
            "position": p,
            "token": ex_a.tokens.tokens[p],
            "masked in": _masked_in(p, ex_a, ex_b, pa is not None, pb is not None),
            "compared token": "",
            DIFFERENCE: math.nan,
            "p A": math.nan if pa is None else _nan(pa.original_prob),
            "p B": math.nan if pb is None else _nan(pb.original_prob),
            "A top-k": _topk(pa),
            "B top-k": _topk(pb),
        }
        if pa is not None and pb is not None:
            if pa.original_id is not None:
                row["compared token"] = pa.original_token
            else:  # a typed mask has no original: compare what each side gives A's first guess
                guess = pa.top[0]
                row["compared token"] = f"{guess.token} (A's guess)"
                row["p A"] = guess.prob
                row["p B"] = _prob_of(pb, loaded_b, b.exploration.input_ids, guess.token_id, side_b.heads_off,
                                      _exclusion(b.exploration))
            row[DIFFERENCE] = row["p B"] - row["p A"]
        rows.append(row)
    table = pd.DataFrame(rows, columns=["position", "token", "masked in", "compared token", DIFFERENCE,
                                        "p A", "p B", "A top-k", "B top-k"])
    summary = pd.DataFrame([_summary_row("A", a, set(at_b)), _summary_row("B", b, set(at_a))])
    return Comparison(tuple(ex_a.tokens.tokens), positions, a, b, table, summary)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _summary_row(name: str, side: SideResult, other: set[int]) -> dict:
    """Masks, top-1 hits and mean p(original) over the side's own masks (typed masks have no original)."""
    predictions = side.prediction.predictions
    known = [p for p in predictions if p.original_id is not None]
    hits = sum(bool(p.hit) for p in known)
    guesses = ", ".join(f"{p.position}: {p.top[0].token} {p.top[0].prob:.0%}" for p in predictions[:SUMMARY_GUESSES])
    return {
        "side": name,
        "masks": len(predictions),
        "only on this side": sum(p.position not in other for p in predictions),
        "typed (no original)": len(predictions) - len(known),
        "top-1 hits": f"{hits} of {len(known)}" if known else "",  # blank: typed masks have no original
        "mean p(original)": float(np.mean([p.original_prob for p in known])) if known else math.nan,
        "first guesses": guesses + (" …" if len(predictions) > SUMMARY_GUESSES else ""),
    }


def _explore_side(loaded, text, side: Side, top_k: int, name: str) -> Exploration:
    try:
        return explore(loaded, text, side.strategy, side.seed, top_k=top_k, output_attentions=True)
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
    check_mask_count(len(masks_o))  # two forward passes per mask follow
    if len(masks_o) != len(masks_v):
        raise InputError("The edit changed the number of masks; replace a word that is not the mask.")
    special = loaded.special_id_tensor
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
