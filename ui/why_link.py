"""The Explore page's "Why?" area in the link: which tab is open and the inputs of each panel.

One declaration per input (``UrlField``, read and written by ui.common's restore_from_url /
save_to_url), grouped by panel and by what the panel shows, so a link carries only the inputs of
the view on screen: ``?why=whatif&view=lines&layer=1&att_focus=3&wi=prune&wi_sparsity=0.5``. Old links keep
working: ``view`` may be a view's label (``One head``), as links written before the short names.

Restoring happens once per panel and session, on the first run that draws the panel: after that the
widgets own their values (a new sentence or model starts from fresh choices, as their keys say),
and each run writes the inputs back, leaving out defaults so links stay short.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from mlm_core.explain import attribution
from mlm_core.explain import whatif as interference
from mlm_core.links import format_heads_off, parse_heads_off
from mlm_core.settings import ParamSpec
from mlm_core.text.tokens import CATEGORIES
from ui.common import UrlField, restore_from_url, save_to_url, url_set

TABS = {"attention": "Attention", "whatif": "What if…", "words": "Which words mattered"}  # URL value: label
TAB_KEY = "why-tab"
TAB = ParamSpec("why", "choice", "attention", "The open tab of the Why? area.", choices=tuple(TABS))
LINES = "Lines between tokens"
VIEWS = {  # URL value: the attention view's label
    "head": "One head",
    "lines": LINES,
    "heads": "All heads of a layer",
    "overview": "Layer × head overview",
    "mean": "Mean over heads",
    "rollout": "Rollout",
    "from-mask": "From the mask",
    "masked-vs-unmasked": "Masked vs unmasked",
}
WHATIF_KINDS = {"exclude": "Exclude tokens", "heads": "Switch heads off", "prune": "Prune weights"}
MEAN = "mean"


def _inverse(mapping: dict[str, str]) -> dict[str, str]:
    return {label: value for value, label in mapping.items()}


def _label(mapping: dict[str, str]):
    """``read`` for a field stored as a short value: the label; an old link's label reads as itself."""

    def read(value: str) -> str:
        if value in mapping.values():
            return value
        return mapping[value]  # KeyError: restore_from_url says the link's value cannot be used

    return read


def _one_of(options: Sequence):
    def read(value):
        if value not in options:
            raise ValueError(f"choose from {', '.join(str(o) for o in options)}")
        return value

    return read


def _all_in(options: Sequence):
    def read(values):
        unknown = [v for v in values if v not in options]
        if unknown:
            raise ValueError(f"not one of {', '.join(str(o) for o in options)}: {', '.join(map(str, unknown))}")
        return list(values)

    return read


def _head_or_mean(n_heads: int):
    def read(value: str):
        return MEAN if value == MEAN else ParamSpec("head", "int", 0, "", 0, n_heads - 1).parse(value)

    return read


def restore_once(panel: str, fields: Sequence[UrlField]) -> None:
    """The link's values for ``fields``, on the first run of this session that draws ``panel``."""
    flag = f"why-link-read-{panel}"
    if flag not in st.session_state:
        restore_from_url(fields)


def mark_read(panel: str) -> None:
    st.session_state[f"why-link-read-{panel}"] = True


def is_open(tab, panel: str) -> bool:
    """Whether ``tab``'s ``panel`` is drawn in this run: only the open tab's is (the hidden ones' widgets and
    charts cost a class's server a sixth of every rerun). A hidden panel's inputs stay in the link, and are
    read back from it when its tab opens again (Streamlit forgets the state of widgets it did not draw)."""
    if tab.open is False:
        st.session_state.pop(f"why-link-read-{panel}", None)
        return False
    return True


def save(shown: Sequence[UrlField], every: Sequence[UrlField]) -> None:
    """The inputs on screen into the link; the panel's other inputs out of it."""
    save_to_url(shown)
    written = {field.spec.name for field in shown}
    for field in every:
        if field.spec.name not in written:
            url_set(field.spec.name, "")


# --------------------------------------------------------------------------- the tabs


def why_tabs():
    """The Why? area's three tabs; the open one comes from the link and goes back into it."""
    field = UrlField(TAB_KEY, TAB, read=TABS.__getitem__, write=_inverse(TABS).__getitem__)
    restore_once("tabs", [field])
    mark_read("tabs")
    # on_change="rerun": the tabs keep their state, so the open one can go into the link.
    tabs = st.tabs(list(TABS.values()), key=TAB_KEY, on_change="rerun")
    save_to_url([field])
    return tabs


# --------------------------------------------------------------------------- attention


def attention_fields(sig: str, view_sig: str, n_layers: int, n_heads: int, positions: Sequence[int],
                     n_tokens: int) -> dict:
    """{name: UrlField} of the attention panel (keys as ui.explain draws them)."""
    layer = ParamSpec("layer", "int", n_layers - 1, "Layer, counting from 0.", 0, max(0, n_layers - 1))
    mean_head = ParamSpec("head", "text", MEAN, "A head, counting from 0, or mean.")
    return {
        "view": UrlField("xa-view", ParamSpec("view", "text", "head", "The attention view."),
                         read=_label(VIEWS), write=_inverse(VIEWS).__getitem__),
        "merge": UrlField("xa-merge", ParamSpec("att_merge", "bool", False, "Word pieces merged.")),
        "layer": UrlField(f"xa-layer-{sig}", layer),
        "head": UrlField(f"xa-head-{sig}", ParamSpec("head", "int", 0, "A head, counting from 0.", 0,
                                                     max(0, n_heads - 1))),
        "head_or_mean": UrlField(f"xa-head-{sig}-m", mean_head, read=_head_or_mean(n_heads), write=str),
        "residual": UrlField("xa-residual", ParamSpec("att_residual", "float", 0.5, "Residual weight.", 0.0, 1.0)),
        "position": UrlField(f"xa-position-{view_sig}", ParamSpec("att_position", "int", positions[0] if positions
                                                                  else 0, "A masked position."),
                             read=_one_of(positions)),
        "metric": UrlField("xa-metric", ParamSpec("att_metric", "choice", "entropy", "The overview's measure.",
                                                  choices=("entropy", "max", "to token"))),
        "compare": UrlField("xa-compare", ParamSpec("att_compare", "choice", "side by side", "Side by side or "
                                                    "difference.", choices=("side by side", "difference"))),
        "focus": UrlField(f"xa-focus-{view_sig}", ParamSpec("att_focus", "int", -1, "Token whose lines stand out.",
                                                            -1, n_tokens - 1)),  # -1: every token
    }


ATTENTION_INPUTS = {  # what each view shows besides the view itself and the merge toggle
    "One head": ("layer", "head"),
    LINES: ("layer", "head_or_mean", "focus"),
    "All heads of a layer": ("layer",),
    "Layer × head overview": ("metric", "position"),
    "Mean over heads": ("layer",),
    "Rollout": ("layer", "residual"),
    "From the mask": ("position", "head_or_mean"),
    "Masked vs unmasked": ("layer", "head_or_mean", "compare"),
}


def restore_attention(fields: dict) -> None:
    """The view first, then the inputs of that view only (a link's head=mean is no head for One head)."""
    restore_once("attention", [fields["view"], fields["merge"]])
    view = st.session_state.get("xa-view", VIEWS["head"])
    restore_once("attention", [fields[name] for name in ATTENTION_INPUTS.get(view, ())])
    mark_read("attention")


def save_attention(fields: dict, view: str) -> None:
    save([fields["view"], fields["merge"], *(fields[name] for name in ATTENTION_INPUTS[view])], list(fields.values()))


# --------------------------------------------------------------------------- what if…


def whatif_fields(sig: str, n_layers: int, n_heads: int) -> dict:
    layers = list(range(n_layers))
    heads = [(la, h) for la in layers for h in range(n_heads)]
    return {
        "kind": UrlField("xi-kind", ParamSpec("wi", "text", "exclude", "What changes."),
                         read=_label(WHATIF_KINDS), write=_inverse(WHATIF_KINDS).__getitem__),
        "rules": UrlField("xi-rules", ParamSpec("wi_rules", "multi_choice", (), "Categories removed.",
                                                choices=CATEGORIES), read=list, write=tuple),
        "layers": UrlField(f"xi-layers-off-{sig}", ParamSpec("wi_layers", "int_list", (), "Layers switched off."),
                           read=_all_in(layers), write=tuple),
        "heads": UrlField(f"xi-heads-off-{sig}", ParamSpec("wi_heads", "text", "", "Heads off, layer:head."),
                          read=lambda text: _all_in(heads)(list(parse_heads_off(text))), write=format_heads_off),
        "sparsity": UrlField("xi-sparsity", ParamSpec("wi_sparsity", "float", 0.3, "Share of weights pruned.",
                                                      0.0, 0.95)),
        "scope": UrlField("xi-scope", ParamSpec("wi_scope", "choice", interference.PRUNE_SCOPES[0], "Threshold.",
                                                choices=interference.PRUNE_SCOPES)),
        "prune_layers": UrlField(f"xi-prune-layers-{sig}", ParamSpec("wi_prune", "int_list", tuple(layers),
                                                                     "Layers pruned."),
                                 read=_all_in(layers), write=tuple),
    }


WHATIF_INPUTS = {"Exclude tokens": ("rules",), "Switch heads off": ("layers", "heads"),
                 "Prune weights": ("sparsity", "scope", "prune_layers")}


def restore_whatif(fields: dict) -> None:
    restore_once("whatif", [fields["kind"]])
    kind = st.session_state.get("xi-kind", WHATIF_KINDS["exclude"])
    restore_once("whatif", [fields[name] for name in WHATIF_INPUTS.get(kind, ())])
    mark_read("whatif")


def save_whatif(fields: dict, kind: str) -> None:
    save([fields["kind"], *(fields[name] for name in WHATIF_INPUTS[kind])], list(fields.values()))


# --------------------------------------------------------------------------- which words mattered


def attribution_fields(view_sig: str, positions: Sequence[int]) -> dict:
    return {
        "position": UrlField(f"xt-position-{view_sig}", ParamSpec("attr_position", "int", positions[0] if positions
                                                                  else 0, "A masked position."),
                             read=_one_of(positions)),
        "target": UrlField("xt-target", ParamSpec("attr_token", "text", "", "The token explained.")),
        "method": UrlField("xt-method", ParamSpec("attr_method", "choice", attribution.METHODS[0], "Method.",
                                                  choices=attribution.METHODS)),
        "steps": UrlField("xt-steps", ParamSpec("attr_steps", "int", attribution.DEFAULT_STEPS, "Steps.", 1,
                                                attribution.MAX_STEPS)),
        "baseline": UrlField("xt-baseline", ParamSpec("attr_baseline", "choice", attribution.BASELINES[0],
                                                      "Baseline token.", choices=attribution.BASELINES)),
        "merge": UrlField("xt-merge", ParamSpec("attr_merge", "bool", False, "Word pieces merged.")),
    }


def restore_attribution(fields: dict) -> None:
    restore_once("words", list(fields.values()))
    mark_read("words")


def save_attribution(fields: dict, method: str) -> None:
    shown = [fields[name] for name in ("position", "target", "method", "merge")]
    if method == "ig":
        shown += [fields["steps"], fields["baseline"]]
    save(shown, list(fields.values()))
