"""mlm_core.explain.attention: invariants (rows sum to 1), references, word merges, charts, CLI ``attend``."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from mlm_core.cli.explain import format_attend, run_attend
from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.explain import attention
from mlm_core.text.tokens import tokenize
from mlm_core.views import charts

TEXT = "the cat sat on the [MASK] ."


@pytest.fixture(scope="module")
def tokens(tiny_loaded):
    return tokenize(tiny_loaded.tokenizer, TEXT)


@pytest.fixture(scope="module")
def att(tiny_loaded, tokens):
    return attention.attention_maps(tiny_loaded, tokens.ids)


def random_attention(seed=0, layers=3, heads=2, n=5):
    rng = np.random.default_rng(seed)
    a = rng.random((layers, heads, n, n))
    return a / a.sum(-1, keepdims=True)


def test_attention_rows_sum_to_one(att, tokens, tiny_loaded):
    assert att.shape == (tiny_loaded.num_layers, tiny_loaded.num_heads, len(tokens), len(tokens))
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)


def test_attention_matches_the_model_itself(tiny_loaded, tokens, att):
    with torch.inference_mode():
        out = tiny_loaded.model(input_ids=torch.tensor([tokens.ids]), output_attentions=True)
    reference = torch.stack([a[0] for a in out.attentions]).numpy()
    np.testing.assert_allclose(att, reference, atol=1e-6)


def test_no_hooks_added_after_transformers_own_recorders(tiny_loaded, tokens, att):
    from mlm_core.explain.whatif import count_hooks

    before = count_hooks(tiny_loaded.model)  # the att fixture already made the first attention call
    attention.attention_maps(tiny_loaded, tokens.ids)
    attention.masked_vs_unmasked(tiny_loaded, tokens.ids, tokens.ids)
    assert count_hooks(tiny_loaded.model) == before


def test_excluded_tokens_receive_no_attention(tiny_loaded, tokens):
    exclude = [i == 2 for i in range(len(tokens))]
    att = attention.attention_maps(tiny_loaded, tokens.ids, exclude)
    assert att[..., 2].max() < 1e-6
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)


def test_rollout_rows_sum_to_one(att):
    for residual in (0.0, 0.5, 1.0):
        np.testing.assert_allclose(attention.rollout(att, residual).sum(-1), 1.0, atol=1e-5)


def test_rollout_reference():
    a = random_attention()
    mean = a.mean(axis=1)
    eye = np.eye(a.shape[-1])
    hats = [(0.5 * eye + 0.5 * m) / (0.5 * eye + 0.5 * m).sum(-1, keepdims=True) for m in mean]
    np.testing.assert_allclose(attention.rollout(a)[-1], hats[2] @ hats[1] @ hats[0], atol=1e-6)
    np.testing.assert_allclose(attention.rollout(a, 0.0)[-1], mean[2] @ mean[1] @ mean[0], atol=1e-6)
    np.testing.assert_allclose(attention.rollout(a, 1.0)[-1], eye, atol=1e-6)
    np.testing.assert_allclose(attention.rollout(a)[0], hats[0], atol=1e-6)
    with pytest.raises(InputError):
        attention.rollout(a, 1.5)


def test_head_mean(att):
    np.testing.assert_allclose(attention.head_mean(att), att.mean(axis=1))


def test_word_groups_and_labels(tiny_loaded):
    assert attention.word_groups([None, 0, 1, 1, 2, None]) == [[0], [1], [2, 3], [4], [5]]
    tokens = tokenize(tiny_loaded.tokenizer, "the cats sat")
    assert tokens.tokens == ("[CLS]", "the", "cat", "##s", "sat", "[SEP]")
    groups = attention.word_groups(tokens.word_ids)
    assert groups == [[0], [1], [2, 3], [4], [5]]
    assert attention.group_labels(tokens.tokens, groups, tiny_loaded.tokenizer) == ["[CLS]", "the", "cats", "sat",
                                                                                   "[SEP]"]


def test_merge_words_keeps_rows_stochastic():
    a = random_attention(n=6)
    groups = [[0], [1, 2], [3], [4, 5]]
    merged = attention.merge_words(a, groups)
    assert merged.shape == (3, 2, 4, 4)
    np.testing.assert_allclose(merged.sum(-1), 1.0, atol=1e-6)
    # rows averaged, columns summed
    np.testing.assert_allclose(merged[0, 0, 1, 3], (a[0, 0, 1, 4] + a[0, 0, 1, 5] + a[0, 0, 2, 4] + a[0, 0, 2, 5]) / 2)
    identity = [[i] for i in range(6)]
    np.testing.assert_allclose(attention.merge_words(a, identity), a)
    np.testing.assert_allclose(attention.merge_scores(np.arange(6.0), groups), [0, 3, 3, 9])


def test_from_position_and_overview():
    a = random_attention(n=5)
    rows = attention.from_position(a, 2)
    np.testing.assert_allclose(rows, a[:, :, 2, :])
    with pytest.raises(InputError):
        attention.from_position(a, 5)
    uniform = np.full((2, 3, 4, 4), 0.25)
    np.testing.assert_allclose(attention.head_overview(uniform, 1, "entropy"), 2.0, atol=1e-6)
    np.testing.assert_allclose(attention.head_overview(uniform, None, "entropy"), 2.0, atol=1e-6)
    np.testing.assert_allclose(attention.head_overview(a, 1, "max"), a[:, :, 1].max(-1), atol=1e-6)
    np.testing.assert_allclose(attention.head_overview(a, 1, "to token", 3), a[:, :, 1, 3], atol=1e-6)
    with pytest.raises(InputError):
        attention.head_overview(a, 1, "to token")
    with pytest.raises(InputError):
        attention.head_overview(a, 1, "loudness")


def test_unmasked_ids_restore_originals_and_fill_typed_masks():
    mask = 4
    original = [2, 10, mask, 12, 3]  # position 2 typed as the mask
    filled = [2, 99, 21, 12, 3]  # position 1 was clicked (filled with a guess), 2 filled with 21
    assert attention.unmasked_ids(original, filled, mask) == [2, 10, 21, 12, 3]


def test_masked_vs_unmasked(tiny_loaded, tokens):
    plain = attention.unmasked_ids(tokens.ids, [t if t != tokens.mask_token_id else 20 for t in tokens.ids],
                                   tokens.mask_token_id)
    with_mask, without = attention.masked_vs_unmasked(tiny_loaded, tokens.ids, plain)
    assert with_mask.shape == without.shape
    assert not np.allclose(with_mask, without)
    with pytest.raises(InputError):
        attention.masked_vs_unmasked(tiny_loaded, tokens.ids, plain[:-1])


def test_too_long_input_gives_a_message(tiny_loaded):
    long = tokenize(tiny_loaded.tokenizer, "the cat sat on the mat . " * 12 + "[MASK]")
    assert len(long) > tiny_loaded.max_length
    with pytest.raises(InputError, match="Shorten the text"):
        attention.attention_maps(tiny_loaded, long.ids)


# --------------------------------------------------------------------------- charts


def test_heatmap_tick_labels_equal_tokens_and_repeats_stay_apart(att, tokens):
    figure = charts.attention_heatmap(att[0, 0], tokens.tokens, tokens.mask_positions, "t")
    assert list(figure.layout.xaxis.ticktext) == list(tokens.tokens)
    assert list(figure.layout.yaxis.ticktext) == list(tokens.tokens)
    assert list(figure.layout.xaxis.tickvals) == list(range(len(tokens)))
    assert tokens.tokens.count("the") == 2 and len(figure.layout.xaxis.ticktext) == len(tokens)
    assert len(figure.layout.shapes) == 2 * len(tokens.mask_positions)  # row and column of each mask
    diff = charts.attention_heatmap(att[0, 0] - att[1, 0], tokens.tokens, diverging=True)
    assert diff.data[0].zmid == 0


def test_other_chart_tick_labels(att, tokens):
    labels = list(tokens.tokens)
    grid = charts.attention_grid(att[0], labels, tokens.mask_positions)
    gap, columns = max(1, round(0.15 * len(labels))), min(4, att.shape[1])  # up to 4 heads a row, one mosaic
    assert np.asarray(grid.data[0].z).shape[1] == columns * len(labels) + (columns - 1) * gap
    assert list(grid.layout.xaxis.ticktext)[: len(labels)] == labels
    mask = tokens.mask_positions[0]
    rows = charts.from_position_heatmap(attention.from_position(att, mask).mean(1), labels, mask)
    assert list(rows.layout.xaxis.ticktext) == labels
    pair = charts.side_by_side_heatmaps(att[0, 0], att[1, 0], labels, labels, ["a", "b"])
    assert list(pair.layout.xaxis2.ticktext) == labels
    bars = charts.attribution_bars(np.arange(len(labels)) - 3.0, labels, [mask])
    assert list(bars.layout.xaxis.ticktext) == labels
    overview = charts.layer_head_heatmap(attention.head_overview(att, mask), "entropy")
    assert np.asarray(overview.data[0].z).shape == att.shape[:2]


def test_chart_labels_show_html_as_text():
    labels = ["<b>", "x", "<img src=x onerror=alert(1)>"]
    figure = charts.attention_heatmap(np.eye(3), labels)
    assert list(figure.layout.xaxis.ticktext) == ["&lt;b&gt;", "x", "&lt;img src=x onerror=alert(1)&gt;"]


# --------------------------------------------------------------------------- CLI


def attend_args(model_dir, text=TEXT, **kw):
    base = dict(text=text, model=str(model_dir), device="cpu", layer=-1, head=None, rollout=False, words=False,
                json=True)
    return argparse.Namespace(**{**base, **kw})


def test_cli_attend_json(tiny_model_dir, att):
    record = run_attend(attend_args(tiny_model_dir, head=1, layer=0))
    n = len(record["tokens"])
    assert np.asarray(record["attention"]).shape == (n, n)
    np.testing.assert_allclose(record["attention"], att[0, 1], atol=1e-5)
    rolled = run_attend(attend_args(tiny_model_dir, rollout=True))
    np.testing.assert_allclose(np.asarray(rolled["attention"]).sum(-1), 1.0, atol=1e-4)
    assert rolled["view"] == "rollout" and rolled["masked_positions"] == [6]
    assert "[MASK]" in format_attend(rolled)


def test_cli_attend_bad_input(tiny_model_dir):
    with pytest.raises(NothingToMaskError):
        run_attend(attend_args(tiny_model_dir, text="   "))
    with pytest.raises(InputError):
        run_attend(attend_args(tiny_model_dir, layer=5))
    with pytest.raises(InputError):
        run_attend(attend_args(tiny_model_dir, head=9))


@pytest.mark.parametrize(("strategy", "params"), [(None, None), ("random", {"mlm_probability": 0.4}),
                                                  ("attention-exclusion", {"rule": "stopwords"})])
@pytest.mark.parametrize("fill", ["independent", "joint"])
def test_the_predictions_attentions_are_the_attention_views(tiny_loaded, strategy, params, fill):
    """The Explore page shows the prediction's own attentions instead of a second forward pass."""
    from mlm_core.explain.exploration import explore
    from mlm_core.masking import strategy_from_params

    chosen = None if strategy is None else strategy_from_params(strategy, params)
    result = explore(tiny_loaded, "the cat [MASK] on the mat and the dog sat", chosen, 3, [], top_k=3, fill=fill,
                     output_attentions=True)
    excluded = [kind == "excluded" for kind in result.kinds]
    again = attention.attention_maps(tiny_loaded, result.input_ids, excluded if any(excluded) else None)
    np.testing.assert_allclose(result.prediction.attentions, again, atol=1e-6)
