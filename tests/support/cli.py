"""Running the command line in the test's own process."""

from __future__ import annotations

from mlm_core.cli import main


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``python -m mlm_core *argv`` in this process: (status, stdout, stderr); argparse errors included."""
    capsys.readouterr()  # drop what building a model printed (progress bars) before this call
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err
