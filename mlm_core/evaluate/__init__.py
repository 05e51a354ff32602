"""Batch analysis: masking experiments over a whole file of sentences, by token category.

For each configuration (strategy and parameters, protection rules, attention exclusion, privacy,
heads switched off) and each seed, every sentence is masked by the same strategy objects the
explorer and the trainer use, the model predicts the chosen positions, and we count:

* top-1 / top-5 recovery of the original token (its rank among ordinary tokens: special tokens
  are never a guess, as in the explorer; equal logits rank in argmax order, lowest id first);
* the mean log-probability of the original token (softmax over the whole vocabulary);
* the pseudo-log-likelihood (PLL, Salazar et al. 2020) of each sentence: every non-special token
  masked in turn, under the configuration's context changes (excluded tokens are neither context
  nor scored; switched-off heads stay off). It does not depend on the rate or the seed;

overall and by token category (stopword, punctuation, number, content word; ``tokens.py``).
Part of speech is not offered: see ``POS_NOTE``.

Masks: sentence ``i`` (its index in the file) is masked with the seed ``sentence_seed(seed, i)``:
the static draw of ``DrawPolicy("static", seed)`` for key ``i``, reduced to 31 bits so that the
explorer (whose seed field holds 31 bits) replays it exactly from a link. A sentence's mask
therefore depends only on (seed, index), never on the batch, the order or the process it ran in.

How it runs: texts are read in chunks of ``CHUNK_SENTENCES`` (a list or any iterable, so a large
file streams), tokenized once per chunk, sorted by length and packed into batches of at most
``max_tokens`` (rows x longest row) to limit padding; logits are computed only at the predicted
positions (``training.masked_logits``); PLL runs on batched masked copies. Aggregates live in
memory (a few numbers per configuration and category); per-sentence and per-token rows go
straight to CSV files, so memory stays bounded by the chunk, not the file.

Cache: each (configuration, seed) is an entry under ``<MaskLab home>/evaluations/<key>`` (summary
JSON plus the two CSV files), ``key = sha256(texts hash, model fingerprint, configuration, seed,
options)``; entries are written to a temporary folder and renamed, so a cancelled or crashed run
leaves nothing half written. The model fingerprint covers its weights, so a changed model misses.

Intervals (95%): with two seeds or more, a t-interval over seeds: pooled value ±
t(0.975, k-1)·s/√k, s the standard deviation of the k per-seed values (it measures how much the
masking draw moves the number). With one seed: a Wilson interval for accuracies and a normal
interval for the mean log-probability, over tokens (sentence sampling only).

Beyond one machine: ``evaluate_distributed`` under ``accelerate launch`` splits the file into
contiguous slices, one per process, and gathers the rows and counts on the main process
(``python -m mlm_core evaluate`` does this by itself when launched that way).

Example::

    report = evaluate(load_model(), ["The cat sat on the mat."], sweep(EvalConfig("random"), rates=[0.15, 0.3]))
    report.summary()  # one row per configuration and category: n, top1, top5, mean_log_prob, intervals
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mlm_core.errors import EvaluationCancelled, InputError, MaskLabError
from mlm_core.explain.exploration import MAIN_STRATEGIES, build_strategy, compose
from mlm_core.explain.whatif import heads_gated, parse_heads
from mlm_core.masking import (
    IGNORE_INDEX,
    STRATEGIES,
    AttentionExclusion,
    Compose,
    DrawPolicy,
    RuleBased,
    Vocab,
    apply_strategy,
    params_of,
    prepare_text,
    strategy_from_params,
)
from mlm_core.model.loading import LoadedModel
from mlm_core.text.privacy import PrivacyMasking
from mlm_core.text.tokens import CATEGORIES, Tokens, tokenize
from mlm_core.training.trainer import is_adaptive, masked_logits

ENGINE_VERSION = 1  # part of every cache key: bump when results would change
CHUNK_SENTENCES = 1024  # sentences tokenized, masked and written together (the memory bound)
MAX_TOKENS = {"cpu": 2048, "cuda": 65536}  # rows x padded length per pass (the CPU gains little beyond; the
# shared model's lock is held for one pass, so other sessions wait at most that long)
MAX_BATCH_ROWS = 512
MAX_SEEDS = 20
MAX_RATES = 50
MAX_PAIRS = 1000  # configurations x seeds in one evaluation
MAX_CACHE_ENTRIES = 500  # oldest entries beyond this are removed after each evaluation
PROTECT_RULES = ("stopwords", "punctuation", "numbers")
EXCLUDE_RULES = ("", "stopwords", "punctuation", "numbers")
GROUPS = ("all", *CATEGORIES)  # rows of the summary: every predicted token, then by category
RATE_PARAM = {"rule-based": "rate"}  # the swept parameter; every other main strategy: mlm_probability
SHORT_NAMES = {"mlm_probability": "p", "rate": "rate"}
POS_NOTE = (
    "Part of speech is unavailable: spaCy is installed but no spaCy pipeline (such as en_core_web_sm) "
    "is, and MaskLab downloads nothing at run time. Categories come from spaCy's stopword lists and "
    "Unicode character classes."
)
CI_NOTE = (
    "95% intervals: t-interval over seeds (pooled value ± t·s/√k) with two seeds or more; with one "
    "seed, Wilson (accuracy) and normal (log-probability) intervals over tokens."
)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093)  # t(0.975, df) for df = 1 .. 19 (MAX_SEEDS - 1)
SENTENCE_COLUMNS = ("config", "seed", "sentence", "text", "tokens", "predicted", "top1", "top5",
                    "mean_log_prob", "pll", "pll_per_token", "note")
TOKEN_COLUMNS = ("config", "seed", "sentence", "position", "token", "word", "category", "kind", "guess",
                 "rank", "top1", "top5", "log_prob")
TEXT_COLUMNS = ("config", "text", "note", "token", "word", "category", "kind", "guess")
ProgressFn = Callable[[int, int | None, str], None]  # (done, total or None, what is running)




# ----------------------------------------------------------------------------- configurations


def _non_default(main) -> tuple[tuple[str, str], ...]:
    """The parameters of ``main`` that differ from their defaults, as URL strings, in declared order."""
    defaults = {spec.name: spec.format(spec.default) for spec in STRATEGIES[main.name].params}
    return tuple((k, v) for k, v in params_of(main, as_strings=True).items() if v != defaults.get(k))


@dataclass(frozen=True)
class EvalConfig:
    """One masking configuration of a batch analysis (everything but the seed).

    ``params`` may be given as a dict of native values or strings; it is stored as the
    non-default parameters in URL form, so two spellings of one configuration are equal.
    Example: ``EvalConfig("random", {"mlm_probability": 0.3}, exclude="punctuation", heads_off=((0, 1),))``.
    """

    strategy: str = "random"
    params: tuple[tuple[str, str], ...] = ()
    protect: tuple[str, ...] = ()
    exclude: str = ""
    privacy: bool = False
    heads_off: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.strategy not in MAIN_STRATEGIES:
            raise InputError(f"Unknown strategy {self.strategy!r}; choose from {', '.join(MAIN_STRATEGIES)}.")
        raw = dict(self.params.items() if isinstance(self.params, Mapping) else self.params)
        object.__setattr__(self, "params", _non_default(strategy_from_params(self.strategy, raw)))
        protect = tuple(self.protect.split(",") if isinstance(self.protect, str) else self.protect)
        protect = tuple(sorted({p.strip() for p in protect if p.strip()}))
        wrong = [p for p in protect if p not in PROTECT_RULES]
        if wrong:
            raise InputError(f"Cannot protect {', '.join(wrong)}; choose from {', '.join(PROTECT_RULES)}.")
        object.__setattr__(self, "protect", protect)
        if self.exclude not in EXCLUDE_RULES:
            raise InputError(f"Cannot exclude {self.exclude!r}; choose from {', '.join(filter(None, EXCLUDE_RULES))}.")
        object.__setattr__(self, "privacy", bool(self.privacy))
        try:
            heads = tuple(sorted({(int(layer), int(head)) for layer, head in self.heads_off}))
        except (TypeError, ValueError):
            raise InputError("heads_off must be (layer, head) pairs of whole numbers.") from None
        if any(layer < 0 or head < 0 for layer, head in heads):
            raise InputError("Layers and heads count from 0.")
        object.__setattr__(self, "heads_off", heads)

    @classmethod
    def from_strategy(cls, strategy, heads_off: Iterable[tuple[int, int]] = ()) -> EvalConfig:
        """Read back a strategy built by ``explore.build_strategy`` (the explorer's masking panel)."""
        if strategy is None:
            raise InputError("Choose a masking strategy: a batch analysis needs positions to predict.")
        steps = strategy.steps if isinstance(strategy, Compose) else (strategy,)
        privacy = any(isinstance(step, PrivacyMasking) for step in steps)
        exclusions = [step for step in steps if isinstance(step, AttentionExclusion)]
        if any(step.positions or not step.rule for step in exclusions):
            raise InputError("A batch analysis excludes words by rule (stopwords, punctuation, numbers), not by position.")
        rest = [step for step in steps if not isinstance(step, PrivacyMasking | AttentionExclusion)]
        if not rest or (isinstance(rest[-1], RuleBased) and rest[-1].mode == "protect"):
            raise InputError("Choose a masking strategy that chooses tokens: a batch analysis needs positions to "
                             "predict (a rule in protect mode only keeps tokens out).")
        *protect, main = rest  # build_strategy's order: privacy, protection rules, main, exclusion
        if main.name not in MAIN_STRATEGIES or not all(isinstance(s, RuleBased) and s.mode == "protect" for s in protect):
            raise InputError(f"A batch analysis cannot use {strategy.describe()!r}; build it with the explorer's panel.")
        return cls(main.name, params_of(main), tuple(s.rule for s in protect), exclusions[0].rule if exclusions else "",
                   privacy, tuple(heads_off))

    # -- the strategy and its rate

    def build(self):
        """The strategy object (the explorer's composition: privacy, protection, main, exclusion)."""
        return build_strategy(self.strategy, dict(self.params), self.privacy, self.protect, self.exclude)

    @property
    def rate_param(self) -> str:
        return RATE_PARAM.get(self.strategy, "mlm_probability")

    @property
    def rate(self) -> float:
        """The masking rate: mlm_probability, or the rule-based share of matching words."""
        return float(getattr(strategy_from_params(self.strategy, dict(self.params)), self.rate_param))

    def with_rate(self, rate: float) -> EvalConfig:
        return dataclasses.replace(self, params={**dict(self.params), self.rate_param: rate})

    def with_strategy(self, name: str) -> EvalConfig:
        """The same settings with another main strategy (parameters it shares are kept)."""
        if name == self.strategy:
            return self
        valid = {p.name for p in STRATEGIES[name].params} if name in STRATEGIES else set()
        kept = {k: v for k, v in self.params if k in valid and k != self.rate_param}
        changed = dataclasses.replace(self, strategy=name, params=kept)
        same_meaning = changed.rate_param == self.rate_param  # p carries over; a rule's share does not
        return changed.with_rate(self.rate) if same_meaning and self.rate_param in dict(self.params) else changed

    # -- names

    @property
    def series(self) -> str:
        """The label without the rate: one line of an accuracy-vs-rate chart."""
        parts = [self.strategy] + [f"{SHORT_NAMES.get(k, k)}={v}" for k, v in self.params if k != self.rate_param]
        if self.privacy:
            parts.append("+privacy")
        if self.protect:
            parts.append("protect " + ",".join(self.protect))
        if self.exclude:
            parts.append("exclude " + self.exclude)
        if self.heads_off:
            parts.append("heads off " + ",".join(f"{la}:{h}" for la, h in self.heads_off))
        return " ".join(parts)

    @property
    def label(self) -> str:
        """A short unique name, e.g. ``random p=0.3 exclude punctuation``."""
        head, *rest = self.series.split(" ", 1)
        return " ".join([head, f"{SHORT_NAMES.get(self.rate_param)}={self.rate:g}", *rest])

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "params": dict(self.params), "rate": self.rate,
                "protect": list(self.protect), "exclude": self.exclude, "privacy": self.privacy,
                "heads_off": [list(pair) for pair in self.heads_off]}

    @classmethod
    def from_dict(cls, data: Mapping) -> EvalConfig:
        return cls(data["strategy"], data.get("params") or {}, tuple(data.get("protect") or ()),
                   data.get("exclude") or "", bool(data.get("privacy")),
                   tuple(tuple(pair) for pair in data.get("heads_off") or ()))

    def explorer_query(self, text: str, seed: int, model: str | None = None) -> dict[str, str]:
        """Query parameters that open ``text`` in the explorer with this configuration (ui/strategy.py's scheme).

        ``seed`` is the sentence's own seed (``sentence_seed``), so the explorer draws the same mask.
        Heads switched off have no place in the explorer's link: its What-if tab switches them.
        """
        query = {"text": text, "strategy": self.strategy, **{f"p_{k}": v for k, v in self.params}}
        for name, value in (("privacy", "1" if self.privacy else ""), ("protect", ",".join(self.protect)),
                            ("exclude", self.exclude), ("seed", str(seed) if seed else ""),
                            ("model", model or "")):
            if value:
                query[name] = value
        return query


def parse_rates(text: str) -> tuple[float, ...]:
    """``"0.05:0.8:0.05"`` (start:stop:step, stop included) or ``"0.1,0.2,0.4"`` → rates in (0, 1]."""
    text = str(text).strip()
    parts = text.split(":") if ":" in text else [p for p in text.replace(";", ",").split(",") if p.strip()]
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        numbers = []
    if ":" in text and len(numbers) != 3 or not numbers or not all(map(math.isfinite, numbers)):
        raise InputError(f"Rates look like 0.05:0.8:0.05 (start:stop:step) or 0.1,0.2,0.4; got {text!r}.")
    if ":" in text:
        start, stop, step = numbers
        if step <= 0:
            raise InputError(f"The step of a rate sweep must be positive; got {step:g}.")
        count = math.floor((stop - start) / step + 1e-9) + 1
        rates = [round(start + k * step, 10) for k in range(max(0, min(count, MAX_RATES + 1)))]
    else:
        rates = numbers
    if not rates:
        raise InputError(f"No rate in {text!r}: write start:stop:step (e.g. 0.05:0.8:0.05) or a list.")
    if len(rates) > MAX_RATES:
        raise InputError(f"At most {MAX_RATES} rates in one sweep; use a larger step.")
    bad = [r for r in rates if not 0 < r <= 1]
    if bad:
        raise InputError(f"Masking rates must be above 0 and at most 1; got {bad[0]:g}.")
    return tuple(dict.fromkeys(rates))


def parse_heads_off(text: str) -> tuple[tuple[int, int], ...]:
    """``"0:1, 2:3"`` (layer:head, counting from 0) → ((0, 1), (2, 3))."""
    pairs = []
    for part in str(text).replace(";", ",").split(","):
        if not part.strip():
            continue
        try:
            layer, head = (int(x) for x in part.split(":"))
        except ValueError:
            raise InputError(f"Heads are written layer:head (e.g. 0:1,2:3); got {part.strip()!r}.") from None
        pairs.append((layer, head))
    return tuple(pairs)


def sweep(base: EvalConfig, rates: Sequence[float] = (), strategies: Sequence[str] = ()) -> list[EvalConfig]:
    """Configurations of a strategy x rate grid around ``base`` (its protection, exclusion, heads).

    Example: ``sweep(EvalConfig(), rates=[0.1, 0.2], strategies=["random", "span"])`` gives four.
    """
    names = list(dict.fromkeys(strategies or [base.strategy]))
    configs = []
    for name in names:
        config = base.with_strategy(name)
        configs.extend([config.with_rate(r) for r in rates] if rates else [config])
    return list(dict.fromkeys(configs))


def planned_rows(loaded: LoadedModel, texts: Sequence[str], configs: Sequence[EvalConfig], seeds: Sequence[int],
                 with_pll: bool, sample: int = 200) -> int:
    """Rows of forward passes a run needs: one per sentence per (configuration, seed), plus one per
    token per pseudo-log-likelihood context (tokens estimated from up to ``sample`` texts)."""
    contexts = {_Engine._pll_key(c) for c in configs} if with_pll else set()
    contexts |= {_plain_key(c) for c in configs if is_adaptive(c.build())}
    if not texts:
        return 0
    picked = texts[:: max(1, len(texts) // sample)][:sample]
    lengths = []
    for text in picked:
        with contextlib.suppress(InputError):
            lengths.append(min(len(tokenize(loaded.tokenizer, text)), loaded.max_length))
    mean_tokens = sum(lengths) / len(lengths) if lengths else 0
    return len(texts) * len(configs) * len(seeds) + round(len(texts) * mean_tokens * len(contexts))


def sentence_seed(seed: int, index: int) -> int:
    """The seed sentence ``index`` is masked with (the explorer's seed field takes it as is)."""
    return DrawPolicy("static", int(seed)).seed_for(int(index)) % 2**31


# ----------------------------------------------------------------------------- counts


def _t975(df: int) -> float:
    return T_975[df - 1] if 1 <= df <= len(T_975) else 1.96


@dataclass
class Tally:
    """Counts of one (configuration, seed): they add up across chunks and processes.

    ``counts[g]`` for g in ``GROUPS`` holds (n, top-1 hits, top-5 hits, Σ log p, Σ (log p)²).
    """

    counts: np.ndarray = field(default_factory=lambda: np.zeros((len(GROUPS), 5)))
    sentences: int = 0  # read (skipped ones included)
    skipped: int = 0  # nothing to mask in them (empty after normalisation, ...)
    truncated: int = 0  # longer than the model's limit: cut to its first tokens
    nothing_chosen: int = 0  # the strategy chose no token in them
    pll_sentences: int = 0
    pll_tokens: int = 0
    pll_sum: float = 0.0
    pll_sq: float = 0.0  # Σ over sentences of (PLL per token)²

    def add(self, other: Tally) -> None:
        self.counts += other.counts
        for name in ("sentences", "skipped", "truncated", "nothing_chosen", "pll_sentences", "pll_tokens",
                     "pll_sum", "pll_sq"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["counts"] = self.counts.tolist()
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> Tally:
        values = dict(data)
        values["counts"] = np.asarray(values["counts"], dtype=np.float64)
        return cls(**values)


def _metrics(tallies: Sequence[Tally], group: int) -> dict:
    """Pooled n/top1/top5/mean log-prob of one group over seeds, with 95% intervals."""
    rows = np.stack([t.counts[group] for t in tallies])  # (seeds, 5)
    n, hit1, hit5, lp, lp_sq = rows.sum(0)
    out: dict = {"n": int(n)}
    if n == 0:
        return out | {"top1": None, "top5": None, "mean_log_prob": None}
    out |= {"top1": hit1 / n, "top5": hit5 / n, "mean_log_prob": lp / n}
    per_seed = rows[rows[:, 0] > 0]
    if len(per_seed) >= 2:
        k = len(per_seed)
        for name, values in (("top1", per_seed[:, 1] / per_seed[:, 0]), ("top5", per_seed[:, 2] / per_seed[:, 0]),
                             ("mean_log_prob", per_seed[:, 3] / per_seed[:, 0])):
            half = _t975(k - 1) * float(np.std(values, ddof=1)) / math.sqrt(k)
            out[f"{name}_ci"] = [out[name] - half, out[name] + half]
    else:
        for name, hits in (("top1", hit1), ("top5", hit5)):
            out[f"{name}_ci"] = list(_wilson(hits, n))
        sd = math.sqrt(max(0.0, lp_sq / n - (lp / n) ** 2) * n / max(1.0, n - 1))
        half = 1.96 * sd / math.sqrt(n)
        out["mean_log_prob_ci"] = [lp / n - half, lp / n + half]
    for name, (low, high) in (("top1", (0.0, 1.0)), ("top5", (0.0, 1.0)), ("mean_log_prob", (-math.inf, 0.0))):
        if f"{name}_ci" in out:  # a t-interval over few seeds can reach past what is possible
            out[f"{name}_ci"] = [min(max(v, low), high) for v in out[f"{name}_ci"]]
    return out


def _wilson(hits: float, n: float, z: float = 1.96) -> tuple[float, float]:
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# ----------------------------------------------------------------------------- hashing and cache


def hash_texts(texts: Iterable[str]) -> str:
    """sha256 of the texts themselves (what is evaluated, whatever the file format or column)."""
    digest = hashlib.sha256()
    for text in texts:
        _hash_one(digest, text)
    return digest.hexdigest()


def _hash_one(digest, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    digest.update(len(data).to_bytes(8, "little") + data)


def model_fingerprint(loaded: LoadedModel) -> str:
    """Name, configuration and a digest of the weights (sums and a strided sample of each tensor)."""
    digest = hashlib.sha256(loaded.name.encode())
    digest.update(json.dumps(loaded.model.config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(str(len(loaded.tokenizer)).encode())
    with torch.no_grad():
        for tensor in itertools.chain(loaded.model.parameters(), loaded.model.buffers()):
            flat = tensor.detach().reshape(-1).float()
            sample = flat[:: max(1, flat.numel() // 16)][:16]
            digest.update(torch.cat([flat.sum()[None], sample]).cpu().numpy().tobytes())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    from mlm_core.training.jobs import masklab_home

    return masklab_home() / "evaluations"


def entry_key(texts_hash: str, fingerprint: str, config: EvalConfig, seed: int, with_pll: bool,
              first_index: int, max_length: int) -> str:
    blob = json.dumps({"engine": ENGINE_VERSION, "texts": texts_hash, "model": fingerprint,
                       "config": config.to_dict(), "seed": int(seed), "pll": bool(with_pll),
                       "first": int(first_index), "max_length": int(max_length)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def _prune_cache(root: Path, keep: int = MAX_CACHE_ENTRIES) -> None:
    """Drop the oldest entries beyond ``keep`` and temporaries a day old (crashed runs)."""
    now = time.time()
    entries = []
    for path in root.iterdir() if root.is_dir() else ():
        with contextlib.suppress(OSError):
            if path.name.startswith(".tmp-"):
                if now - path.stat().st_mtime > 86400:
                    shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir():
                entries.append((path.stat().st_mtime, path))
    for _, path in sorted(entries)[: max(0, len(entries) - keep)]:
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Entry:
    """One (configuration, seed): its counts and the folder holding its rows."""

    config: EvalConfig
    seed: int
    tally: Tally
    folder: Path
    cached: bool = False


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
            "overall": _metrics(tallies, 0),
            "by_category": {name: _metrics(tallies, g) for g, name in enumerate(GROUPS) if g},
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
        """Stream the rows to a path or binary file: CSV, or JSON lines when the path ends in .json/.jsonl."""
        if kind not in ("sentences", "tokens"):
            raise InputError("kind is 'sentences' or 'tokens'.")
        as_json = isinstance(out, (str, Path)) and str(out).lower().endswith((".json", ".jsonl"))
        with open(out, "wb") if isinstance(out, (str, Path)) else contextlib.nullcontext(out) as sink:
            for n, frame in enumerate(self._frames(kind)):
                if as_json:
                    if len(frame):
                        sink.write(frame.to_json(orient="records", lines=True, force_ascii=False).encode())
                else:
                    sink.write(frame.to_csv(index=False, header=n == 0).encode())

    def rows_bytes(self, kind: str, fmt: str = "csv") -> bytes:
        """The rows as CSV or as a JSON array (page downloads)."""
        if fmt == "json":
            return self.rows(kind).to_json(orient="records", force_ascii=False, indent=1).encode()
        buffer = io.BytesIO()
        self.write_rows(kind, buffer)
        return buffer.getvalue()

    def hardest_sentences(self, k: int = 20) -> pd.DataFrame:
        """Sentences whose predicted tokens got the lowest mean log-probability (any configuration, seed)."""
        if ("sentences", k) not in self._memo:
            rows = self.rows("sentences")
            rows = rows[rows["predicted"] > 0]
            self._memo[("sentences", k)] = rows.sort_values(["mean_log_prob", "top1"], kind="stable").head(k)
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


# ----------------------------------------------------------------------------- the engine


@dataclass
class _Record:
    index: int  # the sentence's position in the whole file
    tokens: Tokens | None  # None: skipped
    protected: tuple[int, ...] = ()
    note: str = ""


@dataclass
class _Pair:
    config: EvalConfig
    seed: int
    strategy: object
    gates: torch.Tensor | None
    folder: Path
    tally: Tally = field(default_factory=Tally)


def _chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    if isinstance(texts, Sequence):
        for start in range(0, len(texts), size):
            yield list(texts[start : start + size])
        return
    iterator = iter(texts)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _truncate(tokens: Tokens, max_length: int) -> Tokens:
    """The first ``max_length`` tokens, special frame kept (masks are drawn after this, never dropped)."""
    head = next(i for i, s in enumerate(tokens.special) if not s)  # [CLS] ...
    suffix = next(i for i, s in enumerate(reversed(tokens.special)) if not s)  # ... [SEP]
    room = max(1, max_length - head - suffix)
    keep = [*range(head + room), *range(len(tokens) - suffix, len(tokens))]

    def pick(values):
        return tuple(values[i] for i in keep)

    return Tokens(text=tokens.text, ids=pick(tokens.ids), tokens=pick(tokens.tokens), offsets=pick(tokens.offsets),
                  word_ids=pick(tokens.word_ids), special=pick(tokens.special),
                  categories=pick(tokens.categories), mask_token_id=tokens.mask_token_id)


def _plain_key(config: EvalConfig) -> tuple:
    """The PLL key of the plain model on this configuration's text (adaptive masking's scores)."""
    return (config.privacy, (), "", ())


def _gates(loaded: LoadedModel, heads: tuple) -> torch.Tensor | None:
    """(1, L, H) head gates with the given heads at 0; None when every head is on."""
    if not heads:
        return None
    gates = torch.ones(1, loaded.num_layers, loaded.num_heads)
    for layer, head in heads:
        gates[0, layer, head] = 0.0
    return gates


class _Engine:
    """State of one ``evaluate`` call; see the module docstring for the flow."""

    def __init__(self, loaded: LoadedModel, pairs: list[_Pair], with_pll: bool, max_tokens: int | None,
                 progress: ProgressFn | None, cancel: Callable[[], bool] | None, total: int | None):
        self.loaded = loaded
        self.pairs = pairs
        self.with_pll = with_pll
        self.max_tokens = max_tokens or MAX_TOKENS.get(loaded.device.type, MAX_TOKENS["cpu"])
        self.progress = progress
        self.cancel = cancel
        self.vocab = Vocab.from_tokenizer(loaded.tokenizer)
        self.special_ids = sorted(set(loaded.tokenizer.all_special_ids))
        self.special_tensor = torch.tensor(self.special_ids, device=loaded.device)
        self.max_length = loaded.max_length
        self.pll_keys = {self._pll_key(p.config) for p in pairs} if with_pll else set()
        self.adaptive = {id(p): is_adaptive(p.strategy) for p in pairs}
        # Adaptive masking scores tokens by their surprisal under the plain model, as the explorer does.
        self.pll_keys |= {_plain_key(p.config) for p in pairs if self.adaptive[id(p)]}
        self.work_per_sentence = len(pairs) + len(self.pll_keys)
        self.total = None if total is None else total * self.work_per_sentence
        self.done = 0

    @staticmethod
    def _pll_key(config: EvalConfig) -> tuple:
        """What PLL depends on: the text (privacy), the context (exclusion, with protection) and the heads."""
        return (config.privacy, config.protect if config.exclude else (), config.exclude, config.heads_off)

    def _tick(self, units: int, what: str) -> None:
        if self.cancel is not None and self.cancel():
            raise EvaluationCancelled("The analysis was cancelled; nothing was saved.")
        self.done += units
        if self.progress is not None:
            self.progress(self.done, self.total, what)

    # -- chunks

    def run(self, texts: Iterable[str], first_index: int, digest) -> None:
        index = first_index
        for chunk in _chunks(texts, CHUNK_SENTENCES):
            if digest is not None:
                for text in chunk:
                    _hash_one(digest, text)
            variants = {privacy: self._prepare(chunk, index, privacy) for privacy in {p.config.privacy for p in self.pairs}}
            pll = {key: self._pll(variants[key[0]], key) for key in sorted(self.pll_keys, key=repr)}
            for pair in self.pairs:
                plain = pll.get(_plain_key(pair.config)) if self.adaptive[id(pair)] else None
                own = pll.get(self._pll_key(pair.config)) if self.with_pll else None
                self._evaluate_pair(pair, variants[pair.config.privacy], own, plain)
            index += len(chunk)

    def _prepare(self, chunk: list[str], first: int, privacy: bool) -> list[_Record]:
        step = PrivacyMasking() if privacy else None
        records = []
        for offset, text in enumerate(chunk):
            index = first + offset
            try:
                replaced = prepare_text(text, step, mask_token=self.vocab.mask_token) if step else None
                tokens = tokenize(self.loaded.tokenizer, replaced.text if replaced else text)
            except InputError as exc:
                records.append(_Record(index, None, note=str(exc)))
                continue
            note = ""
            if len(tokens) > self.max_length:
                note = f"truncated from {len(tokens)} to the model's {self.max_length} tokens"
                tokens = _truncate(tokens, self.max_length)
            protected = tuple(p for p in replaced.protected_positions(tokens) if p < len(tokens)) if replaced else ()
            records.append(_Record(index, tokens, protected, note))
        return records

    # -- forward passes

    def _batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        """Indexes into ``lengths`` grouped into batches of at most max_tokens (rows x longest), shortest first."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batch: list[int] = []
        for i in order:
            if batch and ((len(batch) + 1) * lengths[i] > self.max_tokens or len(batch) >= MAX_BATCH_ROWS):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def _score(self, ids: np.ndarray, attention: np.ndarray, chosen: np.ndarray, targets: np.ndarray, gates):
        """Rank (1 = first choice), log p and first guess of ``targets`` (M,) at the chosen positions of (B, T)."""
        device = self.loaded.device
        ids_t = torch.from_numpy(ids).to(device)
        chosen_t = torch.from_numpy(chosen).to(device)
        targets = torch.from_numpy(targets).to(device)
        gated = heads_gated(self.loaded, gates) if gates is not None else contextlib.nullcontext()
        with self.loaded.lock, torch.inference_mode(), gated:  # hooks of other sessions must not see our pass
            logits = masked_logits(self.loaded.model, ids_t, torch.from_numpy(attention).to(device), chosen_t)
            logits = logits.float()  # (M, V)
            log_p = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
            own = logits.gather(1, targets[:, None])
            logits[:, self.special_tensor] = -math.inf  # never a guess ...
            logits.scatter_(1, targets[:, None], own)  # ... except the original itself (e.g. [UNK])
            earlier = torch.arange(logits.shape[1], device=device)[None, :] < targets[:, None]
            rank = (logits > own).sum(1) + ((logits == own) & earlier).sum(1) + 1  # ties: argmax order
            guess = logits.argmax(1)
        return rank.cpu().numpy(), log_p.cpu().numpy(), guess.cpu().numpy()

    def _pll(self, records: list[_Record], key: tuple) -> dict[int, np.ndarray]:
        """Per sentence index: (T,) log p of each token with it masked (NaN where not scored)."""
        privacy, protect, exclude, heads = key
        context = compose(*(RuleBased(rule=r, mode="protect") for r in protect),
                          AttentionExclusion(rule=exclude) if exclude else None)
        gates = _gates(self.loaded, heads)
        special = set(self.special_ids)
        items = []  # (record, excluded (T,), scored positions)
        for record in records:
            if record.tokens is None:
                continue
            ids = record.tokens.ids
            excluded = np.zeros(len(ids), dtype=bool)
            if context is not None:
                excluded = np.asarray(apply_strategy(record.tokens, context, self.vocab, rng=0,
                                                     protected=record.protected,
                                                     require_eligible=False).attention_exclude)
            positions = [i for i, t in enumerate(ids) if t not in special and not excluded[i]]
            items.append((record, excluded, positions))
        scores = {r.index: np.full(len(r.tokens), np.nan) for r, _, _ in items}
        copies = [(k, p) for k, (_, _, positions) in enumerate(items) for p in positions]
        lengths = [len(items[k][0].tokens) for k, _ in copies]
        for batch in self._batches(lengths):
            width = max(lengths[i] for i in batch)
            ids = np.full((len(batch), width), self.vocab.pad_token_id or 0, dtype=np.int64)
            attention = np.zeros((len(batch), width), dtype=np.int64)
            chosen = np.zeros((len(batch), width), dtype=bool)
            targets = np.empty(len(batch), dtype=np.int64)
            for row, i in enumerate(batch):
                k, position = copies[i]
                record, excluded, _ = items[k]
                n = len(record.tokens)
                ids[row, :n] = record.tokens.ids
                attention[row, :n] = ~excluded
                targets[row] = ids[row, position]
                ids[row, position] = self.vocab.mask_token_id
                chosen[row, position] = True
            _, log_p, _ = self._score(ids, attention, chosen, targets, gates)
            for row, i in enumerate(batch):
                k, position = copies[i]
                scores[items[k][0].index][position] = log_p[row]
            self._tick(0, "pseudo-log-likelihood")
        self._tick(len(records), "pseudo-log-likelihood")
        return scores

    # -- one configuration and seed over one chunk

    def _evaluate_pair(self, pair: _Pair, records: list[_Record], pll: dict | None, plain: dict | None) -> None:
        tally, sentence_rows, token_rows = Tally(), [], []
        masked = []  # (record, MaskResult, chosen positions)
        label = pair.config.label
        for record in records:
            tally.sentences += 1
            if record.tokens is None:
                tally.skipped += 1
                sentence_rows.append([label, pair.seed, record.index, "", 0, 0, "", "", "", "", "", record.note])
                continue
            tally.truncated += bool(record.note)
            scores = None
            if plain is not None:
                scores = np.nan_to_num(-plain[record.index], nan=0.0).clip(min=0.0)
            result = apply_strategy(record.tokens, pair.strategy, self.vocab, rng=sentence_seed(pair.seed, record.index),
                                    scores=scores, protected=record.protected, require_eligible=False)
            masked.append((record, result, np.flatnonzero(result.labels != IGNORE_INDEX)))
        predictions: dict[int, tuple] = {}
        lengths = [len(r.tokens) if len(c) else 0 for r, _, c in masked]
        with_chosen = [i for i, n in enumerate(lengths) if n]
        for batch in self._batches([lengths[i] for i in with_chosen]):
            batch = [with_chosen[i] for i in batch]
            width = max(lengths[i] for i in batch)
            ids = np.full((len(batch), width), self.vocab.pad_token_id or 0, dtype=np.int64)
            attention = np.zeros((len(batch), width), dtype=np.int64)
            chosen = np.zeros((len(batch), width), dtype=bool)
            for row, i in enumerate(batch):
                _, result, positions = masked[i]
                ids[row, : lengths[i]] = result.input_ids
                attention[row, : lengths[i]] = ~result.attention_exclude
                chosen[row, positions] = True
            targets = np.concatenate([masked[i][1].labels[masked[i][2]] for i in batch])
            rank, log_p, guess = self._score(ids, attention, chosen, targets, pair.gates)
            start = 0
            for i in batch:
                count = len(masked[i][2])
                predictions[i] = (rank[start : start + count], log_p[start : start + count], guess[start : start + count])
                start += count
            self._tick(len(batch), label)
        self._tick(len(records) - len(masked) + sum(1 for n in lengths if not n), label)
        tokenizer = self.loaded.tokenizer
        for i, (record, result, positions) in enumerate(masked):
            self._sentence(pair, tally, record, result, positions, predictions.get(i),
                           None if pll is None else pll.get(record.index), sentence_rows, token_rows, tokenizer)
        sentence_rows.sort(key=lambda row: row[2])
        token_rows.sort(key=lambda row: (row[2], row[3]))
        for name, rows in (("sentences", sentence_rows), ("tokens", token_rows)):
            with open(pair.folder / f"{name}.csv", "a", newline="", encoding="utf-8", errors="replace") as handle:
                csv.writer(handle, lineterminator="\n").writerows(rows)
        pair.tally.add(tally)

    def _sentence(self, pair, tally, record, result, positions, predicted, pll, sentence_rows, token_rows, tokenizer):
        tokens = record.tokens
        label = pair.config.label
        pll_total = pll_per_token = ""
        if pll is not None:
            scored = pll[~np.isnan(pll)]
            if len(scored):
                pll_total, pll_per_token = float(scored.sum()), float(scored.mean())
                tally.pll_sentences += 1
                tally.pll_tokens += len(scored)
                tally.pll_sum += pll_total
                tally.pll_sq += pll_per_token**2
        note = record.note
        if predicted is None:
            tally.nothing_chosen += 1
            note = "; ".join(filter(None, [note, "the strategy chose no token"]))
            sentence_rows.append([label, pair.seed, record.index, tokens.text, len(tokens), 0, "", "", "",
                                  pll_total, pll_per_token, note])
            return
        rank, log_p, guess = predicted
        hit1, hit5 = rank == 1, rank <= 5
        groups = np.array([1 + CATEGORIES.index(tokens.categories[p]) if tokens.categories[p] in CATEGORIES else -1
                           for p in positions])
        for g in (0, *range(1, len(GROUPS))):
            take = np.ones(len(groups), dtype=bool) if g == 0 else groups == g
            if take.any():
                tally.counts[g] += (take.sum(), hit1[take].sum(), hit5[take].sum(), log_p[take].sum(),
                                    np.square(log_p[take], dtype=np.float64).sum())
        sentence_rows.append([label, pair.seed, record.index, tokens.text, len(tokens), len(positions),
                              float(hit1.mean()), float(hit5.mean()), float(log_p.mean()), pll_total,
                              pll_per_token, note])
        guesses = tokenizer.convert_ids_to_tokens(guess.tolist())
        for k, p in enumerate(positions):
            token_rows.append([label, pair.seed, record.index, int(p), tokens.tokens[p], tokens.word_text(p),
                               tokens.categories[p], result.kinds[p] or "", guesses[k], int(rank[k]), int(hit1[k]),
                               int(hit5[k]), float(log_p[k])])


def evaluate(
    loaded: LoadedModel,
    texts: Iterable[str],
    configs: Sequence[EvalConfig] | EvalConfig,
    *,
    seeds: Sequence[int] = (0,),
    with_pll: bool = True,
    first_index: int = 0,
    total: int | None = None,
    texts_hash: str | None = None,
    cache_dir: str | Path | None = None,
    reuse: bool = True,
    max_tokens: int | None = None,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
) -> EvalReport:
    """Evaluate every configuration x seed on ``texts`` (a list, or any iterable to stream).

    ``first_index``: the file index of the first text (a slice of a larger file keeps its masks).
    ``texts_hash``: skip hashing (else computed from a list up front, or while streaming).
    ``progress(done, total, what)`` is called after every batch (``total`` is None for an iterable
    of unknown length unless ``total`` gives its number of texts); ``cancel()`` returning True
    stops the run with ``EvaluationCancelled`` and nothing cached. ``reuse=False`` recomputes.
    """
    started = time.monotonic()
    configs = list(dict.fromkeys([configs] if isinstance(configs, EvalConfig) else configs))
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not configs:
        raise InputError("Give at least one masking configuration.")
    if not seeds or len(seeds) > MAX_SEEDS or min(seeds) < 0:
        raise InputError(f"Give from 1 to {MAX_SEEDS} seeds, each 0 or more.")
    if len(configs) * len(seeds) > MAX_PAIRS:
        raise InputError(f"{len(configs)} configurations x {len(seeds)} seeds is more than {MAX_PAIRS} runs; "
                         "use fewer rates, strategies or seeds.")
    for config in configs:
        if config.heads_off:
            parse_heads(loaded, config.heads_off)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    if texts_hash is None and isinstance(texts, Sequence):
        texts_hash = hash_texts(texts)
    if total is None and isinstance(texts, Sequence):
        total = len(texts)
    fingerprint = model_fingerprint(loaded)

    def key(config, seed, digest):
        return entry_key(digest, fingerprint, config, seed, with_pll, first_index, loaded.max_length)

    found: dict[tuple, Entry] = {}
    if reuse and texts_hash is not None:
        for config in configs:
            for seed in seeds:
                folder = root / key(config, seed, texts_hash)
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    tally = Tally.from_dict(json.loads((folder / "summary.json").read_text())["tally"])
                    found[(config, seed)] = Entry(config, seed, tally, folder, cached=True)
                    os.utime(folder)  # pruning drops the least recently used entries
    pairs = []
    try:
        for config in configs:
            for seed in seeds:
                if (config, seed) in found:
                    continue
                folder = root / f".tmp-{uuid.uuid4().hex}"
                folder.mkdir()
                for name, columns in (("sentences", SENTENCE_COLUMNS), ("tokens", TOKEN_COLUMNS)):
                    (folder / f"{name}.csv").write_text(",".join(columns) + "\n", encoding="utf-8")
                pairs.append(_Pair(config, seed, config.build(), _gates(loaded, config.heads_off), folder))
        if pairs:
            engine = _Engine(loaded, pairs, with_pll, max_tokens, progress, cancel, total)
            digest = hashlib.sha256() if texts_hash is None else None
            engine.run(texts, first_index, digest)
            texts_hash = texts_hash or digest.hexdigest()
        for pair in pairs:
            final = root / key(pair.config, pair.seed, texts_hash)
            (pair.folder / "summary.json").write_text(json.dumps(
                {"config": pair.config.to_dict(), "seed": pair.seed, "model": loaded.name,
                 "tally": pair.tally.to_dict()}))
            try:
                os.replace(pair.folder, final)
            except OSError:  # the same entry was written meanwhile (another session): keep that one
                shutil.rmtree(pair.folder, ignore_errors=True)
            found[(pair.config, pair.seed)] = Entry(pair.config, pair.seed, pair.tally, final)
    finally:
        for pair in pairs:
            if pair.folder.exists() and pair.folder.name.startswith(".tmp-"):
                shutil.rmtree(pair.folder, ignore_errors=True)
    _prune_cache(root)
    entries = tuple(found[(c, s)] for c in configs for s in seeds)
    notices = _notices(entries, loaded)
    return EvalReport(loaded.name, entries, with_pll, loaded.device.type, time.monotonic() - started, notices)


def _notices(entries: Sequence[Entry], loaded: LoadedModel) -> tuple[str, ...]:
    if not entries:
        return ()
    first = entries[0].tally
    notices = []
    if first.skipped:
        notices.append(f"{first.skipped:,} text(s) had nothing to mask (empty or invisible characters) and were "
                       "skipped; the per-sentence rows say why.")
    if first.truncated:
        notices.append(f"{first.truncated:,} text(s) were longer than the model's {loaded.max_length} tokens and "
                       "were cut to their first tokens before masking (no mask was dropped).")
    if any(e.config.privacy for e in entries):
        notices.append("With privacy masking the rows and explorer links hold the text after replacement (personal "
                       "data never leaves the analysis); the explorer cannot re-protect its placeholders, so its mask "
                       "of such a sentence may differ.")
    if any(e.config.heads_off for e in entries):
        notices.append("Links to the explorer carry the masking but not the switched-off heads: switch them off "
                       "in the explorer's What-if tab.")
    return tuple(notices)


# ----------------------------------------------------------------------------- several processes


def evaluate_distributed(model: str | None, texts: Sequence[str], configs: Sequence[EvalConfig], *,
                         seeds: Sequence[int] = (0,), with_pll: bool = True, cache_dir: str | Path | None = None,
                         reuse: bool = True, progress: ProgressFn | None = None,
                         device: str | None = None) -> EvalReport | None:
    """Under ``accelerate launch``: each process evaluates a contiguous slice of ``texts`` on its own
    device; the main process gathers counts and rows and returns the report (others return None).

    Masks depend only on (seed, sentence index), so the result equals a one-process run's.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from mlm_core.model.loading import load_model

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())  # CPU processes: a gloo group
    loaded = load_model(model, str(state.device))
    with state.split_between_processes(list(range(len(texts)))) as mine:
        start = mine[0] if mine else len(texts)
        part = evaluate(loaded, texts[start : start + len(mine)], configs, seeds=seeds, with_pll=with_pll,
                        first_index=start, cache_dir=cache_dir, reuse=reuse,
                        progress=progress if state.is_main_process else None)
    payload = [(e.config.to_dict(), e.seed, e.tally.to_dict(), (e.folder / "sentences.csv").read_text("utf-8"),
                (e.folder / "tokens.csv").read_text("utf-8")) for e in part.entries]
    gathered = gather_object([payload])  # one payload per process, in rank (= text) order
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest, fingerprint = hash_texts(texts), model_fingerprint(loaded)
    entries = []
    for k, first in enumerate(gathered[0]):
        config, seed = EvalConfig.from_dict(first[0]), first[1]
        tally = Tally()
        folder = root / f".tmp-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        for n, name in enumerate(("sentences", "tokens")):
            bodies = [payload[k][3 + n] for payload in gathered]
            (folder / f"{name}.csv").write_text(
                bodies[0] + "".join(body.split("\n", 1)[1] for body in bodies[1:]), encoding="utf-8")
        for payload in gathered:
            tally.add(Tally.from_dict(payload[k][2]))
        (folder / "summary.json").write_text(json.dumps({"config": config.to_dict(), "seed": seed,
                                                         "model": loaded.name, "tally": tally.to_dict()}))
        final = root / entry_key(digest, fingerprint, config, seed, with_pll, 0, loaded.max_length)
        try:
            if final.exists():
                shutil.rmtree(final)
            os.replace(folder, final)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
        entries.append(Entry(config, seed, tally, final))
    return EvalReport(loaded.name, tuple(entries), with_pll, f"{state.device.type} x {state.num_processes}",
                      part.seconds, _notices(entries, loaded) + (
                          f"Evaluated by {state.num_processes} processes with Accelerate.",))
