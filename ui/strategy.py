"""Masking controls generated from the strategy registry, with their state in the URL.

Every parameter's widget, default, range and help text comes from ``mlm_core.masking``'s
``ParamSpec``s, so the page, the CLI and shared links always agree.
"""

from __future__ import annotations

import streamlit as st

from mlm_core.errors import InputError
from mlm_core.explain.exploration import MAIN_STRATEGIES, build_strategy
from mlm_core.masking import STRATEGIES, params_of, strategy_from_params
from mlm_core.settings import ParamSpec
from ui.common import url_ignored

NONE = "none (typed or clicked masks only)"
SPLIT_PARAMS = ("mask_replace_prob", "random_replace_prob", "random_excludes_special")
PROTECT_RULES = ("stopwords", "punctuation", "numbers")
EXCLUDE_RULES = ("", "stopwords", "punctuation", "numbers")
STRATEGY_HELP = {
    "random": "BERT: each token chosen with probability p; chosen → [MASK] 80%, random 10%, unchanged 10%.",
    "whole-word": "All pieces of a chosen word are masked together.",
    "span": "SpanBERT: contiguous spans of whole words, lengths drawn from a geometric distribution.",
    "rule-based": "Mask (or protect) stopwords, punctuation, numbers, a word list or a regex.",
    "adaptive": "Tokens the model finds hard (high surprisal) are chosen more often.",
}


def url_value(spec: ParamSpec, prefix: str):
    """The parameter's value from the URL (``<prefix><name>``), or its default when absent or invalid."""
    raw = st.query_params.get(f"{prefix}{spec.name}")
    if raw is None:
        return spec.default
    try:
        return spec.parse(raw)
    except InputError as exc:  # a hand-edited link with a bad value falls back to the default
        url_ignored(f"{prefix}{spec.name}", raw, spec.format(spec.default), str(exc))
        return spec.default


def param_widget(spec: ParamSpec, key: str, value):
    label = spec.name.replace("_", " ")
    if spec.kind == "float" and spec.min is not None and spec.max is not None:
        return st.slider(label, float(spec.min), float(spec.max), float(value), 0.01, key=key, help=spec.help)
    if spec.kind in ("float", "int"):
        cast = float if spec.kind == "float" else int
        return st.number_input(label, min_value=None if spec.min is None else cast(spec.min),
                               max_value=None if spec.max is None else cast(spec.max), value=cast(value),
                               key=key, help=spec.help)
    if spec.kind == "bool":
        return st.checkbox(label, bool(value), key=key, help=spec.help)
    if spec.kind == "choice":
        return st.selectbox(label, spec.choices, index=spec.choices.index(value), key=key, help=spec.help)
    if spec.kind == "multi_choice":
        return st.multiselect(label, spec.choices, default=list(value), key=key, help=spec.help)
    shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return st.text_input(label, shown, key=key, help=spec.help)


def strategy_params(name: str, key: str, url_prefix: str = "p_") -> dict:
    """Widgets for ``name``'s parameters; returns {param: value} (split settings in an expander).

    Widget keys are ``{key}-{name}-{param}``; initial values come from ``{url_prefix}{param}`` in the
    URL, so two panels on one page (Compare's A and B) keep separate links.
    """
    specs = STRATEGIES[name].params
    values = {}
    main = [s for s in specs if s.name not in SPLIT_PARAMS]
    split = [s for s in specs if s.name in SPLIT_PARAMS]
    for spec in main:
        if name == "rule-based" and spec.name == "words" and values.get("rule") != "words":
            continue
        if name == "rule-based" and spec.name == "pattern" and values.get("rule") != "regex":
            continue
        values[spec.name] = param_widget(spec, f"{key}-{name}-{spec.name}", url_value(spec, url_prefix))
    if split:
        with st.expander("What happens to chosen tokens (80/10/10)"):
            for spec in split:
                values[spec.name] = param_widget(spec, f"{key}-{name}-{spec.name}", url_value(spec, url_prefix))
    return values


def masking_controls(key: str = "mask", default: str = "random"):
    """The explorer's masking panel. Returns (strategy or None, seed); writes the URL."""
    params = st.query_params
    options = [NONE, *MAIN_STRATEGIES]
    wanted = params.get("strategy", default)
    wanted = NONE if wanted == "none" else wanted  # the short spelling that the CLI also takes
    if wanted not in options:
        url_ignored("strategy", wanted, default, f"choose from none, {', '.join(MAIN_STRATEGIES)}")
        wanted = default
    name = st.selectbox("Masking strategy", options, index=options.index(wanted),
                        key=f"{key}-strategy", help="How positions are chosen. " + " ".join(
                            f"{n}: {h}" for n, h in STRATEGY_HELP.items()))
    values = {} if name == NONE else strategy_params(name, key)
    with st.expander("Privacy, protection and context exclusion"):
        privacy_on = st.checkbox("Privacy: replace e-mails, URLs, phone numbers and numbers first",
                                 params.get("privacy") == "1", key=f"{key}-privacy")
        protect = st.multiselect("Never mask", PROTECT_RULES, default=[
            r for r in params.get("protect", "").split(",") if r in PROTECT_RULES], key=f"{key}-protect")
        exclude = st.selectbox("Remove from the context (attention exclusion)", EXCLUDE_RULES,
                               index=EXCLUDE_RULES.index(params.get("exclude", "")) if params.get(
                                   "exclude", "") in EXCLUDE_RULES else 0,
                               format_func=lambda r: r or "nothing", key=f"{key}-exclude")
    seed_key = f"{key}-seed"
    if seed_key not in st.session_state:  # first run: the seed comes from the link
        raw = params.get("seed", "0")
        usable = raw.isdecimal() and int(raw) < 2**31
        if not usable:
            url_ignored("seed", raw, 0, "a whole number from 0 to 2147483647")
        st.session_state[seed_key] = int(raw) if usable else 0

    def draw_again():
        st.session_state[seed_key] = (st.session_state[seed_key] + 1) % 2**31

    seed = st.number_input("Seed (the same seed repeats a demo)", 0, 2**31 - 1, key=seed_key)
    st.button("Draw again", key=f"{key}-draw", on_click=draw_again, disabled=name == NONE,
              help="A new random draw: the seed goes up by one.")

    strategy = build_strategy(None if name == NONE else name, values, privacy_on, protect, exclude)
    main = None if name == NONE else strategy_from_params(name, values)
    _write_url(name, main, privacy_on, protect, exclude, int(seed))
    return strategy, int(seed)


def _write_url(name, main, privacy_on, protect, exclude, seed) -> None:
    params = st.query_params
    for stale in [k for k in params if k.startswith("p_")]:
        del params[stale]
    params["strategy"] = name
    if main is not None:
        defaults = {spec.name: spec.format(spec.default) for spec in STRATEGIES[name].params}
        for param, value in params_of(main, as_strings=True).items():
            if value != defaults.get(param):  # short links: only what differs from the defaults
                params[f"p_{param}"] = value
    for field, value in (("privacy", "1" if privacy_on else ""), ("protect", ",".join(protect)),
                         ("exclude", exclude), ("seed", str(seed) if seed else "")):
        if value:
            params[field] = value
        elif field in params:
            del params[field]
