"""The Explore page in a real Chromium: predictions appear; the main flow works by clicking (type a
cloze sentence, switch strategies, attention and attribution views); HTML typed, in the URL or in a
model's own vocabulary stays text and no script runs."""

from __future__ import annotations

import re
import urllib.parse

import pytest
from playwright.sync_api import expect
from support.waiting import wait_for

from mlm_core.explain.predict import fill_text, predict
from mlm_core.text.tokens import tokenize
from ui.strategy import NONE

from .support import (
    EXCEPTION,
    Watch,
    assert_no_script_ran,
    chip_kinds,
    expected_chips,
    expected_exploration,
    page_url,
    select_option,
    settle,
    texts,
)

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


CLOZE = "The old lighthouse keeper walked along the rocky shore every morning before the [MASK] rose."


def filled_text(page) -> str:
    return filled_line(page).inner_text().split("Filled in:", 1)[1].strip()


def test_explore_flow_by_clicking(page, app_url, default_loaded, artifacts):
    """Type a cloze sentence, switch strategies, then look at attention and attribution, all by clicking."""
    watch = Watch(page)
    page.goto(explore_url(app_url))
    filled_line(page).wait_for()
    settle(page)
    box = page.locator("textarea").first
    box.fill(CLOZE)
    box.press("Control+Enter")
    typed = expected_exploration(default_loaded, CLOZE, None)
    want = fill_text(default_loaded, typed.prediction.filled_ids)
    wait_for(lambda: filled_text(page) == want, 120, f"the filled-in sentence {want!r}", interval=0.5)
    settle(page)
    assert chip_kinds(page) == expected_chips(default_loaded, typed)  # only the typed [MASK] is masked
    top = typed.prediction.predictions[0].top[0].token
    page.locator(".js-plotly-plot .ytick text", has_text=top).first.wait_for()  # its bar chart

    for name in ("whole-word", "span"):  # each strategy masks its own positions, as mlm_core draws them
        select_option(page, "Masking strategy", name)
        expected = expected_exploration(default_loaded, CLOZE, name)
        chips = expected_chips(default_loaded, expected)
        wait_for(lambda chips=chips: chip_kinds(page) == chips, 120, f"the {name} chips", interval=0.5)
        assert filled_text(page) == fill_text(default_loaded, expected.prediction.filled_ids)
        assert f"strategy={name}" in page.url
        page.screenshot(path=str(artifacts / f"explore-{name}.png"), full_page=True)
    masked = sum(kind != "" for _, kind in chips)
    assert masked > 1, "the span draw should mask more than the typed blank"

    page.get_by_role("heading", name="Why?").scroll_into_view_if_needed()
    page.get_by_role("tab", name="Attention").click()
    select_option(page, "View", "Rollout")
    last = default_loaded.num_layers - 1
    rollout = page.locator(".js-plotly-plot", has=page.locator(".gtitle", has_text=f"Rollout through layers 0–{last}"))
    rollout.first.wait_for()
    assert "view=rollout" in page.url  # the view's short name (old links with its label still open it)
    ticks = texts(rollout.first.locator(".xtick text"))
    assert ticks == [token for token, _ in chips]  # one column per token the model read
    page.screenshot(path=str(artifacts / "explore-attention.png"), full_page=True)

    page.get_by_role("tab", name="What if…").click()  # only the open tab's panel is drawn...
    page.get_by_text("Pick tokens or a rule").first.wait_for()
    assert "view=rollout" in page.url  # ...the hidden one's inputs wait in the link
    page.get_by_role("tab", name="Attention").click()
    rollout.first.wait_for()  # and come back from it

    page.get_by_role("tab", name="Which words mattered").click()
    first = expected.prediction.predictions[0]
    page.get_by_role("button", name="Explain", exact=True).click()
    title = f"Attribution to '{first.top[0].token}' at position {first.position}"
    chart = page.locator(".js-plotly-plot", has=page.locator(".gtitle", has_text=title))
    chart.first.wait_for()
    page.get_by_text("Integrated Gradients of p(", exact=False).first.wait_for()
    bars = texts(chart.first.locator(".xtick text"))
    assert bars == [token for token, _ in chips]  # one bar per token the model read
    settle(page)
    assert page.locator(EXCEPTION).count() == 0
    page.screenshot(path=str(artifacts / "explore-attribution.png"), full_page=True)
    watch.assert_quiet()


HOSTILE_TOKENS = ("<img src=x onerror=window.__xss=1>", "<b>bold</b>")  # model-supplied, not typed


@pytest.fixture(scope="module")
def hostile_model_dir(tmp_path_factory):
    """The tiny BERT with two HTML tokens in its vocabulary, biased so they are its first two guesses."""
    from conftest import TINY_VOCAB, build_tiny_bert
    from safetensors.torch import load_file, save_file

    vocab = [*TINY_VOCAB, *HOSTILE_TOKENS]
    folder = build_tiny_bert(tmp_path_factory.mktemp("hostile-vocab"), vocab=vocab)
    weights = load_file(folder / "model.safetensors")
    weights["cls.predictions.bias"][vocab.index(HOSTILE_TOKENS[0])] = 40.0
    weights["cls.predictions.bias"][vocab.index(HOSTILE_TOKENS[1])] = 39.0
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_html_in_a_model_vocabulary_is_shown_as_text(page, app_url, hostile_model_dir, artifacts):
    from mlm_core.model.loading import load_model

    text = "the cat sat on the [MASK] ."
    loaded = load_model(str(hostile_model_dir), device="cpu")
    expected = expected_exploration(loaded, text, None)
    top = [c.token for c in expected.prediction.predictions[0].top]
    assert top[:2] == list(HOSTILE_TOKENS)  # the fixture works: the model guesses the markup first
    watch = Watch(page)
    page.goto(page_url(app_url, "", model=str(hostile_model_dir), strategy=NONE, text=text))
    line = filled_line(page)
    line.wait_for()
    assert line.inner_text().split("Filled in:", 1)[1].strip() == f"the cat sat on the {HOSTILE_TOKENS[0]}."
    ticks = page.locator(".js-plotly-plot", has=page.locator(".gtitle", has_text="position 6 · masked")).locator(
        ".ytick text")
    wait_for(lambda: texts(ticks) == top[::-1], 120, "the guesses as tick labels", interval=0.5)  # the tags are their text

    page.get_by_role("tab", name="Which words mattered").click()
    page.get_by_role("button", name="Explain", exact=True).click()
    page.get_by_text(f"of p('{HOSTILE_TOKENS[0]}')", exact=False).first.wait_for()
    title = f"Attribution to '{HOSTILE_TOKENS[0]}' at position 6"
    page.locator(".js-plotly-plot .gtitle", has_text=title).first.wait_for()
    assert page.get_by_role("combobox", name="Masked position").input_value() == f"position 6 (guess '{top[0]}')"
    settle(page)
    assert page.locator(EXCEPTION).count() == 0
    assert page.locator("b", has_text="bold").count() == 0  # <b> never became an element
    assert_no_script_ran(page)
    page.screenshot(path=str(artifacts / "explore-hostile-vocabulary.png"), full_page=True)
    watch.assert_quiet()
