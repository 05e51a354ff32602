"""The curated public API: every name in ``mlm_core.__all__`` resolves, lazily, to its one declaration."""

from __future__ import annotations

import subprocess
import sys

from support import REPO

import mlm_core


def test_every_public_name_resolves_to_the_module_that_declares_it():
    for name in mlm_core.__all__:
        value = getattr(mlm_core, name)
        if name in mlm_core._SUBPACKAGES:
            assert value.__name__ == f"mlm_core.{name}"
        else:
            declared_in = mlm_core._API[name]
            assert getattr(sys.modules[declared_in], name) is value, name


def test_a_subpackage_stays_a_subpackage_whichever_import_comes_first():
    """``from mlm_core import evaluate`` must give the batch-analysis package, before and after other imports."""
    code = ("import mlm_core; from mlm_core import evaluate as ev; import mlm_core.evaluate; "
            "assert ev.__name__ == 'mlm_core.evaluate' and mlm_core.evaluate is ev; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_importing_the_package_imports_no_heavy_library():
    code = "import sys, mlm_core; print(sorted({'torch', 'transformers', 'streamlit', 'plotly'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
