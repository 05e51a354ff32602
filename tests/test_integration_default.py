"""The real default model, offline: it loads, predicts, and clears the cloze bar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlm_core.default_model import DEFAULT_MODEL_NAME
from mlm_core.models import load_model
from mlm_core.predict import predict
from mlm_core.tokens import tokenize

pytestmark = pytest.mark.integration

CLOZE = Path(__file__).resolve().parent.parent / "assets" / "cloze_en.jsonl"
CLOZE_TOP5_GOAL = 0.70  # the product's goal for the default model; not reached yet (see MODEL_CARD.md)
CLOZE_TOP5_SHIPPED = 0.63  # what the shipped adapter measures (38 of 60): falling below it is a regression


def cloze_items() -> list[dict]:
    return [json.loads(line) for line in CLOZE.read_text(encoding="utf-8").splitlines() if line.strip()]


def cloze_top5_accuracy(loaded) -> tuple[float, list[str]]:
    """Fraction of cloze sentences with an acceptable answer among the top-5 guesses, and the misses."""
    misses = []
    items = cloze_items()
    for item in items:
        tokens = tokenize(loaded.tokenizer, item["text"])
        (guess,) = predict(loaded, tokens.ids, top_k=5).predictions
        offered = {c.token.lower() for c in guess.top}
        if not offered & {answer.lower() for answer in item["answers"]}:
            misses.append(f"{item['text']} -> {', '.join(c.token for c in guess.top)}")
    return 1 - len(misses) / len(items), misses


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


def test_cloze_items_are_well_formed():
    items = cloze_items()
    assert len(items) >= 50
    for item in items:
        assert item["text"].count("[MASK]") == 1 and item["answers"]


def test_cloze_top5_does_not_regress(default_loaded):
    accuracy, misses = cloze_top5_accuracy(default_loaded)
    print(f"cloze top-5: {accuracy:.3f} ({len(misses)} misses; goal {CLOZE_TOP5_GOAL:.0%})")
    assert accuracy >= CLOZE_TOP5_SHIPPED, (
        f"cloze top-5 {accuracy:.1%} < {CLOZE_TOP5_SHIPPED:.0%} measured for the shipped adapter; misses:\n"
        + "\n".join(misses)
    )
