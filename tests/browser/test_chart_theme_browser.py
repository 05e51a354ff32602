"""The app sends its charts without plotly's template (ui.drawn.for_chart): Streamlit's theme draws them, so
they must look the same, to the pixel, as the figures themselves."""

from __future__ import annotations

import io

import pytest

from .support import settle, streamlit_server


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

    figures = chart_images(page, f"{theme_url}/?form=figure")
    sent = chart_images(page, f"{theme_url}/?form=sent")
    assert len(figures) == len(sent) == 3
    for n, (theirs, ours) in enumerate(zip(figures, sent)):
        a, b = (Image.open(io.BytesIO(png)).convert("RGB") for png in (theirs, ours))
        (artifacts / f"chart-theme-{n}.png").write_bytes(ours)
        assert a.size == b.size and ImageChops.difference(a, b).getbbox() is None, f"chart {n} looks different"
