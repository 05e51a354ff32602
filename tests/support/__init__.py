"""What the test suites share: the repository's paths, AppTest helpers, hostile inputs, polling, corpora,
the masking engine's invariants (masking.py).

The feature folders (tests/masking, tests/explain, ...) import from here; fixtures live in
tests/conftest.py.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout: app.py, mlm_core/, assets/
APP = str(REPO / "app.py")
