"""mlm_core.explain.whatif: exclusion, head masking and pruning against references; no hook or
weight change is ever left on the shared model, also after an exception."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.explain import whatif as xi
from mlm_core.explain.predict import predict
from mlm_core.model import forward as fw
from mlm_core.model.forward import forward
from mlm_core.model.layout import as_it_comes
from mlm_core.text.tokens import tokenize

TEXT = "the cat sat on the [MASK] , the dog ran ."


@pytest.fixture(scope="module")
def tokens(tiny_loaded):
    return tokenize(tiny_loaded.tokenizer, TEXT)


@pytest.fixture(scope="module")
def mask(tokens):
    return tokens.mask_positions[0]


def logits_with_gates(loaded, ids, off):
    with fw.heads_gated(loaded, fw.head_gates(loaded, off)), torch.inference_mode():
        return loaded.model(input_ids=torch.tensor([list(ids)])).logits[0]


def plain_logits(loaded, ids):
    return forward(loaded, ids)[0]


def test_masking_no_head_changes_nothing(tiny_loaded, tokens, mask):
    assert torch.equal(logits_with_gates(tiny_loaded, tokens.ids, []), plain_logits(tiny_loaded, tokens.ids))
    (whatif,) = xi.mask_heads(tiny_loaded, tokens.ids, [mask], [])
    assert whatif.change == 0.0 and whatif.before == whatif.after


def test_masking_every_head_of_a_layer_changes_outputs(tiny_loaded, tokens, mask):
    for layer in range(tiny_loaded.num_layers):
        off = [(layer, h) for h in range(tiny_loaded.num_heads)]
        changed = logits_with_gates(tiny_loaded, tokens.ids, off)
        assert not torch.allclose(changed, plain_logits(tiny_loaded, tokens.ids), atol=1e-4)
    (whatif,) = xi.mask_heads(tiny_loaded, tokens.ids, [mask], [(0, 0), (0, 1)])
    assert whatif.reference_after != whatif.reference_before


def test_head_masking_matches_zeroed_value_weights(tiny_loaded, tokens):
    """Reference: a head whose value projection is zero outputs zero, exactly what head_mask did."""
    layer, head = 1, 0
    reference = copy.deepcopy(tiny_loaded.model)
    size = reference.config.hidden_size // reference.config.num_attention_heads
    value = reference.bert.encoder.layer[layer].attention.self.value
    with torch.no_grad():
        value.weight[head * size : (head + 1) * size] = 0
        value.bias[head * size : (head + 1) * size] = 0
        expected = reference(input_ids=torch.tensor([tokens.ids])).logits[0]
    got = logits_with_gates(tiny_loaded, tokens.ids, [(layer, head)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_head_importance_matches_one_head_at_a_time(tiny_loaded, tokens, mask):
    drops, p_base, reference = xi.head_importance(tiny_loaded, tokens.ids, mask)
    assert drops.shape == (tiny_loaded.num_layers, tiny_loaded.num_heads)
    for layer in range(tiny_loaded.num_layers):
        for head in range(tiny_loaded.num_heads):
            probs = torch.softmax(logits_with_gates(tiny_loaded, tokens.ids, [(layer, head)])[mask], -1)
            assert drops[layer, head] == pytest.approx(p_base - float(probs[reference]), abs=1e-6)
    assert np.abs(drops).max() > 0


def test_no_hooks_left_behind_even_after_an_exception(tiny_loaded, tokens, mask):
    forward(tiny_loaded, tokens.ids, output_attentions=True)  # transformers installs its recorders once
    before = xi.count_hooks(tiny_loaded.model)
    xi.mask_heads(tiny_loaded, tokens.ids, [mask], [(0, 1)])
    xi.head_importance(tiny_loaded, tokens.ids, mask)
    xi.prune(tiny_loaded, tokens.ids, [mask], 0.5)
    assert xi.count_hooks(tiny_loaded.model) == before
    gates = fw.head_gates(tiny_loaded, [(0, 0)])
    with pytest.raises(RuntimeError, match="boom"), fw.heads_gated(tiny_loaded, gates):
        assert xi.count_hooks(tiny_loaded.model) == before + tiny_loaded.num_layers
        raise RuntimeError("boom")
    assert xi.count_hooks(tiny_loaded.model) == before
    assert torch.equal(logits_with_gates(tiny_loaded, tokens.ids, []), plain_logits(tiny_loaded, tokens.ids))


def test_other_sessions_never_see_the_hooks(tiny_loaded, tokens, mask):
    expected = plain_logits(tiny_loaded, tokens.ids)
    every_head = [(la, h) for la in range(tiny_loaded.num_layers) for h in range(tiny_loaded.num_heads)]
    failures = []

    def masker():
        for _ in range(10):
            xi.mask_heads(tiny_loaded, tokens.ids, [mask], every_head)

    def reader():
        for _ in range(20):
            if not torch.equal(plain_logits(tiny_loaded, tokens.ids), expected):
                failures.append("changed")

    threads = [threading.Thread(target=f) for f in (masker, reader, masker, reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_bad_heads_and_positions(tiny_loaded, tokens, mask):
    with pytest.raises(InputError, match="do not exist"):
        xi.mask_heads(tiny_loaded, tokens.ids, [mask], [(5, 0)])
    with pytest.raises(NothingToMaskError):
        xi.mask_heads(tiny_loaded, tokens.ids, [], [(0, 0)])
    with pytest.raises(InputError):
        xi.mask_heads(tiny_loaded, tokens.ids, [0], [(0, 0)])
    with pytest.raises(InputError):
        fw.heads_gated(tiny_loaded, torch.ones(1, 3, 3)).__enter__()
    long = tokenize(tiny_loaded.tokenizer, "the cat sat . " * 20 + "[MASK]")
    with pytest.raises(InputError, match="Shorten"):
        xi.mask_heads(tiny_loaded, long.ids, long.mask_positions, [])


# --------------------------------------------------------------------------- exclusion


def test_exclusion_rules(tokens, mask):
    stop = xi.exclusion(tokens, rules=["stopword"], keep=[mask])
    picked = [tokens.tokens[i] for i, e in enumerate(stop) if e]
    assert "the" in picked and "cat" not in picked and "[MASK]" not in picked
    punct = xi.exclusion(tokens, rules=["punctuation"])
    assert [tokens.tokens[i] for i, e in enumerate(punct) if e] == [",", "."]
    chosen = xi.exclusion(tokens, positions=[2, 0], keep=[mask])
    assert [i for i, e in enumerate(chosen) if e] == [2]  # [CLS] is never excluded
    assert not any(xi.exclusion(tokens, positions=[mask], keep=[mask]))
    with pytest.raises(InputError, match="Unknown rule"):
        xi.exclusion(tokens, rules=["adjectives"])
    with pytest.raises(InputError):
        xi.exclusion(tokens, positions=[99])


def test_exclusion_matches_predict_with_attention_exclude(tiny_loaded, tokens, mask):
    exclude = xi.exclusion(tokens, rules=["stopword", "punctuation"], keep=[mask])
    (whatif,) = xi.exclude_tokens(tiny_loaded, tokens.ids, [mask], exclude, top_k=5)
    reference = predict(tiny_loaded, tokens.ids, [mask], attention_exclude=exclude, top_k=5).predictions[0]
    plain = predict(tiny_loaded, tokens.ids, [mask], top_k=5).predictions[0]
    assert [c.token_id for c in whatif.after.top] == [c.token_id for c in reference.top]
    assert whatif.reference_id == plain.top[0].token_id  # typed mask: follow the first guess
    assert whatif.reference_after == pytest.approx(
        dict((c.token_id, c.prob) for c in reference.top).get(whatif.reference_id, whatif.reference_after)
    )
    assert whatif.reference_before == pytest.approx(plain.top[0].prob, abs=1e-6)
    assert whatif.change != 0.0
    with pytest.raises(InputError, match="Nothing is excluded"):
        xi.exclude_tokens(tiny_loaded, tokens.ids, [mask], [False] * len(tokens))


def test_known_original_is_followed(tiny_loaded, tokens, mask):
    cat = tokens.tokens.index("cat")
    ids = list(tokens.ids)
    ids[cat] = tiny_loaded.mask_token_id
    whatifs = xi.mask_heads(tiny_loaded, ids, [cat, mask], [(1, 1)], originals={cat: tokens.ids[cat]})
    assert whatifs[0].reference_token == "cat"
    assert set(whatifs[0].as_dict()) >= {"reference_before", "reference_after", "top_before", "top_after"}


# --------------------------------------------------------------------------- pruning


def test_pruning_never_changes_the_shared_model(tiny_loaded, tokens, mask):
    before = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    report = xi.prune(tiny_loaded, tokens.ids, [mask], 0.6, "global")
    assert all(torch.equal(before[k], v) for k, v in tiny_loaded.model.state_dict().items())
    assert report.achieved == pytest.approx(0.6, abs=0.01)
    assert report.whatifs[0].change != 0.0


def test_pruning_matches_pruned_copy(tiny_loaded, tokens, mask):
    """Reference: torch.nn.utils.prune on a deep copy gives the same prediction."""
    from torch.nn.utils import prune as torch_prune

    report = xi.prune(tiny_loaded, tokens.ids, [mask], 0.5, "layer", layers=[1])
    reference = as_it_comes(tiny_loaded.model)  # torch's prune needs torch's own layout (model.layout)
    for module in reference.bert.encoder.layer[1].modules():
        if isinstance(module, torch.nn.Linear):
            torch_prune.l1_unstructured(module, "weight", amount=0.5)
    with torch.no_grad():
        probs = torch.softmax(reference(input_ids=torch.tensor([tokens.ids])).logits[0, mask], -1)
    assert report.whatifs[0].reference_after == pytest.approx(float(probs[report.whatifs[0].reference_id]), abs=1e-5)
    assert report.layers == (1,)


def test_zero_sparsity_changes_nothing_and_scopes_differ(tiny_loaded, tokens, mask):
    (same,) = xi.prune(tiny_loaded, tokens.ids, [mask], 0.0).whatifs
    assert same.change == 0.0
    weights = xi.prunable_weights(tiny_loaded)
    per_matrix, pruned_l, total = xi.pruned_weights(weights, 0.5, "layer")
    globally, pruned_g, _ = xi.pruned_weights(weights, 0.5, "global")
    assert pruned_l == pytest.approx(total / 2, abs=len(weights)) and pruned_g == pytest.approx(total / 2, abs=2)
    for w in per_matrix.values():
        assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.01)  # each matrix at its own threshold
    assert any(abs(float((w == 0).float().mean()) - 0.5) > 0.01 for w in globally.values())


def test_bad_pruning_input(tiny_loaded, tokens, mask):
    with pytest.raises(InputError, match="Sparsity"):
        xi.prune(tiny_loaded, tokens.ids, [mask], 1.5)
    with pytest.raises(InputError, match="scope"):
        xi.prune(tiny_loaded, tokens.ids, [mask], 0.5, "row")
    with pytest.raises(InputError, match="layers"):
        xi.prune(tiny_loaded, tokens.ids, [mask], 0.5, layers=[7])


def test_a_strategys_exclusion_stays_before_and_after(tiny_loaded, tokens, mask):
    base = [t in (",", ".") for t in tokens.tokens]
    (whatif,) = xi.mask_heads(tiny_loaded, tokens.ids, [mask], [(0, 0)], attention_exclude=base)
    reference = predict(tiny_loaded, tokens.ids, [mask], attention_exclude=base).predictions[0]
    assert whatif.reference_before == pytest.approx(reference.top[0].prob, abs=1e-6)
    drops, p_base, _ = xi.head_importance(tiny_loaded, tokens.ids, mask, attention_exclude=base)
    assert p_base == pytest.approx(reference.top[0].prob, abs=1e-6)
    report = xi.prune(tiny_loaded, tokens.ids, [mask], 0.0, attention_exclude=base)
    assert report.whatifs[0].reference_after == pytest.approx(reference.top[0].prob, abs=1e-6)
    with pytest.raises(InputError, match="one entry per token"):
        xi.mask_heads(tiny_loaded, tokens.ids, [mask], [], attention_exclude=[True])


@pytest.fixture(scope="module")
def tiny_distilbert(tiny_tokenizer):
    """A DistilBERT (its attention ends in its own output projection) sharing the tiny vocabulary."""
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    from mlm_core.model.loading import LoadedModel

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(tiny_tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=64, attn_implementation="eager")
    model = DistilBertForMaskedLM(config).eval()
    return LoadedModel(name="tiny-distilbert", model=model, tokenizer=tiny_tokenizer, device=torch.device("cpu"))


def test_head_masking_on_a_model_with_its_own_output_projection(tiny_distilbert, tokens, mask):
    layer, head = 0, 1
    reference = copy.deepcopy(tiny_distilbert.model)
    size = reference.config.dim // reference.config.n_heads
    value = reference.distilbert.transformer.layer[layer].attention.v_lin
    with torch.no_grad():
        value.weight[head * size : (head + 1) * size] = 0
        value.bias[head * size : (head + 1) * size] = 0
        expected = reference(input_ids=torch.tensor([tokens.ids])).logits[0]
    before = xi.count_hooks(tiny_distilbert.model)
    got = logits_with_gates(tiny_distilbert, tokens.ids, [(layer, head)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert xi.count_hooks(tiny_distilbert.model) == before
    report = xi.prune(tiny_distilbert, tokens.ids, [mask], 0.5, "global")
    assert report.total == sum(m.weight.numel() for m in tiny_distilbert.model.distilbert.transformer.modules()
                               if isinstance(m, torch.nn.Linear))
