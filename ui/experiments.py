"""The Experiments page's widget groups: a preset or a grid set up by hand, starting it, and one
experiment followed live with its result (chart with intervals, table, HTML report).

An experiment is driven by its own process (``mlm_core.training.experiments``): leaving the page does not
stop it, and ``?experiment=ID`` re-attaches. Cancel and resume are offered to whoever may manage it, and
the library checks again (a forged button event is refused too).
"""

from __future__ import annotations

import streamlit as st

from mlm_core.errors import MaskLabError
from mlm_core.model.sources import check_browser_model
from mlm_core.settings import param_specs
from mlm_core.training import SCRATCH_MODELS, TrainConfig, experiments, ownership
from mlm_core.training import experiment_results as results
from mlm_core.training.experiment_presets import Preset, presets
from mlm_core.views.experiments import experiment_report, interval_chart
from mlm_core.views.html import escape_markdown
from ui.common import show_error, url_put
from ui.corpus import CorpusChoice
from ui.identity import current_owner

POLL_S = 2.0  # how often a followed experiment is read from the store
FOLLOW_KEY, QUERY_KEY = "exp-followed", "experiment"
GRID_ROWS = 2  # settings a hand-made grid varies (more is the command line's: --vary, repeated)
BASE_SETTINGS = ("steps", "batch_size", "seq_len")  # the budget, shared by every run


def preset_text(preset: Preset) -> None:
    """What the preset's claim is, what this small run can and cannot show, and what was measured."""
    st.markdown(f"**The claim.** {escape_markdown(preset.claim)}")
    st.markdown(f"**What this run can show.** {escape_markdown(preset.can_show)}")
    st.markdown(f"**What it cannot show.** {escape_markdown(preset.cannot_show)}")
    if preset.measured:
        st.info(f"**Measured.** {escape_markdown(preset.measured)}")


def preset_about(preset: Preset) -> dict[str, str]:
    """The preset's page text, as the HTML report lists it."""
    return {"claim": preset.claim, "what this run can show": preset.can_show,
            "what it cannot show": preset.cannot_show, "measured when the preset was made": preset.measured}


def preset_plan(corpus: CorpusChoice, key: str = "exp") -> dict | None:
    """The chosen preset's plan on ``corpus``, after its page text."""
    found = presets()
    name = st.selectbox("Preset", list(found), format_func=lambda n: found[n].title, key=f"{key}-preset")
    preset = found[name]
    preset_text(preset)
    seeds = _seeds(key, preset.seeds)
    try:
        return preset.plan(corpus.name, seeds=seeds, corpus_column=corpus.column, text_unit=corpus.text_unit)
    except MaskLabError as exc:
        show_error(exc)
        return None


def _seeds(key: str, default: int) -> int:
    spec = next(s for s in param_specs(experiments.ExperimentSettings) if s.name == "seeds")
    return int(st.number_input("Seeds per configuration", int(spec.min), int(spec.max), default, key=f"{key}-seeds",
                               help=spec.help))


def grid_plan(corpus: CorpusChoice, model: str | None, key: str = "exp") -> dict | None:
    """A grid set up by hand: the budget, up to ``GRID_ROWS`` varied settings with their values, the seeds."""
    cells = st.columns(len(BASE_SETTINGS))
    budget = {}
    for cell, name in zip(cells, BASE_SETTINGS, strict=True):
        spec = TrainConfig.spec(name)
        budget[name] = int(cell.number_input(spec.label, int(spec.min), int(spec.max), int(spec.default),
                                             key=f"{key}-{name}", help=spec.help))
    keys = experiments.variable_keys()
    vary = []
    for row in range(GRID_ROWS):
        left, right = st.columns([1, 2])
        chosen = left.selectbox(f"Vary setting {row + 1}", ["", *keys], key=f"{key}-vary-key-{row}",
                                format_func=lambda k: k or "(nothing)")
        values = right.text_input("Its values, separated by commas", key=f"{key}-vary-values-{row}",
                                  placeholder="e.g. static,dynamic or 0.15,0.3")
        if chosen and values.strip():
            vary.append(f"{chosen}={values}")
    seeds = _seeds(key, experiments.ExperimentSettings.seeds)
    try:
        base = TrainConfig(corpus_name=corpus.name, corpus_column=corpus.column, text_unit=corpus.text_unit,
                           model=model, **budget, **TrainConfig.cadence(budget["steps"]))
        plan = experiments.make_plan(base, {"strategy": "random"}, vary=experiments.parse_vary(vary), seeds=seeds,
                                     unset=experiments.resolved_keys())
        for configuration in plan["configurations"]:  # a varied model meets the rule the model picker meets
            model = configuration["config"]["model"]
            if model not in SCRATCH_MODELS:
                check_browser_model(model)
        return plan
    except MaskLabError as exc:
        show_error(exc)
        return None


def start(store, plan: dict, corpus: CorpusChoice) -> None:
    """Create the experiment and launch its process, within the server's limits on starting runs."""
    owner = current_owner()
    try:
        ownership.check_start(store, owner, len(corpus.data))  # the queue, runs per owner, the disk quota
        experiment_id = experiments.create(store, plan, corpus.data, owner=owner)
        experiments.launch(store, experiment_id)
    except MaskLabError as exc:
        show_error(exc)
        return
    set_followed(experiment_id)


def set_followed(experiment_id: str) -> None:
    st.session_state[FOLLOW_KEY] = experiment_id
    url_put(QUERY_KEY, experiment_id)


def followed() -> str | None:
    """The experiment this session follows: the one it started, else the link's."""
    return st.session_state.get(FOLLOW_KEY) or st.query_params.get(QUERY_KEY)


def follow(store, experiment_id: str) -> None:
    """The live panel; polls every POLL_S while the experiment is queued or running."""
    try:
        active = experiments.state_of(store, experiment_id)["status"] in (experiments.EXP_QUEUED,
                                                                          experiments.EXP_RUNNING)
    except (MaskLabError, OSError, ValueError):
        st.warning(f"No experiment {escape_markdown(experiment_id)}.")
        return
    st.fragment(_live, run_every=POLL_S if active else None)(store, experiment_id, active)


def _live(store, experiment_id: str, was_active: bool) -> None:
    summary = results.summarize(store, experiment_id)
    if was_active and summary["status"] not in (experiments.EXP_QUEUED, experiments.EXP_RUNNING):
        st.rerun()  # it ended: redraw the page once, with the buttons of its new state
    rows = summary["configurations"]
    total = sum(len(r["runs"]) for r in rows)
    done = sum(s in ("finished", "failed", "diverged") for r in rows for s in r["statuses"])
    st.markdown(f"**{escape_markdown(summary.get('title') or 'Experiment')}** ({experiment_id}) · "
                f"{summary['status']} · {done} of {total} runs done")
    st.progress(done / max(total, 1))
    st.caption(escape_markdown(summary["budget"]["note"]) + ".")
    if summary.get("reason"):
        st.info(escape_markdown(summary["reason"]))
    _actions(store, experiment_id, summary["status"])
    if not any(r["finished"] for r in rows):
        st.caption("The result appears here once a run has finished.")
        return
    tabs = st.tabs([results.METRIC_LABELS[m] for m in results.METRICS])
    for tab, metric in zip(tabs, results.METRICS, strict=True):
        tab.plotly_chart(interval_chart(summary, metric), key=f"exp-chart-{metric}")
    st.dataframe(results.summary_frame(summary), hide_index=True)
    st.caption(f"Intervals: {escape_markdown(results.CI_METHOD)}."
               + (f" {escape_markdown(summary['ci_note'])}." if summary.get("ci_note") else ""))
    preset = presets().get(summary.get("preset") or "")
    about = preset_about(preset) if preset else None
    st.download_button("Download this experiment as a standalone HTML report",
                       lambda: experiment_report(summary, about).encode("utf-8"),
                       file_name=f"masklab-experiment-{experiment_id}.html", mime="text/html",
                       on_click="ignore", key="exp-report")


def _actions(store, experiment_id: str, status: str) -> None:
    owner = current_owner()
    if status in (experiments.EXP_QUEUED, experiments.EXP_RUNNING):
        st.button("Cancel experiment", icon=":material/stop:", key="exp-cancel",
                  on_click=_act, args=(experiments.cancel, store, experiment_id, owner))
    elif status in (experiments.EXP_CANCELLED, experiments.EXP_INTERRUPTED):
        st.button("Resume experiment", icon=":material/play_arrow:", key="exp-resume",
                  help="Finished runs are kept; the interrupted one goes on from its checkpoint.",
                  on_click=_act, args=(_resume, store, experiment_id, owner))
    if message := st.session_state.pop("exp-message", None):
        st.warning(escape_markdown(message))


def _act(action, *args) -> None:
    try:
        action(*args)
    except MaskLabError as exc:
        st.session_state["exp-message"] = str(exc)


def _resume(store, experiment_id: str, owner: str) -> None:
    experiments.check_may_manage(store, experiment_id, owner)
    ownership.check_start(store, owner)  # the queue and the disk quota, as a run's resume
    experiments.prepare_resume(store, experiment_id, by=owner)
    experiments.launch(store, experiment_id)


def brief(store, experiment_id: str) -> str:
    """An experiment in a menu: its title, else its configurations (its status changes: the panel shows it)."""
    try:
        plan = experiments.plan_of(store, experiment_id)
    except (MaskLabError, OSError, ValueError):
        return "unreadable"
    return plan.get("title") or " / ".join(c["label"] for c in plan["configurations"])
