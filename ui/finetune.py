"""The Fine-tune page's settings widgets, with their state in the link: masks and rate schedule, the
training sizes (the model is ui/models.py's picker, through ui/runs.py).

Every widget's default, range and help text is ``TrainConfig``'s declaration of that setting
(``TrainConfig.spec``), and its link field is the same spec under the link's name, so a link is read
back with the checks the widget makes (ui.common.restore_from_url) and keeps only what differs
from the defaults. How often a run is evaluated and checkpointed is ``TrainConfig.cadence``'s rule.
A model trained from scratch gets its kind's learning rate (``OPTIMIZER_DEFAULTS``) and its sizes
(``SCRATCH_SIZES``), each widget keyed by the model so that switching models shows that model's defaults.
"""

from __future__ import annotations

import dataclasses

import streamlit as st

from mlm_core.errors import MaskLabError
from mlm_core.settings import ParamSpec
from mlm_core.training import CHECKPOINT_EVALS, EVALUATIONS_PER_RUN, TrainConfig
from mlm_core.training.config import (
    DEFAULT_EPOCHS,
    OPTIMIZER_DEFAULTS,
    RECURRENT_SCRATCH_MODELS,
    SCRATCH_SIZES,
)
from mlm_core.training.tracking import TENSORBOARD_FOLDER, missing_package_message, tensorboard_command
from ui.common import UrlField, restore_from_url, save_to_url

LENGTH_UNITS = ("steps", "epochs")


def _spec(name: str, link_name: str | None = None, **changes) -> ParamSpec:
    """TrainConfig's declaration of ``name``, as a widget shows it (never None) under the link's name."""
    spec = TrainConfig.spec(name)
    return dataclasses.replace(spec, name=link_name or spec.name, optional=False, **changes)


def _number(container, label: str, spec: ParamSpec, key: str, **options) -> int | float:
    cast = int if spec.kind == "int" else float
    return cast(container.number_input(label, cast(spec.min), cast(spec.max), cast(spec.default), key=key,
                                       help=spec.help, **options))


# ----------------------------------------------------------------------------- masks and rate schedule


def schedule_fields(rate: float | None, key: str = "ft") -> dict[str, UrlField]:
    """The link fields of ``schedule_controls``, by widget key."""
    fields = [UrlField(f"{key}-masking", _spec("masking")),
              UrlField(f"{key}-schedule", _spec("rate_schedule", "schedule"))]
    if rate is not None:  # the sliders start from twice the strategy's rate down to it (e.g. 30% → 15%)
        fields += [UrlField(f"{key}-rate-start", _spec("rate_start", default=min(1.0, 2 * rate))),
                   UrlField(f"{key}-rate-end", _spec("rate_end", default=rate))]
    return {field.key: field for field in fields}


def schedule_controls(rate: float | None, key: str) -> dict:
    """Static/dynamic masking and the rate schedule → TrainConfig fields (``rate``: the strategy's)."""
    fields = schedule_fields(rate, key)
    restore_from_url(fields.values())
    masking, schedule = fields[f"{key}-masking"].spec, fields[f"{key}-schedule"].spec
    left, right = st.columns(2)
    mode = left.radio("Masks", masking.choices, index=masking.choices.index(masking.default), horizontal=True,
                      key=f"{key}-masking", help="dynamic: a fresh mask every time a block is seen (RoBERTa). "
                      "static: one mask per block, drawn once and reused every epoch (original BERT); it takes "
                      "a constant rate and no adaptive masking, which would change the mask.")
    kind = right.radio("Rate schedule", schedule.choices, index=schedule.choices.index(schedule.default),
                       horizontal=True, key=f"{key}-schedule", disabled=rate is None,
                       help="Move the masking rate from a start to an end value over the run (e.g. "
                       "30% → 15%). Applies to strategies with an mlm_probability.")
    settings = {"masking": mode, "rate_schedule": schedule.default, "rate_start": rate, "rate_end": rate}
    if rate is not None and kind != schedule.default:
        # Two sliders, not one range slider: a range comes back sorted, so 30% → 15% could not be set.
        start, end = fields[f"{key}-rate-start"].spec, fields[f"{key}-rate-end"].spec
        from_column, to_column = st.columns(2)
        settings.update(
            rate_schedule=kind,
            rate_start=from_column.slider("Rate at the start", start.min, start.max, start.default, 0.01,
                                          key=f"{key}-rate-start"),
            rate_end=to_column.slider("Rate at the end", end.min, end.max, end.default, 0.01, key=f"{key}-rate-end"),
        )
    save_to_url(fields.values())
    return settings


# ----------------------------------------------------------------------------- training sizes


SIZE_LABELS = {"hidden": "Width (hidden)", "layers": "Layers", "heads": "Attention heads",
               "embedding": "Embedding width"}


def scratch_size_fields(model: str | None, key: str = "ft") -> tuple[UrlField, ...]:
    """The link fields of a scratch model's sizes (none for another model), each at that model's default."""
    if model not in SCRATCH_SIZES:
        return ()
    sizes = SCRATCH_SIZES[model]
    return tuple(UrlField(f"{key}-scratch-{size}-{model}",
                          _spec(f"scratch_{size}", default=sizes[size] or sizes["hidden"]))  # embedding: as wide
                 for size in sizes)


def training_fields(layers: int | None, max_len: int, key: str = "ft", scratch: str | None = None
                    ) -> dict[str, UrlField]:
    """The link fields of ``training_settings``, by widget key (``max_len``: the model's longest block;
    ``scratch``: the scratch model chosen, if one is)."""
    parts = ("embeddings", "all-but-head", *(f"layer.{i}" for i in range(layers or 0)))
    seq_len = TrainConfig.spec("seq_len")
    kind = "scratch" if scratch in SCRATCH_SIZES else "pretrained"
    fields = (
        UrlField(f"{key}-unit", ParamSpec("length_in", "choice", LENGTH_UNITS[0], "", choices=LENGTH_UNITS)),
        UrlField(f"{key}-steps", _spec("steps")),
        UrlField(f"{key}-epochs", _spec("epochs", default=DEFAULT_EPOCHS)),
        UrlField(f"{key}-batch", _spec("batch_size", "batch")),
        UrlField(f"{key}-seq", _spec("seq_len", default=min(seq_len.default, max_len), max=max_len)),
        UrlField(f"{key}-lr" + ("-scratch" if kind == "scratch" else ""),
                 _spec("lr", default=OPTIMIZER_DEFAULTS[kind]["lr"])),
        UrlField(f"{key}-freeze", ParamSpec("freeze", "multi_choice", (), "", choices=parts), read=list),
        UrlField(f"{key}-prune", _spec("prune_sparsity", "prune")),
        UrlField(f"{key}-prune-mask", _spec("prune_mask")),
        UrlField(f"{key}-eval", _spec("eval_every", default=0, min=0)),  # 0: TrainConfig.cadence decides
        UrlField(f"{key}-ckpt", CHECKPOINT_EVALS),
        # A checkbox for TensorBoard; the link keeps TrainConfig's list of trackers (the CLI's --log-with).
        UrlField(f"{key}-tensorboard", _spec("log_with"), read=lambda names: "tensorboard" in names,
                 write=lambda on: ("tensorboard",) if on else ()),
        *scratch_size_fields(scratch, key),
    )
    return {field.key: field for field in fields}


def training_settings(key: str, layers: int | None, max_len: int, scratch: str | None = None) -> dict:
    """Length, batch, block length, learning rate, freezing, evaluation and, for a model trained from scratch
    (``scratch``: its name), its sizes → TrainConfig fields."""
    fields = training_fields(layers, max_len, key, scratch)
    restore_from_url(fields.values())
    lr_key = next(k for k in fields if k.startswith(f"{key}-lr"))
    spec = {name: fields[f"{key}-{name}"].spec for name in
            ("unit", "steps", "epochs", "batch", "seq", "freeze", "prune", "prune-mask", "eval", "ckpt")}
    left, middle, right = st.columns(3)
    unit = left.radio("Length in", spec["unit"].choices, horizontal=True, key=f"{key}-unit")
    if unit == "steps":
        steps, epochs = _number(left, "Steps", spec["steps"], f"{key}-steps"), None
    else:
        steps, epochs = None, _number(left, "Epochs", spec["epochs"], f"{key}-epochs", step=0.5)
    batch = _number(middle, "Batch (blocks per step)", spec["batch"], f"{key}-batch")
    seq_len = _number(middle, "Block length (tokens)", spec["seq"], f"{key}-seq")
    lr = _number(right, "Learning rate", fields[lr_key].spec, lr_key, step=1e-5, format="%.1e")
    freeze = right.multiselect("Freeze", spec["freeze"].choices, key=f"{key}-freeze",
                               help="Frozen parameters are not trained (parameter masking).")
    with st.expander("Parameter mask (W⊙M)"):
        prune = _number(st, "Share of encoder weights masked (0: none)", spec["prune"], f"{key}-prune", step=0.05)
        prune_mask = st.radio("Which weights", spec["prune-mask"].choices, horizontal=True, key=f"{key}-prune-mask",
                              help=spec["prune-mask"].help, disabled=not prune)
    with st.expander("Evaluation and checkpoints"):
        every = _number(st, f"Evaluate every N steps (0: about {EVALUATIONS_PER_RUN} evaluations per run)",
                        spec["eval"], f"{key}-eval")
        keep = _number(st, "Checkpoint every N evaluations", spec["ckpt"], f"{key}-ckpt")
        tensorboard = st.checkbox("Log to TensorBoard", key=f"{key}-tensorboard",
                                  help="Each evaluation's metrics also go to TensorBoard event files in the run "
                                  "folder (tensorboard/), for `tensorboard --logdir`.")
    log_with = ("tensorboard",) if tensorboard else ()
    if missing := missing_package_message(log_with):  # Start would refuse it: say so next to the box
        st.warning(missing)
    sizes = scratch_sizes(fields, key, scratch)
    save_to_url(fields.values())
    return dict(steps=steps, epochs=epochs, batch_size=batch, seq_len=seq_len, lr=lr, freeze=freeze, **sizes,
                prune_sparsity=prune, prune_mask=prune_mask,
                log_with=log_with, **TrainConfig.cadence(steps, every or None, keep))


def scratch_sizes(fields: dict[str, UrlField], key: str, scratch: str | None) -> dict:
    """A scratch model's size widgets (nothing for another model) → its scratch_* TrainConfig fields."""
    if scratch not in SCRATCH_SIZES:
        return {}
    kind = "recurrent model" if scratch in RECURRENT_SCRATCH_MODELS else "Transformer"
    values = {}
    with st.expander(f"Model size ({scratch}: a {kind} trained from random weights)"):
        columns = st.columns(len(SCRATCH_SIZES[scratch]))
        for column, size in zip(columns, SCRATCH_SIZES[scratch], strict=True):
            field_key = f"{key}-scratch-{size}-{scratch}"
            values[f"scratch_{size}"] = _number(column, SIZE_LABELS[size], fields[field_key].spec, field_key)
    return values


def tensorboard_note(store, run_id: str) -> None:
    """For a run that logs to TensorBoard, the command that opens its logs.

    Written with ``$MASKLAB_HOME`` and the run id, never the server's real folder: a browser user of a
    shared server is not told its paths. Example: ``tensorboard --logdir $MASKLAB_HOME/runs/ab12/tensorboard``.
    """
    try:
        record = store.get(run_id)
    except MaskLabError:  # the run is gone: the follow panel below says so
        return
    if "tensorboard" not in (record.config or {}).get("log_with", ()):
        return
    st.caption(f"This run logs each evaluation to TensorBoard ({TENSORBOARD_FOLDER}/ in its folder). To open it on "
               "the machine that runs MaskLab (`$MASKLAB_HOME` is MaskLab's folder there, `~/.masklab` unless set):")
    st.code(tensorboard_command(f"$MASKLAB_HOME/runs/{run_id}"), language="bash")
