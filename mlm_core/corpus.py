"""Reading user corpora (txt, CSV/TSV, JSONL) with validation that names the line.

A corpus is read completely and validated before anything uses it: a bad file raises
``CorpusError`` and nothing is half imported. The file name only chooses the format; it
is never used as a path. Reading streams line by line, so memory stays bounded by the
size limit rather than by what the file claims.

Example::

    corpus = read_corpus(Path("sentences.csv").read_bytes(), "sentences.csv", column="text")
    corpus.texts[:3]
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlm_core.errors import InputError

MAX_CORPUS_BYTES = 50 * 1024 * 1024
MAX_TEXT_CHARS = 100_000  # one text (line, paragraph or field); matches the explorer's limit
FORMATS = ("txt", "csv", "tsv", "jsonl")
TEXT_UNITS = ("line", "paragraph")
PREFERRED_COLUMNS = ("text", "sentence", "content", "body", "review")


class CorpusError(InputError):
    """The corpus file cannot be used; the message names the line or the limit."""


@dataclass(frozen=True)
class Corpus:
    texts: tuple[str, ...]
    name: str  # display name only, never a path
    format: str
    column: str | None
    encoding: str
    sha256: str  # of the raw bytes: the cache key for tokenized data and results
    notices: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def characters(self) -> int:
        return sum(len(t) for t in self.texts)


def format_of(name: str) -> str:
    suffix = Path(name.replace("\\", "/")).suffix.lower().lstrip(".")
    if suffix in ("txt", "text", "md", ""):
        return "txt"
    if suffix in ("jsonl", "ndjson", "json"):
        return "jsonl"
    if suffix in ("csv", "tsv"):
        return suffix
    raise CorpusError(f"Unsupported file type '.{suffix}': use .txt, .csv, .tsv or .jsonl.")


def decode(data: bytes) -> tuple[str, str, list[str]]:
    """Text, encoding name and notices. Handles BOMs, UTF-16 and Latin-1; refuses binary."""
    notices: list[str] = []
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16", notices
        except UnicodeDecodeError as exc:
            raise CorpusError(f"The file starts like UTF-16 but byte {exc.start} is invalid.") from exc
    head = data[:65536]
    if b"\x00" in head:
        raise CorpusError(
            "The file contains NUL bytes: it looks binary (or UTF-16 without a byte-order mark). "
            "Save it as UTF-8 text."
        )
    try:
        text = data.decode("utf-8-sig")
        encoding = "utf-8"
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
        encoding = "cp1252"
        notices.append("The file is not UTF-8; it was read as Windows-1252/Latin-1.")
    controls = sum(1 for ch in text[:65536] if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f")
    if controls > 0.01 * max(1, len(text[:65536])):
        raise CorpusError("The file is mostly control characters: it looks binary, not text.")
    return text, encoding, notices


def _check_text(text: str, line: int) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise CorpusError(
            f"Line {line}: one text has {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}. Split it."
        )
    return text


def _txt_texts(text: str, unit: str) -> Iterator[str]:
    if unit == "line":
        for number, line in enumerate(io.StringIO(text), start=1):
            if line.strip():
                yield _check_text(line.strip(), number)
        return
    paragraph: list[str] = []
    start = 1
    for number, line in enumerate(io.StringIO(text), start=1):
        if line.strip():
            if not paragraph:
                start = number
            paragraph.append(line.strip())
        elif paragraph:
            yield _check_text(" ".join(paragraph), start)
            paragraph = []
    if paragraph:
        yield _check_text(" ".join(paragraph), start)


def _table_reader(text: str, delimiter: str):
    csv.field_size_limit(MAX_TEXT_CHARS * 4 + 1)  # let the reader pass long fields; _check_text names them
    return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)


def table_columns(data: bytes, name: str) -> list[str]:
    """Header of a CSV/TSV file (for the column picker)."""
    fmt = format_of(name)
    text, _, _ = decode(data[: 1024 * 1024])
    if fmt == "jsonl":
        for line in io.StringIO(text):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return []
                return [k for k, v in record.items() if isinstance(v, str)] if isinstance(record, dict) else []
        return []
    if fmt not in ("csv", "tsv"):
        return []
    try:
        return [c.strip() for c in next(_table_reader(text, "," if fmt == "csv" else "\t"))]
    except (StopIteration, csv.Error):
        return []


def choose_column(columns: list[str], column: str | None) -> str:
    if column:
        if column not in columns:
            raise CorpusError(f"No column named '{column}'. The columns are: {', '.join(columns)}.")
        return column
    for wanted in PREFERRED_COLUMNS:
        for candidate in columns:
            if candidate.strip().lower() == wanted:
                return candidate
    if len(columns) == 1:
        return columns[0]
    raise CorpusError(f"Choose the text column: the file has columns {', '.join(columns)}.")


def _table_texts(text: str, delimiter: str, column: str | None) -> tuple[list[str], str]:
    reader = _table_reader(text, delimiter)
    try:
        header = [c.strip() for c in next(reader)]
    except StopIteration:
        raise CorpusError("The file is empty.") from None
    except csv.Error as exc:
        raise CorpusError(f"Line 1: the header cannot be read ({exc}).") from exc
    chosen = choose_column(header, column)
    index = header.index(chosen)
    texts = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise CorpusError(
                    f"Line {reader.line_num}: {len(row)} fields where the header has {len(header)}. "
                    "Check for a missing or extra separator or an unquoted comma."
                )
            if row[index].strip():
                texts.append(_check_text(row[index].strip(), reader.line_num))
    except csv.Error as exc:
        raise CorpusError(f"Line {reader.line_num}: {exc} (often an unterminated quote).") from exc
    if not texts:
        raise CorpusError(f"The column '{chosen}' has no text (the file has only a header or empty cells).")
    return texts, chosen


def _jsonl_texts(text: str, column: str | None) -> tuple[list[str], str]:
    texts, chosen = [], column
    for number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"Line {number}: not valid JSON ({exc.msg}). Each line must be one JSON object.") from exc
        if not isinstance(record, dict):
            raise CorpusError(f"Line {number}: expected a JSON object like {{\"text\": \"...\"}}.")
        if chosen is None:
            chosen = choose_column([k for k, v in record.items() if isinstance(v, str)] or list(record), None)
        value = record.get(chosen)
        if not isinstance(value, str):
            raise CorpusError(f"Line {number}: the field '{chosen}' is missing or not a string.")
        if value.strip():
            texts.append(_check_text(value.strip(), number))
    return texts, chosen or ""


def read_corpus(
    data: bytes,
    name: str,
    column: str | None = None,
    text_unit: str = "line",
    max_bytes: int = MAX_CORPUS_BYTES,
) -> Corpus:
    """Parse and validate a whole corpus file. Raises CorpusError naming the line or limit."""
    if len(data) > max_bytes:
        raise CorpusError(f"The file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB.")
    if text_unit not in TEXT_UNITS:
        raise CorpusError(f"text_unit must be one of {', '.join(TEXT_UNITS)}.")
    fmt = format_of(name)
    if not data.strip():
        raise CorpusError("The file is empty.")
    text, encoding, notices = decode(data)
    chosen: str | None = None
    if fmt == "txt":
        texts = list(_txt_texts(text, text_unit))
    elif fmt == "jsonl":
        texts, chosen = _jsonl_texts(text, column)
    else:
        texts, chosen = _table_texts(text, "," if fmt == "csv" else "\t", column)
    if not texts:
        raise CorpusError("The file has no text.")
    display = Path(name.replace("\\", "/")).name[:120]
    return Corpus(
        texts=tuple(texts),
        name=display,
        format=fmt,
        column=chosen,
        encoding=encoding,
        sha256=hashlib.sha256(data).hexdigest(),
        notices=tuple(notices),
    )
