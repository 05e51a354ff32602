"""The commands, in the order ``--help`` lists them, the parser built from their declarations, and ``main``.

Registering a command: declare a ``Command`` in its family's module, import it here and add it to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mlm_core.cli.app import APP
from mlm_core.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_BUG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Command,
    Printed,
    emit,
    message_line,
    one_line_message,
)
from mlm_core.cli.evaluate import EVALUATE
from mlm_core.cli.experiment import EXPERIMENT
from mlm_core.cli.explain import ATTEND, ATTRIBUTE
from mlm_core.cli.masking import MASK, PREDICT
from mlm_core.cli.runs import RUNS, TRAIN
from mlm_core.cli.settings import SETTINGS
from mlm_core.errors import MaskLabError

COMMANDS: tuple[Command, ...] = (PREDICT, MASK, TRAIN, EXPERIMENT, RUNS, EVALUATE, ATTEND, ATTRIBUTE, APP,
                                  SETTINGS)
BY_NAME: dict[str, Command] = {command.name: command for command in COMMANDS}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line and exit status 2, like every other bad input."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message_line(message)} (see {self.prog} --help)\n")


def program_name() -> str:
    """How the user started us, for usage lines: ``masklab`` (the console script) or ``python -m mlm_core``."""
    return "masklab" if Path(sys.argv[0]).stem == "masklab" else "python -m mlm_core"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=program_name(),
        description="MaskLab: see and test what masking does to masked language models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help)
        command.add_arguments(p)
        if command.json_help is None:
            p.set_defaults(json=False)
        else:
            p.add_argument("--json", action="store_true", help=command.json_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command line; the exit status: 0, 2 for bad input, 1 for a bug, 130 when interrupted."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = BY_NAME[args.command]
    if extra and not command.extra_options:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")  # what parse_args would say
    args.extra_options = extra
    try:
        result = command.run(args)
    except MaskLabError as exc:
        print(f"error: {one_line_message(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: still one line for the user, the traceback only on request
        if os.environ.get("MASKLAB_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {one_line_message(exc)} "
              "(set MASKLAB_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_BUG
    if isinstance(result, Printed):
        return result.exit_code
    try:
        if args.json:
            emit(json.dumps(result, ensure_ascii=False, indent=1, default=str), result)
        else:
            emit(command.format_text(result))
    except BrokenPipeError:  # e.g. piped into head: the reader has what it wanted
        sys.stderr.close()
    return EXIT_OK
