"""``EvalReport``: what ``evaluate`` returns. Counts are in memory, rows stay on disk in the
cache entries and are read on demand (summary table, JSON document, row downloads, hardest rows,
explorer links of single rows).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mlm_core.errors import InputError, MaskLabError
from mlm_core.evaluate.cache import SENTENCE_COLUMNS, TEXT_COLUMNS, TOKEN_COLUMNS, Entry
from mlm_core.evaluate.config import EvalConfig, sentence_seed
from mlm_core.evaluate.tally import GROUPS, Tally, group_metrics
from mlm_core.views.spreadsheet import spreadsheet_csv

POS_NOTE = (
    "Categories come from spaCy's stopword lists and Unicode character classes; part of speech is not "
    "offered (the English spaCy pipeline MaskLab installs finds names and places for privacy masking only)."
)
PER_CONFIG = "log p · "  # hardest_sentences: the column of each configuration's mean log p
CI_NOTE = (
    "95% intervals: t-interval over seeds (pooled value ± t·s/√k) with two seeds or more; with one "
    "seed, Wilson (accuracy) and normal (log-probability) intervals over tokens."
)


def _read_rows(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    numeric = [c for c in columns if c not in TEXT_COLUMNS]
    return pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in numeric},
                       dtype={c: str for c in columns if c in TEXT_COLUMNS})


@dataclass(frozen=True)
class EvalReport:
    """The outcome of ``evaluate``: counts in memory, rows on disk (read on demand)."""

    model: str
    entries: tuple[Entry, ...]
    with_pll: bool
    device: str = "cpu"
    seconds: float = 0.0
    notices: tuple[str, ...] = ()
    _memo: dict = field(default_factory=dict, repr=False, compare=False)  # hardest-row tables, read once

    @property
    def configs(self) -> tuple[EvalConfig, ...]:
        return tuple(dict.fromkeys(e.config for e in self.entries))

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(e.seed for e in self.entries))

    @property
    def sentences_read(self) -> int:
        first = [e for e in self.entries if e.config == self.configs[0]][:1]
        return first[0].tally.sentences if first else 0

    @property
    def cached(self) -> int:
        return sum(e.cached for e in self.entries)

    def _tallies(self, config: EvalConfig) -> list[Tally]:
        return [e.tally for e in self.entries if e.config == config]

    def config_record(self, config: EvalConfig) -> dict:
        """The JSON record of one configuration: overall, by_category, pll, per_seed."""
        tallies = self._tallies(config)
        pooled = Tally()
        for tally in tallies:
            pooled.add(tally)
        pll = None
        if self.with_pll and pooled.pll_sentences:
            mean = pooled.pll_sum / max(1, pooled.pll_tokens)
            pll = {"sentences": pooled.pll_sentences, "tokens": pooled.pll_tokens,
                   "mean_per_sentence": pooled.pll_sum / pooled.pll_sentences, "mean_per_token": mean}
        return {
            "label": config.label, "series": config.series, **config.to_dict(),
            "seeds": [e.seed for e in self.entries if e.config == config],
            "overall": group_metrics(tallies, 0),
            "by_category": {name: group_metrics(tallies, g) for g, name in enumerate(GROUPS) if g},
            "pll": pll,
            "per_seed": [{"seed": e.seed, "n": int(e.tally.counts[0, 0]),
                          "top1": e.tally.counts[0, 1] / e.tally.counts[0, 0] if e.tally.counts[0, 0] else None,
                          "top5": e.tally.counts[0, 2] / e.tally.counts[0, 0] if e.tally.counts[0, 0] else None}
                         for e in self.entries if e.config == config],
            "sentences": pooled.sentences // max(1, len(tallies)),
            "skipped": pooled.skipped // max(1, len(tallies)),
            "truncated": pooled.truncated // max(1, len(tallies)),
            "nothing_chosen": pooled.nothing_chosen,
        }

    def to_dict(self) -> dict:
        """The CLI's ``--json`` document."""
        return {"model": self.model, "device": self.device, "sentences": self.sentences_read,
                "seeds": list(self.seeds), "pll": self.with_pll, "intervals": CI_NOTE, "pos": POS_NOTE,
                "seconds": self.seconds, "cached": self.cached, "notices": list(self.notices),
                "configurations": [self.config_record(c) for c in self.configs]}

    def summary(self) -> pd.DataFrame:
        """One row per configuration and group (all, stopword, ...): n, top1, top5, mean log-prob, intervals."""
        rows = []
        for config in self.configs:
            record = self.config_record(config)
            for group in GROUPS:
                metrics = record["overall"] if group == "all" else record["by_category"][group]
                row = {"config": config.label, "series": config.series, "strategy": config.strategy,
                       "rate": config.rate, "category": group, "n": metrics["n"]}
                for name in ("top1", "top5", "mean_log_prob"):
                    low, high = metrics.get(f"{name}_ci") or (None, None)
                    row |= {name: metrics[name], f"{name}_low": low, f"{name}_high": high}
                pll = record["pll"] if group == "all" else None
                row["pll_per_token"] = pll["mean_per_token"] if pll else None
                rows.append(row)
        return pd.DataFrame(rows).astype({c: float for c in ("top1", "top1_low", "top1_high", "top5", "top5_low",
                                                              "top5_high", "mean_log_prob", "mean_log_prob_low",
                                                              "mean_log_prob_high", "pll_per_token")})

    def _frames(self, kind: str) -> Iterator[pd.DataFrame]:
        columns = SENTENCE_COLUMNS if kind == "sentences" else TOKEN_COLUMNS
        for entry in self.entries:
            path = entry.folder / f"{kind}.csv"
            if not path.is_file():
                raise MaskLabError("These results were removed from the cache in the meantime: run the analysis again.")
            yield _read_rows(path, columns)

    def rows(self, kind: str = "sentences") -> pd.DataFrame:
        """Per-sentence (``"sentences"``) or per-token (``"tokens"``) rows of every configuration and seed."""
        if kind not in ("sentences", "tokens"):
            raise InputError("kind is 'sentences' or 'tokens'.")
        columns = SENTENCE_COLUMNS if kind == "sentences" else TOKEN_COLUMNS
        frames = [f for f in self._frames(kind) if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns))

    def write_rows(self, kind: str, out) -> None:
        """Stream the rows to a path or binary file: CSV, or JSON lines when the path ends in .json/.jsonl.

        CSV text cells that start like a spreadsheet formula (a sentence "=HYPERLINK(...)") get a leading
        quote: see ``mlm_core.views.spreadsheet``.
        """
        if kind not in ("sentences", "tokens"):
            raise InputError("kind is 'sentences' or 'tokens'.")
        as_json = isinstance(out, (str, Path)) and str(out).lower().endswith((".json", ".jsonl"))
        with open(out, "wb") if isinstance(out, (str, Path)) else contextlib.nullcontext(out) as sink:
            for n, frame in enumerate(self._frames(kind)):
                if as_json:
                    if len(frame):
                        sink.write(frame.to_json(orient="records", lines=True, force_ascii=False).encode())
                else:
                    sink.write(spreadsheet_csv(frame, index=False, header=n == 0).encode())

    def rows_bytes(self, kind: str, fmt: str = "csv") -> bytes:
        """The rows as CSV or as a JSON array (page downloads)."""
        if fmt == "json":
            return self.rows(kind).to_json(orient="records", force_ascii=False, indent=1).encode()
        buffer = io.BytesIO()
        self.write_rows(kind, buffer)
        return buffer.getvalue()

    def hardest_sentences(self, k: int = 20) -> pd.DataFrame:
        """The ``k`` sentences whose predicted tokens got the lowest mean log-probability, each once.

        A sentence's row is its hardest (configuration, seed): ``config``, ``seed`` and the metrics
        there (what its explorer link opens). With several configurations, one more column per
        configuration, ``PER_CONFIG + label``, holds the sentence's mean log p under it (mean over seeds;
        blank where nothing was predicted).
        """
        if ("sentences", k) not in self._memo:
            rows = self.rows("sentences")
            rows = rows[rows["predicted"] > 0]
            ordered = rows.sort_values(["mean_log_prob", "top1"], kind="stable")
            hardest = ordered.drop_duplicates("sentence").head(k).copy()
            if len(self.configs) > 1:
                mine = rows[rows["sentence"].isin(hardest["sentence"])]
                means = mine.groupby(["sentence", "config"])["mean_log_prob"].mean()
                for config in self.configs:
                    hardest[PER_CONFIG + config.label] = [means.get((s, config.label), math.nan)
                                                          for s in hardest["sentence"]]
            self._memo[("sentences", k)] = hardest
        return self._memo[("sentences", k)].reset_index(drop=True)

    def hardest_tokens(self, k: int = 20) -> pd.DataFrame:
        """Predicted tokens with the lowest log-probability of the original, with their sentence's text."""
        if ("tokens", k) not in self._memo:
            hardest = self.rows("tokens").sort_values("log_prob", kind="stable").head(k)
            texts = self.rows("sentences")[["config", "seed", "sentence", "text"]]
            self._memo[("tokens", k)] = hardest.merge(texts, on=["config", "seed", "sentence"], how="left")
        return self._memo[("tokens", k)].reset_index(drop=True)

    def explorer_query(self, label: str, seed: int, sentence: int, text: str,
                       default_model: str | None = None) -> dict[str, str]:
        """The explorer link (query parameters) for one row of ``rows()``."""
        config = next((c for c in self.configs if c.label == label), None)
        if config is None:
            raise InputError(f"No configuration called {label!r} in these results.")
        model = None if self.model == default_model else self.model
        return config.explorer_query(text, sentence_seed(seed, sentence), model)
