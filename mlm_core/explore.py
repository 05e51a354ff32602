"""The explorer's pipeline in one call: text → tokens → mask → predictions.

Pages and the CLI call ``explore()``; it validates the input and returns one record with
everything a view needs, so what the page shows is exactly what the CLI prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlm_core.errors import InputError
from mlm_core.models import LoadedModel
from mlm_core.predict import Prediction, predict
from mlm_core.tokens import Tokens, tokenize

MAX_MASKED_FRACTION = 0.8  # beyond this the "predictions" are mostly the model's prior


@dataclass(frozen=True)
class Exploration:
    tokens: Tokens  # the text as typed (typed mask tokens included)
    masked: Tokens  # after manual masking: what the model sees
    prediction: Prediction
    notices: tuple[str, ...] = ()


def masked_ids(tokens: Tokens, positions: Sequence[int], mask_token_id: int) -> list[int]:
    """``tokens.ids`` with the given positions replaced by the mask token (specials refused)."""
    ids = list(tokens.ids)
    for position in positions:
        if not 0 <= position < len(ids) or tokens.special[position]:
            raise InputError(f"Position {position} cannot be masked: it is a special token or outside the text.")
        ids[position] = mask_token_id
    return ids


def explore(
    loaded: LoadedModel,
    text: str,
    manual_positions: Sequence[int] = (),
    top_k: int = 5,
    fill: str = "independent",
    output_attentions: bool = False,
) -> Exploration:
    """Mask ``text`` (typed mask tokens plus ``manual_positions``) and predict every mask."""
    tokens = tokenize(loaded.tokenizer, text)
    ids = masked_ids(tokens, manual_positions, loaded.mask_token_id)
    masked = tokens.with_ids(ids, loaded.tokenizer)
    positions = masked.mask_positions
    eligible = len(tokens.eligible_positions)
    notices = []
    if positions and len(positions) > MAX_MASKED_FRACTION * eligible and eligible > 1:
        raise InputError(
            f"{len(positions)} of {eligible} tokens are masked; the limit is {MAX_MASKED_FRACTION:.0%}. "
            "Unmask some tokens so the model has context to work from."
        )
    if len(positions) > 1 and fill == "independent":
        notices.append("Each mask is predicted independently: the guesses ignore one another. "
                       "Choose joint filling to fill them one at a time.")
    originals = {p: tokens.ids[p] for p in manual_positions}
    prediction = predict(loaded, ids, positions, originals, top_k, fill, output_attentions=output_attentions)
    return Exploration(tokens, masked, prediction, tuple(notices) + prediction.notices)
