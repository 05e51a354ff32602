"""What the AppTest suites share: opening a page of app.py with a query, clean caches, job cleanup."""

from __future__ import annotations

import contextlib
import os
import re
import signal

import streamlit as st
from streamlit.testing.v1 import AppTest

from mlm_core.policy import reload_policy
from mlm_core.training.store import RUNNING
from support import APP


def open_app_page(page: str | None, query: dict | None = None, session: dict | None = None) -> AppTest:
    """Run app.py (routed to ``page`` if given) with ``query`` in the URL and ``session`` in its session
    state before the first run (e.g. who the browser is: ui.identity.SESSION_OWNER_KEY); fail on any exception."""
    app = AppTest.from_file(APP, default_timeout=120)  # model loading takes longer than the default 3 s
    for key, value in (query or {}).items():
        app.query_params[key] = value
    for key, value in (session or {}).items():
        app.session_state[key] = value
    if page:
        app.switch_page(page)
    app.run()
    assert not app.exception, app.exception
    return app


def open_why_tab(app: AppTest, panel: str) -> AppTest:
    """Open the Explore page's Why? tab of ``panel`` ("attention", "whatif", "words") as a click would, and
    rerun: only the open tab's panel is drawn."""
    from ui.why_link import TAB_KEY, TABS

    app.session_state[TAB_KEY] = TABS[panel]
    app.run()
    assert not app.exception, app.exception
    return app


def open_share_panel(app: AppTest, page: str) -> str:
    """Open ``page``'s "Share this view" panel as a click would (it is drawn only while open), rerun, and
    return the link it shows."""
    from ui.common import share_key

    assert not app.code, "the folded share panel draws nothing"
    app.session_state[share_key(page)] = True
    app.run()
    assert not app.exception, app.exception
    (link,) = [c.value for c in app.code]
    return link


def clear_streamlit_caches() -> None:
    """Caches leak between AppTests in one process; tests clear them before and after."""
    st.cache_data.clear()
    st.cache_resource.clear()


def kill_running_jobs(store) -> None:
    """Kill the job processes still alive among ``store``'s runs (by their recorded pids only)."""
    for record in store.list():
        if record.status == RUNNING and record.pid and record.pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)


def shown_errors(app: AppTest) -> list[str]:
    """Every error box's text as the user reads it: the page escapes Markdown in messages (a model
    id or a regex quoted in one must not turn into a link or italics); the backslashes go here."""
    return [re.sub(r"\\(.)", r"\1", e.value) for e in [*app.error, *app.sidebar.error]]


@contextlib.contextmanager
def offering_server(monkeypatch, home, offered):
    """A server in ``home`` whose operator offers the model folder(s) under ``offered``; runs are anyone's to
    manage (a test's runs belong to no browser session); settings and caches fresh before and after."""
    monkeypatch.setenv("MASKLAB_HOME", str(home))
    monkeypatch.setenv("MASKLAB_MODEL_SOURCES", str(offered))
    monkeypatch.setenv("MASKLAB_OTHERS_MAY_MANAGE_RUNS", "true")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    reload_policy()
    clear_streamlit_caches()
    try:
        yield
    finally:
        clear_streamlit_caches()
        monkeypatch.undo()
        reload_policy()
