"""Reading user corpora (txt, CSV/TSV, JSONL) with validation that names the line.

A corpus is read completely and validated before anything uses it: a bad file raises
``CorpusError`` and nothing is half imported. The file name only chooses the format; it
is never used as a path. Reading streams line by line, so memory stays bounded by the
size limit rather than by what the file claims. A txt file over the limit can still be trained on
(the command line): ``open_corpus_file`` gives a ``StreamedCorpus``, read again piece by piece.

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
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlm_core.errors import CorpusError

MAX_CORPUS_BYTES = 50 * 1024 * 1024
MAX_TEXT_CHARS = 100_000  # one text (line, paragraph or field); matches the explorer's limit
FORMATS = ("txt", "csv", "tsv", "jsonl")
TEXT_UNITS = ("line", "paragraph")
PREFERRED_COLUMNS = ("text", "sentence", "content", "body", "review")
LATIN1_NOTICE = "The file is not UTF-8; it was read as Windows-1252/Latin-1."
# In text decoded with errors="surrogateescape" (each invalid byte as U+DC80..U+DCFF): a character that
# valid UTF-8 beyond ASCII gave, and an invalid byte.
_UTF8_BEYOND_ASCII = re.compile("[^\x00-\x7f\udc80-\udcff]")
_INVALID_BYTE = re.compile("[\udc80-\udcff]")
_INVALID_TO_LINE_END = re.compile("[\udc80-\udcff][^\n]*")  # one match per line holding invalid bytes




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


def one_line(text: str, limit: int = 60) -> str:
    """``text`` quoted from the user's file for a message: control characters escaped, shortened.

    Messages are one line (the CLI prints one ``error:`` line); a column name read from a
    quoted CSV header may hold a line break.
    """
    shown = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text[: limit + 1])
    return shown[:limit] + "…" if len(shown) > limit else shown


def _column_list(columns: list[str], limit: int = 20) -> str:
    shown = ", ".join(one_line(c, 40) for c in columns[:limit])
    return shown + (f" and {len(columns) - limit:,} more" if len(columns) > limit else "")


def format_of(name: str) -> str:
    suffix = Path(name.replace("\\", "/")).suffix.lower().lstrip(".")
    if suffix in ("txt", "text", "md", ""):
        return "txt"
    if suffix in ("jsonl", "ndjson", "json"):
        return "jsonl"
    if suffix in ("csv", "tsv"):
        return suffix
    raise CorpusError(f"Unsupported file type '.{one_line(suffix, 20)}': use .txt, .csv, .tsv or .jsonl.")


def decode(data: bytes) -> tuple[str, str, list[str]]:
    """Text, encoding name and notices. Handles BOMs, UTF-16 and Latin-1; refuses binary."""
    notices: list[str] = []
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16", notices
        except UnicodeDecodeError as exc:
            raise CorpusError(f"The file starts like UTF-16 but byte {exc.start} is invalid.") from exc
    nul = data.find(b"\x00")  # the whole file: a NUL past the first block is no less binary
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise CorpusError(
            f"Line {line}: the file contains NUL bytes: it looks binary (or UTF-16 "
            "without a byte-order mark). Save it as UTF-8 text."
        )
    try:
        text = data.decode("utf-8-sig")
        encoding = "utf-8"
    except UnicodeDecodeError:
        text, encoding, notice = _decode_by_line(data)
        notices.append(notice)
    _check_controls(text[:65536])
    return text, encoding, notices


def _check_controls(head: str) -> None:
    """CorpusError when the start of a file is more than 1% control characters: binary, not text."""
    controls = [i for i, ch in enumerate(head) if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f"]
    if len(controls) > 0.01 * max(1, len(head)):
        first = head.count("\n", 0, controls[0]) + 1
        raise CorpusError(f"The file has {len(controls):,} control characters in its first {len(head):,} characters "
                          f"(the first on line {first}): it looks binary or holds terminal escape codes, not plain "
                          "text. Save it as plain UTF-8 text.")


def _decode_by_line(data: bytes) -> tuple[str, str, str]:
    r"""Text, encoding name and notice of a file that is not UTF-8 as a whole: each line is read as
    UTF-8 where it is valid UTF-8, else as Windows-1252 (Latin-1's superset).

    Files pasted together from several sources mix the two; reading the whole file as Windows-1252
    would garble every UTF-8 line ("cafÃ©"). The bytes are decoded once with invalid bytes kept as
    escapes (U+DC80..U+DCFF), and only the runs of lines holding an escape are decoded again (regular
    expressions find them), so a 50 MB file with blocks of Latin-1 lines takes under a second, one
    alternating line by line a few; a file with no valid UTF-8 beyond ASCII is decoded in one call.

    Example: ``"café\n".encode() + "crème\n".encode("latin-1")`` reads as ``"café\ncrème\n"``,
    with the notice "Line 2 is not UTF-8; it was read as Windows-1252/Latin-1, ...".
    """
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    escaped = data.decode("utf-8", errors="surrogateescape")
    if not _UTF8_BEYOND_ASCII.search(escaped):  # every non-ASCII line is Windows-1252: a Latin-1 file
        return data.decode("cp1252", errors="replace"), "cp1252", LATIN1_NOTICE
    text = io.StringIO()
    fallback_lines = first_line = start = 0  # start: of the first line not yet written
    utf8_beyond_ascii = False  # whether a line read as UTF-8 needed it (else this is a Latin-1 file)
    while invalid := _INVALID_BYTE.search(escaped, start):
        run_start = _line_start(escaped, invalid.start(), start)
        utf8 = escaped[start:run_start]  # lines of valid UTF-8
        utf8_beyond_ascii = utf8_beyond_ascii or not utf8.isascii()  # str.isascii: a flag, not a scan
        text.write(utf8)
        # The run of Windows-1252 lines goes on up to the next line of valid UTF-8 beyond ASCII (ASCII
        # lines read the same either way), so that whole blocks of Latin-1 lines are decoded at once.
        run_end = run_start
        while beyond := _UTF8_BEYOND_ASCII.search(escaped, run_end):
            run_end = _line_start(escaped, beyond.start(), run_end)
            line_end = escaped.find("\n", beyond.end()) + 1 or len(escaped)
            if not _INVALID_BYTE.search(escaped, run_end, line_end):
                break
            run_end = line_end  # valid UTF-8 and an invalid byte on one line: the line is Windows-1252
        else:
            run_end = len(escaped)
        first_line = first_line or escaped.count("\n", 0, run_start) + 1
        run = escaped[run_start:run_end]
        fallback_lines += _INVALID_TO_LINE_END.subn("", run)[1]  # counted in C, not match by match
        # the run's own bytes again (the escapes give back the invalid ones), read as Windows-1252
        text.write(run.encode("utf-8", errors="surrogateescape").decode("cp1252", errors="replace"))
        start = run_end
    utf8 = escaped[start:]
    utf8_beyond_ascii = utf8_beyond_ascii or not utf8.isascii()
    text.write(utf8)
    del escaped, utf8
    if not utf8_beyond_ascii:  # valid UTF-8 beyond ASCII only inside lines that are not UTF-8
        return text.getvalue(), "cp1252", LATIN1_NOTICE
    which = (f"Line {first_line} is not UTF-8; it was" if fallback_lines == 1 else
             f"{fallback_lines:,} lines are not UTF-8 (the first: line {first_line}); they were")
    return text.getvalue(), "utf-8+cp1252", f"{which} read as Windows-1252/Latin-1, the other lines as UTF-8."


def _line_start(text: str, index: int, lowest: int) -> int:
    """Where the line holding ``text[index]`` starts, no earlier than ``lowest`` (itself a line's start)."""
    return text.rfind("\n", lowest, index) + 1 or lowest


def _size(n: int) -> str:
    """MB as the upload box counts them (2**20 bytes), with the bytes, so that 50.0 MB over 50 MB is clear."""
    if n < 2**20:
        return f"{n:,} bytes"
    return f"{n / 2**20:,.1f} MB ({n:,} bytes)"


def too_big(size: int, limit: int = MAX_CORPUS_BYTES) -> CorpusError:
    return CorpusError(
        f"The file is {_size(size)}; the limit is {_size(limit).replace('.0 MB', ' MB')}. "
        "Split it, or use the parts one at a time."
    )


def _check_text(text: str, line: int) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise CorpusError(
            f"Line {line}: one text has {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}. Split it."
        )
    return text


def _has_text(text: str) -> bool:
    """Whether ``text`` has a visible character: a line of only zero-width or bidi marks is as empty
    as a blank one (the explorer says "nothing to mask" for it). Stops at the first visible character."""
    return any(unicodedata.category(ch)[0] not in "CZ" for ch in text)


def _txt_texts(lines: Iterable[str], unit: str) -> Iterator[str]:
    """The texts of a txt file's ``lines`` (each with its line break, as ``io.StringIO`` gives them)."""
    if unit == "line":
        for number, line in enumerate(lines, start=1):
            if _has_text(line):
                yield _check_text(line.strip(), number)
        return
    paragraph: list[str] = []
    start = 1
    for number, line in enumerate(lines, start=1):
        if _has_text(line):
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
                    record = _json_record(line, 1)
                except CorpusError:
                    return []  # read_corpus names the problem; the picker just has no columns
                return _text_fields(record) if isinstance(record, dict) else []
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
            raise CorpusError(
                f"No column named '{one_line(column, 40)}'. The columns are: {_column_list(columns)}."
            )
        return column
    for wanted in PREFERRED_COLUMNS:
        for candidate in columns:
            if candidate.strip().lower() == wanted:
                return candidate
    if len(columns) == 1:
        return columns[0]
    raise CorpusError(f"Choose the text column: the file has columns {_column_list(columns)}.")


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
            if _has_text(row[index]):
                texts.append(_check_text(row[index].strip(), reader.line_num))
    except csv.Error as exc:
        raise CorpusError(f"Line {reader.line_num}: {exc} (often an unterminated quote).") from exc
    if not texts:
        raise CorpusError(
            f"The column '{one_line(chosen, 40)}' has no text "
            "(the file has only a header, or empty or invisible cells)."
        )
    return texts, chosen


def _json_record(line: str, number: int):
    """One JSONL line parsed; CorpusError for anything json.loads refuses."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(
            f"Line {number}: not valid JSON ({exc.msg}). Each line must be one JSON object."
        ) from exc
    except RecursionError:  # thousands of nested brackets: json's parser recurses per level
        raise CorpusError(
            f"Line {number}: the JSON is nested too deeply. Each line must be one flat object."
        ) from None
    except ValueError as exc:  # e.g. an integer over Python's 4,300-digit limit
        raise CorpusError(f"Line {number}: a value cannot be read ({one_line(str(exc), 120)}).") from None


def _text_fields(record: dict) -> list[str]:
    r"""The names of a JSON object's string fields: the candidate text columns. A name holding a lone
    surrogate ("\ud800" escaped) is left out: it could be neither shown nor written back."""
    return [key for key, value in record.items() if isinstance(value, str) and not _has_surrogate(key)]


def _jsonl_texts(text: str, column: str | None) -> tuple[list[str], str]:
    texts, chosen = [], column
    for number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        record = _json_record(line, number)
        if not isinstance(record, dict):
            raise CorpusError(f"Line {number}: expected a JSON object like {{\"text\": \"...\"}}.")
        if chosen is None:
            fields = _text_fields(record)
            if not fields:
                raise CorpusError(
                    f"Line {number}: the object has no text field (expected {{\"text\": \"...\"}})."
                )
            chosen = choose_column(fields, None)
        value = record.get(chosen)
        if not isinstance(value, str):
            raise CorpusError(
                f"Line {number}: the field '{one_line(chosen, 40)}' is missing or not a string."
            )
        if _has_surrogate(value):
            raise CorpusError(
                f"Line {number}: the field '{one_line(chosen, 40)}' holds a \\u escape of half a UTF-16 "
                "pair (\\ud800-\\udfff without its other half): it is no character. Remove it or write the "
                "character itself."
            )
        if _has_text(value):
            texts.append(_check_text(value.strip(), number))
    return texts, chosen or ""


def _has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate: JSON's "\\ud800" escape decodes to one, and no UTF-8
    encoder (tokenizer, file, terminal) takes it. Encoding runs in C; most texts pass at once."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_corpus(
    data: bytes,
    name: str,
    column: str | None = None,
    text_unit: str = "line",
    max_bytes: int = MAX_CORPUS_BYTES,
) -> Corpus:
    """Parse and validate a whole corpus file. Raises CorpusError naming the line or limit."""
    if len(data) > max_bytes:
        raise too_big(len(data), max_bytes)
    if text_unit not in TEXT_UNITS:
        raise CorpusError(f"text_unit must be one of {', '.join(TEXT_UNITS)}.")
    fmt = format_of(name)
    if not data.strip():
        raise CorpusError("The file is empty.")
    text, encoding, notices = decode(data)
    chosen: str | None = None
    if fmt == "txt":
        texts = list(_txt_texts(io.StringIO(text), text_unit))
    elif fmt == "jsonl":
        texts, chosen = _jsonl_texts(text, column)
    else:
        texts, chosen = _table_texts(text, "," if fmt == "csv" else "\t", column)
    if not texts:
        raise CorpusError("The file has no text: its lines are empty or hold only invisible characters "
                          "(spaces, zero-width or direction marks).")
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


# ----------------------------------------------------------------------------- corpora read as they are used

_STREAM_READ_BYTES = 4 << 20  # bytes read at a time from a streamed corpus (cut at a line break)


@dataclass(frozen=True)
class StreamedCorpus:
    """A txt corpus over ``MAX_CORPUS_BYTES``: never held whole, its texts are read again on each ``batches()``.

    The command line trains on such files (``open_corpus_file``); texts are the ones ``read_corpus``
    would give (same line/paragraph rules, same per-line UTF-8 or Windows-1252 reading), and a bad
    line is named when the reading reaches it.
    """

    path: Path  # where the bytes are (the run folder's copy); never shown
    name: str  # display name only
    text_unit: str
    sha256: str
    size: int  # bytes
    format: str = "txt"
    column: str | None = None

    def batches(self, size: int) -> Iterator[list[str]]:
        """The texts in order, ``size`` at a time (the last list may be shorter)."""
        batch: list[str] = []
        for text in _txt_texts(_file_lines(self.path), self.text_unit):
            batch.append(text)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch


def _file_lines(path: Path) -> Iterator[str]:
    """The lines of a file, each with its line break, read in pieces: UTF-8, or Windows-1252 for a line that is not."""
    number = 0  # lines before the piece being read
    with path.open("rb") as handle:
        rest = handle.read(len(codecs.BOM_UTF8))
        if rest == codecs.BOM_UTF8:
            rest = b""
        first = True  # until the first text read: its start is checked for binary content
        while True:
            chunk = handle.read(_STREAM_READ_BYTES)
            data = rest + chunk
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            if chunk and cut == 0 and len(data) > 4 * MAX_TEXT_CHARS:  # at most 4 bytes a character
                raise CorpusError(f"Line {number + 1:,}: one text has over {MAX_TEXT_CHARS:,} characters; "
                                  "the limit is that. Split it.")
            piece, rest = data[:cut], data[cut:]
            nul = piece.find(b"\x00")
            if nul >= 0:
                line = number + piece.count(b"\n", 0, nul) + 1
                raise CorpusError(f"Line {line:,}: the file contains NUL bytes: it looks binary. Save it as UTF-8 text.")
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError:  # a line at a time, as read_corpus reads a file that is not all UTF-8
                text = "\n".join(_decode_line(line) for line in piece.split(b"\n"))
            if first and text:
                _check_controls(text[:65536])
                first = False
            for line in io.StringIO(text):
                yield line
            number += piece.count(b"\n")
            if not chunk:
                return


def _decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("cp1252", errors="replace")


def open_corpus_file(path: Path, name: str, column: str | None = None, text_unit: str = "line"
                     ) -> Corpus | StreamedCorpus:
    """The corpus in the file at ``path``: read whole (``read_corpus``) up to ``MAX_CORPUS_BYTES``, streamed beyond.

    Streamed corpora are txt files (one text per line or paragraph), UTF-8 or Windows-1252; their first
    piece is checked now (binary, UTF-16), the rest as training reads it. ``name`` is the display name
    (it chooses the format).
    """
    path = Path(path)
    size = path.stat().st_size
    if size <= MAX_CORPUS_BYTES:
        return read_corpus(path.read_bytes(), name, column, text_unit)
    if text_unit not in TEXT_UNITS:
        raise CorpusError(f"text_unit must be one of {', '.join(TEXT_UNITS)}.")
    if format_of(name) != "txt":
        raise CorpusError(f"The file is {_size(size)}: a corpus over {_size(MAX_CORPUS_BYTES).replace('.0 MB', ' MB')} "
                          "is read as training goes, which needs a .txt file (one text per line or paragraph). "
                          "Convert it, or save it as a dataset and use --dataset.")
    with path.open("rb") as handle:
        head = handle.read(_STREAM_READ_BYTES)
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise CorpusError("The file is UTF-16: a corpus this big must be UTF-8 (or Windows-1252). Convert it.")
        handle.seek(0)
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    corpus = StreamedCorpus(path, Path(name.replace("\\", "/")).name[:120], text_unit, digest, size)
    if next(corpus.batches(1), None) is None:  # reads the first piece: binary files are refused now, not in the job
        raise CorpusError("The file has no text: its lines are empty or hold only invisible characters.")
    return corpus
