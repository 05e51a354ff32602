"""The one model picker (the sidebar's, Compare's two sides, Fine-tune's base model) and loading with a message.

``pick_model`` lists some models, the first being the default, then every finished run's model
by its name (referred to as ``run:ID``, never by its folder), plus "Other" for any hub id or
folder; the link's field chooses on a page's first run (a model not listed opens typed under
Other) and gets the choice back, the default left out so links stay short.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from mlm_core.errors import MaskLabError
from mlm_core.model.default_model import DEFAULT_MODEL_NAME
from mlm_core.model.loading import LoadedModel, load_model
from ui.common import url_set

OTHER_MODEL = "Other: hub id or local folder"
OTHER_LABEL = "Hub id or model folder"
OTHER_HINT = ("Type a hub id (e.g. bert-base-uncased), the path of a folder with model.safetensors, or a "
              "run as run:ID.")
MODEL_HELP = ("The built-in model works offline. Finished fine-tuning runs are listed by name. Any BERT-like "
              "model from the Hugging Face hub (e.g. distilbert-base-uncased, roberta-base) or a local folder "
              "with safetensors also works.")


def pick_model(options: Sequence[tuple[str, str]], label: str, key: str, other_key: str, url_field: str,
               help: str | None = MODEL_HELP) -> str | None:
    """The chosen model's name: one of ``options`` ((name, label) pairs, the first the default), a
    finished run's ``run:ID`` or one typed under Other; None (after a hint) while Other is empty.

    Widget keys: ``key`` for the list, ``other_key`` for the typed name. Example:
    ``pick_model([(DEFAULT_MODEL_NAME, "default")], "Model", "m", "m-other", "model")``.
    """
    options = [*options, *(run for run in run_models() if run[0] not in dict(options))]
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
            st.info(OTHER_HINT)
    url_set(url_field, name, names[0])
    return name or None


def load_with_message(name: str) -> LoadedModel | None:
    """The model, loaded with a spinner; None after showing why it could not load."""
    try:
        with st.spinner(f"Loading {name} …"):
            return load_model(name)
    except MaskLabError as exc:
        st.error(str(exc))
        return None


def model_sidebar() -> LoadedModel | None:
    """The sidebar's model (``?model=``), loaded and described; None after showing why it could not load."""
    with st.sidebar:
        st.subheader("Model")
        name = pick_model([(DEFAULT_MODEL_NAME, DEFAULT_MODEL_NAME)], "Masked language model", "model_choice",
                          "model_other", "model")
        loaded = load_with_message(name) if name else None
        if loaded is None:
            return None
        info = loaded.describe()
        st.caption(
            f"{info['type']} · {info['layers']} layers × {info['heads']} heads · "
            f"{info['parameters'] / 1e6:.1f} M parameters · {info['device']}"
        )
        st.markdown(f"Mask token: `{loaded.mask_token}`")
    return loaded


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


def run_models() -> list[tuple[str, str]]:
    """(``run:ID``, label) of every finished run's Transformer model; none when the run store cannot be read."""
    try:
        from mlm_core.training.jobs import default_store
        from mlm_core.training.planning import model_options

        return [(o.model, o.label) for o in model_options(default_store()) if o.kind == "run"]
    except Exception:  # noqa: BLE001 - a broken store must not take the page down; runs are optional here
        return []
