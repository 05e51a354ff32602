"""An experiment's result as a chart with intervals and as a standalone HTML report (no Streamlit).

Labels come from the user (configuration labels, preset text, model names): the chart escapes them
with ``charts.literal``, the report with ``html.escape`` (``reports.html_report``).

Example: ``interval_chart(summary, "masked_accuracy")`` → a Plotly bar chart, one bar per configuration,
the 95% interval as its error bar.
"""

from __future__ import annotations

import plotly.graph_objects as go

from mlm_core.training.experiment_results import CI_METHOD, METRIC_LABELS, summary_frame
from mlm_core.views.charts import NEUTRAL_COLOUR, literal
from mlm_core.views.reports import html_report


def interval_chart(summary: dict, metric: str = "masked_accuracy", height: int = 360) -> go.Figure:
    """Bars of ``metric``'s mean per configuration with the 95% interval as asymmetric error bars.

    A configuration without an interval (one finished seed) has no error bar; one without a finished
    run has no bar.
    """
    labels, means, above, below = [], [], [], []
    for row in summary["configurations"]:
        value = row[metric]
        labels.append(literal(row["label"]))
        means.append(value["mean"])
        ci = value["ci"]
        above.append(ci[1] - value["mean"] if ci else None)
        below.append(value["mean"] - ci[0] if ci else None)
    figure = go.Figure(go.Bar(
        x=list(range(len(labels))), y=means, marker_color=NEUTRAL_COLOUR,
        error_y={"type": "data", "symmetric": False, "array": above, "arrayminus": below, "visible": True},
        hovertemplate="%{customdata}<br>mean %{y:.4f}<extra></extra>", customdata=labels))
    figure.update_layout(
        height=height, margin={"l": 40, "r": 10, "t": 30, "b": 40},
        yaxis_title=METRIC_LABELS[metric], showlegend=False,
        xaxis={"tickmode": "array", "tickvals": list(range(len(labels))), "ticktext": labels})
    return figure


def experiment_report(summary: dict, about: dict[str, str] | None = None) -> str:
    """The experiment as one self-contained HTML page: settings, the preset's text, one chart per metric
    and the table of means and intervals. Every string is escaped (``reports.html_report``)."""
    budget = summary["budget"]
    settings = {"experiment": summary["experiment_id"], "status": summary["status"],
                "seeds": ", ".join(map(str, summary["seeds"])), "budget": budget["note"]}
    for row in summary["configurations"]:
        varied = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "the base settings"
        runs = ", ".join(f"{run_id} ({status})" for run_id, status in zip(row["runs"], row["statuses"], strict=True)
                         if run_id)
        settings[row["label"]] = f"{varied}; runs: {runs or 'none yet'}"
    notes = [f"{key}: {text}" for key, text in (about or {}).items() if text]
    notes.append(f"Intervals: {CI_METHOD}." + (f" {summary['ci_note']}." if summary.get("ci_note") else ""))
    figures = [(METRIC_LABELS[metric], interval_chart(summary, metric)) for metric in METRIC_LABELS]
    title = f"MaskLab experiment: {summary.get('title') or summary['experiment_id']}"
    return html_report(title, settings, tables=[("Means and 95% intervals", summary_frame(summary))],
                       figures=figures, notes=notes)
