"""ui.drawn: drawings kept beside a shared result, per settings, for as long as the result lives."""

from __future__ import annotations

import gc
import json
import threading
import time

import pandas as pd

from mlm_core.views.spreadsheet import spreadsheet_csv
from ui import drawn as module
from ui.drawn import MAX_DRAWN_BYTES_PER_RESULT, MAX_DRAWN_PER_RESULT, draw, drawn, drawn_count


class Result:  # any object that takes weak references, like an Exploration
    pass


def counting(value):
    calls = []

    def build():
        calls.append(1)
        return value

    return build, calls


def test_a_result_and_key_are_drawn_once_for_every_caller():
    result = Result()
    build, calls = counting("figure")
    assert drawn(result, ("attention", "One head", 5), build) == "figure"
    assert drawn(result, ("attention", "One head", 5), build) == "figure"
    assert len(calls) == 1
    other, other_calls = counting("other figure")
    assert drawn(result, ("attention", "One head", 4), other) == "other figure"  # other settings: drawn again
    assert drawn(Result(), ("attention", "One head", 5), other) == "other figure"  # another result: drawn again
    assert len(other_calls) == 2


def test_drawings_go_with_their_result():
    gc.collect()  # results other tests let go of leave first
    before = drawn_count()
    result = Result()
    drawn(result, "key", lambda: "figure")
    assert drawn_count() == before + 1
    result_id = id(result)
    del result
    gc.collect()
    assert result_id not in module._drawn
    assert drawn_count() == before


def test_a_result_keeps_only_its_latest_drawings():
    result = Result()
    for n in range(MAX_DRAWN_PER_RESULT + 5):
        drawn(result, n, lambda n=n: n)
    build, calls = counting("again")
    assert drawn(result, 0, build) == "again"  # the oldest was let go
    assert len(calls) == 1
    assert len(module._drawn[id(result)][1]) == MAX_DRAWN_PER_RESULT


def test_draw_writes_the_numbers_as_before():
    frame = pd.DataFrame({"token": ["=1+1", "cat"], "score": [0.5, -0.25]})
    record = {"tokens": ["=1+1", "cat"], "note": "é"}
    import plotly.graph_objects as go

    figure = go.Figure(go.Bar(x=[0.5, -0.25], y=["=1+1", "cat"]))
    drawing = draw(figure, frame, record, "attribution-ig")
    assert drawing.csv() == spreadsheet_csv(frame).encode()  # formula-like cells neutralised
    assert drawing.json() == json.dumps(record, ensure_ascii=False, indent=1).encode()
    assert (drawing.figure, drawing.frame, drawing.name) == (module.for_chart(figure), frame, "attribution-ig")


def test_large_drawings_are_not_kept_and_kept_ones_stay_under_the_byte_budget():
    result = Result()
    build, calls = counting("huge")
    for _ in range(2):
        drawn(result, "huge", build, size=lambda value: MAX_DRAWN_BYTES_PER_RESULT + 1)
    assert len(calls) == 2  # drawn for each caller, never kept
    third = MAX_DRAWN_BYTES_PER_RESULT // 3
    for n in range(4):
        drawn(result, n, lambda n=n: n, size=lambda value: third)
    kept = module._drawn[id(result)][1]
    assert list(kept) == [1, 2, 3]  # the oldest went to make room


def test_sessions_that_miss_at_once_build_once():
    result, started, calls = Result(), threading.Event(), []

    def slow_build():
        calls.append(1)
        started.set()
        time.sleep(0.2)  # the other sessions arrive while this one draws
        return "figure"

    got = []
    threads = [threading.Thread(target=lambda: got.append(drawn(result, "view", slow_build))) for _ in range(8)]
    threads[0].start()
    started.wait(5)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert got == ["figure"] * 8 and len(calls) == 1


def test_a_failed_or_unkept_build_leaves_the_waiting_sessions_to_build_their_own():
    result, started, calls = Result(), threading.Event(), []

    def failing_then_working():
        calls.append(1)
        if len(calls) == 1:
            started.set()
            time.sleep(0.2)
            raise RuntimeError("the first build fails")
        return "figure"

    outcomes = []

    def session():
        try:
            outcomes.append(drawn(result, "view", failing_then_working))
        except RuntimeError:
            outcomes.append("failed")

    first = threading.Thread(target=session)
    first.start()
    started.wait(5)
    others = [threading.Thread(target=session) for _ in range(3)]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(10)
    assert sorted(outcomes) == ["failed", "figure", "figure", "figure"]
    assert 2 <= len(calls) <= 4  # the waiting sessions built again; none waited forever


def test_a_shown_figure_serialises_as_the_figure_itself_once():
    import plotly.graph_objects as go
    import plotly.io
    import plotly.tools

    figure = go.Figure(go.Heatmap(z=[[0.25, 0.75], [1.0, 0.0]], x=["a", "b"], y=["a", "b"]))
    form = module.for_chart(figure)
    assert module.for_chart(figure) is form  # made once, then kept on the figure
    # What st.plotly_chart does with it: the dict it asks for, then JSON without validating again.
    spec = plotly.tools.return_figure_from_figure_or_data(form, validate_figure=True)
    sent = json.loads(plotly.io.to_json(spec, validate=False))
    whole = json.loads(plotly.io.to_json(figure, validate=False))
    assert "template" in whole["layout"] and "template" not in sent["layout"]  # the app's theme draws it
    del whole["layout"]["template"]
    assert sent == whole  # everything else as the figure says
    assert module.for_chart(form) is form  # already in the form st.plotly_chart reads
    assert "_serialised_form" not in figure.to_json()  # the kept form is not part of the figure
    assert "template" in figure.to_dict()["layout"]  # the figure itself is left as it was (reports use it)


def test_a_drawing_size_grows_with_its_table():
    small = draw(None, pd.DataFrame([[0.5] * 4] * 4), {}, "small")
    large = draw(None, pd.DataFrame([[0.5] * 40] * 40), {}, "large")
    assert module.drawing_size(large) == 100 * module.drawing_size(small) > 0
