"""Charts and downloads drawn once per shared result, for every session that shows it.

When a class types the teacher's sentence, every session gets the same result object from the shared
results (mlm_core.explain.result_cache), and about a third of a rerun's CPU went into drawing the same figures
and writing the same CSV/JSON again, under the one interpreter lock of the server
(benchmarks/classroom.py). What is drawn depends only on the result and the view's settings, so it is
kept beside the result, for as long as the result lives, under a key of those settings.

Kept values are shared between sessions and threads: nothing may change them after ``build`` returns
(Streamlit copies a figure before serialising it; the page only reads the tables).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import pandas as pd
import streamlit as st
from plotly.basedatatypes import BaseFigure

from mlm_core.views.spreadsheet import spreadsheet_csv
from ui.common import working

MAX_DRAWN_PER_RESULT = 32  # views × settings a class typically flips through for one sentence
# A sentence's drawings take tens of kB; a 512-token text's attention drawing takes megabytes and is
# drawn for each session again rather than kept beside every live result.
MAX_DRAWN_BYTES_PER_RESULT = 2_000_000

_lock = threading.RLock()  # re-entrant: a result's weak-reference callback may run while it is held
_drawn: dict[int, tuple[weakref.ref, OrderedDict]] = {}  # id(result) -> (the result, its drawings by key)
_building: dict[tuple[int, Hashable], threading.Event] = {}  # (id(result), key) -> set when its build ends


def _forget(result_id: int, ref: weakref.ref) -> None:
    with _lock:
        entry = _drawn.get(result_id)
        if entry is not None and entry[0] is ref:  # not a newer result that reuses the id
            del _drawn[result_id]


def drawn(result: Any, key: Hashable, build: Callable[[], Any], size: Callable[[Any], int] = lambda value: 0,
          message: str | None = None) -> Any:
    """``build()``, kept for ``result`` (any object that accepts weak references) under ``key``.

    ``message``: a spinner's text while ``build`` runs (none when the drawing is already kept).
    ``key`` must name everything ``build`` draws from besides ``result`` itself; ``size(value)``: about
    how many bytes the value holds (kept drawings of one result stay under MAX_DRAWN_BYTES_PER_RESULT).
    Sessions that miss at once build it once: the others wait for that drawing (a class opening the
    teacher's link drew each view 30 times otherwise). A drawing too large to keep, or a build that
    failed, leaves each waiting session to build its own.
    """
    result_id = id(result)
    flight_key = (result_id, key)
    waited = False
    while True:
        with _lock:
            entry = _drawn.get(result_id)
            if entry is not None and entry[0]() is result and key in entry[1]:
                entry[1].move_to_end(key)
                return entry[1][key][0]
            flight = None if waited else _building.get(flight_key)
            if flight is None:
                leading = not waited
                if leading:
                    _building[flight_key] = own = threading.Event()
                break
        flight.wait()
        waited = True
    try:
        with working(message or "", message is not None):
            value = build()
        _keep(result, result_id, key, value, size(value))
        return value
    finally:
        if leading:
            with _lock:
                _building.pop(flight_key, None)
            own.set()


def _keep(result: Any, result_id: int, key: Hashable, value: Any, nbytes: int) -> None:
    if nbytes > MAX_DRAWN_BYTES_PER_RESULT:
        return
    with _lock:
        entry = _drawn.get(result_id)
        if entry is None or entry[0]() is not result:  # first drawing, or a dead result's id reused
            entry = (weakref.ref(result, lambda ref, rid=result_id: _forget(rid, ref)), OrderedDict())
            _drawn[result_id] = entry
        drawings = entry[1]
        drawings[key] = (value, nbytes)
        drawings.move_to_end(key)
        while (len(drawings) > MAX_DRAWN_PER_RESULT
               or sum(kept for _, kept in drawings.values()) > MAX_DRAWN_BYTES_PER_RESULT):
            drawings.popitem(last=False)


def drawn_count() -> int:
    """How many results have drawings kept (for tests)."""
    with _lock:
        return len(_drawn)


class Drawing(NamedTuple):
    """A chart and its numbers, ready to show: the table, and the record its JSON file holds.

    The files (``name``.csv/.json) are written only when someone downloads them: writing both for
    every view of every prediction took about 8% of the server's time in a classroom run (py-spy),
    for buttons that are rarely pressed.
    """

    figure: object
    frame: pd.DataFrame
    record: dict
    name: str

    def csv(self) -> bytes:
        return spreadsheet_csv(self.frame).encode()

    def json(self) -> bytes:
        return json.dumps(self.record, ensure_ascii=False, indent=1).encode()


# Bytes a drawing holds per cell of its table: its CSV plus twice its JSON (the figure holds about as much again)
# came to 46-50 per cell for attention tables of 12 and 64 tokens.
BYTES_PER_CELL = 48


def drawing_size(drawing: Drawing) -> int:
    """About the bytes a drawing holds, from its table's size: its files are no longer made in advance."""
    return BYTES_PER_CELL * int(drawing.frame.size)


class _Serialised(BaseFigure):
    """A figure as ``st.plotly_chart`` reads it: ``to_dict()`` only, answered from a dict made once.

    Streamlit asks a figure for ``to_dict()`` on every call, a deep copy of the whole figure (1.4 ms for a
    12-token attention heatmap, 65 ms at 512 tokens), and a kept drawing is shown by every session of a
    class on every rerun. Not a figure to draw or change: it skips plotly's own set-up on purpose.
    """

    def __init__(self, spec: dict) -> None:  # no BaseFigure.__init__: see the class docstring
        self._spec = spec

    def to_dict(self) -> dict:
        return self._spec


def for_chart(figure: BaseFigure) -> BaseFigure:
    """What to give ``st.plotly_chart`` for ``figure``: its dict without plotly's template, made once for as
    long as the figure lives (a figure already in this form is returned as it is).

    Figures passed here are never changed afterwards (drawings are shared and read only), and Streamlit
    only serialises the dict. It is kept on the figure itself (plotly figures are not hashable); two
    sessions that show a new figure at the same moment may each make it, harmlessly.

    Why without the template: the app draws every chart in Streamlit's theme, which replaces plotly's
    (the page looked the same to the pixel without it, in Chromium). The template was 7 of the 12 kB of a
    12-token attention heatmap and 213 of its 245 lists and dicts: bytes every rerun of every session
    serialised, hashed and sent, and objects that kept drawings held for the garbage collector to walk
    (its full collections took 48-129 ms of the interpreter lock during a class of 30, most of what they
    walked the templates' small lists). Reports keep it: they draw their own figures
    (``mlm_core.views.reports``).
    """
    if isinstance(figure, _Serialised):
        return figure
    form = getattr(figure, "_serialised_form", None)
    if form is None:
        spec = figure.to_dict()
        spec.get("layout", {}).pop("template", None)
        form = figure._serialised_form = _Serialised(spec)
    return form


def draw(figure, frame: pd.DataFrame, record: dict, name: str) -> Drawing:
    """A chart with the numbers behind it: the table (CSV) and the table plus its settings (JSON). The
    chart is kept in the form ``st.plotly_chart`` reads (``for_chart``), not as the plotly figure."""
    return Drawing(None if figure is None else for_chart(figure), frame, record, name)


def download_buttons(drawing: Drawing, key: str) -> None:
    # One row of its own rather than two columns: a block per column was two more messages to the browser
    # on every rerun of every session.
    row = st.container(horizontal=True)
    row.download_button("Numbers (CSV)", drawing.csv, f"{drawing.name}.csv", "text/csv",
                        key=f"{key}-csv", on_click="ignore")
    row.download_button("Numbers (JSON)", drawing.json, f"{drawing.name}.json", "application/json",
                        key=f"{key}-json", on_click="ignore")
