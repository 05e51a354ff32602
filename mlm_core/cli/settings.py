"""``masklab settings``: the operator's server settings in force, where they came from, and what each means.

The settings are declared once in ``mlm_core.policy``; this command only reads them, so an operator can
check a ``server.toml`` or ``MASKLAB_*`` variable before starting the app for a class (an invalid value
is one ``error:`` line and exit status 2, as ``masklab app`` would refuse it too).
"""

from __future__ import annotations

import argparse
import os

from mlm_core.cli.common import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show the server settings in force (limits for browser users of `masklab app`): their values, "
        "the file they were read from and what each means. Set them in a TOML file (MASKLAB_CONFIG, or "
        "<MASKLAB_HOME>/server.toml) or as MASKLAB_<NAME> variables."
    )


def run(args: argparse.Namespace) -> dict:
    from mlm_core.policy import ENV_PREFIX, config_file, describe_policy, reload_policy

    policy = reload_policy()  # what a server started now would use
    source = config_file()
    return {
        "file": str(source) if source else None,
        "settings": [
            {"name": name, "value": value, "from_environment": f"{ENV_PREFIX}{name.upper()}" in os.environ,
             "meaning": meaning}
            for name, value, meaning in describe_policy(policy)
        ],
    }


def format_text(result: dict) -> str:
    lines = [f"settings file: {result['file'] or 'none (defaults, and MASKLAB_* variables if set)'}"]
    width = max(len(setting["name"]) for setting in result["settings"])
    for setting in result["settings"]:
        origin = "  (environment)" if setting["from_environment"] else ""
        lines.append(f"{setting['name']:<{width}}  {setting['value'] or '(empty)'}{origin}")
    lines.append("Each setting's meaning: masklab settings --json, or README, Running MaskLab for a class.")
    return "\n".join(lines)


SETTINGS = Command(
    name="settings",
    help="show the server settings in force for browser users (limits, model sources, quotas)",
    add_arguments=add_arguments,
    run=run,
    format_text=format_text,
)
