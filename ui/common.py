"""What every page shares: error display, the latest result, state in the URL, the share panel (the model
picker is in ui/models.py, the masking panel in ui/strategy.py).

State in the URL: widgets owned by a page read their initial value from the link (``url_get``/``url_int``,
a masking setting through ``mlm_core.links``) and write it back (``url_set``); widget groups that live
in a shared module (the corpus picker, the training settings) are declared as ``UrlField``s, seeded from
the link before they are drawn (``restore_from_url``) and written back after (``save_to_url``). A value a
link cannot use falls back to the default with a short warning (``url_ignored``), never a traceback.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from mlm_core.settings import ParamSpec
from mlm_core.text.corpus import TEXT_UNITS
from mlm_core.views.html import escape_markdown
from ui.corpus import DEMO, UPLOAD

UPLOAD_NOTE = ("An uploaded file cannot travel in a link: the link keeps every setting, and whoever opens it "
               "uploads the file again.")


def working(message: str, needed: bool = True):
    """``st.spinner(message)`` when the block may take a while; nothing when its answer is at hand.

    Each spinner starts a timer thread and sends a message even when it never shows: with a class
    rerunning a page whose results are shared, spinners were about a tenth of the server's time.
    """
    return st.spinner(message) if needed else contextlib.nullcontext()


def is_latest(name: str, key: tuple) -> bool:
    """Whether ``latest_result(name, key, ...)`` would answer from this session's entry."""
    cached = st.session_state.get(f"latest-{name}")
    return cached is not None and cached[0] == key


def latest_result(name: str, key: tuple, compute: Callable[[], Any],
                  keep_if: Callable[[Any], bool] = lambda result: True) -> Any:
    """``compute()``, reused while ``key`` stays the same: one entry per ``name`` and session.

    Changing a layer, head or tab reruns the whole page; without this every such click would run
    the model again. Only the latest result is kept, and only if ``keep_if(result)``, so memory
    does not grow with use (a class of 30 keeps 30 entries).
    """
    if is_latest(name, key):
        return st.session_state[f"latest-{name}"][1]
    result = compute()
    st.session_state[f"latest-{name}"] = (key, result) if keep_if(result) else None
    return result


def blank_gaps(frame: pd.DataFrame, formats: dict[str, str]) -> set[str]:
    """Turn each column of ``formats`` that has gaps into text, formatted and blank in the gaps (in place).

    Streamlit's grid draws a missing number as "None" whatever its display format, so only text shows a
    blank; columns without gaps stay numbers, which sort as numbers. Returns the columns turned into text.
    """
    gapped = {column for column in formats if frame[column].isna().any()}
    for column in gapped:
        form = formats[column]
        frame[column] = ["" if pd.isna(v) else form.format(v) for v in frame[column]]
    return gapped


def show_error(exc: Exception) -> None:
    """A message for the user, never a traceback; what it quotes (a model id, a pattern) stays literal."""
    st.error(escape_markdown(str(exc)))


# --------------------------------------------------------------------------- state in the URL


def url_ignored(name: str, raw: str, used: object, reason: str = "") -> None:
    """Say that the link's ``name=raw`` cannot be used and what is used instead (a hand-edited link, say)."""
    because = f" ({reason.rstrip('.')})" if reason else ""
    st.warning(escape_markdown(f"The link's {name}={raw[:80]!r} cannot be used{because}: using {used} instead."))


def url_get(name: str, default: str = "") -> str:
    return st.query_params.get(name, default)


def url_set(name: str, value, default="") -> None:
    """Write ``name`` to the URL; the default value is left out so links stay short."""
    value = "" if value is None else str(value)
    if value and value != str(default):
        url_put(name, value)
    elif name in st.query_params:
        del st.query_params[name]


def url_put(name: str, value: str) -> None:
    """``st.query_params[name] = value``, unless it already says so: every assignment sends the browser a
    message, changed or not (three per run of the Explore page, each handled by the server's one event loop)."""
    if st.query_params.get(name) != value:
        st.query_params[name] = value


def url_int(name: str, default: int, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high`` from the URL; the default (with a warning) if the link's is not."""
    raw = url_get(name)
    try:
        value = int(raw)
    except ValueError:  # absent, "abc", "--5", "²"
        value = None
    if value is not None and low <= value <= high:
        return value
    if raw:
        url_ignored(name, raw, default, f"a whole number from {low} to {high}")
    return default


def _same(value):
    return value


@dataclass(frozen=True)
class UrlField:
    """A widget whose value lives in the URL as ``spec.name``; ``spec.parse`` checks what a link says.

    ``read`` turns the parsed value into the widget's (a label, a pair) and may raise ``ValueError``;
    ``write`` is its inverse. Example: ``UrlField("batch-seeds", ParamSpec("seeds", "int", 1, "", 1, 5))``.
    """

    key: str  # the widget's key
    spec: ParamSpec  # URL name, default and check
    read: Callable[[Any], Any] = _same
    write: Callable[[Any], Any] = _same


def checked_by(check: Callable[[str], object]) -> Callable[[str], str]:
    """A ``UrlField.read`` for free text that ``check`` must accept (it raises ValueError otherwise)."""

    def read(text: str) -> str:
        check(text)
        return text

    return read


def corpus_url_fields(key: str) -> tuple[UrlField, ...]:
    """ui.corpus.corpus_input(key)'s choices that a link can carry: demo or upload (not the file), text unit."""
    sources = {"demo": DEMO, "upload": UPLOAD}
    return (
        UrlField(f"{key}-source", ParamSpec("corpus", "choice", "demo", "Demo corpus or an upload.",
                                            choices=tuple(sources)),
                 read=sources.__getitem__, write=lambda label: "upload" if label == UPLOAD else "demo"),
        UrlField(f"{key}-unit", ParamSpec("text_unit", "choice", TEXT_UNITS[0], "One text per line or paragraph.",
                                          choices=TEXT_UNITS)),
    )


def restore_from_url(fields: Iterable[UrlField]) -> None:
    """Before the widgets are drawn: give each one not yet in this session the link's value, if usable."""
    for field in fields:
        raw = st.query_params.get(field.spec.name)
        if raw is None or field.key in st.session_state:  # the session's own value wins after the first run
            continue
        try:
            st.session_state[field.key] = field.read(field.spec.parse(raw))
        except (ValueError, KeyError) as exc:  # InputError is a ValueError
            url_ignored(field.spec.name, raw, field.spec.format(field.spec.default), str(exc).strip("'\""))


def save_to_url(fields: Iterable[UrlField]) -> None:
    """After the widgets are drawn: their values into the URL (defaults left out, so links stay short)."""
    for field in fields:
        if field.key in st.session_state:
            value = field.spec.format(field.write(st.session_state[field.key]))
            url_set(field.spec.name, value, field.spec.format(field.spec.default))
        elif field.spec.name in st.query_params:
            del st.query_params[field.spec.name]


# --------------------------------------------------------------------------- share panel


def share_link(page: str) -> str:
    """The link that reproduces this view: the page's address plus the current URL state.

    ``st.context.url`` is the browser's address of this page without its query; outside a browser
    session (AppTest) there is none and the link stays relative (``/page?...``).
    """
    query = urllib.parse.urlencode(st.query_params.to_dict(), quote_via=urllib.parse.quote)
    try:
        url = st.context.url or ""
    except Exception:  # noqa: BLE001 - no session context: a relative link is still useful
        url = ""
    if url:
        parts = urllib.parse.urlsplit(url)
        base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))
    else:
        base = f"/{page}"
    return base + (f"?{query}" if query else "")


def share_panel(page: str, report: str | Callable[[], str] | None = None, file_name: str = "",
                note: str = "") -> None:
    """'Copy link' (a code block: its copy button needs no script of ours), a note, and the report download.

    ``report`` is the view as a standalone HTML page, or a function that builds it when the button
    is pressed; ``note`` says what the link cannot carry (an upload, a very long text).
    """
    with st.expander("Share this view: link" + (" and handout" if report is not None else ""),
                     key=share_key(page), on_change="rerun") as panel:
        # Drawn only while open: every element is sent to the browser on every rerun, folded away or not, and
        # a class of 30 reruns the page at once (the server's time per rerun is mostly Streamlit's per element).
        if not panel.open:
            return
        st.caption("Copy the link (button at the right of the box): opening it reproduces this view.")
        st.code(share_link(page), language=None, wrap_lines=True)
        if note:
            st.caption(note)
        if report is not None:
            data = report if callable(report) else report.encode("utf-8")
            st.download_button("Download this view as a standalone HTML report", data, file_name=file_name,
                               mime="text/html", key=f"{page}-report", on_click="ignore")


def share_key(page: str) -> str:
    """The session-state key of ``page``'s share panel: True while it is open."""
    return f"{page}-share"
