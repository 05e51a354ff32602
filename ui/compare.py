"""Compare's widget groups (side A / B); the share panel and the URL helpers live in ui/common.py.

Each side's model and masking live in the link under a prefix (``a_model``, ``a_strategy``,
``a_p_mlm_probability``, ``b_heads=0:1,1:0``, ``b_seed`` ...), read and written by the same codec
(``mlm_core.links``) and widgets (ui/strategy.py) as the explorer's panel.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from mlm_core import links
from mlm_core.errors import MaskLabError
from mlm_core.explain.compare import A_ONLY, B_ONLY, DIFFERENCE, SAME_TOLERANCE, Comparison, Side
from mlm_core.links import MaskingSetting
from mlm_core.model.default_model import DEFAULT_MODEL_NAME
from mlm_core.model.loading import LoadedModel
from mlm_core.views import charts
from mlm_core.views.html import escape_markdown
from ui.common import show_error
from ui.drawn import for_chart
from ui.models import load_with_message, pick_model
from ui.strategy import (
    NONE,
    SIDE_FIELDS,
    exclude_select,
    link_setting,
    strategy_params,
    strategy_select,
    write_link,
)


def side_model(prefix: str, side: str) -> LoadedModel | None:
    """Default model, finished runs, or any hub id / folder; the choice goes to ``<prefix>model``."""
    options = [(DEFAULT_MODEL_NAME, f"{DEFAULT_MODEL_NAME} (default)")]  # pick_model adds the finished runs
    name = pick_model(options, f"{side} model", f"{prefix}model_choice", f"{prefix}model_other", f"{prefix}model")
    return load_with_message(name) if name else None


def side_controls(side: str) -> tuple[LoadedModel | None, Side | None, dict]:
    """One side's model, masking, exclusion, heads and seed. Returns (model, Side, settings for a report)."""
    prefix = f"{side.lower()}_"
    st.subheader(f"Side {side}")
    loaded = side_model(prefix, side)
    if loaded is None:
        return None, None, {}
    link = link_setting(prefix, links.NONE, SIDE_FIELDS)
    name = strategy_select(link, f"{prefix}strategy")
    # The explorer's parameter widgets (80/10/10 split included), keyed and linked per side.
    values = {} if name == links.NONE else strategy_params(name, side.lower(), prefix)
    exclude = exclude_select("Remove from the context", link, f"{prefix}exclude")
    all_heads = [links.format_heads_off([(la, h)]) for la in range(loaded.num_layers) for h in range(loaded.num_heads)]
    linked_heads = [links.format_heads_off([pair]) for pair in link.heads_off]
    # Folded away unless the link sets them, so the result fits on the first screen.
    with st.expander("Heads switched off, seed", expanded=bool(link.heads_off) or link.seed != links.SEED.default):
        heads = st.multiselect("Heads switched off (layer:head)", all_heads, key=f"{prefix}heads",
                               default=[h for h in linked_heads if h in all_heads])  # the model's heads only
        seed = int(st.number_input("Seed (same seed on both sides = same draw)", links.SEED.min, links.SEED.max,
                                   link.seed, key=f"{prefix}seed"))
    try:
        setting = MaskingSetting(name, values, exclude=exclude, heads_off=",".join(heads), seed=seed)
        strategy = setting.build()
    except MaskLabError as exc:  # e.g. an 80/10/10 split over 100% from a hand-edited link
        show_error(exc)
        return loaded, None, {}
    write_link(setting, prefix, SIDE_FIELDS)
    settings = {"model": loaded.name, "strategy": NONE if name == links.NONE else name, **values,
                "exclude": exclude or "nothing", "heads off": links.format_heads_off(setting.heads_off) or "none",
                "seed": seed}
    return loaded, Side(strategy, seed, setting.heads_off, side), settings


# --------------------------------------------------------------------------- results

ATTENTION_SAME = 1e-6  # attention weights closer than this are the same computation, not a difference
TEXT, NUMBER = st.column_config.TextColumn, st.column_config.NumberColumn


def _percent_column(label: str, **options):
    """Probabilities travel as text (see ``_percents``), aligned as numbers are."""
    return TEXT(label, alignment="right", **options)


# Pixel widths: the first seven columns fit a 1400 px window, so the difference is seen without
# scrolling sideways; the long guess lists come last.
TABLE_COLUMNS = {
    "position": NUMBER("pos.", width=48),
    "token": TEXT("token", width=90, help="The token in the text ([MASK] where it was typed)."),
    "masked in": TEXT("masked in", width=100, help="both: compared. A only / B only: the other side sees the "
                                                  "token itself, so there is nothing to compare."),
    DIFFERENCE: _percent_column("B − A", width=70,
                                help="p B − p A for the compared token; blank where one side only masks."),
    "p A": _percent_column("p A", width=62, help="A's probability for the compared token."),
    "p B": _percent_column("p B", width=62, help="B's probability for the compared token."),
    "compared token": TEXT("compared", width=120, help="The original token; for a typed [MASK] (which has no "
                                                       "original), the token A guesses first."),
    "A top-k": TEXT("A guesses", width=190),
    "B top-k": TEXT("B guesses", width=190),
}
SUMMARY_COLUMNS = {
    "side": TEXT("side", width=48),
    "masks": NUMBER("masks", help="Positions this side predicts."),
    "only on this side": NUMBER("masked here only",
                                help="Positions the other side leaves visible: listed, never compared."),
    "typed (no original)": NUMBER("typed masks",
                                  help="A typed [MASK] has no original token: no hit or miss, no p(original)."),
    "top-1 hits": TEXT("top-1 hits", help="Masks whose first guess is the original token (typed masks not counted)."),
    "mean p(original)": _percent_column("mean p(original)", help="Mean probability of the original token over "
                                                                 "this side's masks (typed masks not counted)."),
    "first guesses": TEXT("first guesses", width="medium"),
}


def _percents(frame, formats: dict[str, str]):
    """Probabilities as text: the grid shows a missing number as "None", and a blank says "does not apply"."""
    # NaN != NaN marks "does not apply"; rounding first (+ 0.0 turns −0.0 into 0.0) keeps "−0.0%" away.
    return frame.assign(**{column: frame[column].map(lambda v, f=f: "" if v != v else f.format(round(v, 3) + 0.0))
                           for column, f in formats.items()})


def summary_panel(result: Comparison, same_settings: bool) -> None:
    """The per-side summary, then the "no difference" state when there is nothing else to show."""
    st.dataframe(summary_frame(result), hide_index=True, key="compare-summary", column_config=SUMMARY_COLUMNS)
    if result.same_result:
        why = ("Both sides use the same settings: change side B (its model, what it removes from the "
               "context, its heads or its masking) to see what that changes." if same_settings else
               "The settings differ, but not in a way that changes these guesses.")
        st.info(f"**No difference.** A and B mask the same positions and give the same guesses "
                f"(every probability within {SAME_TOLERANCE:.2%}). {why}", icon=":material/drag_handle:")


def difference_panel(result: Comparison):
    """The difference chart over positions masked on both sides; one-sided ones named, not drawn."""
    if result.same_result:
        return None
    shared, one_sided = result.shared, result.one_sided
    figure = None
    if len(shared):
        labels = [f"{p} {t}" for p, t in zip(shared["position"], shared["compared token"])]
        figure = charts.difference_bars(labels, shared["p A"], shared["p B"],
                                        title="Probability of the compared token, B − A (positions masked on both)")
        st.plotly_chart(for_chart(figure), key="difference")
    else:
        st.info("No position is masked on both sides, so nothing can be compared one to one: give both sides "
                "the same strategy and seed, or type [MASK] in the text.")
    for side, other, where in (("A", "B", A_ONLY), ("B", "A", B_ONLY)):
        rows = one_sided[one_sided["masked in"].str.startswith(where)]
        if len(rows):
            listed = ", ".join(f"{p} {t}" for p, t in zip(rows["position"], rows["token"]))
            st.caption(f"Masked in {side} only, not compared ({other} sees these tokens): {escape_markdown(listed)}")
    return figure


def summary_frame(result: Comparison):
    """The per-side summary as shown (and put in the report)."""
    return _percents(result.summary, {"mean p(original)": "{:.1%}"})


def table_frame(result: Comparison):
    """Every masked position as shown (and put in the report): percentages, blanks where nothing is compared."""
    return _percents(result.table, {DIFFERENCE: "{:+.1%}", "p A": "{:.1%}", "p B": "{:.1%}"})


def results_table(result: Comparison) -> None:
    st.dataframe(table_frame(result), hide_index=True, key="compare-table", column_config=TABLE_COLUMNS)


def attention_panel(result: Comparison, view: str, layer: int):
    """The B − A attention map, or a sentence when the two sides attend identically."""
    try:
        matrix = result.attention_difference(view, layer)
    except MaskLabError as exc:
        show_error(exc)
        return None
    if float(np.abs(matrix).max()) <= ATTENTION_SAME:  # an all-zero map would get a meaningless colour scale
        st.info(f"**No attention difference** at layer {layer} ({view}): A and B attend identically.",
                icon=":material/drag_handle:")
        return None
    figure = charts.attention_heatmap(matrix, result.tokens, highlight=result.positions, diverging=True,
                                      title=f"{view} attention, layer {layer}: B − A (red: B attends more)")
    st.plotly_chart(for_chart(figure), key="attention-difference")
    return figure
