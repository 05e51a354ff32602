"""The masking engine's invariants, written once: tokens, the privacy report and ``MaskResult``.

tests/masking/test_masking_properties.py (hypothesis) and tests/fuzz/fuzz_masking.py (atheris)
both check every result with these. Each property is one the code documents: the package
docstring of ``mlm_core.masking`` (eligibility, typed masks, protection, exclusion, corruption,
α), ``MaskResult``, the strategies' docstrings (which ones choose whole words) and
``mlm_core.text.privacy``.

The fuzz harness imports this module only once ``mlm_core`` is imported under atheris's
instrumentation: importing it earlier would import ``mlm_core.masking`` uninstrumented.
"""

from __future__ import annotations

import math

import numpy as np

from mlm_core.masking import (
    EXCLUDED,
    IGNORE_INDEX,
    KEPT,
    KIND_BY_CODE,
    MASKED,
    RANDOM,
    Corruption,
    ManualMasking,
    MaskingStep,
    RuleBased,
    SpanMasking,
    WholeWordMasking,
    apply_strategy,
    strategy_steps,
)

CHOSEN_KINDS = (MASKED, RANDOM, KEPT)


def assert_tokens_invariants(tokens, vocab, tokenizer, text: str | None = None) -> None:
    """A ``Tokens`` record of ``text``: aligned lists, specials framing the text, typed masks found."""
    if text is not None:
        assert tokens.text == text
    text = tokens.text
    control = {
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    } - {None}
    n = len(tokens.ids)
    assert n == len(tokens.tokens) == len(tokens.offsets) == len(tokens.word_ids) == len(tokens.special)
    assert n == len(tokens.categories)
    inner = [i for i, special in enumerate(tokens.special) if not special]
    assert inner and inner == list(range(inner[0], inner[-1] + 1))  # specials only frame the text
    for i in range(n):
        start, end = tokens.offsets[i]
        if tokens.special[i]:
            assert (start, end) == (0, 0) and tokens.word_ids[i] is None
        else:
            assert 0 <= start <= end <= len(text), (i, start, end, len(text))
            assert tokens.ids[i] not in control, (i, tokens.tokens[i])  # a typed [CLS] or </s> stays text
    assert len(tokens.mask_positions) == text.count(vocab.mask_token)  # every typed mask, and only those
    for position in tokens.mask_positions:
        assert text[slice(*tokens.offsets[position])] == vocab.mask_token


def assert_privacy_invariants(text: str, privacy) -> None:
    """A ``PrivacyResult`` of ``text``: replacements in order, not overlapping, mapped both ways."""
    assert privacy.original_text == text
    previous_end = 0
    for item in privacy.replacements:
        assert previous_end <= item.start < item.end <= len(text)
        assert text[item.start : item.end] == item.original
        assert privacy.text[item.new_start : item.new_end] == item.replacement
        assert privacy.original_span(item.new_start, item.new_end) == (item.start, item.end)
        previous_end = item.end


def chooses_whole_words(strategy) -> bool:
    """True when every step that chooses tokens is documented to choose whole words.

    Whole-word and span masking, rule-based targets ("rules apply to whole words") and manual
    clicks with ``whole_word``; random, adaptive and plain manual masking choose single tokens.
    """
    choosers = [
        s for s in strategy_steps(strategy) if isinstance(s, MaskingStep) and s.corruption is not None
    ]
    return bool(choosers) and all(
        isinstance(s, WholeWordMasking | SpanMasking | RuleBased)
        or (isinstance(s, ManualMasking) and s.whole_word)
        for s in choosers
    )


def assert_mask_result_invariants(
    tokens, result, vocab, *, protected=(), whole_words: bool = False, strategy=None
) -> None:
    """Everything ``mlm_core.masking`` promises about ``result = apply_strategy(tokens, ...)``.

    ``protected``: the positions passed to ``apply_strategy``. ``whole_words``: all pieces of a
    word share one decision (typed masks and protected pieces aside). ``strategy``, when given,
    adds what its settings promise: random draws outside the special ids when
    ``random_excludes_special``, no draw at a probability of 0 or 1, and α's exact denominator
    when no step protects.
    """
    n = len(tokens)
    protected = set(protected)
    for name in ("input_ids", "labels", "original_ids", "attention_exclude"):
        array = getattr(result, name)
        assert array.shape == (n,), (name, array.shape)
        assert not array.flags.writeable, name  # MaskResult's arrays are read-only
        assert array.dtype == (bool if name == "attention_exclude" else np.int64), (name, array.dtype)
    assert len(result.kinds) == n
    assert result.original_ids.tolist() == list(tokens.ids)

    typed = {i for i in tokens.mask_positions if not tokens.special[i]}  # stay masks, label -100
    for i in range(n):
        kind, original, now, label = (
            result.kinds[i],
            tokens.ids[i],
            int(result.input_ids[i]),
            int(result.labels[i]),
        )
        assert kind in KIND_BY_CODE, (i, kind)
        assert bool(result.attention_exclude[i]) == (kind == EXCLUDED), i
        if tokens.special[i]:
            assert (kind, label, now) == (None, IGNORE_INDEX, original), i  # never chosen nor replaced
        elif i in typed:
            assert (kind, label, now) == (MASKED, IGNORE_INDEX, vocab.mask_token_id), i
        elif i in protected:
            assert (kind, label, now) == (None, IGNORE_INDEX, original), i  # never chosen nor excluded
        elif kind == MASKED:
            assert (label, now) == (original, vocab.mask_token_id), i
        elif kind == RANDOM:
            assert label == original and 0 <= now < vocab.vocab_size, (i, now)
        elif kind == KEPT:
            assert (label, now) == (original, original), i
        else:  # untouched or excluded: keeps its id, not predicted
            assert (label, now) == (IGNORE_INDEX, original), (i, kind)

    chosen = result.chosen_positions
    assert chosen == [i for i, kind in enumerate(result.kinds) if kind in CHOSEN_KINDS]
    mask_ids = {i for i in range(n) if int(result.input_ids[i]) == vocab.mask_token_id}
    # A mask id in the output is a masked position, or a random draw that happened to hit it.
    assert set(result.masked_positions) <= mask_ids <= set(result.masked_positions) | set(result.random_positions)

    # α = chosen positions (typed masks included) / eligible positions (after protection); excluded
    # positions are eligible ones left unchosen, typed masks count as eligible.
    non_special = n - sum(tokens.special)
    most_eligible = non_special - len({i for i in protected if not tokens.special[i]} - typed)
    assert len(chosen) + len(result.excluded_positions) <= result.n_eligible <= most_eligible
    expected = len(chosen) / result.n_eligible if result.n_eligible else 0.0
    assert math.isclose(result.ratio, expected, rel_tol=1e-12, abs_tol=0.0), (result.ratio, expected)

    if whole_words:
        decided: dict[int, set[bool]] = {}
        for i, word in enumerate(tokens.word_ids):
            if word is not None and i not in typed and i not in protected:
                decided.setdefault(word, set()).add(result.kinds[i] in CHOSEN_KINDS)
        split = [word for word, states in decided.items() if len(states) > 1]
        assert not split, f"words chosen only in part: {split}"

    if strategy is not None:
        _assert_strategy_settings_kept(tokens, result, vocab, strategy, typed, most_eligible)


def _assert_strategy_settings_kept(tokens, result, vocab, strategy, typed, most_eligible) -> None:
    steps = [s for s in strategy_steps(strategy) if isinstance(s, MaskingStep)]
    if not any(getattr(s, "mode", "") == "protect" for s in steps):
        assert result.n_eligible == most_eligible, (result.n_eligible, most_eligible)
    # Corruption runs once, with the settings of the first step that chooses tokens.
    corruption = next((s.corruption for s in steps if s.corruption is not None), None) or Corruption()
    drawn = [i for i in result.chosen_positions if i not in typed]
    kinds = {result.kinds[i] for i in drawn}
    if corruption.random_excludes_special:
        assert not {int(result.input_ids[i]) for i in result.random_positions} & set(vocab.special_ids)
    if corruption.mask_replace_prob == 1:
        assert kinds <= {MASKED}, kinds
    if corruption.mask_replace_prob == 0:
        assert MASKED not in kinds, kinds
    if corruption.random_replace_prob == 0:
        assert RANDOM not in kinds, kinds


def masked_and_checked(
    tokens, strategy, vocab, *, rng: int, scores=None, protected=(), whole_words: bool | None = None
):
    """``apply_strategy`` checked: inputs left as they were, every invariant kept, one seed one mask.

    ``whole_words`` defaults to what the strategy promises (``chooses_whole_words``). Exceptions
    from ``apply_strategy`` (``MaskLabError``) reach the caller.
    """
    assert isinstance(rng, int), "a seed, so that the second run draws the same"
    protected = list(protected)
    # Tokens is immutable; the protected positions and the scores are the caller's to keep.
    before = (list(protected), None if scores is None else np.array(scores, dtype=float))

    def run():
        return apply_strategy(tokens, strategy, vocab, rng=rng, scores=scores, protected=protected)

    result = run()
    assert protected == before[0], "apply_strategy changed the protected positions"
    if scores is not None:
        assert np.array_equal(np.asarray(scores, dtype=float), before[1], equal_nan=True), "scores changed"
    if whole_words is None:
        whole_words = chooses_whole_words(strategy)
    assert_mask_result_invariants(
        tokens, result, vocab, protected=protected, whole_words=whole_words, strategy=strategy
    )
    again = run()
    assert again.kinds == result.kinds and again.n_eligible == result.n_eligible
    for name in ("input_ids", "labels", "attention_exclude"):
        assert np.array_equal(getattr(again, name), getattr(result, name)), name
    return result
