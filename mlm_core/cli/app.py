"""``masklab app [streamlit options]``: start the Streamlit app from any folder, with its own server settings.

Streamlit reads ``.streamlit/config.toml`` from the working folder only. The app's settings are declared once,
in that file (shipped with the app, found by ``mlm_core.resources``), and passed here as ``--section.option``
flags, so they hold wherever the command runs; flags also outrank any other config.toml. The user's options
come after them, and Streamlit takes an option's last value: ``masklab app --server.port 8600`` wins.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from mlm_core.cli.common import Command, Printed
from mlm_core.errors import MaskLabError
from mlm_core.policy import CONFIG_ENV, reload_policy
from mlm_core.resources import app_script, streamlit_config


def flag_value(value: object) -> str:
    if isinstance(value, bool):  # before int: True is an int too
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise MaskLabError(
        f"Cannot pass the setting {value!r} as a Streamlit flag: use a string, number or boolean."
    )


def config_flags(config: Path) -> list[str]:
    """``--section.option value`` for every setting of a Streamlit config.toml, in the file's order."""
    try:
        settings = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MaskLabError(f"Cannot read the app's settings {config}: {exc}") from exc
    flags: list[str] = []
    for section, options in settings.items():
        for name, value in options.items():
            flags += [f"--{section}.{name}", flag_value(value)]
    return flags


def streamlit_command(options: list[str]) -> list[str]:
    """The ``streamlit run`` command line: the app, its settings, then ``options`` (which win)."""
    run_app = [sys.executable, "-m", "streamlit", "run", str(app_script())]
    return [*run_app, *config_flags(streamlit_config()), *options]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start the MaskLab app in the browser. Other options go to `streamlit run` "
        "(e.g. --server.port 8600 --server.headless true; see `streamlit run --help`)."
    )
    parser.add_argument(
        "--settings", metavar="FILE",
        help="the server settings for browser users (a TOML file; sets MASKLAB_CONFIG for the server; "
             "see `masklab settings`)",
    )


def run(args: argparse.Namespace) -> Printed:
    if importlib.util.find_spec("streamlit") is None:  # finds it without importing it
        raise MaskLabError(
            "The app needs Streamlit: pip install -r requirements.txt (or pip install masklab)."
        )
    if args.settings:
        os.environ[CONFIG_ENV] = str(Path(args.settings).expanduser().resolve())
    reload_policy()  # an invalid setting stops here, in one line, not in every student's browser
    command = streamlit_command(args.extra_options)
    if os.name == "posix":
        # the server takes this process's place: a signal (Ctrl-C, a service manager's SIGTERM) reaches it
        # directly, none leaves it running orphaned, and the exit status is its own
        sys.stdout.flush()
        os.execv(sys.executable, command)
    server = subprocess.Popen(command)  # Windows: exec would detach from the console
    try:
        return Printed(exit_code=server.wait())
    except KeyboardInterrupt:  # Ctrl-C reached the server too (same console): let it stop cleanly
        return Printed(exit_code=server.wait())


APP = Command(
    name="app",
    help="start the app in the browser (Streamlit); other options go to streamlit run",
    add_arguments=add_arguments,
    run=run,
    format_text=str,
    json_help=None,
    extra_options=True,
)
