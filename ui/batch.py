"""Widgets of the Batch page: configurations, the run with its progress bar, results and exports.

The analysis runs in the Streamlit process (a page-sized job: at most ``PAGE_MAX_SENTENCES``
sentences and ``PAGE_MAX_ROWS`` rows of forward passes); bigger files go to
``python -m mlm_core evaluate``. The report lives in this session's state; its rows are read
from the result cache on disk only when a table or a download needs them.
"""

from __future__ import annotations

import json

import streamlit as st

from mlm_core.errors import MaskLabError
from mlm_core.evaluate import (
    CI_NOTE,
    MAX_SEEDS,
    POS_NOTE,
    EvalConfig,
    EvalReport,
    EvaluationCancelled,
    evaluate,
    parse_rates,
    planned_rows,
    sweep,
)
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
from ui.common import UrlField, checked_by, corpus_url_fields, show_error
from ui.corpus import CorpusChoice
from ui.strategy import masking_controls

PAGE_MAX_SENTENCES = 5000  # the page evaluates at most this many; the CLI has no such limit
PAGE_MAX_ROWS = 60_000  # forward-pass rows per run in the Streamlit process (minutes on a laptop CPU)
DEFAULT_SWEEP = "0.05:0.8:0.15"
REPORT_KEY = "batch-report"
EXPLORE_PAGE = "app_pages/explore.py"
HARDEST_ROWS = 15
PERCENT = {name: st.column_config.NumberColumn(name, format="percent") for name in
           ("top1", "top1_low", "top1_high", "top5", "top5_low", "top5_high")}


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
PLL = UrlField("batch-pll", ParamSpec("pll", "bool", True, "Pseudo-log-likelihood per sentence."))
URL_FIELDS = (*corpus_url_fields("batch-corpus"), SWEEP, RATES, OTHERS, SEEDS, HEADS, PLL)


def configuration_panel(loaded: LoadedModel) -> tuple[list[EvalConfig], list[int], bool] | None:
    """The base masking (the explorer's panel), sweeps, seeds and head masking; None after an error."""
    base_column, sweep_column = st.columns(2, gap="large")
    with base_column:
        try:
            strategy, seed = masking_controls("batch")
        except MaskLabError as exc:
            show_error(exc)
            return None
    with sweep_column:
        swept = st.checkbox("Sweep the masking rate", SWEEP.spec.default, key=SWEEP.key)
        rates_text = st.text_input("Rates (start:stop:step, or a list such as 0.1,0.3)", RATES.spec.default,
                                   key=RATES.key, disabled=not swept)
        others = st.multiselect("Also run these strategies (a strategy × rate grid)", MAIN_STRATEGIES,
                                key=OTHERS.key)
        n_seeds = st.number_input("Seeds per configuration (2 or more give intervals over draws)", 1, MAX_SEEDS,
                                  SEEDS.spec.default, key=SEEDS.key)
        heads_text = st.text_input(f"Switch attention heads off (layer:head, 0–{loaded.num_layers - 1} : "
                                   f"0–{loaded.num_heads - 1})", HEADS.spec.default, key=HEADS.key,
                                   placeholder="e.g. 0:1,2:3")
        with_pll = st.checkbox("Pseudo-log-likelihood per sentence (one pass per token: slower)", PLL.spec.default,
                               key=PLL.key)
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
    return configs, seeds, with_pll


def run_panel(loaded: LoadedModel, choice: CorpusChoice | None, plan) -> None:
    """Size check, Run and Stop; stores the report in this session's state."""
    if choice is None or plan is None:
        st.caption("The run starts once the sentences and the masking are valid.")
        return
    configs, seeds, with_pll = plan
    texts = choice.corpus.texts
    if len(texts) > PAGE_MAX_SENTENCES:
        st.warning(f"The page evaluates the first {PAGE_MAX_SENTENCES:,} of {len(texts):,} texts. For the whole "
                   "file use `python -m mlm_core evaluate FILE` (it also runs on several GPUs with accelerate launch).")
        texts = texts[:PAGE_MAX_SENTENCES]
    rows = planned_rows(loaded, texts, configs, seeds, with_pll)
    st.markdown(f"**{len(texts):,} sentences × {len(configs)} configuration(s) × {len(seeds)} seed(s)** · about "
                f"{rows:,} rows of forward passes" + (" (pseudo-log-likelihood: one per token)" if with_pll else "")
                + f" on {escape_markdown(loaded.describe()['device'])}")
    too_big = rows > PAGE_MAX_ROWS
    if too_big:
        st.error(f"That is more than the page's {PAGE_MAX_ROWS:,} rows: switch the pseudo-log-likelihood off, or use "
                 "fewer rates, strategies, seeds or sentences, or run `python -m mlm_core evaluate` in a terminal.")
    if st.session_state.pop("batch-stop", False):
        st.info("Stopped: nothing from the interrupted run was kept.")
    if not st.button("▶ Run the analysis", type="primary", key="batch-run", disabled=too_big):
        return
    bar = st.progress(0.0, text="Starting …")
    st.button("■ Stop", key="batch-stop", help="Interrupts the run; nothing half done is kept.")

    def progress(done: int, total: int | None, what: str) -> None:
        share = min(1.0, done / total) if total else 0.0
        bar.progress(share, text=f"{what} · {share:.0%}")

    try:
        report = evaluate(loaded, texts, configs, seeds=seeds, with_pll=with_pll, progress=progress)
    except EvaluationCancelled as exc:
        st.info(str(exc))
        return
    except MaskLabError as exc:
        show_error(exc)
        return
    bar.progress(1.0, text=f"Done in {report.seconds:.1f} s")
    st.session_state[REPORT_KEY] = report


def results_panel() -> None:
    """Tables, charts, the hardest sentences and tokens (a click opens the explorer) and exports."""
    report: EvalReport | None = st.session_state.get(REPORT_KEY)
    if report is None:
        return
    st.header("4 · Results")
    for notice in report.notices:
        st.info(notice)
    st.caption(f"{escape_markdown(report.model)} · {report.sentences_read:,} sentences · {len(report.configs)} "
               f"configuration(s) · seeds {', '.join(map(str, report.seeds))} · {report.seconds:.1f} s on "
               f"{report.device}" + (f" · {report.cached} from the cache" if report.cached else ""))
    try:
        summary = report.summary()
        st.dataframe(summary.drop(columns=["series", "strategy"]), hide_index=True, column_config=PERCENT,
                     key="batch-summary")
        metric = st.radio("Metric", list(charts.METRIC_LABELS), format_func=charts.METRIC_LABELS.get,
                          horizontal=True, key="batch-metric")
        image = st.radio("Chart download format (camera icon in each chart's toolbar)", ["png", "svg"],
                         horizontal=True, key="batch-image")
        config = {"displaylogo": False, "toImageButtonOptions": {"format": image, "filename": "masklab-batch",
                                                                 "scale": 2}}
        st.plotly_chart(charts.category_bars(summary, metric), config=config, key="batch-categories")
        if summary.groupby("series")["rate"].nunique().max() > 1:
            category = st.selectbox("Category of the rate curves", list(dict.fromkeys(summary["category"])),
                                    key="batch-curve-category")
            st.plotly_chart(charts.rate_curves(summary, metric, category), config=config, key="batch-rates-chart")
        st.caption(f"{CI_NOTE} {POS_NOTE}")
        st.subheader("Hardest sentences and tokens")
        st.caption("Click a row to open that sentence in the explorer with the same masking and seed.")
        _open_on_click(report, report.hardest_sentences(HARDEST_ROWS), "batch-hard-sentences",
                       ["config", "seed", "sentence", "text", "predicted", "top1", "mean_log_prob", "pll_per_token"])
        _open_on_click(report, report.hardest_tokens(HARDEST_ROWS), "batch-hard-tokens",
                       ["config", "seed", "sentence", "word", "token", "category", "kind", "guess", "rank", "log_prob"])
        _downloads(report)
    except MaskLabError as exc:
        show_error(exc)


def _open_on_click(report: EvalReport, frame, key: str, columns: list[str]) -> None:
    event = st.dataframe(frame[columns], hide_index=True, on_select="rerun", selection_mode="single-row", key=key,
                         column_config=PERCENT)
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
