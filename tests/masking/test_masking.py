"""The masking engine: statistics against their targets, the transformers collator as reference, invariants."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from mlm_core.errors import InputError, ModelLoadError, NothingToMaskError
from mlm_core.masking import (
    CATEGORY_CODES,
    IGNORE_INDEX,
    KIND_BY_CODE,
    MASKED,
    STRATEGIES,
    AdaptiveMasking,
    AttentionExclusion,
    Compose,
    DrawPolicy,
    ManualMasking,
    RandomMasking,
    RateSchedule,
    RuleBased,
    SpanMasking,
    TokenBatch,
    Vocab,
    WholeWordMasking,
    apply_strategy,
    mask_batch,
    mask_examples,
    mask_many,
    mask_text,
    params_of,
    selection_frequency,
    strategy_from_params,
    with_rate,
)
from mlm_core.settings import ParamSpec, param_specs
from mlm_core.text.privacy import PrivacyMasking
from mlm_core.text.tokens import PUNCTUATION, STOPWORD, tokenize

SENTENCES = [
    "The unbelievable tokenization of antidisestablishmentarianism surprised everyone.",
    "Paris is the capital of France, and it was a big, beautiful city!",
    "She quickly reorganized the hyperparameters; nevertheless, the results were disappointing.",
    "« Bonjour » — said the extraordinarily well-mannered gentleman… twice?",
    "Electroencephalography and photosynthesis are interdisciplinary subjects.",
]


def four_sigma(p: float, n: int) -> float:
    return 4 * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def vocab(default_tokenizer):
    return Vocab.from_tokenizer(default_tokenizer)


@pytest.fixture(scope="module")
def records(default_tokenizer):
    return [tokenize(default_tokenizer, s) for s in SENTENCES]


@pytest.fixture(scope="module")
def sentence_batch(records):
    """The sentences repeated to 200 rows (padded): real words, pieces, categories and texts."""
    return TokenBatch.from_tokens(records * 40)


@pytest.fixture(scope="module")
def block_batch(vocab):
    """Trainer-like packed blocks: (64, 256) random ids, [CLS]/[SEP] frames, padding, 1-3 piece words."""
    g = torch.Generator().manual_seed(1234)
    B, T = 64, 256
    ids = torch.randint(1000, vocab.vocab_size, (B, T), generator=g)
    ids[:, 0] = 101
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    word_ids = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        n = int(lengths[b])
        ids[b, n - 1] = 102
        ids[b, n:] = vocab.pad_token_id
        pieces = torch.randint(1, 4, (T,), generator=g)
        word_ids[b] = torch.repeat_interleave(torch.arange(T), pieces)[:T]
    return TokenBatch.from_ids(ids, vocab, word_ids=word_ids)


def split_counts(result) -> dict[str, int]:
    codes = result.kind_codes
    return {kind: int((codes == code).sum()) for code, kind in enumerate(KIND_BY_CODE) if kind}


# ----------------------------------------------------------------------------- random: statistics


def test_random_rate_and_80_10_10_split_within_4_sigma(block_batch, vocab):
    strategy = RandomMasking(0.15)
    chosen = eligible = 0
    counts = dict.fromkeys(("masked", "random", "kept"), 0)
    for seed in range(8):
        result = mask_batch(block_batch, strategy, vocab, rng=seed)
        chosen += int(result.n_chosen.sum())
        eligible += int(result.n_eligible.sum())
        for kind, n in split_counts(result).items():
            counts[kind] = counts.get(kind, 0) + n
    rate = chosen / eligible
    shares = {kind: counts[kind] / chosen for kind in ("masked", "random", "kept")}
    print(
        f"\nrandom p=0.15 over {eligible} eligible tokens: chosen {rate:.4f} (4σ {four_sigma(0.15, eligible):.4f}); "
        f"split masked {shares['masked']:.4f} random {shares['random']:.4f} kept {shares['kept']:.4f} "
        f"of {chosen} chosen"
    )
    assert abs(rate - 0.15) < four_sigma(0.15, eligible)
    for kind, target in (("masked", 0.8), ("random", 0.1), ("kept", 0.1)):
        assert abs(shares[kind] - target) < four_sigma(target, chosen), kind


def test_special_and_padding_are_never_touched(block_batch, vocab):
    for strategy in (
        RandomMasking(1.0),
        WholeWordMasking(1.0),
        SpanMasking(1.0),
        RandomMasking(0.5, exact=True),
    ):
        result = mask_batch(block_batch, strategy, vocab, rng=3)
        special = block_batch.special
        assert bool((result.labels[special] == IGNORE_INDEX).all())
        assert bool((result.kind_codes[special] == 0).all())
        assert torch.equal(result.input_ids[special], block_batch.ids[special])
        if strategy.mlm_probability == 1.0:  # every other position is chosen
            assert bool((result.labels[~special] != IGNORE_INDEX).all()), strategy.name


@pytest.mark.parametrize(
    "strategy",
    [
        RandomMasking(0.3),
        RandomMasking(0.3, exact=True),
        WholeWordMasking(0.3),
        WholeWordMasking(0.3, exact=True),
        SpanMasking(0.3),
        RuleBased(rule="stopwords", rate=0.7),
        Compose((RuleBased(rule="punctuation", mode="protect"), RandomMasking(0.4))),
        ManualMasking((1, 2, 3)),
    ],
    ids=lambda s: s.describe(),
)
def test_labels_are_the_originals_and_untouched_positions_keep_their_ids(sentence_batch, vocab, strategy):
    before = sentence_batch.ids.clone()
    result = mask_batch(sentence_batch, strategy, vocab, rng=11)
    assert torch.equal(sentence_batch.ids, before), "the input must not be modified"
    chosen = result.labels != IGNORE_INDEX
    assert torch.equal(result.labels[chosen], before[chosen])
    untouched = (result.kind_codes == 0) | (result.kind_codes == 3)  # none or kept
    assert torch.equal(result.input_ids[untouched], before[untouched])
    assert bool((result.input_ids[result.kind_codes == 1] == vocab.mask_token_id).all())
    assert bool(chosen.any())


def test_exact_count_is_round_p_n_and_never_zero(vocab):
    ids = torch.randint(1000, 2000, (40, 60), generator=torch.Generator().manual_seed(0))
    special = torch.zeros_like(ids, dtype=torch.bool)
    n_eligible = torch.arange(1, 41)
    for b, n in enumerate(n_eligible.tolist()):
        special[b, n:] = True
    batch = TokenBatch.from_ids(ids, vocab, special_tokens_mask=special)
    for p in (0.01, 0.15, 0.5, 0.999, 1.0):
        for seed in range(3):
            result = mask_batch(batch, RandomMasking(p, exact=True), vocab, rng=seed)
            expected = [max(1, math.floor(p * n + 0.5)) for n in n_eligible.tolist()]
            assert result.n_chosen.tolist() == expected, p


def test_zero_probability_chooses_nothing(block_batch, vocab):
    for strategy in (
        RandomMasking(0.0),
        RandomMasking(0.0, exact=True),
        WholeWordMasking(0.0),
        SpanMasking(0.0),
    ):
        assert int(mask_batch(block_batch, strategy, vocab).n_chosen.sum()) == 0


def test_same_seed_same_mask_other_seed_other_mask(block_batch, vocab):
    for strategy in (RandomMasking(), WholeWordMasking(), SpanMasking(), RandomMasking(exact=True)):
        a = mask_batch(block_batch, strategy, vocab, rng=5)
        b = mask_batch(block_batch, strategy, vocab, rng=torch.Generator().manual_seed(5))
        c = mask_batch(block_batch, strategy, vocab, rng=6)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert not torch.equal(a.labels, c.labels)


def test_random_excludes_special_never_draws_special_ids(block_batch, vocab):
    strategy = RandomMasking(
        0.5, mask_replace_prob=0.0, random_replace_prob=1.0, random_excludes_special=True
    )
    result = mask_batch(block_batch, strategy, vocab, rng=0)
    drawn = result.input_ids[result.kind_codes == 2]
    assert drawn.numel() > 1000
    assert not bool(torch.isin(drawn, torch.tensor(vocab.special_ids)).any())


# ----------------------------------------------------------------------------- reference: transformers


def test_random_matches_transformers_collator_draw_for_draw(default_tokenizer, vocab, block_batch):
    from transformers import DataCollatorForLanguageModeling

    ids = block_batch.ids
    special = block_batch.special
    for p, mask_p, random_p in ((0.15, 0.8, 0.1), (0.4, 0.5, 0.3), (0.2, 1.0, 0.0)):
        collator = DataCollatorForLanguageModeling(
            default_tokenizer,
            mlm_probability=p,
            mask_replace_prob=mask_p,
            random_replace_prob=random_p,
            return_tensors="pt",
        )
        collator.generator = torch.Generator().manual_seed(42)
        hf_ids, hf_labels = collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special.long())
        strategy = RandomMasking(p, mask_replace_prob=mask_p, random_replace_prob=random_p)
        ours = mask_batch(block_batch, strategy, vocab, rng=torch.Generator().manual_seed(42))
        assert torch.equal(ours.input_ids, hf_ids)
        assert torch.equal(ours.labels, hf_labels)


def test_random_matches_transformers_collator_distribution(default_tokenizer, vocab, records):
    """Statistically, through the collator's public __call__ (padding, special_tokens_mask, seed)."""
    from transformers import DataCollatorForLanguageModeling

    examples = [
        {"input_ids": list(r.ids), "special_tokens_mask": [int(s) for s in r.special]} for r in records * 60
    ]

    def stats(labels, inputs, originals):
        chosen = labels != IGNORE_INDEX
        n = int(chosen.sum())
        masked = int((inputs[chosen] == vocab.mask_token_id).sum())
        return n, masked / n

    hf_n = ours_n = 0
    hf_masked = ours_masked = 0.0
    eligible = 0
    for seed in range(4):
        collator = DataCollatorForLanguageModeling(default_tokenizer, mlm_probability=0.25, seed=100 + seed)
        batch = collator(examples)
        n, share = stats(batch["labels"], batch["input_ids"], None)
        hf_n, hf_masked = hf_n + n, hf_masked + share * n
        ours = mask_batch(TokenBatch.from_tokens(records * 60), RandomMasking(0.25), vocab, rng=900 + seed)
        n, share = stats(ours.labels, ours.input_ids, None)
        ours_n, ours_masked = ours_n + n, ours_masked + share * n
        eligible += int(ours.n_eligible.sum())
    hf_rate, ours_rate = hf_n / eligible, ours_n / eligible
    two_sample = 4 * math.sqrt(2 * 0.25 * 0.75 / eligible)
    print(f"\nchosen rate: transformers {hf_rate:.4f}, MaskLab {ours_rate:.4f} over {eligible} tokens each")
    assert abs(hf_rate - ours_rate) < two_sample
    # [MASK] share (the random share can hit the mask id too, so compare the observed shares)
    assert (
        abs(hf_masked / hf_n - ours_masked / ours_n)
        < 4 * math.sqrt(2 * 0.8 * 0.2 / min(hf_n, ours_n)) + 0.002
    )


# ----------------------------------------------------------------------------- whole-word, span


def word_runs(batch: TokenBatch, b: int) -> list[list[int]]:
    runs = batch.run_ids[b].tolist()
    out: dict[int, list[int]] = {}
    for t, r in enumerate(runs):
        if not bool(batch.special[b, t]):
            out.setdefault(r, []).append(t)
    return list(out.values())


@pytest.mark.parametrize("exact", [False, True])
def test_whole_word_never_splits_a_word(sentence_batch, block_batch, vocab, exact):
    for batch in (sentence_batch, block_batch):
        result = mask_batch(batch, WholeWordMasking(0.3, exact=exact), vocab, rng=2)
        chosen = result.labels != IGNORE_INDEX
        for b in range(batch.shape[0]):
            for run in word_runs(batch, b):
                states = {bool(chosen[b, t]) for t in run}
                assert len(states) == 1, (b, run)


def test_whole_word_rate_is_p_over_words(block_batch, vocab):
    chosen_words = total_words = 0
    for seed in range(4):
        result = mask_batch(block_batch, WholeWordMasking(0.2), vocab, rng=seed)
        chosen = result.labels != IGNORE_INDEX
        for b in range(block_batch.shape[0]):
            runs = word_runs(block_batch, b)
            total_words += len(runs)
            chosen_words += sum(bool(chosen[b, run[0]]) for run in runs)
    assert abs(chosen_words / total_words - 0.2) < four_sigma(0.2, total_words)


@pytest.mark.parametrize(
    "strategy", [WholeWordMasking(0.25, exact=True), SpanMasking(0.25)], ids=lambda s: s.describe()
)
def test_word_budgets_are_reached_and_overshoot_by_less_than_a_word(block_batch, vocab, strategy):
    result = mask_batch(block_batch, strategy, vocab, rng=4)
    chosen = result.labels != IGNORE_INDEX
    for b in range(block_batch.shape[0]):
        n = int((~block_batch.special[b]).sum())
        budget = max(1, math.floor(0.25 * n + 0.5))
        longest = max(len(run) for run in word_runs(block_batch, b))
        assert budget <= int(chosen[b].sum()) < budget + longest
        for run in word_runs(block_batch, b):
            assert len({bool(chosen[b, t]) for t in run}) == 1


def test_span_lengths_follow_the_truncated_geometric_law(block_batch, vocab):
    lengths, probs = SpanMasking().length_distribution
    assert probs.sum() == pytest.approx(1.0)
    assert float((lengths * probs).sum()) == pytest.approx(3.8, abs=0.05)  # SpanBERT's reported mean
    # Long spans make chosen words cluster: neighbours of a chosen word are chosen far above p.
    result = mask_batch(block_batch, SpanMasking(0.15), vocab, rng=0)
    chosen = (result.labels != IGNORE_INDEX).numpy()
    pairs = together = 0
    for b in range(block_batch.shape[0]):
        starts = [run[0] for run in word_runs(block_batch, b)]
        flags = [bool(chosen[b, s]) for s in starts]
        pairs += sum(flags[:-1])
        together += sum(a and c for a, c in zip(flags[:-1], flags[1:], strict=True))
    assert together / pairs > 0.5


# ----------------------------------------------------------------------------- static / dynamic


def test_static_masks_repeat_across_epochs_and_dynamic_overlap_is_p(block_batch, vocab):
    keys = list(range(block_batch.shape[0]))
    strategy = RandomMasking(0.15)
    static = DrawPolicy("static", seed=3)
    assert torch.equal(
        mask_examples(block_batch, strategy, vocab, keys, 0, static).input_ids,
        mask_examples(block_batch, strategy, vocab, keys, 7, static).input_ids,
    )
    dynamic = DrawPolicy("dynamic", seed=3)
    first = mask_examples(block_batch, strategy, vocab, keys, 0, dynamic).labels != IGNORE_INDEX
    second = mask_examples(block_batch, strategy, vocab, keys, 1, dynamic).labels != IGNORE_INDEX
    n_first = int(first.sum())
    overlap = int((first & second).sum()) / n_first
    print(f"\ndynamic masking: {overlap:.4f} of epoch-0 choices chosen again in epoch 1 (p = 0.15)")
    assert abs(overlap - 0.15) < four_sigma(0.15, n_first)


def test_example_draws_do_not_depend_on_the_batch(block_batch, vocab):
    policy = DrawPolicy("dynamic", seed=9)
    together = mask_examples(block_batch, SpanMasking(), vocab, keys=list(range(64)), epoch=2, policy=policy)
    alone = mask_batch(block_batch.select_rows([5]), SpanMasking(), vocab, rng=policy.generator_for(5, 2))
    assert torch.equal(together.input_ids[5], alone.input_ids[0])
    assert DrawPolicy("static").seed_for("a", 0) != DrawPolicy("static").seed_for("b", 0)
    assert DrawPolicy("static").seed_for(1, 0) != DrawPolicy("static", seed=1).seed_for(1, 0)
    assert (
        DrawPolicy().seed_for(np.int64(3), 1)
        == DrawPolicy().seed_for(torch.tensor(3), 1)
        == DrawPolicy().seed_for(3, 1)
    )


def test_mask_many_gives_each_record_its_static_draw(records, vocab):
    many = mask_many(records, RandomMasking(0.3), vocab, seed=4)
    policy = DrawPolicy("static", seed=4)
    for i, record in enumerate(records):
        alone = apply_strategy(record, RandomMasking(0.3), vocab, rng=policy.seed_for(i))
        assert np.array_equal(many[i].input_ids, alone.input_ids)


# ----------------------------------------------------------------------------- rule-based, manual, exclusion


def test_protect_stopwords_and_target_punctuation(sentence_batch, records, vocab):
    protect = Compose((RuleBased(rule="stopwords", mode="protect"), RandomMasking(1.0)))
    result = mask_batch(sentence_batch, protect, vocab, rng=0)
    codes = sentence_batch.categories
    chosen = result.labels != IGNORE_INDEX
    assert not bool(chosen[codes == CATEGORY_CODES[STOPWORD]].any())
    assert bool(chosen[(codes != CATEGORY_CODES[STOPWORD]) & ~sentence_batch.special].all())

    target = apply_strategy(records[3], RuleBased(rule="punctuation"), vocab)
    punctuation = [i for i, c in enumerate(records[3].categories) if c == PUNCTUATION]
    assert {"«", "»", "—", "…", "?"} <= {records[3].tokens[i] for i in punctuation}
    assert target.chosen_positions == punctuation


def test_rule_rate_applies_to_that_share_of_matching_words(sentence_batch, vocab):
    result = mask_batch(sentence_batch, RuleBased(rule="stopwords", rate=0.5), vocab, rng=1)
    stop = sentence_batch.categories == CATEGORY_CODES[STOPWORD]
    share = float((result.labels[stop] != IGNORE_INDEX).double().mean())
    assert abs(share - 0.5) < four_sigma(0.5, int(stop.sum())) * 2  # words of several pieces correlate


def test_word_list_and_regex_rules(default_tokenizer, vocab):
    tokens = tokenize(default_tokenizer, "Alice met Bob in Paris; alice waved at BOB quickly and slowly.")

    def chosen_words(strategy):
        result = apply_strategy(tokens, strategy, vocab)
        return {tokens.word_text(i) for i in result.chosen_positions}

    assert chosen_words(RuleBased(rule="words", words=("alice", "bob"))) == {"Alice", "alice", "Bob", "BOB"}
    assert chosen_words(RuleBased(rule="words", words=("Bob",), ignore_case=False)) == {"Bob"}
    assert chosen_words(RuleBased(rule="regex", pattern=r"\w+ly")) == {"quickly", "slowly"}
    assert chosen_words(RuleBased(rule="regex", pattern=r"[A-Z]\w+", ignore_case=False)) == {
        "Alice",
        "Bob",
        "Paris",
        "BOB",
    }
    assert strategy_from_params("rule-based", {"rule": "words", "words": "alice, bob"}).words == (
        "alice",
        "bob",
    )


def test_bad_regexes_get_clear_errors(default_tokenizer, vocab):
    with pytest.raises(InputError, match="not a valid regular expression"):
        RuleBased(rule="regex", pattern="(unclosed")
    with pytest.raises(InputError, match="limit is 200"):
        RuleBased(rule="regex", pattern="a" * 201)
    with pytest.raises(InputError, match="needs a pattern"):
        RuleBased(rule="regex")
    slow = RuleBased(rule="regex", pattern=r"(a|aa)+b")
    tokens = tokenize(default_tokenizer, "a" * 80)
    with pytest.raises(InputError, match="takes too long"):
        apply_strategy(tokens, slow, vocab)


def test_rules_on_raw_ids_need_categories_or_words(block_batch, vocab):
    with pytest.raises(InputError, match="category"):
        mask_batch(block_batch, RuleBased(rule="stopwords"), vocab)
    ids = [101, 1996, 4937, 999, 102]
    batch = TokenBatch.from_ids(ids, vocab, words=[["[CLS]", "the", "cat", "!", "[SEP]"]])
    result = mask_batch(
        batch, RuleBased(rule="punctuation", mask_replace_prob=1.0, random_replace_prob=0.0), vocab
    )
    assert result.input_ids.tolist() == [[101, 1996, 4937, vocab.mask_token_id, 102]]


def test_manual_positions_are_validated_and_can_extend_to_words(records, vocab):
    record = records[0]  # [CLS] the unbelievable token ##ization ...: position 3 starts a 2-piece word
    result = apply_strategy(record, ManualMasking((1, 3)), vocab)
    assert result.masked_positions == [1, 3]
    whole = apply_strategy(record, ManualMasking((3,), whole_word=True), vocab)
    word = [i for i, w in enumerate(record.word_ids) if w == record.word_ids[3]]
    assert len(word) > 1 and whole.masked_positions == word
    with pytest.raises(InputError, match="outside the text"):
        apply_strategy(record, ManualMasking((len(record),)), vocab)
    with pytest.raises(InputError, match="special tokens"):
        apply_strategy(record, ManualMasking((0, 2)), vocab)
    with pytest.raises(InputError, match="at least one token"):
        ManualMasking(())


def test_attention_exclusion_keeps_ids_and_zeroes_attention(records, vocab):
    record = records[1]
    stop = [i for i, c in enumerate(record.categories) if c == STOPWORD]
    result = apply_strategy(record, AttentionExclusion(positions=(1,), rule="stopwords"), vocab)
    assert result.excluded_positions == sorted(set(stop) | {1})
    assert np.array_equal(result.input_ids, record.ids)
    assert (result.labels == IGNORE_INDEX).all()
    assert result.attention_mask().tolist() == [
        0 if i in result.excluded_positions else 1 for i in range(len(record))
    ]
    both = apply_strategy(record, Compose((RandomMasking(0.5), AttentionExclusion(rule="stopwords"))), vocab)
    assert not set(both.chosen_positions) & set(both.excluded_positions)
    batch = mask_batch(
        TokenBatch.from_tokens([record]), AttentionExclusion(positions=(1,), rule="stopwords"), vocab
    )
    assert batch.attention_mask().tolist()[0] == result.attention_mask().tolist()


def test_typed_mask_stays_a_mask_without_a_label(default_tokenizer, vocab):
    tokens = tokenize(default_tokenizer, "Paris is the [MASK] of France.")
    position = tokens.mask_positions[0]
    result = apply_strategy(tokens, RandomMasking(1.0, mask_replace_prob=0.0, random_replace_prob=1.0), vocab)
    assert result.kinds[position] == MASKED and result.labels[position] == IGNORE_INDEX
    assert result.input_ids[position] == vocab.mask_token_id
    assert result.ratio == 1.0 and result.n_eligible == len(tokens) - 2
    rules_only = apply_strategy(tokens, RuleBased(rule="stopwords", mode="protect"), vocab)
    assert rules_only.chosen_positions == [position]


def test_nothing_to_mask_names_the_rule(default_tokenizer, vocab):
    tokens = tokenize(default_tokenizer, "the of and")
    protect = Compose((RuleBased(rule="stopwords", mode="protect"), RandomMasking()))
    with pytest.raises(NothingToMaskError, match="stopwords"):
        apply_strategy(tokens, protect, vocab)
    assert apply_strategy(tokens, protect, vocab, require_eligible=False).is_empty
    with pytest.raises(NothingToMaskError, match="punctuation"):
        apply_strategy(tokens, RuleBased(rule="punctuation"), vocab, require_chosen=True)


# ----------------------------------------------------------------------------- adaptive, schedules


def test_adaptive_keeps_the_expected_rate_and_follows_scores(vocab):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (256, 50), generator=g)
    scores = torch.rand(256, 50, generator=g) ** 3
    scores[:, 0] = 1000.0  # capped at probability 1, the excess goes to the others
    batch = TokenBatch.from_ids(ids, vocab, scores=scores)
    strategy = AdaptiveMasking(0.2)
    prob = strategy.probabilities(batch, ~batch.special)
    assert torch.allclose(prob.sum(1), torch.full((256,), 0.2 * 50, dtype=torch.float64))
    assert bool((prob[:, 0] == 1).all()) and bool((prob <= 1).all())
    result = mask_batch(batch, strategy, vocab, rng=0)
    rate = float(result.ratio.mean())
    assert abs(rate - 0.2) < four_sigma(0.2, 256 * 50)
    chosen = (result.labels != IGNORE_INDEX)[:, 1:]
    high = scores[:, 1:] > scores[:, 1:].median()
    assert chosen[high].double().mean() > 3 * chosen[~high].double().mean()
    flat = AdaptiveMasking(0.2).probabilities(
        TokenBatch.from_ids(ids, vocab, scores=torch.zeros(256, 50)), ~batch.special
    )
    assert torch.allclose(flat, torch.full_like(flat, 0.2))  # all-zero scores: plain random masking


def test_adaptive_needs_valid_scores(records, vocab):
    with pytest.raises(InputError, match="score"):
        apply_strategy(records[0], AdaptiveMasking(), vocab)
    with pytest.raises(InputError, match="non-negative"):
        apply_strategy(records[0], AdaptiveMasking(), vocab, scores=[-1.0] * len(records[0]))
    with pytest.raises(InputError, match="one value per token"):
        apply_strategy(records[0], AdaptiveMasking(), vocab, scores=[1.0])


def test_rate_schedules_and_with_rate():
    linear = RateSchedule("linear", 0.30, 0.15, 1000)
    assert linear.rate(0) == pytest.approx(0.30)
    assert linear.rate(500) == pytest.approx(0.225)
    assert linear.rate(5000) == pytest.approx(0.15)
    cosine = RateSchedule("cosine", 0.30, 0.15, 100)
    assert cosine.rate(0) == pytest.approx(0.30) and cosine.rate(100) == pytest.approx(0.15)
    assert cosine.rate(50) == pytest.approx(0.225) and cosine.rate(25) > linear.rate(250)
    assert RateSchedule().rate(123) == 0.15
    composed = with_rate(Compose((RuleBased(mode="protect"), RandomMasking())), 0.3)
    assert composed.steps[1].mlm_probability == 0.3
    with pytest.raises(InputError, match="from 0 to 1"):
        with_rate(RandomMasking(), 1.5)


# ----------------------------------------------------------------------------- registry and validation


def test_registry_round_trips_every_strategy():
    examples = {
        "manual": {"positions": "1, 3"},
        "attention-exclusion": {"rule": "stopwords"},
        "compose": {"steps": [{"name": "privacy"}, {"name": "random", "params": {"exact": "yes"}}]},
    }
    for name, spec in STRATEGIES.items():
        assert spec.help and all(p.help for p in spec.params)
        strategy = strategy_from_params(name, examples.get(name, {}))
        assert strategy_from_params(name, params_of(strategy)) == strategy
        assert strategy_from_params(name, params_of(strategy, as_strings=True)) == strategy


def test_params_from_strings_are_converted_and_checked():
    strategy = strategy_from_params(
        "random",
        {"mlm_probability": "0.3", "exact": "true", "mask_replace_prob": "1", "random_replace_prob": "0"},
    )
    assert strategy == RandomMasking(0.3, exact=True, mask_replace_prob=1.0, random_replace_prob=0.0)
    assert strategy_from_params("whole_word", {}) == WholeWordMasking()
    with pytest.raises(InputError, match="Unknown masking strategy"):
        strategy_from_params("nope", {})
    with pytest.raises(InputError, match="unknown parameter.*valid: mlm_probability"):
        strategy_from_params("random", {"probability": "0.2"})
    with pytest.raises(InputError, match="mlm_probability must be a number from 0 to 1"):
        strategy_from_params("random", {"mlm_probability": "abc"})
    with pytest.raises(InputError, match="must be one of"):
        strategy_from_params("rule-based", {"rule": "verbs"})
    with pytest.raises(InputError, match="true or false"):
        strategy_from_params("random", {"exact": "maybe"})
    with pytest.raises(InputError, match="unknown parameter"):
        strategy_from_params("span", {"exact": "1"})
    with pytest.raises(InputError, match="steps must be a JSON list"):
        strategy_from_params("compose", {"steps": "[{"})


def test_fields_are_validated_with_actionable_messages():
    with pytest.raises(InputError, match="must not exceed 1"):
        RandomMasking(mask_replace_prob=0.8, random_replace_prob=0.3)
    with pytest.raises(InputError, match="from 0 to 1"):
        RandomMasking(1.5)
    with pytest.raises(InputError, match="geometric_p"):
        SpanMasking(geometric_p=0)
    with pytest.raises(InputError, match="whole number"):
        SpanMasking(max_span_length=2.5)
    with pytest.raises(InputError, match="at least one word"):
        RuleBased(rule="words")
    with pytest.raises(InputError, match="positions to exclude or a rule"):
        AttentionExclusion()
    with pytest.raises(InputError, match="one privacy step"):
        Compose((PrivacyMasking(), PrivacyMasking(kinds=("email",))))
    with pytest.raises(InputError, match="not a masking strategy"):
        Compose(("random",))
    with pytest.raises(InputError, match="static, dynamic"):
        DrawPolicy("sometimes")
    with pytest.raises(InputError, match="int seed or a torch.Generator"):
        mask_batch(TokenBatch.from_ids([[5, 6]], Vocab(3, 10)), RandomMasking(), Vocab(3, 10), rng="x")


def test_param_specs_describe_the_training_options_too():
    assert [p.name for p in param_specs(DrawPolicy)] == ["mode", "seed"]
    kinds = {p.name: p.kind for p in param_specs(RateSchedule)}
    assert kinds == {"kind": "choice", "start": "float", "end": "float", "total_steps": "int"}
    assert ParamSpec("p", "int_list", (), "h").format((1, 2)) == "1,2"


def test_vocab_from_tokenizer(default_tokenizer, tiny_tokenizer):
    vocab = Vocab.from_tokenizer(default_tokenizer)
    assert (vocab.mask_token_id, vocab.vocab_size, vocab.mask_token) == (
        103,
        len(default_tokenizer),
        "[MASK]",
    )
    assert set(vocab.special_ids) == set(default_tokenizer.all_special_ids)
    assert vocab.non_special_ids.numel() == vocab.vocab_size - len(vocab.special_ids)
    tiny = Vocab.from_tokenizer(tiny_tokenizer)
    assert tiny.mask_token_id == 4 and tiny.vocab_size == len(tiny_tokenizer)

    class NoMask:
        mask_token_id = None

    with pytest.raises(ModelLoadError, match="no mask token"):
        Vocab.from_tokenizer(NoMask())


def test_works_with_the_tiny_tokenizer(tiny_tokenizer):
    vocab = Vocab.from_tokenizer(tiny_tokenizer)
    tokens = tokenize(tiny_tokenizer, "the cats sat on the mat.")
    result = apply_strategy(
        tokens, WholeWordMasking(1.0, mask_replace_prob=1.0, random_replace_prob=0.0), vocab
    )
    assert result.masked_positions == list(range(1, len(tokens) - 1))


# ----------------------------------------------------------------------------- explorer helpers


def test_selection_frequency(records, vocab):
    record = records[1]
    frequency = selection_frequency(record, RandomMasking(0.15), vocab, draws=2000, rng=0)
    assert frequency.shape == (len(record),)
    assert frequency[0] == 0 and frequency[-1] == 0
    inner = frequency[1:-1]
    assert abs(inner.mean() - 0.15) < four_sigma(0.15, 2000 * inner.size)
    assert np.all(np.abs(inner - 0.15) < 4.5 * math.sqrt(0.15 * 0.85 / 2000))
    manual = selection_frequency(record, ManualMasking((2,)), vocab, draws=3)
    assert manual.tolist() == [1.0 if i == 2 else 0.0 for i in range(len(record))]
    with pytest.raises(InputError, match="draws"):
        selection_frequency(record, RandomMasking(), vocab, draws=0)


def test_mask_text_composes_privacy_protection_and_random(default_tokenizer, vocab):
    strategy = Compose(
        (
            PrivacyMasking(),
            RuleBased(rule="stopwords", mode="protect"),
            RandomMasking(1.0, mask_replace_prob=1.0, random_replace_prob=0.0),
        )
    )
    out = mask_text(default_tokenizer, "Mail jane@example.com about the 3 extraordinary elephants.", strategy)
    assert out.privacy.text == "Mail [EMAIL] about the [NUMBER] extraordinary elephants."
    placeholders = out.privacy.protected_positions(out.tokens)
    assert [out.tokens.tokens[i] for i in placeholders] == ["[", "email", "]", "[", "number", "]"]
    assert all(out.result.kinds[i] is None for i in placeholders)
    expected = [
        i
        for i, (special, category) in enumerate(zip(out.tokens.special, out.tokens.categories, strict=True))
        if not special and category != STOPWORD and i not in placeholders
    ]
    assert out.result.chosen_positions == expected
    assert {"extraordinary", "elephants"} <= {out.tokens.word_text(i) for i in expected}
    assert "the" not in {out.tokens.word_text(i) for i in expected}
    as_masks = mask_text(
        default_tokenizer,
        "Mail jane@example.com now.",
        Compose((PrivacyMasking(replacement="mask"), ManualMasking((1,)))),
    )
    position = as_masks.tokens.mask_positions[0]
    assert as_masks.result.kinds[position] == MASKED and as_masks.result.labels[position] == IGNORE_INDEX


def test_mask_result_helpers(records, vocab):
    result = apply_strategy(records[0], RandomMasking(0.5, exact=True), vocab, rng=1)
    assert (
        sorted(result.masked_positions + result.random_positions + result.kept_positions)
        == result.chosen_positions
    )
    assert result.ratio == pytest.approx(len(result.chosen_positions) / result.n_eligible)
    data = result.to_dict()
    assert data["kinds"] == list(result.kinds) and len(data["labels"]) == len(records[0])
    with pytest.raises(ValueError):
        result.input_ids[0] = 1  # read-only arrays
    assert dataclasses.is_dataclass(result)


def test_batch_path_is_fast_enough(vocab):
    ids = torch.randint(1000, 30000, (64, 512), generator=torch.Generator().manual_seed(0))
    batch = TokenBatch.from_ids(ids, vocab, word_ids=torch.arange(512).expand(64, 512) // 2)
    import time

    for strategy in (RandomMasking(), WholeWordMasking()):
        start = time.perf_counter()
        mask_batch(batch, strategy, vocab, rng=0)
        assert time.perf_counter() - start < 2.0  # generous: a loaded 2-core machine; ~1 ms idle
