"""Predictions: against transformers' fill-mask pipeline, joint filling, windows, exclusion, PLL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.explain.predict import plan_windows, predict, pseudo_log_likelihood
from mlm_core.model.forward import forward
from mlm_core.text.tokens import tokenize


def ids_of(loaded, text):
    return list(tokenize(loaded.tokenizer, text).ids)


def probs_at(loaded, ids, position):
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([ids])).logits[0, position]
    return torch.softmax(logits.float(), -1)


def test_top_k_sorted_without_special_tokens(tiny_loaded):
    ids = ids_of(tiny_loaded, "the cat [MASK] on the [MASK].")
    result = predict(tiny_loaded, ids, top_k=10)
    special = set(tiny_loaded.tokenizer.all_special_ids)
    assert result.positions == (3, 6)
    for guess in result.predictions:
        probs = [c.prob for c in guess.top]
        assert len(guess.top) == 10
        assert probs == sorted(probs, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probs)
        assert not special & {c.token_id for c in guess.top}
        assert [c.token for c in guess.top] == tiny_loaded.tokenizer.convert_ids_to_tokens(
            [c.token_id for c in guess.top]
        )


def test_matches_transformers_fill_mask_pipeline(tiny_loaded):
    """Reference test: same probabilities as ``pipeline("fill-mask")`` once special tokens are dropped."""
    from transformers import pipeline

    text = "the capital of france is [MASK]."
    pipe = pipeline("fill-mask", model=tiny_loaded.model, tokenizer=tiny_loaded.tokenizer, device="cpu")
    reference = pipe(text, top_k=tiny_loaded.vocab_size)
    special = set(tiny_loaded.tokenizer.all_special_ids)
    reference = [r for r in reference if r["token"] not in special][:5]
    ours = predict(tiny_loaded, ids_of(tiny_loaded, text), top_k=5).predictions[0].top
    assert [c.token_id for c in ours] == [r["token"] for r in reference]
    assert torch.allclose(
        torch.tensor([c.prob for c in ours]), torch.tensor([r["score"] for r in reference]), atol=1e-6
    )


def test_originals_give_rank_and_probability(tiny_loaded):
    ids = ids_of(tiny_loaded, "the cat sat on the mat")
    original = ids[2]
    ids[2] = tiny_loaded.mask_token_id
    guess = predict(tiny_loaded, ids, originals={2: original}, top_k=5).predictions[0]
    probs = probs_at(tiny_loaded, ids, 2)
    assert guess.original_token == "cat"
    assert guess.original_prob == pytest.approx(float(probs[original]), abs=1e-6)
    special = list(set(tiny_loaded.tokenizer.all_special_ids))
    probs[special] = -1
    assert guess.original_rank == int((probs > probs[original]).sum()) + 1
    assert guess.hit == (guess.original_rank == 1)


def test_joint_fills_one_at_a_time_most_confident_first(tiny_loaded):
    ids = ids_of(tiny_loaded, "[MASK] cat [MASK] on the [MASK] mat")
    joint = predict(tiny_loaded, ids, fill="joint", top_k=3)
    assert joint.fill == "joint"
    assert sorted(g.fill_step for g in joint.predictions) == [1, 2, 3]

    # Replay the chain: at each step the filled position is the most confident remaining one,
    # and its probabilities are conditioned on the fillings before it.
    special = list(set(tiny_loaded.tokenizer.all_special_ids))
    current = list(ids)
    log_prob = 0.0
    for guess in sorted(joint.predictions, key=lambda g: g.fill_step):
        remaining = [p for p in joint.positions if current[p] == tiny_loaded.mask_token_id]
        confidence = {}
        for p in remaining:
            probs = probs_at(tiny_loaded, current, p)
            probs[special] = 0
            confidence[p] = float(probs.max())
        assert guess.position == max(confidence, key=confidence.get)
        probs = probs_at(tiny_loaded, current, guess.position)
        assert guess.top[0].prob == pytest.approx(float(probs[guess.top[0].token_id]), abs=1e-6)
        current[guess.position] = guess.top[0].token_id
        log_prob += math.log(guess.top[0].prob)
    assert tuple(current) == joint.filled_ids
    assert joint.log_prob == pytest.approx(log_prob, abs=1e-6)
    assert joint.joint_prob == pytest.approx(math.exp(log_prob))


def test_independent_ignores_other_fillings(tiny_loaded):
    ids = ids_of(tiny_loaded, "[MASK] cat [MASK] on the [MASK] mat")
    independent = predict(tiny_loaded, ids, fill="independent", top_k=3)
    assert all(g.fill_step is None for g in independent.predictions)
    for guess in independent.predictions:
        probs = probs_at(tiny_loaded, ids, guess.position)  # the masked input, not a filled one
        assert guess.top[0].prob == pytest.approx(float(probs[guess.top[0].token_id]), abs=1e-6)
    assert independent.log_prob == pytest.approx(
        sum(math.log(g.top[0].prob) for g in independent.predictions)
    )


def test_joint_and_independent_agree_on_one_mask(tiny_loaded):
    ids = ids_of(tiny_loaded, "the cat [MASK] on the mat")
    a = predict(tiny_loaded, ids, fill="joint")
    b = predict(tiny_loaded, ids, fill="independent")
    assert [c.token_id for c in a.predictions[0].top] == [c.token_id for c in b.predictions[0].top]
    assert a.log_prob == pytest.approx(b.log_prob)


def test_plan_windows_cover_every_position():
    positions = [1, 10, 300, 301, 700, 998]
    windows = plan_windows(1000, positions, 512)
    for p in positions:
        assert any(w.start <= p < w.end for w in windows)
    assert all(w.end - w.start <= 510 and w.start >= 1 and w.end <= 999 for w in windows)
    assert plan_windows(20, [3], 512)[0].start == 1


@pytest.mark.parametrize("fill", ["independent", "joint"])
def test_long_input_predicts_every_mask_with_a_notice(tiny_loaded, fill):
    words = ["the", "cat", "sat", "on", "the", "mat", "and", "the", "dog", "ran", "in", "the", "house"]
    text = " ".join(words * 12)  # ~156 tokens; the tiny model has 64 positions
    ids = ids_of(tiny_loaded, text)
    assert len(ids) > tiny_loaded.max_length
    positions = [1, 5, 40, 70, 100, len(ids) - 2]
    masked = list(ids)
    for p in positions:
        masked[p] = tiny_loaded.mask_token_id
    result = predict(tiny_loaded, masked, fill=fill, output_attentions=True)
    assert result.positions == tuple(positions)
    assert [g.position for g in result.predictions] == positions
    assert any("window" in notice for notice in result.notices)
    assert any("Attention" in notice for notice in result.notices)
    assert result.attentions is None
    assert result.log_prob == pytest.approx(sum(math.log(g.top[0].prob) for g in result.predictions))
    assert all(result.filled_ids[p] != tiny_loaded.mask_token_id for p in positions)


def test_window_prediction_uses_the_window_context(tiny_loaded):
    words = ["the", "cat", "sat", "on", "the", "mat", "and", "the", "dog", "ran", "in", "the", "house"]
    ids = ids_of(tiny_loaded, " ".join(words * 12))
    masked = list(ids)
    masked[100] = tiny_loaded.mask_token_id
    guess = predict(tiny_loaded, masked).predictions[0]
    (window,) = plan_windows(len(masked), [100], tiny_loaded.max_length)
    window_ids = [masked[0], *masked[window.start : window.end], masked[-1]]
    probs = probs_at(tiny_loaded, window_ids, 100 - window.start + 1)
    assert guess.top[0].prob == pytest.approx(float(probs[guess.top[0].token_id]), abs=1e-6)


def test_attentions_shape(tiny_loaded):
    ids = ids_of(tiny_loaded, "the cat [MASK] on the mat")
    for fill in ("independent", "joint"):
        result = predict(tiny_loaded, ids, fill=fill, output_attentions=True)
        assert result.attentions.shape == (2, 2, len(ids), len(ids))
        np.testing.assert_allclose(result.attentions.sum(-1), 1.0, rtol=1e-5)


def test_attention_exclusion(tiny_loaded):
    ids = ids_of(tiny_loaded, "the cat [MASK] on the mat")
    base = predict(tiny_loaded, ids, top_k=5, output_attentions=True)
    nothing = predict(tiny_loaded, ids, top_k=5, attention_exclude=[False] * len(ids), output_attentions=True)
    assert [c.prob for c in nothing.predictions[0].top] == pytest.approx(
        [c.prob for c in base.predictions[0].top]
    )

    exclude = [False] * len(ids)
    exclude[1] = exclude[2] = True  # "the", "cat"
    excluded = predict(tiny_loaded, ids, top_k=5, attention_exclude=exclude, output_attentions=True)
    assert [c.prob for c in excluded.predictions[0].top] != pytest.approx(
        [c.prob for c in base.predictions[0].top]
    )
    np.testing.assert_allclose(excluded.attentions[:, :, :, 1:3], 0.0, atol=1e-7)  # a_ij = 0 for excluded j


def test_forward_returns_logits_for_every_position(tiny_loaded):
    logits, attentions = forward(tiny_loaded, [2, 10, 4, 3])
    assert logits.shape == (4, tiny_loaded.vocab_size) and attentions is None


def test_forward_at_positions_equals_full_forward_rows(tiny_loaded, monkeypatch):
    ids = [2, 10, 4, 19, 4, 5, 3]
    hooks_before = len(tiny_loaded.model.get_output_embeddings()._forward_pre_hooks)
    full, full_attentions = forward(tiny_loaded, ids, output_attentions=True)
    some, some_attentions = forward(tiny_loaded, ids, output_attentions=True, positions=[4, 2])
    assert some.shape == (2, tiny_loaded.vocab_size)
    torch.testing.assert_close(some, full[[4, 2]])
    np.testing.assert_allclose(some_attentions, full_attentions)
    assert len(tiny_loaded.model.get_output_embeddings()._forward_pre_hooks) == hooks_before

    # A head that never calls its output-embedding module: rows are selected afterwards.
    monkeypatch.setattr(tiny_loaded.model, "get_output_embeddings", lambda: torch.nn.Identity())
    fallback, _ = forward(tiny_loaded, ids, positions=[4, 2])
    torch.testing.assert_close(fallback, full[[4, 2]])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"top_k": 0}, InputError, "top-k"),
        ({"top_k": 101}, InputError, "top-k"),
        ({"fill": "greedy"}, InputError, "fill"),
        ({"positions": [0]}, InputError, "outside"),
        ({"positions": [99]}, InputError, "outside"),
    ],
)
def test_bad_arguments(tiny_loaded, kwargs, error, message):
    ids = ids_of(tiny_loaded, "the cat [MASK] on the mat")
    with pytest.raises(error, match=message):
        predict(tiny_loaded, ids, **kwargs)


def test_no_mask_says_what_to_type(tiny_loaded):
    with pytest.raises(NothingToMaskError, match=r"\[MASK\]"):
        predict(tiny_loaded, ids_of(tiny_loaded, "the cat sat"))


def test_pseudo_log_likelihood_equals_naive_loop(tiny_loaded):
    ids = ids_of(tiny_loaded, "the big cat sat on the red mat.")
    total, scores = pseudo_log_likelihood(tiny_loaded, ids)
    special = set(tiny_loaded.tokenizer.all_special_ids)
    expected = np.full(len(ids), np.nan)
    for position, token_id in enumerate(ids):
        if token_id in special:
            continue
        masked = list(ids)
        masked[position] = tiny_loaded.mask_token_id
        expected[position] = math.log(float(probs_at(tiny_loaded, masked, position)[token_id]))
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert np.isnan(scores[0]) and np.isnan(scores[-1])
    assert total == pytest.approx(float(np.nansum(expected)), abs=1e-4)


def test_pseudo_log_likelihood_refuses_long_input(tiny_loaded):
    with pytest.raises(InputError, match="at most 64"):
        pseudo_log_likelihood(tiny_loaded, [2] + [10] * 80 + [3])
