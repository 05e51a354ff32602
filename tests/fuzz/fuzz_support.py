"""What the atheris harnesses share: the repository on sys.path, instrumented imports, replays.

A harness module defines ``check(data: bytes)``, which raises only for a bug (an exception that
is not the project's own ``MaskLabError``, or a broken invariant), and calls ``main`` when run as
a script. ``check`` is importable without starting the fuzzer, so regression inputs replay under
plain pytest (tests/fuzz/test_fuzz.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "regressions"
SEEDS = HERE / "seeds"

# Run as a script, the harness's folder is sys.path[0], not the repo: put the repo first, then
# tests/ (conftest's tiny vocabulary, the support package), as pytest's rootdir conftest does.
for _path in (ROOT / "tests", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # harnesses never download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(
    check: Callable[[bytes], None], instrumented: Iterable[str], prepare: Callable[[], None] = lambda: None
):
    """Run libFuzzer on ``check``; ``instrumented`` modules are imported with coverage feedback.

    Only mlm_core is instrumented: instrumenting torch or transformers would slow every run for
    coverage of code that is not ours. ``prepare`` runs first (heavy imports, tokenizers).
    """
    import atheris

    prepare()
    with atheris.instrument_imports(include=["mlm_core"]):
        for module in instrumented:
            __import__(module)
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


def regression_inputs(harness: str) -> list[Path]:
    """The saved crash inputs of one harness (tests/fuzz/regressions/<harness>/)."""
    folder = REGRESSIONS / harness
    return (
        sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if folder.is_dir()
        else []
    )
