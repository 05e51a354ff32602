"""Fine-tune: a corpus, a model and a masking scheme → a training run, followed live.

Start, the estimate (time by kind of work, disk use) and the followed run's progress sit at the top
of the page, in a container filled once the settings below it are read. The run is its own process
(``mlm_core.training.jobs``): leaving the page or closing the browser does not stop it, and
``?run=ID`` in the URL re-attaches to it. Every setting but the uploaded file is in the URL too
(ui/finetune.py).
"""

import streamlit as st

from mlm_core.errors import MaskLabError
from mlm_core.training import TrainConfig, costs, jobs, memory
from mlm_core.training import planning as finetune
from mlm_core.training.run_table import format_duration
from mlm_core.views.html import escape_markdown
from ui import runs as run_ui
from ui.common import (
    UPLOAD_NOTE,
    corpus_url_fields,
    restore_from_url,
    save_to_url,
    share_panel,
    show_error,
)
from ui.corpus import corpus_input
from ui.finetune import schedule_controls, tensorboard_note, training_settings
from ui.identity import current_owner
from ui.strategy import masking_controls

st.title("Fine-tune")
store = jobs.default_store()
if rebuilt := store.take_rebuilt_notice():  # the run list was empty or damaged: rebuilt from the run folders
    st.warning(rebuilt, icon=":material/build:")
request = run_ui.request_id("ft", start_pressed=bool(st.session_state.get("ft-start")))
following = run_ui.followed_run(store)
top = st.container()  # start, estimate and the live run: filled at the end, shown first

st.header("1 · Corpus")
corpus_fields = corpus_url_fields("ft-corpus")
restore_from_url(corpus_fields)
choice = corpus_input("ft-corpus")
save_to_url(corpus_fields)

st.header("2 · Model")
option = run_ui.model_choice(store, "ft")  # the link's model, and the choice back into it
tokenizer = None
layers, max_len = None, 512
if option is not None:
    try:
        tokenizer = finetune.load_tokenizer(option.model)
        layers, max_len = finetune.model_limits(option.model)
    except MaskLabError as exc:
        show_error(exc)

st.header("3 · Masking")
controls, preview = st.columns([1, 2], gap="large")
config = None
with controls:
    try:
        strategy, seed = masking_controls("ft")
        name, params, notices = finetune.training_strategy(strategy)
        rate = finetune.strategy_rate(name, params)
        schedule = schedule_controls(rate, "ft")
    except MaskLabError as exc:
        show_error(exc)
        name = None
    else:
        for notice in notices:
            st.info(notice)

st.header("4 · Training")
scratch = option.model if option is not None and option.kind == "scratch" else None  # its sizes are settings too
settings = training_settings("ft", layers, max_len, scratch)
if choice is not None and option is not None and tokenizer is not None and name is not None:
    try:
        config = TrainConfig(corpus_name=choice.name, corpus_column=choice.column, text_unit=choice.text_unit,
                             model=option.model, strategy=name, strategy_params=params, seed=seed,
                             **schedule, **settings)
    except MaskLabError as exc:
        show_error(exc)

with preview:
    st.subheader("A training example, as the trainer corrupts it")
    if config is None:
        st.caption("The preview appears once the corpus, the model and the masking are valid.")
    else:
        try:
            examples = finetune.preview_examples(tokenizer, choice.corpus.texts, config)
        except MaskLabError as exc:
            show_error(exc)
        else:
            run_ui.show_preview(examples[:1])
            if len(examples) > 1:
                with st.expander(f"{len(examples) - 1} more examples"):
                    run_ui.show_preview(examples[1:])
share_panel("finetune", note=UPLOAD_NOTE)

with top:
    device_type, device_name = finetune.device_summary()
    if config is not None:
        blocks = costs.estimate_train_blocks(tokenizer, choice.corpus.texts, config.seq_len,
                                             config.heldout_fraction)
        estimate = costs.estimate_time(store, config, device_type, blocks)
        st.markdown(f"**Device:** {escape_markdown(device_name)} · **about {blocks:,} training blocks** · "
                    f"**{estimate.steps:,} steps** · **estimated time: {format_duration(estimate.seconds)}**")
        parts = ", ".join(f"{name} {format_duration(seconds)}" for name, seconds in estimate.parts.items())
        st.caption(f"Estimated from {estimate.basis}: {parts}." + (f" **{estimate.note}**" if estimate.note else ""))
        disk = costs.estimate_disk(config, estimate.steps, len(choice.data))
        if disk is not None:
            st.caption(
                f"**Disk:** about {costs.format_bytes(disk.final_bytes)} once finished (the model); up to "
                f"{costs.format_bytes(disk.peak_bytes)} while it runs: a checkpoint (weights and optimizer "
                f"state, {costs.format_bytes(disk.checkpoint_bytes)}) is kept to resume from, the previous "
                "one only until the next is verified, and none once the run has finished.")
        memory = memory.memory_note(config, device_type)  # the same estimate that Start checks
        if memory:
            st.caption(memory)
    else:
        st.markdown(f"**Device:** {escape_markdown(device_name)}")
    if st.button("Start training", icon=":material/play_arrow:", type="primary", key="ft-start",
                 disabled=config is None, help=None if config else "Choose a valid corpus, model and masking below."):
        try:
            run, created = jobs.submit(store, config, choice.data, request, owner=current_owner(),
                                       estimated_s=estimate.seconds)  # within the limits
        except MaskLabError as exc:
            show_error(exc)
        else:
            run_ui.request_done("ft")
            run_ui.set_followed(run.id)
            following = run.id
            if not created:
                st.info(f"Run {run.id} was already started by this click: a second click does not start another.")
    if following:
        st.caption(f"Following run {following}. It goes on if you leave; come back here or to the Runs page "
                   "to see it.")
        tensorboard_note(store, following)
        run_ui.follow(store, following)
