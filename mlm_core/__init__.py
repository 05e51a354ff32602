"""MaskLab's library: see and test what masking does to masked language models.

The curated Python API (every page and CLI command has its twin here)::

    import mlm_core as ml

    loaded = ml.load_model("masklab-minilm-en")                # the offline default model
    record = ml.explore(loaded, "The capital of France is [MASK].")
    record.prediction.predictions[0].top[0]                    # Candidate(token='paris', prob=0.10...)

    strategy = ml.build_strategy("whole-word", {"mlm_probability": 0.3})
    report = ml.evaluate.evaluate(loaded, sentences, ml.EvalConfig.from_strategy(strategy), seeds=(0, 1))
    report.summary()                                           # top-1/top-5 by token category

Where things live (one concern per subpackage; each opens with a docstring):

* ``text``: tokens and their categories, user corpora, personal-data detection;
* ``model``: safe loading, the default model, model families, the one forward pass;
* ``masking``: every masking strategy, their composition, schedules and registry;
* ``explain``: predictions, attention, attributions, what-ifs, side-by-side comparisons;
* ``evaluate``: batch analysis of a whole file of sentences;
* ``training``: fine-tuning configuration, data, scratch models, trainer, checkpoints, runs, jobs;
* ``views``: figures, escaped HTML and standalone reports (no Streamlit);
* ``cli``: the ``masklab`` / ``python -m mlm_core`` commands;
* ``settings`` (every setting declared once), ``links`` (the one URL codec), ``errors``, ``resources``.

Names and subpackages are imported lazily, so ``import mlm_core`` stays cheap for the CLI and the
training jobs. ``evaluate`` is the batch-analysis subpackage (``ml.evaluate.evaluate(...)`` runs one):
a function of the same name here would be replaced by the subpackage as soon as it is imported.
"""

from __future__ import annotations

import importlib

# public name -> the module that declares it (the one place each is defined)
_API = {
    # text
    "tokenize": "mlm_core.text.tokens",
    "Tokens": "mlm_core.text.tokens",
    "read_corpus": "mlm_core.text.corpus",
    "Corpus": "mlm_core.text.corpus",
    "PrivacyMasking": "mlm_core.text.privacy",
    # model
    "load_model": "mlm_core.model.loading",
    "LoadedModel": "mlm_core.model.loading",
    "DEFAULT_MODEL_NAME": "mlm_core.model.default_model",
    # masking
    "Vocab": "mlm_core.masking",
    "MaskResult": "mlm_core.masking",
    "STRATEGIES": "mlm_core.masking",
    "build_strategy": "mlm_core.masking",
    "strategy_from_params": "mlm_core.masking",
    "params_of": "mlm_core.masking",
    "apply_strategy": "mlm_core.masking",
    "mask_text": "mlm_core.masking",
    "mask_many": "mlm_core.masking",
    "RandomMasking": "mlm_core.masking",
    "WholeWordMasking": "mlm_core.masking",
    "SpanMasking": "mlm_core.masking",
    "RuleBased": "mlm_core.masking",
    "ManualMasking": "mlm_core.masking",
    "AdaptiveMasking": "mlm_core.masking",
    "AttentionExclusion": "mlm_core.masking",
    "Compose": "mlm_core.masking",
    "RateSchedule": "mlm_core.masking",
    "DrawPolicy": "mlm_core.masking",
    # explain
    "explore": "mlm_core.explain.exploration",
    "Exploration": "mlm_core.explain.exploration",
    "predict": "mlm_core.explain.predict",
    "Prediction": "mlm_core.explain.predict",
    "fill_text": "mlm_core.explain.predict",
    "pseudo_log_likelihood": "mlm_core.explain.predict",
    "attention_maps": "mlm_core.explain.attention",
    "rollout": "mlm_core.explain.attention",
    "attribute": "mlm_core.explain.attribution",
    "compare": "mlm_core.explain.compare",
    "word_swap": "mlm_core.explain.compare",
    # evaluate (the function is ``mlm_core.evaluate.evaluate``: see the module docstring)
    "EvalConfig": "mlm_core.evaluate",
    "EvalReport": "mlm_core.evaluate",
    "sweep": "mlm_core.evaluate",
    # training
    "TrainConfig": "mlm_core.training",
    "Trainer": "mlm_core.training",
    "RunStore": "mlm_core.training",
    "submit": "mlm_core.training.jobs",
    # settings, links, errors
    "ParamSpec": "mlm_core.settings",
    "MaskingSetting": "mlm_core.links",
    "MaskLabError": "mlm_core.errors",
    "InputError": "mlm_core.errors",
    "NothingToMaskError": "mlm_core.errors",
    "ModelLoadError": "mlm_core.errors",
}

_SUBPACKAGES = ("text", "model", "masking", "explain", "evaluate", "training", "views", "cli", "settings",
                "links", "errors", "resources")

__all__ = sorted([*_API, *_SUBPACKAGES])


def __getattr__(name: str):
    """Import a public name's module, or a subpackage, on first use (PEP 562)."""
    if name in _SUBPACKAGES:
        return importlib.import_module(f"mlm_core.{name}")  # the import sets the attribute itself
    try:
        module = _API[name]
    except KeyError:
        raise AttributeError(f"module 'mlm_core' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
