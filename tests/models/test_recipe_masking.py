"""The default-model recipe's masking: BERT's uniform choice by default, and a content-word boost that
shifts which tokens are chosen without changing how many."""

import pytest
import torch
from transformers import AutoTokenizer

from mlm_core.model.default_model import base_encoder_dir
from recipes.default_model.train import content_weights, mask_tokens


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(base_encoder_dir())


def batch(tokenizer, copies: int = 500):
    ids = tokenizer(["The capital of France is Paris, and it rained all day in the old city."] * copies,
                    return_tensors="pt").input_ids
    return ids, torch.isin(ids, torch.tensor(tokenizer.all_special_ids))


def test_content_words_and_their_pieces_are_boosted_and_nothing_else(tokenizer):
    weights = content_weights(tokenizer, 3.0)
    weight = {token: float(weights[tokenizer.convert_tokens_to_ids(token)])
              for token in ("paris", "umbrella", "##ing", "the", "of", ",", "2019", "[MASK]", "[CLS]")}
    assert weight == {"paris": 3.0, "umbrella": 3.0, "##ing": 3.0, "the": 1.0, "of": 1.0, ",": 1.0, "2019": 1.0,
                      "[MASK]": 1.0, "[CLS]": 1.0}


def test_the_boost_keeps_the_rate_and_shifts_the_choice_to_content_words(tokenizer):
    ids, special = batch(tokenizer)
    weights = content_weights(tokenizer, 3.0)
    shares = {}
    for boost in (None, weights):
        _, labels = mask_tokens(ids, special, 0.2, tokenizer.mask_token_id, 999, len(tokenizer),
                                torch.Generator().manual_seed(0), boost)
        chosen = labels != -100
        assert not (chosen & special).any()
        assert abs(float(chosen.sum() / (~special).sum()) - 0.2) < 0.01
        shares[boost is None] = float((weights[ids] > 1)[chosen].float().mean())
    assert shares[True] < 0.45 < 0.6 < shares[False]  # about 37% of chosen tokens unboosted, 65% boosted


def test_without_weights_the_masks_are_bert_s_as_before(tokenizer):
    """Evaluations compare phases on the same masks: the default must not move them."""
    ids, special = batch(tokenizer, 4)
    generator = torch.Generator().manual_seed(0)
    chosen = (torch.rand(ids.shape, generator=generator) < 0.2) & ~special  # the recipe's masks before the boost
    _, labels = mask_tokens(ids, special, 0.2, tokenizer.mask_token_id, 999, len(tokenizer),
                            torch.Generator().manual_seed(0))
    assert torch.equal(labels != -100, chosen)
