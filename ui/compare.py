"""Compare's widget groups (side A / B); the share panel and the URL helpers live in ui/common.py.

Each side's model and masking live in the link under a prefix (``a_model``, ``a_strategy``,
``a_p_mlm_probability``, ``b_heads=0:1,1:0``, ``b_seed`` ...), read and written by the same codec
(``mlm_core.links``) and widgets (ui/strategy.py) as the explorer's panel.
"""

from __future__ import annotations

import streamlit as st

from mlm_core import links
from mlm_core.errors import MaskLabError
from mlm_core.explain.compare import Side
from mlm_core.links import MaskingSetting
from mlm_core.model.default_model import DEFAULT_MODEL_NAME
from mlm_core.model.loading import LoadedModel
from ui.common import show_error
from ui.models import load_with_message, pick_model, run_models
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
    options = [(DEFAULT_MODEL_NAME, f"{DEFAULT_MODEL_NAME} (default)"), *run_models()]
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
