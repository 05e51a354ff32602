"""The Teach page's lesson (data from assets/teach/lesson.json), presenter styling and step views.

Each view runs the real model on the current sentence; every string from the user or the model
goes through render (chips) or charts.literal (figures).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd
import streamlit as st

from mlm_core.errors import InputError, MaskLabError
from mlm_core.explain.attention import head_mean
from mlm_core.explain.compare import leave_one_out
from mlm_core.explain.exploration import explore
from mlm_core.explain.predict import fill_text
from mlm_core.masking import build_strategy
from mlm_core.model.loading import LoadedModel, load_model
from mlm_core.resources import asset
from mlm_core.views import charts
from mlm_core.views import html as render
from mlm_core.views.lines import attention_lines
from mlm_core.views.presenter import presenter_style
from ui.common import show_error, url_get, url_int, url_set
from ui.concepts import attention_mask_panel, input_mask_panel, parameter_mask_panel
from ui.models import run_models

LESSON = asset("teach", "lesson.json")
VIEWS = ("mask", "strategies", "predict", "attention", "why", "finetune", "input-mask", "param-mask", "attention-mask")
EPOCHS = 3
SHAPES = ("grid", "lines")  # the attention step's two pictures
# Fixed CSS (no user text): large type and high contrast for a projector; the sidebar and header go.
PRESENTER_CSS = """<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], header {display:none !important}
.stMainBlockContainer, .block-container {max-width:100% !important; padding-top:1rem !important}
.stMarkdown p, .stMarkdown li {font-size:1.6rem !important; line-height:1.5; color:#000}
h1 {font-size:3rem !important} h2, h3 {font-size:2.2rem !important}
.stMarkdown p.teach-step-counter {font-size:2.6rem !important; font-weight:700; color:#000; margin:0}
[data-testid="stWidgetLabel"] p {font-size:1.3rem !important; color:#000}
.stButton button p {font-size:1.4rem !important}
</style>"""


@st.cache_data
def load_lesson(path: str = str(LESSON)) -> dict:
    """The lesson as data; InputError naming the problem if the file is malformed."""
    try:
        lesson = json.loads(Path(path).read_text(encoding="utf-8"))
        steps = lesson["steps"]
        for step in steps:
            if step["view"] not in VIEWS or not step["presets"] or not step["title"]:
                raise KeyError(step.get("id", "?"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"The lesson file {path} is not valid ({exc}); restore it from the repository.") from exc
    return lesson


def _strip(loaded: LoadedModel, exploration) -> str:
    shown = loaded.tokenizer.convert_ids_to_tokens(list(exploration.input_ids))
    return render.token_chips(shown, exploration.kinds, exploration.tokens.special, large=True)


def _masked(loaded: LoadedModel, text: str, seed: int, step: dict, **kwargs):
    """Typed masks if the sentence has any, otherwise the step's strategy (random 15% by default)."""
    strategy = None
    if loaded.mask_token not in text:
        strategy = build_strategy(step.get("strategy", "random"), step.get("params", {}))
    return explore(loaded, text, strategy, seed, **kwargs)


def _plot(container, figure, key: str, presenter: bool) -> None:
    """Every Teach figure goes through here, so presenter mode styles all of them the same way."""
    container.plotly_chart(presenter_style(figure) if presenter else figure, key=key)


def step_counter(index: int, total: int, presenter: bool) -> None:
    """'Step 3 of 6' with a progress bar; in presenter mode as large as a heading (fixed text, no user input)."""
    label = f"Step {index + 1} of {total}"
    if presenter:
        st.markdown(f'<p class="teach-step-counter">{html.escape(label)}</p>', unsafe_allow_html=True)  # PRESENTER_CSS
        st.progress((index + 1) / total)
    else:
        st.progress((index + 1) / total, text=label)


def show_step(loaded: LoadedModel, step: dict, text: str, seed: int, presenter: bool) -> None:
    explanation, visual = st.columns([1, 2], gap="large")
    with explanation:
        st.markdown(render.escape_markdown(step["explanation"]))
    with visual:
        try:
            VIEW_FUNCTIONS[step["view"]](loaded, step, text, seed, presenter)
        except MaskLabError as exc:
            show_error(exc)


def _mask_view(loaded, step, text, seed, presenter):
    strategy = build_strategy(step.get("strategy", "random"), step.get("params", {}))
    result = explore(loaded, text, strategy, seed)
    st.markdown(_strip(loaded, result), unsafe_allow_html=True)
    st.markdown(render.legend(large=True, kinds=result.kinds), unsafe_allow_html=True)
    st.markdown(f"**{len(result.prediction.positions)}** of {len(result.tokens.eligible_positions)} "
                "tokens hidden. Press *Draw again* for another random mask.")


def _strategies_view(loaded, step, text, seed, presenter):
    random_ = build_strategy("random", step.get("params", {}))
    rows = [("Random", random_, seed), ("Rule-based: stopwords", build_strategy("rule-based", {"rule": "stopwords"}),
                                         seed)]
    rows += [(f"Static, epoch {e + 1}: the same mask every time", random_, seed) for e in range(EPOCHS)]
    rows += [(f"Dynamic, epoch {e + 1}: a fresh mask", random_, seed + e) for e in range(EPOCHS)]
    for label, strategy, draw in rows:
        st.markdown(f"**{render.escape_markdown(label)}**")
        st.markdown(_strip(loaded, explore(loaded, text, strategy, draw)), unsafe_allow_html=True)


def _predict_view(loaded, step, text, seed, presenter):
    result = _masked(loaded, text, seed, step)
    st.markdown(_strip(loaded, result), unsafe_allow_html=True)
    st.markdown(f"### {render.escape_markdown(fill_text(loaded, result.prediction.filled_ids))}")
    guesses = result.prediction.predictions[:3]
    for n, (column, guess) in enumerate(zip(st.columns(len(guesses)), guesses)):
        title = f"position {guess.position}" + (f": was '{guess.original_token}'" if guess.original_token else "")
        _plot(column, charts.topk_bars(guess, title, height=420 if presenter else 300), f"teach-topk-{n}", presenter)


def _attention_view(loaded, step, text, seed, presenter):
    loaded.require_attention("This step shows attention weights")  # a recurrent model has none
    result = _masked(loaded, text, seed, step, output_attentions=True)
    att = result.prediction.attentions
    if att is None:
        raise InputError("Attention is shown only for texts that fit in one window; shorten the text.")
    cols = st.columns(3)
    layers, heads = loaded.num_layers, loaded.num_heads
    layer = cols[0].selectbox("Layer", range(layers), index=url_int("layer", layers - 1, 0, layers - 1),
                              format_func=lambda i: f"layer {i}", key="teach-layer")
    head_options = ["mean", *range(heads)]
    wanted = url_get("head", "mean")
    head = cols[1].selectbox("Head", head_options, format_func=lambda h: "mean of heads" if h == "mean" else f"head {h}",
                             index=head_options.index(int(wanted) if wanted.isdecimal() and int(wanted) < heads
                                                      else "mean"), key="teach-head")
    url_set("layer", layer, layers - 1)
    url_set("head", head, "mean")
    matrix = head_mean(att)[layer] if head == "mean" else att[layer, head]
    labels = loaded.tokenizer.convert_ids_to_tokens(list(result.input_ids))
    title = f"layer {layer}, {'mean of heads' if head == 'mean' else f'head {head}'}"
    shape = cols[2].radio("Show as", SHAPES, horizontal=True, key="teach-shape",
                          index=SHAPES.index(url_get("shape", SHAPES[0])) if url_get("shape") in SHAPES else 0,
                          help="grid: one cell per pair of tokens; lines: each token joined to the tokens it "
                          "looks at, darker for more attention (as in BertViz).")
    url_set("shape", shape, SHAPES[0])
    if shape == "lines":
        figure = attention_lines(matrix, labels, result.prediction.positions, title)
    else:
        figure = charts.attention_heatmap(matrix, labels, highlight=result.prediction.positions, title=title)
    _plot(st, figure, "teach-attention", presenter)


def _why_view(loaded, step, text, seed, presenter):
    result = _masked(loaded, text, seed, step)
    guess = result.prediction.predictions[0]
    st.markdown(f"Best guess at position {guess.position}: **{render.escape_markdown(guess.top[0].token)}** "
                f"({guess.top[0].prob:.0%})")
    frame = leave_one_out(loaded, result, guess.position)
    figure = charts.change_bars([f"{p} {t}" for p, t in zip(frame["position"], frame["token"])],
                                list(-frame["drop"]), "Change in the best guess's probability without each word",
                                height=420, axis_title="probability change without the word")
    _plot(st, figure, "teach-why", presenter)


def _finetune_view(loaded, step, text, seed, presenter):
    runs = run_models()
    if not runs:
        st.info("No finished fine-tuning run yet. Start one on the Fine-tune page (for example whole-word "
                "masking on the demo corpus), then come back: it will appear here next to the original model.")
        _predict_view(loaded, step, text, seed, presenter)
        return
    folders = [folder for folder, _ in runs]
    labels = dict(runs)
    wanted = url_get("run")
    folder = st.selectbox("Fine-tuned run", folders, index=folders.index(wanted) if wanted in folders else 0,
                          format_func=lambda f: labels[f], key="teach-run")
    url_set("run", folder)
    tuned = load_model(folder)
    for column, (name, model) in zip(st.columns(2), (("original", loaded), ("fine-tuned", tuned))):
        result = _masked(model, text, seed, step)
        guess = result.prediction.predictions[0]
        _plot(column, charts.topk_bars(guess, name, height=420 if presenter else 300), f"teach-ft-{name}", presenter)


def _input_mask_view(loaded, step, text, seed, presenter):
    input_mask_panel(loaded, text, seed, "teach-x", presenter)


def _param_mask_view(loaded, step, text, seed, presenter):
    parameter_mask_panel(loaded, text, seed, "teach-w", presenter)


def _attention_mask_view(loaded, step, text, seed, presenter):
    attention_mask_panel(loaded, text, "teach-a", presenter)


VIEW_FUNCTIONS = {"mask": _mask_view, "strategies": _strategies_view, "predict": _predict_view,
                  "attention": _attention_view, "why": _why_view, "finetune": _finetune_view,
                  "input-mask": _input_mask_view, "param-mask": _param_mask_view,
                  "attention-mask": _attention_mask_view}


def handout(loaded: LoadedModel, lesson: dict, text: str, seed: int) -> str:
    """The whole lesson on the current sentence as one standalone HTML page (for a handout)."""
    from mlm_core.views.reports import html_report

    result = _masked(loaded, text, seed, lesson["steps"][0])
    rows = [
        {
            "position": guess.position,
            "hidden word": guess.original_token or "(typed blank)",
            "model's top 5": ", ".join(f"{c.token} {c.prob:.0%}" for c in guess.top),
        }
        for guess in result.prediction.predictions
    ]
    notes = [f"Step {n}. {step['title']}: {step['explanation']}" for n, step in enumerate(lesson["steps"], 1)]
    return html_report(
        "MaskLab lesson: what a masked language model does",
        {"model": loaded.name, "sentence": text, "seed": seed,
         "what the model read": " ".join(loaded.tokenizer.convert_ids_to_tokens(list(result.input_ids))),
         "filled in": fill_text(loaded, result.prediction.filled_ids)},
        tables=[("Predictions", pd.DataFrame(rows))],
        notes=notes,
    )
