"""A standalone HTML report of a view, for handouts: no Streamlit, nothing fetched from a network.

Every string is escaped; tables go through ``DataFrame.to_html(escape=True)``; figures are Plotly
with the library embedded once (``include_plotlyjs=True``), so the file works offline.

Example: ``html_report("Compare", {"text": "the [MASK] sat"}, tables=[("Predictions", frame)])``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import pandas as pd

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem;color:#111}"
    "table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:left}th{background:#f0f0f0}dt{font-weight:700}dd{margin:0 0 .5rem 1rem;"
    "font-family:ui-monospace,monospace;white-space:pre-wrap}"
)


def html_report(
    title: str,
    settings: Mapping[str, object],
    tables: Sequence[tuple[str, pd.DataFrame]] = (),
    figures: Sequence[tuple[str, object]] = (),
    notes: Sequence[str] = (),
) -> str:
    """One self-contained HTML page: settings (as a definition list), notes, tables, then figures."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1><dl>",
        *(f"<dt>{esc(str(k))}</dt><dd>{esc(str(v))}</dd>" for k, v in settings.items()),
        "</dl>",
        *(f"<p>{esc(note)}</p>" for note in notes),
    ]
    for caption, frame in tables:
        parts.append(f"<h2>{esc(caption)}</h2>")
        parts.append(frame.to_html(index=False, escape=True, float_format=lambda x: f"{x:.4f}", border=0))
    first = True
    for caption, figure in figures:
        parts.append(f"<h2>{esc(caption)}</h2>")
        # Figure labels are already escaped by mlm_core.charts.literal; the library goes in once.
        parts.append(figure.to_html(full_html=False, include_plotlyjs=first))
        first = False
    parts.append("</body></html>")
    return "".join(parts)
