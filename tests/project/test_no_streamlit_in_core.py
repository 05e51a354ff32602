"""mlm_core never imports streamlit: the library must work from the CLI, scripts and training jobs."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from support import REPO

ROOT = REPO
CORE = ROOT / "mlm_core"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_streamlit_import_in_source():
    files = sorted(CORE.rglob("*.py"))
    assert files
    offenders = [
        str(path.relative_to(ROOT))
        for path in files
        if any(name == "streamlit" or name.startswith("streamlit.") for name in imported_modules(path))
        or 'import_module("streamlit' in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_importing_every_core_module_leaves_streamlit_out():
    modules = sorted(f"mlm_core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__main__")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'streamlit' or m.startswith('streamlit.'))\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
