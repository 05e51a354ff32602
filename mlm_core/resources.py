"""The files MaskLab ships, found in one place: assets (the default model's adapter and card, the cloze sets,
the Teach lesson, the demo corpus) and the Streamlit app (app.py, app_pages/, ui/, .streamlit/config.toml).

In a checkout they lie in the repository root, beside ``mlm_core/``. An installed wheel carries the same tree
as the import package ``masklab_app`` (pyproject.toml maps it from the repository root), found with
``importlib.resources``. The tree beside the imported ``mlm_core`` wins, so a checkout never reads the files
of an older installed copy.

    >>> asset("cloze_en.jsonl").name
    'cloze_en.jsonl'
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from mlm_core.errors import MaskLabError

APP_PACKAGE = "masklab_app"  # the wheel's name for the repository root's app files
ASSETS = "assets"
APP_SCRIPT = "app.py"
STREAMLIT_CONFIG = (".streamlit", "config.toml")


def _is_app_tree(folder: Path) -> bool:
    return (folder / APP_SCRIPT).is_file() and (folder / ASSETS).is_dir()


@functools.cache
def app_root() -> Path:
    """The folder of app.py, app_pages/, ui/, assets/ and .streamlit/: the checkout, or the installed package.

    A real folder either way (pip installs wheels unpacked; Streamlit and safetensors need file paths).
    """
    checkout = Path(__file__).resolve().parent.parent
    if _is_app_tree(checkout):
        return checkout
    try:
        # the package has no __init__.py (the repository root is no package): files() gives a namespace
        # path, whose children are real paths
        root = resources.files(APP_PACKAGE).joinpath(APP_SCRIPT)
    except ModuleNotFoundError:
        root = None
    if not isinstance(root, Path) or not _is_app_tree(root.parent):
        raise MaskLabError(
            f"MaskLab's own files (the package {APP_PACKAGE}: app, assets) are missing; "
            "reinstall MaskLab (pip install --force-reinstall masklab) or run it from its checkout."
        )
    return root.parent


def asset(*parts: str) -> Path:
    """A shipped asset, e.g. ``asset("default_model", "adapter.safetensors")``; the path need not exist."""
    return app_root().joinpath(ASSETS, *parts)


def app_script() -> Path:
    """The Streamlit entry point, app.py."""
    return app_root() / APP_SCRIPT


def streamlit_config() -> Path:
    """The app's server settings, .streamlit/config.toml: their one declaration, also for ``masklab app``."""
    return app_root().joinpath(*STREAMLIT_CONFIG)
