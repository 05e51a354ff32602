"""Explore: type a sentence, choose how to mask it, see what the model puts in each blank."""

import streamlit as st

from mlm_core import links
from mlm_core.errors import MaskLabError
from mlm_core.explain.exploration import (
    FREQUENCY_DRAWS,
    chosen_frequency,
    explore,
    is_explored,
    reading_tokens,
)
from mlm_core.explain.predict import fill_text
from mlm_core.links import MAX_LINK_TEXT
from mlm_core.settings import ParamSpec
from mlm_core.views import charts
from mlm_core.views import html as render
from mlm_core.views.reports import exploration_report, ratio_note, strategy_settings
from ui.common import (
    UrlField,
    is_latest,
    latest_result,
    restore_from_url,
    save_to_url,
    share_panel,
    show_error,
    url_put,
    working,
)
from ui.concepts import concepts_entry
from ui.drawn import drawn, for_chart
from ui.explain import (
    attention_panel,
    attribution_panel,
    charted_count,
    guesses_table,
    interference_panel,
    worth_keeping,
)
from ui.models import model_sidebar
from ui.strategy import added_note, masking_controls
from ui.why_link import is_open, why_tabs

FILLS = ("independent", "joint")
URL_FIELDS = (UrlField("top_k", ParamSpec("top_k", "int", 5, "Guesses per mask.", 1, 20)),
              UrlField("fill", ParamSpec("fill", "choice", "independent", "Several masks.", choices=FILLS)))

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
if len(text) <= MAX_LINK_TEXT:  # long texts would make unusable links; they stay in the session
    url_put("text", text)
elif "text" in params:
    del params["text"]

controls, output = st.columns([1, 2], gap="large")
with controls:
    try:
        # No strategy unless the user or the link picks one: a typed mask is predicted alone, as in a
        # fill-mask widget (random masking would mask more words and change the answer).
        strategy, seed = masking_controls(default=links.NONE)
    except MaskLabError as exc:
        show_error(exc)
        st.stop()
    restore_from_url(URL_FIELDS)
    top_k = st.slider("Guesses per mask (top-k)", 1, 20, 5, key="top_k")
    fill = st.radio("Several masks", FILLS, horizontal=True, key="fill",
                    help="independent: one pass, each blank ignores the others. joint: fill the most "
                    "confident blank first, then predict the rest with it filled in.")
    save_to_url(URL_FIELDS)


with output:
    try:
        tokens, _ = reading_tokens(loaded, text, strategy)
    except MaskLabError as exc:
        show_error(exc)
        st.stop()
    choosable = [i for i in tokens.eligible_positions if tokens.ids[i] != loaded.mask_token_id]
    clicked = st.pills("Click tokens to mask them", choosable, format_func=lambda i: tokens.tokens[i],
                       selection_mode="multi", key=f"manual-{loaded.name}-{hash(tokens.text)}")
    try:
        # Attentions come from the prediction's own forward pass, so the attention tab needs no second one.
        # The spinner shows only past half a second; until the new result arrives Streamlit keeps the old
        # one on screen, dimmed, because every element below keeps its place from run to run.
        asked = {"strategy": strategy, "seed": seed, "manual_positions": sorted(clicked or []), "top_k": top_k,
                 "fill": fill, "output_attentions": True}
        request = (loaded.name, id(loaded.model), text, repr(asked))  # this session's latest: what was asked of whom
        ready = is_latest("exploration", request) or is_explored(loaded, text, **asked)
        with working(f"Predicting the masked words with {loaded.name} …", not ready):
            result = latest_result("exploration", request, lambda: explore(loaded, text, **asked),
                                   keep_if=worth_keeping)
    except MaskLabError as exc:
        show_error(exc)
        st.stop()

    shown = loaded.tokenizer.convert_ids_to_tokens(list(result.input_ids))
    st.markdown(render.token_chips(shown, result.kinds, result.tokens.special), unsafe_allow_html=True)
    st.markdown(render.legend(kinds=result.kinds), unsafe_allow_html=True)
    st.caption(render.escape_markdown(ratio_note(result)))
    with st.container():  # a varying number of messages in one place keeps the charts below in theirs
        note = added_note(result, strategy)
        if note:
            st.info(note)
        for notice in result.notices:
            st.info(notice)
    filled = fill_text(loaded, result.prediction.filled_ids)
    st.markdown(f"**Filled in:** {render.escape_markdown(filled)}")

    guesses = result.prediction.predictions
    charted, rest = guesses[:charted_count(result)], guesses[charted_count(result):]
    # One chart (one mask, the usual case) needs no columns: each column is a block sent on every rerun.
    columns = st.columns(min(3, len(charted))) if len(charted) > 1 else [st.container()]
    for n, guess in enumerate(charted):
        title = f"position {guess.position} · {result.kinds[guess.position]}"
        if guess.fill_step:
            title += f" · filled {guess.fill_step}."
        if guess.original_token:
            verdict = "✓ hit" if guess.hit else f"✗ rank {guess.original_rank}"
            title += f"\noriginal '{guess.original_token}' {verdict}"
        with columns[n % len(columns)]:
            # The same result in every session that typed this sentence: its charts are drawn once (ui.drawn).
            figure = drawn(result, ("topk", n, title),
                           lambda guess=guess, title=title: for_chart(charts.topk_bars(guess, title, height=300)))
            st.plotly_chart(figure, key=f"topk-{n}")
    if rest:
        st.caption(f"Charts for the first {len(charted)} masks (this server draws at most {len(charted)} per "
                   f"page); the other {len(rest)} are in this table.")
        st.dataframe(guesses_table(result, rest), key="topk-rest")

    if strategy is not None:
        with st.expander(f"How often does this strategy choose each token? ({FREQUENCY_DRAWS} draws)"):
            with st.spinner(f"Drawing the strategy {FREQUENCY_DRAWS} times …"):
                strip_tokens, frequency = chosen_frequency(loaded, text, strategy, seed)
            st.plotly_chart(for_chart(charts.frequency_strip(strip_tokens.tokens, frequency, FREQUENCY_DRAWS)),
                            key="frequency")

st.subheader("Why?")
attention_tab, whatif_tab, attribution_tab = why_tabs()  # the open tab travels in the link
attention_numbers = attribution_numbers = None  # the report has the numbers of the panel on screen
# Only the open tab's panel is drawn; each shows a spinner only while it computes (a class shares what is drawn).
if is_open(attention_tab, "attention"):
    with attention_tab:
        attention_numbers = attention_panel(loaded, result)
if is_open(whatif_tab, "whatif"):
    with whatif_tab:
        interference_panel(loaded, result)
if is_open(attribution_tab, "words"):
    with attribution_tab:
        attribution_numbers = attribution_panel(loaded, result)

st.subheader("The masking formulas")
concepts_entry(loaded, text, seed)

settings = {"text": text, "model": loaded.name, **strategy_settings(strategy), "seed": seed, "top-k": top_k,
            "several masks": fill}
numbers = [n for n in (attention_numbers, attribution_numbers) if n is not None]
share_panel("explore", lambda: exploration_report(result, shown, filled, settings, numbers), "masklab-explore.html",
            note="" if len(text) <= MAX_LINK_TEXT else f"The text is longer than {MAX_LINK_TEXT:,} characters, too long "
            "for a link: the link opens on the default sentence with these settings; the report has the text.")
