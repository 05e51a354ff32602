"""Experiments: compare training configurations over several seeds under one token budget.

Choose a preset (a classic claim about masking, with what this small run can and cannot show and what it
measured) or vary up to two settings by hand; start it; follow it live; read the result as bars with 95%
intervals and a table, and download it as a standalone HTML report. The experiment runs in its own
process, one run after another (the Runs page lists each run); ``?experiment=ID`` re-attaches.
"""

import streamlit as st

from mlm_core.training import experiments, jobs
from ui import experiments as exp_ui
from ui import runs as run_ui
from ui.corpus import corpus_input

st.title("Experiments")
store = jobs.default_store()
if rebuilt := store.take_rebuilt_notice():  # the run list was empty or damaged: rebuilt from the run folders
    st.warning(rebuilt, icon=":material/build:")
st.caption("Every run of an experiment trains on the same number of tokens and is evaluated on the same "
           "held-out text; the seeds show how much a result moves by chance.")

st.header("1 · Set up")
how = st.radio("Experiment", ["A preset", "Your own grid"], horizontal=True, key="exp-how")
with st.expander("Corpus", expanded=how != "A preset"):
    corpus = corpus_input("exp-corpus")
plan = None
if corpus is not None:
    if how == "A preset":
        plan = exp_ui.preset_plan(corpus)
    else:
        option = run_ui.model_choice(store, "exp")
        if option is not None:
            plan = exp_ui.grid_plan(corpus, option.model)

if plan is not None:
    runs = len(plan["configurations"]) * len(plan["seeds"])
    st.markdown(f"**{len(plan['configurations'])} configurations × {len(plan['seeds'])} seeds = {runs} runs**, "
                "one after another.")
    st.caption(", ".join(c["label"] for c in plan["configurations"]))
if st.button("Start experiment", icon=":material/play_arrow:", type="primary", key="exp-start",
             disabled=plan is None):
    exp_ui.start(store, plan, corpus)

st.header("2 · Follow and read the result")
known = experiments.list_ids(store)
followed = exp_ui.followed()
if not known:
    st.info("No experiments yet: start one above, or with `masklab experiment` on the command line.")
    st.stop()
index = known.index(followed) if followed in known else 0
chosen = st.selectbox("Experiment", known, index=index, key=f"exp-chosen-{followed}",
                      format_func=lambda i: f"{i} · {exp_ui.brief(store, i)}")
exp_ui.follow(store, chosen)
