"""Explore: type a sentence, mask tokens, see what the model puts in each blank."""

import streamlit as st

from mlm_core import charts, render
from mlm_core.errors import MaskLabError
from mlm_core.explore import explore
from mlm_core.predict import fill_text
from mlm_core.tokens import tokenize
from ui.common import model_sidebar, show_error

st.title("Explore")
loaded = model_sidebar()
if loaded is None:
    st.stop()

params = st.query_params
text = st.text_area(
    f"Text (type {loaded.mask_token} where a word should be guessed, or click tokens below)",
    value=params.get("text", f"The capital of France is {loaded.mask_token}."),
    key="text",
    height=90,
)
params["text"] = text
left, right = st.columns(2)
top_k = left.slider("Guesses per mask (top-k)", 1, 20, 5, key="top_k")
fill = right.radio(
    "Several masks", ["independent", "joint"], horizontal=True, key="fill",
    help="independent: one pass, each blank ignores the others. joint: fill the most confident blank "
    "first, then predict the rest with it filled in.",
)

try:
    tokens = tokenize(loaded.tokenizer, text)
except MaskLabError as exc:
    show_error(exc)
    st.stop()

choosable = [i for i in tokens.eligible_positions if tokens.ids[i] != loaded.mask_token_id]
clicked = st.pills(
    "Click tokens to mask them",
    choosable,
    format_func=lambda i: tokens.tokens[i],
    selection_mode="multi",
    key=f"manual-{loaded.name}-{hash(text)}",
)

try:
    result = explore(loaded, text, sorted(clicked or []), top_k=top_k, fill=fill)
except MaskLabError as exc:
    show_error(exc)
    st.stop()

kinds = ["masked" if p in result.prediction.positions else None for p in range(len(result.masked))]
st.markdown(render.token_chips(result.masked.tokens, kinds, result.masked.special), unsafe_allow_html=True)
for notice in result.notices:
    st.info(notice)
st.markdown(f"**Filled in:** {fill_text(loaded, result.prediction.filled_ids)}")

columns = st.columns(min(3, len(result.prediction.predictions)))
for n, guess in enumerate(result.prediction.predictions):
    title = f"position {guess.position}"
    if guess.original_token:
        verdict = "hit" if guess.hit else f"miss, original ranked {guess.original_rank}"
        title += f" · original '{guess.original_token}' ({verdict})"
    if guess.fill_step:
        title += f" · filled {guess.fill_step}."
    with columns[n % len(columns)]:
        st.plotly_chart(charts.topk_bars(guess, title), key=f"topk-{n}")
