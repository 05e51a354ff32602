"""Settings declared once: a ``ParamSpec`` per parameter drives validation, CLI flags, widgets,
URL fields and limits.

A dataclass declares its parameters with ``field(default=..., metadata=param("help", min=..., max=...))``
and mixes in ``Validated``; ``param_specs(cls)`` reads them back in UI order. Strategies, draw
policies, rate schedules, privacy masking and the training configuration are all declared this way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from mlm_core.errors import InputError


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a strategy, declared once for the CLI, the Streamlit controls and URLs.

    ``kind`` is one of ``float``, ``int``, ``bool``, ``choice``, ``text``, ``int_list``,
    ``text_list``, ``multi_choice``. Example: ``ParamSpec("mlm_probability", "float", 0.15,
    "Share of eligible tokens chosen.", 0.0, 1.0).parse("0.3") == 0.3``.
    """

    name: str
    kind: str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False  # None is a value too (declared ``int | None``): "not set, derive it"
    label: str = ""  # what a widget calls it, in plain words; empty: the name with spaces
    choice_labels: tuple[tuple[str, str], ...] = ()  # (choice, plain words) for a widget's options

    def shown_choice(self, choice: str) -> str:
        """A choice as a widget shows it ("never mask them" for ``protect``); the link keeps the choice."""
        return dict(self.choice_labels).get(choice, choice or "nothing")

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name.replace("_", " "))

    def parse(self, value: Any) -> Any:
        """Convert a native value, or a string from a URL or the CLI, and check it; InputError if invalid."""
        if self.optional and (value is None or isinstance(value, str) and value.strip().lower() == "none"):
            return None
        kind = self.kind
        if kind in ("float", "int"):
            number = self._number(value)
            if (self.min is not None and number < self.min) or (self.max is not None and number > self.max):
                raise InputError(f"{self.name} must be {self._bounds()}; got {value!r}.")
            return number
        if kind == "bool":
            return self._bool(value)
        if kind in ("choice", "text"):
            if not isinstance(value, str):
                raise InputError(f"{self.name} must be text; got {value!r}.")
            if kind == "choice" and value not in self.choices:
                raise InputError(f"{self.name} must be one of {', '.join(self.choices)}; got {value!r}.")
            return value
        items = self._items(value)
        if kind == "int_list":
            return tuple(self._integer(item) for item in items)
        # An item holding a separator comes back from a link (``format``) as two: split it here already,
        # so that parse(format(v)) == v (a word list never needs a comma inside a word).
        parts = (part for item in items for part in str(item).replace(";", ",").split(","))
        items = tuple(part.strip() for part in parts if part.strip())
        if kind == "multi_choice":
            unknown = [item for item in items if item not in self.choices]
            if unknown:
                raise InputError(  # quoted: a link may carry any text, line breaks included
                    f"{self.name}: unknown {', '.join(shown_value(u, 40) for u in unknown[:5])}; "
                    f"choose from {', '.join(self.choices)}."
                )
            return tuple(dict.fromkeys(items))
        return items

    def format(self, value: Any) -> str:
        """The string form used in URLs and on the command line (``parse`` reads it back)."""
        if value is None:
            return "none"
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind in ("int_list", "text_list", "multi_choice"):
            return ",".join(str(item) for item in value)
        if self.kind == "float":
            short = f"{value:g}"  # "0.15", not "0.15000000000000002"; but :g keeps only 6 digits,
            return short if float(short) == value else repr(float(value))  # so a link must not round
        return str(value)

    def _bounds(self) -> str:
        what = "a whole number" if self.kind == "int" else "a number"
        if self.min is not None and self.max is not None:
            return f"{what} from {_shown(self.min)} to {_shown(self.max)}"
        if self.min is not None:
            return f"{what} of at least {_shown(self.min)}"
        return what

    def _number(self, value: Any) -> float | int:
        if isinstance(value, bool):
            raise InputError(f"{self.name} must be {self._bounds()}; got {value!r}.")
        if self.kind == "int":
            return self._integer(value)
        try:
            number = float(value.strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise InputError(f"{self.name} must be {self._bounds()}; got {value!r}.") from None
        if not math.isfinite(number):
            raise InputError(f"{self.name} must be a finite number; got {value!r}.")
        return number

    def _integer(self, value: Any) -> int:
        try:
            if isinstance(value, str):
                return int(value.strip())
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                return int(value)
            if isinstance(value, float) and value.is_integer():
                return int(value)
        except ValueError:
            pass
        raise InputError(f"{self.name} must be whole numbers; got {value!r}.")

    def _bool(self, value: Any) -> bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, np.integer)) and value in (0, 1):
            return bool(value)
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise InputError(f"{self.name} must be true or false; got {value!r}.")

    @staticmethod
    def _items(value: Any) -> tuple:
        if isinstance(value, str):
            return tuple(part for part in value.replace(";", ",").split(",") if part.strip())
        if isinstance(value, Iterable):
            return tuple(value)
        return (value,)


def _shown(bound: float) -> str:
    """A limit as people write it: 1,000,000 rather than 1e+06; 1e-07 and 0.5 as they are."""
    return f"{int(bound):,}" if float(bound).is_integer() and abs(bound) >= 10_000 else f"{bound:g}"


def param(
    help: str, *, min: float | None = None, max: float | None = None, choices: Sequence[str] = (), label: str = "",
    choice_labels: dict[str, str] | None = None,
) -> dict:
    """Field metadata read by ``param_specs``: the one place a parameter is described.

    ``label`` is the plain-words name widgets show ("Share of words to mask"); ``help`` explains it and
    keeps the technical name ("mlm_probability in Hugging Face"). Without a label the name is shown.
    ``choice_labels`` name choices in plain words for widgets; links and the CLI keep the choices.
    """
    return {"help": help, "min": min, "max": max, "choices": tuple(choices), "label": label,
            "choice_labels": tuple((choice_labels or {}).items())}


_KIND_OF_ANNOTATION = {
    "float": "float",
    "int": "int",
    "bool": "bool",
    "str": "text",
    "tuple[int, ...]": "int_list",
    "tuple[str, ...]": "text_list",
}


@lru_cache(maxsize=64)
def param_specs(cls: type) -> tuple[ParamSpec, ...]:
    """The declared parameters of a strategy class (or ``DrawPolicy``/``RateSchedule``), UI order."""
    specs = []
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.kw_only):  # corruption settings last
        meta = f.metadata
        if "help" not in meta:
            continue
        annotation = str(f.type)
        optional = annotation.endswith(" | None")
        kind = _KIND_OF_ANNOTATION[annotation.removesuffix(" | None")]
        if meta.get("choices"):
            kind = {"text": "choice", "text_list": "multi_choice"}[kind]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        specs.append(
            ParamSpec(
                f.name, kind, default, meta["help"], meta.get("min"), meta.get("max"), meta.get("choices", ()),
                optional, meta.get("label", ""), meta.get("choice_labels", ()),
            )
        )
    return tuple(specs)


class Validated:
    """Mixin for dataclasses: parse and check every declared field in ``__post_init__``.

    Every invalid field is named in one message (a form is fixed in one go, not one field per try).
    """

    label: ClassVar[str] = "masking"

    def __post_init__(self) -> None:
        problems = []
        for spec in param_specs(type(self)):
            try:
                value = spec.parse(getattr(self, spec.name))
            except InputError as exc:
                problems.append(str(exc))
                continue
            object.__setattr__(self, spec.name, value)
        if problems:
            raise InputError(f"{self.label}: {' '.join(problems)}")
        self._check()

    def _check(self) -> None:
        """Checks that involve several fields; raise InputError with what to change."""


def shown_value(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut short: messages quote what came from a link, which may be huge."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
