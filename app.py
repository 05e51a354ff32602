"""MaskLab: see and test what masking does to masked language models.

    streamlit run app.py        (or, from any folder once installed: masklab app)

Router only: the pages live in app_pages/, everything that is not UI in mlm_core/. The folder is not
called pages/: beside the entry point that name switches on Streamlit's legacy page discovery, which
runs a page without this router until the first st.navigation call of the server's life.
"""

import streamlit as st

from ui.startup import load_libraries

# Material icons come with Streamlit's own font; emoji show as empty boxes where no emoji font is installed.
st.set_page_config(page_title="MaskLab", page_icon=":material/theater_comedy:", layout="wide")
load_libraries()  # a fresh server's first visitor sees why the page takes seconds

# After the spinner: these import torch and transformers.
import plotly.io  # noqa: E402

from mlm_core.errors import MaskLabError  # noqa: E402
from mlm_core.model.loading import use_app_threads  # noqa: E402
from mlm_core.policy import server_policy  # noqa: E402

use_app_threads()
# Every chart goes to the browser as JSON: plotly's "auto" engine picks orjson where it is installed, which
# took 0.8 ms against 0.5 ms for a 12-token attention heatmap and 250 ms against 126 ms at 512 tokens.
plotly.io.json.config.default_engine = "json"
try:
    server_policy()  # the operator's limits: a server must not run with settings it did not mean
except MaskLabError:  # the reason names the operator's files: for the operator's terminal, not the browser
    st.error("This server's settings are invalid, so MaskLab does not start. The operator sees why with "
             "`masklab settings`.")
    st.stop()

pages = [
    st.Page("app_pages/explore.py", title="Explore", icon=":material/search:", default=True),
    st.Page("app_pages/batch.py", title="Batch analysis", icon=":material/bar_chart:"),
    st.Page("app_pages/finetune.py", title="Fine-tune", icon=":material/model_training:"),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/monitoring:"),
    st.Page("app_pages/experiments.py", title="Experiments", icon=":material/science:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("app_pages/teach.py", title="Teach", icon=":material/school:"),
]
st.navigation(pages).run()
