"""Texts streamed from corpora larger than memory: saved datasets, Arrow/Parquet folders, big txt files.

Read offline with pyarrow alone (the ``datasets`` package is not needed). Understood layouts:

* a folder written by ``Dataset.save_to_disk``: ``state.json`` naming ``*.arrow`` files (Arrow IPC
  stream format), with ``dataset_info.json``;
* a folder written by ``DatasetDict.save_to_disk``: ``dataset_dict.json`` and one such folder per split;
* a folder of ``*.arrow`` (IPC stream or file) or ``*.parquet`` files, or split subfolders of them;
* one ``.arrow`` or ``.parquet`` file.

Record batches are read one at a time, so memory stays bounded by a batch, not by the corpus.

Example::

    source = open_dataset("wiki_saved", split="validation", column="text")
    source.rows            # 3760, from the metadata (None when only a full read would tell)
    for text in source:    # stripped, non-empty texts
        ...
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlm_core.errors import CorpusError, InputError
from mlm_core.text.corpus import MAX_TEXT_CHARS, PREFERRED_COLUMNS, _column_list, one_line

DATA_SUFFIXES = (".arrow", ".parquet")
_ARROW_FILE_MAGIC = b"ARROW1"  # the IPC *file* format starts with it; the stream format (save_to_disk) does not
_READ_CHUNK = 1 << 20  # bytes per read of a streamed txt file


@dataclass(frozen=True)
class TextSource:
    """Texts read lazily, once per iteration. ``rows``/``bytes`` are cheap estimates or None."""

    name: str  # display name only
    format: str
    column: str | None
    rows: int | None
    bytes: int | None
    _batches: Callable[[], Iterator[list]] = field(repr=False)

    def __iter__(self) -> Iterator[str]:
        for values in self._batches():
            for value in values:
                if value is None:
                    continue
                text = value.strip()
                if text:
                    yield text


def add_dataset_arguments(parser) -> None:
    """The CLI's --dataset and --split (``train``, ``evaluate``); --column picks the text column."""
    parser.add_argument("--dataset", default=None, metavar="PATH",
                        help="folder saved with datasets' save_to_disk, or of .arrow/.parquet files (read offline, "
                        "in batches); --column names the text column")
    parser.add_argument("--split", default=None, help="split of a --dataset folder (default: train, or the only one)")


def _shown(path: Path) -> str:
    return one_line(str(path), 120)


def _is_text(data_type) -> bool:
    import pyarrow as pa

    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or (
        hasattr(pa.types, "is_string_view") and pa.types.is_string_view(data_type))


def _open_arrow(path: Path):
    """A record batch reader over one Arrow file, stream or file format (closed by the caller)."""
    import pyarrow as pa

    source = pa.OSFile(str(path), "rb")  # not memory-mapped: pages read stay out of the resident size
    try:
        if source.read(len(_ARROW_FILE_MAGIC)) == _ARROW_FILE_MAGIC:
            source.seek(0)
            reader = pa.ipc.open_file(source)
            return source, (reader.get_batch(i) for i in range(reader.num_record_batches)), reader.schema
        source.seek(0)
        reader = pa.ipc.open_stream(source)
        return source, iter(reader), reader.schema
    except (pa.ArrowInvalid, OSError) as exc:
        source.close()
        raise InputError(f"'{_shown(path)}' is not a readable Arrow file: {one_line(str(exc), 120)}") from None


def _schema(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            return pq.ParquetFile(str(path)).schema_arrow
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"'{_shown(path)}' is not a readable Parquet file: {one_line(str(exc), 120)}") from None
    source, _, schema = _open_arrow(path)
    source.close()
    return schema


def _data_files(folder: Path) -> list[Path]:
    state = folder / "state.json"
    if state.is_file():  # save_to_disk: the order of the shards is the order of the rows
        try:
            names = [entry["filename"] for entry in json.loads(state.read_text("utf-8"))["_data_files"]]
            return [folder / Path(name).name for name in names]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unusual state.json: fall back to the files present
    return sorted(p for p in folder.iterdir() if p.suffix in DATA_SUFFIXES and p.is_file())


def _splits(folder: Path) -> list[str]:
    listed = folder / "dataset_dict.json"
    if listed.is_file():
        try:
            return [str(name) for name in json.loads(listed.read_text("utf-8"))["splits"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and _data_files(p))


def _rows_from_info(folder: Path, split: str | None) -> int | None:
    try:
        info = json.loads((folder / "dataset_info.json").read_text("utf-8"))
        splits = info.get("splits") or {}
        if split in splits:
            return int(splits[split]["num_examples"])
        if len(splits) == 1:
            return int(next(iter(splits.values()))["num_examples"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _choose_column(schema, column: str | None, where: str) -> str:
    text_columns = [f.name for f in schema if _is_text(f.type)]
    if column is None:
        for preferred in PREFERRED_COLUMNS:
            if preferred in text_columns:
                return preferred
        if len(text_columns) == 1:
            return text_columns[0]
        if not text_columns:
            raise InputError(f"{where} has no text column (columns: {_column_list(schema.names)}).")
        raise InputError(f"Choose a column with --column; text columns: {_column_list(text_columns)}.")
    if column not in schema.names:
        raise InputError(f"No column '{one_line(column)}' in {where}; text columns: "
                         f"{_column_list(text_columns) or 'none'}.")
    if column not in text_columns:
        data_type = schema.field(column).type
        raise InputError(f"Column '{one_line(column)}' is not text ({data_type}); text columns: "
                         f"{_column_list(text_columns) or 'none'}.")
    return column


def open_dataset(path: str | Path, split: str | None = None, column: str | None = None) -> TextSource:
    """The texts of ``column`` of a saved dataset, Arrow/Parquet folder or file; InputError if unusable.

    ``split``: a split of a DatasetDict folder (default: ``train`` if there is one, else the only one).
    ``column``: default a column named like ``text``/``sentence``, else the only text column.
    """
    root = Path(path)
    shown = _shown(root)
    if not root.exists():
        raise InputError(f"No dataset at '{shown}'.")
    try:
        if root.is_file():
            if root.suffix not in DATA_SUFFIXES:
                raise InputError(f"'{shown}' is neither a dataset folder nor an .arrow/.parquet file.")
            if split is not None:
                raise InputError("--split needs a dataset folder with splits, not a single file.")
            folder, files = root.parent, [root]
        else:
            files = _data_files(root)
            folder = root
            splits = [] if files else _splits(root)
            if split is not None and not splits:
                raise InputError(f"'{shown}' has no splits; leave out --split.")
            if splits:
                if split is None:
                    if "train" in splits or len(splits) == 1:
                        split = "train" if "train" in splits else splits[0]
                    else:
                        raise InputError(f"Choose a split with --split: {_column_list(splits)}.")
                if split not in splits:
                    raise InputError(f"No split '{one_line(split)}'; available splits: {_column_list(splits)}.")
                folder = root / split
                files = _data_files(folder) if folder.is_dir() else []
            if not files:
                raise InputError(f"No .arrow or .parquet files in '{_shown(folder)}'.")
        missing = [p for p in files if not p.is_file()]
        if missing:
            raise InputError(f"The dataset lists '{_shown(missing[0])}', which is missing.")
        where = f"'{split}'" if split else "the dataset"
        chosen = _choose_column(_schema(files[0]), column, where)
        size = sum(p.stat().st_size for p in files)
    except OSError as exc:
        raise InputError(f"Cannot read '{shown}': {exc.strerror or exc}.") from None
    rows = _rows_from_info(root, split) if not root.is_file() else None
    if rows is None and all(p.suffix == ".parquet" for p in files):
        rows = _parquet_rows(files)

    def batches() -> Iterator[list]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for file in files:
            if file.suffix == ".parquet":
                # Read in 1 MB pieces, not a whole column chunk at once (pre-buffering doubled the peak).
                parquet = pq.ParquetFile(str(file), buffer_size=1 << 20, pre_buffer=False)
                if chosen not in parquet.schema_arrow.names:
                    raise InputError(f"'{_shown(file)}' has no column '{one_line(chosen)}'.")
                for batch in parquet.iter_batches(batch_size=1024, columns=[chosen]):
                    yield batch.column(0).to_pylist()
                continue
            source, reader, schema = _open_arrow(file)
            try:
                index = schema.get_field_index(chosen)
                if index < 0:
                    raise InputError(f"'{_shown(file)}' has no column '{one_line(chosen)}'.")
                for batch in reader:
                    yield batch.column(index).to_pylist()
            except pa.ArrowInvalid as exc:
                raise InputError(f"'{_shown(file)}' is damaged: {one_line(str(exc), 120)}") from None
            finally:
                source.close()

    name = root.name + (f"[{split}]" if split else "")
    kind = "parquet" if all(p.suffix == ".parquet" for p in files) else "arrow"
    return TextSource(name, kind, chosen, rows, size, batches)


def _parquet_rows(files: list[Path]) -> int | None:
    import pyarrow.parquet as pq

    try:
        return sum(pq.ParquetFile(str(p)).metadata.num_rows for p in files)
    except Exception:  # noqa: BLE001 - a count is only an estimate for the progress bar
        return None


def stream_text_file(path: str | Path) -> TextSource:
    """One text per line of a txt file of any size, read in 1 MB pieces (UTF-8; bad bytes replaced).

    A line longer than the explorer's limit raises CorpusError naming it, as ``read_corpus`` does.
    """
    file = Path(path)
    shown = _shown(file)
    try:
        if not file.is_file():
            raise InputError(f"No file at '{shown}'.")
        size = file.stat().st_size
    except OSError as exc:
        raise InputError(f"Cannot read '{shown}': {exc.strerror or exc}.") from None

    def batches() -> Iterator[list]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        line_number = 0
        try:
            with file.open("rb") as handle:
                while True:
                    chunk = handle.read(_READ_CHUNK)
                    pending += decoder.decode(chunk, final=not chunk)
                    lines = pending.split("\n")
                    pending = "" if not chunk else lines.pop()
                    if len(pending) > MAX_TEXT_CHARS:
                        raise CorpusError(f"Line {line_number + len(lines) + 1:,} is longer than "
                                          f"{MAX_TEXT_CHARS:,} characters.")
                    for line in lines:
                        line_number += 1
                        if len(line) > MAX_TEXT_CHARS:
                            raise CorpusError(f"Line {line_number:,} is longer than {MAX_TEXT_CHARS:,} characters.")
                    yield lines
                    if not chunk:
                        return
        except OSError as exc:
            raise InputError(f"Cannot read '{shown}': {exc.strerror or exc}.") from None

    return TextSource(file.name, "txt", None, None, size, batches)


def _txt_line(text: str) -> bytes:
    """One text as one line of a txt corpus: its own line breaks become spaces."""
    return " ".join(text.split("\n")).replace("\r", " ").encode("utf-8") + b"\n"


def materialize_txt(source: TextSource, max_bytes: int) -> bytes:
    """The texts of ``source`` as a txt corpus (one per line), refused past ``max_bytes``."""
    from mlm_core.text.corpus import too_big

    parts: list[bytes] = []
    size = 0
    for text in source:
        encoded = _txt_line(text)
        size += len(encoded)
        if size > max_bytes:
            raise too_big(size, max_bytes)
        parts.append(encoded)
    if not parts:
        raise InputError(f"'{source.name}' has no non-empty texts in column '{source.column}'.")
    return b"".join(parts)


def write_txt(source: TextSource, path: Path) -> int:
    """Write the texts of ``source`` to ``path`` as a txt corpus (one per line), batch by batch; returns its bytes.

    Training reads this file like any ``--corpus``: whole up to the corpus size limit, streamed beyond.
    """
    size = 0
    with Path(path).open("wb") as out:
        for text in source:
            encoded = _txt_line(text)
            out.write(encoded)
            size += len(encoded)
    if not size:
        raise InputError(f"'{source.name}' has no non-empty texts in column '{source.column}'.")
    return size
