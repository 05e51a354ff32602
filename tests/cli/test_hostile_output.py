"""What MaskLab prints and exports from hostile text, built here: terminal escapes in tokens, corpus
lines, file and run names; spreadsheet formulas in sentences and guesses; a file where a folder
belongs; a 100 KB run id.

- The command line shows control characters as escapes (``\\x1b``), in text and in JSON, and never
  sends them to the terminal raw.
- Every CSV for people (the Batch page's downloads, ``evaluate --out``) neutralises formula cells.
- A file named where a folder belongs, and the reverse, is one ``error:`` line and exit status 2.
- A huge run id is quoted cut short.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata

import pytest
from conftest import TINY_VOCAB, build_tiny_bert
from support.cli import run_cli

from mlm_core.cli import main
from mlm_core.evaluate import TEXT_COLUMNS, EvalConfig, evaluate
from mlm_core.model.loading import load_model
from mlm_core.training.store import RunStore

ESCAPES = ("\x1b]0;owned\x07", "\x9b2J", "\u202eevil")  # OSC title, 8-bit CSI, right-to-left override
FORMULAS = ('=HYPERLINK("http://x")', "@SUM(1)", "+cmd", "-2+3")
FORMULA_SENTENCES = ['=HYPERLINK("http://x","the cat")', "+the cat sat", "-the dog ran", "@the mat"]


@pytest.fixture(scope="module")
def hostile_guess_dir(tmp_path_factory):
    """The tiny BERT whose top guesses for every mask are terminal escapes and spreadsheet formulas."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("hostile-guesses")
    vocab = [*TINY_VOCAB, *ESCAPES, *FORMULAS]
    build_tiny_bert(folder, vocab=vocab)
    weights = load_file(str(folder / "model.safetensors"))
    for token in (*ESCAPES, *FORMULAS):
        weights["cls.predictions.bias"][vocab.index(token)] += 50.0
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def refused(capsys, *argv) -> str:
    """The one ``error:`` line of a refused command (exit status 2, nothing on stdout)."""
    status, out, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert status == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: "), (status, out, err)
    assert "unexpected" not in err and "Traceback" not in err
    return lines[0]


def terminal_active(text: str) -> list[str]:
    """The characters of ``text`` a terminal would act on: controls but tab and line feed, the line and
    paragraph separators and the bidirectional formatting characters."""
    return [ch for ch in text if (unicodedata.category(ch) in ("Cc", "Zl", "Zp") and ch not in "\t\n")
            or unicodedata.bidirectional(ch) in ("LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI")]


# ----------------------------------------------------------------------------- terminal escapes


def test_guessed_tokens_with_terminal_escapes_are_printed_escaped(hostile_guess_dir, capsys):
    status, out, err = run_cli(capsys, "predict", "the [MASK] sat.", "--model", hostile_guess_dir, "--top-k", "9")
    assert status == 0, err
    assert not terminal_active(out)
    assert r"\x1b]0;owned\x07" in out and r"\x9b2J" in out and r"\u202eevil" in out


def test_json_output_escapes_what_json_dumps_leaves_raw_and_reads_back(hostile_guess_dir, capsys):
    status, out, err = run_cli(capsys, "predict", "the [MASK] sat.", "--model", hostile_guess_dir, "--top-k", "9",
                           "--json")
    assert status == 0, err
    assert not terminal_active(out)  # \x9b and \u202e: json.dumps(ensure_ascii=False) passes them raw
    guesses = {c["token"] for p in json.loads(out)["predictions"] for c in p["top"]}
    assert set(ESCAPES) <= guesses  # the same strings for a JSON reader


def test_a_corpus_line_and_a_file_name_with_escapes_are_shown_escaped(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "c\x1b[31mred\x9b.csv"
    rows = "the cat sat on the mat.,the dog ran in the house.\n" * 5  # a few controls in text, not a binary file
    corpus.write_bytes(("note,\x1b]0;owned\x07text\u202e\n" + rows).encode())
    error = refused(capsys, "evaluate", corpus, "--model", tiny_model_dir, "--cache-dir", tmp_path / "cache")
    assert "Choose the text column" in error and not terminal_active(error) and r"\x1b]0;owned\x07" in error
    status, out, err = run_cli(capsys, "evaluate", corpus, "--column", "note", "--model", tiny_model_dir,
                           "--cache-dir", tmp_path / "cache", "--no-pll")
    assert status == 0, err
    assert not terminal_active(out) and r"c\x1b[31mred\x9b.csv" in out


def test_a_run_name_with_escapes_is_listed_escaped(tmp_path, capsys):
    runs = tmp_path / "runs"
    model = tmp_path / "model\x1b]0;owned\x07\x9b"  # a generated name shows the model folder's name
    RunStore(runs).create({"model": str(model), "strategy": "random", "steps": 4})
    status, out, err = run_cli(capsys, "runs", "list", "--out", runs)
    assert status == 0, err
    assert not terminal_active(out) and r"model\x1b]0;owned\x07\x9b" in out
    status, out, err = run_cli(capsys, "runs", "list", "--out", runs, "--json")
    assert status == 0, err
    assert not terminal_active(out) and json.loads(out)["runs"][0]["name"].endswith(model.name + " · 4 steps")


def test_an_error_message_quoting_escapes_is_one_escaped_line(tmp_path, capsys):
    error = refused(capsys, "runs", "show", "x\x1b[2J\x9b\u202e\ny", "--out", tmp_path / "runs")
    assert not terminal_active(error) and r"\x1b[2J\x9b\u202e" in error


# ----------------------------------------------------------------------------- spreadsheet formulas in CSV


def assert_formula_free(csv_text: str, text_columns) -> list[dict]:
    """Parse ``csv_text``; no text cell starts like a formula unless it is only a number; returns the rows."""
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert rows
    for row in rows:
        for column, cell in row.items():
            if column in text_columns and cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
                float(cell)  # "-3": a spreadsheet reads a number; anything else must have been quoted
    return rows


def check_rows(sentences_csv: str, tokens_csv: str) -> None:
    sentences = assert_formula_free(sentences_csv, TEXT_COLUMNS)
    assert ["'" + s for s in FORMULA_SENTENCES] == [row["text"] for row in sentences][: len(FORMULA_SENTENCES)]
    assert any(float(row["mean_log_prob"]) < 0 and row["mean_log_prob"].startswith("-") for row in sentences)
    tokens = assert_formula_free(tokens_csv, TEXT_COLUMNS)
    guesses = {row["guess"] for row in tokens}
    assert guesses & {"'" + f for f in FORMULAS}, guesses  # the model's formula guesses, quoted
    assert all(float(row["log_prob"]) <= 0 for row in tokens)  # numbers stay numbers


def test_batch_page_csv_downloads_quote_formula_cells(hostile_guess_dir, tmp_path):
    # The Batch page's downloads are EvalReport.rows_bytes (ui/batch.py _downloads).
    texts = [*FORMULA_SENTENCES, "the cat sat on the mat."]
    report = evaluate(load_model(str(hostile_guess_dir), device="cpu"), texts,
                      EvalConfig("random", {"mlm_probability": 0.5}), cache_dir=tmp_path / "cache", with_pll=False)
    check_rows(report.rows_bytes("sentences", "csv").decode(), report.rows_bytes("tokens", "csv").decode())
    assert report.rows("sentences")["text"].tolist() == texts  # the rows themselves keep the text as it is
    assert json.loads(report.rows_bytes("sentences", "json"))[0]["text"] == FORMULA_SENTENCES[0]


def test_evaluate_out_csv_quotes_formula_cells(hostile_guess_dir, tmp_path, capsys):
    corpus = tmp_path / "formulas.txt"
    corpus.write_text("\n".join([*FORMULA_SENTENCES, "the cat sat on the mat."]) + "\n")
    sentences, tokens = tmp_path / "sentences.csv", tmp_path / "tokens.csv"
    status, out, err = run_cli(capsys, "evaluate", corpus, "--model", hostile_guess_dir, "--rate", "0.5", "--no-pll",
                           "--cache-dir", tmp_path / "cache", "--out", sentences, "--tokens-out", tokens)
    assert status == 0, err
    check_rows(sentences.read_text(), tokens.read_text())


# ----------------------------------------------------------------------------- files where folders belong


def test_a_file_or_folder_in_the_wrong_place_is_one_error_line(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat.\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    evaluate_argv = ("evaluate", corpus, "--model", tiny_model_dir)
    assert refused(capsys, *evaluate_argv, "--cache-dir", a_file) == (
        f"error: --cache-dir must be a folder; '{a_file}' is a file.")
    assert "--cache-dir must be a folder" in refused(capsys, *evaluate_argv, "--cache-dir", a_file / "sub")
    assert f"Cannot write --out '{tmp_path}': it is a folder" in refused(capsys, *evaluate_argv, "--out", tmp_path)
    assert f"'{a_file}' is a file, not a folder" in refused(capsys, *evaluate_argv, "--tokens-out", a_file / "t.csv")
    assert refused(capsys, "runs", "list", "--out", a_file) == f"error: --out must be a folder; '{a_file}' is a file."
    assert "--out must be a folder" in refused(capsys, "train", "--corpus", corpus, "--model", tiny_model_dir,
                                               "--out", a_file)
    assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------- huge ids


@pytest.mark.parametrize("run_id", ["a" * 100_000, "x/" * 50_000, "run:" + "b" * 100_000],
                         ids=["letters", "not-an-id", "model-reference"])
def test_a_100_kb_run_id_is_quoted_cut_short(run_id, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))  # run:ID models are looked up in the default store
    out = ("--out", tmp_path / "runs")
    commands = [("runs", "show", run_id, *out), ("runs", "delete", run_id, *out), ("runs", "cancel", run_id, *out),
                ("runs", "rename", run_id, "--name", "x", *out), ("runs", "resume", run_id, *out)]
    if run_id.startswith("run:"):
        commands.append(("predict", "the [MASK].", "--model", run_id))
    for argv in commands:
        error = refused(capsys, *argv)
        assert len(error) < 300, (argv[:2], error[:400])
        assert "run" in error.lower()


def test_any_huge_value_quoted_in_an_error_line_is_cut(tmp_path, capsys):
    from mlm_core.cli.common import MAX_MESSAGE_CHARS

    for argv in (("runs", "list", "--bogus", "z" * 100_000), ("runs", "z\x1b[2J" * 20_000)):
        error = refused(capsys, *argv)
        assert len(error) < MAX_MESSAGE_CHARS + 100 and not terminal_active(error)


def test_evaluate_refuses_too_many_seeds_before_building_them(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat.\n")
    assert main(["evaluate", str(corpus), "--seeds", str(10**12), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --seeds must be from 1 to 20") and err.count("\n") == 1


def test_evaluate_into_a_folder_it_cannot_write_is_one_clear_line(tmp_path, capsys, tiny_model_dir):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat.\n")
    assert main(["evaluate", str(corpus), "--model", str(tiny_model_dir), "--cache-dir", "/proc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --cache-dir '/proc' cannot be written") and err.count("\n") == 1
