"""HTML fragments for token strips. Every user- or model-supplied string is escaped here.

This is the only place that builds HTML from tokens, so escaping is checked in one spot
(see tests/views/test_render.py: ``<img onerror=...>`` typed by a user stays text).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from mlm_core.views.charts import KIND_COLOURS

KIND_LABELS = {"masked": "masked", "random": "random token", "kept": "kept", "excluded": "excluded", None: ""}


def chip(text: str, colour: str, title: str = "", strong: bool = False, large: bool = False) -> str:
    weight = "700" if strong else "400"
    size = "1.35rem" if large else "1rem"
    return (
        f'<span title="{html.escape(title, quote=True)}" style="display:inline-block;margin:2px 3px;'
        f"padding:2px 8px;border-radius:10px;background:{colour};font-weight:{weight};font-size:{size};"
        f'font-family:ui-monospace,monospace;white-space:pre">{html.escape(text)}</span>'
    )


def token_chips(
    tokens: Sequence[str],
    kinds: Sequence[str | None] | None = None,
    special: Sequence[bool] | None = None,
    titles: Sequence[str] | None = None,
    large: bool = False,
) -> str:
    """A strip of token chips coloured by masking kind (masked / random / kept / excluded)."""
    kinds = kinds or [None] * len(tokens)
    special = special or [False] * len(tokens)
    parts = []
    for i, token in enumerate(tokens):
        colour = "#eeeeee" if special[i] else KIND_COLOURS.get(kinds[i], KIND_COLOURS[None])
        if kinds[i] in ("masked", "random"):
            colour += "55"  # translucent so the text stays readable
        title = titles[i] if titles else KIND_LABELS.get(kinds[i], "")
        parts.append(chip(token, colour, title=f"{i}: {title}".strip(": "), strong=kinds[i] is not None,
                          large=large))
    return '<div style="line-height:2.1">' + "".join(parts) + "</div>"


def legend(large: bool = False, kinds: Iterable[str | None] | None = None) -> str:
    """Chips naming the token kinds; with ``kinds`` (a strip's kinds) only those present, so the legend
    never looks like more tokens. Empty when no token has a kind."""
    present = set(KIND_LABELS) if kinds is None else set(kinds)
    return "".join(
        chip(label, KIND_COLOURS[kind] + ("55" if kind in ("masked", "random") else ""), large=large)
        for kind, label in KIND_LABELS.items()
        if kind and kind in present
    )


def escape_markdown(text: str) -> str:
    """Text shown inside st.markdown: HTML escaped and Markdown control characters neutralised."""
    escaped = html.escape(text, quote=False)  # quotes stay: &#x27; would be broken by escaping '#'
    for char in "\\`*_{}[]()#+-.!|>~":
        escaped = escaped.replace(char, "\\" + char)
    return escaped
