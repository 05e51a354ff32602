"""The shared inference copy's column-major linear weights (mlm_core/model/layout.py): the same answers as
torch's layout, ties kept, and only the shared copy laid out so."""

from __future__ import annotations

import torch
from torch import nn

from mlm_core.explain.predict import predict
from mlm_core.model.layout import as_it_comes, column_major_linears
from mlm_core.model.loading import load_fresh, load_model
from mlm_core.text.tokens import tokenize


def linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def test_the_shared_copy_is_column_major_and_a_training_copy_is_not(tiny_model_dir):
    shared = load_model(str(tiny_model_dir), "cpu")
    assert all(w.t().is_contiguous() for w in linear_weights(shared.model))
    fresh = load_fresh(str(tiny_model_dir))  # optimizers and save_pretrained expect torch's layout
    assert all(w.is_contiguous() for w in linear_weights(fresh.model))
    stock = as_it_comes(shared.model)
    assert all(p.is_contiguous() for p in stock.parameters())
    assert all(w.t().is_contiguous() for w in linear_weights(shared.model))  # the copy left the shared one alone


def test_the_layout_changes_no_answer_and_keeps_tied_weights(tiny_model_dir):
    loaded = load_fresh(str(tiny_model_dir))
    loaded.model.eval()
    ids = tokenize(loaded.tokenizer, f"the cat sat on the {loaded.mask_token} .").ids
    before = predict(loaded, ids, top_k=5, output_attentions=True)
    tied = loaded.model.get_output_embeddings().weight is loaded.model.get_input_embeddings().weight
    assert column_major_linears(loaded.model) == len(linear_weights(loaded.model))
    after = predict(loaded, ids, top_k=5, output_attentions=True)
    assert (loaded.model.get_output_embeddings().weight is loaded.model.get_input_embeddings().weight) == tied
    assert [c.token for c in after.predictions[0].top] == [c.token for c in before.predictions[0].top]
    for new, old in zip(after.predictions[0].top, before.predictions[0].top):
        assert abs(new.prob - old.prob) < 1e-6
    assert abs(after.attentions - before.attentions).max() < 1e-6
    assert column_major_linears(loaded.model) == 0  # already laid out: nothing moves twice


def test_is_loaded_knows_the_shared_cache_under_any_spelling(tiny_model_dir):
    from mlm_core.model.loading import is_loaded

    load_model(str(tiny_model_dir), "cpu")
    assert is_loaded(str(tiny_model_dir), "cpu") and is_loaded(f"{tiny_model_dir}//", "cpu")
    assert not is_loaded(str(tiny_model_dir / "elsewhere"), "cpu")
