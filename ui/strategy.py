"""Masking controls generated from the strategy registry, with their state in the URL.

Every parameter's widget, default, range and help text comes from ``mlm_core.masking``'s
``ParamSpec``s, and the link is read and written by ``mlm_core.links`` (the one codec for a
masking setting), so the pages, the CLI and shared links always agree. The explorer's panel
(``masking_controls``, also on Batch and Fine-tune) and Compare's sides share the widgets here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import streamlit as st

from mlm_core import links
from mlm_core.links import MaskingSetting
from mlm_core.masking import EXCLUDE_RULES, MAIN_STRATEGIES, PROTECT_RULES, STRATEGIES, Corruption
from mlm_core.settings import ParamSpec
from mlm_core.views.html import escape_markdown
from ui.common import url_ignored, url_put, url_set

NONE = links.NONE_LABEL  # the first choice of every strategy list
SPLIT_PARAMS = tuple(f.name for f in dataclasses.fields(Corruption))  # in the 80/10/10 expander
STRATEGY_HELP = {
    NONE: "only the masks you type or click are predicted, each alone, as in a fill-mask widget.",
    "random": "masks a share of the tokens on top of yours, as BERT was trained: each chosen token becomes the "
              "mask token 80% of the time, a random token 10%, and stays unchanged 10%.",
    "whole-word": "like random, but all pieces of a chosen word are masked together.",
    "span": "SpanBERT: runs of whole words, their lengths drawn from a geometric distribution.",
    "rule-based": "masks (or protects) stopwords, punctuation, numbers, a word list or a regular expression.",
    "adaptive": "tokens the model finds hard (high surprisal) are chosen more often.",
}
# The link fields each panel shows (and so reads, warns about and writes); p_<param> besides.
PANEL_FIELDS = (links.STRATEGY, links.PRIVACY.name, links.PROTECT.name, links.EXCLUDE.name, links.SEED.name,
                links.LANGUAGE.name)
SIDE_FIELDS = (links.STRATEGY, links.EXCLUDE.name, links.HEADS.name, links.SEED.name)


# --------------------------------------------------------------------------- the link


def link_setting(prefix: str, default: str, fields: Sequence[str]) -> MaskingSetting:
    """The masking setting in the link (fields under ``prefix``); a warning for each shown field it gets wrong."""
    setting, problems = links.decode(st.query_params.to_dict(), prefix, default, MAIN_STRATEGIES)
    for problem in problems:
        if problem.field[len(prefix):] in fields:  # parameters are checked by strategy_params
            url_ignored(problem.field, problem.raw, problem.used, problem.reason)
    return setting


def write_link(setting: MaskingSetting, prefix: str, fields: Sequence[str]) -> None:
    """The panel's fields and the strategy's non-default parameters into the link; stale ones out."""
    written = links.encode(setting, prefix)
    params = f"{prefix}{links.PARAM_PREFIX}"
    for stale in [k for k in st.query_params if k.startswith(params) and k not in written]:
        del st.query_params[stale]
    for name, value in written.items():
        if name.startswith(params):
            url_put(name, value)
    for field in fields:
        url_set(f"{prefix}{field}", written.get(f"{prefix}{field}", ""))


# --------------------------------------------------------------------------- widgets


def param_widget(spec: ParamSpec, key: str, value):
    """The widget for one parameter: its plain label and help (with the technical name) from the ParamSpec."""
    label, help_text = spec.label, spec.help
    if spec.kind == "float" and spec.min is not None and spec.max is not None:
        return st.slider(label, float(spec.min), float(spec.max), float(value), 0.01, key=key, help=help_text)
    if spec.kind in ("float", "int"):
        cast = float if spec.kind == "float" else int
        return st.number_input(label, min_value=None if spec.min is None else cast(spec.min),
                               max_value=None if spec.max is None else cast(spec.max), value=cast(value),
                               key=key, help=help_text)
    if spec.kind == "bool":
        return st.checkbox(label, bool(value), key=key, help=help_text)
    if spec.kind == "choice":
        return st.selectbox(label, spec.choices, index=spec.choices.index(value), key=key, help=help_text,
                            format_func=spec.shown_choice)
    if spec.kind == "multi_choice":
        return st.multiselect(label, spec.choices, default=list(value), key=key, help=help_text,
                              format_func=spec.shown_choice)
    shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return st.text_input(label, shown, key=key, help=help_text)


def strategy_params(name: str, key: str, prefix: str = "", own_language: bool = True) -> dict:
    """Widgets for ``name``'s parameters; returns {param: value} (split settings in an expander).

    Widget keys are ``{key}-{name}-{param}``; initial values come from the link's
    ``{prefix}p_{param}``, so two panels on one page (Compare's A and B) keep separate links.
    ``own_language=False`` leaves the language out: the panel sets it for all its steps at once.
    """
    linked, problems = links.decode_params(st.query_params.to_dict(), name, prefix)
    for problem in problems:
        url_ignored(problem.field, problem.raw, problem.used, problem.reason)
    values = {}

    def widget(spec: ParamSpec) -> None:
        values[spec.name] = param_widget(spec, f"{key}-{name}-{spec.name}", linked.get(spec.name, spec.default))

    for spec in STRATEGIES[name].params:
        if spec.name in SPLIT_PARAMS:
            continue
        if name == "rule-based" and spec.name == "words" and values.get("rule") != "words":
            continue
        if name == "rule-based" and spec.name == "pattern" and values.get("rule") != "regex":
            continue
        if spec.name == links.LANGUAGE.name and not own_language:
            continue
        widget(spec)
    split = [spec for spec in STRATEGIES[name].params if spec.name in SPLIT_PARAMS]
    if split:
        with st.expander("What happens to chosen tokens (80/10/10)"):
            for spec in split:
                widget(spec)
    return values


def strategy_select(setting: MaskingSetting, key: str, help: str | None = None) -> str:
    """The strategy list (none first), on the link's strategy; returns a registry name or ``links.NONE``."""
    options = [NONE, *MAIN_STRATEGIES]
    wanted = NONE if setting.strategy == links.NONE else setting.strategy
    name = st.selectbox("Masking strategy", options, index=options.index(wanted), key=key, help=help)
    return links.NONE if name == NONE else name


def exclude_select(label: str, setting: MaskingSetting, key: str) -> str:
    return st.selectbox(label, EXCLUDE_RULES, index=EXCLUDE_RULES.index(setting.exclude),
                        format_func=lambda rule: rule or "nothing", key=key,
                        help="These tokens stay in the text but no token may look at them: their attention "
                        "weight is set to 0 (attention exclusion, link field exclude).")


def masking_controls(key: str = "mask", default: str = "random"):
    """The masking panel (Explore, Batch, Fine-tune). Returns (strategy or None, seed); writes the URL.

    ``default`` is the strategy when the link names none: Explore passes ``links.NONE`` (a typed mask is
    predicted alone, as in a fill-mask widget); a link that names a strategy keeps opening it.
    """
    link = link_setting("", default, PANEL_FIELDS)
    name = strategy_select(link, f"{key}-strategy", help="Which extra tokens are masked.  \n" + "  \n".join(
        f"**{n}**: {h}" for n, h in STRATEGY_HELP.items()))
    values = {} if name == links.NONE else strategy_params(name, key, own_language=False)
    language = param_widget(links.LANGUAGE, f"{key}-language", link.language)
    # Drawn only while open, as the share panel (ui.common.share_panel); folded, the link holds their values.
    privacy_on, protect, exclude = link.privacy, list(link.protect), link.exclude
    with st.expander("Privacy, protection and context exclusion", key=f"{key}-more", on_change="rerun") as more:
        if more.open:
            privacy_on, protect, exclude = _exclusion_widgets(link, key)
    seed_key = f"{key}-seed"
    if seed_key not in st.session_state:  # first run: the seed comes from the link
        st.session_state[seed_key] = link.seed

    def draw_again():
        st.session_state[seed_key] = (st.session_state[seed_key] + 1) % (links.SEED.max + 1)

    seed = int(st.number_input("Seed (the same seed repeats a demo)", links.SEED.min, links.SEED.max, key=seed_key))
    st.button("Draw again", key=f"{key}-draw", on_click=draw_again, disabled=name == links.NONE,
              help="A new random draw: the seed goes up by one.")

    setting = MaskingSetting(name, values, privacy_on, protect, exclude, seed=seed, language=language)
    strategy = setting.build()
    write_link(setting, "", PANEL_FIELDS)
    return strategy, seed


def _exclusion_widgets(link: MaskingSetting, key: str) -> tuple[bool, list[str], str]:
    """The folded part of the masking panel: privacy, never-mask rules, context exclusion."""
    privacy_on = st.checkbox("Privacy: replace names, addresses, places, e-mails, phone numbers and numbers first",
                             link.privacy, key=f"{key}-privacy",
                             help="Personal data is replaced by placeholders before the model or any strategy "
                             "sees the text (privacy masking, link field privacy). Names and places are found by "
                             "spaCy's English recogniser, loaded the first time it is needed (a few seconds).")
    protect = st.multiselect("Never mask", PROTECT_RULES, default=list(link.protect), key=f"{key}-protect",
                             help="No strategy may choose these words; they also leave the maskable tokens α "
                             "counts (protection rules, link field protect).")
    exclude = exclude_select("Remove from the context (attention exclusion)", link, f"{key}-exclude")
    return privacy_on, protect, exclude


def added_note(exploration, strategy) -> str | None:
    """Markdown saying what the strategy added to the typed and clicked masks; None without a strategy.

    The strategy's own choices are the positions with a label (typed and clicked masks have none), so a
    user sees which masks are theirs and which the strategy drew.
    """
    mask = exploration.mask
    if strategy is None or mask is None:
        return None
    what = strategy.describe()
    what = what[:1].upper() + what[1:]

    def words(positions):
        shown = ", ".join(f"“{exploration.tokens.tokens[p]}”" for p in positions[:12])
        return escape_markdown(shown + (f" and {len(positions) - 12} more" if len(positions) > 12 else ""))

    parts = []
    added = [p for p in mask.chosen_positions if mask.labels[p] >= 0]
    if added:
        n = len(added)
        how = [f"{count} {label}" for label, count in (
            ("replaced by a random token", sum(mask.kinds[p] == "random" for p in added)),
            ("left unchanged but predicted", sum(mask.kinds[p] == "kept" for p in added))) if count]
        parts.append(f"{what} added {n} mask{'s' * (n != 1)}: {words(added)}"
                     + (f" ({'; '.join(how)})" if how else "") + ".")
    excluded = mask.excluded_positions
    if excluded:
        n = len(excluded)
        parts.append(f"{n} token{'s' * (n != 1)} removed from the context (attention exclusion): {words(excluded)}.")
    if not parts:
        parts.append(f"The strategy ({strategy.describe()}) added no mask this time: only your masks are predicted.")
    return " ".join(parts)
