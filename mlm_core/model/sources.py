"""Which models a browser user may load: the one rule, set by the server's operator.

A browser names a model in a link (``?model=``), under "Other" in the model picker, as Compare's
two sides, as Fine-tune's starting model or in Teach. Whatever it names goes through
``check_browser_model`` before anything is read from disk. Always allowed:

* the built-in default model (``DEFAULT_MODEL_NAME``);
* a finished run named ``run:ID`` whose run started from a model a browser may load (a run the
  local user started from a private folder with the command line stays private: its weights
  are those of that folder, a few steps on);
* any folder inside ``<MASKLAB_HOME>/models``;
* each entry of ``server_policy().model_sources``: a hub id, matched exactly, or a folder (the
  model folder itself or any folder below it); ``*`` allows anything (a machine nobody else reaches).

Folders are compared after ``Path.resolve()``, so ``..``, doubled slashes and symbolic links
cannot step outside an allowed folder. A refusal reads the same whether the named folder exists
or not, so a browser learns nothing about the server's files. The command line does not use
this module: it is the local user's own tool.

Example::

    browser_may_load("distilbert-base-uncased")  # False unless the operator listed it
    check_browser_model("/etc")  # ModelLoadError: This server does not offer '/etc'. …
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from mlm_core.errors import ModelLoadError, RunError
from mlm_core.model.default_model import DEFAULT_MODEL_NAME
from mlm_core.policy import ServerPolicy, masklab_home, server_policy
from mlm_core.settings import shown_value

if TYPE_CHECKING:
    from mlm_core.training.store import RunRecord

OPERATOR_MODELS_FOLDER = "models"  # <MASKLAB_HOME>/models: the operator's drop folder, always offered
MAX_RUN_CHAIN = 32  # a run may start from a run; no real chain is this long, a cycle (a damaged store) ends here


def refusal_message(name: str) -> str:
    """What a browser reads when ``name`` is not offered: the same whether or not such a folder exists."""
    return (f"This server does not offer {shown_value(name)}. Choose a listed model; the operator can add "
            "folders or hub ids to model_sources (see README, Running MaskLab for a class).")


def looks_local(name: str) -> bool:
    """Whether the loader reads ``name`` from this machine's disk rather than asking the hub for it.

    The same test as ``mlm_core.model.loading``: a path that exists, or one written as a path.
    """
    if name.startswith((".", "/", "~")):
        return True
    try:
        return Path(name).expanduser().exists()
    except (OSError, ValueError):  # a name too long or with a NUL byte is no folder
        return False


def _resolved(name: str) -> Path | None:
    """``name`` as a real absolute path (``..``, ``//`` and links followed); None when it cannot be."""
    try:
        return Path(name).expanduser().resolve()
    except (OSError, ValueError, RuntimeError):  # RuntimeError: a symbolic-link loop on older Pythons
        return None


def allowed_folders(policy: ServerPolicy | None = None) -> list[Path]:
    """The folders whose models (themselves or anything below them) browsers may load, resolved."""
    policy = policy or server_policy()
    entries = [str(masklab_home() / OPERATOR_MODELS_FOLDER)]
    entries += [entry for entry in policy.model_sources if entry.startswith((".", "/", "~"))]
    folders = []
    for entry in entries:
        folder = _resolved(entry)
        if folder is not None and folder not in folders:
            folders.append(folder)
    return folders


def allowed_hub_ids(policy: ServerPolicy | None = None) -> list[str]:
    """The hub ids the operator listed in ``model_sources`` (every entry not written as a path)."""
    policy = policy or server_policy()
    return [entry for entry in policy.model_sources
            if entry != "*" and not entry.startswith((".", "/", "~"))]


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def browser_may_load(name: str | None, policy: ServerPolicy | None = None) -> bool:
    """Whether a browser user may load the model called ``name`` on this server (see the module docstring).

    Example: ``browser_may_load("run:ab12cd")`` is True when run ab12cd started from the default model.
    """
    policy = policy or server_policy()
    name = (name or "").strip()
    if not name or name == DEFAULT_MODEL_NAME or policy.allows_any_model():
        return True
    from mlm_core.training.store import run_ref_id

    if run_ref_id(name) is not None:
        # An unknown run is left to the loader, which says there is no such run: the run list is
        # public, the server's folders are not.
        return _run_is_public(run_ref_id(name), policy, _store_lookup(), unknown=True)
    if looks_local(name):
        path = _resolved(name)
        return path is not None and any(_inside(path, folder) for folder in allowed_folders(policy))
    return name in allowed_hub_ids(policy)


def check_browser_model(name: str | None, policy: ServerPolicy | None = None) -> None:
    """Raise ModelLoadError, naming nothing on the server, unless a browser may load ``name``."""
    if not browser_may_load(name, policy):
        raise ModelLoadError(refusal_message((name or "").strip()))


def browser_may_download_run(record_or_id, policy: ServerPolicy | None = None) -> bool:
    """Whether a browser user may download the model of a run (a RunRecord or its id): the rule of loading,
    so a run's weights leave the server only when its base model may be loaded by browsers too.

    Example: ``browser_may_download_run(store.get(run_id))``; an unknown id gives False.
    """
    policy = policy or server_policy()
    if policy.allows_any_model():
        return True
    config = getattr(record_or_id, "config", None)
    if config is None:
        return _run_is_public(str(record_or_id), policy, _store_lookup(), unknown=False)
    return _base_is_public(config, policy, _store_lookup(), depth=0)


def public_run_ids(records: Iterable[RunRecord], policy: ServerPolicy | None = None) -> set[str]:
    """The ids among ``records`` (every run of a store) whose models browsers may load: one pass for a
    picker, instead of one store query per run.

    Example: ``public_run_ids(store.list())``.
    """
    policy = policy or server_policy()
    by_id = {record.id: record for record in records}
    if policy.allows_any_model():
        return set(by_id)
    return {run_id for run_id in by_id if _run_is_public(run_id, policy, by_id.get, unknown=False)}


def _store_lookup() -> Callable[[str], RunRecord | None]:
    """Runs of the app's store by id (None: no such run), the store opened on first use."""
    from mlm_core.training.jobs import default_store

    opened = []

    def lookup(run_id: str) -> RunRecord | None:
        if not opened:
            opened.append(default_store())
        try:
            return opened[0].get(run_id)
        except RunError:
            return None

    return lookup


def _run_is_public(run_id: str, policy: ServerPolicy, lookup: Callable[[str], RunRecord | None],
                   unknown: bool, depth: int = 0) -> bool:
    """Whether run ``run_id`` started from a model browsers may load; ``unknown`` when there is no such run."""
    try:
        record = lookup(run_id)
    except Exception:  # noqa: BLE001 - an unreadable store offers nothing
        return False
    if record is None:
        return unknown
    return _base_is_public(record.config, policy, lookup, depth)


def _base_is_public(config: dict, policy: ServerPolicy, lookup: Callable[[str], RunRecord | None],
                    depth: int) -> bool:
    """Whether the base model in a run's ``config`` is the browsers': a scratch model or the default
    always is; a run started from a run is as public as that run (a deleted one: not at all)."""
    from mlm_core.training.scratch import SCRATCH_MODELS
    from mlm_core.training.store import run_ref_id

    model = config.get("model") if isinstance(config, dict) else None
    if model is None or model in SCRATCH_MODELS or model == DEFAULT_MODEL_NAME:
        return True
    if not isinstance(model, str):
        return False
    model = _older_run_model(model) or model
    if run_ref_id(model) is not None:
        return depth < MAX_RUN_CHAIN and _run_is_public(run_ref_id(model), policy, lookup, False, depth + 1)
    return browser_may_load(model, policy)


def _older_run_model(model: str) -> str | None:
    """``run:ID`` for a run's model folder named by path (runs started before run references), else None."""
    if not model.startswith(("/", "~")):
        return None
    try:
        from mlm_core.training.jobs import default_store
        from mlm_core.training.planning import run_ref_of_folder

        return run_ref_of_folder(model, default_store())
    except Exception:  # noqa: BLE001 - not a readable run folder: judged as a folder like any other
        return None


def browser_model_options(policy: ServerPolicy | None = None) -> list[tuple[str, str]]:
    """(name to load, label) of each model folder browsers may load that exists: every allowed folder
    holding config.json, and every such folder directly inside one; labelled by folder name only.

    Example: ``[("/srv/models/tiny-bert", "tiny-bert")]`` for ``model_sources = ["/srv/models"]``.
    """
    policy = policy or server_policy()
    found: list[Path] = []
    for folder in allowed_folders(policy):
        try:
            candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())] if folder.is_dir() else []
        except OSError:
            continue
        for candidate in candidates:
            real = _resolved(str(candidate))
            if real is not None and real not in found and (real / "config.json").is_file() \
                    and browser_may_load(str(candidate), policy):  # a link inside pointing out is not offered
                found.append(real)
    names = [path.name for path in found]
    return [(str(path), path.name if names.count(path.name) == 1 else f"{path.name} ({path.parent.name})")
            for path in found]
