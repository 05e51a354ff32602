"""The explorer's pipeline in one call: text → privacy → tokens → mask → predictions.

Pages and the CLI call ``explore()``; it validates the input and returns one record with
everything a view needs, so what the page shows is exactly what the CLI prints.
The strategy comes from ``mlm_core.masking.build_strategy`` (the masking panel's composition).

Order of operations (the same as the trainer's):

1. privacy steps rewrite the raw text (``PrivacyResult`` says what was replaced);
2. the text is tokenized; typed mask tokens and clicked tokens become masks (clicks keep
   their original token for hit/miss);
3. the strategy (if any) chooses more positions and corrupts them 80/10/10, or excludes
   tokens from the context;
4. the model predicts every masked, random-replaced and kept position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlm_core.errors import InputError
from mlm_core.explain.predict import Prediction, predict, pseudo_log_likelihood
from mlm_core.explain.result_cache import model_token, shared_results
from mlm_core.masking import (
    MASKED,
    MaskResult,
    Vocab,
    apply_strategy,
    is_adaptive,
    prepare_text,
    selection_frequency,
)
from mlm_core.masking.language import text_language
from mlm_core.model.loading import LoadedModel
from mlm_core.policy import server_policy
from mlm_core.text.privacy import PrivacyResult
from mlm_core.text.tokens import Tokens, tokenize

MAX_MASKED_FRACTION = 0.8  # beyond this the "predictions" are mostly the model's prior
FREQUENCY_DRAWS = 200


@dataclass(frozen=True)
class Exploration:
    tokens: Tokens  # the text as the model reads it (after privacy), before masking
    mask: MaskResult | None  # what the strategy did (None: only typed/clicked masks)
    kinds: tuple[str | None, ...]  # per position: masked / random / kept / excluded / None
    input_ids: tuple[int, ...]  # what the model sees
    prediction: Prediction
    privacy: PrivacyResult | None = None
    notices: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        """α, the masking engine's one definition (``MaskResult.ratio``): chosen positions (typed and
        clicked masks included) ÷ eligible positions after protection (privacy placeholders, protected
        words). With no strategy nothing is protected: typed and clicked masks ÷ non-special tokens."""
        if self.mask is not None:
            return self.mask.ratio
        eligible = len(self.tokens.eligible_positions)
        return len(self.prediction.positions) / eligible if eligible else 0.0


def reading_tokens(loaded: LoadedModel, text: str, strategy=None) -> tuple[Tokens, PrivacyResult | None]:
    """The tokens the model will read: after the strategy's privacy step, before masking."""
    privacy = None if strategy is None else prepare_text(text, strategy, mask_token=loaded.mask_token)
    language = text_language(strategy)  # its stopwords and, in Chinese, its words
    return tokenize(loaded.tokenizer, text if privacy is None else privacy.text, language=language), privacy


def with_masks(tokens: Tokens, positions: Sequence[int], loaded: LoadedModel) -> Tokens:
    """``tokens`` with ``positions`` replaced by the mask token (special tokens refused)."""
    ids = list(tokens.ids)
    for position in positions:
        if not 0 <= position < len(ids) or tokens.special[position]:
            raise InputError(f"Position {position} cannot be masked: it is a special token or outside the text.")
        ids[position] = loaded.mask_token_id
    return tokens.with_ids(ids, loaded.tokenizer)


def check_mask_count(count: int, drawn: bool = False) -> None:
    """Refuse a text with more masks than the operator allows (``max_masks_per_text``).

    Every page that predicts masks (Explore, Compare, Teach, the Why links) and the CLI's ``predict``
    and ``mask`` go through here: each mask costs a row of predictions, a chart and, with joint
    filling, a forward pass, so the count bounds a request's work before any of it is done.
    ``drawn``: the masks include those a strategy chose (the message then says how to draw fewer).

    Example: ``check_mask_count(2500)`` raises InputError("This text has 2,500 masks; this server
    allows at most 100 per text. Mask fewer words.").
    """
    limit = server_policy().max_masks_per_text
    if count > limit:
        fewer = "Lower the masking rate, shorten the text or mask fewer words." if drawn else "Mask fewer words."
        raise InputError(f"This text has {count:,} masks; this server allows at most {limit:,} per text. {fewer}")


def surprisal_scores(loaded: LoadedModel, tokens: Tokens) -> np.ndarray:
    """(T,) −log p of each token given the rest (0 at special/mask positions): adaptive masking's scores."""
    _, log_probs = pseudo_log_likelihood(loaded, tokens.ids)
    return np.nan_to_num(-log_probs, nan=0.0).clip(min=0.0)


def explore(
    loaded: LoadedModel,
    text: str,
    strategy=None,
    seed: int = 0,
    manual_positions: Sequence[int] = (),
    top_k: int = 5,
    fill: str = "independent",
    output_attentions: bool = False,
) -> Exploration:
    """Mask ``text`` (typed masks, clicked ``manual_positions`` and ``strategy``) and predict.

    More masks than the server allows are refused (``check_mask_count``); ``fill="joint"`` with more
    than ``max_joint_fill_masks`` fills independently and says so in ``notices`` (``predict``).
    The result is shared by every session that asks the same of the same model object
    (``result_cache``): it is frozen, its arrays read-only.
    """
    manual_positions = tuple(int(p) for p in manual_positions)
    key = _request_key(loaded, text, strategy, seed, manual_positions, top_k, fill, output_attentions)
    compute = lambda: _explore(loaded, text, strategy, seed, manual_positions, top_k, fill, output_attentions)  # noqa: E731
    return compute() if key is None else shared_results().get(key, compute)


def is_explored(loaded: LoadedModel, text: str, strategy=None, seed: int = 0, manual_positions: Sequence[int] = (),
                top_k: int = 5, fill: str = "independent", output_attentions: bool = False) -> bool:
    """Whether ``explore`` with these arguments would answer from the shared results at once."""
    manual_positions = tuple(int(p) for p in manual_positions)
    key = _request_key(loaded, text, strategy, seed, manual_positions, top_k, fill, output_attentions)
    return key is not None and key in shared_results()


def _request_key(loaded: LoadedModel, text: str, strategy, *settings) -> tuple | None:
    """Everything an exploration depends on, or None when that cannot be told (a strategy that is not a
    dataclass has no repr that lists its settings: its result is computed, never shared)."""
    if strategy is not None and not dataclasses.is_dataclass(strategy):
        return None
    # The operator's limits decide refusals and notices (max_masks_per_text, max_joint_fill_masks).
    return (model_token(loaded), "explore", text, repr(strategy), *settings, server_policy())


def _explore(loaded: LoadedModel, text: str, strategy, seed: int, manual_positions: tuple[int, ...], top_k: int,
             fill: str, output_attentions: bool) -> Exploration:
    tokens, privacy = reading_tokens(loaded, text, strategy)
    clicked = with_masks(tokens, manual_positions, loaded)
    kinds: list[str | None] = [MASKED if i == loaded.mask_token_id else None for i in clicked.ids]
    check_mask_count(kinds.count(MASKED))  # typed and clicked masks: refused before any model work
    ids = list(clicked.ids)
    attention_exclude = None
    originals = {p: tokens.ids[p] for p in manual_positions}
    mask = None
    if strategy is not None:
        vocab = Vocab.from_tokenizer(loaded.tokenizer)
        scores = surprisal_scores(loaded, clicked) if is_adaptive(strategy) else None
        protected = privacy.protected_positions(tokens) if privacy else ()
        mask = apply_strategy(clicked, strategy, vocab, rng=seed, scores=scores, protected=protected)
        ids = [int(i) for i in mask.input_ids]
        kinds = [k or kinds[i] for i, k in enumerate(mask.kinds)]
        attention_exclude = mask.attention_exclude.tolist() if mask.attention_exclude.any() else None
        originals.update({p: int(mask.labels[p]) for p in mask.chosen_positions if mask.labels[p] >= 0})
    positions = [i for i, kind in enumerate(kinds) if kind in ("masked", "random", "kept")]
    check_mask_count(len(positions), drawn=strategy is not None)
    eligible = len(tokens.eligible_positions)
    if len(positions) > MAX_MASKED_FRACTION * eligible and eligible > 1:
        raise InputError(
            f"{len(positions)} of {eligible} tokens are masked; the limit is {MAX_MASKED_FRACTION:.0%}. "
            "Lower the rate or unmask some tokens so the model has context to work from."
        )
    notices = []
    if privacy and privacy.replacements:
        found = ", ".join(f"{n} {kind}" for kind, n in privacy.counts().items())
        notices.append(f"Privacy masking replaced {found} before the model saw the text.")
    # Beyond max_joint_fill_masks there is no joint filling to offer (predict fills independently).
    if kinds.count(MASKED) > 1 and len(positions) <= server_policy().max_joint_fill_masks and fill == "independent":
        notices.append("Each mask is predicted independently: the guesses ignore one another. "
                       "Choose joint filling to fill them one at a time.")
    prediction = predict(loaded, ids, positions, originals, top_k, fill, attention_exclude, output_attentions)
    return Exploration(tokens, mask, tuple(kinds), tuple(ids), prediction, privacy,
                       tuple(notices) + prediction.notices)


def chosen_frequency(loaded: LoadedModel, text: str, strategy, seed: int = 0,
                     draws: int = FREQUENCY_DRAWS) -> tuple[Tokens, np.ndarray]:
    """How often each token is chosen over ``draws`` draws of ``strategy`` (the explorer's strip)."""
    tokens, privacy = reading_tokens(loaded, text, strategy)
    vocab = Vocab.from_tokenizer(loaded.tokenizer)
    scores = surprisal_scores(loaded, tokens) if is_adaptive(strategy) else None
    protected = privacy.protected_positions(tokens) if privacy else ()
    return tokens, selection_frequency(tokens, strategy, vocab, draws=draws, rng=seed, scores=scores,
                                       protected=protected)

