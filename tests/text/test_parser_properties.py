"""Property tests of every parser of user input: corpus files, parameters from links and the CLI,
sweeps, heads and probe sentences. Each returns a value or raises the project's InputError, whatever
it is given, and what a writer produces reads back the same.

The strategies' own properties are in tests/masking/test_masking_properties.py; raw-bytes fuzzing of the corpus
reader in tests/fuzz/.
"""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mlm_core.errors import CorpusError, InputError
from mlm_core.evaluate import MAX_RATES, parse_rates
from mlm_core.links import parse_heads_off
from mlm_core.masking import (
    STRATEGIES,
    DrawPolicy,
    RateSchedule,
    params_of,
    strategy_from_params,
)
from mlm_core.settings import param_specs
from mlm_core.text.corpus import read_corpus, table_columns
from mlm_core.text.tokens import has_visible
from mlm_core.training.probes import parse_sentences

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text a file can hold as UTF-8 (no lone surrogates), without control characters (a file of them is
# refused as binary, which tests/text/test_corpus.py checks) and without U+FEFF (a leading one is a BOM).
CELL = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufeff"), max_size=30)
ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ALL_SPECS = list(
    dict.fromkeys(  # the CorruptingStep subclasses share their corruption settings: each once
        spec
        for cls in [*(s.cls for s in STRATEGIES.values()), DrawPolicy, RateSchedule]
        for spec in param_specs(cls)
    )
)


def expected_texts(cells: list[str]) -> list[str]:
    """What the reader keeps of written cells: stripped, and only those with a visible character."""
    return [c.strip() for c in cells if has_visible(c)]


# ----------------------------------------------------------------------------- corpus files


@SETTINGS
@given(lines=st.lists(CELL.filter(lambda c: "\n" not in c and "\r" not in c), max_size=12))
def test_txt_lines_read_back(lines):
    data = ("\n".join(lines) + "\n").encode()
    expected = expected_texts(lines)
    if not expected:
        with pytest.raises(CorpusError):
            read_corpus(data, "a.txt")
        return
    corpus = read_corpus(data, "a.txt")
    assert list(corpus.texts) == expected and corpus.encoding == "utf-8" and corpus.column is None


@SETTINGS
@given(rows=st.lists(st.tuples(CELL, CELL), max_size=10), delimiter=st.sampled_from([",", "\t"]), other=CELL)
def test_tables_written_by_the_csv_module_read_back(rows, delimiter, other):
    names = [other.strip() or "x", "text"]
    assume(
        names[0].lower() not in ("text", "sentence", "content", "body", "review")
    )  # "text" must be the pick
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(names)
    writer.writerows(rows)
    data = buffer.getvalue().encode()
    name = "a.csv" if delimiter == "," else "a.tsv"
    assert table_columns(data, name) == names
    kept = [r for r in rows if any(c.strip() for c in r)]  # rows of blank cells are skipped as blank lines
    for column, index in ((None, 1), (names[0], 0)):
        expected = expected_texts([r[index] for r in kept])
        if not expected:
            with pytest.raises(CorpusError, match="has no text"):
                read_corpus(data, name, column)
            continue
        corpus = read_corpus(data, name, column)
        assert corpus.column == names[index] and list(corpus.texts) == expected


@SETTINGS
@given(
    records=st.lists(st.fixed_dictionaries({"text": CELL, "id": st.integers()}), max_size=10),
    ascii_only=st.booleans(),
)
def test_jsonl_written_by_json_dumps_reads_back(records, ascii_only):
    data = "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in records).encode()
    expected = expected_texts([r["text"] for r in records])
    if not expected:
        with pytest.raises(CorpusError):
            read_corpus(data, "a.jsonl")
        return
    corpus = read_corpus(data, "a.jsonl")
    assert corpus.column == "text" and list(corpus.texts) == expected
    assert table_columns(data, "a.jsonl") == ["text"]


@SETTINGS
@given(
    text=st.text(max_size=80),
    name=st.text(max_size=20),
    column=st.none() | st.text(max_size=8),
    unit=st.sampled_from(["line", "paragraph", "sentence"]),
)
def test_any_text_file_and_name_give_a_corpus_or_a_one_line_corpus_error(text, name, column, unit):
    data = text.encode("utf-8", "surrogatepass")  # lone surrogates make invalid UTF-8: read as Windows-1252
    try:
        corpus = read_corpus(data, name, column, unit)
    except CorpusError as exc:
        assert str(exc).strip() and "\n" not in str(exc) and "\r" not in str(exc)
        return
    assert corpus.texts and all(t == t.strip() and has_visible(t) for t in corpus.texts)
    assert "/" not in corpus.name


# ----------------------------------------------------------------------------- parameters (links, CLI)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.name)
@SETTINGS
@given(value=ANY_VALUE)
def test_every_parameter_parses_any_value_or_says_why(spec, value):
    try:
        parsed = spec.parse(value)
    except InputError as exc:
        assert spec.name in str(exc) and "\n" not in str(exc)
        return
    assert spec.parse(spec.format(parsed)) == parsed  # what a link writes reads back the same
    if spec.kind in ("float", "int"):
        assert math.isfinite(parsed)
        assert (spec.min is None or parsed >= spec.min) and (spec.max is None or parsed <= spec.max)


@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if s.kind == "float"], ids=lambda s: s.name)
@SETTINGS
@given(data=st.data())
def test_every_float_parameter_survives_a_link_exactly(spec, data):
    # Before the fix, format wrote 6 significant digits: 0.00392156862745098 came back as 0.00392157.
    low = 0.0 if spec.min is None else spec.min
    value = data.draw(st.floats(low, low + 1e6 if spec.max is None else spec.max, allow_nan=False))
    assert spec.parse(spec.format(value)) == value


@SETTINGS
@given(
    name=st.sampled_from(sorted(STRATEGIES)) | st.text(max_size=12),
    params=st.dictionaries(
        st.sampled_from(sorted({s.name for s in ALL_SPECS} | {"steps", "name"})) | st.text(max_size=6),
        ANY_VALUE,
        max_size=5,
    ),
)
def test_strategies_from_any_parameters_build_or_say_why(name, params):
    try:
        strategy = strategy_from_params(name, params)
    except InputError as exc:
        assert str(exc).strip() and "\n" not in str(exc)
        return
    assert strategy_from_params(strategy.name, params_of(strategy, as_strings=True)) == strategy


# ----------------------------------------------------------------------------- sweeps, heads, probes


@SETTINGS
@given(
    text=st.text(max_size=40) | st.lists(st.floats(-1, 2), max_size=6).map(lambda r: ",".join(map(str, r)))
)
def test_rates_parse_into_a_short_list_of_valid_rates_or_say_why(text):
    try:
        rates = parse_rates(text)
    except InputError:
        return
    assert 0 < len(rates) <= MAX_RATES and len(set(rates)) == len(rates)
    assert all(0 < r <= 1 and math.isfinite(r) for r in rates)


@SETTINGS
@given(rates=st.lists(st.floats(0, 1, exclude_min=True), min_size=1, max_size=MAX_RATES))
def test_a_written_list_of_rates_reads_back(rates):
    assert parse_rates(",".join(repr(r) for r in rates)) == tuple(dict.fromkeys(rates))


@SETTINGS
@given(
    text=st.text(max_size=40), pairs=st.lists(st.tuples(st.integers(0, 99), st.integers(0, 99)), max_size=6)
)
def test_heads_parse_or_say_why_and_written_heads_read_back(text, pairs):
    try:
        parsed = parse_heads_off(text)
        assert all(isinstance(layer, int) and isinstance(head, int) for layer, head in parsed)
    except InputError:
        pass
    assert parse_heads_off(", ".join(f"{layer}:{head}" for layer, head in pairs)) == tuple(pairs)


@SETTINGS
@given(text=st.text(max_size=200))
def test_probe_sentences_parse_or_say_why(text):
    try:
        sentences = parse_sentences(text)
    except InputError:
        return
    assert sentences and all(s.text == s.text.strip() and s.text for s in sentences)


def test_compositions_nested_or_long_beyond_reason_are_refused():
    # A hand-made link nesting compose 1,000 deep overflowed the interpreter (RecursionError); one with
    # thousands of steps would make every batch crawl. Both are refused with a message now.
    steps = [{"name": "random", "params": {}}]
    for _ in range(1000):
        steps = [{"name": "compose", "params": {"steps": steps}}]
    with pytest.raises(InputError, match="nest at most"):
        strategy_from_params("compose", {"steps": steps})
    with pytest.raises(InputError, match="at most 32 steps"):
        strategy_from_params("compose", {"steps": [{"name": "random"}] * 33})
    nested = {"steps": [{"name": "compose", "params": {"steps": [{"name": "random"}]}}]}
    flat = strategy_from_params("compose", {"steps": [{"name": "random"}]})
    assert strategy_from_params("compose", nested) == flat  # a nested composition is flattened
