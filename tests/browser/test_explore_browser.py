"""The Explore page in a real Chromium: predictions appear, typed HTML stays text, no script runs."""

from __future__ import annotations

import re
import urllib.parse

import pytest
from playwright.sync_api import expect

from mlm_core.predict import predict
from mlm_core.tokens import tokenize
from ui.strategy import NONE

pytestmark = pytest.mark.browser

SENTENCE = "The capital of France is [MASK]."
PAYLOAD = "<img src=x onerror=alert(1)>"


def explore_url(app_url: str, text: str | None = None) -> str:
    """The Explore page with no masking strategy (typed and clicked masks only), optionally with text."""
    query = {"strategy": NONE} if text is None else {"strategy": NONE, "text": text}
    return f"{app_url}/?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"


def watch_dialogs(page) -> list[str]:
    fired: list[str] = []

    def on_dialog(dialog):
        fired.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return fired


def filled_line(page):
    return page.locator("p", has_text="Filled in:").first


def test_explore_shows_the_top_prediction(page, app_url, default_loaded, artifacts):
    expected = predict(default_loaded, tokenize(default_loaded.tokenizer, SENTENCE).ids).predictions[0]
    dialogs = watch_dialogs(page)
    page.goto(explore_url(app_url, SENTENCE))
    line = filled_line(page)
    line.wait_for()
    assert f"the capital of france is {expected.top[0].token}" in line.inner_text().lower()
    page.locator(".js-plotly-plot").first.wait_for()
    assert page.locator(".js-plotly-plot .ytick text", has_text=expected.top[0].token).count() >= 1
    page.screenshot(path=str(artifacts / "explore.png"), full_page=True)
    assert dialogs == []


def test_typed_html_is_shown_as_text(page, app_url, artifacts):
    dialogs = watch_dialogs(page)
    page.goto(explore_url(app_url))
    filled_line(page).wait_for()
    box = page.locator("textarea").first
    box.fill(f"{PAYLOAD} is a [MASK].")
    box.press("Control+Enter")
    page.get_by_text("onerror = alert", exact=False).first.wait_for()
    page.wait_for_timeout(1000)  # give an injected handler the chance to fire
    assert dialogs == []
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("[onerror]").count() == 0
    chips = page.locator("span[title]", has_text="<")
    assert chips.count() >= 1 and chips.first.inner_text() == "<"  # the "<" chip is text, not markup
    page.screenshot(path=str(artifacts / "explore-html.png"), full_page=True)


def test_html_in_the_url_is_shown_as_text(page, app_url):
    dialogs = watch_dialogs(page)
    page.goto(explore_url(app_url, PAYLOAD + " [MASK]"))
    page.get_by_text("onerror = alert", exact=False).first.wait_for()
    page.wait_for_timeout(1000)
    assert dialogs == []
    assert page.locator("img[src='x']").count() == 0
    # The text box fills in as the page finishes its run: wait for it rather than read it once.
    expect(page.locator("textarea").first).to_have_value(re.compile(re.escape(PAYLOAD)), timeout=30_000)
