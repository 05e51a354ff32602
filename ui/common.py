"""What every page shares: the model picker in the sidebar, error display, state in the URL."""

from __future__ import annotations

import streamlit as st

from mlm_core.default_model import DEFAULT_MODEL_NAME
from mlm_core.errors import MaskLabError
from mlm_core.models import LoadedModel, load_model

OTHER_MODEL = "Other: hub id or local folder"


def route_through_app() -> None:
    """Make a direct link to this page (``/finetune?run=ID``) go through app.py's router.

    Streamlit keeps a process-wide flag, set while a ``pages/`` folder exists and cleared by the
    first ``st.navigation`` call: if a fresh server's first visitor opens a page's own URL, the
    page runs alone, in legacy multipage mode (no set_page_config, file names in the sidebar),
    and stays so for every session until someone opens "/". Clearing it and rerunning lets
    app.py route this page. Only on a session's first run, which never carries a click (AppTest
    sets the flag again before every run).
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the flag has no such mode
        return
    if PagesManager.uses_pages_directory and not st.session_state.get("routed-by-app"):
        st.session_state["routed-by-app"] = True
        PagesManager.uses_pages_directory = False
        st.rerun()


def load_with_message(name: str) -> LoadedModel | None:
    """The model, loaded with a spinner; None after showing why it could not load."""
    try:
        with st.spinner(f"Loading {name} …"):
            return load_model(name)
    except MaskLabError as exc:
        st.error(str(exc))
        return None


def model_sidebar() -> LoadedModel | None:
    """Model picker; returns the loaded model, or None after showing why it could not load."""
    params = st.query_params
    choices = [DEFAULT_MODEL_NAME, OTHER_MODEL]
    wanted = params.get("model", DEFAULT_MODEL_NAME)
    with st.sidebar:
        st.subheader("Model")
        choice = st.selectbox(
            "Masked language model",
            choices,
            index=0 if wanted == DEFAULT_MODEL_NAME else 1,
            key="model_choice",
            help="The built-in model works offline. Any BERT-like model from the Hugging Face hub "
            "(e.g. distilbert-base-uncased, roberta-base) or a local folder with safetensors also works.",
        )
        name = DEFAULT_MODEL_NAME
        if choice == OTHER_MODEL:
            name = st.text_input(
                "Hub id or folder", value="" if wanted == DEFAULT_MODEL_NAME else wanted, key="model_other"
            ).strip()
            if not name:
                st.info("Type a hub id (e.g. bert-base-uncased) or the path of a model folder.")
                return None
        loaded = load_with_message(name)
        if loaded is None:
            return None
        if name != DEFAULT_MODEL_NAME:
            params["model"] = name
        elif "model" in params:
            del params["model"]
        info = loaded.describe()
        st.caption(
            f"{info['type']} · {info['layers']} layers × {info['heads']} heads · "
            f"{info['parameters'] / 1e6:.1f} M parameters · {info['device']}"
        )
        st.markdown(f"Mask token: `{loaded.mask_token}`")
    return loaded


def show_error(exc: Exception) -> None:
    """A message for the user, never a traceback."""
    st.error(str(exc))
