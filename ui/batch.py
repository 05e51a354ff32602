"""Widgets of the Batch page: configurations with their cost, the run with its estimate, progress
bar and Stop button, results and exports.

The analysis runs in the Streamlit process (a page-sized job: at most ``PAGE_MAX_SENTENCES``
sentences and ``PAGE_MAX_ROWS`` rows of forward passes); bigger files go to
``python -m mlm_core evaluate``. Times are estimated from the throughput measured on this machine
and model (``mlm_core.evaluate.estimate``: one short timed pass per stage, remembered per model
and device, corrected by every finished run), never given in rows. The report lives in this
session's state; its rows are read from the result cache on disk only when a table or a download
needs them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import NamedTuple

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

from mlm_core.errors import MaskLabError
from mlm_core.evaluate import (
    CI_NOTE,
    MAX_SEEDS,
    PER_CONFIG,
    POS_NOTE,
    STAGES,
    WITH_PLL,
    EvalConfig,
    EvalReport,
    EvaluationCancelled,
    Throughput,
    describe_seconds,
    estimate,
    evaluate,
    measure_throughput,
    parse_rates,
    plan_work,
    sweep,
    time_left,
)
from mlm_core.evaluate.estimate import PLL as PLL_STAGE
from mlm_core.evaluate.estimate import PREDICT as PREDICT_STAGE
from mlm_core.explain.whatif import parse_heads
from mlm_core.links import HEADS as HEADS_SPEC
from mlm_core.links import format_heads_off, parse_heads_off
from mlm_core.masking import MAIN_STRATEGIES
from mlm_core.model.default_model import DEFAULT_MODEL_NAME
from mlm_core.model.loading import LoadedModel
from mlm_core.settings import ParamSpec
from mlm_core.views import charts
from mlm_core.views.html import escape_markdown
from mlm_core.views.reports import batch_report
from ui.common import UrlField, blank_gaps, checked_by, corpus_url_fields, show_error
from ui.corpus import CorpusChoice
from ui.drawn import for_chart
from ui.strategy import masking_controls

PAGE_MAX_SENTENCES = 5000  # the page evaluates at most this many; the CLI has no such limit
PAGE_MAX_ROWS = 60_000  # forward-pass rows per run in the Streamlit process (minutes on a laptop CPU)
DEFAULT_SWEEP = "0.05:0.8:0.15"
REPORT_KEY = "batch-report"
ESTIMATE_KEY = "batch-estimate"  # the estimate shown before the last run, beside its real time
EXPLORE_PAGE = "app_pages/explore.py"
HARDEST_ROWS = 15
HEARTBEAT_S = 1.0  # the bar moves at least this often, even inside one long forward pass
MAX_CONFIG_COLUMNS = 6  # per-configuration columns of the hardest sentences (more: the worst one only)
PERCENT_COLUMNS = ("top1", "top1_low", "top1_high", "top5", "top5_low", "top5_high")
LABELS = {"mean_log_prob": "mean log p", "pll_per_token": "PLL per token", "top1": "top-1", "top5": "top-5",
          "log_prob": "log p", "config": "configuration"}  # column headers of the hardest-row tables


def _canonical_heads(text: str) -> str:
    """Heads as links write them (``layer:head``); text that is no list of heads stays as typed (the
    page says why)."""
    try:
        return format_heads_off(parse_heads_off(text))
    except MaskLabError:
        return text


# The page's settings in its link (the masking panel keeps its own: strategy, p_*, seed ...); each
# default here is the widget's default.
SWEEP = UrlField("batch-sweep", ParamSpec("sweep", "bool", False, "Sweep the masking rate."))
RATES = UrlField("batch-rates", ParamSpec("rates", "text", DEFAULT_SWEEP, "Rates of the sweep."),
                 read=checked_by(parse_rates))
OTHERS = UrlField("batch-strategies", ParamSpec("also", "multi_choice", (), "Other strategies.",
                                                choices=MAIN_STRATEGIES), read=list)
SEEDS = UrlField("batch-seeds", ParamSpec("seeds", "int", 1, "Seeds per configuration.", 1, MAX_SEEDS))
HEADS = UrlField("batch-heads", HEADS_SPEC, read=checked_by(parse_heads_off), write=_canonical_heads)
PLL = UrlField("batch-pll", ParamSpec("pll", "bool", WITH_PLL, "Pseudo-log-likelihood per sentence."))
URL_FIELDS = (*corpus_url_fields("batch-corpus"), SWEEP, RATES, OTHERS, SEEDS, HEADS, PLL)


class Plan(NamedTuple):
    configs: list[EvalConfig]
    seeds: list[int]
    with_pll: bool


def page_texts(choice: CorpusChoice | None) -> list[str]:
    """The texts the page evaluates (the first ``PAGE_MAX_SENTENCES``)."""
    return list(choice.corpus.texts[:PAGE_MAX_SENTENCES]) if choice is not None else []


def throughput(loaded: LoadedModel, texts: list[str]) -> Throughput | None:
    """This machine's measured pace with this model (timed once, a second or two, then remembered)."""
    if not texts:
        return None
    try:
        with st.spinner("Timing this model on this computer (once) to estimate how long an analysis takes …"):
            return measure_throughput(loaded, texts)
    except MaskLabError:
        return None


def _adds(seconds: float | None) -> str:
    return f"adds {describe_seconds(seconds)} here" if seconds is not None else "slower"


def configuration_panel(loaded: LoadedModel, choice: CorpusChoice | None = None) -> Plan | None:
    """The base masking (the explorer's panel), sweeps, seeds, head masking and PLL, each expensive option
    labelled with what it adds to the run here; None after an error."""
    texts = page_texts(choice)
    pace = throughput(loaded, texts)
    base_column, sweep_column = st.columns(2, gap="large")
    with base_column:
        try:
            strategy, seed = masking_controls("batch")
        except MaskLabError as exc:
            show_error(exc)
            return None
    one = pll_cost = None  # seconds one more configuration or seed adds; what PLL adds
    if pace is not None and strategy is not None:
        try:
            single = EvalConfig.from_strategy(strategy)
            plain, full = (estimate(plan_work(loaded, texts, [single], [0], pll), pace).stages for pll in (False, True))
            one = plain.get(PREDICT_STAGE)
            pll_cost = full.get(PLL_STAGE, 0.0) - plain.get(PLL_STAGE, 0.0)  # adaptive masking runs PLL anyway
        except MaskLabError:
            pass
    each = f"each {_adds(one)}" if one is not None else "each is one more pass over the file"
    with sweep_column:
        swept = st.checkbox(f"Sweep the masking rate ({each})", SWEEP.spec.default, key=SWEEP.key)
        rates_text = st.text_input("Rates (start:stop:step, or a list such as 0.1,0.3)", RATES.spec.default,
                                   key=RATES.key, disabled=not swept)
        others = st.multiselect(f"Also run these strategies (a strategy × rate grid; {each} per rate)",
                                MAIN_STRATEGIES, key=OTHERS.key)
        n_seeds = st.number_input(f"Seeds per configuration (2 or more give intervals over draws; {each})", 1,
                                  MAX_SEEDS, SEEDS.spec.default, key=SEEDS.key)
        heads_text = st.text_input(f"Switch attention heads off (layer:head, 0–{loaded.num_layers - 1} : "
                                   f"0–{loaded.num_heads - 1})", HEADS.spec.default, key=HEADS.key,
                                   placeholder="e.g. 0:1,2:3")
        with_pll = st.checkbox(f"Pseudo-log-likelihood per sentence ({_adds(pll_cost)})", PLL.spec.default,
                               key=PLL.key, help="How likely the model finds each whole sentence (PLL, Salazar et "
                               "al. 2020): every token masked in turn, one pass per token, so it takes about as many "
                               "times longer as a sentence has tokens.")
    try:
        base = EvalConfig.from_strategy(strategy, parse_heads(loaded, parse_heads_off(heads_text)))
        strategies = list(dict.fromkeys([base.strategy, *others])) if others else []
        configs = sweep(base, parse_rates(rates_text) if swept else (), strategies)
    except MaskLabError as exc:
        show_error(exc)
        return None
    seeds = list(range(seed, seed + int(n_seeds)))
    with st.expander(f"{len(configs)} configuration(s) × {len(seeds)} seed(s)"):
        st.dataframe({"configuration": [c.label for c in configs]}, hide_index=True)
    return Plan(configs, seeds, with_pll)


def run_panel(loaded: LoadedModel, choice: CorpusChoice | None, plan: Plan | None) -> None:
    """The estimate, Run and Stop, a progress bar naming its stage and the time left; stores the report."""
    if choice is None or plan is None:
        st.caption("The run starts once the sentences and the masking are valid.")
        return
    configs, seeds, with_pll = plan
    texts = page_texts(choice)
    if len(choice.corpus.texts) > PAGE_MAX_SENTENCES:
        st.warning(f"The page evaluates the first {PAGE_MAX_SENTENCES:,} of {len(choice.corpus.texts):,} texts. For "
                   "the whole file use `python -m mlm_core evaluate FILE` (it also runs on several GPUs with "
                   "accelerate launch).")
    work = plan_work(loaded, texts, configs, seeds, with_pll)
    pace = throughput(loaded, texts)
    planned = estimate(work, pace) if pace is not None else None
    device = escape_markdown(loaded.describe()["device"])
    st.markdown(f"**{len(texts):,} sentences × {len(configs)} configuration(s) × {len(seeds)} seed(s)** · "
                + (f"estimated time **{planned.describe()}** on {device}" if planned else f"on {device}"))
    if pace is not None:
        rates = ", ".join(f"{STAGES[s]} {r:,.0f}" for s, r in pace.tokens_per_second.items())
        st.caption(f"Estimated from the pace {'measured on this computer' if pace.source == 'measured' else 'of the last run here'}"
                   f" (tokens per second: {rates}); other work on this computer slows it down.")
    too_big = work.total_rows > PAGE_MAX_ROWS
    if too_big:
        st.error("That is more than the page runs in one go"
                 + (f" ({planned.describe()} here)" if planned else "") + ": switch the pseudo-log-likelihood "
                 "off, or use fewer rates, strategies, seeds or sentences, or run `python -m mlm_core evaluate` "
                 "in a terminal.")
    if st.session_state.pop("batch-stop", False):
        st.info("Stopped: nothing from the interrupted run was kept.")
    if not st.button("▶ Run the analysis", type="primary", key="batch-run", disabled=too_big):
        return
    bar = st.progress(0.0, text="Reading and tokenizing the sentences …")
    st.button("■ Stop", key="batch-stop", help="Interrupts the run; nothing half done is kept.")
    beat = _Heartbeat(bar, planned.seconds if planned else None, work)
    try:
        report = evaluate(loaded, texts, configs, seeds=seeds, with_pll=with_pll, progress=beat.progress)
    except EvaluationCancelled as exc:
        st.info(str(exc))
        return
    except MaskLabError as exc:
        show_error(exc)
        return
    finally:
        beat.stop()
    bar.progress(1.0, text=f"Done in {report.seconds:.1f} s" + (f" (estimated {planned.describe()})" if planned
                                                                 else ""))
    st.session_state[REPORT_KEY] = report
    st.session_state[ESTIMATE_KEY] = planned.seconds if planned else None


class _Heartbeat:
    """The progress bar of a run: the engine's reports (after every forward pass), and between them, once
    a second from a helper thread, the share advanced at the pace so far and the time left counting
    down, so the bar moves even while one long pass runs on a busy CPU."""

    def __init__(self, bar, planned: float | None, work) -> None:
        self.bar, self.planned = bar, planned
        self.done, self.total, self.what = 0, round(work.tokens["predict"] + work.tokens["pll"]), "Preparing"
        self.started = self.last = time.monotonic()
        self.shown = 0.0
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        add_script_run_ctx(self.thread, get_script_run_ctx())
        self.thread.start()

    def progress(self, done: int, total: int | None, what: str) -> None:
        with self.lock:
            self.done, self.total, self.what, self.last = done, total or self.total, what, time.monotonic()
            self._show(done)

    def _show(self, done: float) -> None:
        share = max(self.shown, min(1.0, done / self.total)) if self.total else 0.0
        self.shown = share
        left = time_left(share * self.total, self.total, time.monotonic() - self.started, self.planned)
        self.bar.progress(share, text=f"{self.what} · {share:.0%} · {describe_seconds(left)} left")

    def _beat(self) -> None:
        while not self.halt.wait(HEARTBEAT_S):
            with self.lock:
                now = time.monotonic()
                elapsed = now - self.started
                if self.done:
                    pace = self.done / max(elapsed - (now - self.last), 1e-3)
                else:
                    pace = self.total / self.planned if self.planned else 0.0
                ahead = min(pace * (now - self.last), 0.5 * max(self.total - self.done, 0))  # never to the end
                with contextlib.suppress(Exception):  # the page may be gone (Stop, closed tab)
                    self._show(self.done + ahead)

    def stop(self) -> None:
        self.halt.set()
        self.thread.join(timeout=5)


def table(frame: pd.DataFrame):
    """A frame for ``st.dataframe``: missing values as blanks, shares as percentages, 3 decimals elsewhere.

    The grid shows a missing cell as "None" whatever its display value, so a column with gaps is turned
    into text (blanks in the gaps); complete columns stay numbers (they sort as numbers). Columns with
    nothing at all (PLL when it was not asked for) are left out.
    """
    frame = frame.dropna(axis=1, how="all").copy()
    formats = {c: "{:.1%}" if c in PERCENT_COLUMNS else "{:g}" if c == "rate" else "{:.3f}"
               for c in frame.columns if frame[c].dtype.kind == "f"}
    blank_gaps(frame, formats)
    for column in frame.columns:
        if frame[column].dtype.kind not in "biufcmM":  # text
            frame[column] = frame[column].fillna("")
    return frame.style.format({c: f for c, f in formats.items() if frame[c].dtype.kind == "f"})


def results_panel() -> None:
    """Tables, charts, the hardest sentences and tokens (a click opens the explorer) and exports."""
    report: EvalReport | None = st.session_state.get(REPORT_KEY)
    if report is None:
        return
    st.header("4 · Results")
    for notice in report.notices:
        st.info(notice)
    planned = st.session_state.get(ESTIMATE_KEY)
    st.caption(f"{escape_markdown(report.model)} · {report.sentences_read:,} sentences · {len(report.configs)} "
               f"configuration(s) · seeds {', '.join(map(str, report.seeds))} · {report.seconds:.1f} s on "
               f"{report.device}" + (f" (estimated {describe_seconds(planned)})" if planned else "")
               + (f" · {report.cached} from the cache" if report.cached else ""))
    try:
        summary = report.summary()
        empty = list(dict.fromkeys(summary.loc[summary["n"] == 0, "category"]))
        st.dataframe(table(summary[summary["n"] > 0].drop(columns=["series", "strategy"])), hide_index=True,
                     key="batch-summary")
        if empty:
            st.caption(f"No token of these categories was masked: {', '.join(empty)}.")
        metric = st.radio("Metric", list(charts.METRIC_LABELS), format_func=charts.METRIC_LABELS.get,
                          horizontal=True, key="batch-metric")
        image = st.radio("Chart download format (camera icon in each chart's toolbar)", ["png", "svg"],
                         horizontal=True, key="batch-image")
        config = {"displaylogo": False, "toImageButtonOptions": {"format": image, "filename": "masklab-batch",
                                                                 "scale": 2}}
        st.plotly_chart(for_chart(charts.category_bars(summary, metric)), config=config, key="batch-categories")
        if summary.groupby("series")["rate"].nunique().max() > 1:
            category = st.selectbox("Category of the rate curves", list(dict.fromkeys(summary["category"])),
                                    key="batch-curve-category")
            st.plotly_chart(for_chart(charts.rate_curves(summary, metric, category)), config=config,
                            key="batch-rates-chart")
        st.caption(f"{CI_NOTE} {POS_NOTE}")
        st.subheader("Hardest sentences and tokens")
        st.caption("Each sentence once, under the configuration and seed where it was hardest (with the mean "
                   "log p under each configuration when there are several). Click a row to open that sentence in "
                   "the explorer with that masking and seed.")
        sentences = report.hardest_sentences(HARDEST_ROWS)
        per_config = [c for c in sentences.columns if c.startswith(PER_CONFIG)][:MAX_CONFIG_COLUMNS]
        pll = ["pll_per_token"] if report.with_pll else []
        _open_on_click(report, sentences, "batch-hard-sentences",
                       ["sentence", "text", "config", "seed", "predicted", "top1", "mean_log_prob", *pll, *per_config],
                       {"config": "hardest under"})
        _open_on_click(report, report.hardest_tokens(HARDEST_ROWS), "batch-hard-tokens",
                       ["config", "seed", "sentence", "word", "token", "category", "kind", "guess", "rank", "log_prob"])
        _downloads(report)
    except MaskLabError as exc:
        show_error(exc)


def _open_on_click(report: EvalReport, frame, key: str, columns: list[str], labels: dict | None = None) -> None:
    labels = {**LABELS, **(labels or {})}
    event = st.dataframe(table(frame[columns]), hide_index=True, on_select="rerun", selection_mode="single-row",
                         key=key, column_config={c: labels[c] for c in columns if c in labels})
    rows = event.selection.rows if event else []
    if rows:
        row = frame.iloc[rows[0]]
        query = report.explorer_query(row["config"], int(row["seed"]), int(row["sentence"]), row["text"],
                                      DEFAULT_MODEL_NAME)
        st.switch_page(EXPLORE_PAGE, query_params=query)


def _downloads(report: EvalReport) -> None:
    st.subheader("Export")
    columns = st.columns(6)
    files = [("Per-sentence CSV", "sentences", "csv"), ("Per-sentence JSON", "sentences", "json"),
             ("Per-token CSV", "tokens", "csv"), ("Per-token JSON", "tokens", "json")]
    for column, (label, kind, fmt) in zip(columns, files):
        column.download_button(label, lambda kind=kind, fmt=fmt: report.rows_bytes(kind, fmt),
                               file_name=f"masklab-{kind}.{fmt}", mime="text/csv" if fmt == "csv" else "application/json",
                               on_click="ignore", key=f"batch-download-{kind}-{fmt}")
    columns[4].download_button("Summary JSON", lambda: json.dumps(report.to_dict(), indent=1, ensure_ascii=False),
                               file_name="masklab-summary.json", mime="application/json", on_click="ignore",
                               key="batch-download-summary")
    metric = st.session_state.get("batch-metric", "top1")
    columns[5].download_button("Whole view (HTML)", lambda: batch_report(report, metric, HARDEST_ROWS).encode("utf-8"),
                               file_name="masklab-batch.html", mime="text/html", on_click="ignore",
                               key="batch-download-report", help="Settings, tables and charts in one file "
                               "that opens offline: a handout.")
