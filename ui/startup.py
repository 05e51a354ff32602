"""A fresh server's first run: importing torch and transformers takes seconds (about 4 s on a 2-core CPU)
before any page can draw, and the first visitor saw a blank page all that time. A spinner says what is
happening instead. Only streamlit is imported here, so the spinner can show before the libraries load."""

from __future__ import annotations

import importlib
import threading

import streamlit as st

LIBRARIES = "mlm_core.model.forward"  # torch, transformers and the model code that every page uses
_loaded = threading.Event()  # set once the import has finished (a module is in sys.modules while it imports)


def load_libraries() -> None:
    """Import the heavy libraries under a spinner on a fresh server; nothing (not even a spinner) after."""
    if _loaded.is_set():
        return
    with st.spinner("Starting MaskLab: loading PyTorch and transformers (once per server, a few seconds) …",
                    show_time=True):
        importlib.import_module(LIBRARIES)
    _loaded.set()
