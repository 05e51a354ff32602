"""Privacy masking: what is found, what is not, and how the report maps back to the text and tokens."""

from __future__ import annotations

import time

import pytest

from mlm_core.errors import InputError
from mlm_core.masking import IGNORE_INDEX, MASKED, Compose, RandomMasking, Vocab, mask_text
from mlm_core.text.privacy import (
    CREDIT_CARD,
    EMAIL,
    IBAN,
    IP,
    NUMBER,
    PATTERN_KINDS,
    PHONE,
    URL,
    PrivacyMasking,
)
from mlm_core.text.tokens import tokenize


def found(text: str, **options) -> list[tuple[str, str]]:
    return [(kind, text[s:e]) for kind, s, e in PrivacyMasking(**options).find(text)]


def test_emails():
    text = "Write to jane.doe+news@example.co.uk, Jürgen@bücher.de or BOB@EXAMPLE.ORG."
    assert found(text, kinds=(EMAIL,)) == [
        (EMAIL, "jane.doe+news@example.co.uk"),
        (EMAIL, "Jürgen@bücher.de"),
        (EMAIL, "BOB@EXAMPLE.ORG"),
    ]
    assert found("user@ and @handle and a@b", kinds=(EMAIL,)) == []


def test_urls_drop_trailing_punctuation_but_keep_their_own_brackets():
    text = "See https://example.org/a?b=1, www.example.com. and (https://en.wikipedia.org/wiki/Foo_(bar))."
    assert found(text, kinds=(URL,)) == [
        (URL, "https://example.org/a?b=1"),
        (URL, "www.example.com"),
        (URL, "https://en.wikipedia.org/wiki/Foo_(bar)"),
    ]


@pytest.mark.parametrize(
    "number",
    ["+44 20 7946 0958", "+49 30 901820", "+33 1 42 68 53 00", "+1 415-555-2671", "+81 3-3224-9999"],
)
def test_international_phone_numbers(number):
    assert found(f"Call {number} today.", kinds=(PHONE,)) == [(PHONE, number)]
    assert found(f"Call {number} today.", kinds=(PHONE,), region="") == [(PHONE, number)]


def test_national_phone_numbers_use_the_region():
    assert found("Call (415) 555-2671 now", kinds=(PHONE,)) == [(PHONE, "(415) 555-2671")]
    assert found("Ruf 030 901820 an", kinds=(PHONE,), region="DE") == [(PHONE, "030 901820")]
    assert found("Call (415) 555-2671 now", kinds=(PHONE,), region="") == []


def test_numbers_but_not_digits_inside_words():
    text = "In 2023 we sold 1,234 units at 3.5% off, -7 degrees; A4 paper and covid19 stay."
    assert [s for _, s in found(text, kinds=(NUMBER,))] == ["2023", "1,234", "3.5", "-7"]
    assert [s for _, s in found("٣ and ३", kinds=(NUMBER,))] == ["٣", "३"]  # Unicode digits too


def test_ip_iban_and_card_numbers_are_checked():
    text = "Host 192.168.0.1 and 2001:db8::ff00:42:8329, not 999.1.1.1 or 12:30:45."
    assert found(text, kinds=(IP,)) == [(IP, "192.168.0.1"), (IP, "2001:db8::ff00:42:8329")]
    assert found("IBAN GB82 WEST 1234 5698 7654 32 AND more", kinds=(IBAN,)) == [
        (IBAN, "GB82 WEST 1234 5698 7654 32")
    ]
    assert found("IBAN GB83 WEST 1234 5698 7654 32", kinds=(IBAN,)) == []  # bad checksum
    assert found("card 4111 1111 1111 1111 ok", kinds=(CREDIT_CARD,)) == [
        (CREDIT_CARD, "4111 1111 1111 1111")
    ]
    assert found("card 4111 1111 1111 1112 ok", kinds=(CREDIT_CARD,)) == []  # fails Luhn


@pytest.mark.parametrize(
    "text",
    [
        "The cat sat on the mat.",
        "E.g. Mr. Smith's well-known C++ code runs at www",
        "Paris is the capital of France; it is a big, beautiful city!",
        "« Bonjour » — said the gentleman… twice? Ça va.",
        "東京は日本の首都です。",
        "Send it to the @team by e-mail: that is all.",
    ],
)
def test_no_false_positives_on_ordinary_text(text):
    # The pattern kinds: "Paris" and "Mr. Smith" are a place and a name (test_privacy_entities.py).
    result = PrivacyMasking(kinds=PATTERN_KINDS).apply(text)
    assert result.replacements == () and result.text == text


def test_longest_finding_wins_and_report_spans_are_exact():
    text = "Go to https://bob@example.org/x or mail bob@example.org, tel +44 20 7946 0958."
    result = PrivacyMasking().apply(text)
    assert [r.kind for r in result.replacements] == [URL, EMAIL, PHONE]
    assert result.text == "Go to [URL] or mail [EMAIL], tel [PHONE]."
    for item in result.replacements:
        assert text[item.start : item.end] == item.original
        assert result.text[item.new_start : item.new_end] == item.replacement
    assert result.counts() == {URL: 1, EMAIL: 1, PHONE: 1}


def test_original_span_maps_new_offsets_back(default_tokenizer):
    text = "Mail jane@example.com or call +44 20 7946 0958 about 3 cats."
    result = PrivacyMasking().apply(text)
    tokens = tokenize(default_tokenizer, result.text)
    inside = {i: item for item, positions in result.positions_of(tokens) for i in positions}
    for i, (start, end) in enumerate(tokens.offsets):
        if tokens.special[i]:
            continue
        o_start, o_end = result.original_span(start, end)
        if i in inside:
            assert (o_start, o_end) == (inside[i].start, inside[i].end)
        else:
            assert text[o_start:o_end] == result.text[start:end]
    assert result.original_span(0, len(result.text)) == (0, len(text))


def test_mask_replacement_becomes_masks_without_labels(default_tokenizer):
    vocab = Vocab.from_tokenizer(default_tokenizer)
    strategy = Compose((PrivacyMasking(replacement="mask"), RandomMasking(1.0)))
    out = mask_text(default_tokenizer, "Mail jane@example.com or call +44 20 7946 0958.", strategy)
    assert out.privacy.text == "Mail [MASK] or call [MASK]."
    originals = set(tokenize(default_tokenizer, "jane@example.com +44 20 7946 0958").ids)
    for position in out.tokens.mask_positions:
        assert out.result.kinds[position] == MASKED and out.result.labels[position] == IGNORE_INDEX
    # the personal data never reaches the labels
    assert not {int(x) for x in out.result.labels if x != IGNORE_INDEX} & (originals - set(out.tokens.ids))
    assert len(out.tokens.mask_positions) == 2
    assert vocab.mask_token in out.privacy.text


def test_placeholders_are_protected_from_later_steps(default_tokenizer):
    out = mask_text(
        default_tokenizer, "Mail jane@example.com now.", Compose((PrivacyMasking(), RandomMasking(1.0)))
    )
    protected = out.privacy.protected_positions(out.tokens)
    assert [out.tokens.tokens[i] for i in protected] == ["[", "email", "]"]
    assert all(out.result.kinds[i] is None for i in protected)
    assert out.result.chosen_positions == [i for i in range(1, len(out.tokens) - 1) if i not in protected]


def test_only_personal_data_leaves_nothing_to_mask(default_tokenizer):
    from mlm_core.errors import NothingToMaskError

    with pytest.raises(NothingToMaskError, match="privacy placeholders"):
        mask_text(default_tokenizer, "jane@example.com", Compose((PrivacyMasking(), RandomMasking())))


def test_validation():
    with pytest.raises(InputError, match="kinds: unknown 'emails'"):
        PrivacyMasking(kinds=("emails",))
    with pytest.raises(InputError, match="at least one kind"):
        PrivacyMasking(kinds=())
    with pytest.raises(InputError, match="two-letter country code"):
        PrivacyMasking(region="Narnia")
    assert PrivacyMasking(kinds="email", region="gb") == PrivacyMasking(kinds=(EMAIL,), region="GB")


def test_long_text_stays_fast():
    text = (
        "Call +1 415 555 2671 or mail jane@example.com, see https://example.org. In 2023: 1,234 units. "
        * 1100
    )[:100_000]
    start = time.perf_counter()
    result = PrivacyMasking(kinds=PATTERN_KINDS).apply(text)  # the patterns; the recogniser is linear by design
    assert time.perf_counter() - start < 10  # ~0.15 s here; a guard against quadratic behaviour
    assert result.counts()[EMAIL] > 1000
