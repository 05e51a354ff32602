"""Precision and recall of privacy masking per entity type on a labelled file.

The file is JSON lines: ``{"text": ..., "entities": [{"start": 0, "end": 10, "type": "PERSON"}, ...]}``
with types PERSON, STREET_ADDRESS, PLACE, EMAIL, PHONE (``assets/privacy_eval.jsonl``).

Matching rule: a found span and a labelled span *match* when they have the same type and share at
least one character. Recall = labelled spans matched by some finding ÷ labelled spans; precision =
findings that match some labelled span ÷ findings (findings of kinds the file does not label, such as
numbers, are not counted). The exact rule (same type, same start and end) is reported beside it.

    python -m mlm_core.text.privacy_eval assets/privacy_eval.jsonl
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mlm_core.errors import InputError
from mlm_core.text.entities import PERSON, PLACE, STREET_ADDRESS
from mlm_core.text.privacy import EMAIL, PHONE, PrivacyMasking

TYPE_OF_KIND = {PERSON: "PERSON", STREET_ADDRESS: "STREET_ADDRESS", PLACE: "PLACE", EMAIL: "EMAIL", PHONE: "PHONE"}
TYPES = tuple(TYPE_OF_KIND.values())


def _share(part: int, whole: int) -> float:
    """part / whole; NaN when there is no whole to take a share of."""
    return part / whole if whole else float("nan")


@dataclass(frozen=True)
class TypeScore:
    """Counts and rates for one entity type, under the overlap rule and the exact rule."""

    type: str
    labelled: int
    found: int
    recalled: int  # labelled spans overlapped by a finding of the same type
    correct: int  # findings overlapping a labelled span of the same type
    exact: int  # findings with exactly a labelled span's start, end and type

    @property
    def recall(self) -> float:
        return _share(self.recalled, self.labelled)

    @property
    def precision(self) -> float:
        return _share(self.correct, self.found)

    @property
    def exact_recall(self) -> float:
        return _share(self.exact, self.labelled)

    @property
    def exact_precision(self) -> float:
        return _share(self.exact, self.found)


def read_labelled(path: str | Path) -> list[dict]:
    """The labelled sentences of a JSON-lines file; InputError naming the line that is wrong."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            for entity in row["entities"]:
                if entity["type"] not in TYPES or not 0 <= entity["start"] < entity["end"] <= len(row["text"]):
                    raise ValueError(f"bad entity {entity}")
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}, line {number}: not a labelled sentence ({exc}).") from None
        rows.append(row)
    return rows


def evaluate(rows: list[dict], masking: PrivacyMasking | None = None) -> dict[str, TypeScore]:
    """Scores per entity type of ``masking`` (default: every kind) on labelled ``rows``."""
    masking = masking or PrivacyMasking()
    counts = {t: [0, 0, 0, 0, 0] for t in TYPES}  # labelled, found, recalled, correct, exact
    for row in rows:
        gold = [(e["type"], e["start"], e["end"]) for e in row["entities"]]
        found = [(TYPE_OF_KIND[k], s, e) for k, s, e in masking.find(row["text"]) if k in TYPE_OF_KIND]
        for kind, start, end in gold:
            counts[kind][0] += 1
            counts[kind][2] += any(k == kind and s < end and e > start for k, s, e in found)
        for kind, start, end in found:
            counts[kind][1] += 1
            counts[kind][3] += any(k == kind and s < end and e > start for k, s, e in gold)
            counts[kind][4] += (kind, start, end) in gold
    return {t: TypeScore(t, *c) for t, c in counts.items()}


def table(scores: dict[str, TypeScore]) -> str:
    """A Markdown table of the scores (the README's privacy section shows it)."""
    lines = ["| type | labelled | found | precision | recall | exact precision | exact recall |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for s in scores.values():
        lines.append(f"| {s.type} | {s.labelled} | {s.found} | {s.precision:.2f} | {s.recall:.2f} | "
                     f"{s.exact_precision:.2f} | {s.exact_recall:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = (argv if argv is not None else sys.argv[1:]) or ["assets/privacy_eval.jsonl"]
    for path in paths:
        try:
            rows = read_labelled(path)
        except (InputError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{path}: {len(rows)} sentences\n{table(evaluate(rows))}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
