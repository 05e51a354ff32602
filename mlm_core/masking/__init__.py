"""The masking engine: which positions a strategy chooses, and what happens to them.

One engine serves the explorer (one ``Tokens`` record, ``apply_strategy``), batch analysis
(many records, each with its own seed: ``mask_each``, ``mask_many``) and the trainer (``(B, T)``
blocks of ids, ``mask_batch``/``mask_examples``): the strategy objects are the same everywhere,
so what a user sees on one sentence is exactly what the trainer does to the corpus. Masking many
texts at once gives each exactly the draw it gets alone (``RowGenerators``: one generator per row).

Composition (``Compose(steps)``; a single strategy is a one-step composition), in this order:

1. text steps (``PrivacyMasking``) rewrite the raw text before tokenization;
2. eligibility: every position that is neither special nor padding. A position that already
   holds the mask token (typed by the user, or put there by privacy masking) stays a mask:
   kind ``"masked"``, label -100 (there is no original to score against), never chosen again;
3. protect steps (``RuleBased(mode="protect")``, ``TokenBatch.protected``) shrink eligibility;
4. select steps (random, whole-word, span, rule targets, manual, adaptive) each choose among
   the eligible positions; the union is chosen;
5. exclusion steps (``AttentionExclusion``) flag eligible positions that are not chosen;
6. corruption, once, with the settings of the first step that chooses tokens: each chosen
   position becomes the mask token with ``mask_replace_prob``, a random token with
   ``random_replace_prob``, else stays unchanged (``DataCollatorForLanguageModeling``
   semantics, draw for draw: same generator, same result).

``ratio`` (α) = chosen positions (typed masks included) / eligible positions (after protection).
Randomness comes only from the ``rng`` argument (an int seed, a ``torch.Generator`` or ``RowGenerators``).

Example::

    vocab = Vocab.from_tokenizer(tokenizer)
    result = apply_strategy(tokenize(tokenizer, "The cat sat on the mat."), RandomMasking(0.15, exact=True), vocab)
    result.masked_positions, result.labels  # labels: original id where chosen, -100 elsewhere

Modules: ``batch`` (Vocab, TokenBatch), ``results`` (MaskResult, kinds), ``corruption`` (the
step base and the 80/10/10 split), one module per strategy family (``bert``, ``words``,
``rules``, ``manual``, ``adaptive``, ``exclusion``; privacy lives in ``mlm_core.text.privacy``
because it works on raw text), ``engine`` (Compose, ``strategy_steps``, ``mask_batch``,
``apply_strategy``, ``mask_text``), ``schedules``, ``draws`` (static/dynamic masking),
``registry`` (strategies by name) and ``assembly`` (strategies from page settings).
"""

from mlm_core.masking.adaptive import AdaptiveMasking
from mlm_core.masking.assembly import (
    EXCLUDE_RULES,
    MAIN_STRATEGIES,
    PROTECT_RULES,
    build_strategy,
    compose,
    is_adaptive,
    needs_word_texts,
)
from mlm_core.masking.batch import CATEGORY_CODES, TokenBatch, Vocab
from mlm_core.masking.bert import RandomMasking
from mlm_core.masking.corruption import Corruption, MaskingStep, RowGenerators, make_generator
from mlm_core.masking.draws import MAX_DRAWS, DrawPolicy, mask_examples, mask_many, selection_frequency
from mlm_core.masking.engine import (
    Compose,
    MaskedText,
    apply_strategy,
    mask_batch,
    mask_each,
    mask_text,
    prepare_text,
    privacy_step,
    strategy_steps,
)
from mlm_core.masking.exclusion import AttentionExclusion
from mlm_core.masking.manual import ManualMasking
from mlm_core.masking.registry import (
    MAX_COMPOSE_DEPTH,
    MAX_COMPOSE_STEPS,
    STRATEGIES,
    StrategySpec,
    params_of,
    strategy_from_params,
)
from mlm_core.masking.results import (
    EXCLUDED,
    IGNORE_INDEX,
    KEPT,
    KIND_BY_CODE,
    KINDS,
    MASKED,
    RANDOM,
    BatchMaskResult,
    MaskResult,
)
from mlm_core.masking.rules import (
    CATEGORY_RULES,
    MAX_PATTERN_CHARS,
    REGEX_BUDGET_S,
    REGEX_TIMEOUT_S,
    RULES,
    RuleBased,
)
from mlm_core.masking.schedules import RateSchedule, base_rate, with_rate
from mlm_core.masking.words import SpanMasking, WholeWordMasking
from mlm_core.text.privacy import PrivacyMasking

__all__ = [
    # results and inputs
    "IGNORE_INDEX",
    "MASKED",
    "RANDOM",
    "KEPT",
    "EXCLUDED",
    "KINDS",
    "KIND_BY_CODE",
    "CATEGORY_CODES",
    "Vocab",
    "TokenBatch",
    "MaskResult",
    "BatchMaskResult",
    "MaskedText",
    # strategies
    "Corruption",
    "MaskingStep",
    "RandomMasking",
    "WholeWordMasking",
    "SpanMasking",
    "RULES",
    "CATEGORY_RULES",
    "MAX_PATTERN_CHARS",
    "REGEX_TIMEOUT_S",
    "REGEX_BUDGET_S",
    "RuleBased",
    "PrivacyMasking",
    "ManualMasking",
    "AdaptiveMasking",
    "AttentionExclusion",
    "Compose",
    # the engine
    "strategy_steps",
    "privacy_step",
    "make_generator",
    "RowGenerators",
    "mask_batch",
    "apply_strategy",
    "mask_each",
    "prepare_text",
    "mask_text",
    # draws and schedules
    "MAX_DRAWS",
    "DrawPolicy",
    "mask_examples",
    "mask_many",
    "selection_frequency",
    "RateSchedule",
    "with_rate",
    "base_rate",
    # registry and assembly
    "MAX_COMPOSE_DEPTH",
    "MAX_COMPOSE_STEPS",
    "StrategySpec",
    "STRATEGIES",
    "strategy_from_params",
    "params_of",
    "MAIN_STRATEGIES",
    "PROTECT_RULES",
    "EXCLUDE_RULES",
    "build_strategy",
    "compose",
    "is_adaptive",
    "needs_word_texts",
]
