"""Runs: every fine-tuning run in a table; compare runs; probe a run before/after; act on a run."""

import functools

import streamlit as st

from mlm_core.training import jobs
from mlm_core.training.costs import disk_note
from mlm_core.training.run_table import TABLE_COLUMNS, filter_runs, run_label, run_reason, runs_table
from mlm_core.training.store import STATES
from mlm_core.views.html import escape_markdown
from ui import runs as run_ui

st.title("Runs")
store = jobs.default_store()
if rebuilt := store.take_rebuilt_notice():  # the run list was empty or damaged: rebuilt from the run folders
    st.warning(rebuilt, icon=":material/build:")
records = store.list()  # also marks runs whose process died as interrupted
if not records:
    st.info("No runs yet: start one on the Fine-tune page.")
    st.page_link("app_pages/finetune.py", label="Fine-tune", icon=":material/model_training:")
    st.stop()
by_id = {r.id: r for r in records}

filters = st.columns([2, 3, 2, 1.5, 1.5])  # room for "Descending" and the icon of "Refresh"
statuses = filters[0].multiselect("Status", STATES, key="runs-status")
text = filters[1].text_input("Search (run, name, model, strategy, device)", key="runs-search")
sort_by = filters[2].selectbox("Sort by", TABLE_COLUMNS, index=TABLE_COLUMNS.index("created"), key="runs-sort")
descending = filters[3].toggle("Descending", value=True, key="runs-desc")
filters[4].button("Refresh", icon=":material/refresh:", key="runs-refresh")
# A private base folder reads as a model not offered here, never as its path; each model judged once per page
# run (the table and both run menus name the same few models hundreds of times).
shown = functools.cache(run_ui.reveal_to_browsers)
table = filter_runs(runs_table(records, reveal=shown), statuses, text, sort_by, descending)
run_ui.runs_grid(table)
st.caption(f"{len(table)} of {len(records)} runs.")

st.header("Compare runs")
chosen = st.multiselect("Runs to compare", list(table["run"]), format_func=lambda i: run_label(by_id[i], reveal=shown),
                        key="runs-compare", placeholder="Choose two or more runs")
if chosen:
    run_ui.compare(store, [by_id[i] for i in chosen])

st.header("One run")
run_id = st.selectbox("Run", list(table["run"]), format_func=lambda i: run_label(by_id[i], reveal=shown),
                      key="runs-one")
if run_id:
    record = by_id[run_id]
    run_ui.rename_box(store, record)
    if record.reason:
        st.caption(f"Reason: {escape_markdown(run_reason(record, shown))}")  # it may quote a model id or a file name
    st.caption(disk_note(store.folder(record.id)))
    run_ui.run_actions(store, record)
    run_ui.one_run_curves(store, record)
    with st.expander("Before / after probes: the same sentences through the base model and this run's model",
                     expanded=False):
        run_ui.probes_panel(store, record)
