"""Tokenization: typed mask tokens, typed control strings, offsets in odd scripts, categories."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.text.tokens import (
    CONTENT,
    MAX_TEXT_CHARS,
    NUMBER,
    PUNCTUATION,
    SPECIAL,
    STOPWORD,
    tokenize,
    tokenize_many,
    word_category,
)

CORPUS = ["the cat sat on the mat", "paris is the capital of france", "the dog ran in the house"]


@pytest.fixture(scope="module")
def roberta_tokenizer():
    """A tiny byte-level BPE tokenizer with RoBERTa's special tokens, trained offline in milliseconds."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, special_tokens=specials)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    mask = AddedToken(
        "<mask>", lstrip=True, rstrip=False, special=True
    )  # as in roberta-base's tokenizer.json
    return RobertaTokenizer(vocab=model["vocab"], merges=merges, mask_token=mask)


def assert_offsets_line_up(tokens):
    """Every span lies inside the original text, in order, and specials have (0, 0).

    Byte-level tokenizers split one character into several tokens; those share its span.
    """
    text = tokens.text
    previous = (0, 0)
    for i, (start, end) in enumerate(tokens.offsets):
        if tokens.special[i]:
            assert (start, end) == (0, 0)
            continue
        assert 0 <= start <= end <= len(text)
        assert start >= previous[1] or (start, end) == previous, f"token {i} overlaps the one before"
        previous = (start, end)


def test_typed_mask_token_is_honoured(tiny_tokenizer):
    tokens = tokenize(tiny_tokenizer, "The cat [MASK] on the mat.")
    assert tokens.tokens[0] == "[CLS]" and tokens.tokens[-1] == "[SEP]"
    assert tokens.mask_positions == [3]
    assert tokens.ids[3] == tiny_tokenizer.mask_token_id
    assert tokens.text[slice(*tokens.offsets[3])] == "[MASK]"


def test_mask_token_glued_to_words(tiny_tokenizer):
    tokens = tokenize(tiny_tokenizer, "cat[MASK][MASK].")
    assert len(tokens.mask_positions) == 2
    assert [tokens.text[slice(*tokens.offsets[p])] for p in tokens.mask_positions] == ["[MASK]"] * 2


@pytest.mark.parametrize("typed", ["[CLS]", "[SEP]", "</s>", "<pad>", "[PAD]", "<s>", "[UNK]"])
def test_typed_control_strings_stay_text(tiny_tokenizer, typed):
    tokens = tokenize(tiny_tokenizer, f"the cat {typed} sat")
    control = {tiny_tokenizer.cls_token_id, tiny_tokenizer.sep_token_id, tiny_tokenizer.pad_token_id}
    inner = tokens.ids[1:-1]
    assert not control & set(inner), f"typed {typed} became a control token"
    assert tokens.special == (True,) + (False,) * len(inner) + (True,)
    assert tokens.mask_positions == []
    assert_offsets_line_up(tokens)


def test_other_models_mask_string_is_plain_text(tiny_tokenizer):
    tokens = tokenize(tiny_tokenizer, "the cat <mask> sat")  # RoBERTa's mask, typed for a BERT model
    assert tokens.mask_positions == []
    assert "mask" in tokens.text[min(s for s, _ in tokens.offsets[1:-1]) :]


def test_default_tokenizer_honours_its_mask(default_tokenizer):
    tokens = tokenize(default_tokenizer, "Paris is the capital of [MASK]. <mask> [CLS]")
    assert len(tokens.mask_positions) == 1
    assert default_tokenizer.cls_token_id not in tokens.ids[1:-1]


@pytest.mark.parametrize(
    "text", ["the cat <mask> sat", "paris is the capital of <mask>.", "<mask> ran  <mask>"]
)
def test_roberta_mask_is_honoured_like_the_tokenizer_does(roberta_tokenizer, text):
    tokens = tokenize(roberta_tokenizer, text)
    assert list(tokens.ids) == roberta_tokenizer(text)["input_ids"]  # no stray "Ġ" before <mask>
    assert len(tokens.mask_positions) == text.count("<mask>")
    assert all(tokens.text[slice(*tokens.offsets[p])] == "<mask>" for p in tokens.mask_positions)


@pytest.mark.parametrize(
    "text", ["the cat [MASK] sat", "paris is the capital of [MASK].", "[MASK] ran [MASK]"]
)
def test_bert_ids_match_the_tokenizer(tiny_tokenizer, text):
    assert list(tokenize(tiny_tokenizer, text).ids) == tiny_tokenizer(text)["input_ids"]


@pytest.mark.parametrize("typed", ["[MASK]", "</s>", "<s>", "<pad>", "<unk>"])
def test_roberta_treats_other_strings_as_text(roberta_tokenizer, typed):
    tokens = tokenize(roberta_tokenizer, f"the cat {typed} sat")
    assert tokens.mask_positions == []
    assert not set(roberta_tokenizer.all_special_ids) & set(tokens.ids[1:-1])
    assert_offsets_line_up(tokens)


ODD_TEXTS = {
    "emoji": "I love 🍕 and 🐱!",
    "zwj": "the family 👩‍👩‍👧‍👦 sat",
    "flags": "🇫🇷 is france",
    "combining": "cafe\u0301 and e\u0301te\u0301",
    "rtl": "שלום the cat مرحبا",
    "bidi_marks": "the \u202ecat\u202c sat \u200f",
    "cjk": "東京は大きい city",
    "nul": "the\x00cat sat",
    "lone_surrogate": "the \ud800 cat \udfff",
    "mixed": "a\u200bb\u00adc \ufeffd",
}


@pytest.mark.parametrize("name", sorted(ODD_TEXTS))
def test_offsets_point_into_original_text(tiny_tokenizer, default_tokenizer, roberta_tokenizer, name):
    text = ODD_TEXTS[name]
    for tokenizer in (tiny_tokenizer, default_tokenizer, roberta_tokenizer):
        tokens = tokenize(tokenizer, text)
        assert_offsets_line_up(tokens)
        assert len(tokens.ids) == len(tokens.offsets) == len(tokens.categories) == len(tokens.word_ids)


def test_zwj_sequence_is_one_span(tiny_tokenizer):
    text = ODD_TEXTS["zwj"]
    tokens = tokenize(tiny_tokenizer, text)
    family = "👩‍👩‍👧‍👦"
    spans = [tokens.text[s:e] for s, e in tokens.offsets[1:-1]]
    assert "".join(s for s in spans if s not in ("the", "family", "sat")) == family


def test_combining_marks_stay_with_their_letter(tiny_tokenizer):
    tokens = tokenize(tiny_tokenizer, "cafe\u0301 sat")
    spans = [tokens.text[s:e] for s, e in tokens.offsets[1:-1]]
    assert spans[0] == "cafe\u0301"  # the accent is inside the highlight even though the tokenizer dropped it


def test_cjk_characters_map_to_themselves(tiny_tokenizer):
    tokens = tokenize(tiny_tokenizer, "東京")
    assert [tokens.text[s:e] for s, e in tokens.offsets[1:-1]] == ["東", "京"]


@pytest.mark.parametrize(
    "text",
    ["", " ", "   \n\t ", "\u200b\u200b", "\u200e\u200f\u202a\u202c", "\x00\x01\x7f", "\ufeff", "\ud800"],
)
def test_nothing_to_mask(tiny_tokenizer, text):
    with pytest.raises(NothingToMaskError, match="Nothing to mask"):
        tokenize(tiny_tokenizer, text)


def test_non_string_is_refused(tiny_tokenizer):
    with pytest.raises(InputError):
        tokenize(tiny_tokenizer, None)


def test_too_long_text(tiny_tokenizer):
    with pytest.raises(InputError, match="limit is 100,000") as caught:
        tokenize(tiny_tokenizer, "a " * (MAX_TEXT_CHARS // 2 + 1))
    assert not isinstance(caught.value, NothingToMaskError)


def test_categories(tiny_tokenizer):
    tokens = tokenize(tiny_tokenizer, "The cat ran 12 times « big » 、 !")
    by_word = {tokens.word_text(i): tokens.categories[i] for i in range(1, len(tokens) - 1)}
    assert by_word["The"] == STOPWORD
    assert by_word["cat"] == CONTENT
    assert by_word["12"] == NUMBER
    assert by_word["«"] == by_word["»"] == by_word["、"] == by_word["!"] == PUNCTUATION
    assert tokens.categories[0] == tokens.categories[-1] == SPECIAL


def test_all_pieces_of_a_word_share_its_category(tiny_tokenizer):
    tokens = tokenize(tiny_tokenizer, "cats")  # cat ##s
    assert tokens.tokens[1:-1] == ("cat", "##s")
    assert tokens.categories[1] == tokens.categories[2] == CONTENT
    assert tokens.word_ids[1] == tokens.word_ids[2]


@pytest.mark.parametrize(
    ("word", "category"),
    [
        ("the", STOPWORD),
        ("Und", CONTENT),
        ("1,000", NUMBER),
        ("3.5%", NUMBER),
        ("—", PUNCTUATION),
        ("¿", PUNCTUATION),
        ("「", PUNCTUATION),
        ("€", PUNCTUATION),
        ("house", CONTENT),
        ("", PUNCTUATION),
    ],
)
def test_word_category(word, category):
    assert word_category(word) == category


def test_with_ids_keeps_offsets(tiny_tokenizer):
    tokens = tokenize(tiny_tokenizer, "the cat sat")
    ids = list(tokens.ids)
    ids[2] = tiny_tokenizer.mask_token_id
    masked = tokens.with_ids(ids, tiny_tokenizer)
    assert masked.offsets == tokens.offsets and masked.mask_positions == [2]
    assert masked.tokens[2] == "[MASK]"
    with pytest.raises(InputError):
        tokens.with_ids(ids[:-1], tiny_tokenizer)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60) | st.text(alphabet="the cat[MASK]<>/s 👩‍🇫é\u0301\x00\u200b", max_size=40))
def test_any_text_tokenizes_or_says_nothing_to_mask(tiny_tokenizer, text):
    try:
        tokens = tokenize(tiny_tokenizer, text)
    except NothingToMaskError:
        return
    assert_offsets_line_up(tokens)
    assert tokens.special[0] and tokens.special[-1] and not any(tokens.special[1:-1])
    assert tokens.mask_positions == [i for i, t in enumerate(tokens.ids) if t == tiny_tokenizer.mask_token_id]
    assert len(tokens.mask_positions) == text.count("[MASK]")
    for position in tokens.mask_positions:
        assert tokens.text[slice(*tokens.offsets[position])] == "[MASK]"


TEXTS = st.text(max_size=40) | st.text(alphabet="the cat[MASK]<>/s 👩‍🇫é\u0301\x00\u200b <mask>", max_size=30)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXTS | st.just("") | st.just("[MASK]"), max_size=8))
def test_tokenizing_many_at_once_gives_each_what_it_gets_alone(tiny_tokenizer, roberta_tokenizer, texts):
    for tokenizer in (tiny_tokenizer, roberta_tokenizer):
        together = tokenize_many(tokenizer, texts)
        assert len(together) == len(texts)
        for text, ours in zip(texts, together):
            try:
                alone = tokenize(tokenizer, text)
            except InputError as exc:
                assert type(ours) is type(exc) and str(ours) == str(exc)
                continue
            assert ours == alone


def test_stopwords_are_spacys_lists_read_without_importing_spacy():
    import importlib
    import subprocess
    import sys

    from support import REPO

    from mlm_core.text.tokens import stopwords

    for code in ("en", "de", "zh"):
        assert stopwords(code) == {w.lower() for w in importlib.import_module(f"spacy.lang.{code}.stop_words").STOP_WORDS}
    check = ("import sys; from mlm_core.text.tokens import stopwords; assert 'the' in stopwords('en'); "
             "print('spacy' in sys.modules)")
    # importing spaCy for its word lists cost a fresh server 2.3 s (261 modules) on its first sentences
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "False"
