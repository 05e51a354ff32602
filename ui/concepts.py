"""The masking formulas on the real model: X⊙M, W⊙M and a_ij = 0 (three Teach steps and an Explore entry).

Numbers come from ``mlm_core.explain.concepts``, figures from ``mlm_core.views`` (charts.literal
escapes every token and name there); tokens reach the page only in tables, LaTeX of numbers and
escaped markdown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import streamlit as st

from mlm_core.errors import MaskLabError
from mlm_core.explain.attention import EXCLUDE_MODES, head_mean
from mlm_core.explain.concepts import (
    GRID,
    ONE_D,
    SHOWN_DIMENSIONS,
    attention_mask_comparison,
    mask_product,
    parameter_mask_effect,
    sentence_input_mask,
    weight_matrices,
)
from mlm_core.masking.parameters import MAX_PARAM_SPARSITY, PARAM_MASK_KINDS
from mlm_core.model.loading import LoadedModel
from mlm_core.text.tokens import tokenize
from mlm_core.views import charts, concept_charts
from mlm_core.views import html as render
from mlm_core.views.presenter import presenter_style
from ui.common import show_error

CONCEPTS = {"input": "X⊙M · input masking", "parameter": "W⊙M · parameter masking",
            "attention": "a_ij = 0 · attention masking"}
MODE_LABELS = {"keys": "keys only: a_ij = 0 if m_j = 1 (standard)",
               "keys-and-queries": "keys and queries: a_ij = 0 if m_i = 1 or m_j = 1"}
DEFAULT_RATE = 0.3  # high enough that a short sentence loses a word or two in most draws
DEFAULT_SPARSITY = 0.5


def _plot(container, figure, key: str, presenter: bool) -> None:
    container.plotly_chart(presenter_style(figure) if presenter else figure, key=key)


def _latex(values: np.ndarray) -> str:
    """A numeric vector or matrix as a LaTeX bmatrix (numbers only: nothing from the user)."""
    rows = np.atleast_2d(values)
    body = r" \\ ".join(" & ".join(f"{v:g}" for v in row) for row in rows)
    return rf"\begin{{bmatrix}} {body} \end{{bmatrix}}"


def _row_labels(tokens: Sequence[str]) -> list[str]:
    return [f"{i} {token}" for i, token in enumerate(tokens)]  # positions keep repeated tokens apart


# ----------------------------------------------------------------------------- X⊙M


def input_mask_panel(loaded: LoadedModel, text: str, seed: int, key: str, presenter: bool = False) -> None:
    """The 1-D and 3×3 examples, then the sentence's embedding rows times a row mask, next to [MASK]."""
    one, grid = mask_product(*ONE_D), mask_product(*GRID)
    st.latex(rf"{_latex(one.x)} \odot {_latex(one.mask)} = {_latex(one.product)}")
    st.latex(rf"X \odot M = {_latex(grid.x)} \odot {_latex(grid.mask)} = {_latex(grid.product)}, "
             rf"\quad \alpha = \frac{{{int((grid.mask == 0).sum())}}}{{{grid.mask.size}}} = {grid.alpha:.2f}")
    st.markdown(f"M = 1 keeps an entry, M = 0 hides it; the masked ratio α is the share hidden "
                f"(in the 1-D example {int((one.mask == 0).sum())} of {one.mask.size}, α = {one.alpha:.1f}).")
    rate = st.slider("Masking rate p", 0.05, 0.8, DEFAULT_RATE, 0.05, key=f"{key}-rate",
                     help="Each word is hidden with probability p. Typed masks in the sentence are used instead.")
    result = sentence_input_mask(loaded, text, rate, seed)
    labels = _row_labels(result.tokens)
    columns = [f"x{d + 1}" for d in range(result.x.shape[1])]
    st.markdown(f"**The sentence as X**: one row per token, its word embedding (the first {SHOWN_DIMENSIONS} of "
                f"{result.dimensions} numbers). M is 0 on the hidden tokens.")
    table = pd.DataFrame(result.x, index=labels, columns=columns).round(3)
    table.insert(0, "M", result.mask)
    st.dataframe(table, key=f"{key}-x")
    left, right = st.columns(2)
    left.markdown("**X⊙M**: the hidden rows become 0")
    left.dataframe(pd.DataFrame(result.product, index=labels, columns=columns).round(3), key=f"{key}-xm")
    right.markdown(f"**What BERT reads**: the hidden rows become the {render.escape_markdown(loaded.mask_token)} "
                   "embedding")
    right.dataframe(pd.DataFrame(result.replaced, index=labels, columns=columns).round(3), key=f"{key}-replaced")
    hidden = len(result.positions)
    st.markdown(
        f"Here α = {hidden}/{result.eligible} = {result.alpha:.2f} of the words are hidden; p = {result.rate:.2f} is "
        "the chance of each word, so α is one draw and its average over many draws is p (press *Draw again*). "
        f"Multiplying by M and writing {render.escape_markdown(loaded.mask_token)} both remove the word's identity. "
        f"They differ in what is left: a zero row, or a learned vector (its length here "
        f"{result.mask_row_norm:.2f}, a word's about {float(np.median(result.row_norms)):.2f}) that the model was "
        "trained to read as *a word is missing here*; the position of the row stays in both.")
    rows = [{"position": p, "hidden word": z.original_token or "(typed mask)",
             "guesses, row zeroed (X⊙M)": ", ".join(c.token for c in z.top[:3]),
             f"guesses, {loaded.mask_token}": ", ".join(c.token for c in m.top[:3])}
            for p, z, m in zip(result.positions, result.zeroed, result.with_mask_token)]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key=f"{key}-guesses")


# ----------------------------------------------------------------------------- W⊙M


def _layer_of(name: str) -> int:
    found = re.search(r"\.(\d+)\.", name)
    return int(found.group(1)) if found else 0


def parameter_mask_panel(loaded: LoadedModel, text: str, seed: int, key: str, presenter: bool = False) -> None:
    """A magnitude or random mask on one weight matrix, drawn as a grid, and the guesses before and after."""
    names = weight_matrices(loaded)
    layers = sorted({_layer_of(n) for n in names})
    cols = st.columns(4)
    layer = cols[0].selectbox("Layer", layers, index=len(layers) - 1, key=f"{key}-layer")
    in_layer = [n for n in names if _layer_of(n) == layer]
    prefix = f".{layer}."
    name = cols[1].selectbox("Weight matrix", in_layer, key=f"{key}-matrix",
                             format_func=lambda n: n.split(prefix, 1)[-1].removesuffix(".weight"))
    kind = cols[2].radio("Mask", PARAM_MASK_KINDS, horizontal=True, key=f"{key}-kind",
                         help="magnitude: hide the smallest weights (pruning); random: hide weights drawn at random "
                         "(the seed: Draw again).")
    sparsity = cols[3].slider("Share hidden", 0.0, MAX_PARAM_SPARSITY, DEFAULT_SPARSITY, 0.05, key=f"{key}-sparsity")
    effect = parameter_mask_effect(loaded, text, name, sparsity, kind, seed)
    rows, columns = effect.shape
    st.markdown(f"W is {rows} × {columns}; M hides {effect.removed:,} of {effect.total:,} weights "
                f"({effect.removed / effect.total:.1%}). W⊙M is used for this prediction only: the model itself is "
                "not changed.")
    _plot(st, concept_charts.weight_mask_grid(effect.grid, effect.shape, f"M on {name} ({kind})"),
          f"{key}-grid", presenter)
    before, after = effect.before[0], effect.after[0]
    left, right = st.columns(2)
    _plot(left, charts.topk_bars(before, f"position {before.position}: with W"), f"{key}-before", presenter)
    _plot(right, charts.topk_bars(after, f"position {after.position}: with W⊙M"), f"{key}-after", presenter)


# ----------------------------------------------------------------------------- a_ij = 0


def _renormalisation_note(before: np.ndarray, removed: Sequence[bool], tokens: Sequence[str], query: int) -> str:
    """In words and numbers, for the first layer's mean attention of ``query``: after = before / (1 - removed)."""
    row = before[query].astype(float)
    lost = float(row[list(removed)].sum())
    kept = [j for j in np.argsort(row)[::-1] if not removed[j]][:2]
    examples = ", ".join(f"{render.escape_markdown(tokens[j])} {row[j]:.2f} → {row[j] / (1 - lost):.2f}" for j in kept)
    return (f"In layer 0, token {query} ({render.escape_markdown(tokens[query])}) gave {lost:.2f} of its attention to "
            f"the removed tokens. Softmax now spreads 1 over the tokens left, so each of its other weights is divided "
            f"by 1 − {lost:.2f} = {1 - lost:.2f}: {examples}. In later layers the inputs themselves have changed, so "
            "the rows change more than that.")


def attention_mask_panel(loaded: LoadedModel, text: str, key: str, presenter: bool = False) -> None:
    """Remove tokens from the context, keys only or keys and queries: the heatmap before and after, row sums."""
    tokens = tokenize(loaded.tokenizer, text)
    eligible = tokens.eligible_positions
    stopwords = [i for i in eligible if tokens.categories[i] == "stopword" and i not in tokens.mask_positions]
    removed = st.pills("Remove from the context (m = 1)", eligible, selection_mode="multi",
                       default=stopwords[:1] or eligible[:1], format_func=lambda i: f"{i} {tokens.tokens[i]}",
                       key=f"{key}-remove-{hash(text)}")
    cols = st.columns(3)
    mode = cols[0].radio("Which a_ij are 0", EXCLUDE_MODES, format_func=MODE_LABELS.get, key=f"{key}-mode")
    layer = cols[1].selectbox("Layer", range(loaded.num_layers), index=loaded.num_layers - 1, key=f"{key}-layer")
    head = cols[2].selectbox("Head", ["mean", *range(loaded.num_heads)], key=f"{key}-head",
                             format_func=lambda h: "mean of heads" if h == "mean" else f"head {h}")
    if not removed:
        st.info("Choose at least one token to remove from the context.")
        return
    comparison = attention_mask_comparison(loaded, text, removed)
    after_all = comparison.after(mode)

    def pick(att):
        return head_mean(att)[layer] if head == "mean" else att[layer, head]

    before, after = pick(comparison.before), pick(after_all)
    labels, marked = list(comparison.tokens), [i for i, r in enumerate(comparison.removed) if r]
    left, right = st.columns(2)
    _plot(left, charts.attention_heatmap(before, labels, highlight=marked, title="before"), f"{key}-before", presenter)
    _plot(right, charts.attention_heatmap(after, labels, highlight=marked, title=f"after ({mode})"),
          f"{key}-after", presenter)
    if mode == "keys":
        st.markdown("**Keys only**: the removed columns are 0, no token reads them. Every row still sums to 1: "
                    "softmax renormalises each row over the tokens left. The removed tokens' own rows still read "
                    "the others (this is the padding mask every BERT uses).")
    else:
        st.markdown("**Keys and queries**: as the formula says, a_ij = 0 when token i or token j is removed, so the "
                    "removed tokens' rows are all 0 as well: they read nothing, their attention output is 0 and only "
                    "the residual connection carries them to the next layer. The other rows still sum to 1.")
    query = next((i for i in tokens.mask_positions if not comparison.removed[i]), 0)
    st.markdown(_renormalisation_note(head_mean(comparison.before)[0], comparison.removed, labels, query))
    _plot(st, concept_charts.row_sums_bars(before.sum(-1), after.sum(-1), labels, "row sums"), f"{key}-sums",
          presenter)


# ----------------------------------------------------------------------------- the Explore entry


def concepts_entry(loaded: LoadedModel, text: str, seed: int) -> None:
    """Explore's entry: one toggle opens the three formulas on the current text (computed only when open)."""
    if not st.toggle("Show the masking formulas on this text: X⊙M, W⊙M, a_ij = 0", key="concepts-open"):
        return
    concept = st.segmented_control("Formula", list(CONCEPTS), format_func=CONCEPTS.get, default="input",
                                   key="concepts-which") or "input"
    try:
        if concept == "input":
            input_mask_panel(loaded, text, seed, "concepts-x")
        elif concept == "parameter":
            parameter_mask_panel(loaded, text, seed, "concepts-w")
        else:
            attention_mask_panel(loaded, text, "concepts-a")
    except MaskLabError as exc:
        show_error(exc)
