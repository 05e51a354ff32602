"""What the test suites share: the repository's paths, AppTest helpers, hostile inputs, polling, corpora,
the masking engine's invariants (masking.py).

The feature folders (tests/masking, tests/explain, ...) import from here; fixtures live in
tests/conftest.py.
"""

import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout: app.py, mlm_core/, assets/
APP = str(REPO / "app.py")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for servers and launchers under test)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
