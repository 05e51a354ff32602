"""Hostile text files, built here: UTF-8 and Latin-1 lines pasted into one file, JSON lines whose
``\\ud800`` escapes decode to lone surrogates, and the CSV cells a spreadsheet would run as formulas.
"""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mlm_core.errors import CorpusError
from mlm_core.text.corpus import decode, read_corpus, table_columns
from mlm_core.views.spreadsheet import safe_cell, spreadsheet_csv

# ----------------------------------------------------------------------------- mixed encodings

UTF8_LINES = ["café au lait", "naïve ½ – “quoted” 東京 🍕"]


def mixed_file() -> bytes:
    return b"".join([
        "café au lait\n".encode(),  # line 1: UTF-8
        "crème brûlée\n".encode("latin-1"),  # line 2: Latin-1
        b"plain ascii\n",
        "naïve ½ – “quoted” 東京 🍕\n".encode(),  # line 4: UTF-8 beyond Latin-1
        "señor ±5\n".encode("latin-1"),  # line 5: Latin-1
    ])


def test_mixed_utf8_and_latin1_lines_each_decode_as_written_with_a_notice():
    corpus = read_corpus(mixed_file(), "mixed.txt")
    assert list(corpus.texts) == ["café au lait", "crème brûlée", "plain ascii", UTF8_LINES[1], "señor ±5"]
    assert corpus.encoding == "utf-8+cp1252"
    (notice,) = corpus.notices
    assert "2 lines are not UTF-8" in notice and "line 2" in notice and "Windows-1252" in notice


def test_one_latin1_line_in_a_utf8_file_is_named_and_a_bom_is_dropped():
    data = b"\xef\xbb\xbf" + "é one\n".encode() * 3 + "r\xe9sum\xe9\n".encode("latin-1") + "é five\n".encode()
    text, encoding, notices = decode(data)
    assert text == "é one\n" * 3 + "résumé\n" + "é five\n"
    assert encoding == "utf-8+cp1252" and notices == [
        "Line 4 is not UTF-8; it was read as Windows-1252/Latin-1, the other lines as UTF-8."]


def test_a_line_with_utf8_and_a_latin1_byte_is_read_whole_as_windows_1252():
    # "é" in UTF-8 (C3 A9) then "ñ" in Latin-1 (F1): the line is not valid UTF-8, so it is all Windows-1252.
    data = "ok é\n".encode() + "é".encode() + "ñ\n".encode("latin-1")
    assert decode(data)[0] == "ok é\n" + "Ã©ñ\n"


def test_a_latin1_file_reads_as_before():
    corpus = read_corpus("crème brûlée\nthe cat\n".encode("latin-1"), "a.txt")
    assert list(corpus.texts) == ["crème brûlée", "the cat"] and corpus.encoding == "cp1252"
    assert corpus.notices == ("The file is not UTF-8; it was read as Windows-1252/Latin-1.",)


def test_the_column_picker_reads_a_utf8_header_above_latin1_rows():
    data = "texte,étiquette\n".encode() + "crème,1\n".encode("latin-1")
    assert table_columns(data, "a.csv") == ["texte", "étiquette"]
    corpus = read_corpus(data, "a.csv", column="texte")
    assert corpus.texts == ("crème",) and "line 2" in corpus.notices[0].lower()


# Printable characters that Latin-1 encodes and Windows-1252 decodes back the same (0x80-0x9f differ).
LATIN1_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f",
                             blacklist_categories=("Cc",))
ANY_CHARS = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\ufeff\x85")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(st.tuples(st.text(ANY_CHARS, max_size=20), st.just(False)),
                                st.tuples(st.text(LATIN1_CHARS, max_size=20), st.booleans())), max_size=12))
def test_any_lines_some_in_latin1_decode_back_line_by_line(lines):
    encoded = []
    for text, as_latin1 in lines:
        data = text.encode("latin-1" if as_latin1 else "utf-8")
        if as_latin1 and not text.isascii():  # Latin-1 bytes that happen to be valid UTF-8 cannot be told apart
            assume(not _valid_utf8(data))
        encoded.append(data + b"\n")
    text, encoding, notices = decode(b"".join(encoded))
    assert text == "".join(line + "\n" for line, _ in lines)  # every line as written, UTF-8 ones intact
    latin1_lines = [n for n, (line, as_latin1) in enumerate(lines, start=1) if as_latin1 and not line.isascii()]
    utf8_beyond_ascii = any(not as_latin1 and not line.isascii() for line, as_latin1 in lines)
    if not latin1_lines:
        assert encoding == "utf-8" and notices == []
    elif not utf8_beyond_ascii:
        assert encoding == "cp1252" and "not UTF-8" in notices[0]
    else:
        assert encoding == "utf-8+cp1252"
        assert f"line {latin1_lines[0]}" in notices[0].lower()
        assert (f"{len(latin1_lines)} lines" in notices[0]) == (len(latin1_lines) > 1)


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ----------------------------------------------------------------------------- lone surrogates in JSON lines


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\ud83d x", "x \\ude00"])
def test_a_lone_surrogate_in_json_lines_is_refused_naming_the_line(escape):
    data = b'{"text": "fine"}\n\n{"text": "also fine \\u00e9"}\n' + f'{{"text": "half {escape} pair"}}\n'.encode()
    with pytest.raises(CorpusError, match=r"^Line 4: the field 'text' holds a \\u escape of half a UTF-16 pair"):
        read_corpus(data, "a.jsonl")


def test_a_surrogate_pair_and_a_surrogate_in_an_unused_field_or_name_are_fine():
    data = b'{"text": "pizza \\ud83c\\udf55", "note": "\\ud800"}\n{"\\udc80": "x", "text": "two"}\n'
    corpus = read_corpus(data, "a.jsonl")
    assert corpus.texts == ("pizza 🍕", "two") and corpus.column == "text"
    assert all(text.encode("utf-8") for text in corpus.texts)
    only_bad_name = b'{"\\ud800": "the cat"}\n'
    assert table_columns(only_bad_name, "a.jsonl") == []
    with pytest.raises(CorpusError, match="Line 1: the object has no text field"):
        read_corpus(only_bad_name, "a.jsonl")


# ----------------------------------------------------------------------------- spreadsheet formulas in CSV


@pytest.mark.parametrize(("cell", "shown"), [
    ("=HYPERLINK(\"http://x\",\"y\")", "'=HYPERLINK(\"http://x\",\"y\")"),
    ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
    ("+1+2", "'+1+2"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"), ("\r=1", "'\r=1"),
    ("-", "'-"), ("the cat", "the cat"), ("", ""), (" =1", " =1"),
    ("-0.5", "-0.5"), ("+3", "+3"), ("-1e-3", "-1e-3"),  # text that is only a number: a spreadsheet reads a number
    (-0.5, -0.5), (3, 3), (None, None),
])
def test_a_cell_is_neutralised_only_when_it_is_text_starting_like_a_formula(cell, shown):
    assert safe_cell(cell) == shown


def test_csv_of_a_frame_quotes_formula_text_in_cells_names_and_index_and_keeps_numbers():
    frame = pd.DataFrame({"token": ["=1+2", "cat", "@x", "-"], "=score": [-0.5, 1.0, -2.25, 0.0],
                          "mixed": ["+a", 3, None, "-7"]}, index=["0 =a", "=b", "2 c", "-d"])
    rows = list(csv.reader(io.StringIO(spreadsheet_csv(frame))))
    assert rows[0] == ["", "token", "'=score", "mixed"]
    assert [row[0] for row in rows[1:]] == ["0 =a", "'=b", "2 c", "'-d"]
    assert [row[1] for row in rows[1:]] == ["'=1+2", "cat", "'@x", "'-"]
    assert [row[2] for row in rows[1:]] == ["-0.5", "1.0", "-2.25", "0.0"]  # numbers stay numbers
    assert [row[3] for row in rows[1:]] == ["'+a", "3", "", "-7"]
    assert frame.loc["=b", "token"] == "cat"  # the frame itself is left as it was


def test_a_file_full_of_terminal_escapes_is_refused_saying_where_and_why():
    from mlm_core.errors import CorpusError
    from mlm_core.text.corpus import read_corpus

    data = b"plain line\nred \x1b[31mtext\x1b[0m here\n\x1b]0;title\x07 more\n"
    with pytest.raises(CorpusError, match=r"control characters .*\(the first on line 2\): it looks binary or holds "
                                          r"terminal escape codes"):
        read_corpus(data, "escapes.txt")
