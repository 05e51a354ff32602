"""Figures restyled for a projector (the Teach page's presenter mode): large, dark text everywhere.

One function for every figure, so no chart needs its own presenter variant and a new chart is
covered the day it is drawn on the Teach page.
"""

from __future__ import annotations

import plotly.graph_objects as go

PRESENTER_FONT = 20  # px: the smallest chart text still readable from the back of a classroom
PRESENTER_INK = "#111111"  # near-black on white; Plotly's default grey (#444) fades on a projector


def presenter_style(figure: go.Figure, size: int = PRESENTER_FONT, ink: str = PRESENTER_INK) -> go.Figure:
    """``figure`` restyled for a projector: every text (ticks, axis and colour-bar titles, legend, hover
    labels, annotations, bar labels) at least ``size`` px and dark. Returns a new figure.

    Bar labels move outside the bars: dark text cannot sit on a dark bar.
    """
    spec = figure.to_dict()

    def dark(font: dict | None) -> dict:
        font = dict(font or {})
        font.update(size=max(size, font.get("size") or 0), color=ink)
        return font

    def walk(node) -> None:  # every font a chart sets itself (title 14, small-multiple titles 13, ...)
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("font") and isinstance(value, dict):
                    node[key] = dark(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    layout = spec.setdefault("layout", {})
    walk(spec)
    layout["font"] = dark(layout.get("font"))
    layout["hoverlabel"] = dict(layout.get("hoverlabel") or {}, font=dark(None), bgcolor="white", bordercolor=ink)
    if isinstance(layout.get("title"), str):
        layout["title"] = {"text": layout["title"]}
    layout["title"] = dict(layout.get("title") or {}, font=dark((layout.get("title") or {}).get("font")))
    layout["legend"] = dict(layout.get("legend") or {}, font=dark(None))
    axes = [name for name in layout if name.rstrip("0123456789") in ("xaxis", "yaxis")] or ["xaxis", "yaxis"]
    for name in axes:
        axis = layout.setdefault(name, {})
        title = axis.get("title")
        axis["title"] = dict({"text": title} if isinstance(title, str) else (title or {}),
                             font=dark((title or {}).get("font") if isinstance(title, dict) else None))
        axis.update(tickfont=dark(axis.get("tickfont")), color=ink, automargin=True)
    for annotation in layout.get("annotations") or []:
        annotation["font"] = dark(annotation.get("font"))
    for trace in spec.get("data", []):
        if trace.get("type") == "bar" and trace.get("text") is not None:
            trace.update(textposition="outside", textfont=dark(trace.get("textfont")), cliponaxis=False)
        if "colorbar" in trace or trace.get("type") == "heatmap":
            bar = trace.setdefault("colorbar", {})
            bar_title = bar.get("title") if isinstance(bar.get("title"), dict) else {"text": bar.get("title") or ""}
            bar.update(tickfont=dark(bar.get("tickfont")), title=dict(bar_title, font=dark(bar_title.get("font"))))
    return go.Figure(spec)
