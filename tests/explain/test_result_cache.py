"""The results every session shares: equal to a fresh computation, isolated per request, frozen, bounded,
dropped with their model, computed once when many ask at once, and safe under many threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import build_tiny_bert

from mlm_core.errors import InputError
from mlm_core.explain.exploration import explore, is_explored
from mlm_core.explain.result_cache import ENTRY_OVERHEAD, ResultCache, freeze, model_token, shared_results
from mlm_core.masking import build_strategy
from mlm_core.model import loading
from mlm_core.policy import reload_policy

TEXT = "the cat [MASK] on the mat."
THREADS = 24


@pytest.fixture
def sharing(monkeypatch):
    """The shared cache on, empty, with the default bound; settings restored afterwards."""
    monkeypatch.delenv("MASKLAB_SHARED_RESULTS_MB", raising=False)
    reload_policy()
    shared_results().clear()
    yield shared_results()
    shared_results().clear()
    monkeypatch.undo()
    reload_policy()


def same_guesses(a, b) -> bool:
    """The same guesses with the same probabilities, up to float rounding (a batched pass pads)."""
    pairs = [(x, y) for p, q in zip(a.prediction.predictions, b.prediction.predictions) for x, y in zip(p.top, q.top)]
    return len(a.prediction.predictions) == len(b.prediction.predictions) and all(
        x.token_id == y.token_id and abs(x.prob - y.prob) < 1e-6 for x, y in pairs)


def together(function, count=THREADS):
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def work(k):
        barrier.wait()
        try:
            results[k] = ("ok", function(k))
        except Exception as exc:
            results[k] = ("error", exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_a_shared_result_equals_a_fresh_one(tiny_loaded, sharing, monkeypatch):
    first = explore(tiny_loaded, TEXT, output_attentions=True)
    again = explore(tiny_loaded, TEXT, output_attentions=True)
    assert again is first and sharing.hits >= 1
    monkeypatch.setenv("MASKLAB_SHARED_RESULTS_MB", "0")  # sharing off: computed anew every time
    reload_policy()
    fresh = explore(tiny_loaded, TEXT, output_attentions=True)
    assert fresh is not first
    assert same_guesses(fresh, first)
    np.testing.assert_allclose(fresh.prediction.attentions, first.prediction.attentions, atol=1e-6)


def test_is_explored_tells_a_shared_answer_without_counting_or_computing(tiny_loaded, sharing):
    strategy = build_strategy("random", {"mlm_probability": 0.3})
    counts = (sharing.hits, sharing.misses)  # counted since the process began
    assert not is_explored(tiny_loaded, TEXT, strategy, seed=1, output_attentions=True)
    assert (sharing.hits, sharing.misses, len(sharing)) == (*counts, 0)  # a look computes nothing
    explore(tiny_loaded, TEXT, strategy, seed=1, output_attentions=True)
    assert is_explored(tiny_loaded, TEXT, strategy, seed=1, output_attentions=True)
    assert not is_explored(tiny_loaded, TEXT, strategy, seed=2, output_attentions=True)  # the same key as explore's
    assert (sharing.hits, sharing.misses) == (counts[0], counts[1] + 1)


def test_every_setting_is_part_of_the_key(tiny_loaded, sharing):
    strategy = build_strategy("random", {"mlm_probability": 0.3})
    base = explore(tiny_loaded, TEXT, strategy, seed=1)
    variants = [
        explore(tiny_loaded, TEXT, strategy, seed=2),
        explore(tiny_loaded, TEXT + " the dog ran.", strategy, seed=1),
        explore(tiny_loaded, TEXT, build_strategy("random", {"mlm_probability": 0.5}), seed=1),
        explore(tiny_loaded, TEXT, strategy, seed=1, top_k=3),
        explore(tiny_loaded, TEXT, strategy, seed=1, manual_positions=[1]),
        explore(tiny_loaded, TEXT, strategy, seed=1, output_attentions=True),
    ]
    assert all(v is not base for v in variants)
    assert len(sharing) == 1 + len(variants)
    assert len(variants[3].prediction.predictions[0].top) == 3
    assert variants[5].prediction.attentions is not None and base.prediction.attentions is None


def test_a_narrower_limit_is_not_bypassed_by_a_shared_result(tiny_loaded, sharing, monkeypatch):
    explore(tiny_loaded, "the [MASK] sat on the [MASK].")
    monkeypatch.setenv("MASKLAB_MAX_MASKS_PER_TEXT", "1")
    reload_policy()
    with pytest.raises(InputError, match="at most 1 per text"):
        explore(tiny_loaded, "the [MASK] sat on the [MASK].")


def test_shared_results_cannot_be_changed(tiny_loaded, sharing):
    result = explore(tiny_loaded, TEXT, build_strategy("random", {"mlm_probability": 0.3}), output_attentions=True)
    with pytest.raises(ValueError, match="read-only"):
        result.prediction.attentions[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        result.mask.input_ids[0] = 0
    with pytest.raises(AttributeError):
        result.prediction.predictions[0].top[0].prob = 1.0  # frozen dataclass


def test_freeze_refuses_a_mutable_dataclass():
    from dataclasses import dataclass

    @dataclass
    class Loose:
        values: list

    with pytest.raises(TypeError, match="not frozen"):
        freeze(Loose([1]))


def test_the_cache_is_bounded_least_recently_used_first():
    entry = 1000 * 8 + ENTRY_OVERHEAD  # one array of 1000 float64 per result
    cache = ResultCache(max_bytes=3 * entry)
    for key in "abc":
        cache.get(key, lambda: np.zeros(1000))
    cache.get("a", lambda: pytest.fail("a is cached"))  # a is now the most recently used
    cache.get("d", lambda: np.zeros(1000))  # b, the least recently used, goes
    assert len(cache) == 3 and cache.bytes == 3 * entry
    computed = []
    cache.get("b", lambda: computed.append("b") or np.zeros(1000))
    assert computed == ["b"]
    huge = cache.get("huge", lambda: np.zeros(10_000))  # bigger than the whole bound: returned, not kept
    assert huge.shape == (10_000,) and cache.bytes <= 3 * entry


def test_results_go_with_their_model(tmp_path, sharing, monkeypatch):
    """A model the loader drops takes its results along; a reloaded model never answers from them."""
    monkeypatch.setattr(loading, "MAX_LOADED_MODELS", 1)
    first_dir, second_dir = build_tiny_bert(tmp_path / "a"), build_tiny_bert(tmp_path / "b", seed=1)
    first = loading.load_model(str(first_dir), device="cpu")
    explore(first, TEXT)
    token = model_token(first)
    assert any(key[0] == token for key in sharing._entries)
    loading.load_model(str(second_dir), device="cpu")  # the cache holds one model: the first is dropped
    assert not any(key[0] == token for key in sharing._entries)
    reloaded = loading.load_model(str(first_dir), device="cpu")
    assert reloaded.model is not first.model and model_token(reloaded) != token


def test_concurrent_identical_requests_compute_once():
    cache, calls = ResultCache(max_bytes=2**20), []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return np.arange(3)

    results = together(lambda k: cache.get("same", slow))
    assert len(calls) == 1 and cache.shared == THREADS - 1
    assert all(status == "ok" and value is results[0][1] for status, value in results)


def test_concurrent_sessions_of_the_real_explorer(tiny_loaded, sharing):
    texts = [TEXT, "paris is the [MASK] of france.", "a dog [MASK]."]
    expected = {text: explore(tiny_loaded, text, output_attentions=True) for text in texts}
    sharing.clear()
    results = together(lambda k: explore(tiny_loaded, texts[k % 3], output_attentions=True))
    for k, (status, result) in enumerate(results):
        assert status == "ok", result
        assert same_guesses(result, expected[texts[k % 3]])
    assert sharing.misses >= 3 and len(sharing) == 3


def test_a_failure_fails_only_its_own_request():
    cache, attempts = ResultCache(max_bytes=2**20), []

    def flaky():
        attempts.append(1)
        time.sleep(0.05)
        if len(attempts) == 1:
            raise InputError("the first attempt fails")
        return np.ones(2)

    results = together(lambda k: cache.get("flaky" if k % 2 else f"fine-{k}", flaky if k % 2 else lambda: np.zeros(2)))
    failed = [value for status, value in results if status == "error"]
    assert len(failed) == 1 and isinstance(failed[0], InputError)  # the leader's error, nobody else's
    assert all(status == "ok" for k, (status, _) in enumerate(results) if k % 2 == 0)
    assert sum(status == "ok" for status, _ in results) == THREADS - 1
    assert len(attempts) == 2  # after the failure, one waiter computed it for the others


def test_many_threads_keep_the_bound():
    entry = 100 * 8 + ENTRY_OVERHEAD
    cache = ResultCache(max_bytes=5 * entry)
    results = together(lambda k: [cache.get(k * 7 % 11 + n % 3, lambda: np.zeros(100)) for n in range(30)])
    assert all(status == "ok" for status, _ in results)
    assert len(cache) <= 5 and cache.bytes == len(cache) * entry
