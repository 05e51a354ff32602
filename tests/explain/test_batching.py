"""Forward passes of concurrent requests run as one padded batch, each request getting exactly its own result.

Reference: the same sentence run alone through the model (``forward.run`` on one unpadded row), the
code path every request took before batching. Threads are released together by a barrier, so the
requests really arrive at the same moment.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlm_core.model import batching
from mlm_core.model.batching import Gatherer, Request, gatherer_for, pack
from mlm_core.model.forward import exclusion_mask, forward, run
from mlm_core.model.loading import load_fresh
from mlm_core.text.tokens import tokenize

SENTENCES = [
    "the cat [MASK] on the mat.",
    "a dog ran.",
    "paris is the [MASK] of france, a big city.",
    "the red house and the blue tree.",
    "she sat on [MASK].",
    "the small cat sat on the big red mat and the dog ran to the house.",
    "it was [MASK]!",
    "he ran, she sat, it was a cat.",
]
THREADS = 24


def alone(loaded, ids, exclude=None, positions=None, output_attentions=False):
    """The pre-batching reference: one row, no padding, straight through the model."""
    input_ids = torch.tensor([list(ids)])
    chosen = None
    if positions is not None:
        rows = torch.tensor(list(positions))
        chosen = (torch.zeros_like(rows), rows)
    logits, recorded = run(loaded, input_ids, exclusion_mask(input_ids, exclude), chosen,
                           output_attentions=output_attentions)
    attentions = torch.stack([a[0] for a in recorded]).numpy() if output_attentions else None
    return (logits if chosen is not None else logits[0]), attentions


def requests_for(loaded):
    """Sentences of different lengths, with and without positions, exclusions and attentions."""
    cases = []
    for n, text in enumerate(SENTENCES):
        ids = list(tokenize(loaded.tokenizer, text).ids)
        positions = [i for i, t in enumerate(ids) if t == loaded.mask_token_id] or None
        exclude = [i == 2 for i in range(len(ids))] if n % 3 == 1 else None
        cases.append((ids, exclude, positions, n % 2 == 0))
    return cases


def together(function, arguments):
    """``function(*a)`` for each of ``arguments``, each in its own thread, all released at once."""
    barrier = threading.Barrier(len(arguments))
    results: list = [None] * len(arguments)

    def work(k):
        barrier.wait()
        try:
            results[k] = ("ok", function(*arguments[k]))
        except Exception as exc:  # the test looks at each outcome
            results[k] = ("error", exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(arguments))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a request never got its result"
    return results


def assert_same(got, expected):
    logits, attentions = got
    assert logits.shape == expected[0].shape
    assert torch.allclose(logits, expected[0], atol=1e-5, rtol=1e-4)
    if expected[1] is None:
        assert attentions is None
    else:
        assert attentions.shape == expected[1].shape  # sliced back to the request's own length
        np.testing.assert_allclose(attentions, expected[1], atol=1e-6)


def test_concurrent_requests_get_exactly_their_single_run_results(tiny_loaded):
    cases = requests_for(tiny_loaded)
    expected = [alone(tiny_loaded, *case) for case in cases]
    gatherer = gatherer_for(tiny_loaded)
    passes, rows = gatherer.passes, gatherer.rows
    picks = [cases[k % len(cases)] for k in range(THREADS)]
    results = together(lambda ids, ex, pos, att: forward(tiny_loaded, ids, ex, att, pos), picks)
    for k, (status, got) in enumerate(results):
        assert status == "ok", got
        assert_same(got, expected[k % len(cases)])
    assert gatherer.rows - rows == THREADS
    assert gatherer.passes - passes < THREADS  # they shared passes


def test_padding_does_not_change_results(tiny_loaded):
    """A short sentence batched with a long one gives what it gives alone (attention mask, then sliced)."""
    short = list(tokenize(tiny_loaded.tokenizer, "a [MASK] ran.").ids)
    long = list(tokenize(tiny_loaded.tokenizer, "the cat sat on the mat and the dog ran to the big red house.").ids)
    requests = [Request(tuple(short), None, None, True), Request(tuple(long), (3,), None, True)]
    (short_logits, short_att), (long_logits, long_att) = batching.run_requests(tiny_loaded, requests, None)
    assert_same((short_logits, short_att), alone(tiny_loaded, short, output_attentions=True))
    assert_same((long_logits, long_att), alone(tiny_loaded, long, positions=[3], output_attentions=True))
    assert np.allclose(short_att.sum(-1), 1.0, atol=1e-5)  # no weight went to the padding


def test_only_compatible_requests_share_a_pass(tiny_loaded):
    seen = []

    def record(loaded, requests, threads):
        seen.append([r.output_attentions for r in requests])
        time.sleep(0.01)
        return [(torch.zeros(1), None) for _ in requests]

    gatherer = Gatherer(run_pass=record)
    arguments = [(Request((2, 4, 3), (1,), None, k % 2 == 0),) for k in range(THREADS)]
    results = together(lambda request: gatherer.submit(tiny_loaded, request), arguments)
    assert all(status == "ok" for status, _ in results)
    assert sum(len(batch) for batch in seen) == THREADS
    assert all(len(set(batch)) == 1 for batch in seen)  # attentions on and off never mixed
    assert len(seen) < THREADS


def test_a_failing_request_fails_alone(tiny_loaded):
    cases = requests_for(tiny_loaded)
    expected = [alone(tiny_loaded, *case) for case in cases]
    bad = ([2, 10_000, 3], None, None, False)  # an id past the vocabulary: the embedding lookup fails
    picks = [bad if k % 5 == 0 else cases[k % len(cases)] for k in range(THREADS)]
    results = together(lambda ids, ex, pos, att: forward(tiny_loaded, ids, ex, att, pos), picks)
    for k, (status, got) in enumerate(results):
        if k % 5 == 0:
            assert status == "error" and isinstance(got, IndexError)
        else:
            assert status == "ok", got
            assert_same(got, expected[k % len(cases)])


def test_a_batch_never_mixes_models(tiny_model_dir, tiny_loaded):
    """A reloaded model is a new object with its own gatherer: requests to either get their own model's answer."""
    reloaded = load_fresh(str(tiny_model_dir))
    reloaded.model.eval()
    with torch.no_grad():
        for parameter in reloaded.model.parameters():
            parameter.add_(0.05)  # a different model under the same name
    assert gatherer_for(reloaded) is not gatherer_for(tiny_loaded)
    ids = list(tokenize(tiny_loaded.tokenizer, "the cat [MASK] on the mat.").ids)
    expected = {id(m): alone(m, ids, positions=[3], output_attentions=True) for m in (tiny_loaded, reloaded)}
    models = [tiny_loaded if k % 2 else reloaded for k in range(THREADS)]
    results = together(lambda m: (id(m), forward(m, ids, None, True, [3])), [(m,) for m in models])
    for status, (key, got) in results:
        assert status == "ok"
        assert_same(got, expected[key])
    assert not torch.allclose(expected[id(tiny_loaded)][0], expected[id(reloaded)][0])


def test_a_thread_holding_the_model_runs_its_pass_itself(tiny_loaded):
    """Head gates and captum hold the model's lock with their hooks installed: their passes must not
    wait for the batch worker (which waits for that lock) nor run in another thread's batch."""
    ids = list(tokenize(tiny_loaded.tokenizer, "the cat [MASK] on the mat.").ids)
    done = []

    def hooked():
        with tiny_loaded.lock:
            done.append(forward(tiny_loaded, ids, positions=[3]))

    thread = threading.Thread(target=hooked)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and len(done) == 1
    assert_same(done[0], alone(tiny_loaded, ids, positions=[3]))


@pytest.mark.parametrize(("lengths", "expected"), [
    ([5, 40, 6], [[0, 2], [1]]),  # the long one alone: padding the short ones to 40 would waste most of it
    ([10, 11, 12, 12], [[0, 1, 2, 3]]),
    ([], []),
])
def test_pack_sorts_by_length_and_limits_padding(lengths, expected):
    assert pack(lengths) == expected


def test_pack_respects_the_token_budget():
    passes = pack([100] * 10, max_tokens=300)
    assert [len(p) for p in passes] == [3, 3, 3, 1]
    assert [len(p) for p in pack([500] * 5, max_square=600_000)] == [2, 2, 1]  # attentions of long texts


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), max_size=60), max_tokens=st.integers(300, 5000),
       waste=st.sampled_from([0.05, 0.1, 0.5, 1.0]), max_rows=st.one_of(st.none(), st.integers(1, 20)))
def test_pack_keeps_every_index_once_within_every_bound(lengths, max_tokens, waste, max_rows):
    passes = pack(lengths, max_tokens=max_tokens, waste=waste, max_rows=max_rows)
    assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
    for rows in passes:
        padded = len(rows) * max(lengths[i] for i in rows)
        if len(rows) > 1:  # a row alone may exceed any budget: it has to run somewhere
            assert padded <= max_tokens and (max_rows is None or len(rows) <= max_rows)
            assert sum(lengths[i] for i in rows) >= (1 - waste) * padded - 1e-9
