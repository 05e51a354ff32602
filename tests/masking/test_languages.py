"""Languages: spaCy stopword lists for any language, Chinese punctuation, and Chinese whole-word masking
(jieba segmentation, all characters of a word masked together) on a tiny character vocabulary built here."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import build_tiny_bert

from mlm_core import links
from mlm_core.errors import InputError
from mlm_core.masking import (
    RuleBased,
    TokenBatch,
    Vocab,
    WholeWordMasking,
    apply_strategy,
    build_strategy,
    mask_batch,
    mask_text,
    params_of,
    strategy_from_params,
)
from mlm_core.masking.language import text_language
from mlm_core.text.languages import LANGUAGES, segment_words
from mlm_core.text.tokens import PUNCTUATION, STOPWORD, stopwords, tokenize, word_category

CHINESE_CHARS = "我爱北京天安门今天气很好的了是在他们学生喜欢中文书这本一个人"
CHINESE_PUNCTUATION = "，。！？、；：「」《》"
CHINESE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHINESE_CHARS, *CHINESE_PUNCTUATION]
SENTENCE = "我爱北京天安门，今天天气很好。"


@pytest.fixture(scope="module")
def chinese_model_dir(tmp_path_factory):
    """A tiny random BertForMaskedLM with a character-level Chinese tokenizer, as a user's model folder."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-chinese-bert"), vocab=CHINESE_VOCAB)


@pytest.fixture(scope="module")
def chinese_tokenizer(chinese_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(chinese_model_dir)


def words_of(tokens) -> list[str]:
    """The text of each word, in order (the characters that share a word id)."""
    groups: dict[int, str] = {}
    for token, word in zip(tokens.tokens, tokens.word_ids):
        if word is not None:
            groups[word] = groups.get(word, "") + token
    return list(groups.values())


def test_every_spacy_stopword_language_is_offered_and_loads():
    assert {"en", "de", "fr", "zh", "ja"} <= set(LANGUAGES)
    for language in LANGUAGES:
        assert stopwords(language), language  # each offered language has a non-empty list
    with pytest.raises(InputError, match="No stopword list"):
        stopwords("xx")


def test_categories_follow_the_language():
    assert word_category("der", "de") == STOPWORD and word_category("der", "en") != STOPWORD
    assert word_category("的", "zh") == STOPWORD and word_category("的", "en") != STOPWORD
    for mark in CHINESE_PUNCTUATION:
        assert word_category(mark, "zh") == PUNCTUATION, mark


def test_jieba_segments_and_stays_quiet():
    assert segment_words("我爱北京天安门", "zh") == [(0, 1), (1, 2), (2, 4), (4, 7)]
    assert segment_words("I love Beijing", "en") is None
    # Loading the dictionary prints nothing on stdout (a CLI's --json output must stay clean).
    code = "from mlm_core.text.languages import segment_words; segment_words('我爱北京', 'zh')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout == ""
    assert "Building prefix dict" not in done.stderr


def test_character_tokenizer_gets_jieba_words(chinese_tokenizer):
    english = tokenize(chinese_tokenizer, SENTENCE)  # the tokenizer alone: one word per character
    assert words_of(english)[:4] == ["我", "爱", "北", "京"]
    chinese = tokenize(chinese_tokenizer, SENTENCE, language="zh")
    assert words_of(chinese) == ["我", "爱", "北京", "天安门", "，", "今天天气", "很", "好", "。"]
    assert chinese.tokens == english.tokens and chinese.offsets == english.offsets  # only the grouping moves
    by_word = dict(zip(words_of(chinese), sorted(set(w for w in chinese.word_ids if w is not None))))
    assert {c for c, w in zip(chinese.categories, chinese.word_ids) if w == by_word["，"]} == {PUNCTUATION}


def test_chinese_whole_word_masks_every_character_of_a_word(chinese_tokenizer):
    tokens = tokenize(chinese_tokenizer, SENTENCE, language="zh")
    vocab = Vocab.from_tokenizer(chinese_tokenizer)
    strategy = WholeWordMasking(mlm_probability=0.4, language="zh")
    batch = TokenBatch.from_tokens([tokens] * 64)
    chosen = mask_batch(batch, strategy, vocab, rng=0).labels != -100  # (64, T)
    word_ids = torch.tensor([-1 if w is None else w for w in tokens.word_ids])
    for w in set(word_ids.tolist()) - {-1}:
        columns = chosen[:, word_ids == w]
        assert bool((columns.all(1) | ~columns.any(1)).all()), w  # all characters of a word, or none
    beijing = chosen[:, [i for i, t in enumerate(tokens.tokens) if t in "北京"]]
    assert beijing.any()  # the two-character word is drawn sometimes, always whole


def test_mask_text_reads_the_language_from_the_strategy(chinese_tokenizer):
    masked = mask_text(chinese_tokenizer, SENTENCE, WholeWordMasking(mlm_probability=0.5, language="zh"), rng=3)
    assert "北京" in words_of(masked.tokens)
    protect = build_strategy("random", {"mlm_probability": 1.0}, protect=["stopwords", "punctuation"],
                             language="zh")
    result = mask_text(chinese_tokenizer, "我们是学生的书。", protect, rng=0).result
    tokens = mask_text(chinese_tokenizer, "我们是学生的书。", protect, rng=0).tokens
    chosen = {tokens.tokens[p] for p in result.chosen_positions}
    assert chosen and not chosen & {"是", "的", "。"}  # Chinese stopwords and punctuation are never chosen


def test_rule_based_targets_chinese_stopwords(chinese_tokenizer):
    strategy = RuleBased(rule="stopwords", language="zh")
    masked = mask_text(chinese_tokenizer, "他是我的学生。", strategy, rng=0)
    chosen = {masked.tokens.tokens[p] for p in masked.result.chosen_positions}
    assert {"是", "的"} <= chosen and "。" not in chosen


def test_steps_must_agree_on_the_language():
    strategy = strategy_from_params("compose", {"steps": [
        {"name": "rule-based", "params": {"mode": "protect", "language": "de"}},
        {"name": "whole-word", "params": {"language": "zh"}}]})
    with pytest.raises(InputError, match="different languages"):
        text_language(strategy)
    assert text_language(None) == "en" and text_language(build_strategy("random")) == "en"


def test_language_in_links_cli_params_and_registry():
    setting = links.MaskingSetting("whole-word", {"mlm_probability": 0.3}, protect=["stopwords"], language="zh")
    query = links.encode(setting)
    assert query["language"] == "zh" and "p_language" not in query
    assert links.decode(query) == (setting, ())
    assert text_language(setting.build()) == "zh" and text_language(setting.main()) == "zh"
    # An old-style link that carries the strategy's own parameter reads as the setting's language.
    assert links.decode({"strategy": "whole-word", "p_language": "zh"})[0].language == "zh"
    decoded, problems = links.decode({"strategy": "random", "language": "klingon"})
    assert decoded.language == "en" and problems[0].field == "language"
    # Training stores params_of(strategy): the language travels with it.
    assert params_of(WholeWordMasking(language="zh"))["language"] == "zh"
    with pytest.raises(InputError, match="language must be one of"):
        strategy_from_params("whole-word", {"language": "klingon"})


def test_cli_language_flag(chinese_model_dir, capsys):
    import json

    from support.cli import run_cli

    status, out, err = run_cli(capsys, "mask", "我爱北京天安门", "--model", chinese_model_dir, "--strategy",
                               "whole-word", "--rate", "0.5", "--language", "zh", "--json")
    assert status == 0, err
    record = json.loads(out)
    chosen = [t for t, k in zip(record["original_tokens"], record["kinds"]) if k]
    assert chosen and ("北" in chosen) == ("京" in chosen) and ("天" in chosen) == ("门" in chosen)
    status, _, err = run_cli(capsys, "mask", "我爱北京", "--model", chinese_model_dir, "--strategy", "random",
                             "--language", "klingon")
    assert status == 2 and "language must be one of" in err


def test_explorer_on_a_chinese_model_folder(chinese_model_dir):
    from mlm_core.explain.exploration import explore
    from mlm_core.model.loading import load_model

    loaded = load_model(str(chinese_model_dir), device="cpu")
    result = explore(loaded, SENTENCE, WholeWordMasking(mlm_probability=0.5, language="zh"), 1, top_k=3)
    assert result.prediction.predictions and "北京" in words_of(result.tokens)
    typed = explore(loaded, "我爱[MASK]京。", None, 0, top_k=3)
    assert len(typed.prediction.predictions) == 1
    rules = explore(loaded, "他是我的学生。", RuleBased(rule="stopwords", language="zh"), 0, top_k=3)
    assert rules.prediction.positions
    apply_strategy(rules.tokens, RuleBased(rule="punctuation", language="zh"), Vocab.from_tokenizer(loaded.tokenizer))


def test_training_blocks_group_chinese_words(chinese_tokenizer):
    from mlm_core.masking import CATEGORY_CODES
    from mlm_core.training.data import pack

    data = pack([SENTENCE, "他是我的学生。"], chinese_tokenizer, 32, keep_words=False, language="zh")
    tokens = chinese_tokenizer.convert_ids_to_tokens(data.ids[0].tolist())
    bei, jing = tokens.index("北"), tokens.index("京")
    assert data.word_ids[0, bei] == data.word_ids[0, jing] != data.word_ids[0, bei - 1]
    assert data.categories[0, tokens.index("的")] == CATEGORY_CODES[STOPWORD]
    english = pack([SENTENCE], chinese_tokenizer, 32, keep_words=False)
    assert english.word_ids[0, bei] != english.word_ids[0, jing]


@pytest.mark.usefixtures("clean_streamlit_caches")
def test_explore_page_takes_the_language_from_the_link(chinese_model_dir):
    from support.apptest import open_app_page, shown_errors

    app = open_app_page(None, {"model": str(chinese_model_dir), "text": SENTENCE, "strategy": "whole-word",
                               "language": "zh", "p_mlm_probability": "0.5"})
    assert not shown_errors(app)
    assert app.selectbox(key="mask-language").value == "zh"
    assert app.query_params["language"] == "zh"
    app.selectbox(key="mask-language").set_value("en").run()
    assert not shown_errors(app) and "language" not in app.query_params


@pytest.mark.usefixtures("clean_streamlit_caches")
def test_teach_lesson_on_a_chinese_model_folder(chinese_model_dir):
    from support.apptest import open_app_page, shown_errors

    from ui.teach import load_lesson

    app = open_app_page("app_pages/teach.py", {"model": str(chinese_model_dir)})
    for _ in load_lesson()["steps"][:-1]:
        app.text_input(key="teach-text").input("我爱北[MASK]天安门，今天天气很好。").run()
        assert not app.exception and not shown_errors(app), shown_errors(app)
        app.button(key="teach-next").click().run()


def test_train_flags_store_the_language_in_the_strategy_params():
    import argparse

    from mlm_core.cli.training import add_train_arguments, train_config_from_args
    from mlm_core.masking.language import text_language

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_train_arguments(parser)
    args = parser.parse_args(["--corpus", "c.txt", "--strategy", "whole-word", "--language", "zh",
                              "--protect", "stopwords"])
    config = train_config_from_args(args, "c.txt")
    assert text_language(strategy_from_params(config.strategy, config.strategy_params)) == "zh"
