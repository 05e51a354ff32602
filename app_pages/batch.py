"""Batch analysis: masking experiments over a whole file of sentences, by token category, with export.

The analysis runs here, in the Streamlit process, with a progress bar and a Stop button: the page
takes page-sized jobs only (see ui/batch.py for the limits). ``python -m mlm_core evaluate`` runs
the same engine on whole files, and on several GPUs under ``accelerate launch``.
"""

import streamlit as st

from ui.batch import URL_FIELDS, configuration_panel, results_panel, run_panel
from ui.common import (
    UPLOAD_NOTE,
    restore_from_url,
    save_to_url,
    share_panel,
)
from ui.corpus import corpus_input
from ui.models import model_sidebar

st.title("Batch analysis")
st.caption("How well does the model recover masked stopwords, punctuation, numbers and content words in your "
           "sentences, and what changes when words leave the context or heads are switched off?")
restore_from_url(URL_FIELDS)
loaded = model_sidebar()
if loaded is None:
    st.stop()

st.header("1 · Sentences")
choice = corpus_input("batch-corpus")

st.header("2 · Masking")
plan = configuration_panel(loaded, choice)

save_to_url(URL_FIELDS)

st.header("3 · Run")
run_panel(loaded, choice, plan)
share_panel("batch", note=UPLOAD_NOTE)
results_panel()
