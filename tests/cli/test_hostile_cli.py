"""Hostile input through the command line: every row of RELIABILITY.md's bad-input tables not covered in
tests/cli/test_cli.py or tests/batch/test_evaluate.py. Bad input prints one ``error:`` line and exits non-zero, with no
traceback; odd but valid input exits 0. Each test names its row.

Most cases call ``main`` in this process (fast); the ones about argv bytes, terminal encodings and
tracebacks run ``python -m mlm_core`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import pytest
from support import REPO
from support.cli import run_cli
from support.hostile import (
    HOSTILE_TOKENS,
    INVISIBLE_ONLY,
    LONG_FILLER,
    ODD_SCRIPTS,
    PAYLOAD,
    build_gpt2,
    build_hostile_vocab_bert,
    build_pickle_only,
    build_tiny_roberta,
)

from mlm_core.text.corpus import MAX_CORPUS_BYTES
from mlm_core.training.store import RunStore

ROOT = REPO


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    return build_tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="module")
def hostile_vocab_dir(tmp_path_factory):
    return build_hostile_vocab_bert(tmp_path_factory.mktemp("hostile-vocab"))


def refused(capsys, *argv: str) -> str:
    """Run the CLI and check the contract for bad input; returns the one error line."""
    status, out, err = run_cli(capsys, *argv)
    assert status != 0, out
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), repr(err)
    assert "Traceback" not in err and "unexpected" not in err, err  # "unexpected": a bug caught by main
    return lines[0]


def accepted(capsys, *argv: str) -> dict:
    status, out, err = run_cli(capsys, *argv, "--json")
    assert status == 0, err
    return json.loads(out)


def run_module(*argv, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m mlm_core`` in a subprocess; ``argv`` items may be bytes (what a shell passes through)."""
    return subprocess.run(
        [sys.executable, "-m", "mlm_core", *argv],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        },
        stdin=subprocess.DEVNULL,
    )


# ----------------------------------------------------------------------------- bad text input


@pytest.mark.parametrize("command", ["predict", "mask"])
@pytest.mark.parametrize("text", INVISIBLE_ONLY, ids=["control", "bidi", "zero-width"])
def test_invisible_text_says_nothing_to_mask(tiny_model_dir, capsys, command, text):
    # RELIABILITY "Bad text input", row 1: only control / bidi / zero-width characters.
    extra = ["--strategy", "random"] if command == "mask" else []
    assert "Nothing to mask" in refused(capsys, command, text, "--model", tiny_model_dir, *extra)


def test_a_file_of_invisible_lines_is_refused_by_evaluate(tiny_model_dir, tmp_path, capsys):
    # Row 1 in batch form: a file whose lines hold only invisible characters has nothing to mask.
    path = tmp_path / "invisible.txt"
    path.write_text("\u200b\n\u200d\u200e\n \u2060\ufeff\n", encoding="utf-8")
    assert "no text" in refused(capsys, "evaluate", path, "--model", tiny_model_dir, "--cache-dir", tmp_path)


@pytest.mark.parametrize("command", ["predict", "mask"])
def test_rules_that_leave_nothing_name_the_rule(tiny_model_dir, capsys, command):
    # Row 2: no maskable token after the rules (only stopwords and punctuation).
    line = refused(
        capsys,
        command,
        "the of and , .",
        "--model",
        tiny_model_dir,
        "--strategy",
        "random",
        "--protect",
        "stopwords,punctuation",
    )
    assert "Nothing to mask" in line and "stopwords" in line and "punctuation" in line


@pytest.mark.parametrize(
    "argv",
    [
        ("[MASK] [MASK] [MASK]",),
        ("the cat sat on the mat", "--strategy", "random", "--rate", "1"),
    ],
)
def test_masking_everything_is_refused_at_the_stated_cap(tiny_model_dir, capsys, argv):
    # Row 3: every token masked -> allowed up to a stated cap.
    assert "limit is 80%" in refused(capsys, "predict", *argv, "--model", tiny_model_dir)


def test_several_masks_are_labelled_independent_and_special_tokens_stay(tiny_model_dir, capsys):
    # Row 3: special tokens never masked; independent predictions are labelled, joint ones are not.
    record = accepted(
        capsys,
        "predict",
        "[MASK] cat sat on the mat and the dog ran in the [MASK]",
        "--model",
        tiny_model_dir,
        "--strategy",
        "random",
        "--rate",
        "0.3",
    )
    assert record["tokens"][0] == "[CLS]" and record["tokens"][-1] == "[SEP]"
    assert record["kinds"][0] is None and record["kinds"][-1] is None
    assert any("independently" in n for n in record["notices"])
    joint = accepted(
        capsys, "predict", "[MASK] cat [MASK] on the mat", "--model", tiny_model_dir, "--fill", "joint"
    )
    assert not any("independently" in n for n in joint["notices"])


def test_masks_at_both_ends_of_a_long_text_are_all_predicted(tiny_model_dir, capsys):
    # Row 4: longer than the model's maximum -> windowed with a notice; no mask silently dropped.
    record = accepted(capsys, "predict", f"[MASK] {LONG_FILLER} [MASK]", "--model", tiny_model_dir)
    assert len(record["predictions"]) == 2 and record["masked_positions"][0] == 1
    assert record["masked_positions"][1] == len(record["tokens"]) - 2
    assert any("window" in n for n in record["notices"])


def test_text_over_the_character_limit_is_refused(tiny_model_dir, capsys):
    # Row 4: 100k characters is the limit of one text.
    assert "limit is 100,000" in refused(
        capsys, "predict", "the cat " * 12_501 + "[MASK]", "--model", tiny_model_dir
    )


def test_only_the_models_own_mask_token_is_honoured(tiny_model_dir, roberta_dir, capsys):
    # Row 5: the typed mask token is a mask; the other model's mask string stays plain text.
    assert "No masked position" in refused(capsys, "predict", "the cat <mask> sat", "--model", tiny_model_dir)
    assert "type <mask>" in refused(capsys, "predict", "the cat [MASK] sat", "--model", roberta_dir)
    record = accepted(capsys, "predict", "the cat <mask> on the mat", "--model", roberta_dir)
    assert record["mask_token"] == "<mask>" and record["masked_positions"] == [3]
    assert record["tokens"][3] == "<mask>"  # the space before it belongs to the mask, as in roberta-base


def test_typed_control_strings_stay_text(tiny_model_dir, roberta_dir, capsys):
    # Row 6: typed [CLS], [SEP], </s>, <pad> are text, never control tokens.
    for model, mask, frame in (
        (tiny_model_dir, "[MASK]", ("[CLS]", "[SEP]")),
        (roberta_dir, "<mask>", ("<s>", "</s>")),
    ):
        record = accepted(
            capsys,
            "mask",
            f"[CLS] the {mask} [SEP] </s> <pad> <s>",
            "--model",
            model,
            "--strategy",
            "random",
            "--rate",
            "0.3",
        )
        tokens = record["original_tokens"]
        assert tokens[0] == frame[0] and tokens[-1] == frame[1]
        assert frame[0] not in tokens[1:-1] and frame[1] not in tokens[1:-1] and "<pad>" not in tokens
        assert tokens.count(mask) == 1


def test_odd_scripts_pass_through(tiny_model_dir, roberta_dir, capsys):
    # Row 7: emoji, ZWJ, combining marks, RTL, CJK, NUL -> no exception (offsets: tests/text/test_tokens.py).
    for model in (tiny_model_dir, roberta_dir):
        mask = "<mask>" if model == roberta_dir else "[MASK]"
        record = accepted(capsys, "predict", ODD_SCRIPTS.replace("[MASK]", mask), "--model", model)
        assert len(record["predictions"]) == 1


@pytest.mark.parametrize("encoding", ["utf-8:strict", "latin-1:strict"])
def test_undecodable_argv_and_narrow_terminals_do_not_break_the_output(tiny_model_dir, encoding):
    # Row 7: lone surrogates. A shell passes bytes; Python turns an invalid UTF-8 byte into a lone surrogate
    # (\udcff), which a strict UTF-8 terminal cannot print, and CJK does not fit a Latin-1 one. Before the
    # fix both ended in a UnicodeEncodeError traceback after the work was done.
    text = b"the \xff cat " + "東京".encode() + b" [MASK]."  # \xff alone is not UTF-8
    for extra in ([], ["--json"]):
        done = run_module(
            b"predict",
            text,
            b"--model",
            str(tiny_model_dir).encode(),
            *extra,
            env={"PYTHONIOENCODING": encoding},
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        assert b"Traceback" not in done.stderr
        if extra:
            record = json.loads(done.stdout)
            assert len(record["predictions"]) == 1
            assert record["original_tokens"][0] == "[CLS]"


def test_html_stays_literal_in_the_output(hostile_vocab_dir, capsys):
    # Row 8: HTML/JS in text and vocabularies: a terminal shows it as typed (escaping belongs to HTML pages).
    text = f"{PAYLOAD} the cat [MASK] sat"
    record = accepted(capsys, "mask", text, "--model", hostile_vocab_dir, "--strategy", "random")
    assert record["text"] == text
    predicted = accepted(capsys, "predict", text, "--model", hostile_vocab_dir)
    top = [c["token"] for c in predicted["predictions"][0]["top"]]
    assert set(HOSTILE_TOKENS) <= set(top)  # the vocabulary's tags, exactly as they are, never "&lt;img"
    status, out, _ = run_cli(capsys, "predict", text, "--model", hostile_vocab_dir)
    assert status == 0 and PAYLOAD in out and "&lt;" not in out


def test_a_multi_line_message_is_printed_on_one_line(tmp_path, capsys):
    # The "one error: line" contract with a message that quotes the user's file: a CSV header cell may hold a
    # line break (found by tests/fuzz/fuzz_corpus.py).
    path = tmp_path / "names.csv"
    path.write_bytes(b'"first\nsecond",other\n1,2\n')
    line = refused(capsys, "evaluate", path, "--column", "text", "--cache-dir", tmp_path)
    assert "No column named 'text'" in line and "first\\nsecond" in line


# ----------------------------------------------------------------------------- uploaded corpora


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("zero.txt", b"", "empty"),
        ("header.csv", b"text,label\n", "has no text"),
        ("field.csv", b'id,text\n1,"' + b"a" * 200_000 + b'"\n', "Line 2: one text has 200,000 characters"),
        ("nul.txt", b"the cat sat.\nthe\x00dog ran.\n", "Line 2: the file contains NUL"),
        ("nofield.jsonl", b'{"n": 1}\n', "Line 1: the object has no text field"),
        ("deep.jsonl", b"[" * 50_000 + b"\n", "Line 1: the JSON is nested too deeply"),
        ("digits.jsonl", b'{"text": "a", "n": ' + b"9" * 5000 + b"}\n", "Line 1: a value cannot be read"),
        ("sheet.xlsx", b"PK\x03\x04", "Unsupported file type '.xlsx'"),
    ],
)
def test_bad_files_are_refused_naming_the_line_or_the_limit(
    tiny_model_dir, tmp_path, capsys, name, data, message
):
    # RELIABILITY "Uploaded corpora" (the rows tests/batch/test_evaluate.py does not cover): empty file, header-only
    # CSV, one 200 kB field, NUL bytes, a missing text field, and what the fuzzer found in JSONL.
    path = tmp_path / name
    path.write_bytes(data)
    line = refused(capsys, "evaluate", path, "--model", tiny_model_dir, "--cache-dir", tmp_path)
    assert message in line


def test_a_missing_named_column_lists_the_columns(tiny_model_dir, tmp_path, capsys):
    # "Uploaded corpora": a missing text column.
    path = tmp_path / "t.csv"
    path.write_text("id,review\n1,the cat sat\n")
    line = refused(
        capsys, "evaluate", path, "--column", "text", "--model", tiny_model_dir, "--cache-dir", tmp_path
    )
    assert "No column named 'text'" in line and "id, review" in line


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, capsys):
    # "Uploaded corpora": a file over the size limit; memory stays bounded (the file is never read).
    path = tmp_path / "huge.txt"
    with path.open("wb") as handle:
        handle.truncate(MAX_CORPUS_BYTES + 1)  # sparse: no disk used
    import mlm_core.evaluate  # noqa: F401 (imported now, so that its import is not counted below)
    import mlm_core.model.loading  # noqa: F401

    tracemalloc.start()
    try:
        line = refused(capsys, "evaluate", path, "--cache-dir", tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "the limit is 50 MB (52,428,800 bytes)" in line
    assert peak < MAX_CORPUS_BYTES // 10
    # train streams a corpus over the limit instead of refusing it; this one stops at its first text's length
    assert "over 100,000 characters" in refused(capsys, "train", "--corpus", path, "--out", tmp_path / "runs")


def test_other_encodings_are_read_and_said(tiny_model_dir, tmp_path, capsys):
    # "Uploaded corpora": Latin-1 is read, and the CLI says so as the page does; UTF-16 and a BOM just work.
    files = {
        "latin.txt": "crème brûlée\nthe cat sat\n".encode("latin-1"),
        "utf16.txt": "the cat sat\nnaïve\n".encode("utf-16"),
        "bom.csv": "\ufefftext,label\nthe cat sat,1\n".encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        record = accepted(
            capsys,
            "evaluate",
            tmp_path / name,
            "--model",
            tiny_model_dir,
            "--cache-dir",
            tmp_path,
            "--no-pll",
        )
        assert record["sentences"] == (1 if name == "bom.csv" else 2)
        assert any("Windows-1252" in n for n in record["notices"]) == (name == "latin.txt")
        assert record["column"] == ("text" if name == "bom.csv" else None)


def test_a_bad_corpus_starts_no_training_run(tiny_model_dir, tmp_path, capsys):
    # "Uploaded corpora": nothing is half imported: no run exists after a refused corpus.
    path = tmp_path / "ragged.csv"
    path.write_bytes(b"id,text\n1,the cat\n2,the dog,extra\n")
    store = tmp_path / "runs"
    assert "Line 3" in refused(capsys, "train", "--corpus", path, "--model", tiny_model_dir, "--out", store)
    assert RunStore(store).list() == []


def test_file_names_are_display_names_only(tiny_model_dir, tmp_path, capsys):
    # "Uploaded corpora": file names are never used as paths (only the base name is shown or stored).
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    path = folder / f"{PAYLOAD}.txt"
    path.write_text("the cat sat.\nthe dog ran.\n")
    record = accepted(
        capsys,
        "evaluate",
        tmp_path / "a" / ".." / "a" / "b" / path.name,
        "--model",
        tiny_model_dir,
        "--cache-dir",
        tmp_path,
        "--no-pll",
    )
    assert record["file"] == path.name


# ----------------------------------------------------------------------------- models


def test_models_that_must_not_load_are_refused_in_one_line(tiny_model_dir, tmp_path, capsys):
    # RELIABILITY "Models": pickle-only folders refused before unpickling; no mask token (GPT-2) explained.
    marker = tmp_path / "pickle-was-executed"
    pickled = build_pickle_only(tiny_model_dir, tmp_path / "pickled", marker)
    assert "pickle" in refused(capsys, "predict", "the [MASK] sat", "--model", pickled)
    assert not marker.exists()
    gpt2 = build_gpt2(tiny_model_dir, tmp_path / "gpt2")
    assert "masked language model" in refused(
        capsys, "mask", "the cat sat", "--model", gpt2, "--strategy", "random"
    )
