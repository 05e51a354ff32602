"""Fuzz the corpus reader: any bytes, file name, column and text unit give a Corpus or a CorpusError.

Input layout (so that seeds are plain files with a 3-byte prefix): byte 0 picks the file name,
byte 1 the column, byte 2 the text unit and size limit; the rest is the uploaded file.

    python tests/fuzz/fuzz_corpus.py -max_total_time=300 /tmp/corpus-work tests/fuzz/seeds/corpus

Besides "no exception but CorpusError", a returned corpus must keep what mlm_core.text.corpus
promises: non-empty stripped texts within the length limit, a display name that is no path,
the hash of the raw bytes, nothing read past the size limit, texts that encode as UTF-8.
"""

from __future__ import annotations

import hashlib
import sys

import fuzz_support

NAMES = (
    "a.txt",
    "a.csv",
    "a.tsv",
    "a.jsonl",
    "a.json",
    "a.ndjson",
    "notes.md",
    "README",
    "A.CSV",
    "a.docx",  # unsupported: must be a CorpusError, not a guess
    "../../etc/passwd.txt",
    "C:\\Users\\x\\evil.csv",
    "<img src=x onerror=alert(1)>.jsonl",
    "\u202etxt.exe.csv",
    "",
    ".",
    "/",
    "a.txt\x00.csv",
)
COLUMNS = (None, "text", "label", "", " text ", "missing", "<b>x</b>", "0")
UNITS = ("line", "paragraph", "word")  # "word" is not a text unit: CorpusError


def parse(data: bytes):
    """(body, name, column, text_unit, max_bytes) from one fuzz input."""
    head = data[:3].ljust(3, b"\0")
    name = NAMES[head[0] % len(NAMES)]
    column = COLUMNS[head[1] % len(COLUMNS)]
    unit = UNITS[head[2] % len(UNITS)]
    # A small limit now and then reaches the size check without multi-megabyte inputs.
    max_bytes = (head[2] // len(UNITS)) * 16 if head[2] >= 240 else None
    return data[3:], name, column, unit, max_bytes


def check(data: bytes) -> None:
    from mlm_core.text.corpus import FORMATS, MAX_TEXT_CHARS, Corpus, CorpusError, read_corpus, table_columns

    body, name, column, unit, max_bytes = parse(data)
    try:
        columns = table_columns(body, name)
    except CorpusError:
        columns = None
    if columns is not None:
        assert isinstance(columns, list) and all(isinstance(c, str) for c in columns), columns

    kwargs = {} if max_bytes is None else {"max_bytes": max_bytes}
    try:
        corpus = read_corpus(body, name, column, unit, **kwargs)
    except CorpusError as exc:
        message = str(exc)
        # The CLI prints it as one "error:" line and the pages in one st.error box.
        assert message.strip() and "\n" not in message and "\r" not in message, message
        return
    assert isinstance(corpus, Corpus)
    assert len(body) <= (max_bytes if max_bytes is not None else 50 * 1024 * 1024)
    assert corpus.texts and all(isinstance(t, str) and t and t == t.strip() for t in corpus.texts)
    assert all(len(t) <= MAX_TEXT_CHARS for t in corpus.texts)
    assert corpus.format in FORMATS and corpus.encoding in ("utf-8", "utf-16", "cp1252", "utf-8+cp1252")
    for text in corpus.texts:
        text.encode("utf-8")  # no lone surrogate (JSON's "\ud800"): tokenizers and files need valid text
    assert "/" not in corpus.name and "\\" not in corpus.name and len(corpus.name) <= 120
    assert corpus.sha256 == hashlib.sha256(body).hexdigest()
    if corpus.format == "txt":
        assert corpus.column is None
        assert len(corpus.texts) <= body.count(b"\n") + 1  # a text is at least one line
    else:
        assert isinstance(corpus.column, str)
        if column:  # an empty column name means "not chosen", as in the pages
            assert corpus.column == column  # a named column is used as named, never another one


if __name__ == "__main__":
    fuzz_support.main(check, ["mlm_core.text.corpus"])
    sys.exit(0)
