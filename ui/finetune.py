"""The Fine-tune page's settings in its link: the fields of ui/runs.py's widget groups and the model.

The widgets live in ui/runs.py (shared with the Runs page); each field here names one of them by
its key and carries that widget's default, range and choices, so a link is read back with the same
checks the widget makes (ui.common.restore_from_url) and keeps only what differs from the defaults.
"""

from __future__ import annotations

import streamlit as st

from mlm_core.settings import ParamSpec
from mlm_core.training.planning import ModelOption
from ui.common import UrlField
from ui.runs import OTHER


def schedule_fields(rate: float | None) -> tuple[UrlField, ...]:
    fields = [UrlField("ft-masking", ParamSpec("masking", "choice", "dynamic", "", choices=("dynamic", "static"))),
              UrlField("ft-schedule", ParamSpec("schedule", "choice", "constant", "",
                                                choices=("constant", "linear", "cosine")))]
    if rate is not None:  # the sliders' defaults in ui/runs.py: from twice the strategy's rate to it
        fields += [UrlField("ft-rate-start", ParamSpec("rate_start", "float", min(1.0, 2 * rate), "", 0.01, 1.0)),
                   UrlField("ft-rate-end", ParamSpec("rate_end", "float", rate, "", 0.01, 1.0))]
    return tuple(fields)


def training_fields(layers: int | None, max_len: int) -> tuple[UrlField, ...]:
    parts = ("embeddings", "all-but-head", *(f"layer.{i}" for i in range(layers or 0)))
    return (UrlField("ft-unit", ParamSpec("length_in", "choice", "steps", "", choices=("steps", "epochs"))),
            UrlField("ft-steps", ParamSpec("steps", "int", 200, "", 1, 1_000_000)),
            UrlField("ft-epochs", ParamSpec("epochs", "float", 1.0, "", 0.1, 1000.0)),
            UrlField("ft-batch", ParamSpec("batch", "int", 16, "", 1, 4096)),
            UrlField("ft-seq", ParamSpec("seq_len", "int", min(128, max_len), "", 8, max_len)),
            UrlField("ft-lr", ParamSpec("lr", "float", 5e-5, "", 1e-7, 0.5)),
            UrlField("ft-freeze", ParamSpec("freeze", "multi_choice", (), "", choices=parts), read=list),
            UrlField("ft-eval", ParamSpec("eval_every", "int", 0, "", 0, 1_000_000)),
            UrlField("ft-ckpt", ParamSpec("checkpoint_evals", "int", 5, "", 1, 1000)))


def restore_model(options: list[ModelOption]) -> None:
    """The link's model: one of the listed options, else typed under 'Other'."""
    wanted = st.query_params.get("model")
    if wanted is None or "ft-model" in st.session_state:
        return
    labels = {option.model: option.label for option in options}
    st.session_state["ft-model"] = labels.get(wanted, OTHER)
    if wanted not in labels:
        st.session_state["ft-model-other"] = wanted
