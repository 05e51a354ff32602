"""Compare's widget groups (side A / B); the share panel and the URL helpers live in ui/common.py.

Side parameters live in the URL under a prefix (``a_strategy``, ``a_p_mlm_probability``, ``b_seed``,
``b_heads=0.1,1.0`` ...), built from the same ``ParamSpec`` registry as ui/strategy.py.
"""

from __future__ import annotations

import streamlit as st

from mlm_core.explain.compare import Side
from mlm_core.explain.exploration import MAIN_STRATEGIES, build_strategy
from mlm_core.masking import STRATEGIES, params_of, strategy_from_params
from mlm_core.model.default_model import DEFAULT_MODEL_NAME
from mlm_core.model.loading import LoadedModel
from ui.common import OTHER_MODEL, load_with_message, url_get, url_ignored, url_int, url_set
from ui.strategy import EXCLUDE_RULES, NONE, strategy_params


def _run_models() -> list[tuple[str, str]]:
    """(label, folder) of every finished run's model; none when the run store cannot be read."""
    try:
        from mlm_core.training.jobs import default_store
        from mlm_core.training.planning import model_options

        return [(o.label, o.model) for o in model_options(default_store()) if o.kind == "run"]
    except Exception:  # noqa: BLE001 - a broken store must not take the page down; runs are optional here
        return []


def model_picker(prefix: str, label: str) -> LoadedModel | None:
    """Default model, finished runs, or any hub id / folder; the choice goes to ``<prefix>model``."""
    runs = _run_models()
    choices = [DEFAULT_MODEL_NAME, *(folder for _, folder in runs), OTHER_MODEL]
    names = {DEFAULT_MODEL_NAME: f"{DEFAULT_MODEL_NAME} (default)", **dict((f, lab) for lab, f in runs)}
    wanted = url_get(f"{prefix}model", DEFAULT_MODEL_NAME)
    index = choices.index(wanted) if wanted in choices else len(choices) - 1
    choice = st.selectbox(f"{label} model", choices, index=index, format_func=lambda c: names.get(c, c),
                          key=f"{prefix}model_choice")
    name = choice
    if choice == OTHER_MODEL:
        name = st.text_input("Hub id or folder", "" if wanted in choices else wanted, key=f"{prefix}model_other").strip()
        if not name:
            st.info("Type a hub id or the path of a model folder.")
            return None
    loaded = load_with_message(name)
    if loaded is not None:
        url_set(f"{prefix}model", name, DEFAULT_MODEL_NAME)
    return loaded


def side_controls(side: str) -> tuple[LoadedModel | None, Side | None, dict]:
    """One side's model, masking, exclusion, heads and seed. Returns (model, Side, settings for a report)."""
    prefix = f"{side.lower()}_"
    st.subheader(f"Side {side}")
    loaded = model_picker(prefix, side)
    if loaded is None:
        return None, None, {}
    options = [NONE, *MAIN_STRATEGIES]
    wanted = url_get(f"{prefix}strategy", NONE)
    if wanted not in options and f"{prefix}strategy" not in st.session_state:
        url_ignored(f"{prefix}strategy", wanted, NONE, f"choose from {', '.join(options)}")
    name = st.selectbox("Masking strategy", options, index=options.index(wanted) if wanted in options else 0,
                        key=f"{prefix}strategy")
    # The explorer's parameter widgets (80/10/10 split included), keyed and linked per side.
    values = {} if name == NONE else strategy_params(name, side.lower(), url_prefix=f"{prefix}p_")
    wanted_exclude = url_get(f"{prefix}exclude")
    exclude = st.selectbox("Remove from the context", EXCLUDE_RULES, format_func=lambda r: r or "nothing",
                           index=EXCLUDE_RULES.index(wanted_exclude) if wanted_exclude in EXCLUDE_RULES else 0,
                           key=f"{prefix}exclude")
    all_heads = [f"{la}.{h}" for la in range(loaded.num_layers) for h in range(loaded.num_heads)]
    heads = st.multiselect("Heads switched off (layer.head)", all_heads, key=f"{prefix}heads",
                           default=[h for h in url_get(f"{prefix}heads").split(",") if h in all_heads])
    seed = st.number_input("Seed (same seed on both sides = same draw)", 0, 2**31 - 1,
                           url_int(f"{prefix}seed", 0, 0, 2**31 - 1), key=f"{prefix}seed")
    strategy = build_strategy(None if name == NONE else name, values, exclude=exclude)
    _write_side(prefix, name, values, exclude, heads, int(seed))
    heads_off = tuple(tuple(int(x) for x in h.split(".")) for h in heads)
    settings = {"model": loaded.name, "strategy": name, **values, "exclude": exclude or "nothing",
                "heads off": ", ".join(heads) or "none", "seed": int(seed)}
    return loaded, Side(strategy, int(seed), heads_off, side), settings


def _write_side(prefix, name, values, exclude, heads, seed) -> None:
    for stale in [k for k in st.query_params if k.startswith(f"{prefix}p_")]:
        del st.query_params[stale]
    url_set(f"{prefix}strategy", name, NONE)
    if name != NONE:
        defaults = {spec.name: spec.format(spec.default) for spec in STRATEGIES[name].params}
        for param, value in params_of(strategy_from_params(name, values), as_strings=True).items():
            url_set(f"{prefix}p_{param}", value, defaults.get(param))
    url_set(f"{prefix}exclude", exclude)
    url_set(f"{prefix}heads", ",".join(heads))
    url_set(f"{prefix}seed", seed, 0)
