"""mlm_core.explain.attribution: completeness, references computed with plain autograd, hook hygiene,
bounded cost, bad input and the CLI ``attribute`` command."""

from __future__ import annotations

import argparse
import threading

import numpy as np
import pytest
import torch

from mlm_core.cli.explain import format_attribute, run_attribute
from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.explain import attribution as xt
from mlm_core.explain.predict import predict
from mlm_core.explain.whatif import count_hooks
from mlm_core.model.forward import forward
from mlm_core.text.tokens import tokenize

TEXT = "the cat sat on the [MASK] , the dog ran ."


@pytest.fixture(scope="module")
def tokens(tiny_loaded):
    return tokenize(tiny_loaded.tokenizer, TEXT)


@pytest.fixture(scope="module")
def mask(tokens):
    return tokens.mask_positions[0]


def prob_and_grad(loaded, ids, position, target, embeds):
    embeds = embeds.detach().requires_grad_(True)
    prob = torch.softmax(loaded.model(inputs_embeds=embeds).logits[0, position], -1)[target]
    (grad,) = torch.autograd.grad(prob, embeds)
    return float(prob.detach()), grad[0]


def test_ig_completeness(tiny_loaded, tokens, mask):
    result = xt.attribute(tiny_loaded, tokens.ids, mask, steps=64)
    difference = result.target_prob - result.baseline_prob
    assert result.scores.sum() - difference == pytest.approx(result.delta, abs=1e-5)
    assert abs(result.delta) <= 0.05 * abs(difference) + 1e-6
    assert result.steps == 64 and result.baseline == "pad" and result.internal_batch_size >= 1
    special = [i for i, t in enumerate(tokens.ids) if t in set(tiny_loaded.tokenizer.all_special_ids)]
    assert np.all(result.scores[special] == 0.0)  # kept in the baseline: [CLS], [SEP] and the mask


def test_ig_matches_a_plain_riemann_sum(tiny_loaded, tokens, mask):
    result = xt.attribute(tiny_loaded, tokens.ids, mask, steps=64)
    embedding = tiny_loaded.model.get_input_embeddings()
    ids = torch.tensor([tokens.ids])
    keep = [t in set(tiny_loaded.tokenizer.all_special_ids) for t in tokens.ids]
    base = torch.tensor([[t if k else tiny_loaded.tokenizer.pad_token_id for t, k in zip(tokens.ids, keep)]])
    with torch.no_grad():
        x, b = embedding(ids), embedding(base)
    n = 400
    alphas = ((torch.arange(n) + 0.5) / n)[:, None, None]  # midpoint rule, all steps in one batch
    path = (b + alphas * (x - b)).requires_grad_(True)  # (n, T, D)
    probs = torch.softmax(tiny_loaded.model(inputs_embeds=path).logits[:, mask], -1)[:, result.target_id]
    (grads,) = torch.autograd.grad(probs.sum(), path)
    expected = ((x - b)[0] * grads.mean(0)).sum(-1).numpy()
    np.testing.assert_allclose(result.scores, expected, atol=2e-4 * max(1.0, np.abs(expected).max()))


def test_saliency_and_input_x_gradient_match_autograd(tiny_loaded, tokens, mask):
    saliency = xt.attribute(tiny_loaded, tokens.ids, mask, method="saliency")
    ixg = xt.attribute(tiny_loaded, tokens.ids, mask, method="input_x_gradient")
    with torch.no_grad():
        embeds = tiny_loaded.model.get_input_embeddings()(torch.tensor([tokens.ids]))
    prob, grad = prob_and_grad(tiny_loaded, tokens.ids, mask, saliency.target_id, embeds)
    np.testing.assert_allclose(saliency.scores, grad.norm(dim=-1).numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(ixg.scores, (embeds[0] * grad).sum(-1).numpy(), rtol=1e-4, atol=1e-7)
    assert saliency.target_prob == pytest.approx(prob, abs=1e-6)
    assert np.all(saliency.scores >= 0) and saliency.delta is None and saliency.steps is None


def test_excluded_tokens_get_no_ig_attribution(tiny_loaded, tokens, mask):
    exclude = [t in (",", ".") for t in tokens.tokens]
    result = xt.attribute(tiny_loaded, tokens.ids, mask, steps=32, attention_exclude=exclude)
    reference = predict(tiny_loaded, tokens.ids, [mask], attention_exclude=exclude).predictions[0]
    assert result.target_prob == pytest.approx(reference.top[0].prob, abs=1e-6)
    assert np.abs(result.scores[np.array(exclude)]).max() < 1e-7  # nobody attends to them
    with pytest.raises(InputError, match="one entry per token"):
        xt.attribute(tiny_loaded, tokens.ids, mask, attention_exclude=[True])


def test_default_target_is_the_first_guess(tiny_loaded, tokens, mask):
    result = xt.attribute(tiny_loaded, tokens.ids, mask, method="saliency")
    guess = predict(tiny_loaded, tokens.ids, [mask], top_k=1).predictions[0].top[0]
    assert result.target_id == guess.token_id and result.target_token == guess.token
    assert result.target_prob == pytest.approx(guess.prob, abs=1e-6)
    assert xt.attribute(tiny_loaded, tokens.ids, None, method="saliency").position == mask


def test_typed_targets(tiny_loaded, tokens, mask):
    vocab = tiny_loaded.tokenizer.get_vocab()
    assert xt.target_id_for(tiny_loaded, "cat") == vocab["cat"]
    assert xt.target_id_for(tiny_loaded, " Dog ") == vocab["dog"]
    assert xt.target_id_for(tiny_loaded, "##s") == vocab["##s"]
    result = xt.attribute(tiny_loaded, tokens.ids, mask, target="mat", method="input_x_gradient")
    assert result.target_token == "mat"
    with pytest.raises(InputError, match="not one token"):
        xt.target_id_for(tiny_loaded, "cats")
    with pytest.raises(InputError, match="Type the token"):
        xt.target_id_for(tiny_loaded, "   ")
    with pytest.raises(InputError, match="outside the vocabulary"):
        xt.target_id_for(tiny_loaded, 10_000)


def test_bad_input_gives_a_message(tiny_loaded, tokens, mask):
    plain = tokenize(tiny_loaded.tokenizer, "the cat sat")
    with pytest.raises(NothingToMaskError, match="No masked position"):
        xt.attribute(tiny_loaded, plain.ids)
    with pytest.raises(InputError, match="steps"):
        xt.attribute(tiny_loaded, tokens.ids, mask, steps=0)
    with pytest.raises(InputError, match="steps"):
        xt.attribute(tiny_loaded, tokens.ids, mask, steps=xt.MAX_STEPS + 1)
    with pytest.raises(InputError, match="method"):
        xt.attribute(tiny_loaded, tokens.ids, mask, method="shap")
    with pytest.raises(InputError, match="baseline"):
        xt.attribute(tiny_loaded, tokens.ids, mask, baseline="zeros")
    with pytest.raises(InputError, match="outside the text"):
        xt.attribute(tiny_loaded, tokens.ids, 0)
    long = tokenize(tiny_loaded.tokenizer, "the cat sat . " * 20 + "[MASK]")
    with pytest.raises(InputError, match="Shorten"):
        xt.attribute(tiny_loaded, long.ids)


def test_batches_are_bounded(tiny_loaded, tokens, mask, monkeypatch):
    result = xt.attribute(tiny_loaded, tokens.ids, mask, steps=40, internal_batch_size=8)
    assert result.internal_batch_size == 8
    default = xt.attribute(tiny_loaded, tokens.ids, mask, steps=40)
    assert default.internal_batch_size == 40  # short input: every step in one pass
    np.testing.assert_allclose(result.scores, default.scores, atol=1e-6)
    monkeypatch.setattr(xt, "TOKEN_BUDGET", 4 * len(tokens))
    capped = xt.attribute(tiny_loaded, tokens.ids, mask, steps=40)
    assert capped.internal_batch_size == 4  # at most TOKEN_BUDGET tokens per pass
    np.testing.assert_allclose(capped.scores, default.scores, atol=1e-6)


def test_same_scores_without_the_position_only_projection(tiny_loaded, tokens, mask, monkeypatch):
    fast = xt.attribute(tiny_loaded, tokens.ids, mask, steps=16)
    monkeypatch.setattr(tiny_loaded.model, "get_output_embeddings", lambda: None)
    full = xt.attribute(tiny_loaded, tokens.ids, mask, steps=16)
    np.testing.assert_allclose(fast.scores, full.scores, atol=1e-6)
    assert fast.target_id == full.target_id
    with pytest.raises(InputError, match="internal_batch_size"):
        xt.attribute(tiny_loaded, tokens.ids, mask, internal_batch_size=0)


def test_no_hooks_left_behind(tiny_loaded, tokens, mask):
    forward(tiny_loaded, tokens.ids, output_attentions=True)  # transformers installs its recorders once
    before = count_hooks(tiny_loaded.model)
    for method in xt.METHODS:
        xt.attribute(tiny_loaded, tokens.ids, mask, method=method, steps=8)
        assert count_hooks(tiny_loaded.model) == before


def test_no_hooks_left_behind_after_an_exception(tiny_loaded, tokens, mask):
    layer = tiny_loaded.model.bert.encoder.layer[1]

    def explode(*_):
        if torch.is_grad_enabled():  # only inside captum's gradient pass
            raise RuntimeError("boom")

    handle = layer.register_forward_hook(explode)
    try:
        before = count_hooks(tiny_loaded.model)
        for method in xt.METHODS:
            with pytest.raises(RuntimeError, match="boom"):
                xt.attribute(tiny_loaded, tokens.ids, mask, method=method, steps=4)
            assert count_hooks(tiny_loaded.model) == before
    finally:
        handle.remove()


def test_hooks_a_failed_captum_call_leaves_are_removed(tiny_loaded, tokens, mask, monkeypatch):
    from captum.attr import LayerIntegratedGradients

    def leaky(self, *args, **kwargs):
        self.layer.register_forward_hook(lambda *a: None)  # a hook captum forgot, then a failure
        raise RuntimeError("captum failed")

    monkeypatch.setattr(LayerIntegratedGradients, "attribute", leaky)
    before = count_hooks(tiny_loaded.model)
    with pytest.raises(RuntimeError, match="captum failed"):
        xt.attribute(tiny_loaded, tokens.ids, mask)
    assert count_hooks(tiny_loaded.model) == before


def test_concurrent_calls_give_the_sequential_answer(tiny_loaded, tokens, mask):
    expected = xt.attribute(tiny_loaded, tokens.ids, mask, steps=16).scores
    results = []

    def work():
        results.append(xt.attribute(tiny_loaded, tokens.ids, mask, steps=16).scores)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for scores in results:
        np.testing.assert_allclose(scores, expected, atol=1e-7)


# --------------------------------------------------------------------------- CLI


def attribute_args(model_dir, text=TEXT, **kw):
    base = dict(text=text, model=str(model_dir), device="cpu", position=None, target=None, method="ig", steps=16,
                baseline="pad", words=False, json=True)
    return argparse.Namespace(**{**base, **kw})


def test_cli_attribute(tiny_model_dir, tokens, mask):
    record = run_attribute(attribute_args(tiny_model_dir))
    assert record["tokens"] == list(tokens.tokens) and len(record["scores"]) == len(tokens)
    assert record["position"] == mask and record["delta"] is not None
    assert "convergence delta" in format_attribute(record)
    clicked = run_attribute(attribute_args(tiny_model_dir, text="the cat sat on the mat .", position=2,
                                           target="dog", method="saliency"))
    assert clicked["original_token"] == "cat" and clicked["tokens"][2] == "[MASK]" and clicked["target"] == "dog"
    assert "masked token was 'cat'" in format_attribute(clicked)
    words = run_attribute(attribute_args(tiny_model_dir, text="the cats sat on the [MASK] .", words=True))
    assert "cats" in words["tokens"] and len(words["scores"]) == len(words["tokens"])


def test_cli_attribute_bad_input(tiny_model_dir):
    with pytest.raises(NothingToMaskError):
        run_attribute(attribute_args(tiny_model_dir, text=""))
    with pytest.raises(NothingToMaskError):
        run_attribute(attribute_args(tiny_model_dir, text="the cat sat ."))
    with pytest.raises(InputError):
        run_attribute(attribute_args(tiny_model_dir, text="the cat sat .", position=0))
    with pytest.raises(InputError):
        run_attribute(attribute_args(tiny_model_dir, position=40))


# --------------------------------------------------------------------------- default model


@pytest.mark.integration
def test_default_model_30_tokens_32_steps(default_loaded):
    text = ("The old keeper walked slowly along the rocky shore every evening , watching the ships sail past "
            "the [MASK] on their way to distant ports .")
    ids = tokenize(default_loaded.tokenizer, text).ids
    assert 28 <= len(ids) <= 32
    xt.attribute(default_loaded, ids, steps=4)  # warm-up
    result = xt.attribute(default_loaded, ids, steps=32)
    assert result.scores.sum() - (result.target_prob - result.baseline_prob) == pytest.approx(result.delta, abs=1e-5)
    assert result.seconds < 30  # ~1 s on an idle 2-core CPU; generous for a busy CI machine


def test_attribution_on_another_architecture(tiny_tokenizer, tokens, mask):
    """DistilBERT: another embedding layer and vocabulary projection; completeness still holds."""
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    from mlm_core.model.loading import LoadedModel

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(tiny_tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=64, attn_implementation="eager")
    loaded = LoadedModel("tiny-distilbert", DistilBertForMaskedLM(config).eval(), tiny_tokenizer, torch.device("cpu"))
    before = count_hooks(loaded.model)
    result = xt.attribute(loaded, tokens.ids, mask, steps=64)
    assert result.scores.sum() - (result.target_prob - result.baseline_prob) == pytest.approx(result.delta, abs=1e-5)
    with torch.no_grad():
        probs = torch.softmax(loaded.model(input_ids=torch.tensor([tokens.ids])).logits[0, mask], -1)
    assert result.target_prob == pytest.approx(float(probs[result.target_id]), abs=1e-6)
    assert count_hooks(loaded.model) == before
