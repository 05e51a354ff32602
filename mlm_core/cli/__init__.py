"""Command-line twin of the app: ``python -m mlm_core COMMAND --help`` (or ``masklab COMMAND``).

Every command prints readable text, or one JSON document with ``--json``. Bad input gives
one line on stderr and exit status 2; nothing prints a traceback.

- ``common``: the ``Command`` declaration, exit codes, printing, user files, shared argument groups;
- one module per family of commands: ``masking`` (predict, mask), ``explain`` (attend, attribute),
  ``runs`` (train, runs), ``evaluate``, ``app`` (starts the Streamlit app);
- ``registry``: the list of commands, ``build_parser`` and ``main``.

Command modules import ``common``, never this package's names, so nothing here is imported in a cycle.
"""

from mlm_core.cli.registry import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
