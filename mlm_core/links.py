"""Page links: one codec for a masking setting, used by every page and by links the core builds.

A masking setting travels in a link as these query fields (a page that shows two settings,
Compare's A and B, puts a prefix before each: ``a_strategy``, ``a_p_mlm_probability``, ``b_heads``):

    strategy    ``none`` or a strategy of the registry (always written: the link says what it shows)
    p_<param>   each parameter of the strategy that differs from its default (``ParamSpec.format``)
    privacy     ``1`` when personal data is replaced before anything else sees the text
    protect     never-mask rules, comma separated (``stopwords,numbers``)
    exclude     the rule whose tokens leave the context (attention exclusion)
    heads       attention heads switched off, ``layer:head`` comma separated (``0:1,2:3``)
    seed        the draw's seed, when not 0
    language    the text's language when not English (``zh``): its stopwords and, in Chinese, its words

``encode`` writes only what differs from the defaults, so links stay short; ``decode`` reads any
link, old spellings included (heads written ``layer.head`` by old Compare links, the explorer's
long name for no strategy), and reports each field it cannot use (``LinkProblem``) instead of
failing, so a page can say so and go on with the default. Example::

    setting = MaskingSetting("span", {"mlm_probability": 0.3}, exclude="punctuation", seed=7)
    encode(setting, prefix="a_")  # {"a_strategy": "span", "a_p_mlm_probability": "0.3", ...}
    decode(encode(setting)) == (setting, ())
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlm_core.errors import InputError
from mlm_core.masking import (
    EXCLUDE_RULES,
    PROTECT_RULES,
    STRATEGIES,
    RuleBased,
    build_strategy,
    params_of,
    strategy_from_params,
)
from mlm_core.masking.language import with_language
from mlm_core.settings import ParamSpec, param_specs, shown_value

NONE = "none"  # no strategy: typed or clicked masks only (the CLI takes the same word)
NONE_LABEL = "none (typed or clicked masks only)"  # how the pages name it; old explorer links carry it
MAX_LINK_TEXT = 2000  # characters of text a link carries; a longer text stays in the session
PARAM_PREFIX = "p_"
COMPOSE, COMPOSE_STEPS = "compose", "steps"  # compose's one parameter, a list of steps, has no ParamSpec
STRATEGY = "strategy"
PRIVACY = ParamSpec("privacy", "bool", False, "Replace names, addresses, places, e-mails, URLs, phone numbers and numbers first.")
PROTECT = ParamSpec("protect", "multi_choice", (), "Never mask these.", choices=PROTECT_RULES)
EXCLUDE = ParamSpec("exclude", "choice", "", "Remove these from the context.", choices=EXCLUDE_RULES)
HEADS = ParamSpec("heads", "text", "", "Attention heads switched off, layer:head (e.g. 0:1,2:3).")
SEED = ParamSpec("seed", "int", 0, "The seed of the draw: the same seed repeats a draw.", 0, 2**31 - 1)
# Declared once, by the steps that read words (``language_field``); in a link it is the whole setting's.
LANGUAGE = next(spec for spec in param_specs(RuleBased) if spec.name == "language")
FIELDS = (STRATEGY, PRIVACY.name, PROTECT.name, EXCLUDE.name, HEADS.name, SEED.name, LANGUAGE.name)  # and p_<param>


# --------------------------------------------------------------------------- heads


def parse_heads_off(text: str) -> tuple[tuple[int, int], ...]:
    """``"0:1, 2:3"`` (layer:head, counting from 0) → ((0, 1), (2, 3)), in the order written.

    ``layer.head`` (old Compare links) reads the same; ``;`` separates like ``,``.
    """
    pairs = []
    for part in str(text).replace(";", ",").split(","):
        if not part.strip():
            continue
        try:
            layer, head = (int(x) for x in part.split(":" if ":" in part else "."))
        except ValueError:
            raise InputError(f"Heads are written layer:head (e.g. 0:1,2:3); got {shown_value(part.strip())}.") from None
        pairs.append((layer, head))
    return tuple(pairs)


def format_heads_off(heads: Iterable[tuple[int, int]]) -> str:
    """((0, 1), (2, 3)) → ``"0:1,2:3"``: the one spelling links, the CLI and labels use."""
    return ",".join(f"{layer}:{head}" for layer, head in heads)


# --------------------------------------------------------------------------- the setting


def _param_specs(name: str) -> dict[str, ParamSpec]:
    return {spec.name: spec for spec in STRATEGIES[name].params}


def _canonical_params(name: str, params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """``params`` (native values or strings) as URL strings, only those that differ from the defaults,
    in declared order. Each value is checked on its own; combinations are checked by ``build``."""
    if name == NONE:
        if params:
            raise InputError(f"Strategy {NONE} takes no parameters.")
        return ()
    if name == COMPOSE:
        steps = params_of(strategy_from_params(name, params), as_strings=True)[COMPOSE_STEPS]
        return ((COMPOSE_STEPS, steps),) if steps != "[]" else ()
    specs = _param_specs(name)
    unknown = [str(k) for k in params if k not in specs]
    if unknown:
        raise InputError(f"{name}: unknown parameter(s) {', '.join(shown_value(k, 40) for k in unknown)}; "
                         f"valid: {', '.join(specs) or 'none'}.")
    written = {k: specs[k].format(specs[k].parse(v)) for k, v in params.items()}
    return tuple((k, written[k]) for k in specs if k in written and written[k] != specs[k].format(specs[k].default))


@dataclass(frozen=True)
class MaskingSetting:
    """What a link says about masking: the strategy and its parameters, privacy, protection,
    exclusion, heads switched off and the seed. Two spellings of one setting are equal: ``params``
    (a mapping of native values or strings) is kept as the non-default parameters in URL form,
    ``protect`` and ``heads_off`` sorted. Invalid values raise ``InputError``.
    """

    strategy: str = NONE
    params: Mapping[str, Any] | tuple[tuple[str, str], ...] = ()
    privacy: bool = False
    protect: Sequence[str] = ()
    exclude: str = ""
    heads_off: Iterable[tuple[int, int]] = ()
    seed: int = 0
    language: str = LANGUAGE.default

    def __post_init__(self) -> None:
        name = strategy_name(self.strategy)
        raw = dict(self.params.items() if isinstance(self.params, Mapping) else self.params)
        # The strategy's own language parameter is the setting's language: one field in the link, not two.
        own = raw.pop(LANGUAGE.name, None) if name != COMPOSE else None
        language = own if own is not None and self.language == LANGUAGE.default else self.language
        object.__setattr__(self, "language", LANGUAGE.parse(language))
        object.__setattr__(self, "strategy", name)
        object.__setattr__(self, "params", _canonical_params(name, raw))
        object.__setattr__(self, "privacy", PRIVACY.parse(self.privacy))
        object.__setattr__(self, "protect", tuple(sorted(set(PROTECT.parse(self.protect)))))  # as EvalConfig
        object.__setattr__(self, "exclude", EXCLUDE.parse(self.exclude))
        heads = parse_heads_off(self.heads_off) if isinstance(self.heads_off, str) else self.heads_off
        try:
            heads = tuple(sorted({(int(layer), int(head)) for layer, head in heads}))
        except (TypeError, ValueError):
            raise InputError("heads_off must be (layer, head) pairs of whole numbers.") from None
        if any(layer < 0 or head < 0 for layer, head in heads):
            raise InputError("Layers and heads count from 0.")
        object.__setattr__(self, "heads_off", heads)
        object.__setattr__(self, "seed", SEED.parse(self.seed))

    def main(self):
        """The strategy alone (no privacy, protection or exclusion); None for no strategy."""
        if self.strategy == NONE:
            return None
        strategy = strategy_from_params(self.strategy, dict(self.params))
        return strategy if self.strategy == COMPOSE else with_language(strategy, self.language)  # steps carry theirs

    def build(self):
        """The explorer's composition of the setting (privacy, protection, main, exclusion); None if empty."""
        return build_strategy(None if self.strategy == NONE else self.strategy, dict(self.params), self.privacy,
                              self.protect, self.exclude, None if self.strategy == COMPOSE else self.language)


def strategy_name(name: str) -> str:
    """``none`` or a registered strategy's name; the explorer's long name for none reads as none."""
    key = str(name).strip().lower().replace("_", "-")
    if key in (NONE, NONE_LABEL):
        return NONE
    if key not in STRATEGIES:
        raise InputError(f"Unknown masking strategy {shown_value(name)}; choose from {NONE}, {', '.join(STRATEGIES)}.")
    return key


# --------------------------------------------------------------------------- encode / decode


def encode(setting: MaskingSetting, prefix: str = "") -> dict[str, str]:
    """The link's fields for ``setting`` (``prefix`` before each name); defaults left out."""
    fields = {STRATEGY: setting.strategy, **{f"{PARAM_PREFIX}{k}": v for k, v in setting.params},
              PRIVACY.name: "1" if setting.privacy else "", PROTECT.name: PROTECT.format(setting.protect),
              EXCLUDE.name: setting.exclude, HEADS.name: format_heads_off(setting.heads_off),
              SEED.name: str(setting.seed) if setting.seed else "",
              LANGUAGE.name: "" if setting.language == LANGUAGE.default else setting.language}
    return {f"{prefix}{name}": value for name, value in fields.items() if value}


@dataclass(frozen=True)
class LinkProblem:
    """A field a link carries but that cannot be used: its name, what it said, what is used instead, why."""

    field: str
    raw: str
    used: str
    reason: str


def decode(query: Mapping[str, str], prefix: str = "", default: str = NONE,
           choices: Sequence[str] | None = None) -> tuple[MaskingSetting, tuple[LinkProblem, ...]]:
    """The masking setting a link describes, and the fields it could not use (each at its default).

    ``default`` is the strategy when the link names none or one outside ``choices`` (every
    registered strategy when None). Never raises: a hand-edited link still opens.
    """
    problems: list[LinkProblem] = []
    allowed = (NONE, *(STRATEGIES if choices is None else choices))
    raw = query.get(f"{prefix}{STRATEGY}")
    name = default
    if raw is not None:
        try:
            name = strategy_name(raw)
        except InputError:
            name = None
        if name not in allowed:
            name = default
            problems.append(LinkProblem(f"{prefix}{STRATEGY}", raw, default, f"choose from {', '.join(allowed)}"))
    params, wrong = decode_params(query, name, prefix)
    problems += wrong
    values = {}
    for spec in (PRIVACY, PROTECT, EXCLUDE, HEADS, SEED, LANGUAGE):
        raw = query.get(f"{prefix}{spec.name}")
        if raw is None:
            continue
        try:
            values[spec.name] = parse_heads_off(raw) if spec is HEADS else spec.parse(raw)
        except InputError as exc:
            problems.append(LinkProblem(f"{prefix}{spec.name}", raw, *_fallback(spec, exc)))
    heads = values.pop(HEADS.name, ())
    if any(layer < 0 or head < 0 for layer, head in heads):
        problems.append(LinkProblem(f"{prefix}{HEADS.name}", query[f"{prefix}{HEADS.name}"], "none",
                                    "layers and heads count from 0"))
        heads = ()
    try:
        setting = MaskingSetting(name, params, heads_off=heads, **values)
    except InputError as exc:  # a composition without usable steps
        problems.append(LinkProblem(f"{prefix}{STRATEGY}", query.get(f"{prefix}{STRATEGY}", name), default, str(exc)))
        setting = MaskingSetting(default, heads_off=heads, **values)
    return setting, tuple(problems)


def _fallback(spec: ParamSpec, exc: InputError) -> tuple[str, str]:
    """(what is used instead, why) for a field of the setting that a link gets wrong."""
    if spec is SEED:
        return "0", f"a whole number from {SEED.min} to {SEED.max}"
    if spec is EXCLUDE:
        return "nothing", f"choose from {', '.join(filter(None, EXCLUDE_RULES))}"
    if spec in (PROTECT, HEADS):
        return "none", str(exc)
    return spec.format(spec.default), str(exc)


def decode_params(query: Mapping[str, str], name: str, prefix: str = "") -> tuple[dict[str, Any], list[LinkProblem]]:
    """The link's parameters for strategy ``name`` (native values, only those it carries and that are
    valid), and the ones it could not use. Parameters of other strategies are ignored."""
    if name == NONE:
        return {}, []
    field = f"{prefix}{PARAM_PREFIX}"
    if name == COMPOSE:
        raw = query.get(f"{field}{COMPOSE_STEPS}")
        if raw is None:
            return {}, []
        try:
            return params_of(strategy_from_params(name, {COMPOSE_STEPS: raw})), []
        except InputError as exc:
            return {}, [LinkProblem(f"{field}{COMPOSE_STEPS}", raw, "[]", str(exc))]
    values, problems = {}, []
    for spec in STRATEGIES[name].params:
        raw = query.get(f"{field}{spec.name}")
        if raw is None:
            continue
        try:
            values[spec.name] = spec.parse(raw)
        except InputError as exc:
            problems.append(LinkProblem(f"{field}{spec.name}", raw, spec.format(spec.default), str(exc)))
    return values, problems


def explorer_query(text: str, setting: MaskingSetting, model: str | None = None) -> dict[str, str]:
    """Query fields that open ``text`` in the explorer with ``setting``; ``model`` None: the default model.

    The explorer has no heads field (its What-if tab switches heads), so they stay out of the link.
    """
    fields = encode(dataclasses.replace(setting, heads_off=()))
    return {"text": text, **fields, **({"model": model} if model else {})}
