"""A standalone HTML report of a view, for handouts: no Streamlit, nothing fetched from a network.

Every string is escaped; tables go through ``DataFrame.to_html(escape=True)``; token strips come
from ``mlm_core.views.html`` (which escapes); figures are Plotly with the library embedded once
(``include_plotlyjs=True``), so the file works offline.

Example: ``html_report("Compare", {"text": "the [MASK] sat"}, tables=[("Predictions", frame)])``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import pandas as pd

from mlm_core.errors import InputError
from mlm_core.evaluate import CI_NOTE, POS_NOTE, EvalReport
from mlm_core.explain.exploration import Exploration
from mlm_core.links import NONE_LABEL
from mlm_core.masking import params_of, strategy_steps
from mlm_core.views import charts
from mlm_core.views import html as render

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem;color:#111}"
    "table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:left}th{background:#f0f0f0}dt{font-weight:700}dd{margin:0 0 .5rem 1rem;"
    "font-family:ui-monospace,monospace;white-space:pre-wrap}"
)


def html_report(
    title: str,
    settings: Mapping[str, object],
    tables: Sequence[tuple[str, pd.DataFrame]] = (),
    figures: Sequence[tuple[str, object]] = (),
    notes: Sequence[str] = (),
    strips: Sequence[tuple[str, str]] = (),
) -> str:
    """One self-contained HTML page: settings (as a definition list), notes, strips, tables, then figures.

    ``strips`` are (caption, HTML) built by ``mlm_core.views.html``, whose output is already escaped. A
    table's index is written only when it names the rows (an attention matrix's tokens, say).
    """
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1><dl>",
        *(f"<dt>{esc(str(k))}</dt><dd>{esc(str(v))}</dd>" for k, v in settings.items()),
        "</dl>",
        *(f"<p>{esc(note)}</p>" for note in notes),
    ]
    for caption, fragment in strips:
        parts.append(f"<h2>{esc(caption)}</h2>{fragment}")
    for caption, frame in tables:
        parts.append(f"<h2>{esc(caption)}</h2>")
        parts.append(frame.to_html(index=not isinstance(frame.index, pd.RangeIndex), escape=True,
                                   float_format=lambda x: f"{x:.4f}", border=0, na_rep=""))  # blanks, not NaN
    first = True
    for caption, figure in figures:
        parts.append(f"<h2>{esc(caption)}</h2>")
        # Figure labels are already escaped by mlm_core.views.charts.literal; the library goes in once.
        parts.append(figure.to_html(full_html=False, include_plotlyjs=first))
        first = False
    parts.append("</body></html>")
    return "".join(parts)


def strategy_settings(strategy) -> dict[str, str]:
    """The masking as report settings: its description and every step's parameters, defaults included.

    Example: ``strategy_settings(build_strategy("random", {}))`` gives ``{"strategy": "random masking",
    "random": "mlm_probability=0.15, exact=false, ..."}``.
    """
    if strategy is None:
        return {"strategy": NONE_LABEL}
    steps = strategy_steps(strategy)
    settings = {"strategy": strategy.describe()}
    for n, step in enumerate(steps, 1):
        try:
            values = params_of(step, as_strings=True)
        except InputError:  # a step outside the registry has no parameters to list
            continue
        name = step.name if len(steps) == 1 else f"step {n}: {step.name}"
        settings[name] = ", ".join(f"{key}={value}" for key, value in values.items()) or "no parameters"
    return settings


def prediction_tables(exploration: Exploration) -> list[tuple[str, pd.DataFrame]]:
    """One (caption, table) per predicted position: rank, guess and probability of the top-k."""
    tables = []
    for guess in exploration.prediction.predictions:
        caption = f"Position {guess.position} ({exploration.kinds[guess.position] or 'typed mask'})"
        if guess.original_token:
            caption += f": original '{guess.original_token}', rank {guess.original_rank}"
            caption += f", p = {guess.original_prob:.4f}" if guess.original_prob is not None else ""
        if guess.fill_step:
            caption += f", filled {guess.fill_step}."
        frame = pd.DataFrame({"rank": range(1, len(guess.top) + 1), "guess": [c.token for c in guess.top],
                              "probability": [c.prob for c in guess.top]})
        tables.append((caption, frame))
    return tables


def ratio_note(exploration: Exploration) -> str:
    """α in words, beside every strip that shows it (the explorer, its report), with both counts."""
    maskable = exploration.mask.n_eligible if exploration.mask else len(exploration.tokens.eligible_positions)
    masked = round(exploration.ratio * maskable)
    return (f"α = {masked} masked ÷ {maskable} maskable tokens = {exploration.ratio:.0%} (maskable: every token "
            "but special ones such as [CLS] and [SEP], less the words a never-mask rule protects)")


def exploration_report(
    exploration: Exploration,
    shown_tokens: Sequence[str],
    filled_text: str,
    settings: Mapping[str, object],
    numbers: Sequence[tuple[str, pd.DataFrame]] = (),
) -> str:
    """The Explore view as one standalone page: settings, the token strip, the filled sentence,
    the top-k at every predicted position and the numbers of the selected "why?" views.

    Tables, not charts: the page carries no script at all, so it opens anywhere, offline, and prints.
    ``shown_tokens`` are the tokens the model read (``tokenizer.convert_ids_to_tokens(input_ids)``).
    """
    strip = render.token_chips(shown_tokens, exploration.kinds, exploration.tokens.special)
    note = html.escape(ratio_note(exploration))
    legend = f"<p>{render.legend(kinds=exploration.kinds)} &nbsp; {note}</p>"
    return html_report(
        "MaskLab — Explore",
        {**settings, "filled in": filled_text},
        tables=[*prediction_tables(exploration), *numbers],
        notes=exploration.notices,
        strips=[("What the model read", strip + legend)],
    )


def batch_report(report: EvalReport, metric: str = "top1", hardest_rows: int = 15) -> str:
    """The Batch analysis page as a handout: settings, summary table, charts, hardest sentences and tokens.

    ``metric`` is the one the page's charts show (a key of ``charts.METRIC_LABELS``).
    """
    summary = report.summary()
    settings = {"model": report.model, "sentences": f"{report.sentences_read:,}",
                "configurations": ", ".join(summary["config"].drop_duplicates()),
                "seeds": ", ".join(map(str, report.seeds)), "time": f"{report.seconds:.1f} s on {report.device}"}
    figures = [(charts.METRIC_LABELS[metric], charts.category_bars(summary, metric))]
    if summary.groupby("series")["rate"].nunique().max() > 1:
        category = summary["category"].iloc[0]
        figures.append((f"{charts.METRIC_LABELS[metric]} by masking rate ({category})",
                        charts.rate_curves(summary, metric, category)))
    tables = [("Summary", summary.drop(columns=["series", "strategy"])),
              ("Hardest sentences", report.hardest_sentences(hardest_rows)),
              ("Hardest tokens", report.hardest_tokens(hardest_rows))]
    return html_report("MaskLab batch analysis", settings, tables=tables, figures=figures,
                       notes=[*report.notices, f"{CI_NOTE} {POS_NOTE}"])
