"""HTML built from tokens escapes everything a user or a vocabulary can put in it."""

from __future__ import annotations

import pytest

from mlm_core.text.tokens import tokenize
from mlm_core.views.html import chip, legend, token_chips

PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert('x')</script>",
    '" onmouseover="alert(1)',
    "</span><b>bold</b>",
    "&lt;already&gt;",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_chip_escapes_text_and_title(payload):
    html = chip(payload, "#fff", title=payload)
    assert payload not in html
    assert "<img" not in html and "<script" not in html and "<b>" not in html
    assert html.count("<span") == 1 and html.count("</span>") == 1


@pytest.mark.parametrize("payload", PAYLOADS)
def test_token_chips_escape_tokens_and_titles(payload):
    html = token_chips([payload, "cat", payload], kinds=["masked", None, "kept"], titles=[payload] * 3)
    assert payload not in html
    assert "onerror=alert(1)>" not in html
    assert html.count("<span") == 3


def test_typed_html_stays_text_end_to_end(tiny_tokenizer):
    text = "<img src=x onerror=alert(1)>"
    tokens = tokenize(tiny_tokenizer, text)
    pieces = [text[s:e] for s, e in tokens.offsets]  # what a highlight of the original text shows
    html = token_chips(pieces, special=tokens.special, titles=list(tokens.tokens))
    assert text not in html and "<img" not in html
    assert "&lt;" in html and "&gt;" in html


def test_legend_lists_kinds():
    html = legend()
    for label in ("masked", "random token", "kept", "excluded"):
        assert f">{label}</span>" in html


def test_legend_of_a_strip_lists_only_the_kinds_present():
    html = legend(kinds=(None, "masked", None, "random"))
    assert ">masked</span>" in html and ">random token</span>" in html
    assert ">kept</span>" not in html and ">excluded</span>" not in html
    assert legend(kinds=(None, None)) == ""
