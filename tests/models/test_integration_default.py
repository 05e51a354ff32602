"""The real default model, offline: it loads, predicts, and clears the cloze bar."""

from __future__ import annotations

import json

import pytest

from mlm_core.explain.predict import predict
from mlm_core.model.default_model import DEFAULT_MODEL_NAME
from mlm_core.model.loading import load_model
from mlm_core.resources import asset
from mlm_core.text.tokens import tokenize

pytestmark = pytest.mark.integration

CLOZE_TOP5_GOAL = 0.70  # the product's goal for the default model (see MODEL_CARD.md)
# What the shipped adapter measures on each set: falling below it is a regression. The
# confirmation sets were used for no training decision (see MODEL_CARD.md).
CLOZE_TOP5_SHIPPED = {"cloze_en.jsonl": 0.73, "cloze_en_confirm.jsonl": 0.70, "cloze_en_fresh.jsonl": 0.58,
                      "cloze_en_everyday.jsonl": 0.56}
# The sets the first goal was set on; the fresh set is held to the next, higher bar, which
# the card reports (it is not met yet, so no test can demand it).
CLOZE_GOAL_SETS = ("cloze_en.jsonl", "cloze_en_confirm.jsonl")


def cloze_items(name: str) -> list[dict]:
    text = asset(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def cloze_top5_accuracy(loaded, name: str) -> tuple[float, list[str]]:
    """Fraction of cloze sentences with an acceptable answer among the top-5 guesses, and the misses."""
    misses = []
    items = cloze_items(name)
    for item in items:
        tokens = tokenize(loaded.tokenizer, item["text"])
        (guess,) = predict(loaded, tokens.ids, top_k=5).predictions
        offered = {c.token.lower() for c in guess.top}
        if not offered & {answer.lower() for answer in item["answers"]}:
            misses.append(f"{item['text']} -> {', '.join(c.token for c in guess.top)}")
    return 1 - len(misses) / len(items), misses


@pytest.fixture(scope="module")
def cloze_scores(default_loaded) -> dict[str, tuple[float, list[str]]]:
    """Each set scored once: the regression floor and the goal read the same measurement."""
    return {name: cloze_top5_accuracy(default_loaded, name) for name in CLOZE_TOP5_SHIPPED}


def test_default_model_loads_offline(default_loaded):
    assert default_loaded.name == DEFAULT_MODEL_NAME
    assert load_model(None, device="cpu") is load_model(None, device="cpu")  # one shared copy
    info = default_loaded.describe()
    assert info["type"] == "bert" and info["layers"] == 6 and info["mask_token"] == "[MASK]"
    assert default_loaded.model.config._attn_implementation == "eager"


def test_default_model_top5(default_loaded):
    tokens = tokenize(default_loaded.tokenizer, "The capital of France is [MASK].")
    result = predict(default_loaded, tokens.ids, top_k=5, output_attentions=True)
    (guess,) = result.predictions
    assert len(guess.top) == 5
    assert all(c.token.isprintable() and not c.token.startswith("[") for c in guess.top)
    assert sum(c.prob for c in guess.top) <= 1.0 + 1e-6
    assert result.attentions.shape == (6, 12, len(tokens), len(tokens))


@pytest.mark.parametrize("name", CLOZE_TOP5_SHIPPED)
def test_cloze_items_are_well_formed(name, default_loaded):
    items = cloze_items(name)
    assert len(items) >= 40
    vocabulary = default_loaded.tokenizer.get_vocab()
    for item in items:
        assert item["text"].count("[MASK]") == 1 and item["answers"]
        # The model fills a blank with one word piece: a sentence needs an answer that is one.
        assert any(answer in vocabulary for answer in item["answers"]), item


def test_cloze_sets_do_not_overlap():
    sentences = [{item["text"].lower() for item in cloze_items(name)} for name in CLOZE_TOP5_SHIPPED]
    for index, one in enumerate(sentences):
        for other in sentences[index + 1 :]:
            assert not one & other


@pytest.mark.parametrize("name", CLOZE_TOP5_SHIPPED)
def test_cloze_top5_does_not_regress(name, cloze_scores):
    accuracy, misses = cloze_scores[name]
    shipped = CLOZE_TOP5_SHIPPED[name]
    print(f"{name} top-5: {accuracy:.3f} ({len(misses)} misses; goal {CLOZE_TOP5_GOAL:.0%})")
    assert accuracy >= shipped, (
        f"{name} top-5 {accuracy:.1%} < {shipped:.0%} measured for the shipped adapter; misses:\n"
        + "\n".join(misses)
    )


@pytest.mark.parametrize("name", CLOZE_GOAL_SETS)
def test_default_model_clears_the_cloze_bar(name, cloze_scores):
    accuracy, misses = cloze_scores[name]
    assert accuracy >= CLOZE_TOP5_GOAL, f"{name} top-5 {accuracy:.1%}; misses:\n" + "\n".join(misses)
