"""Widget groups for fine-tuning runs, shared by the Fine-tune and Runs pages.

* the model to start from and the preview of training examples (the other settings: ui/finetune.py);
* following a run live (``follow``): a fragment that polls the run store, so leaving the
  page never touches the job, and the run in the URL (``?run=ID``) re-attaches;
* a run's curves, comparing runs, a run's actions (explorer, zip, resume, cancel, delete)
  and before/after probes.

Everyone sees every run; resume, cancel, delete, rename and the model download are offered only to
whoever may manage the run (mlm_core/training/ownership.py, the owner from ui/identity.py), and the
actions behind the buttons check again, so a forged button event is refused as well.
"""

from __future__ import annotations

import uuid

import pandas as pd
import streamlit as st

from mlm_core.errors import MaskLabError, RunError
from mlm_core.model.default_model import DEFAULT_MODEL_NAME
from mlm_core.model.loading import load_model
from mlm_core.model.sources import browser_may_download_run, browser_may_load
from mlm_core.training import jobs, ownership
from mlm_core.training.costs import disk_note, read_pace
from mlm_core.training.planning import (
    ModelOption,
    PreviewExample,
    is_lstm_folder,
    model_name,
    model_options,
    run_model_folder,
)
from mlm_core.training.probes import base_model_for, parse_sentences, preset_sentences, probe, probe_table
from mlm_core.training.run_table import (
    ACTIVE_STATES,
    METRICS,
    categories,
    compare_metrics,
    config_table,
    metric_frame,
    progress,
    run_label,
    run_name,
    run_reason,
    zip_folder,
)
from mlm_core.training.scratch import SCRATCH_MODELS
from mlm_core.training.store import INTERRUPTED, MAX_NAME_CHARS, RUNNING, RunRecord, RunStore, run_ref
from mlm_core.training.streaming import preparing_text
from mlm_core.views import charts
from mlm_core.views.html import escape_markdown, token_chips
from mlm_core.views.reports import html_report
from ui.common import blank_gaps, show_error, url_put
from ui.drawn import for_chart
from ui.identity import current_owner
from ui.models import pick_model

POLL_S = 2.0  # how often a followed run is read from the store
RUNS_GRID_NUMBERS = {  # column: (title, the grid's number format, the same as text where the column has gaps)
    "best held-out loss": (None, "%.3f", "{:.3f}"),
    "best accuracy": (None, "percent", "{:.1%}"),
    "duration": ("duration (s)", "%.0f", "{:.0f}"),
}
FOLLOW_KEY = "follow-run"
LSTM_NOTE = ("This LSTM was saved by an earlier MaskLab (lstm.safetensors) and could not be converted to a model "
             "folder, so it cannot open in the explorer: train a new one with scratch-lstm.")
PRIVATE_RUN_NOTE = ("This run started from a model this server does not offer, so its model does not open in the "
                    "explorer and is not downloadable here.")
PRIVATE_PROBES_NOTE = ("This run started from a model this server does not offer, so neither that model nor "
                       "this run's model (its weights, a few steps on) can be probed here.")


def reveal_to_browsers(model: str) -> bool:
    """Whether browsers read a run's base model by its name (``planning.model_name``): only a model they
    may load themselves. A private folder the command line started a run from reads ``HIDDEN_MODEL``.

    Example: ``runs_table(store.list(), reveal=reveal_to_browsers)``.
    """
    return browser_may_load(model)  # the rule of loading: see model/sources.py


# ----------------------------------------------------------------------------- settings


def model_choice(store: RunStore, key: str) -> ModelOption | None:
    """The model to fine-tune (the link's ``model``); None until an 'other' model is typed."""
    options = {o.model or DEFAULT_MODEL_NAME: o for o in model_options(store)}
    scratch = "; ".join(f"{name}: {about}" for name, about in SCRATCH_MODELS.items())
    name = pick_model([(name, o.label) for name, o in options.items()], "Start from", f"{key}-model",
                      f"{key}-model-other", "model", help=f"The default model, a model trained from scratch "
                      f"({scratch}) or a finished run's model, listed by its name.")
    if name is None:
        return None
    return options.get(name) or ModelOption(name, name, "other")


def show_preview(examples: list[PreviewExample]) -> None:
    for example in examples:
        st.caption(f"Block {example.block + 1}: {example.chosen} of {len(example.tokens)} positions to predict "
                   f"(rate {example.rate:.0%} at step 0)")
        titles = [f"was {o}" if k in ("masked", "random") else k or "" for o, k in zip(example.originals, example.kinds)]
        st.markdown(token_chips(example.tokens, example.kinds, example.special, titles), unsafe_allow_html=True)


# ----------------------------------------------------------------------------- start requests


def request_id(key: str, start_pressed: bool) -> str:
    """This session's id for the next Start; a double click reuses it, so it makes one run.

    After a start the id is renewed on the next page run in which Start was not pressed.
    """
    if f"{key}-request" not in st.session_state or (
            st.session_state.get(f"{key}-renew") and not start_pressed):
        st.session_state[f"{key}-request"] = uuid.uuid4().hex
        st.session_state[f"{key}-renew"] = False
    return st.session_state[f"{key}-request"]


def request_done(key: str) -> None:
    st.session_state[f"{key}-renew"] = True


# ----------------------------------------------------------------------------- following a run


def followed_run(store: RunStore) -> str | None:
    """The run this page follows: ``?run=ID`` in the URL, else this session's last one."""
    run_id = st.query_params.get("run") or st.session_state.get(FOLLOW_KEY)
    if not run_id:
        return None
    try:
        store.get(run_id)
    except RunError:
        st.warning(f"There is no run {escape_markdown(run_id)} (deleted?).")
        stop_following()
        return None
    set_followed(run_id)
    return run_id


def set_followed(run_id: str) -> None:
    st.session_state[FOLLOW_KEY] = run_id
    url_put("run", run_id)


def stop_following() -> None:
    st.session_state.pop(FOLLOW_KEY, None)
    if "run" in st.query_params:
        del st.query_params["run"]


def _act(action, *args) -> None:
    """A button callback: a run operation, its refusal shown as a message instead of a traceback."""
    try:
        action(*args)
    except MaskLabError as exc:
        st.session_state["run-message"] = str(exc)


def _resume(store: RunStore, run_id: str, owner: str) -> None:
    jobs.resume(store, run_id, by=owner)  # checks ownership and the queue's room


def follow(store: RunStore, run_id: str) -> None:
    """The live panel of ``run_id``; polls every POLL_S while the run is queued or running."""
    try:
        active = store.get(run_id).status in ACTIVE_STATES
    except RunError:
        active = False  # gone: the panel says so and stops following
    st.fragment(_live, run_every=POLL_S if active else None)(store, run_id, active)


def _live(store: RunStore, run_id: str, was_active: bool) -> None:
    if st.session_state.get(FOLLOW_KEY) != run_id:
        st.rerun()  # no longer followed ("Stop following" in this fragment): redraw the page without it
    store.refresh()  # a job that died is marked interrupted
    try:
        record = store.get(run_id)
    except RunError:  # deleted (on the Runs page, or by the CLI) while followed
        stop_following()
        st.rerun()
    config = record.config
    with st.container(border=True):
        st.markdown(f"**{escape_markdown(run_name(record, reveal_to_browsers))}** (run {record.id}) · "
                    f"{escape_markdown(model_name(config.get('model'), reveal_to_browsers))} · "
                    f"{config.get('strategy')}/{config.get('masking')} · device {record.device or '…'}")
        pace = read_pace(store.folder(record.id))
        preparing = (pace or {}).get("preparing") if record.status == RUNNING else None
        if preparing:  # a corpus over the size limit being tokenized (minutes a GB) before the first step
            st.progress(min(1.0, preparing["done_bytes"] / max(1, preparing["total_bytes"])),
                        text=preparing_text(preparing))
        else:
            status = progress(record, pace=pace)
            st.progress(status.fraction, text=status.text)
        st.caption(disk_note(store.folder(record.id)))
        if message := st.session_state.pop("run-message", None):
            st.warning(message)
        if record.reason:
            (st.info if record.status in ("cancelled", INTERRUPTED) else st.error)(
                f"{record.status}: {run_reason(record, reveal_to_browsers)}")
        metrics = store.metrics(run_id)
        if metrics:
            last = metrics[-1]
            cells = st.columns(4)
            cells[0].metric("held-out loss", f"{last.get('heldout_loss', float('nan')):.3f}")
            cells[1].metric("perplexity", f"{last.get('perplexity', float('nan')):.1f}")
            cells[2].metric("masked-token accuracy", f"{last.get('masked_accuracy', 0):.1%}")
            cells[3].metric("tokens/s", f"{last.get('tokens_per_s', 0):,.0f}")
            run_curves(metrics, key=f"live-{run_id}")
        elif record.status in ACTIVE_STATES:
            st.caption("The curves appear after the first evaluation.")
        buttons = st.columns(3)
        owner = current_owner()
        manageable = ownership.may_manage(record, owner)
        if record.status in ACTIVE_STATES and manageable:
            buttons[0].button("Cancel the run", icon=":material/stop:", key=f"cancel-{run_id}", on_click=_act,
                              args=(ownership.cancel, store, run_id, owner))
        if record.status == INTERRUPTED and manageable:
            buttons[0].button("Resume", icon=":material/play_arrow:", key=f"resume-{run_id}", on_click=_act,
                              args=(_resume, store, run_id, owner))
        if (record.status in ACTIVE_STATES or record.status == INTERRUPTED) and not manageable:
            buttons[0].caption(ownership.NOT_YOURS)
        buttons[1].button("Stop following (the run goes on)", key=f"unfollow-{run_id}", on_click=stop_following)
    if was_active != (record.status in ACTIVE_STATES):
        st.rerun()  # the whole page: poll (again) or stop polling, offer what the new state allows


def run_curves(metrics: list[dict], key: str) -> None:
    """One run's curves: losses, perplexity, accuracy (overall and by token category), tokens/s."""
    frame = metric_frame(metrics)
    accuracy = frame[frame.metric.isin([METRICS["masked_accuracy"], *categories(frame)])]
    charts_ = [
        ("loss", frame[frame.metric.isin([METRICS["train_loss"], METRICS["heldout_loss"]])]),
        ("held-out perplexity", frame[frame.metric == METRICS["perplexity"]]),
        ("masked-token accuracy (overall and by category)", accuracy),
        ("tokens/s", frame[frame.metric == METRICS["tokens_per_s"]]),
    ]
    columns = st.columns(2)
    for n, (title, part) in enumerate(charts_):
        with columns[n % 2]:
            st.plotly_chart(for_chart(charts.metric_curves(part, title)), key=f"{key}-{n}")


# ----------------------------------------------------------------------------- runs page


def runs_grid(table: pd.DataFrame) -> None:
    """The runs table. The grid draws a missing number as "None" whatever its format, so a number column
    with gaps (runs not evaluated or not finished yet) becomes text, blank in the gaps; complete columns
    stay numbers. The page sorts before this (filter_runs), so text columns still arrive in order."""
    shown = table.copy()
    gapped = blank_gaps(shown, {column: text_format for column, (_, _, text_format) in RUNS_GRID_NUMBERS.items()})
    config = {column: st.column_config.TextColumn(title) if column in gapped
              else st.column_config.NumberColumn(title, format=grid_format)
              for column, (title, grid_format, _) in RUNS_GRID_NUMBERS.items()}
    st.dataframe(shown, hide_index=True, width="stretch", column_config=config)


def compare(store: RunStore, records: list[RunRecord]) -> None:
    """Curves of several runs overlaid (one chart per metric) and their configs side by side."""
    labels = {r.id: run_label(r, reveal=reveal_to_browsers) for r in records}
    frame = compare_metrics({labels[r.id]: store.metrics(r.id) for r in records})
    figures: list[tuple[str, object]] = []
    if frame.empty:
        st.info("None of these runs has been evaluated yet.")
    else:
        shown = [m for m in ("train_loss", "heldout_loss", "perplexity", "masked_accuracy", "masked_top5",
                             "tokens_per_s")]
        category = st.selectbox("Accuracy by token category", categories(frame) or ["—"], key="compare-category")
        titles = [METRICS[m] for m in shown] + ([category] if category != "—" else [])
        columns = st.columns(2)
        for n, title in enumerate(titles):
            figure = charts.metric_curves(frame[frame.metric == title], title, series="run")
            figures.append((title, figure))
            with columns[n % 2]:
                st.plotly_chart(for_chart(figure), key=f"compare-{n}")
    table = config_table({labels[r.id]: r.config for r in records}, reveal=reveal_to_browsers)
    only = st.toggle("Only the settings that differ", value=False, key="compare-only")
    rows = table[table["differs"]] if only else table
    st.dataframe(rows.drop(columns="differs").style.apply(
        lambda row: ["background-color: #fff3b0" if table.loc[row.name, "differs"] else ""] * len(row), axis=1),
        width="stretch")
    st.caption("Highlighted: settings that differ between the runs.")
    st.download_button(
        "Download this comparison as a standalone HTML report",
        lambda: html_report("MaskLab run comparison", {"runs": ", ".join(labels.values())},
                            tables=[("Settings (differs: True where the runs disagree)", table)],
                            figures=figures).encode("utf-8"),
        file_name="masklab-runs.html", mime="text/html", on_click="ignore", key="compare-report")


def rename_box(store: RunStore, record: RunRecord) -> None:
    """The run's name, editable by whoever may manage the run; an emptied box brings back the name made
    from the settings."""
    key = f"run-name-{record.id}"
    owner = current_owner()
    if not ownership.may_manage(record, owner):
        st.text_input("Name", run_name(record, reveal_to_browsers), key=f"run-name-shown-{record.id}", disabled=True,
                      help="Only whoever started the run (or the operator) can rename it.")
        return
    shown = run_name(record, reveal_to_browsers)
    name = st.text_input("Name", shown, key=key, max_chars=MAX_NAME_CHARS,
                         help="Made from the run's settings until you change it; clear it to get that name back.")
    if name.strip() != shown:
        try:
            ownership.rename(store, record.id, name, owner)
        except MaskLabError as exc:
            show_error(exc)
            return
        st.session_state.pop(key, None)  # the box shows the stored name on the next run
        st.rerun()


def one_run_curves(store: RunStore, record: RunRecord) -> None:
    """The curves of one run (loss, held-out accuracy …), or why there are none yet."""
    metrics = store.metrics(record.id)
    if metrics:
        run_curves(metrics, key=f"one-{record.id}")
    else:
        st.caption("No evaluation yet: the curves appear after the first one.")


def run_actions(store: RunStore, record: RunRecord) -> None:
    """What can be done with one run: follow, explorer, zip, resume, cancel, delete (confirmed)."""
    folder = run_model_folder(store, record)
    lstm = folder is not None and is_lstm_folder(folder)
    owner = current_owner()
    manageable = ownership.may_manage(record, owner)
    offered = browser_may_download_run(record)  # the rule of loading (model/sources.py): the explorer refuses the others
    cells = st.columns(5)
    if record.status in ACTIVE_STATES and cells[0].button("Follow live", key="act-follow"):
        st.switch_page("app_pages/finetune.py", query_params={"run": record.id})
    if folder is not None and not lstm and offered and cells[0].button("Open in the explorer", icon=":material/search:",
                                                                       key="act-explore"):
        st.switch_page("app_pages/explore.py", query_params={"model": run_ref(record.id)})  # an id, not a path
    if folder is not None and not offered:
        cells[1].caption(PRIVATE_RUN_NOTE)
    elif folder is not None and ownership.may_download_model(store, record, owner):
        cells[1].download_button("Model (.zip)", icon=":material/download:", data=lambda: zip_folder(folder), file_name=f"{record.id}-model.zip",
                                 mime="application/zip", key="act-zip", on_click="ignore")
    elif folder is not None and manageable:  # yours, but fine-tuned from someone else's run
        cells[1].caption("Fine-tuned from another user's run, so its model is not downloadable here.")
    if record.status == INTERRUPTED and manageable:
        cells[2].button("Resume", icon=":material/play_arrow:", key="act-resume", on_click=_act,
                        args=(_resume, store, record.id, owner))
    if record.status in ACTIVE_STATES and manageable:
        cells[2].button("Cancel", icon=":material/stop:", key="act-cancel", on_click=_act,
                        args=(ownership.cancel, store, record.id, owner))
    running = record.status == RUNNING
    if manageable and cells[3].button("Delete", icon=":material/delete:", key="act-delete", disabled=running,
                                      help="Cancel the run first." if running else "Removes the run and its files."):
        st.session_state["confirm-delete"] = record.id
    if not manageable:
        st.caption(ownership.NOT_YOURS)
    if lstm:
        st.caption(LSTM_NOTE)
    if folder is None:
        st.caption("The model can be opened" + (" and downloaded" if manageable else "") + " once the run has finished.")
    if message := st.session_state.pop("run-message", None):
        st.warning(message)
    if st.session_state.get("confirm-delete") == record.id and manageable:
        st.warning(f"Delete run {record.id} and all its files (model, checkpoints, metrics)? This cannot be undone.")
        yes, no = st.columns(2)
        if yes.button("Yes, delete it", type="primary", key="act-delete-yes"):
            st.session_state.pop("confirm-delete")
            _act(ownership.delete, store, record.id, owner)
            st.rerun()
        if no.button("Keep it", key="act-delete-no"):
            st.session_state.pop("confirm-delete")
            st.rerun()


PRESETS, TYPED = "Preset cloze sentences (assets/cloze_en.jsonl)", "Sentences I type"


def probes_panel(store: RunStore, record: RunRecord) -> None:
    """The same sentences through the run's base model and its fine-tuned model, side by side. A run that
    started from a model browsers may not load is not probed: its model is that model a few steps on, which
    the explorer refuses as well, and the base is not loaded either."""
    folder = run_model_folder(store, record)
    if folder is None or is_lstm_folder(folder):
        st.info(LSTM_NOTE if folder is not None else "Probes need a finished run (its model is saved at the end).")
        return
    if not browser_may_download_run(record):
        st.info(PRIVATE_PROBES_NOTE)
        return
    base_name, note = base_model_for(record.config)
    st.caption(f"Before: {escape_markdown(model_name(base_name, reveal_to_browsers))} · after: "
               f"{escape_markdown(run_name(record, reveal_to_browsers))} "
               f"(run {record.id}). " + escape_markdown(note))
    source = st.radio("Sentences", [PRESETS, TYPED], horizontal=True, key="probe-source")
    typed = ""
    if source == TYPED:
        typed = st.text_area("One sentence per line. A sentence with the mask token has its masks predicted "
                             "('sentence | answer' names the expected word); a sentence without one has each "
                             "token masked in turn.", "Paris is the capital of [MASK]. | france\n"
                             "The cat sat on the mat.", key="probe-text")
    top_k = st.slider("Guesses per position (top-k)", 1, 10, 5, key="probe-k")
    if st.button("Run the probes", key="probe-run"):
        try:
            with st.spinner("Loading both models and probing …"):
                base, tuned = load_model(base_name), load_model(run_ref(record.id))
                sentences = preset_sentences(base.mask_token) if source == PRESETS else parse_sentences(typed)
                st.session_state["probe-results"] = (record.id, probe(base, tuned, sentences, top_k))
        except MaskLabError as exc:
            show_error(exc)
    run_id, results = st.session_state.get("probe-results", (None, []))
    if run_id != record.id or not results:
        return
    table = probe_table(results)
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in ("p before", "p after", "change")})
    row = st.selectbox("Top-k side by side for", range(len(results)), key="probe-row",
                       format_func=lambda i: f"{i + 1}. {results[i].context[:80]}")
    chosen = results[row]
    before, after = st.columns(2)
    title = f"original '{chosen.original}'" if chosen.original else "no original token"
    before.plotly_chart(charts.topk_bars(chosen.before, f"before ({model_name(base_name, reveal_to_browsers)})\n{title}"), key="probe-before")
    after.plotly_chart(charts.topk_bars(chosen.after, f"after (run {record.id})\n{title}"), key="probe-after")
