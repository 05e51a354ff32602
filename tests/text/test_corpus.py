"""Corpus reading: every row of RELIABILITY.md's 'Uploaded corpora' gives a clear message."""

import codecs
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlm_core.errors import CorpusError
from mlm_core.text.corpus import MAX_TEXT_CHARS, read_corpus, table_columns


def test_txt_lines_and_paragraphs():
    data = b"first line\n\nsecond line\nstill second\n"
    assert read_corpus(data, "a.txt").texts == ("first line", "second line", "still second")
    assert read_corpus(data, "a.txt", text_unit="paragraph").texts == ("first line", "second line still second")


def test_csv_preferred_column_and_explicit_column():
    data = b"id,text\n1,hello there\n2,\"quoted, with comma\"\n"
    corpus = read_corpus(data, "a.csv")
    assert corpus.column == "text"
    assert corpus.texts == ("hello there", "quoted, with comma")
    assert read_corpus(data, "a.csv", column="id").texts == ("1", "2")


def test_tsv_and_jsonl():
    assert read_corpus(b"text\tlabel\nhi there\t1\n", "a.tsv").texts == ("hi there",)
    lines = [json.dumps({"text": "one"}), "", json.dumps({"text": "two", "n": 2})]
    assert read_corpus("\n".join(lines).encode(), "a.jsonl").texts == ("one", "two")


@pytest.mark.parametrize(
    ("data", "name", "message"),
    [
        (b"", "a.txt", "empty"),
        (b"   \n\n", "a.txt", "empty"),
        (b"text\n", "a.csv", "only a header"),
        (b"text\n\"never closed\n", "a.csv", "Line 2"),
        (b"text,label\nok,1\nragged\n", "a.csv", "Line 3"),
        (b"a,b\n1,2\n", "a.csv", "Choose the text column"),
        (b"text\nhi\n", "a.csv", None),
        (b"x\x00y\x00", "a.txt", "NUL"),
        (bytes(range(1, 32)) * 100, "a.txt", "binary"),
        (b'{"text": "ok"}\n{"nope": 1}\n', "a.jsonl", "Line 2"),
        (b'{"text": "ok"}\n[1, 2]\n', "a.jsonl", "Line 2"),
        (b'{"text": "ok"}\n{broken\n', "a.jsonl", "Line 2"),
        (b"hello", "a.docx", "Unsupported"),
    ],
)
def test_bad_files_name_the_problem(data, name, message):
    if message is None:
        assert read_corpus(data, name).texts == ("hi",)
        return
    with pytest.raises(CorpusError, match=message):
        read_corpus(data, name)


def test_missing_named_column_lists_columns():
    with pytest.raises(CorpusError, match="columns are: text, label"):
        read_corpus(b"text,label\nhi,1\n", "a.csv", column="body")


def test_encodings_bom_utf16_latin1():
    assert read_corpus(codecs.BOM_UTF8 + "café\n".encode(), "a.txt").texts == ("café",)
    assert read_corpus("naïve text\n".encode("utf-16"), "a.txt").texts == ("naïve text",)
    latin = read_corpus("crème brûlée\n".encode("latin-1"), "a.txt")
    assert latin.texts == ("crème brûlée",) and latin.notices


def test_huge_field_and_size_limit_are_named():
    long_field = b"text\n\"" + b"a" * (MAX_TEXT_CHARS + 1) + b"\"\n"
    with pytest.raises(CorpusError, match="Line 2.*limit"):
        read_corpus(long_field, "a.csv")
    with pytest.raises(CorpusError, match="limit is"):
        read_corpus(b"x" * 2000, "a.txt", max_bytes=1000)


def test_file_name_is_display_only():
    corpus = read_corpus(b"hello\n", "../../etc/passwd.txt")
    assert corpus.name == "passwd.txt"


def test_table_columns_for_the_picker():
    assert table_columns(b"id,text,label\n1,a,b\n", "a.csv") == ["id", "text", "label"]
    assert table_columns(b'{"text": "a", "n": 1}\n', "a.jsonl") == ["text"]
    assert table_columns(b"plain\n", "a.txt") == []


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(["a.txt", "a.csv", "a.tsv", "a.jsonl"]))
def test_any_bytes_give_a_corpus_or_a_corpus_error(data, name):
    try:
        corpus = read_corpus(data, name)
    except CorpusError:
        return
    assert corpus.texts and all(text.strip() for text in corpus.texts)
