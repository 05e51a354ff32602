"""The command line: help, JSON shape, and bad input as one clear line with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlm_core.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "mlm_core", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_help_lists_commands():
    done = run_cli("--help")
    assert done.returncode == 0
    assert "predict" in done.stdout
    assert "usage: python -m mlm_core" in done.stdout


def test_predict_json_in_a_subprocess(tiny_model_dir):
    done = run_cli("predict", "the cat [MASK] on the [MASK].", "--model", str(tiny_model_dir), "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["model"] == str(tiny_model_dir)
    assert record["tokens"][0] == "[CLS]" and record["tokens"][-1] == "[SEP]"
    assert record["masked_positions"] == [3, 6]
    assert [p["position"] for p in record["predictions"]] == [3, 6]
    for item in record["predictions"]:
        assert len(item["top"]) == 5
        assert all(set(c) >= {"token", "prob"} and 0 <= c["prob"] <= 1 for c in item["top"])


def test_bad_input_in_a_subprocess_has_no_traceback():
    done = run_cli("predict", "   ", "--model", "no-such-org/no-such-model")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_predict_text_output(tiny_model_dir, capsys):
    assert main(["predict", "the [MASK] sat", "--model", str(tiny_model_dir), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "position 2:" in out and "filled:" in out


def test_predict_json_joint(tiny_model_dir, capsys):
    argv = [
        "predict",
        "[MASK] cat [MASK] on the mat",
        "--model",
        str(tiny_model_dir),
        "--fill",
        "joint",
        "--json",
    ]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["fill"] == "joint"
    assert sorted(p["fill_step"] for p in record["predictions"]) == [1, 2]


@pytest.mark.parametrize(
    ("text", "extra", "message"),
    [
        ("", [], "Nothing to mask"),
        ("   \t ", [], "Nothing to mask"),
        ("\u200b\u200e", [], "Nothing to mask"),
        ("the cat sat", [], "No masked position"),
        ("the [MASK]", ["--model", "no-such-org/no-such-model"], "Cannot find model"),
        ("the [MASK]", ["--top-k", "0"], "--top-k"),
        ("the [MASK]", ["--top-k", "many"], "--top-k"),
        ("the [MASK]", ["--fill", "greedy"], "--fill"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_model_dir, capsys, text, extra, message):
    argv = ["predict", text, *(extra if "--model" in extra else ["--model", str(tiny_model_dir), *extra])]
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse reports its own errors by exiting
        status = exc.code
    captured = capsys.readouterr()
    assert status != 0
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert message in lines[0] and "Traceback" not in captured.err
