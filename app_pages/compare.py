"""Compare: the same text under two settings (A and B), their differences, and one-word variants."""

import streamlit as st

from mlm_core.errors import MaskLabError
from mlm_core.explain.compare import ATTENTION_VIEWS, compare, word_swap
from mlm_core.links import MAX_LINK_TEXT
from mlm_core.views import charts
from mlm_core.views.reports import html_report
from ui.common import latest_result, share_panel, show_error, url_get, url_int, url_set
from ui.compare import (
    attention_panel,
    difference_panel,
    results_table,
    side_controls,
    summary_frame,
    summary_panel,
    table_frame,
)
from ui.drawn import for_chart

st.title("Compare")
st.caption("Same text, two settings. Positions masked on both sides are compared; a position masked on one "
           "side only is listed, not compared. With the same strategy and seed both sides mask the same "
           "tokens, so the differences come from the model, the exclusion or the heads.")
cols = st.columns([4, 1])
text = cols[0].text_area("Text (type [MASK] or choose a strategy on each side)",
                         url_get("text", "The capital of France is [MASK]."), key="text", height=80)
url_set("text", text if len(text) <= MAX_LINK_TEXT else "")
top_k = cols[1].slider("Guesses per mask (top-k)", 1, 10, url_int("topk", 5, 1, 10), key="topk")
url_set("topk", top_k, 5)

left, right = st.columns(2, gap="large")
with left:
    loaded_a, side_a, settings_a = side_controls("A")
with right:
    loaded_b, side_b, settings_b = side_controls("B")
if side_a is None or side_b is None:
    st.stop()
try:
    # Reused while text and settings stay the same: a new attention layer or a word swap predicts nothing again.
    with st.spinner("Predicting both sides …"):
        result = latest_result("compare", (text, top_k, repr(settings_a), repr(settings_b)),
                               lambda: compare(text, loaded_a, side_a, loaded_b, side_b, top_k=top_k))
except MaskLabError as exc:
    show_error(exc)
    st.stop()

st.subheader("Result")
summary_panel(result, same_settings=settings_a == settings_b)
difference = difference_panel(result)
st.subheader("Every position masked in A or B")
results_table(result)

st.subheader("Attention difference (B − A)")
cols = st.columns(2)
view = cols[0].selectbox("View", ATTENTION_VIEWS, index=ATTENTION_VIEWS.index(url_get("att", "mean"))
                         if url_get("att", "mean") in ATTENTION_VIEWS else 0, key="att")
layers = loaded_a.num_layers
layer = cols[1].selectbox("Layer", range(layers), index=url_int("layer", layers - 1, 0, layers - 1),
                          format_func=lambda i: f"layer {i}", key="layer")
url_set("att", view, "mean")
url_set("layer", layer, layers - 1)
heatmap = attention_panel(result, view, layer)

st.subheader("Sentence variants (model A)")
cols = st.columns(2)
old = cols[0].text_input("Replace the word", url_get("swap_from"), key="swap_from", placeholder="he")
new = cols[1].text_input("with", url_get("swap_to"), key="swap_to", placeholder="she")
url_set("swap_from", old)
url_set("swap_to", new)
swap = None
if old.strip():
    try:
        swap = word_swap(loaded_a, text, old, new)
        st.markdown(f"Variant: `{swap.variant.replace('`', '')}`")
        st.dataframe(swap.table, hide_index=True, key="swap-table")
        first = swap.table[swap.table["mask"] == 1]
        st.plotly_chart(for_chart(charts.change_bars(first["token"], first["change"],
                                                     "Largest changes at the first mask")), key="swap-chart")
    except MaskLabError as exc:
        show_error(exc)

tables = [("Per side", summary_frame(result)), ("Every position masked in A or B", table_frame(result))]
if swap is not None:
    tables.append((f"Variant: {swap.variant}", swap.table))
figures = []
if difference is not None:
    figures.append(("Probability of the compared token, B − A", difference))
if heatmap is not None:
    figures.append(("Attention difference", heatmap))
report = html_report("MaskLab — Compare", {"text": text, **{f"A {k}": v for k, v in settings_a.items()},
                                           **{f"B {k}": v for k, v in settings_b.items()}}, tables, figures)
share_panel("compare", report, "masklab-compare.html")
