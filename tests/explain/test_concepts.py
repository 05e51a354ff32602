"""The masking formulas as numbers: X⊙M and α, W⊙M masks and their effect, a_ij = 0 both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.explain import concepts
from mlm_core.explain.attention import attention_maps
from mlm_core.explain.whatif import count_hooks
from mlm_core.masking.parameters import parameter_mask
from mlm_core.text.tokens import tokenize
from mlm_core.training.config import TrainConfig
from mlm_core.training.trainer import pruning_masks
from mlm_core.views.concept_charts import row_sums_bars, weight_mask_grid

SENTENCE = "the cat sat on the mat ."


# ----------------------------------------------------------------------------- X⊙M


def test_the_textbook_examples():
    one = concepts.mask_product(*concepts.ONE_D)
    assert one.product.tolist() == [0, 2, 0, 4, 0]
    assert one.alpha == pytest.approx(3 / 5)
    grid = concepts.mask_product(*concepts.GRID)
    assert grid.product.tolist() == [[1, 0, 3], [0, 5, 0], [7, 0, 9]]
    assert grid.alpha == pytest.approx(4 / 9)


@pytest.mark.parametrize("x, mask", [([1, 2], [0, 2]), ([1, 2, 3], [0, 1])])
def test_a_bad_mask_is_refused(x, mask):
    with pytest.raises(InputError):
        concepts.mask_product(x, mask)


def test_sentence_rows_are_zeroed_or_replaced_by_the_mask_embedding(tiny_loaded):
    result = concepts.sentence_input_mask(tiny_loaded, SENTENCE, rate=0.5, seed=1)
    hidden = list(result.positions)
    assert hidden and all(not tokenize(tiny_loaded.tokenizer, SENTENCE).special[p] for p in hidden)
    assert result.alpha == pytest.approx(len(hidden) / 7)  # 7 words, the specials are never eligible
    assert result.mask.tolist() == [0 if i in hidden else 1 for i in range(len(result.tokens))]
    assert not result.product[hidden].any()
    kept = [i for i in range(len(result.tokens)) if i not in hidden]
    np.testing.assert_array_equal(result.product[kept], result.x[kept])
    weights = tiny_loaded.model.get_input_embeddings().weight.detach()
    np.testing.assert_allclose(result.replaced[hidden], np.tile(result.mask_row, (len(hidden), 1)))
    np.testing.assert_allclose(result.mask_row, weights[tiny_loaded.mask_token_id, : concepts.SHOWN_DIMENSIONS])
    assert result.mask_row_norm == pytest.approx(float(weights[tiny_loaded.mask_token_id].norm()), rel=1e-5)
    assert [p.position for p in result.zeroed] == [p.position for p in result.with_mask_token] == hidden
    assert concepts.sentence_input_mask(tiny_loaded, SENTENCE, 0.5, 1).positions == result.positions  # seeded


def test_typed_masks_are_the_hidden_rows(tiny_loaded):
    result = concepts.sentence_input_mask(tiny_loaded, "the cat [MASK] on the mat", rate=0.9)
    assert result.positions == (3,)


def test_zeroing_a_row_is_not_the_mask_token(tiny_loaded):
    """The X⊙M pass zeroes the word embedding: the same as feeding the model a zero row as input embedding."""
    tokens = tokenize(tiny_loaded.tokenizer, SENTENCE)
    keep = np.ones(len(tokens), dtype=np.int64)
    keep[2] = 0
    zeroed = concepts._zeroed_row_logits(tiny_loaded, tokens.ids, keep, [2])
    with torch.no_grad():
        rows = tiny_loaded.model.get_input_embeddings()(torch.tensor([tokens.ids]))
        rows[0, 2] = 0
        reference = tiny_loaded.model(inputs_embeds=rows).logits[0, 2]
        masked = list(tokens.ids)
        masked[2] = tiny_loaded.mask_token_id
        with_mask = tiny_loaded.model(input_ids=torch.tensor([masked])).logits[0, 2]
    torch.testing.assert_close(zeroed[0], reference, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(zeroed[0], with_mask, atol=1e-3)  # [MASK] is a learned vector, not a zero row


# ----------------------------------------------------------------------------- W⊙M


@pytest.mark.parametrize("kind", ["magnitude", "random"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.99])
def test_parameter_masks_hide_exactly_the_share_asked(kind, sparsity):
    weight = torch.randn(37, 23, generator=torch.Generator().manual_seed(0))
    keep = parameter_mask(weight, sparsity, kind, seed=4)
    assert keep.shape == weight.shape and keep.dtype == torch.bool
    assert int((~keep).sum()) == round(sparsity * weight.numel())


def test_a_magnitude_mask_keeps_the_largest_weights():
    weight = torch.randn(20, 30, generator=torch.Generator().manual_seed(1))
    keep = parameter_mask(weight, 0.4, "magnitude")
    assert weight.abs()[keep].min() >= weight.abs()[~keep].max()
    assert parameter_mask(torch.tensor([[3.0, -1.0], [0.5, 2.0]]), 0.5).tolist() == [[True, False], [False, True]]


def test_a_random_mask_is_seeded():
    weight = torch.randn(20, 30)
    one, again, other = (parameter_mask(weight, 0.5, "random", seed=s) for s in (7, 7, 8))
    assert torch.equal(one, again) and not torch.equal(one, other)
    assert torch.equal(parameter_mask(-weight, 0.5, "random", seed=7), one)  # the values play no part


@pytest.mark.parametrize("kind, sparsity", [("lottery", 0.5), ("random", 1.0), ("random", -0.1), ("random", True)])
def test_bad_parameter_masks_are_refused(kind, sparsity):
    with pytest.raises(InputError):
        parameter_mask(torch.ones(3, 3), sparsity, kind)


def test_mask_grid_gives_the_share_kept_per_block():
    keep = np.ones((100, 60))
    keep[:50, :30] = 0
    grid = concepts.mask_grid(keep, cells=2)
    assert grid.tolist() == [[0.0, 1.0], [1.0, 1.0]]
    assert concepts.mask_grid(np.ones((3, 400))).shape == (3, concepts.GRID_CELLS)
    figure = weight_mask_grid(grid, (100, 60), "M on <b>w</b>")
    assert figure.layout.title.text == "M on &lt;b&gt;w&lt;/b&gt;"


def test_parameter_mask_effect_leaves_the_shared_model_unchanged(tiny_loaded):
    names = concepts.weight_matrices(tiny_loaded)
    assert names and all(name.endswith(".weight") for name in names)
    before = {name: tensor.clone() for name, tensor in tiny_loaded.model.state_dict().items()}
    hooks = count_hooks(tiny_loaded.model)
    effect = concepts.parameter_mask_effect(tiny_loaded, "the cat [MASK] on the mat", names[-1], 0.9, "random", 3)
    assert effect.removed == round(0.9 * effect.total)
    assert effect.grid.mean() == pytest.approx(1 - effect.removed / effect.total, abs=0.02)  # blocks differ in size
    assert [p.position for p in effect.before] == [p.position for p in effect.after] == [3]
    assert [c.prob for c in effect.before[0].top] != [c.prob for c in effect.after[0].top]
    after = tiny_loaded.model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert count_hooks(tiny_loaded.model) == hooks
    with pytest.raises(NothingToMaskError):
        concepts.parameter_mask_effect(tiny_loaded, SENTENCE, names[-1], 0.5)
    with pytest.raises(InputError, match="not one of this model's"):
        concepts.parameter_mask_effect(tiny_loaded, "the [MASK]", "bert.embeddings.word_embeddings.weight", 0.5)


def test_training_parameter_masks(tiny_loaded):
    model = tiny_loaded.model
    random = pruning_masks(model, 0.3, "random", seed=2)
    assert random and all(int((~m).sum()) == round(0.3 * m.numel()) for m in random.values())
    assert all(torch.equal(m, pruning_masks(model, 0.3, "random", seed=2)[n]) for n, m in random.items())
    magnitude = pruning_masks(model, 0.3, "magnitude")
    assert magnitude.keys() == random.keys()
    assert TrainConfig().prune_mask == "magnitude"  # a stored run config without it pruned by magnitude
    assert TrainConfig.from_dict({"prune_sparsity": 0.2}).prune_mask == "magnitude"
    with pytest.raises(InputError):
        TrainConfig(prune_mask="lottery")


# ----------------------------------------------------------------------------- a_ij = 0


def test_exclusion_positions_by_word_and_position(tiny_loaded):
    tokens = tokenize(tiny_loaded.tokenizer, SENTENCE)
    assert concepts.exclusion_positions(tokens, ["the", "3"]) == [1, 3, 5]
    assert concepts.exclusion_positions(tokens, ["THE"]) == [1, 5]
    for items, message in ((["dog"], "No word of the text is 'dog'"), (["0"], "not a word"), (["99"], "not a word"),
                           ([""], "Name the words"), ([str(i) for i in range(1, 8)], "leaves nothing")):
        with pytest.raises(InputError, match=message):
            concepts.exclusion_positions(tokens, items)


def test_keys_only_zeroes_columns_and_rows_still_sum_to_one(tiny_loaded):
    comparison = concepts.attention_mask_comparison(tiny_loaded, SENTENCE, [2, 5])
    keys = comparison.keys
    assert not keys[..., [2, 5]].any()
    np.testing.assert_allclose(keys.sum(-1), 1.0, atol=1e-5)
    # Layer 0 reads the same inputs before and after: each row is the old one renormalised over the tokens left.
    before = comparison.before[0]
    expected = before.copy()
    expected[..., [2, 5]] = 0
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(keys[0], expected, atol=1e-5)


def test_keys_and_queries_zero_the_removed_rows_too(tiny_loaded):
    comparison = concepts.attention_mask_comparison(tiny_loaded, SENTENCE, [2, 5])
    both = comparison.after("keys-and-queries")
    assert not both[..., [2, 5], :].any() and not both[..., [2, 5]].any()
    others = [i for i in range(len(comparison.tokens)) if i not in (2, 5)]
    np.testing.assert_allclose(both[..., others, :].sum(-1), 1.0, atol=1e-5)
    # Layer 0: the other rows are the keys-only rows; above it the removed tokens' zero output changes them.
    np.testing.assert_allclose(both[0][..., others, :], comparison.keys[0][..., others, :], atol=1e-6)
    assert not np.allclose(both[-1], comparison.keys[-1], atol=1e-4)
    assert comparison.removed == tuple(i in (2, 5) for i in range(len(comparison.tokens)))
    figure = row_sums_bars(both[-1, 0].sum(-1), comparison.keys[-1, 0].sum(-1), comparison.tokens)
    assert list(figure.data[0].y[[2, 5]]) == [0.0, 0.0]


def test_attention_hooks_are_removed_and_bad_modes_refused(tiny_loaded):
    hooks = count_hooks(tiny_loaded.model)
    ids = tokenize(tiny_loaded.tokenizer, SENTENCE).ids
    removed = [i == 3 for i in range(len(ids))]
    attention_maps(tiny_loaded, ids, removed, "keys-and-queries")
    assert count_hooks(tiny_loaded.model) == hooks
    plain = attention_maps(tiny_loaded, ids)
    np.testing.assert_allclose(plain.sum(-1), 1.0, atol=1e-5)  # nothing left behind: the next pass is normal
    with pytest.raises(InputError, match="exclusion mode"):
        attention_maps(tiny_loaded, ids, removed, "rows")
    with pytest.raises(InputError, match="one entry per token"):
        attention_maps(tiny_loaded, ids, [True], "keys-and-queries")


def test_keys_and_queries_is_refused_where_layers_share_their_attention(tiny_tokenizer):
    from transformers import AlbertConfig, AlbertForMaskedLM

    from mlm_core.model.loading import LoadedModel

    config = AlbertConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, embedding_size=16, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                          attn_implementation="eager")
    albert = LoadedModel("albert", AlbertForMaskedLM(config).eval(), tiny_tokenizer, torch.device("cpu"))
    ids = tokenize(tiny_tokenizer, SENTENCE).ids
    removed = [i == 2 for i in range(len(ids))]
    assert not attention_maps(albert, ids, removed, "keys")[..., 2].any()  # keys only works for every family
    with pytest.raises(InputError, match="albert shares one module across its layers: exclude keys only"):
        attention_maps(albert, ids, removed, "keys-and-queries")
