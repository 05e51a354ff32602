"""Saved datasets, Arrow/Parquet folders and big txt files read as streams of texts (mlm_core.text.datasets)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.cli import run_cli

from mlm_core.errors import CorpusError, InputError
from mlm_core.text.corpus import MAX_TEXT_CHARS
from mlm_core.text.datasets import materialize_txt, open_dataset, stream_text_file

TEXTS = ["The cat sat on the mat.", "  ", None, "A dog ran in the park.", "Birds sing at dawn."]


def _table(texts=TEXTS) -> pa.Table:
    return pa.table({"label": pa.array(range(len(texts)), pa.int64()), "text": pa.array(texts, pa.string()),
                     "title": pa.array([f"t{i}" for i in range(len(texts))], pa.large_string())})


def write_saved_dataset(folder, table: pa.Table, shards: int = 2) -> None:
    """What ``Dataset.save_to_disk`` writes: Arrow IPC *stream* shards, state.json and dataset_info.json."""
    folder.mkdir(parents=True)
    names = []
    step = -(-table.num_rows // shards)
    for shard in range(shards):
        name = f"data-{shard:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            part = table.slice(shard * step, step)
            for batch in part.to_batches(max_chunksize=2):  # several record batches per shard
                writer.write_batch(batch)
        names.append({"filename": name})
    (folder / "state.json").write_text(json.dumps({"_data_files": names, "_split": None}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))


def write_dataset_dict(folder, splits: dict[str, pa.Table]) -> None:
    folder.mkdir(parents=True)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    for name, table in splits.items():
        write_saved_dataset(folder / name, table, shards=1)


def test_a_saved_dataset_is_read_in_order_skipping_blank_and_missing_texts(tmp_path):
    write_saved_dataset(tmp_path / "saved", _table())
    source = open_dataset(tmp_path / "saved")
    assert source.column == "text"  # preferred over the other string column
    assert list(source) == ["The cat sat on the mat.", "A dog ran in the park.", "Birds sing at dawn."]
    assert list(source) == list(source)  # each iteration reads afresh
    assert list(open_dataset(tmp_path / "saved", column="title")) == [f"t{i}" for i in range(5)]


def test_a_dataset_dict_reads_the_named_split_and_defaults_to_train(tmp_path):
    write_dataset_dict(tmp_path / "dd", {"train": _table(["one train text"]), "validation": _table(["a dev text"])})
    assert list(open_dataset(tmp_path / "dd")) == ["one train text"]
    source = open_dataset(tmp_path / "dd", split="validation")
    assert list(source) == ["a dev text"] and source.name == "dd[validation]"


def test_a_parquet_folder_is_read_with_a_row_count(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(_table(), folder / "a.parquet")
    pq.write_table(_table(["last one"]), folder / "b.parquet")
    source = open_dataset(folder)
    assert source.rows == 6 and source.format == "parquet"
    assert list(source)[-1] == "last one" and len(list(source)) == 4


def test_an_arrow_ipc_file_format_folder_is_read_too(tmp_path):
    folder = tmp_path / "ipcfile"
    folder.mkdir()
    with pa.OSFile(str(folder / "x.arrow"), "wb") as sink, pa.ipc.new_file(sink, _table().schema) as writer:
        writer.write_table(_table())
    assert len(list(open_dataset(folder))) == 3


@pytest.mark.parametrize("split, column, expected", [
    ("test", None, "available splits: train, validation"),
    ("train", "nope", "text columns: text, title"),
    ("train", "label", "not text (int64)"),
])
def test_bad_split_or_column_is_named_with_the_choices(tmp_path, split, column, expected):
    write_dataset_dict(tmp_path / "dd", {"train": _table(), "validation": _table()})
    with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        open_dataset(tmp_path / "dd", split=split, column=column)


def test_a_missing_folder_and_a_damaged_shard_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="No dataset"):
        open_dataset(tmp_path / "absent")
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "data.arrow").write_bytes(b"\xff\xff\xff\xff garbage that is not arrow")
    with pytest.raises(InputError):
        list(open_dataset(folder))


def test_a_big_txt_file_streams_lines_across_read_pieces(tmp_path):
    path = tmp_path / "big.txt"
    lines = [f"sentence number {i} é" for i in range(120_000)]  # over 1 MB: lines cross read boundaries
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    assert list(stream_text_file(path)) == lines
    long = tmp_path / "long.txt"
    long.write_text("ok\n" + "x" * (MAX_TEXT_CHARS + 1) + "\n")
    with pytest.raises(CorpusError, match="Line 2"):
        list(stream_text_file(long))


def test_materialize_txt_joins_texts_one_per_line_within_the_limit(tmp_path):
    write_saved_dataset(tmp_path / "saved", _table(["two\nlines", "b"]))
    assert materialize_txt(open_dataset(tmp_path / "saved"), 100) == b"two lines\nb\n"
    with pytest.raises(CorpusError, match="limit"):
        materialize_txt(open_dataset(tmp_path / "saved"), 5)


def test_cli_evaluate_reads_a_dataset(tiny_model_dir, tmp_path, capsys):
    write_dataset_dict(tmp_path / "dd", {"train": _table(), "validation": _table(["the cat sat", "a dog ran"])})
    status, out, err = run_cli(capsys, "evaluate", "--dataset", tmp_path / "dd", "--split", "validation",
                            "--model", tiny_model_dir, "--cache-dir", tmp_path / "cache", "--json")
    assert status == 0, err
    record = json.loads(out)
    assert record["sentences"] == 2 and record["file"] == "dd[validation]" and record["column"] == "text"


def test_cli_evaluate_streams_a_txt_file_over_the_size_limit(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import mlm_core.text.corpus as corpus

    path = tmp_path / "big.txt"
    path.write_text("the cat sat\n" * 50)
    monkeypatch.setattr(corpus, "MAX_CORPUS_BYTES", 100)  # so that this small file is over the limit
    common = ["--model", tiny_model_dir, "--cache-dir", tmp_path / "cache"]
    status, out, err = run_cli(capsys, "evaluate", path, *common)
    assert status == 2 and "--stream" in err and len(err.strip().splitlines()) == 1
    status, out, err = run_cli(capsys, "evaluate", path, "--stream", "--limit", "3", *common, "--json")
    assert status == 0, err
    record = json.loads(out)
    assert record["sentences"] == 3 and record["format"] == "txt"
    status, out, err = run_cli(capsys, "evaluate", tmp_path / "big.csv", "--stream", *common)
    assert status == 2 and "txt file" in err


@pytest.mark.parametrize("extra, expected", [
    (["--split", "test"], "available splits: train, validation"),
    (["--column", "label"], "not text"),
])
def test_cli_bad_split_or_column_exits_2_with_one_error_line(tiny_model_dir, tmp_path, capsys, extra, expected):
    write_dataset_dict(tmp_path / "dd", {"train": _table(), "validation": _table()})
    for command in (["evaluate", "--model", tiny_model_dir, "--cache-dir", tmp_path / "cache"],
                    ["train", "--model", tiny_model_dir, "--out", tmp_path / "runs"]):
        status, out, err = run_cli(capsys, *command, "--dataset", tmp_path / "dd", *extra)
        lines = err.strip().splitlines()
        assert status == 2 and out == "" and len(lines) == 1, err
        assert lines[0].startswith("error: ") and expected in lines[0]


def test_cli_train_reads_a_dataset_as_a_txt_corpus(tiny_model_dir, tmp_path, capsys):
    from support.corpora import corpus_bytes

    texts = corpus_bytes().decode("utf-8").splitlines()
    write_saved_dataset(tmp_path / "saved", _table(texts))
    status, out, err = run_cli(capsys, "train", "--dataset", tmp_path / "saved", "--model", tiny_model_dir,
                            "--device", "cpu", "--steps", "2", "--batch", "4", "--seq-len", "32", "--eval-every", "2",
                            "--eval-blocks", "4", "--out", tmp_path / "runs", "--json")
    assert status == 0, err
    last = json.loads(out.splitlines()[-1])
    assert last["event"] == "final" and last["status"] == "finished"


def test_cli_needs_exactly_one_source(tiny_model_dir, tmp_path, capsys):
    status, out, err = run_cli(capsys, "evaluate", "--model", tiny_model_dir, "--cache-dir", tmp_path)
    assert status == 2 and "--dataset" in err and len(err.strip().splitlines()) == 1
    status, out, err = run_cli(capsys, "train", "--model", tiny_model_dir, "--out", tmp_path / "runs")
    assert status == 2 and "--dataset" in err and len(err.strip().splitlines()) == 1
