"""How long a batch analysis takes here: work per stage, throughput measured on this machine and
model, an estimate before starting and the time left during a run.

* ``plan_work``: forward-pass rows and padded tokens per stage, from the token lengths of a sample
  of the texts. Stages (``STAGES``): masked predictions (one row per sentence per configuration and
  seed) and pseudo-log-likelihood (one row per token per context: about T times the work);
* ``measure_throughput``: tokens per second per stage, timed on a few of the texts through the
  engine's own code (one batch each, after a warm-up pass), so Python overhead, padding and the
  device are in the number. Remembered per model, device and thread count; every finished run
  replaces it with the pace it really had (``record_run``), so the next estimate learns;
* ``estimate``: seconds per stage; ``time_left``: during a run, from the pace so far;
* ``describe_seconds``: "about 40 s", "about 3 min" (words, never rows).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mlm_core.errors import InputError
from mlm_core.evaluate.config import EvalConfig, plain_key, pll_key
from mlm_core.masking import is_adaptive
from mlm_core.model.loading import LoadedModel
from mlm_core.text.tokens import tokenize

PREDICT, PLL = "predict", "pll"
STAGES = {PREDICT: "masked predictions", PLL: "pseudo-log-likelihood"}  # progress and estimate names
SAMPLE_TEXTS = 200  # texts whose token lengths stand for the file's
CALIBRATION_TEXTS = 400  # candidates of the timing sample, spread over the file
CALIBRATION_SHARE = 1.0  # of a full batch, per stage: smaller batches run slower per token on a CPU, and
# timing half a batch made the estimate of a 37 s run read 65 s
MIN_RECORDED_SECONDS = 1.0  # a run's stage shorter than this says little about the pace
_MEASURED: dict[tuple, Throughput] = {}
_LOCK = threading.Lock()  # one calibration at a time: two would time each other


@dataclass(frozen=True)
class Work:
    """Planned work of one analysis: texts, and per stage forward-pass rows and padded tokens."""

    sentences: int
    rows: Mapping[str, int]
    tokens: Mapping[str, float]

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


@dataclass(frozen=True)
class Throughput:
    """Tokens per second of each stage on one model and device, and the fixed cost of a run."""

    tokens_per_second: Mapping[str, float]
    overhead_s: float = 0.0
    source: str = "measured"  # "measured" (calibration pass) or "last run"


@dataclass(frozen=True)
class Estimate:
    """Seconds per stage (stages with no work are left out) and in all."""

    stages: Mapping[str, float]
    overhead_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.overhead_s + sum(self.stages.values())

    def describe(self) -> str:
        """e.g. 'about 40 s (masked predictions about 35 s, pseudo-log-likelihood about 5 s)'."""
        parts = [f"{STAGES[s]} {describe_seconds(t)}" for s, t in self.stages.items() if t > 0]
        return describe_seconds(self.seconds) + (f" ({', '.join(parts)})" if len(parts) > 1 else "")


def contexts(configs: Sequence[EvalConfig], with_pll: bool) -> set[tuple]:
    """The pseudo-log-likelihood passes a run makes per sentence (configurations share them)."""
    keys = {pll_key(c) for c in configs} if with_pll else set()
    return keys | {plain_key(c) for c in configs if is_adaptive(c.build())}


def plan_work(loaded: LoadedModel, texts: Sequence[str], configs: Sequence[EvalConfig], seeds: Sequence[int],
              with_pll: bool, sample: int = SAMPLE_TEXTS) -> Work:
    """Rows and tokens per stage, token lengths estimated from up to ``sample`` texts spread over the file.

    A sentence of T tokens (S of them scored) costs T per configuration and seed, and T x S per
    pseudo-log-likelihood context: the units the engine's progress counts in.
    """
    pairs = len(configs) * len(seeds)
    keys = len(contexts(configs, with_pll))
    picked = list(texts[:: max(1, len(texts) // sample)][:sample]) if texts else []
    lengths, scored = [], []
    for text in picked:
        with contextlib.suppress(InputError):
            tokens = tokenize(loaded.tokenizer, text)
            length = min(len(tokens), loaded.max_length)
            lengths.append(length)
            scored.append(max(1, length - sum(tokens.special)))
    mean_t = sum(lengths) / len(lengths) if lengths else 0.0
    mean_s = sum(scored) / len(scored) if scored else 0.0
    mean_ts = sum(t * s for t, s in zip(lengths, scored)) / len(lengths) if lengths else 0.0
    n = len(texts)
    return Work(n, {PREDICT: n * pairs, PLL: round(n * keys * mean_s)},
                {PREDICT: n * pairs * mean_t, PLL: n * keys * mean_ts})


def _key(loaded: LoadedModel) -> tuple:
    return (loaded.name, str(loaded.device), torch.get_num_threads())


def measure_throughput(loaded: LoadedModel, texts: Sequence[str], *, refresh: bool = False,
                       max_tokens: int | None = None) -> Throughput:
    """Tokens per second of each stage, timed here on a few of ``texts`` (remembered per model and device).

    One full batch per stage (a second or two on an idle laptop CPU), after one warm-up pass.
    """
    key = _key(loaded)
    if not refresh and key in _MEASURED:
        return _MEASURED[key]
    from mlm_core.evaluate.cache import model_fingerprint
    from mlm_core.evaluate.engine import _Engine, _Pair  # the engine's own code path is what is timed

    with _LOCK:
        if not refresh and key in _MEASURED:
            return _MEASURED[key]
        candidates = list(texts[:: max(1, len(texts) // CALIBRATION_TEXTS)][:CALIBRATION_TEXTS]) or ["The cat sat."]
        started = time.perf_counter()
        model_fingerprint(loaded)  # part of a run's fixed cost (the first in a process reads every weight)
        overhead = time.perf_counter() - started
        config = EvalConfig()
        with tempfile.TemporaryDirectory() as folder:
            pair = _Pair(config, 0, config.build(), None, Path(folder))
            engine = _Engine(loaded, [pair], True, max_tokens, None, None, None)
            records = [r for r in engine._prepare(candidates, 0, False) if r.tokens is not None]
            if not records:
                raise InputError("None of these texts can be tokenized: nothing to time.")
            engine._evaluate_pair(pair, records[:2], None, None)  # warm-up: first passes allocate
            engine.stage_units = dict.fromkeys(STAGES, 0)
            engine.stage_seconds = dict.fromkeys(STAGES, 0.0)
            batch, pll_batch, size, pll_size = [], [], 0, 0
            budget = engine.max_tokens * CALIBRATION_SHARE
            for record in records:
                length = len(record.tokens)
                if size < budget:
                    batch.append(record)
                    size += length
                if pll_size < budget:
                    pll_batch.append(record)
                    pll_size += length * max(1, length - sum(record.tokens.special))
            engine.timed(PREDICT, engine._evaluate_pair, pair, batch, None, None)
            engine.timed(PLL, engine._pll, pll_batch, pll_key(config))
        rates = {s: engine.stage_units[s] / max(engine.stage_seconds[s], 1e-6) for s in STAGES}
        measured = Throughput(rates, overhead, "measured")
        _MEASURED[key] = measured
        return measured


def record_run(loaded: LoadedModel, units: Mapping[str, float], seconds: Mapping[str, float]) -> None:
    """A finished run's real pace per stage replaces the remembered one (stages that ran long enough)."""
    key = _key(loaded)
    known = _MEASURED.get(key)
    rates = dict(known.tokens_per_second) if known else {}
    changed = False
    for stage in STAGES:
        if seconds.get(stage, 0.0) >= MIN_RECORDED_SECONDS and units.get(stage, 0) > 0:
            rates[stage] = units[stage] / seconds[stage]
            changed = True
    if changed and all(s in rates for s in STAGES):
        _MEASURED[key] = Throughput(rates, known.overhead_s if known else 0.0, "last run")


def forget_measurements() -> None:
    """Drop every remembered throughput (tests; or after the machine changed)."""
    _MEASURED.clear()


def estimate(work: Work, throughput: Throughput) -> Estimate:
    """Seconds per stage: planned tokens / measured tokens per second."""
    stages = {s: work.tokens[s] / throughput.tokens_per_second[s] for s in STAGES if work.tokens.get(s)}
    return Estimate(stages, throughput.overhead_s if work.sentences else 0.0)


def time_left(done: float, total: float | None, elapsed: float, planned: float | None = None) -> float | None:
    """Seconds left during a run: the pace so far, trusted more as the run goes; before a pace exists, the
    estimate minus the time spent. None when neither is known."""
    share = min(1.0, done / total) if total else 0.0
    ahead = None if planned is None else max(0.0, planned - elapsed)
    if share <= 0 or elapsed <= 0:
        return ahead
    paced = elapsed * (1 - share) / share
    if ahead is None:
        return paced
    weight = min(1.0, 4 * share)  # after a quarter of the work the pace alone decides
    return weight * paced + (1 - weight) * ahead


def describe_seconds(seconds: float | None) -> str:
    """'about 8 s', 'about 45 s', 'about 2.5 min', 'about 12 min', 'about 1.5 h' ('unknown' for None)."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    if seconds < 1:
        return "under a second"
    if seconds < 20:
        return f"about {seconds:.0f} s"
    if seconds < 90:
        return f"about {5 * round(seconds / 5):.0f} s"
    if seconds < 600:
        return f"about {round(seconds / 30) / 2:g} min"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {round(seconds / 1800) / 2:g} h"
