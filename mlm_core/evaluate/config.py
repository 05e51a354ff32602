"""Batch-analysis configurations and their limits: ``EvalConfig``, rate sweeps, seeds.

* ``EvalConfig``: one masking configuration (strategy, parameters, protection, exclusion,
  privacy, heads off), equal whatever the spelling of its parameters; ``explorer_query`` is the
  explorer link of one of its sentences;
* ``parse_rates``/``sweep``: the strategy x rate grid a user asks for (heads: ``mlm_core.links``);
* ``sentence_seed``: the seed sentence ``i`` is masked with, replayable in the explorer;
* ``pll_key``/``plain_key``: what a pseudo-log-likelihood pass depends on (shared by configurations);
* ``WITH_PLL``: whether a run computes the pseudo-log-likelihood unless told (the one default);
* ``planned_rows``: the forward-pass rows a run will do (the page's size limit; times: ``estimate``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mlm_core import links
from mlm_core.errors import InputError
from mlm_core.masking import (
    EXCLUDE_RULES,
    MAIN_STRATEGIES,
    PROTECT_RULES,
    STRATEGIES,
    AttentionExclusion,
    DrawPolicy,
    RuleBased,
    build_strategy,
    params_of,
    strategy_from_params,
    strategy_steps,
)
from mlm_core.model.loading import LoadedModel
from mlm_core.text.privacy import PrivacyMasking

WITH_PLL = False  # the default everywhere (evaluate, the page, the CLI): PLL is one pass per token, about
# T times the masked predictions' work (minutes where they take seconds), so it is asked for, never implied
MAX_SEEDS = 20
MAX_RATES = 50
MAX_PAIRS = 1000  # configurations x seeds in one evaluation
RATE_PARAM = {"rule-based": "rate"}  # the swept parameter; every other main strategy: mlm_probability
SHORT_NAMES = {"mlm_probability": "p", "rate": "rate"}


def _non_default(main) -> tuple[tuple[str, str], ...]:
    """The parameters of ``main`` that differ from their defaults, as URL strings, in declared order."""
    return links.MaskingSetting(main.name, params_of(main)).params


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
        """Read back a strategy built by ``masking.build_strategy`` (the explorer's masking panel)."""
        if strategy is None:
            raise InputError("Choose a masking strategy: a batch analysis needs positions to predict.")
        steps = strategy_steps(strategy)
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

    @functools.cached_property  # the strategy is parsed anew to find it: asked for with every sentence's row
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
            parts.append("heads off " + links.format_heads_off(self.heads_off))
        return " ".join(parts)

    @functools.cached_property
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
        """Query parameters that open ``text`` in the explorer with this configuration (``mlm_core.links``).

        ``seed`` is the sentence's own seed (``sentence_seed``), so the explorer draws the same mask.
        Heads switched off have no place in the explorer's link: its What-if tab switches them.
        """
        setting = links.MaskingSetting(self.strategy, self.params, self.privacy, self.protect, self.exclude, seed=seed)
        return links.explorer_query(text, setting, model)


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
    from mlm_core.evaluate.estimate import plan_work

    return plan_work(loaded, texts, configs, seeds, with_pll, sample).total_rows


def sentence_seed(seed: int, index: int) -> int:
    """The seed sentence ``index`` is masked with (the explorer's seed field takes it as is)."""
    return DrawPolicy("static", int(seed)).seed_for(int(index)) % 2**31


def pll_key(config: EvalConfig) -> tuple:
    """What PLL depends on: the text (privacy), the context (exclusion, with protection) and the heads."""
    return (config.privacy, config.protect if config.exclude else (), config.exclude, config.heads_off)


def plain_key(config: EvalConfig) -> tuple:
    """The PLL key of the plain model on this configuration's text (adaptive masking's scores)."""
    return (config.privacy, (), "", ())
