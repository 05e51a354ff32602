"""MaskLab: see and test what masking does to masked language models.

    streamlit run app.py

Router only: the pages live in pages/, everything that is not UI in mlm_core/.
"""

import streamlit as st

from mlm_core.model.loading import use_app_threads

use_app_threads()
st.set_page_config(page_title="MaskLab", page_icon="🎭", layout="wide")

pages = [
    st.Page("pages/explore.py", title="Explore", icon="🔍", default=True),
    st.Page("pages/batch.py", title="Batch analysis", icon="📊"),
    st.Page("pages/finetune.py", title="Fine-tune", icon="🏋️"),
    st.Page("pages/runs.py", title="Runs", icon="📈"),
    st.Page("pages/compare.py", title="Compare", icon="⚖️"),
    st.Page("pages/teach.py", title="Teach", icon="🎓"),
]
st.navigation(pages).run()
