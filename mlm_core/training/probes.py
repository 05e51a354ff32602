"""Before/after probes: the same sentences through a base model and a fine-tuned one.

A probe sentence either contains the mask token, and each mask is predicted (an answer
given after ``|`` is the "original" token whose probability is followed), or it has none,
and each token is masked in turn (its own token is the original). Both models see exactly
the same token ids, so the two top-k lists and the two probabilities compare directly.

Example::

    sentences = parse_sentences("Paris is the capital of [MASK]. | france\\nThe cat sat on the mat.")
    results = probe(load_model(None), load_model("runs/…/model"), sentences, top_k=5)
    probe_table(results)  # one row per probed position: p(original) before, after and the change
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlm_core.errors import InputError, ModelLoadError
from mlm_core.explain.predict import PositionPrediction, position_prediction, predict
from mlm_core.model.default_model import DEFAULT_MODEL_NAME
from mlm_core.model.forward import in_turn_logits
from mlm_core.model.loading import LoadedModel
from mlm_core.resources import asset
from mlm_core.text.tokens import tokenize, tokenizer_lock
from mlm_core.training.planning import resolve_run_model
from mlm_core.training.scratch import SCRATCH_MODELS
from mlm_core.training.store import run_ref_id

PRESET_FILE = asset("cloze_en.jsonl")
PRESET_MASK = "[MASK]"  # the mask string the preset file is written with
MAX_SENTENCES = 60
MAX_TOKENS = 64  # a probe is a sentence, not a document
MAX_POSITIONS = 24  # tokens masked in turn per sentence without a mask


@dataclass(frozen=True)
class ProbeSentence:
    text: str
    answers: tuple[str, ...] = ()  # expected fillers of a single mask (the first one-token answer is followed)


@dataclass(frozen=True)
class ProbeResult:
    """One probed position: the base model's and the fine-tuned model's guesses."""

    sentence: int  # index in the probe list
    context: str  # the sentence, the probed token in ⟦ ⟧ when masked in turn
    position: int
    before: PositionPrediction
    after: PositionPrediction

    @property
    def original(self) -> str | None:
        return self.before.original_token

    @property
    def change(self) -> float | None:
        """p_after(original) − p_before(original); None when the original is unknown."""
        if self.before.original_prob is None or self.after.original_prob is None:
            return None
        return self.after.original_prob - self.before.original_prob


def preset_sentences(mask_token: str = PRESET_MASK) -> list[ProbeSentence]:
    """The shipped cloze sentences (assets/cloze_en.jsonl), written with ``mask_token``."""
    sentences = []
    for line in PRESET_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            sentences.append(ProbeSentence(record["text"].replace(PRESET_MASK, mask_token),
                                           tuple(record.get("answers", ()))))
    return sentences


def parse_sentences(text: str) -> list[ProbeSentence]:
    """One sentence per line; ``sentence | answer, answer`` names the expected filler of its mask."""
    sentences = []
    for number, line in enumerate(text.splitlines(), start=1):
        sentence, _, answers = line.partition("|")
        if not sentence.strip():
            continue
        if len(sentence) > 1000:
            raise InputError(f"Line {number}: a probe is one sentence (at most 1,000 characters).")
        sentences.append(ProbeSentence(sentence.strip(), tuple(a.strip() for a in answers.split(",") if a.strip())))
    if not sentences:
        raise InputError("Type at least one sentence (one per line).")
    if len(sentences) > MAX_SENTENCES:
        raise InputError(f"{len(sentences)} sentences: probe at most {MAX_SENTENCES} at a time.")
    return sentences


def base_model_for(config: dict) -> tuple[str, str]:
    """(model to compare a run with, note): the model the run started from, when it can be loaded."""
    model = config.get("model")
    if model is None:
        return DEFAULT_MODEL_NAME, ""
    if model in SCRATCH_MODELS:
        return DEFAULT_MODEL_NAME, (f"The run started from random weights ({model}); it is compared with the "
                                    "default model instead.")
    if Path(model).is_absolute() and not Path(model).exists():
        return DEFAULT_MODEL_NAME, f"The run's base model ({model}) is gone; it is compared with the default model."
    if run_ref_id(model) is not None:
        try:
            resolve_run_model(model)
        except ModelLoadError:
            return DEFAULT_MODEL_NAME, f"The run's base model ({model}) is gone; it is compared with the default model."
    return model, ""


def _answer_id(loaded: LoadedModel, answers: Sequence[str]) -> int | None:
    """The id of the first answer that is one known token (not split, not unknown)."""
    unknown = loaded.tokenizer.unk_token
    for answer in answers:
        with tokenizer_lock(loaded.tokenizer):
            pieces = loaded.tokenizer.tokenize(answer)
        if len(pieces) == 1 and pieces[0] != unknown:
            return int(loaded.tokenizer.convert_tokens_to_ids(pieces[0]))
    return None


def _in_turn(loaded: LoadedModel, ids: list[int], positions: list[int], top_k: int) -> list[PositionPrediction]:
    """Each position masked alone (one copy of the sentence per position), original = its token."""
    results = []
    for rows, logits in in_turn_logits(loaded, [(ids, p, None) for p in positions]):  # logits (P, V)
        results.extend(position_prediction(loaded, logits[i], positions[k], top_k, ids[positions[k]])
                       for i, k in enumerate(rows))
    return results


def _context(tokens, position: int) -> str:
    start, end = tokens.offsets[position]
    return f"{tokens.text[:start]}⟦{tokens.text[start:end]}⟧{tokens.text[end:]}"


def probe(base: LoadedModel, tuned: LoadedModel, sentences: Sequence[ProbeSentence], top_k: int = 5
          ) -> list[ProbeResult]:
    """Every probed position of ``sentences`` through both models (same ids for both)."""
    if not sentences:
        raise InputError("No probe sentences.")
    if base.tokenizer.get_vocab() != tuned.tokenizer.get_vocab():
        raise InputError("The two models have different vocabularies, so their guesses cannot be compared "
                         "token for token.")
    results: list[ProbeResult] = []
    for index, sentence in enumerate(sentences[:MAX_SENTENCES]):
        tokens = tokenize(base.tokenizer, sentence.text)  # raises for empty text
        if len(tokens) > MAX_TOKENS:
            raise InputError(f"Sentence {index + 1} has {len(tokens)} tokens; a probe takes at most {MAX_TOKENS}.")
        ids = list(tokens.ids)
        masks = tokens.mask_positions
        if masks:
            original = _answer_id(base, sentence.answers) if len(masks) == 1 else None
            originals = {masks[0]: original} if original is not None else {}
            pair = [predict(m, ids, masks, originals, top_k).predictions for m in (base, tuned)]
            contexts = [sentence.text] * len(masks)
        else:
            positions = tokens.eligible_positions[:MAX_POSITIONS]
            pair = [_in_turn(m, ids, positions, top_k) for m in (base, tuned)]
            contexts = [_context(tokens, p) for p in positions]
        for before, after, context in zip(*pair, contexts):
            results.append(ProbeResult(index, context, before.position, before, after))
    return results


def probe_table(results: Sequence[ProbeResult]) -> pd.DataFrame:
    """One row per probed position: original, p before/after and the change, both top-1 guesses."""
    rows = [{
        "sentence": r.sentence + 1,
        "context": r.context,
        "original": r.original or "—",
        "p before": r.before.original_prob,
        "p after": r.after.original_prob,
        "change": r.change,
        "top-1 before": r.before.top[0].token,
        "top-1 after": r.after.top[0].token,
    } for r in results]
    return pd.DataFrame(rows, columns=["sentence", "context", "original", "p before", "p after", "change",
                                       "top-1 before", "top-1 after"])
