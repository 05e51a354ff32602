"""`attend --exclude`: removing words from the context, keys only or keys and queries, on the tiny BERT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.cli import run_cli

TEXT = "the cat sat on the [MASK] ."


def attend(capsys, model_dir, *flags) -> tuple[int, str, str]:
    return run_cli(capsys, "attend", TEXT, "--model", model_dir, "--head", "0", *flags)


def test_keys_only_zeroes_the_columns_and_keeps_rows_summing_to_one(capsys, tiny_model_dir):
    status, out, err = attend(capsys, tiny_model_dir, "--exclude", "the", "--json")
    assert status == 0, err
    record = json.loads(out)
    att, before = np.array(record["attention"]), np.array(record["attention_before"])
    assert record["excluded_positions"] == [1, 5] and record["exclude_mode"] == "keys"
    assert not att[:, [1, 5]].any() and before[:, [1, 5]].all()
    np.testing.assert_allclose(att.sum(1), 1.0, atol=1e-4)


def test_keys_and_queries_zero_the_rows_too(capsys, tiny_model_dir):
    status, out, err = attend(capsys, tiny_model_dir, "--exclude", "the,3", "--exclude-mode", "keys-and-queries",
                              "--json")
    assert status == 0, err
    record = json.loads(out)
    att = np.array(record["attention"])
    removed = record["excluded_positions"]
    assert removed == [1, 3, 5]
    assert not att[removed].any() and not att[:, removed].any()
    others = [i for i in range(len(att)) if i not in removed]
    np.testing.assert_allclose(att[others].sum(1), 1.0, atol=1e-4)
    status, text, _ = attend(capsys, tiny_model_dir, "--exclude", "the,3", "--exclude-mode", "keys-and-queries")
    assert status == 0 and "their own rows are all 0" in text
    assert text.count("(nothing: row is 0)") == 3


@pytest.mark.parametrize("flags, message", [
    (("--exclude", "dog"), "No word of the text is 'dog'"),
    (("--exclude", "0"), "Position 0 is not a word"),
    (("--exclude", ""), "Name the words or positions"),
])
def test_bad_exclusions_are_one_error_line(capsys, tiny_model_dir, flags, message):
    status, out, err = attend(capsys, tiny_model_dir, *flags)
    assert status == 2 and out == ""
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_an_unknown_mode_is_a_usage_error(capsys, tiny_model_dir):
    status, _, err = attend(capsys, tiny_model_dir, "--exclude", "the", "--exclude-mode", "rows")
    assert status == 2 and "invalid choice" in err
