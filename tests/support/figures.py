"""Checks on Plotly figures shared by the chart tests and the page tests (presenter mode)."""

from __future__ import annotations

from mlm_core.views.presenter import PRESENTER_FONT


def fonts(spec) -> list[dict]:
    """Every font dict in a figure's JSON (layout, axes, legend, hover labels, annotations, traces)."""
    found = []
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key.endswith("font") and isinstance(value, dict):
                found.append(value)
            found += fonts(value)
    elif isinstance(spec, list):
        for item in spec:
            found += fonts(item)
    return found


def is_dark(colour: str) -> bool:
    red, green, blue = (int(colour[k : k + 2], 16) for k in (1, 3, 5))
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue < 60


def assert_presenter(spec: dict) -> None:
    """Font sizes >= 20 px and dark ink on every text of a figure, each axis named explicitly."""
    layout = spec["layout"]
    for font in fonts(spec):
        assert font.get("size", 0) >= PRESENTER_FONT and is_dark(font["color"]), font
    axes = [name for name in layout if name.rstrip("0123456789") in ("xaxis", "yaxis")]
    assert axes and all(layout[name]["tickfont"]["size"] >= 20 and layout[name]["title"]["font"]["size"] >= 20
                        for name in axes)
    assert layout["hoverlabel"]["font"]["size"] >= 20 and layout["legend"]["font"]["size"] >= 20
