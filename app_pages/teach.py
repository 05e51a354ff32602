"""Teach: a guided lesson in steps, live on the real model; a presenter mode for the projector."""

import streamlit as st

from mlm_core.errors import MaskLabError
from mlm_core.links import MAX_LINK_TEXT, SEED
from ui.common import share_panel, show_error, url_get, url_int, url_set
from ui.models import model_sidebar
from ui.teach import PRESENTER_CSS, handout, load_lesson, show_step, step_counter

try:
    lesson = load_lesson()
except MaskLabError as exc:
    show_error(exc)
    st.stop()
steps = lesson["steps"]
state = st.session_state
if "teach-step" not in state:  # first run: the view comes from the link
    state["teach-step"] = url_int("step", 1, 1, len(steps)) - 1
    state["teach-seed"] = url_int("seed", SEED.default, SEED.min, SEED.max)
    state["teach-text"] = url_get("text") or steps[state["teach-step"]]["presets"][0]
    state["presenter"] = url_get("presenter") == "1"


def go(delta: int) -> None:
    state["teach-step"] = min(max(state["teach-step"] + delta, 0), len(steps) - 1)
    state["teach-text"] = steps[state["teach-step"]]["presets"][0]  # each step starts on a sentence that works


def use_preset(key: str) -> None:
    if state.get(key):
        state["teach-text"] = state[key]


def jump() -> None:
    chosen = state.get("teach-jump")
    if chosen is not None:  # one click to any step (the masking formulas too); the row then clears
        state["teach-step"] = chosen
        state["teach-text"] = steps[chosen]["presets"][0]
        state["teach-jump"] = None


def draw_again() -> None:
    state["teach-seed"] = (state["teach-seed"] + 1) % (SEED.max + 1)


loaded = model_sidebar()
if loaded is None:
    st.stop()
index = state["teach-step"]
step = steps[index]
presenter = st.toggle("Presenter mode (large type, controls hidden)", key="presenter")
if presenter:
    st.markdown(PRESENTER_CSS, unsafe_allow_html=True)
st.title(step["title"])
step_counter(index, len(steps), presenter)

if not presenter:
    st.pills("Go to a step", range(len(steps)), format_func=lambda i: steps[i]["title"], key="teach-jump",
             on_change=jump)
    cols = st.columns([2, 3])
    preset_key = f"teach-preset-{index}"
    cols[0].selectbox("Preset sentences", step["presets"], index=None, key=preset_key,
                      placeholder="Choose a sentence that works well", on_change=use_preset, args=(preset_key,))
    cols[1].text_input(f"Or type your own (use {loaded.mask_token} for a blank)", key="teach-text")
text = state["teach-text"]
show_step(loaded, step, text, state["teach-seed"], presenter)

back, draw, next_ = st.columns([1, 1, 1])
back.button("◀ Back", on_click=go, args=(-1,), disabled=index == 0, key="teach-back", use_container_width=True)
draw.button("Draw again", on_click=draw_again, key="teach-draw", use_container_width=True)
next_.button("Next ▶", on_click=go, args=(1,), disabled=index == len(steps) - 1, key="teach-next",
             type="primary", use_container_width=True)

url_set("step", index + 1, 1)
url_set("text", text if len(text) <= MAX_LINK_TEXT else "")
url_set("seed", state["teach-seed"], 0)
url_set("presenter", "1" if presenter else "")
if not presenter:
    share_panel("teach")
    try:
        st.download_button("Download the lesson as a handout (HTML)", handout(loaded, lesson, text, state["teach-seed"]),
                           file_name="masklab-lesson.html", mime="text/html", key="teach-handout")
    except MaskLabError as exc:
        show_error(exc)
