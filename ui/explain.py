"""The Explore page's "why?" panels: attention, what-ifs (interference) and attributions.

Each panel is thin: read its widgets, call mlm_core, draw with mlm_core.views.charts, offer the
numbers as CSV/JSON. Widget keys start with xa- (attention), xi- (interference) or xt-
(attribution); keys whose options depend on the model or the tokens carry a short
signature of them, so a new sentence or model starts from fresh choices.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from mlm_core.errors import MaskLabError
from mlm_core.explain import attention, attribution
from mlm_core.explain import whatif as interference
from mlm_core.explain.exploration import Exploration
from mlm_core.explain.result_cache import model_token
from mlm_core.model.loading import LoadedModel
from mlm_core.policy import server_policy
from mlm_core.text.tokens import CATEGORIES, Tokens
from mlm_core.views import charts
from mlm_core.views import html as render
from mlm_core.views.lines import attention_lines
from mlm_core.views.words import word_view
from ui import why_link
from ui.common import is_latest, latest_result, show_error, working
from ui.drawn import Drawing, download_buttons, draw, drawing_size, drawn, for_chart

IMAGE_FORMATS = ("png", "svg")
ATTENTION_VIEWS = tuple(why_link.VIEWS.values())  # the one list of views (with their short names for links)
WHATIFS = tuple(why_link.WHATIF_KINDS.values())
EVERY = -1  # the line view's "every token": no line stands out
WHATIF_RUNNING = "Running the what-if …"


# --------------------------------------------------------------------------- shared helpers


def _model_sig(loaded: LoadedModel) -> str:
    return f"{loaded.num_layers}x{loaded.num_heads}"


@dataclass(frozen=True)
class Seen:
    """What the model read in an exploration, in the form the panels need."""

    tokens: Tokens  # the model's input ids and tokens, with the text's word ids and specials
    positions: list[int]  # predicted positions (masked, random, kept)
    originals: dict[int, int]  # position -> original id, where known (clicked or chosen by a strategy)
    exclude: list[bool] | None  # positions the exploration already removed from the context
    typed: list[int]  # masks the user typed (no original word)
    sig: str  # short signature of the input, for widget keys


KEPT_ATTENTION_BYTES = 8_000_000  # about 170 tokens on a 6-layer, 12-head model


def worth_keeping(exploration: Exploration) -> bool:
    """Keep a session's latest exploration between clicks unless its attentions are large: a
    512-token text gives 75 MB on a 6-layer, 12-head model; those are recomputed instead."""
    attentions = exploration.prediction.attentions
    return attentions is None or attentions.nbytes <= KEPT_ATTENTION_BYTES


def seen(loaded: LoadedModel, exploration: Exploration) -> Seen:
    """What the panels read from one result: computed once per result (every panel, every rerun asks)."""
    return drawn(exploration, "seen", lambda: _seen(loaded, exploration))


def _seen(loaded: LoadedModel, exploration: Exploration) -> Seen:
    tokens = exploration.tokens.with_ids(exploration.input_ids, loaded.tokenizer)
    prediction = exploration.prediction
    excluded = [kind == "excluded" for kind in exploration.kinds]
    return Seen(
        tokens=tokens,
        positions=list(prediction.positions),
        originals={p.position: p.original_id for p in prediction.predictions if p.original_id is not None},
        exclude=excluded if any(excluded) else None,
        typed=[p for p in prediction.positions if exploration.tokens.ids[p] == loaded.mask_token_id],
        sig=hashlib.sha1(repr((exploration.input_ids, exploration.kinds)).encode()).hexdigest()[:8],
    )


def charted_count(exploration: Exploration) -> int:
    """How many masks get a chart of their own on the Explore page: the first ``max_charts_per_page``.

    The rest go into one table (``guesses_table``): 2,500 masks once drew 2,884 charts and sent 14 MB
    to the browser. The what-if panel charts only what this leaves of the page's allowance.
    """
    return min(len(exploration.prediction.predictions), server_policy().max_charts_per_page)


def guesses_table(exploration: Exploration, guesses) -> pd.DataFrame:
    """One row per mask in ``guesses``: its position, kind, top guesses with their probabilities, and
    the original word (rank) where known; for the masks that get no chart of their own."""
    rows = [
        {
            "position": guess.position,
            "kind": exploration.kinds[guess.position],
            "top guesses": ", ".join(f"{c.token} {c.prob:.1%}" for c in guess.top),
            "original": guess.original_token or "",
            "original rank": guess.original_rank,
            "filled": guess.fill_step,
        }
        for guess in guesses
    ]
    return pd.DataFrame(rows).set_index("position")


def _numbered(labels) -> list[str]:
    """Unique row/column names for tables: '3 the'."""
    return [f"{i} {label}" for i, label in enumerate(labels)]


def _image_format(prefix: str) -> str:
    return st.radio("Chart image", IMAGE_FORMATS, horizontal=True, key=f"{prefix}-image",
                    format_func=str.upper, help="The camera icon above each chart downloads it in this format.")


def _chart(figure, key: str, name: str, image_format: str, on_select=None) -> None:
    """``on_select``: a callback for a click on a point (the chart then keeps its selection in ``key``)."""
    config = {"toImageButtonOptions": {"format": image_format, "filename": name, "scale": 2}, "displaylogo": False}
    if on_select is None:
        st.plotly_chart(for_chart(figure), key=key, config=config)
    else:
        st.plotly_chart(for_chart(figure), key=key, config=config, on_select=on_select, selection_mode="points")


def _downloads(frame: pd.DataFrame, record: dict, name: str, key: str) -> None:
    """The numbers behind a table without a chart of its own (the what-ifs), as CSV and JSON."""
    download_buttons(draw(None, frame, record, name), key)


def _shown(drawing: Drawing, prefix: str, image_format: str, caption: str = "",
           on_select=None) -> tuple[str, pd.DataFrame]:
    """A panel's tail: the chart (key ``{prefix}-chart``), the downloads of its numbers (``{prefix}-data``)
    and (caption, table) for the page's report."""
    _chart(drawing.figure, f"{prefix}-chart", drawing.name, image_format, on_select)
    download_buttons(drawing, f"{prefix}-data")
    return caption, drawing.frame


def _matrix_record(matrix: np.ndarray, labels, **settings) -> tuple[pd.DataFrame, dict]:
    names = _numbered(labels)
    frame = pd.DataFrame(np.asarray(matrix, dtype=float), index=names, columns=names)
    return frame, {"tokens": list(labels), "matrix": np.asarray(matrix, dtype=float).round(6).tolist(), **settings}


def _numbers_caption(what: str, settings: dict) -> str:
    """'Attention: One head, layer 1, head 0': the settings that say which numbers a table holds."""
    names = ("layer", "head", "position", "metric", "target", "residual", "mode", "merged_words")
    shown = [f"{name.replace('_', ' ')} {settings[name]}" for name in names
             if settings.get(name) is not None and settings.get(name) is not False]
    return f"{what}: " + ", ".join([str(settings.get("view", "")), *shown]).strip(", ")


def _position_label(exploration: Exploration, position: int) -> str:
    guess = next(p for p in exploration.prediction.predictions if p.position == position)
    return f"position {position} (guess '{guess.top[0].token}')"


# --------------------------------------------------------------------------- attention


def _default(key: str, value) -> str:
    """``key`` with ``value`` as its widget's default unless a link or the user set it: the default goes into
    the session rather than the widget's arguments, so the widget keeps one identity and no warning says
    its value was set twice."""
    st.session_state.setdefault(key, value)
    return key


def _focus_from_click(focus_key: str, n: int) -> None:
    """A click on a token of the line view makes it the one whose lines stand out; a click elsewhere clears."""
    points = (st.session_state.get("xa-chart") or {}).get("selection", {}).get("points", [])
    rows = [p.get("y") for p in points if isinstance(p.get("y"), (int, float))]
    token = next((int(y) for y in rows if float(y).is_integer() and 0 <= y < n), EVERY)
    st.session_state[focus_key] = token


def attention_panel(loaded: LoadedModel, exploration: Exploration) -> tuple[str, pd.DataFrame] | None:
    """Where the model looks: heads, layers, aggregates, the mask's view, masked vs unmasked.

    Returns the shown numbers as (caption, table) for the page's report; None when nothing is shown.
    """
    view_of = seen(loaded, exploration)
    tokens, positions = view_of.tokens, view_of.positions
    sig = _model_sig(loaded)
    try:
        att = exploration.prediction.attentions  # (L, H, T, T) of exactly these ids and exclusions
        if att is None:
            att = attention.attention_maps(loaded, tokens.ids, view_of.exclude)
    except MaskLabError as exc:
        st.info(str(exc))  # e.g. a text longer than one window: not a mistake, just not shown
        return
    n_layers, n_heads = att.shape[:2]
    link = why_link.attention_fields(sig, view_of.sig, n_layers, n_heads, positions, len(tokens.ids))
    why_link.restore_attention(link)  # the view and its inputs go into the link, like the rest of the page

    top = st.columns([3, 2, 2])
    view = top[0].selectbox("View", ATTENTION_VIEWS, key="xa-view")
    try:
        return _attention_view(loaded, exploration, att, view_of, view, top)
    finally:
        why_link.save_attention(link, view)


def _attention_view(loaded: LoadedModel, exploration: Exploration, att: np.ndarray, view_of: Seen, view: str,
                    top) -> tuple[str, pd.DataFrame] | None:
    tokens, positions = view_of.tokens, view_of.positions
    sig = _model_sig(loaded)
    n_layers, n_heads = att.shape[:2]
    merge = top[1].toggle("Merge word pieces", key="xa-merge",
                          help="Rows averaged, columns summed over a word's pieces.")
    with top[2]:
        image_format = _image_format("xa")

    words = word_view(tokens.tokens, tokens.word_ids, loaded.tokenizer, merge)
    labels = list(words.labels)
    highlight = words.positions(positions)

    def layer_select(label: str = "Layer") -> int:
        return st.selectbox(label, range(n_layers), format_func=lambda i: f"layer {i}",
                            key=_default(f"xa-layer-{sig}", n_layers - 1))

    def head_select(with_mean: bool = False) -> int | None:
        """A head, or None for the mean of the heads (a string option: a selectbox shows None as no choice)."""
        options = ([why_link.MEAN] if with_mean else []) + list(range(n_heads))
        head = st.selectbox("Head", options, format_func=lambda h: "mean of heads" if h == why_link.MEAN
                            else f"head {h}", key=f"xa-head-{sig}{'-m' if with_mean else ''}")
        return None if head == why_link.MEAN else head

    def position_select() -> int:
        return st.selectbox("Masked position", positions, format_func=lambda p: _position_label(exploration, p),
                            key=f"xa-position-{view_of.sig}")

    settings: dict = {"view": view, "merged_words": merge}  # the widgets' choices: with the result, all a view draws from
    slug = view.lower().replace(" × ", "x").replace(" ", "-")
    name = f"attention-{slug}"  # the downloads' file name
    layer_rows = [f"layer {i}" for i in range(n_layers)]
    cols = st.columns(3)
    if view in ("One head", "Mean over heads", "All heads of a layer"):
        with cols[0]:
            layer = layer_select()
        settings["layer"] = layer
        if view == "One head":
            with cols[1]:
                head = head_select()
            settings["head"] = head

        def build() -> Drawing:
            extra = {}
            if view == "One head":
                matrix = words.matrix(att[layer, head])
                figure = charts.attention_heatmap(matrix, labels, highlight, f"Layer {layer}, head {head}")
            elif view == "Mean over heads":
                matrix = words.matrix(attention.head_mean(att)[layer])
                figure = charts.attention_heatmap(matrix, labels, highlight, f"Layer {layer}, mean of {n_heads} heads")
            else:
                grid = words.matrix(att[layer])  # (H, W, W)
                figure = charts.attention_grid(grid, labels, highlight, title=f"Layer {layer}: every head")
                matrix = grid.mean(axis=0)
                extra = {"note": "matrix: mean of the heads", "heads": grid.round(6).tolist()}
            return draw(figure, *_matrix_record(matrix, labels, **settings, **extra), name)
    elif view == why_link.LINES:
        with cols[0]:
            layer = layer_select()
        with cols[1]:
            head = head_select(with_mean=True)
        focus_key = f"xa-focus-{view_of.sig}"
        if st.session_state.get(focus_key, EVERY) not in range(EVERY, len(labels)):  # fewer rows once merged
            st.session_state[focus_key] = EVERY
        focus = cols[2].selectbox("Lines of", [EVERY, *range(len(labels))], key=focus_key,
                                  format_func=lambda i: "every token" if i == EVERY else f"{i} {labels[i]}",
                                  help="Draw this token's lines in red. Clicking a token in the chart "
                                  "does the same; hovering one names its strongest lines.")
        settings.update(layer=layer, head=head, focus=focus)

        def build() -> Drawing:
            matrix = words.matrix(attention.head_mean(att)[layer] if head is None else att[layer, head])
            which = "mean of heads" if head is None else f"head {head}"
            figure = attention_lines(matrix, labels, highlight, f"Layer {layer}, {which}",
                                     None if focus == EVERY else focus)
            return draw(figure, *_matrix_record(matrix, labels, **settings), name)

        return _shown(drawn(exploration, ("attention", *settings.items()), build, drawing_size), "xa", image_format,
                      _numbers_caption("Attention", settings),
                      on_select=lambda: _focus_from_click(focus_key, len(labels)))
    elif view == "Rollout":
        with cols[0]:
            layer = layer_select("Up to layer")
        residual = cols[1].slider("Residual weight", 0.0, 1.0, step=0.05, key=_default("xa-residual", 0.5),
                                  help="Weight of the skip connection in each layer: Â = r·I + (1−r)·A.")
        settings.update(layer=layer, residual=residual)

        def build() -> Drawing:
            flow = latest_result("rollout", (model_token(loaded), view_of.sig, residual),
                                 lambda: attention.rollout(att, residual))  # every layer: a new layer reuses it
            matrix = words.matrix(flow[layer])
            figure = charts.attention_heatmap(matrix, labels, highlight, f"Rollout through layers 0–{layer}")
            return draw(figure, *_matrix_record(matrix, labels, **settings), name)
    elif view == "From the mask":
        with cols[0]:
            position = position_select()
        with cols[1]:
            head = head_select(with_mean=True)
        settings.update(position=position, head=head)

        def build() -> Drawing:
            rows = attention.from_position(words.matrix(att), words.group_of(position))  # (L, H, W)
            values = rows.mean(axis=1) if head is None else rows[:, head]  # (L, W)
            figure = charts.from_position_heatmap(values, labels, words.group_of(position),
                                                  f"Where position {position} looks, layer by layer")
            frame = pd.DataFrame(values, index=layer_rows, columns=_numbered(labels))
            return draw(figure, frame, {"tokens": labels, "layers": values.round(6).tolist(), **settings},
                        f"attention-from-{position}")
    elif view == "Layer × head overview":
        metric = cols[0].selectbox("Measure", attention.OVERVIEW_METRICS, key="xa-metric",
                                   help="entropy: how spread out (bits); max: the largest weight; "
                                   "to token: the weight given to one token.")
        with cols[1]:
            position = position_select()
        target = None
        if metric == "to token":
            target = cols[2].selectbox("To token", range(len(labels)), format_func=lambda i: f"{i} {labels[i]}",
                                       key=f"xa-target-{view_of.sig}-{merge}")
        settings.update(position=position, metric=metric, target=target)

        def build() -> Drawing:
            values = attention.head_overview(words.matrix(att), words.group_of(position), metric, target)
            figure = charts.layer_head_heatmap(values, f"{metric} from position {position}", metric)
            frame = pd.DataFrame(values, index=layer_rows, columns=[f"head {h}" for h in range(n_heads)])
            return draw(figure, frame, {"values": values.round(6).tolist(), **settings}, "attention-overview")
    else:  # masked vs unmasked
        with cols[0]:
            layer = layer_select()
        with cols[1]:
            head = head_select(with_mean=True)
        mode = cols[2].radio("Show", ["side by side", "difference"], horizontal=True, key="xa-compare")
        plain_ids = attention.unmasked_ids(exploration.tokens.ids, exploration.prediction.filled_ids,
                                           loaded.mask_token_id)
        if view_of.typed:
            st.caption("Typed masks have no original word: the unmasked sentence uses the model's first guess.")
        try:
            # The masked side is the prediction's own pass (``att``); only the unmasked sentence needs a pass,
            # kept for the session so that changing the layer, head or mode does not run it again.
            with_mask = att
            unmasked_key = (model_token(loaded), tuple(plain_ids), view_of.sig)
            with working("Running the unmasked sentence …", not is_latest("unmasked-attention", unmasked_key)):
                without = latest_result("unmasked-attention", unmasked_key,
                                        lambda: attention.attention_maps(loaded, plain_ids, view_of.exclude))
        except MaskLabError as exc:
            show_error(exc)
            return
        plain_labels = list(word_view(loaded.tokenizer.convert_ids_to_tokens(plain_ids), tokens.word_ids,
                                      loaded.tokenizer, merge).labels)

        def pick(a: np.ndarray) -> np.ndarray:
            return words.matrix(a[layer].mean(axis=0) if head is None else a[layer, head])

        a, b = pick(with_mask), pick(without)
        which = "mean of heads" if head is None else f"head {head}"
        settings.update(layer=layer, head=head, mode=mode, unmasked_tokens=plain_labels,
                        unmasked_matrix=b.round(6).tolist())
        if mode == "difference":
            matrix = a - b
            figure = charts.attention_heatmap(matrix, labels, highlight,
                                              f"Masked − unmasked, layer {layer}, {which}", diverging=True)
        else:
            matrix = a
            figure = charts.side_by_side_heatmaps(a, b, labels, plain_labels, ["masked", "unmasked"], highlight)
        unkept = draw(figure, *_matrix_record(matrix, labels, **settings), name)  # a pass of its own: not kept
        return _shown(unkept, "xa", image_format, _numbers_caption("Attention", settings))
    # Every session that shows this result with these settings gets the same drawing (ui.drawn).
    return _shown(drawn(exploration, ("attention", *settings.items()), build, drawing_size,
                        "Drawing the attention view …"), "xa", image_format, _numbers_caption("Attention", settings))


# --------------------------------------------------------------------------- interference


def _show_whatifs(whatifs, name: str, image_format: str, extra: dict | None = None, charts_left: int = 0) -> None:
    """The table of every position, then a chart for each of the first ``charts_left`` of them."""
    rows = [
        {
            "position": w.position,
            "token followed": w.reference_token,
            "p before": w.reference_before,
            "p after": w.reference_after,
            "change": w.change,
            "top before": ", ".join(c.token for c in w.before.top),
            "top after": ", ".join(c.token for c in w.after.top),
        }
        for w in whatifs
    ]
    frame = pd.DataFrame(rows).set_index("position")
    st.dataframe(frame.style.format({"p before": "{:.2%}", "p after": "{:.2%}", "change": "{:+.2%}"}))
    charted = whatifs[:charts_left]
    if len(charted) < len(whatifs):
        st.caption(f"Charts for {len(charted)} of the {len(whatifs)} positions (this server draws at most "
                   f"{server_policy().max_charts_per_page} per page); the table above has every one.")
    columns = st.columns(min(3, len(charted))) if charted else []
    for n, w in enumerate(charted):
        title = f"position {w.position}: '{w.reference_token}' {w.reference_before:.1%} → {w.reference_after:.1%}"
        with columns[n % len(columns)]:
            _chart(charts.whatif_bars(w.before, w.after, w.reference_id, title), f"xi-chart-{n}",
                   f"{name}-{w.position}", image_format)
    _downloads(frame, {"whatif": name, **(extra or {}), "positions": [w.as_dict() for w in whatifs]}, name,
               "xi-data")


def interference_panel(loaded: LoadedModel, exploration: Exploration) -> None:
    """What if the context loses tokens, heads are switched off or weights are pruned?"""
    link = why_link.whatif_fields(_model_sig(loaded), loaded.num_layers, loaded.num_heads)
    why_link.restore_whatif(link)
    try:
        _interference(loaded, exploration)
    finally:
        why_link.save_whatif(link, st.session_state.get("xi-kind", WHATIFS[0]))


def _interference(loaded: LoadedModel, exploration: Exploration) -> None:
    view_of = seen(loaded, exploration)
    tokens, positions, originals = view_of.tokens, view_of.positions, view_of.originals
    ids, base = list(tokens.ids), view_of.exclude
    sig = _model_sig(loaded)
    top = st.columns([3, 2])
    kind = top[0].radio("What if…", WHATIFS, horizontal=True, key="xi-kind")
    with top[1]:
        image_format = _image_format("xi")
    top_k = len(exploration.prediction.predictions[0].top)  # as many guesses as the page shows
    charts_left = server_policy().max_charts_per_page - charted_count(exploration)  # the page's allowance
    if base:
        st.caption("Tokens the masking strategy already excluded stay excluded before and after.")
    try:
        if kind == "Exclude tokens":
            rules = st.multiselect("Remove every…", CATEGORIES, key="xi-rules",
                                   help="Categories come from the whole word: stopword, punctuation, number, content.")
            choosable = [i for i in tokens.eligible_positions if i not in positions]
            picked = st.multiselect("…and these tokens", choosable, format_func=lambda i: f"{i} {tokens.tokens[i]}",
                                    key=f"xi-tokens-{view_of.sig}")
            exclude = interference.exclusion(tokens, picked, rules, keep=positions)
            kinds = ["masked" if i in positions else ("excluded" if exclude[i] or (base and base[i]) else None)
                     for i in range(len(ids))]
            st.markdown(render.token_chips(tokens.tokens, kinds, tokens.special), unsafe_allow_html=True)
            if not any(exclude):
                st.info("Pick tokens or a rule: they are removed from the context (no position attends to them).")
                return
            with working(WHATIF_RUNNING):
                whatifs = interference.exclude_tokens(loaded, ids, positions, exclude, originals, top_k, base)
            removed = [tokens.tokens[i] for i, e in enumerate(exclude) if e]
            _show_whatifs(whatifs, "exclude", image_format, {"excluded": removed, "rules": rules}, charts_left)
        elif kind == "Switch heads off":
            heads = [(la, h) for la in range(loaded.num_layers) for h in range(loaded.num_heads)]
            cols = st.columns(2)
            whole = cols[0].multiselect("Every head of layers", range(loaded.num_layers),
                                        format_func=lambda la: f"layer {la}", key=f"xi-layers-off-{sig}")
            single = cols[1].multiselect("Single heads", heads, format_func=lambda lh: f"layer {lh[0]} · head {lh[1]}",
                                         key=f"xi-heads-off-{sig}")
            off = sorted(set(single) | {(la, h) for la in whole for h in range(loaded.num_heads)})
            if off:
                with working(WHATIF_RUNNING):
                    whatifs = interference.mask_heads(loaded, ids, positions, off, originals, top_k, base)
                _show_whatifs(whatifs, "heads-off", image_format, {"heads_off": off}, charts_left)
            else:
                st.info("Choose heads (or whole layers) to switch off.")
            _head_importance(loaded, exploration, view_of, image_format)
        else:
            cols = st.columns(3)
            sparsity = cols[0].slider("Sparsity", 0.0, 0.95, step=0.05, key=_default("xi-sparsity", 0.3),
                                      help="Fraction of the encoder's linear weights set to zero, smallest first.")
            scope = cols[1].radio("Threshold", interference.PRUNE_SCOPES, horizontal=True, key="xi-scope",
                                  format_func=lambda s: {"layer": "per weight matrix", "global": "global"}[s])
            layers = cols[2].multiselect("Layers", range(loaded.num_layers), format_func=lambda la: f"layer {la}",
                                         key=_default(f"xi-prune-layers-{sig}", list(range(loaded.num_layers))))
            if not layers:
                st.info("Choose at least one layer to prune.")
                return
            with working(WHATIF_RUNNING):
                report = interference.prune(loaded, ids, positions, sparsity, scope, layers, originals, top_k, base)
            st.caption(f"{report.pruned:,} of {report.total:,} weights set to zero ({report.achieved:.1%}); "
                       "the shared model is unchanged.")
            _show_whatifs(report.whatifs, "prune", image_format,
                          {"sparsity": sparsity, "scope": scope, "layers": layers, "pruned": report.pruned,
                           "total": report.total}, charts_left)
    except MaskLabError as exc:
        show_error(exc)


def _head_importance(loaded: LoadedModel, exploration: Exploration, view_of: Seen, image_format: str) -> None:
    st.markdown("**Head importance**: how much the followed token's probability drops when one head is off.")
    cols = st.columns([2, 1])
    position = cols[0].selectbox("Masked position", view_of.positions,
                                 format_func=lambda p: _position_label(exploration, p),
                                 key=f"xi-importance-position-{view_of.sig}")
    reference = view_of.originals.get(position)
    request = (loaded.name, view_of.sig, position, reference)
    if cols[1].button("Measure every head", key="xi-importance-run"):
        drops, p_base, reference = interference.head_importance(loaded, view_of.tokens.ids, position, reference,
                                                                view_of.exclude)
        st.session_state["xi-importance-result"] = (request, drops, p_base, reference)
    stored = st.session_state.get("xi-importance-result")
    if not stored or stored[0] != request:
        return
    _, drops, p_base, reference = stored
    token = loaded.tokenizer.convert_ids_to_tokens(reference)
    title = f"Drop in p('{token}') (now {p_base:.1%}) with one head off"
    frame = pd.DataFrame(drops, index=[f"layer {i}" for i in range(len(drops))],
                         columns=[f"head {h}" for h in range(drops.shape[1])])
    _shown(draw(charts.layer_head_heatmap(drops, title, "drop", diverging=True, percent=True), frame,
                {"position": position, "token": token, "p_all_heads": p_base, "drops": drops.round(6).tolist()},
                "head-importance"), "xi-importance", image_format)


# --------------------------------------------------------------------------- attribution


def attribution_chips(labels, scores, highlight=()) -> str:
    """Tokens tinted by score (red raised the target, blue lowered it); text escaped by render.chip."""
    scale = float(np.max(np.abs(scores))) or 1.0
    parts = []
    for i, (label, score) in enumerate(zip(labels, scores)):
        alpha = min(1.0, abs(float(score)) / scale) * 0.85
        colour = f"rgba(214,39,40,{alpha:.2f})" if score > 0 else f"rgba(31,119,180,{alpha:.2f})"
        parts.append(render.chip(label, colour, title=f"{i}: {float(score):+.4f}", strong=i in highlight))
    return '<div style="line-height:2.1">' + "".join(parts) + "</div>"


def attribution_panel(loaded: LoadedModel, exploration: Exploration) -> tuple[str, pd.DataFrame] | None:
    """Which context tokens raised or lowered the probability of one token at one mask (captum).

    Returns the shown scores as (caption, table) for the page's report; None before Explain is pressed.
    """
    view_of = seen(loaded, exploration)
    link = why_link.attribution_fields(view_of.sig, view_of.positions)
    why_link.restore_attribution(link)
    try:
        return _attribution(loaded, exploration, view_of)
    finally:
        why_link.save_attribution(link, st.session_state.get("xt-method", attribution.METHODS[0]))


def _attribution(loaded: LoadedModel, exploration: Exploration, view_of: Seen) -> tuple[str, pd.DataFrame] | None:
    tokens, positions = view_of.tokens, view_of.positions
    cols = st.columns(3)
    position = cols[0].selectbox("Masked position", positions, format_func=lambda p: _position_label(exploration, p),
                                 key=f"xt-position-{view_of.sig}")
    target = cols[1].text_input("Token to explain", key="xt-target", placeholder="the first guess",
                                help="Any single token of the vocabulary; empty: the model's first guess.").strip()
    method = cols[2].radio("Method", attribution.METHODS, format_func=attribution.METHOD_LABELS.get, key="xt-method",
                           help="Integrated Gradients is exact up to the reported delta; the others take one "
                           "backward pass each.")
    steps, baseline = attribution.DEFAULT_STEPS, "pad"
    if method == "ig":
        cols = st.columns(2)
        steps = cols[0].slider("Steps", 1, attribution.MAX_STEPS, key=_default("xt-steps", attribution.DEFAULT_STEPS),
                               help="More steps: smaller convergence delta, longer wait.")
        baseline = cols[1].selectbox("Baseline token", attribution.BASELINES, key="xt-baseline",
                                     help="The baseline replaces every context token by this one; special tokens "
                                     "and the masks stay.")
    cols = st.columns([1, 1, 2])
    merge = cols[0].toggle("Merge word pieces", key="xt-merge")
    with cols[2]:
        image_format = _image_format("xt")
    request = (loaded.name, view_of.sig, position, target, method, steps if method == "ig" else None, baseline)
    if cols[1].button("Explain", key="xt-run", type="primary"):
        try:
            with st.spinner("Computing attributions …"):
                result = attribution.attribute(loaded, tokens.ids, position, target or None, method, steps, baseline,
                                               attention_exclude=view_of.exclude)
            st.session_state["xt-result"] = (request, result)
        except MaskLabError as exc:
            show_error(exc)
            return
    stored = st.session_state.get("xt-result")
    if not stored or stored[0] != request:
        st.caption("Choose the settings, then press Explain.")
        return
    result = stored[1]
    words = word_view(tokens.tokens, tokens.word_ids, loaded.tokenizer, merge)
    labels, scores, highlight = list(words.labels), words.scores(result.scores), words.positions(positions)

    summary = (f"**{attribution.METHOD_LABELS[result.method]}** of p('{render.escape_markdown(result.target_token)}') = "
               f"{result.target_prob:.2%}")
    if result.method == "ig":
        summary += (f" · baseline \\[{result.baseline}\\] gives {result.baseline_prob:.2%} · {result.steps} steps "
                    f"in batches of {result.internal_batch_size} · convergence delta {result.delta:+.2e}")
    st.markdown(summary + f" · {result.seconds:.2f} s")
    st.markdown(attribution_chips(labels, scores, highlight), unsafe_allow_html=True)
    title = f"Attribution to '{result.target_token}' at position {result.position}"
    frame = pd.DataFrame({"token": labels, "score": scores})
    record = dict(result.as_dict(), tokens=labels, scores=[float(s) for s in scores], merged_words=merge)
    caption = f"{attribution.METHOD_LABELS[result.method]} of p('{result.target_token}') at position {result.position}"
    return _shown(draw(charts.attribution_bars(scores, labels, highlight, title), frame, record,
                       f"attribution-{result.method}"), "xt", image_format,
                  _numbers_caption("Attribution", {"view": caption, "merged_words": merge}))
