"""The strategy registry: every strategy by name with its parameters, built from (and read back to)
plain values, so the CLI, the pages, shared links and run configs name strategies one way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlm_core.errors import InputError
from mlm_core.masking.adaptive import AdaptiveMasking
from mlm_core.masking.bert import RandomMasking
from mlm_core.masking.corruption import MaskingStep
from mlm_core.masking.engine import Compose
from mlm_core.masking.exclusion import AttentionExclusion
from mlm_core.masking.manual import ManualMasking
from mlm_core.masking.rules import RuleBased
from mlm_core.masking.words import SpanMasking, WholeWordMasking
from mlm_core.settings import ParamSpec, param_specs, shown_value
from mlm_core.text.privacy import PrivacyMasking

MAX_COMPOSE_DEPTH = 8  # compositions inside compositions (Compose flattens them anyway)
MAX_COMPOSE_STEPS = 32


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: its name, class, one-line help and parameters."""

    name: str
    cls: type
    help: str
    params: tuple[ParamSpec, ...]


def _first_line(cls: type) -> str:
    return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


_CLASSES = (
    RandomMasking,
    WholeWordMasking,
    SpanMasking,
    RuleBased,
    PrivacyMasking,
    ManualMasking,
    AdaptiveMasking,
    AttentionExclusion,
    Compose,
)
STRATEGIES: dict[str, StrategySpec] = {
    cls.name: StrategySpec(cls.name, cls, _first_line(cls), param_specs(cls)) for cls in _CLASSES
}


def strategy_from_params(name: str, params: Mapping[str, Any] | None = None):
    """Build a strategy from its registry name and parameters (strings from URLs/CLI or native values).

    Example: ``strategy_from_params("random", {"mlm_probability": "0.3", "exact": "true"})``.
    ``compose`` takes ``{"steps": [{"name": ..., "params": {...}}, ...]}`` (or that list as JSON).
    """
    return _from_params(name, params, depth=0)


def _from_params(name: str, params: Mapping[str, Any] | None, depth: int):
    key = str(name).strip().lower().replace("_", "-")
    if key not in STRATEGIES:
        raise InputError(
            f"Unknown masking strategy {shown_value(name)}; choose from {', '.join(STRATEGIES)}."
        )
    spec = STRATEGIES[key]
    if params is not None and not isinstance(params, Mapping):
        raise InputError(
            f"{spec.cls.label}: params must be a mapping of names to values; got {shown_value(params)}."
        )
    params = dict(params or {})
    if spec.cls is Compose:
        return _compose_from_params(params, depth)
    valid = {p.name: p for p in spec.params}
    unknown = [str(k) for k in params if k not in valid]  # keys of a hand-made mapping need not be text
    if unknown:
        raise InputError(
            f"{spec.cls.label}: unknown parameter(s) {', '.join(shown_value(k, 40)[1:-1] for k in unknown)}; "
            f"valid: {', '.join(valid) or 'none'}."
        )
    kwargs = {}
    for param_name, value in params.items():
        try:
            kwargs[param_name] = valid[param_name].parse(value)
        except InputError as exc:
            raise InputError(f"{spec.cls.label}: {exc}") from None
    return spec.cls(**kwargs)


def _compose_from_params(params: dict, depth: int):
    unknown = [str(k) for k in params if k != "steps"]
    if unknown:
        raise InputError(
            f"composed masking: unknown parameter(s) {', '.join(shown_value(k, 40)[1:-1] for k in unknown)}; "
            "valid: steps."
        )
    if depth >= MAX_COMPOSE_DEPTH:  # a hand-made link could nest compositions until the interpreter overflows
        raise InputError(f"composed masking: compositions nest at most {MAX_COMPOSE_DEPTH} levels deep.")
    steps = params.get("steps", [])
    if isinstance(steps, str):
        try:
            steps = json.loads(steps)
        except json.JSONDecodeError as exc:
            raise InputError(f"composed masking: steps must be a JSON list ({exc.msg}).") from None
        except (RecursionError, ValueError):  # brackets nested thousands deep, a 5,000-digit number
            raise InputError("composed masking: steps must be a short JSON list of {name, params}.") from None
    if not isinstance(steps, list | tuple):
        raise InputError("composed masking: steps must be a list of {name, params}.")
    if len(steps) > MAX_COMPOSE_STEPS:  # each step is a pass over every batch
        raise InputError(f"composed masking: at most {MAX_COMPOSE_STEPS} steps; got {len(steps):,}.")
    built = []
    for step in steps:
        if isinstance(step, MaskingStep | PrivacyMasking):
            built.append(step)
        elif isinstance(step, Mapping) and "name" in step:
            built.append(_from_params(step["name"], step.get("params") or {}, depth + 1))
        else:
            raise InputError(f"composed masking: each step needs a name and params; got {shown_value(step)}.")
    return Compose(tuple(built))


def params_of(strategy, as_strings: bool = False) -> dict[str, Any]:
    """The parameters of ``strategy``; ``strategy_from_params(strategy.name, params_of(strategy))`` rebuilds it.

    ``as_strings=True`` gives URL/CLI strings (``ParamSpec.format``).
    """
    if isinstance(strategy, Compose):
        steps = [{"name": s.name, "params": params_of(s)} for s in strategy.steps]
        return {"steps": json.dumps(steps) if as_strings else steps}
    if not hasattr(strategy, "name") or strategy.name not in STRATEGIES:
        raise InputError(f"{strategy!r} is not a registered masking strategy.")
    specs = param_specs(type(strategy))
    return {
        s.name: (s.format(getattr(strategy, s.name)) if as_strings else getattr(strategy, s.name))
        for s in specs
    }
