"""Property tests: every strategy on arbitrary Unicode text (and arbitrary id blocks) stays consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.masking import (
    assert_mask_result_invariants,
    assert_privacy_invariants,
    assert_tokens_invariants,
    masked_and_checked,
)

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.masking import (
    IGNORE_INDEX,
    AdaptiveMasking,
    AttentionExclusion,
    Compose,
    ManualMasking,
    RandomMasking,
    RuleBased,
    SpanMasking,
    TokenBatch,
    Vocab,
    WholeWordMasking,
    apply_strategy,
    is_adaptive,
    mask_batch,
    mask_each,
    mask_text,
    params_of,
    prepare_text,
    selection_frequency,
    strategy_from_params,
)
from mlm_core.masking import STRATEGIES as REGISTRY
from mlm_core.text.privacy import PrivacyMasking
from mlm_core.text.tokens import tokenize

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
PIECES = [
    "the",
    "unbelievable",
    "Paris",
    "[MASK]",
    "[CLS]",
    "</s>",
    "<pad>",
    "bob@example.org",
    "+44 20 7946 0958",
    "https://x.org/a",
    "3.14",
    "«",
    "…",
    "👩‍👩‍👧",
    "é",
    "e\u0301",
    "שלום",
    "東京",
    "\u200b",
    "\x00",
    "\ud800",  # a lone surrogate
    "<img src=x onerror=alert(1)>",
    " ",
    "\n",
]
TEXT = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(PIECES), max_size=12).map(" ".join),
    st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
)
STRATEGIES = [
    RandomMasking(0.3),
    RandomMasking(0.3, exact=True, random_excludes_special=True),
    WholeWordMasking(0.4),
    WholeWordMasking(0.4, exact=True),
    SpanMasking(0.3, geometric_p=0.3, max_span_length=4),
    RuleBased(rule="stopwords"),
    RuleBased(rule="punctuation", mode="protect"),
    RuleBased(rule="regex", pattern=r"\w+", rate=0.5),
    RuleBased(rule="words", words=("the", "paris", "東京")),
    AttentionExclusion(rule="numbers"),
    Compose(
        (
            RuleBased(rule="stopwords", mode="protect"),
            RandomMasking(0.5),
            AttentionExclusion(rule="punctuation"),
        )
    ),
]


@pytest.fixture(scope="module")
def vocab(default_tokenizer):
    return Vocab.from_tokenizer(default_tokenizer)


def tokenize_or_skip(tokenizer, text):
    try:
        return tokenize(tokenizer, text)
    except (NothingToMaskError, InputError):
        return None


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.describe())
@PROPERTY_SETTINGS
@given(text=TEXT, seed=st.integers(0, 2**32))
def test_every_strategy_is_consistent_on_any_text(default_tokenizer, vocab, strategy, text, seed):
    tokens = tokenize_or_skip(default_tokenizer, text)
    if tokens is None:
        return
    assert_tokens_invariants(tokens, vocab, default_tokenizer)
    try:
        masked_and_checked(tokens, strategy, vocab, rng=seed)  # whole words where the strategy promises them
    except NothingToMaskError:
        return  # only when a protect rule left nothing; the message names it


@PROPERTY_SETTINGS
@given(text=TEXT, seed=st.integers(0, 2**32), data=st.data())
def test_manual_adaptive_and_frequency_on_any_text(default_tokenizer, vocab, text, seed, data):
    tokens = tokenize_or_skip(default_tokenizer, text)
    if tokens is None:
        return
    eligible = tokens.eligible_positions
    clicks = data.draw(st.lists(st.sampled_from(eligible), min_size=1, max_size=5))
    manual_strategy = ManualMasking(tuple(clicks), whole_word=data.draw(st.booleans()))
    manual = masked_and_checked(tokens, manual_strategy, vocab, rng=0)
    assert set(clicks) <= set(manual.chosen_positions)

    scores = data.draw(st.lists(st.floats(0, 1e6), min_size=len(tokens), max_size=len(tokens)))
    masked_and_checked(tokens, AdaptiveMasking(0.4, uniform_mix=0.1), vocab, rng=seed, scores=scores)

    frequency = selection_frequency(tokens, WholeWordMasking(0.3), vocab, draws=20, rng=seed)
    assert frequency.shape == (len(tokens),) and np.all((frequency >= 0) & (frequency <= 1))
    assert all(frequency[i] == 0 for i, special in enumerate(tokens.special) if special)


@PROPERTY_SETTINGS
@given(text=TEXT, seed=st.integers(0, 2**32), replacement=st.sampled_from(["placeholder", "mask"]))
def test_privacy_pipeline_on_any_text(default_tokenizer, vocab, text, seed, replacement):
    strategy = Compose(
        (
            PrivacyMasking(replacement=replacement),
            RuleBased(rule="stopwords", mode="protect"),
            RandomMasking(0.5),
        )
    )
    try:
        out = mask_text(default_tokenizer, text, strategy, rng=seed)
    except (NothingToMaskError, InputError):
        return
    assert_privacy_invariants(text, out.privacy)
    assert_tokens_invariants(out.tokens, vocab, default_tokenizer, text=out.privacy.text)
    # Protected placeholders: never chosen nor excluded (a mask placeholder stays a typed mask).
    protected = out.privacy.protected_positions(out.tokens)
    assert_mask_result_invariants(out.tokens, out.result, vocab, protected=protected, strategy=strategy)


@PROPERTY_SETTINGS
@given(
    batch_size=st.integers(1, 4),
    length=st.integers(1, 40),
    seed=st.integers(0, 2**32),
    p=st.floats(0, 1),
    data=st.data(),
)
def test_batch_path_invariants_on_arbitrary_blocks(vocab, batch_size, length, seed, p, data):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab.vocab_size, (batch_size, length), generator=g)
    pieces = torch.randint(1, 4, (batch_size, length), generator=g)
    word_ids = torch.stack([torch.repeat_interleave(torch.arange(length), row)[:length] for row in pieces])
    attention = torch.rand(batch_size, length, generator=g) > 0.2
    scores = torch.rand(batch_size, length, generator=g)
    batch = TokenBatch.from_ids(ids, vocab, attention_mask=attention, word_ids=word_ids, scores=scores)
    strategy = data.draw(
        st.sampled_from(
            [
                RandomMasking(p),
                RandomMasking(p, exact=True),
                WholeWordMasking(p),
                WholeWordMasking(p, exact=True),
                SpanMasking(p),
                AdaptiveMasking(p),
            ]
        )
    )
    result = mask_batch(batch, strategy, vocab, rng=seed)
    typed = ~batch.special & (ids == vocab.mask_token_id)
    chosen = result.labels != IGNORE_INDEX
    assert not bool((chosen & batch.special).any())
    assert torch.equal(result.labels[chosen], ids[chosen])
    assert bool((result.kind_codes[typed] == 1).all())
    assert torch.equal(result.input_ids[result.kind_codes == 0], ids[result.kind_codes == 0])
    assert torch.equal(result.n_chosen, (chosen | typed).sum(1))
    assert bool((result.n_chosen <= result.n_eligible).all())
    if isinstance(strategy, RandomMasking | WholeWordMasking | SpanMasking) and getattr(
        strategy, "exact", True
    ):
        n = (~batch.special & ~typed).sum(1)
        assert bool(
            (
                chosen.sum(1) >= torch.where(n > 0, (n.double() * p + 0.5).floor().clamp_min(1), 0) * (p > 0)
            ).all()
        )


# ----------------------------------------------------------------------------- the whole registry
# The strategies above are hand-picked; these draw every registered strategy with parameters drawn from
# its ParamSpecs, so a strategy added to the registry is covered without touching this file.

PATTERNS = (r"\w+", "[a-z]+", "the|paris", r"\d+", ".", r"(?i)[^aeiou]+")
WORDS = ("the", "paris", "東京", "[MASK]", "cat", "...")
KNOWN_KINDS = {"float", "int", "bool", "choice", "multi_choice", "text", "int_list", "text_list"}


def test_the_registry_only_has_parameter_kinds_these_properties_can_draw():
    # A new kind would be drawn as nothing below: fail here instead of covering it silently less.
    assert {spec.kind for s in REGISTRY.values() for spec in s.params} <= KNOWN_KINDS


def draw_value(data, spec, positions: list[int]):
    """A valid value for one parameter (``positions``: the eligible token positions of the text)."""
    if spec.kind == "float":
        low = 0.0 if spec.min is None else spec.min
        return data.draw(st.floats(low, low + 10 if spec.max is None else spec.max))
    if spec.kind == "int":
        low = 0 if spec.min is None else int(spec.min)
        return data.draw(st.integers(low, low + 20 if spec.max is None else int(spec.max)))
    if spec.kind == "bool":
        return data.draw(st.booleans())
    if spec.kind == "choice":
        return data.draw(st.sampled_from(spec.choices))
    if spec.kind == "multi_choice":
        return data.draw(st.lists(st.sampled_from(spec.choices), min_size=1, max_size=3, unique=True))
    if spec.kind == "int_list":
        return data.draw(st.lists(st.sampled_from(positions), min_size=1, max_size=4))
    if spec.kind == "text_list":
        return data.draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3))
    if spec.name == "pattern":
        return data.draw(st.sampled_from(PATTERNS))
    if spec.name == "region":
        return data.draw(st.sampled_from(["US", "GB", "", "de"]))
    return data.draw(st.text(max_size=8))


def draw_params(data, name: str, positions: list[int]) -> dict:
    """Valid parameters of ``name`` (each given or left at its default), as a link or the CLI passes them."""
    if name == "compose":
        names = sorted(set(REGISTRY) - {"compose"})
        steps = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
        steps = [s for i, s in enumerate(steps) if s != "privacy" or "privacy" not in steps[:i]]  # one only
        return {"steps": [{"name": s, "params": draw_params(data, s, positions)} for s in steps]}
    params = {}
    for spec in REGISTRY[name].params:
        if spec.kind == "int_list" or data.draw(st.booleans()):  # positions are required where they exist
            params[spec.name] = draw_value(data, spec, positions)
    defaults = {spec.name: spec.default for spec in REGISTRY[name].params}
    if "random_replace_prob" in defaults:  # the two shares may not exceed 1: the rest is kept unchanged
        mask = params.get("mask_replace_prob", defaults["mask_replace_prob"])
        random = params.get("random_replace_prob", defaults["random_replace_prob"])
        params["random_replace_prob"] = min(random, 1 - mask)
    if name == "rule-based":  # the words and regex rules need their word list and pattern
        params.setdefault("words", [data.draw(st.sampled_from(WORDS))])
        params.setdefault("pattern", data.draw(st.sampled_from(PATTERNS)))
    return params


@pytest.mark.parametrize("name", sorted(REGISTRY))
@PROPERTY_SETTINGS
@given(text=TEXT, seed=st.integers(0, 2**32), data=st.data())
def test_every_registered_strategy_keeps_the_invariants(default_tokenizer, vocab, name, text, seed, data):
    """privacy → tokenize → mask as the explorer runs it, for every registry entry, drawn parameters."""
    plain = tokenize_or_skip(default_tokenizer, text)
    if plain is None or not plain.eligible_positions:
        return
    params = draw_params(data, name, plain.eligible_positions)
    strategy = strategy_from_params(name, params)
    assert strategy_from_params(name, params_of(strategy, as_strings=True)) == strategy  # a link rebuilds it
    privacy = prepare_text(text, strategy, mask_token=vocab.mask_token)
    tokens = plain if privacy is None else tokenize_or_skip(default_tokenizer, privacy.text)
    if tokens is None:
        return
    protected = privacy.protected_positions(tokens) if privacy else []
    scores = data.draw(st.lists(st.floats(0, 1e6), min_size=len(tokens), max_size=len(tokens))) \
        if is_adaptive(strategy) else None
    if privacy is not None:
        assert_privacy_invariants(text, privacy)
    assert_tokens_invariants(tokens, vocab, default_tokenizer)
    try:
        masked_and_checked(tokens, strategy, vocab, rng=seed, scores=scores, protected=protected)
    except NothingToMaskError:
        return  # only when protection left nothing; the message names it
    except InputError as exc:
        # Positions were drawn on the text before privacy replaced parts of it: they may now fall outside.
        assert privacy is not None and "position" in str(exc)
        return


def same_result(ours, alone) -> bool:
    return all(np.array_equal(getattr(ours, name), getattr(alone, name))
               for name in ("input_ids", "labels", "attention_exclude", "original_ids")) and \
        (ours.kinds, ours.n_eligible, ours.ratio) == (alone.kinds, alone.n_eligible, alone.ratio)


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - {"privacy"}))
@PROPERTY_SETTINGS
@given(texts=st.lists(TEXT, min_size=1, max_size=6), seeds=st.lists(st.integers(0, 2**32), min_size=6, max_size=6),
       data=st.data())
def test_masking_texts_together_gives_each_its_own_draw(default_tokenizer, vocab, name, texts, seeds, data):
    """``mask_each`` (one call, a generator per row) gives every text what ``apply_strategy`` gives it alone."""
    records = [t for t in (tokenize_or_skip(default_tokenizer, text) for text in texts) if t is not None]
    if not records:
        return
    shortest = min(records, key=len)
    positions = shortest.eligible_positions or [1]  # positions, where a strategy has them, fit every text
    strategy = strategy_from_params(name, draw_params(data, name, positions))
    scores = [data.draw(st.lists(st.floats(0, 1e6), min_size=len(r), max_size=len(r))) for r in records] \
        if is_adaptive(strategy) else None
    seeds = seeds[: len(records)]
    try:
        alone = [apply_strategy(r, strategy, vocab, rng=seed, scores=None if scores is None else scores[i],
                                require_eligible=False) for i, (r, seed) in enumerate(zip(records, seeds))]
    except InputError:
        with pytest.raises(InputError):
            mask_each(records, strategy, vocab, seeds, scores=scores)
        return
    together = mask_each(records, strategy, vocab, seeds, scores=scores)
    assert len(together) == len(alone)
    assert all(same_result(ours, mine) for ours, mine in zip(together, alone))


def test_masking_texts_together_covers_the_batch_analysis_strategies(default_tokenizer, vocab):
    records = [tokenize(default_tokenizer, s) for s in ("The cat sat on the mat.", "Paris is big.",
                                                        "An unbelievable, extraordinarily long sentence, 3.14!")]
    for strategy in STRATEGIES + [AdaptiveMasking(0.4)]:
        scores = [np.linspace(0, 3, len(r)) for r in records] if is_adaptive(strategy) else None
        together = mask_each(records, strategy, vocab, [5, 6, 7], scores=scores)
        for i, record in enumerate(records):
            alone = apply_strategy(record, strategy, vocab, rng=[5, 6, 7][i], require_eligible=False,
                                   scores=None if scores is None else scores[i])
            assert same_result(together[i], alone), strategy.describe()
