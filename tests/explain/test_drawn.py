"""ui.drawn: drawings kept beside a shared result, per settings, for as long as the result lives."""

from __future__ import annotations

import gc
import json

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
    drawing = draw("figure", frame, record, "attribution-ig")
    assert drawing.csv == spreadsheet_csv(frame).encode()  # formula-like cells neutralised
    assert drawing.json == json.dumps(record, ensure_ascii=False, indent=1).encode()
    assert (drawing.figure, drawing.frame, drawing.name) == ("figure", frame, "attribution-ig")


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
