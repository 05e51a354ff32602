"""BERT's inference pass as plain tensor operations (mlm_core/model/bert_pass.py): transformers' numbers,
and transformers itself wherever a hook, gradients or another family are in play."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlm_core.model import bert_pass
from mlm_core.model.forward import head_gates, heads_gated, model_output, run
from mlm_core.model.loading import load_fresh
from mlm_core.text.tokens import tokenize


def reference(model, input_ids, attention_mask=None):
    """transformers' own forward pass (logits (B, T, V), attentions per layer)."""
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    return out.logits, out.attentions


def assert_same(ours, theirs, atol=1e-5):
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=atol, rtol=1e-5), float((ours - theirs).abs().max())


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    loaded = load_fresh(str(tiny_model_dir))
    loaded.model.eval()
    return loaded.model


def test_padded_batch_with_excluded_tokens_matches_transformers(tiny):
    ids = torch.tensor([[2, 10, 4, 20, 3, 0, 0], [2, 11, 12, 4, 13, 14, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1, 1]])  # padding; a token left out of the context
    logits, attentions = reference(tiny, ids, mask)
    with torch.inference_mode():
        assert bert_pass.applies(tiny)
        every, ours = bert_pass.bert_pass(tiny, ids, mask, None, output_attentions=True)
        rows, positions = torch.tensor([1, 0, 1]), torch.tensor([3, 2, 0])
        picked, none = bert_pass.bert_pass(tiny, ids, mask, (rows, positions))
        by_mask, _ = bert_pass.bert_pass(tiny, ids, mask, ids == 4)
    assert_same(every, logits)
    assert none is None and len(ours) == len(attentions)
    for mine, theirs in zip(ours, attentions):
        assert_same(mine, theirs)
    assert_same(picked, logits[rows, positions])
    assert_same(by_mask, logits[ids == 4])


def drawn_batch(data, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, real): 1 to 4 sentences of 2 to 12 random ids, padded with 0; ``real`` marks the non-padding."""
    lengths = data.draw(st.lists(st.integers(2, 12), min_size=1, max_size=4))
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    real = torch.zeros(ids.shape, dtype=torch.bool)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=length,
                                                            max_size=length)))
        real[row, :length] = True
    return ids, real


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_batch_of_sentences_matches_transformers(tiny, data):
    ids, real = drawn_batch(data, tiny.config.vocab_size)
    mask = real.long()
    logits, attentions = reference(tiny, ids, mask)
    with torch.inference_mode():
        ours, weights = bert_pass.bert_pass(tiny, ids, mask, mask.bool(), output_attentions=True)
    assert_same(ours, logits[mask.bool()])
    for mine, theirs in zip(weights, attentions):
        keep = mask.bool()[:, None, :, None].expand_as(theirs)  # rows of padding queries are never read
        assert_same(mine[keep], theirs[keep])


def test_rows_nobody_reads_are_skipped_with_the_same_answer(tiny):
    ids = torch.tensor([[2, 10, 4, 20, 3, 0, 0], [2, 11, 12, 4, 13, 14, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1, 1]])
    logits, _ = reference(tiny, ids, mask)
    rows, positions = torch.tensor([1, 0, 1, 1]), torch.tensor([1, 2, 1, 6])  # an excluded token, chosen twice
    computed, selected = bert_pass.rows_to_compute(ids, mask, (rows, positions), output_attentions=False)
    assert computed.tolist() == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 13]  # padding left out; the chosen excluded kept
    assert computed[selected].tolist() == (rows * 7 + positions).tolist()
    with torch.inference_mode():
        picked, _ = bert_pass.bert_pass(tiny, ids, mask, (rows, positions))
        by_mask, _ = bert_pass.bert_pass(tiny, ids, mask, ids == 4)
    assert_same(picked, logits[rows, positions])
    assert_same(by_mask, logits[ids == 4])
    assert mask[1, 1] == 0  # the caller's mask is left as it was


def test_a_sentence_that_attends_to_nothing_keeps_every_row(tiny):
    ids = torch.tensor([[2, 10, 4, 3], [2, 11, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])  # every token of the second left out of the context
    chosen = ids == 4
    assert bert_pass.rows_to_compute(ids, mask, chosen, output_attentions=False)[0] is None
    assert bert_pass.rows_to_compute(ids, torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]), chosen, True)[0] is None
    logits, _ = reference(tiny, ids, mask)
    with torch.inference_mode():
        ours, _ = bert_pass.bert_pass(tiny, ids, mask, torch.tensor([[0, 0, 1, 0], [0, 1, 0, 0]]).bool())
    assert_same(ours, logits[torch.tensor([0, 1]), torch.tensor([2, 1])])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_padded_batch_with_exclusions_gives_the_chosen_logits(tiny, data):
    ids, real = drawn_batch(data, tiny.config.vocab_size)
    kept = data.draw(st.lists(st.sampled_from([0, 1, 1, 1]), min_size=real.numel(), max_size=real.numel()))
    mask = real.long() * torch.tensor(kept).view(real.shape)  # padding, and some tokens left out of the context
    chosen = real & torch.tensor(data.draw(st.lists(st.booleans(), min_size=real.numel(),
                                                    max_size=real.numel()))).view(real.shape)
    logits, _ = reference(tiny, ids, mask)
    with torch.inference_mode():
        ours, _ = bert_pass.bert_pass(tiny, ids, mask, chosen)
    assert_same(ours, logits[chosen])


def test_the_default_model_gives_transformers_answer(default_loaded):
    ids = torch.tensor([tokenize(default_loaded.tokenizer, "The capital of France is [MASK].").ids])
    logits, attentions = reference(default_loaded.model, ids)
    masked = ids == default_loaded.mask_token_id
    ours, weights = run(default_loaded, ids, None, masked, output_attentions=True)
    assert bert_pass.applies(default_loaded.model) is False  # outside inference mode: gradients are on
    with torch.inference_mode():
        assert bert_pass.applies(default_loaded.model)  # transformers' own recorder hooks do not count
    assert_same(ours, logits[masked], atol=1e-4)
    assert torch.softmax(ours, -1).sub(torch.softmax(logits[masked], -1)).abs().max() < 1e-6
    for mine, theirs in zip(weights, attentions):
        assert_same(mine, theirs, atol=1e-6)


def test_hooks_gradients_and_training_fall_back_to_transformers(tiny, tiny_loaded):
    with torch.inference_mode():
        assert bert_pass.applies(tiny)
        handle = tiny.bert.embeddings.register_forward_hook(lambda _m, _a, output: output * 0)
        try:
            assert not bert_pass.applies(tiny)
            zeroed, _ = model_output(tiny, torch.tensor([[2, 10, 4, 3]]))  # the hook took effect
        finally:
            handle.remove()
        assert bert_pass.applies(tiny)  # found clean again, and remembered as clean ...
        pre = tiny.cls.predictions.decoder.register_forward_pre_hook(lambda _m, args: None)
        try:
            assert not bert_pass.applies(tiny)  # ... until a hook is added anywhere, however deep
        finally:
            pre.remove()
        plain, _ = model_output(tiny, torch.tensor([[2, 10, 4, 3]]))
        assert not torch.allclose(zeroed, plain)
        tiny.train()
        try:
            assert not bert_pass.applies(tiny)
        finally:
            tiny.eval()
    assert not bert_pass.applies(tiny)  # gradients on: the trainer's pass is transformers'
    ids = torch.tensor([[2, 10, 4, 20, 3]])
    gates = head_gates(tiny_loaded, [(0, 0), (1, 1)])
    with heads_gated(tiny_loaded, gates), torch.inference_mode():
        assert not bert_pass.applies(tiny_loaded.model)
    gated, _ = run(tiny_loaded, ids, gates=gates)
    ungated, _ = run(tiny_loaded, ids)
    assert not torch.allclose(gated, ungated)  # switching heads off still changes the answer


def test_another_family_is_left_to_transformers():
    from transformers import RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40)
    with torch.inference_mode():
        assert not bert_pass.applies(RobertaForMaskedLM(config).eval())


def passes_of(loaded, texts: list[str], per_pass: int, seed: int = 0):
    """(input_ids, attention_mask, chosen) passes of ``per_pass`` tokenized texts, a few tokens of each chosen."""
    generator = torch.Generator().manual_seed(seed)
    passes = []
    for start in range(0, len(texts), per_pass):
        rows = [tokenize(loaded.tokenizer, text).ids for text in texts[start : start + per_pass]]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for row, sentence in enumerate(rows):
            ids[row, : len(sentence)], mask[row, : len(sentence)] = torch.tensor(sentence), 1
        chosen = mask.bool() & (torch.rand(ids.shape, generator=generator) < 0.2)
        chosen[:, 1] = True  # at least one a sentence
        passes.append((ids, mask, chosen))
    return passes


@pytest.mark.parametrize("head_rows", [2, 7, 10_000])
def test_passes_projected_together_get_the_logits_each_pass_gets_alone(default_loaded, monkeypatch, head_rows):
    from mlm_core.model import forward
    from mlm_core.resources import asset

    monkeypatch.setattr(forward, "HEAD_LOGITS_BYTES", head_rows * 4 * default_loaded.model.config.vocab_size)
    texts = [line for line in asset("demo_corpus.txt").read_text().splitlines() if line.strip()][:40]
    passes = passes_of(default_loaded, texts, per_pass=6) + passes_of(default_loaded, texts[:1], per_pass=1)
    alone = [run(default_loaded, ids, mask, chosen)[0] for ids, mask, chosen in passes]
    gathered = list(forward.chosen_logits(default_loaded, iter(passes)))
    assert [k for indexes, _ in gathered for k in indexes] == list(range(len(passes)))
    if head_rows == 10_000:
        assert len(gathered) == 1  # every pass's rows in one projection
    together = torch.cat([logits for _, logits in gathered])
    assert together.dtype == torch.float32 and together.shape == torch.cat(alone).shape
    start = 0
    for own in alone:  # bit for bit, but for a pass of one row: the library multiplies a lone row another way
        mine = together[start : start + len(own)]
        assert torch.equal(mine, own) if len(own) > 1 else torch.allclose(mine, own, atol=1e-5)
        start += len(own)


def test_passes_with_head_gates_go_one_by_one(tiny_loaded):
    from mlm_core.model.forward import chosen_logits

    passes = passes_of(tiny_loaded, ["the cat sat on the mat.", "the dog ran.", "a red tree!"], per_pass=2)
    gates = head_gates(tiny_loaded, [(0, 0)])
    gathered = list(chosen_logits(tiny_loaded, iter(passes), gates=gates))
    assert [indexes for indexes, _ in gathered] == [[0], [1]]
    for (ids, mask, chosen), (_, logits) in zip(passes, gathered):
        assert torch.equal(logits, run(tiny_loaded, ids, mask, chosen, gates=gates)[0])
    assert not torch.equal(gathered[0][1], run(tiny_loaded, *passes[0])[0])  # the gates took effect
