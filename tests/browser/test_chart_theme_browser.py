"""The app sends its charts without plotly's template (ui.drawn.for_chart): Streamlit's theme draws them, so
they must look the same, to the pixel, as the figures themselves."""

from __future__ import annotations

import io

import pytest

from .support import settle, streamlit_server

# Plotly lays out a grid of subplots 8 px lower in some loads of the very same figure, template or not
# (3 of 16 loads, measured): each form is loaded this many times, and a chart passes when some load of
# one looks exactly like some load of the other.
LOADS = 4


@pytest.fixture(scope="module")
def theme_url(chromium_path, tmp_path_factory):
    with streamlit_server(tmp_path_factory, script="tests/browser/chart_theme_app.py") as url:
        yield url


def chart_images(page, url: str) -> list[bytes]:
    page.goto(url)
    charts = page.locator("[data-testid='stPlotlyChart']")
    charts.nth(2).locator(".main-svg").first.wait_for()
    settle(page)
    page.wait_for_timeout(1000)  # plotly's own drawing after Streamlit's run
    return [charts.nth(n).screenshot() for n in range(charts.count())]


def test_charts_sent_without_the_template_look_the_same(page, theme_url, artifacts):
    from PIL import Image, ImageChops

    def image(png: bytes):
        return Image.open(io.BytesIO(png)).convert("RGB")

    def same(a, b) -> bool:
        return a.size == b.size and ImageChops.difference(a, b).getbbox() is None

    loads = {form: [[image(png) for png in chart_images(page, f"{theme_url}/?form={form}")] for _ in range(LOADS)]
             for form in ("figure", "sent")}
    assert all(len(shown) == 3 for shown in loads["figure"] + loads["sent"])
    for n in range(3):
        theirs, ours = [shown[n] for shown in loads["figure"]], [shown[n] for shown in loads["sent"]]
        ours[0].save(artifacts / f"chart-theme-{n}.png")
        assert any(same(a, b) for a in theirs for b in ours), f"chart {n} looks different"
