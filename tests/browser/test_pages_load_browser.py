"""Every page of the app in a real Chromium, reached by clicking the sidebar's navigation: each shows
its title and its first content, no Streamlit exception box, and no uncaught JavaScript error.
A screenshot of each is saved to tests/browser/artifacts/page-*.png for review."""

from __future__ import annotations

import json

import pytest

from ui.teach import LESSON

from .support import EXCEPTION, Watch, settle, streamlit_server

pytestmark = pytest.mark.browser

FIRST_STEP = json.loads(LESSON.read_text())["steps"][0]["title"]

# (label in the navigation, path in the URL, heading, text that shows the page did its work)
PAGES = [
    ("Explore", "", "Explore", "Filled in:"),
    ("Batch analysis", "batch", "Batch analysis", "configuration(s) × 1 seed(s)"),
    ("Fine-tune", "finetune", "Fine-tune", "estimated time"),
    ("Runs", "runs", "Runs", "No runs yet"),  # the test server's run store is empty
    ("Experiments", "experiments", "Experiments", "configurations × 3 seeds"),
    ("Compare", "compare", "Compare", "Attention difference (B − A)"),
    ("Teach", "teach", FIRST_STEP, "Step 1 of"),
]


def check_page(page, watch: Watch, heading: str, marker: str, shot) -> None:
    page.get_by_role("heading", name=heading, level=1).first.wait_for()
    page.get_by_text(marker, exact=False).first.wait_for()
    settle(page)
    assert page.locator(EXCEPTION).count() == 0, page.locator(EXCEPTION).first.inner_text()
    if shot is not None:
        page.screenshot(path=str(shot), full_page=True)
    watch.assert_quiet()


def test_every_page_loads_by_clicking_the_navigation(page, app_url, artifacts):
    watch = Watch(page)
    page.goto(app_url)
    check_page(page, watch, "Explore", "Filled in:", None)
    nav = page.locator("[data-testid='stSidebarNav']")
    links = [text.strip().splitlines()[-1].strip() for text in nav.get_by_role("link").all_inner_texts()]
    assert links == [label for label, *_ in PAGES]  # app.py's st.navigation lists these pages, in this order
    for label, path, heading, marker in PAGES:
        nav.get_by_role("link", name=label, exact=True).click()
        page.wait_for_url(f"{app_url}/{path}*")
        check_page(page, watch, heading, marker, artifacts / f"page-{path or 'explore'}.png")


@pytest.mark.parametrize(("path", "heading", "marker"), [(p, h, m) for _, p, h, m in PAGES if p],
                         ids=[p for _, p, *_ in PAGES if p])
def test_every_page_opens_from_its_own_link(page, app_url, path, heading, marker):
    """A bookmarked or shared page URL opens that page, routed by app.py (not legacy pages/ mode)."""
    watch = Watch(page)
    page.goto(f"{app_url}/{path}")
    check_page(page, watch, heading, marker, None)
    nav = page.locator("[data-testid='stSidebarNav']").inner_text()
    assert "Batch analysis" in nav and "batch" not in nav.split()


def test_a_fresh_servers_first_visitor_sees_it_starting(page, chromium_path, tmp_path_factory, artifacts):
    """A server's first run imports torch and transformers for seconds before any page can draw: the
    visitor sees a spinner that says so (ui/startup.py), then the page, never a long blank screen."""
    with streamlit_server(tmp_path_factory) as url:
        page.goto(url)
        spinner = page.locator("[data-testid='stSpinner']", has_text="Starting MaskLab")
        spinner.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "fresh-server-starting.png"))
        check_page(page, Watch(page), "Explore", "Filled in:", None)
        assert spinner.count() == 0
        page.reload()  # a later visit imports nothing: no starting spinner
        check_page(page, Watch(page), "Explore", "Filled in:", None)
        assert spinner.count() == 0
