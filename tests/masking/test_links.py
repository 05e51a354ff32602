"""The link codec (mlm_core.links): every registered strategy and every field of a masking setting
reads back from a real query string the same; old spellings keep opening the same view; a
hand-edited link never raises, it names the fields it cannot use. Word views (mlm_core.views.words)
at the end: the one word-piece grouping of the pages and the CLI.
"""

from __future__ import annotations

import string
import urllib.parse

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mlm_core import links
from mlm_core.errors import InputError
from mlm_core.evaluate import EvalConfig
from mlm_core.links import MaskingSetting, decode, encode, format_heads_off, parse_heads_off
from mlm_core.masking import (
    EXCLUDE_RULES,
    MAIN_STRATEGIES,
    PROTECT_RULES,
    STRATEGIES,
    params_of,
    strategy_from_params,
)
from mlm_core.settings import ParamSpec
from mlm_core.views.words import word_view

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
# Characters a link must carry through percent-encoding: separators of queries, lists and heads.
LINK_TEXT = st.text(string.ascii_letters + string.digits + " ,;:.%&=?#+/é", max_size=12)
WORD = st.text(string.ascii_lowercase + "é", min_size=1, max_size=8)
REGIONS = ("US", "GB", "DE", "FR", "CH")  # privacy's region is a phone-number region, not free text


def through_a_url(query: dict[str, str]) -> dict[str, str]:
    """``query`` as the browser sends it back: percent-encoded in a query string, then parsed."""
    text = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return dict(urllib.parse.parse_qsl(text, keep_blank_values=True))


def value_of(spec: ParamSpec) -> st.SearchStrategy:
    """Any value ``spec`` accepts (native, as a widget or a hand-made mapping gives it)."""
    if spec.name == "region":
        return st.sampled_from(REGIONS)
    if spec.kind == "float":
        return st.floats(spec.min if spec.min is not None else -1e6, spec.max if spec.max is not None else 1e6)
    if spec.kind == "int":
        return st.integers(int(spec.min if spec.min is not None else -1000), int(spec.max if spec.max is not None else 1000))
    if spec.kind == "bool":
        return st.booleans()
    if spec.kind == "choice":
        return st.sampled_from(spec.choices)
    if spec.kind == "multi_choice":
        return st.lists(st.sampled_from(spec.choices), unique=True).map(tuple)
    if spec.kind == "int_list":
        return st.lists(st.integers(int(spec.min or 0), 500), max_size=5).map(tuple)
    if spec.kind == "text_list":
        return st.lists(WORD, max_size=4).map(tuple)
    return LINK_TEXT


@st.composite
def strategy_of(draw, name: str):
    """A strategy ``name`` built from drawn parameters (a combination it refuses is skipped)."""
    if name == links.COMPOSE:
        steps = draw(st.lists(st.sampled_from([n for n in STRATEGIES if n != links.COMPOSE]), min_size=1, max_size=3))
        params = {"steps": [{"name": step, "params": params_of(draw(strategy_of(step)))} for step in steps]}
    else:
        params = {spec.name: draw(value_of(spec)) for spec in STRATEGIES[name].params}
    try:
        return strategy_from_params(name, params)
    except InputError:  # e.g. an 80/10/10 split over 100%, two privacy steps
        assume(False)


@SETTINGS
@pytest.mark.parametrize("name", list(STRATEGIES))
@given(data=st.data(), prefix=st.sampled_from(["", "a_", "b_"]))
def test_every_registered_strategy_round_trips_through_a_link(name, data, prefix):
    strategy = data.draw(strategy_of(name))
    setting = MaskingSetting(name, params_of(strategy), seed=data.draw(st.integers(0, links.SEED.max)))
    assume(setting.params)  # a link that carries parameters: the defaults alone are the next test's
    query = through_a_url(encode(setting, prefix))
    decoded, problems = decode(query, prefix)
    assert problems == ()
    assert decoded == setting
    assert decoded.main() == strategy  # the same object, parameter for parameter


@pytest.mark.parametrize("name", [name for name in STRATEGIES if name != links.COMPOSE])
def test_a_strategy_at_its_defaults_writes_only_its_name(name):
    setting = MaskingSetting(name)
    assert encode(setting) == {"strategy": name}
    assert decode(encode(setting)) == (setting, ())


def test_a_composition_needs_its_steps():
    with pytest.raises(InputError, match="at least one step"):
        MaskingSetting(links.COMPOSE)
    setting, problems = decode({"strategy": "compose", "p_steps": "[{]"}, default="random")
    assert setting == MaskingSetting("random") and [p.field for p in problems] == ["p_steps", "strategy"]


@SETTINGS
@given(strategy=st.sampled_from(MAIN_STRATEGIES), privacy=st.booleans(),
       protect=st.lists(st.sampled_from(PROTECT_RULES), unique=True), exclude=st.sampled_from(EXCLUDE_RULES),
       heads=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=6),
       seed=st.integers(0, links.SEED.max), prefix=st.sampled_from(["", "a_"]))
def test_every_field_of_a_setting_round_trips(strategy, privacy, protect, exclude, heads, seed, prefix):
    setting = MaskingSetting(strategy, {}, privacy, protect, exclude, heads, seed)
    decoded, problems = decode(through_a_url(encode(setting, prefix)), prefix)
    assert problems == () and decoded == setting
    assert decoded.heads_off == tuple(sorted(set(heads)))


def test_an_old_compare_link_with_layer_dot_head_opens_the_same_setting():
    old, problems = decode({"b_strategy": "random", "b_heads": "0.1,1.0", "b_seed": "3"}, "b_")
    new, _ = decode({"b_strategy": "random", "b_heads": "0:1,1:0", "b_seed": "3"}, "b_")
    assert problems == () and old == new and old.heads_off == ((0, 1), (1, 0))
    assert encode(old, "b_")["b_heads"] == "0:1,1:0"  # written back in the one spelling


def test_heads_have_one_parser_and_one_formatter():
    assert parse_heads_off("0:1, 2.3;4:5") == ((0, 1), (2, 3), (4, 5))  # in the order written
    assert format_heads_off(((0, 1), (2, 3))) == "0:1,2:3"
    assert EvalConfig(heads_off=((2, 3), (0, 1))).label.endswith("heads off 0:1,2:3")
    for bad in ("0-1", "1", "0:1:2", "a:b", "0.5:1"):
        with pytest.raises(InputError, match="layer:head"):
            parse_heads_off(bad)


def test_the_explorers_long_name_for_no_strategy_reads_as_none():
    setting, problems = decode({"strategy": links.NONE_LABEL})
    assert problems == () and setting.strategy == links.NONE and setting.build() is None
    assert encode(setting) == {"strategy": "none"}


def test_a_hand_edited_link_names_each_field_it_cannot_use():
    setting, problems = decode({"strategy": "<b>x</b>", "p_mlm_probability": "lots", "privacy": "maybe",
                                "protect": "zz", "exclude": "q", "heads": "x", "seed": "--5"}, default="random")
    assert setting == MaskingSetting("random")
    assert [p.field for p in problems] == ["strategy", "p_mlm_probability", "privacy", "protect", "exclude",
                                           "heads", "seed"]
    assert problems[0].used == "random" and problems[1].used == "0.15" and problems[-1].used == "0"
    setting, problems = decode({"strategy": "manual"}, choices=MAIN_STRATEGIES)  # a page offers fewer
    assert setting.strategy == links.NONE and problems[0].reason.startswith("choose from none, random")
    setting, problems = decode({"heads": "-1:0,1:1", "seed": "7"})
    assert setting.heads_off == () and setting.seed == 7 and problems[0].field == "heads"


@SETTINGS
@given(query=st.dictionaries(st.sampled_from([*links.FIELDS, "p_mlm_probability", "p_rule", "p_steps"]),
                             st.text(max_size=30) | st.sampled_from(list(STRATEGIES))),
       default=st.sampled_from([links.NONE, *MAIN_STRATEGIES]))
def test_any_link_decodes_without_raising(query, default):
    setting, problems = decode(query, default=default)
    assert decode(encode(setting)) == (setting, ())
    assert all(p.field in query for p in problems)


def test_the_explorer_link_of_a_batch_row_is_the_codec_s():
    config = EvalConfig("span", {"mlm_probability": 0.3}, ("numbers", "stopwords"), "punctuation", True, ((1, 0),))
    query = config.explorer_query("the cat", 42, model="m")
    setting, problems = decode(query)
    assert problems == () and "heads" not in query  # the explorer switches heads in its What-if tab
    assert setting == MaskingSetting("span", {"mlm_probability": "0.3"}, True, ("stopwords", "numbers"),
                                     "punctuation", seed=42)
    assert setting.protect == config.protect == ("numbers", "stopwords")
    assert setting.build() == config.build()


# ----------------------------------------------------------------------------- word views


def test_a_word_view_merges_pieces_the_same_way_for_every_caller(tiny_loaded):
    from mlm_core.text.tokens import tokenize

    tokens = tokenize(tiny_loaded.tokenizer, "the cats sat")  # cat ##s: one word of two pieces
    words = word_view(tokens.tokens, tokens.word_ids, tiny_loaded.tokenizer)
    assert words.labels == ("[CLS]", "the", "cats", "sat", "[SEP]")
    assert words.groups == ((0,), (1,), (2, 3), (4,), (5,))
    assert words.positions([3, 4]) == [2, 3] and words.group_of(3) == 2
    attention = np.full((6, 6), 1 / 6)
    assert words.matrix(attention).sum(axis=-1) == pytest.approx(np.ones(5))  # rows still sum to 1
    assert list(words.scores(np.arange(6.0))) == [0, 1, 5, 4, 5]
    plain = word_view(tokens.tokens, tokens.word_ids, tiny_loaded.tokenizer, merge=False)
    assert plain.labels == tuple(tokens.tokens) and plain.positions([3, 4]) == [3, 4]
    assert plain.matrix(attention) is attention


def test_the_cli_merges_words_like_the_page(tiny_model_dir, tiny_loaded):
    import argparse

    from mlm_core.cli.explain import run_attend
    from mlm_core.explain.attention import attention_maps, merge_words, word_groups
    from mlm_core.text.tokens import tokenize

    text = "the cats sat on the [MASK] ."
    args = argparse.Namespace(text=text, model=str(tiny_model_dir), device="cpu", layer=-1, head=None, rollout=False,
                              words=True, json=True)
    record = run_attend(args)
    tokens = tokenize(tiny_loaded.tokenizer, text)
    groups = word_groups(tokens.word_ids)
    reference = merge_words(attention_maps(tiny_loaded, tokens.ids)[-1].mean(axis=0), groups)
    assert record["tokens"][2] == "cats" and len(record["tokens"]) == len(groups) == len(tokens) - 1
    assert np.asarray(record["attention"]) == pytest.approx(reference, abs=1e-5)
    assert record["masked_positions"] == [6]  # the mask's word, counted in words ([CLS] is 0)


def test_every_panel_parameter_has_a_plain_label_and_keeps_its_technical_name_in_the_help():
    """One declaration (``param(..., label=...)``) gives the widget its words and the link/CLI its name."""
    for name in MAIN_STRATEGIES:
        for spec in STRATEGIES[name].params:
            assert spec.label and spec.label != spec.name.replace("_", " "), (name, spec.name)
            assert spec.name in spec.help, (name, spec.name)  # "mlm_probability in Hugging Face"
            for choice, shown in spec.choice_labels:
                assert choice in spec.choices and shown
    mode = {s.name: s for s in STRATEGIES["rule-based"].params}["mode"]
    assert mode.shown_choice("protect") == "never mask them" and mode.parse("protect") == "protect"


def test_an_explorer_link_without_masking_says_none_in_short():
    query = links.explorer_query("The capital of France is [MASK].", MaskingSetting())
    assert query["strategy"] == "none"
