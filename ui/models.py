"""The one model picker (the sidebar's, Compare's two sides, Fine-tune's base model) and loading with a message.

``pick_model`` lists some models, the first being the default, then the models the server's operator
offers (``model_sources``, by folder name) and every finished run's model by its name (referred
to as ``run:ID``, never by its folder), plus "Other" for a hub id or folder the operator allows;
the link's field chooses on a page's first run (a model not listed opens typed under Other) and
gets the choice back, the default left out so links stay short.

Every name a browser gives (link, Other, a listed run) passes ``check_browser_model`` before
anything is read: a browser cannot load, fine-tune or download a folder the operator did not offer.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Sequence

import streamlit as st

from mlm_core.errors import MaskLabError
from mlm_core.model.default_model import DEFAULT_MODEL_NAME
from mlm_core.model.loading import LoadedModel, is_loaded, load_model
from mlm_core.model.sources import (
    allowed_hub_ids,
    browser_model_options,
    check_browser_model,
    public_run_ids,
)
from mlm_core.policy import server_policy
from mlm_core.settings import shown_value
from ui.common import show_error, url_set, working
from ui.drawn import drawn

OTHER_MODEL = "Other: hub id or local folder"
OTHER_LABEL = "Hub id or model folder"
MODEL_HELP = ("The built-in model works offline. Finished fine-tuning runs are listed by name, and so are the "
              "models this server's operator offers.")


def other_hint() -> str:
    """What may be typed under Other on this server, from the operator's ``model_sources``."""
    policy = server_policy()
    if policy.allows_any_model():
        return ("Type a hub id (e.g. bert-base-uncased), the path of a folder with model.safetensors, or a "
                "run as run:ID.")
    hub_ids = allowed_hub_ids(policy)
    offered = ", ".join(shown_value(hub_id) for hub_id in hub_ids[:8]) + (" …" if len(hub_ids) > 8 else "")
    if not hub_ids and not policy.model_sources:
        return ("This server offers only the listed models: the built-in one, those its operator put in its "
                "models folder and finished runs (also typed as run:ID). Other names are refused; the operator "
                "can add folders or hub ids to model_sources.")
    return ("Type a finished run as run:ID" + (f", a hub id this server offers ({offered})" if hub_ids else "")
            + (", or the folder of a model inside a folder the operator offers (their models are listed above)"
               if len(hub_ids) < len(policy.model_sources) else "") + ". Other names are refused.")


def pick_model(options: Sequence[tuple[str, str]], label: str, key: str, other_key: str, url_field: str,
               help: str | None = MODEL_HELP) -> str | None:
    """The chosen model's name: one of ``options`` ((name, label) pairs, the first the default), a
    finished run's ``run:ID`` or one typed under Other; None (after a hint) while Other is empty.

    Widget keys: ``key`` for the list, ``other_key`` for the typed name. Example:
    ``pick_model([(DEFAULT_MODEL_NAME, "default")], "Model", "m", "m-other", "model")``.
    """
    from mlm_core.training.store import run_ref_id  # the training package loads only when a page needs it

    fixed = {name for name, _ in options if run_ref_id(name) is None}  # the caller's own (default, scratch)
    runs = run_models()
    options = [option for option in options if option[0] in fixed or option[0] in dict(runs)]
    options += [option for option in [*operator_models(), *runs] if option[0] not in dict(options)]
    names = [name for name, _ in options]
    labels = dict(options)
    wanted = st.query_params.get(url_field, names[0])
    wanted = _older_run_link(wanted) or wanted  # a link from before run:ID named the run's folder
    choices = [*names, OTHER_MODEL]
    choice = st.selectbox(label, choices, index=choices.index(wanted) if wanted in names else len(names),
                          format_func=lambda name: labels.get(name, name), key=key, help=help)
    name = choice
    if choice == OTHER_MODEL:
        name = st.text_input(OTHER_LABEL, "" if wanted in names else wanted, key=other_key,
                             placeholder="distilbert-base-uncased or /path/to/a/model").strip()
        if not name:
            st.info(other_hint())
    url_set(url_field, name, names[0])
    if name and name not in fixed:
        try:
            check_browser_model(name)
        except MaskLabError as exc:
            show_error(exc)  # escaped: the message quotes what the browser typed
            return None
    return name or None


def load_with_message(name: str) -> LoadedModel | None:
    """The model, loaded with a spinner; None after showing why it could not load (or why this server
    does not offer it)."""
    try:
        check_browser_model(name)
        first = not is_loaded(name)
        with working(f"Loading {name} …", first):
            loaded = load_model(name)
        if first:
            _freeze_the_loaded_heap()
        return loaded
    except MaskLabError as exc:
        show_error(exc)  # escaped: the message quotes what the browser typed
        return None


_heap_frozen = threading.Lock()


def _freeze_the_loaded_heap() -> None:
    """Once per server process, after its first model loads: keep every object alive then out of the
    garbage collector's walks (``gc.freeze``).

    Why: torch, transformers, plotly and a loaded model are about 490,000 objects that live as long as
    the server. Python's collector walked them all in each full collection, 230 ms holding the
    interpreter lock, which stalled every session of a class at once (benchmarks/classroom.py: the
    teacher-led p95 fell from 1.17 to 0.69 s for typed sentences once frozen). Only objects alive at
    that moment are frozen, once: what sessions create later is collected as before. The cost: if that
    first model is ever evicted from the model cache, what of it only the collector could free stays.
    """
    if _heap_frozen.acquire(blocking=False):  # never released: once per process
        gc.freeze()


def model_sidebar() -> LoadedModel | None:
    """The sidebar's model (``?model=``), loaded and described; None after showing why it could not load."""
    with st.sidebar:
        st.subheader("Model")
        name = pick_model([(DEFAULT_MODEL_NAME, DEFAULT_MODEL_NAME)], "Masked language model", "model_choice",
                          "model_other", "model")
        loaded = load_with_message(name) if name else None
    if loaded is None:  # the page stops here: say so where the page would be, not only in the sidebar
        st.info(f"No model is loaded, so there is nothing to show yet: the sidebar says why. Choose "
                f"{DEFAULT_MODEL_NAME} (the built-in model) there to go on.")
        return None
    with st.sidebar:
        # Counting the parameters walks the whole model: once per loaded model, not on every rerun.
        st.caption(drawn(loaded.model, "sidebar-caption", lambda: _description(loaded)))
        st.markdown(f"Mask token: `{loaded.mask_token}`")
    return loaded


def _description(loaded: LoadedModel) -> str:
    info = loaded.describe()
    shape = f"{info['layers']} layers × {info['heads']} heads" if loaded.has_attention else (
        f"{info['layers']} recurrent layers, no attention")
    return f"{info['type']} · {shape} · {info['parameters'] / 1e6:.1f} M parameters · {info['device']}"


def _older_run_link(name: str) -> str | None:
    """``run:ID`` for a run folder named by an older link (it keeps working, now by id); else None."""
    if not name or not name.startswith(("/", "~")):
        return None
    try:
        from mlm_core.training.jobs import default_store
        from mlm_core.training.planning import run_ref_of_folder

        return run_ref_of_folder(name, default_store())
    except Exception:  # noqa: BLE001 - as in run_models: an unreadable store leaves the link as it is
        return None


_listed: dict[str, tuple[tuple, list[tuple[str, str]]]] = {}  # store folder -> (index_state, run_models())


def run_models() -> list[tuple[str, str]]:
    """(``run:ID``, label) of every finished run's Transformer model that browsers may load (a run the
    command line started from a private folder is not listed); none when the run store cannot be read.

    Every page's sidebar asks on every rerun: the listing is reused until the run index changes
    (``store.index_state``) rather than read again, which cost a class's server a tenth of its time.
    """
    try:
        from mlm_core.training.jobs import default_store, default_store_root
        from mlm_core.training.planning import model_options
        from mlm_core.training.store import index_state, run_ref

        root = default_store_root()
        state = index_state(root)
        listed = _listed.get(str(root))
        if listed is not None and listed[0] == state and None not in state[:1]:
            return listed[1]
        store = default_store()
        public = {run_ref(run_id) for run_id in public_run_ids(store.list())}
        models = [(o.model, o.label) for o in model_options(store) if o.kind == "run" and o.model in public]
        _listed[str(root)] = (state, models)
        return models
    except Exception:  # noqa: BLE001 - a broken store must not take the page down; runs are optional here
        return []


def operator_models() -> list[tuple[str, str]]:
    """(folder, label) of each model the operator offers in model_sources, labelled by its folder's name,
    then each hub id offered; none when a folder cannot be read."""
    try:
        policy = server_policy()
        return [*browser_model_options(policy), *((hub_id, hub_id) for hub_id in allowed_hub_ids(policy))]
    except Exception:  # noqa: BLE001 - like run_models: the listed extras are optional, the page stays up
        return []
