"""The command line: help, JSON shape, and bad input as one clear line with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support import REPO

from mlm_core.cli import main

ROOT = REPO


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


def test_one_registry_declares_each_command_once():
    import argparse

    from mlm_core.cli import COMMANDS, build_parser

    names = [command.name for command in COMMANDS]
    assert len(names) == len(set(names))
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == names  # --help lists exactly the registry, in its order


def test_cli_modules_have_no_import_cycle():
    """Command modules import only the shared modules (``common``, and ``training``: what train and experiment
    share); only the registry imports the command modules."""
    import ast

    folder = ROOT / "mlm_core" / "cli"
    for path in folder.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mlm_core.cli"):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names if a.name.startswith("mlm_core.cli"))
        assert "mlm_core.cli" not in imported, f"{path.name} imports the cli package itself"
        if path.stem == "common":
            assert not imported, f"common imports {sorted(imported)}"
        if path.stem not in ("__init__", "registry", "common"):
            assert imported <= {"mlm_core.cli.common", "mlm_core.cli.training"}, f"{path.name} imports {sorted(imported)}"


def test_train_flags_come_from_the_training_settings():
    """Every train flag is a TrainConfig setting: its default, its limits, and the one cadence rule."""
    from mlm_core.cli import build_parser
    from mlm_core.cli.training import train_config_from_args
    from mlm_core.training import TrainConfig

    def config(*flags: str) -> TrainConfig:
        return train_config_from_args(build_parser().parse_args(["train", "--corpus", "c.txt", *flags]), "c.txt")

    assert config() == TrainConfig(corpus_name="c.txt")  # no flag: TrainConfig's own defaults
    given = config("--steps", "400", "--batch", "8", "--lr", "0.001", "--prune", "0.5", "--static", "--seed", "3")
    assert (given.steps, given.batch_size, given.lr, given.prune_sparsity) == (400, 8, 0.001, 0.5)
    assert (given.masking, given.seed, given.eval_every, given.checkpoint_every) == ("static", 3, 20, 100)
    by_epochs = config("--epochs", "2", "--eval-every", "7", "--checkpoint-evals", "1")
    assert (by_epochs.steps, by_epochs.epochs, by_epochs.eval_every, by_epochs.checkpoint_every) == (None, 2.0, 7, 7)
    assert config("--warmup-ratio", "0.1", "--heldout-fraction", "0.2").heldout_fraction == 0.2


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0.7"], "lr must be a number from 1e-07 to 0.5"),
    (["--steps", "0"], "steps must be a whole number from 1 to 1,000,000"),
    (["--rate-schedule", "weird"], "rate_schedule must be one of constant, linear, cosine"),
    (["--steps", "3", "--epochs", "1"], "not allowed with argument"),
])
def test_bad_train_settings_are_one_line_before_anything_is_read(capsys, flags, message):
    with pytest.raises(SystemExit) as done:  # a usage error, as argparse gives it
        main(["train", "--corpus", "no-such-file.txt", *flags])
    assert done.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


# ----------------------------------------------------------------------------- issue 17: one ratio, train records


def test_predict_and_mask_report_one_ratio(tiny_model_dir, capsys):
    """α is the engine's MaskResult.ratio in both commands: chosen ÷ eligible after protection."""
    flags = ["--model", str(tiny_model_dir), "--strategy", "random", "--rate", "0.5", "--protect", "stopwords",
             "--seed", "3", "--json"]
    text = "the cat sat on the mat ."
    assert main(["predict", text, *flags]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert main(["mask", text, *flags]) == 0
    masked = json.loads(capsys.readouterr().out)
    assert predicted["ratio"] == masked["ratio"]
    chosen = sum(kind in ("masked", "random", "kept") for kind in masked["kinds"])
    eligible = [t for t in masked["original_tokens"][1:-1] if t not in ("the", "on")]  # stopwords are protected
    assert chosen and masked["ratio"] == pytest.approx(chosen / len(eligible))


def test_predict_ratio_of_typed_masks_only(tiny_model_dir, capsys):
    assert main(["predict", "the cat [MASK] on the mat .", "--model", str(tiny_model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ratio"] == pytest.approx(1 / 7)  # one mask, seven tokens


def test_train_help_names_the_scratch_models():
    from mlm_core.training.scratch import SCRATCH_MODELS

    done = run_cli("train", "--help")
    assert done.returncode == 0, done.stderr
    help_text = " ".join(done.stdout.split())
    assert all(name in help_text for name in SCRATCH_MODELS)
    assert "run:ID" in help_text
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command_line = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    assert all(name in command_line for name in SCRATCH_MODELS)


def test_train_json_names_the_run_first_and_both_evaluations_last(tiny_model_dir, tmp_path, capsys):
    from support.corpora import corpus_bytes

    from mlm_core.training.store import RunStore

    corpus = tmp_path / "tiny.txt"
    corpus.write_bytes(corpus_bytes())
    argv = ["train", "--corpus", str(corpus), "--model", str(tiny_model_dir), "--device", "cpu", "--steps", "4",
            "--batch", "4", "--seq-len", "32", "--eval-every", "2", "--eval-blocks", "8", "--lr", "0.001",
            "--out", str(tmp_path / "runs"), "--json"]
    assert main(argv) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    first, last = records[0], records[-1]
    assert first["event"] == "created" and first["run_id"] and first["name"]
    assert {r["run_id"] for r in records} == {first["run_id"]}  # every record names the run
    assert last["event"] == "final" and last["status"] == "finished"
    metrics = RunStore(tmp_path / "runs").metrics(first["run_id"])
    assert last["final_eval"]["step"] == last["step"] == 4  # the saved model is the last step's
    assert last["final_eval"]["heldout_loss"] == metrics[-1]["heldout_loss"]
    assert last["best_eval"]["heldout_loss"] == min(m["heldout_loss"] for m in metrics)
    assert "held_out_loss" not in last  # no unnamed loss: which evaluation it is was not said
    out = ["--out", str(tmp_path / "runs")]
    assert main(["runs", "rename", first["run_id"], "--name", "tiny, first", *out, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "tiny, first"
    assert main(["runs", "list", *out]) == 0
    listed = capsys.readouterr().out
    assert "tiny, first" in listed and "final (step 4)" in listed and "best (step" in listed
    assert main(["runs", "rename", first["run_id"], "--name", "a\x1b[2Jb", *out]) == 2  # a terminal escape
