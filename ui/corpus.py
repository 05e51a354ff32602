"""The corpus picker shared by pages that read a file of texts (Fine-tune; later Batch).

``corpus_input(key)`` shows: the demo corpus or an upload (txt, CSV/TSV, JSONL), a column
picker for tables, one text per line or paragraph for txt, the size and counts, the first
rows, and every validation message (they name the line or the limit). It returns a
``CorpusChoice`` or None after showing why the file cannot be used.

The parsed corpus is kept in this session's state only (never in a cache shared by sessions).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import streamlit as st

from mlm_core.resources import asset
from mlm_core.text.corpus import (
    MAX_CORPUS_BYTES,
    PREFERRED_COLUMNS,
    TEXT_UNITS,
    Corpus,
    CorpusError,
    format_of,
    read_corpus,
    table_columns,
)
from mlm_core.views.html import escape_markdown

DEMO_FILE = asset("demo_corpus.txt")
DEMO, UPLOAD = "Demo corpus (assets/demo_corpus.txt)", "Upload a file"
UPLOAD_TYPES = ["txt", "csv", "tsv", "jsonl"]
PREVIEW_ROWS = 5


class CorpusChoice(NamedTuple):
    data: bytes  # the raw file (what a run stores)
    name: str  # the file's display name; only its suffix matters, it is never used as a path
    column: str | None  # the text column of a table or JSONL file
    text_unit: str  # txt: "line" or "paragraph"
    corpus: Corpus  # the validated texts


def _parsed(key: str, data: bytes, name: str, column: str | None, unit: str) -> Corpus:
    """read_corpus, remembered in this session for the same bytes and settings."""
    fingerprint = (hashlib.sha256(data).hexdigest(), format_of(name), column, unit)
    cached = st.session_state.get(f"{key}-parsed")
    if cached and cached[0] == fingerprint:
        return cached[1]
    corpus = read_corpus(data, name, column, unit)
    st.session_state[f"{key}-parsed"] = (fingerprint, corpus)
    return corpus


def _line_count(data: bytes) -> int:
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


def corpus_input(key: str = "corpus") -> CorpusChoice | None:
    """Pick, validate and preview a corpus; returns it, or None after saying what is wrong."""
    source = st.radio("Corpus", [DEMO, UPLOAD], horizontal=True, key=f"{key}-source")
    if source == DEMO:
        data, name = DEMO_FILE.read_bytes(), DEMO_FILE.name
    else:
        uploaded = st.file_uploader(
            f"txt (a text per line or paragraph), CSV/TSV with a text column, or JSONL; at most "
            f"{MAX_CORPUS_BYTES // 2**20} MB", type=UPLOAD_TYPES, key=f"{key}-file")
        if uploaded is None:
            st.info("Choose a file to upload, or use the demo corpus.")
            return None
        data, name = uploaded.getvalue(), uploaded.name
    shown = escape_markdown(name)
    try:
        fmt = format_of(name)
        column, unit = None, "line"
        if fmt == "txt":
            unit = st.radio("One text per", TEXT_UNITS, horizontal=True, key=f"{key}-unit")
        else:
            columns = table_columns(data, name)
            if columns:
                preferred = next((i for i, c in enumerate(columns) if c.strip().lower() in PREFERRED_COLUMNS), 0)
                column = st.selectbox("Text column", columns, index=preferred, key=f"{key}-column")
        corpus = _parsed(key, data, name, column, unit)
    except CorpusError as exc:
        st.error(f"{shown} cannot be used: {escape_markdown(str(exc))}")  # it quotes the file's line
        return None
    st.caption(f"**{shown}** · {len(data) / 1024:,.1f} KB · {_line_count(data):,} lines · {len(corpus):,} texts · "
               f"{corpus.characters:,} characters · {corpus.format}"
               + (f", column {escape_markdown(corpus.column)}" if corpus.column else "") + f" · {corpus.encoding}")
    for notice in corpus.notices:
        st.warning(notice)
    st.dataframe({"first texts": list(corpus.texts[:PREVIEW_ROWS])}, hide_index=True)
    return CorpusChoice(data, name, corpus.column, unit, corpus)
