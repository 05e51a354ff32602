"""Privacy (data) masking: find personal data in raw text and replace it before tokenization.

Detected kinds: e-mail addresses, URLs, IP addresses (v4 and v6), IBANs (mod-97 checked),
credit-card-like digit runs (Luhn checked), phone numbers (the ``phonenumbers`` library,
national formats read with ``region``, international ones with ``+``), street addresses,
person names and places (``mlm_core.text.entities``: patterns and spaCy's English named-entity
recogniser, loaded only when one of those kinds is asked for) and other numbers.
When two findings overlap, the longer one wins (``https://bob@x.com`` is one URL, not an
e-mail plus a URL); at equal length the kind listed first in ``PII_KINDS`` wins.

Each finding is replaced by a typed placeholder (``[EMAIL]``) or by the model's mask token.
How that maps to tokens, so that later masking steps treat it consistently:

* ``replacement="mask"``: one mask token per finding. The tokenizer honours a typed mask
  token, so the masking engine reports it as kind ``"masked"`` with label -100: the model is
  asked to fill it, and the original (the personal data) is never kept, not even as a label.
* ``replacement="placeholder"``: the placeholder is ordinary text the model reads. Its
  tokens are *protected* (``PrivacyResult.protected_positions``): later steps never choose or
  exclude them, their kind stays ``None`` and their label -100.

``PrivacyResult.original_span`` maps offsets in the new text back to the original text, so
highlights line up with what the user typed.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from mlm_core.errors import InputError
from mlm_core.settings import Validated, param
from mlm_core.text.entities import (
    PERSON,
    PLACE,
    STREET_ADDRESS,
    find_people_and_places,
    find_people_and_places_many,
    find_streets,
)

EMAIL = "email"
URL = "url"
IP = "ip"
IBAN = "iban"
CREDIT_CARD = "credit_card"
PHONE = "phone"
NUMBER = "number"
PII_KINDS = (EMAIL, URL, IP, IBAN, CREDIT_CARD, PHONE, STREET_ADDRESS, PERSON, PLACE, NUMBER)  # also the tie-break order
NAMED_ENTITY_KINDS = (PERSON, PLACE)  # found by the statistical recogniser (the others by patterns and checks)
PATTERN_KINDS = tuple(k for k in PII_KINDS if k not in NAMED_ENTITY_KINDS)  # found without loading the recogniser
PLACEHOLDERS = {
    EMAIL: "[EMAIL]",
    URL: "[URL]",
    IP: "[IP]",
    IBAN: "[IBAN]",
    CREDIT_CARD: "[CARD]",
    PHONE: "[PHONE]",
    STREET_ADDRESS: "[ADDRESS]",
    PERSON: "[PERSON]",
    PLACE: "[PLACE]",
    NUMBER: "[NUMBER]",
}
REPLACEMENTS = ("placeholder", "mask")

# Bounded repeats keep every pattern linear in the text length (no catastrophic backtracking).
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]{1,64}@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.){1,8}[^\W\d_]{2,63}(?![\w-])"
)
_URL = re.compile(r"(?<![\w/])(?:(?:https?|ftp)://|www\.)[^\s<>\"'`]{1,2000}", re.IGNORECASE)
_URL_TRAILING = ".,;:!?'\")]}>"
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,8}(?![\w])")
_CARD = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![\d])")
_NUMBER = re.compile(r"(?<![\w])[+-]?\d+(?:[.,:/-]\d+)*(?![\w])")
_IBAN_LENGTH = (15, 34)


@dataclass(frozen=True)
class Replacement:
    """One finding: its kind, its span in the original text and in the new text.

    Example: in ``"mail bob@x.org"`` an e-mail at ``(5, 14)`` becomes ``"[EMAIL]"`` at
    ``(5, 12)`` of the new text.
    """

    kind: str
    start: int  # span in the original text
    end: int
    original: str
    replacement: str
    new_start: int  # span of the replacement in the new text
    new_end: int


@dataclass(frozen=True)
class PrivacyResult:
    """The new text and what was replaced, in order of position."""

    original_text: str
    text: str
    replacements: tuple[Replacement, ...]

    def counts(self) -> dict[str, int]:
        """Number of replacements per kind, e.g. ``{"email": 1, "phone": 2}``."""
        out: dict[str, int] = {}
        for item in self.replacements:
            out[item.kind] = out.get(item.kind, 0) + 1
        return out

    def positions_of(self, tokens) -> list[tuple[Replacement, list[int]]]:
        """Each replacement with the token positions (of ``tokens = tokenize(tok, self.text)``) it covers."""
        spans = [
            (i, s, e)
            for i, ((s, e), sp) in enumerate(zip(tokens.offsets, tokens.special, strict=True))
            if not sp
        ]
        return [
            (item, [i for i, s, e in spans if s < item.new_end and e > item.new_start])
            for item in self.replacements
        ]

    def protected_positions(self, tokens) -> list[int]:
        """Token positions inside any replacement: later masking steps must leave them alone."""
        return sorted({i for _, positions in self.positions_of(tokens) for i in positions})

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """Map a span of the new text to the original text (a span inside a replacement maps to all of it)."""
        return self._to_original(start, is_end=False), self._to_original(end, is_end=True)

    def _to_original(self, offset: int, is_end: bool) -> int:
        starts = [item.new_start for item in self.replacements]
        index = bisect.bisect_right(starts, offset - 1 if is_end else offset) - 1
        if index < 0:
            return offset
        item = self.replacements[index]
        if offset < item.new_end or (is_end and offset == item.new_end):
            return item.end if is_end else item.start
        return item.end + (offset - item.new_end)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(compact: str) -> bool:
    if not _IBAN_LENGTH[0] <= len(compact) <= _IBAN_LENGTH[1]:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _find_ibans(text: str):
    for match in _IBAN.finditer(text):
        # The pattern may run into following capitals ("... 00 AND"): try shorter group ends.
        chunk = match.group()
        ends = [m.start() for m in re.finditer(" ", chunk)] + [len(chunk)]
        for end in reversed(ends):
            compact = chunk[:end].replace(" ", "")
            if compact.isascii() and _iban_ok(compact):
                yield match.start(), match.start() + end
                break


def _find_urls(text: str):
    for match in _URL.finditer(text):
        start, end = match.span()
        while end > start and text[end - 1] in _URL_TRAILING:
            # A closing bracket belongs to the URL only when the URL opened it (Wikipedia links).
            if text[end - 1] == ")" and text.count("(", start, end) >= text.count(")", start, end):
                break
            end -= 1
        if end - start > 4:
            yield start, end


def _find_ips(text: str):
    for pattern in (_IPV4, _IPV6):
        for match in pattern.finditer(text):
            candidate = match.group()
            if not any(ch.isalnum() for ch in candidate):
                continue
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                continue
            yield match.span()


def _find_cards(text: str):
    for match in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if digits.isascii() and 13 <= len(digits) <= 19 and _luhn_ok(digits):
            yield match.span()


def _find_phones(text: str, region: str):
    import phonenumbers

    matcher = phonenumbers.PhoneNumberMatcher(text, region or None, leniency=phonenumbers.Leniency.VALID)
    for match in matcher:
        yield match.start, match.end


@dataclass(frozen=True)
class PrivacyMasking(Validated):
    """Privacy: replace e-mails, URLs, phone numbers, names, addresses, places and numbers in the raw text.

    A text-level step: it runs before tokenization (``mask_text`` and ``prepare_text`` in
    ``mlm_core.masking`` run it first), and the trainer applies it when it reads the corpus.

    Example::

        PrivacyMasking().apply("Write to bob@example.org or call +44 20 7946 0958.").text
        # 'Write to [EMAIL] or call [PHONE].'
        PrivacyMasking().apply("John Smith lives at 12 Baker Street, London").text
        # '[PERSON] lives at [ADDRESS], [PLACE]'
    """

    name: ClassVar[str] = "privacy"
    label: ClassVar[str] = "privacy masking"

    kinds: tuple[str, ...] = field(
        default=PII_KINDS, metadata=param(
            "Kinds of personal data to replace. Person names and places are found by spaCy's English "
            "named-entity recogniser (about a second to load the first time) (kinds).", choices=PII_KINDS,
            label="Kinds of personal data")
    )
    replacement: str = field(
        default="placeholder",
        metadata=param("Replace with a typed placeholder ([EMAIL]) or the mask token.", choices=REPLACEMENTS),
    )
    region: str = field(
        default="US",
        metadata=param("Country (ISO code) for phone numbers written without +; empty: only +numbers."),
    )

    def _check(self) -> None:
        if not self.kinds:
            raise InputError(
                f"{self.label}: choose at least one kind of personal data ({', '.join(PII_KINDS)})."
            )
        region = self.region.strip().upper()
        if region:
            import phonenumbers

            if region not in phonenumbers.SUPPORTED_REGIONS:
                raise InputError(
                    f"{self.label}: unknown phone region {self.region!r}; use a two-letter country code "
                    "such as US, GB, DE or FR, or leave it empty for +international numbers only."
                )
        object.__setattr__(self, "region", region)

    def describe(self) -> str:
        return self.label

    @property
    def _named_kinds(self) -> tuple[str, ...]:
        return tuple(k for k in self.kinds if k in NAMED_ENTITY_KINDS)

    def find(self, text: str, named: list[tuple[str, int, int]] | None = None) -> list[tuple[str, int, int]]:
        """Non-overlapping findings ``(kind, start, end)`` in ``text``, in order of position.

        ``named``: the recogniser's findings for ``text`` when already known (``apply_many`` batches them).
        """
        if not isinstance(text, str):
            raise InputError("Privacy masking needs text.")
        found = [] if named is None else [named]

        def named_entities():  # one pass of the recogniser serves both names and places
            if not found:
                found.append(find_people_and_places(text, self._named_kinds))
            return found[0]

        finders = {
            EMAIL: lambda: (m.span() for m in _EMAIL.finditer(text)),
            URL: lambda: _find_urls(text),
            IP: lambda: _find_ips(text),
            IBAN: lambda: _find_ibans(text),
            CREDIT_CARD: lambda: _find_cards(text),
            PHONE: lambda: _find_phones(text, self.region),
            STREET_ADDRESS: lambda: find_streets(text),
            PERSON: lambda: (span for kind, *span in named_entities() if kind == PERSON),
            PLACE: lambda: (span for kind, *span in named_entities() if kind == PLACE),
            NUMBER: lambda: (m.span() for m in _NUMBER.finditer(text)),
        }
        candidates = [
            (kind, start, end) for kind in self.kinds for start, end in finders[kind]() if end > start
        ]
        priority = {kind: i for i, kind in enumerate(PII_KINDS)}
        candidates.sort(key=lambda c: (c[1] - c[2], priority[c[0]], c[1]))  # longest first
        taken = np.zeros(len(text) + 1, dtype=bool)
        accepted = []
        for kind, start, end in candidates:
            if not taken[start:end].any():
                taken[start:end] = True
                accepted.append((kind, start, end))
        return sorted(accepted, key=lambda c: c[1])

    def apply_many(self, texts, mask_token: str = "[MASK]") -> list[PrivacyResult]:
        """``apply`` to each text, the recogniser run over all of them in batches (a corpus)."""
        texts = list(texts)
        if not all(isinstance(text, str) for text in texts):
            raise InputError("Privacy masking needs text.")
        named = find_people_and_places_many(texts, self._named_kinds) if self._named_kinds else [[]] * len(texts)
        return [self.apply(text, mask_token, named=found) for text, found in zip(texts, named, strict=True)]

    def apply(self, text: str, mask_token: str = "[MASK]", named: list | None = None) -> PrivacyResult:
        """Replace every finding; ``mask_token`` is the model's (``<mask>`` for RoBERTa)."""
        pieces: list[str] = []
        replacements = []
        cursor = new_length = 0
        for kind, start, end in self.find(text, named):
            pieces.append(text[cursor:start])
            new_length += start - cursor
            replacement = mask_token if self.replacement == "mask" else PLACEHOLDERS[kind]
            pieces.append(replacement)
            replacements.append(
                Replacement(
                    kind, start, end, text[start:end], replacement, new_length, new_length + len(replacement)
                )
            )
            new_length += len(replacement)
            cursor = end
        pieces.append(text[cursor:])
        return PrivacyResult(original_text=text, text="".join(pieces), replacements=tuple(replacements))
