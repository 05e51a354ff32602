"""Helpers shared by the browser tests: waiting for Streamlit's runs, and watching for what must not happen."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from support import REPO, free_port

EXCEPTION = "[data-testid='stException']"
RUNNING = "[data-testid='stStatusWidgetRunningIcon'], [data-testid='stStatusWidgetRunningManIcon']"
TOKEN_STRIP = "div:has(> span[title])"  # render.token_chips' container (the page's first strip)
ROOT = REPO  # the checkout: app.py is started from here
SERVER_START_TIMEOUT_S = 180


def page_url(app_url: str, path: str = "", **query) -> str:
    """``app_url/path?query``, every value percent-encoded (spaces as %20, as Streamlit writes them)."""
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return f"{app_url}/{path}" + (f"?{encoded}" if encoded else "")


def settle(page, timeout_ms: int = 120_000) -> None:
    """Wait until Streamlit has finished the current run: nothing running and nothing left stale."""
    page.wait_for_timeout(500)
    page.wait_for_function(
        "document.querySelectorAll('[data-stale=\"true\"]').length === 0 && "
        f"!document.querySelector(\"{RUNNING}\")",
        timeout=timeout_ms,
    )
    page.wait_for_timeout(300)




class Watch:
    """Dialogs (alert/confirm/prompt) and uncaught JavaScript errors seen by one page."""

    def __init__(self, page):
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def assert_quiet(self) -> None:
        assert self.dialogs == [], f"a dialog opened: {self.dialogs}"
        assert self.errors == [], f"uncaught JavaScript errors: {self.errors}"


def assert_no_script_ran(page) -> None:
    """The payloads used by these tests set window.__xss or add an <img src=x>; neither may happen."""
    page.wait_for_timeout(1000)  # give an injected handler (onerror of a broken image) the chance to fire
    assert page.evaluate("() => typeof window.__xss") == "undefined"
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("[onerror]").count() == 0
    assert page.locator("script:not([src])", has_text="__xss").count() == 0


def chip_kinds(page) -> list[tuple[str, str]]:
    """(text, kind) of every chip of the page's first token strip; kind is '' for unmasked tokens."""
    chips = page.locator(TOKEN_STRIP).first.locator("span[title]")
    pairs = chips.evaluate_all("els => els.map(e => [e.textContent, e.title])")
    return [(text, title.split(": ", 1)[1] if ": " in title else "") for text, title in pairs]


def expected_exploration(loaded, text: str, name: str | None, seed: int = 0, **params):
    """What the Explore page computes for ``text`` with strategy ``name``: its defaults updated by ``params``."""
    from mlm_core.explain.exploration import explore
    from mlm_core.masking import STRATEGIES, build_strategy

    values = {spec.name: spec.default for spec in STRATEGIES[name].params} | params if name else None
    return explore(loaded, text, build_strategy(name, values), seed)


def expected_chips(loaded, exploration) -> list[tuple[str, str]]:
    """What ``chip_kinds`` should read for an ``mlm_core.explain.exploration.explore`` result."""
    shown = loaded.tokenizer.convert_ids_to_tokens(list(exploration.input_ids))
    labels = {"masked": "masked", "random": "random token", "kept": "kept", "excluded": "excluded"}
    return [(token, labels.get(kind, "")) for token, kind in zip(shown, exploration.kinds)]


def select_option(page, label: str, option: str) -> None:
    """Open the selectbox whose label is ``label`` and click ``option``; wait for the rerun."""
    page.locator("[data-testid='stSelectbox']").filter(has_text=label).first.click()
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)


def texts(locator) -> list[str]:
    """textContent of every match (SVG text, as in Plotly's axes, has no innerText)."""
    return locator.evaluate_all("els => els.map(e => e.textContent)")


@contextlib.contextmanager
def streamlit_server(tmp_path_factory, home=None, script: str = "app.py", **extra_env: str):
    """``streamlit run app.py`` (or ``script``, a path in the checkout) on a free port, a process of its own;
    yields its URL once /_stcore/health answers.

    Its MASKLAB_HOME (run store, batch result cache) is ``home``, else an empty temporary folder: the
    tests never see or touch the user's runs, and every batch analysis is computed, not read from a
    cache. ``extra_env`` adds to its environment.
    """
    port = free_port()
    log = (tmp_path_factory.mktemp("streamlit") / "server.log").open("w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "MASKLAB_HOME": str(home or tmp_path_factory.mktemp("masklab-home-app")), **extra_env}
    server = subprocess.Popen(
        [
            sys.executable, "-m", "streamlit", "run", script,
            "--server.headless", "true",
            "--server.port", str(port),
            "--server.address", "127.0.0.1",
            "--browser.gatherUsageStats", "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(f"streamlit exited with {server.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer /_stcore/health within {SERVER_START_TIMEOUT_S} s")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
