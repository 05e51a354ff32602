"""Shared links in a real Chromium: a Teach/Compare URL reproduces the view; screenshots of every
Teach step (presenter mode, as on a projector) are saved to tests/browser/artifacts/ for review."""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest
from support.waiting import wait_for

from mlm_core.explain.predict import fill_text, predict
from mlm_core.text.tokens import tokenize
from ui.teach import LESSON

from .support import EXCEPTION, chip_kinds, expected_chips, expected_exploration, texts

pytestmark = pytest.mark.browser

SENTENCE = "The capital of France is [MASK]."
STEPS = json.loads(LESSON.read_text())["steps"]


def url(app_url: str, page: str, **query) -> str:
    return f"{app_url}/{page}?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"


def settle(page) -> None:
    """Wait until Streamlit has finished the run (its 'running' indicator is gone)."""
    page.wait_for_timeout(800)
    page.wait_for_function(  # stale elements (left from the previous run) are gone and nothing is running
        "document.querySelectorAll('[data-stale=\"true\"]').length === 0 && "
        "!document.querySelector('[data-testid=\"stStatusWidget\"] [data-testid=\"stStatusWidgetRunningIcon\"]')"
    )
    page.wait_for_timeout(300)


def test_shared_teach_link_shows_masks_and_top_prediction(page, app_url, default_loaded, artifacts):
    expected = predict(default_loaded, tokenize(default_loaded.tokenizer, SENTENCE).ids).predictions[0]
    page.goto(url(app_url, "teach", step="3", text=SENTENCE))
    page.get_by_role("heading", name=STEPS[2]["title"]).wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    settle(page)
    chips = page.locator("span[title*='masked']")
    assert chips.count() == 1 and chips.first.inner_text() == "[MASK]"
    filled = page.get_by_role("heading", name=f"the capital of france is {expected.top[0].token}", exact=False)
    assert filled.count() >= 1
    assert page.locator(".js-plotly-plot .ytick text", has_text=expected.top[0].token).count() >= 1
    assert page.locator("input[aria-label^='Or type your own']").input_value() == SENTENCE
    page.screenshot(path=str(artifacts / "teach-shared.png"), full_page=True)


def test_every_teach_step_in_presenter_mode(page, app_url, artifacts):
    page.goto(url(app_url, "teach", presenter="1"))
    for n, step in enumerate(STEPS, start=1):
        page.get_by_role("heading", name=step["title"]).wait_for()
        settle(page)
        page.locator("[data-testid='stSidebar']").wait_for(state="hidden")  # presenter CSS applied
        assert page.locator("input[aria-label^='Or type your own']").count() == 0  # controls hidden
        counter = page.locator(".teach-step-counter")
        assert counter.inner_text() == f"Step {n} of {len(STEPS)}"
        assert float(counter.evaluate("e => getComputedStyle(e).fontSize").rstrip("px")) >= 36
        # every text Plotly drew (ticks, titles, labels), as the browser sizes and colours it
        sizes = page.eval_on_selector_all(".js-plotly-plot svg text", "ts => ts.filter(t => t.textContent.trim())"
                                          ".map(t => [t.textContent, getComputedStyle(t).fontSize, "
                                          "getComputedStyle(t).fill])")
        small = [(text, size, fill) for text, size, fill in sizes
                 if float(size.rstrip("px")) < 20 or fill not in ("rgb(17, 17, 17)", "rgb(0, 0, 0)")]
        assert not small, (n, small[:5])
        page.screenshot(path=str(artifacts / f"teach-step-{n}.png"), full_page=True)
        if n < len(STEPS):
            page.get_by_role("button", name="Next ▶").click()
    assert f"step={len(STEPS)}" in page.url and "presenter=1" in page.url


def test_shared_compare_link(page, app_url, artifacts):
    page.goto(url(app_url, "compare", text=SENTENCE, b_heads="0.0,0.1,0.2", layer="5"))  # an old layer.head link
    page.get_by_text("Attention difference (B − A)").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    settle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    assert "b_heads=0:0,0:1,0:2" in urllib.parse.unquote(page.url)  # kept, in the one spelling: layer:head
    page.get_by_text("Share this view").click()
    code = page.locator("[data-testid='stCode'] code").first
    code.wait_for()
    link = code.inner_text()
    assert "/compare?" in link and "b_heads=" in link
    page.screenshot(path=str(artifacts / "compare-shared.png"), full_page=True)


def test_shared_explore_link(page, app_url, default_loaded, artifacts):
    """An Explore link with text, strategy, a parameter and a seed shows the same masks and guesses."""
    text = "The old lighthouse keeper walked along the rocky shore every morning before the [MASK] rose."
    expected = expected_exploration(default_loaded, text, "span", seed=3, mlm_probability=0.3)
    page.goto(url(app_url, "", text=text, strategy="span", p_mlm_probability="0.3", seed="3"))
    chips = expected_chips(default_loaded, expected)
    wait_for(lambda: chip_kinds(page) == chips, 120, "the chips the link describes", interval=0.5)
    settle(page)
    assert chip_kinds(page) == chips
    assert sum(kind == "masked" for _, kind in chips) > 1  # the strategy's masks, not only the typed one
    filled = page.locator("p", has_text="Filled in:").first.inner_text()
    assert filled.split("Filled in:", 1)[1].strip() == fill_text(default_loaded, expected.prediction.filled_ids)
    for guess in expected.prediction.predictions:  # every masked position's chart leads with its top guess
        title = re.compile(rf"^position {guess.position} · ")
        chart = page.locator(".js-plotly-plot", has=page.locator(".gtitle", has_text=title))
        assert texts(chart.first.locator(".ytick text")) == [c.token for c in guess.top][::-1]  # best on top
    assert page.get_by_label("Seed (the same seed repeats a demo)").input_value() == "3"
    assert page.get_by_role("combobox", name="Masking strategy").input_value() == "span"
    for part in ("strategy=span", "p_mlm_probability=0.3", "seed=3"):  # the page keeps the link as it was
        assert part in page.url
    assert page.locator(EXCEPTION).count() == 0
    page.screenshot(path=str(artifacts / "explore-shared.png"), full_page=True)
