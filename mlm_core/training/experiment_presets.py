"""Experiment presets: the classic masking claims as ready experiments, one TOML file each in
``assets/experiments/``.

A preset file holds its page text and its experiment::

    title = "Static vs dynamic masking"
    claim = "..."          # what the literature says
    can_show = "..."       # what this small run can show
    cannot_show = "..."    # and what it cannot
    measured = "..."       # the answer measured when the preset was made (date, machine, means, intervals)
    seeds = 3

    [base]                 # TrainConfig settings, plus the masking parts strategy / params / protect / exclude
    model = "scratch-lstm"
    steps = 150

    [vary]                 # a grid (every combination) ...
    masking = ["static", "dynamic"]

    [[configurations]]     # ... or configurations listed one by one
    label = "stopwords never masked"
    settings = { protect = "stopwords" }
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache

from mlm_core.errors import InputError
from mlm_core.resources import asset
from mlm_core.training import experiments
from mlm_core.training.config import TrainConfig

PRESET_FOLDER = ("experiments",)
MASKING_PART_KEYS = ("strategy", "params", "privacy", "protect", "exclude")


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    claim: str
    can_show: str
    cannot_show: str
    measured: str
    seeds: int
    base: dict
    vary: dict
    configurations: tuple[dict, ...]

    def masking(self) -> dict:
        """The base masking parts (``experiments.cell_config`` reads them)."""
        parts = {k: self.base[k] for k in MASKING_PART_KEYS if k in self.base}
        if isinstance(parts.get("protect"), str):
            parts["protect"] = experiments.parse_value("protect", parts["protect"])
        if "exclude" in parts:
            parts["exclude"] = experiments.parse_value("exclude", parts["exclude"])
        return parts

    def config(self, corpus_name: str, **overrides) -> TrainConfig:
        """The base TrainConfig: the preset's settings, then ``overrides`` (None values ignored)."""
        settings = {k: v for k, v in self.base.items() if k not in MASKING_PART_KEYS}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        if "steps" in settings and "eval_every" not in settings:
            settings.update(TrainConfig.cadence(settings["steps"]))
        return TrainConfig(corpus_name=corpus_name, **settings)

    def plan(self, corpus_name: str, seeds: int | None = None, **overrides) -> dict:
        """The experiment this preset runs on ``corpus_name`` (``seeds`` and training settings overridable)."""
        configurations = None
        if self.configurations:
            configurations = [{"label": c["label"], "settings": c.get("settings", {})} for c in self.configurations]
        return experiments.make_plan(
            self.config(corpus_name, **overrides), self.masking(), configurations=configurations,
            vary=None if configurations else {k: [experiments.parse_value(k, v) for v in values]
                                              for k, values in self.vary.items()},
            seeds=seeds or self.seeds, title=self.title, preset=self.name,
            unset=[k for k in experiments.resolved_keys() if self.base.get(k) is None and overrides.get(k) is None])


# The claim the Experiments page opens on: the best known one (RoBERTa's), and a few minutes on a CPU.
FIRST_PRESET = "static-vs-dynamic"


@lru_cache(maxsize=1)
def presets() -> dict[str, Preset]:
    """The shipped presets by name (the file name without .toml): ``FIRST_PRESET``, then file-name order."""
    found = {}
    paths = sorted(asset(*PRESET_FOLDER).glob("*.toml"), key=lambda path: (path.stem != FIRST_PRESET, path.stem))
    for path in paths:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        found[path.stem] = Preset(
            name=path.stem, title=data["title"], claim=data["claim"], can_show=data["can_show"],
            cannot_show=data["cannot_show"], measured=data.get("measured", ""), seeds=int(data.get("seeds", 3)),
            base=dict(data.get("base", {})), vary=dict(data.get("vary", {})),
            configurations=tuple(data.get("configurations", ())))
    return found


def preset(name: str) -> Preset:
    """The preset called ``name``; InputError naming the presets when there is none."""
    found = presets()
    if name not in found:
        raise InputError(f"No experiment preset {name!r}; the presets: {', '.join(found) or 'none'}.")
    return found[name]
