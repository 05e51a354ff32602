"""Batch analysis: masking experiments over a whole file of sentences, by token category.

For each configuration (strategy and parameters, protection rules, attention exclusion, privacy,
heads switched off) and each seed, every sentence is masked by the same strategy objects the
explorer and the trainer use, the model predicts the chosen positions through the same forward
pass (``mlm_core.model.forward``), and we count:

* top-1 / top-5 recovery of the original token (its rank among ordinary tokens: special tokens
  are never a guess, as in the explorer; equal logits rank in argmax order, lowest id first);
* the mean log-probability of the original token (softmax over the whole vocabulary);
* the pseudo-log-likelihood (PLL, Salazar et al. 2020) of each sentence: every non-special token
  masked in turn, under the configuration's context changes (excluded tokens are neither context
  nor scored; switched-off heads stay off). It does not depend on the rate or the seed. It costs about
  one pass per token, so it is off unless asked for (``WITH_PLL``);

overall and by token category (stopword, punctuation, number, content word; ``tokens.py``).
Part of speech is not offered: see ``POS_NOTE``.

Intervals (95%): with two seeds or more, a t-interval over seeds: pooled value ±
t(0.975, k-1)·s/√k, s the standard deviation of the k per-seed values (it measures how much the
masking draw moves the number). With one seed: a Wilson interval for accuracies and a normal
interval for the mean log-probability, over tokens (sentence sampling only).

Modules:

* ``config``: ``EvalConfig``, ``parse_rates``, ``sweep``, ``sentence_seed``, limits (heads are parsed by
  ``mlm_core.links.parse_heads_off``, the one spelling of links and the CLI);
* ``tally``: ``Tally`` (counts that add up across chunks and processes) and the metrics;
* ``cache``: entry keys, model fingerprint, entries on disk, pruning;
* ``report``: ``EvalReport`` (summary, rows, hardest rows, explorer links);
* ``engine``: ``evaluate`` (chunks, batches, forward passes, rows);
* ``estimate``: work per stage, throughput measured here, the estimate and the time left;
* ``distributed``: ``evaluate_distributed`` under ``accelerate launch``.

Example::

    report = evaluate(load_model(), ["The cat sat on the mat."], sweep(EvalConfig("random"), rates=[0.15, 0.3]))
    report.summary()  # one row per configuration and category: n, top1, top5, mean_log_prob, intervals
"""

from mlm_core.errors import EvaluationCancelled
from mlm_core.evaluate.cache import (
    ENGINE_VERSION,
    MAX_CACHE_ENTRIES,
    SENTENCE_COLUMNS,
    TEXT_COLUMNS,
    TOKEN_COLUMNS,
    Entry,
    default_cache_dir,
    entry_key,
    hash_texts,
    model_fingerprint,
)
from mlm_core.evaluate.config import (
    MAX_PAIRS,
    MAX_RATES,
    MAX_SEEDS,
    WITH_PLL,
    EvalConfig,
    parse_rates,
    planned_rows,
    sentence_seed,
    sweep,
)
from mlm_core.evaluate.distributed import evaluate_distributed
from mlm_core.evaluate.engine import CHUNK_SENTENCES, MAX_TOKENS, ProgressFn, evaluate
from mlm_core.evaluate.estimate import (
    STAGES,
    Estimate,
    Throughput,
    Work,
    describe_seconds,
    estimate,
    measure_throughput,
    plan_work,
    time_left,
)
from mlm_core.evaluate.report import CI_NOTE, PER_CONFIG, POS_NOTE, EvalReport
from mlm_core.evaluate.tally import GROUPS, Tally

__all__ = [
    "CHUNK_SENTENCES",
    "CI_NOTE",
    "ENGINE_VERSION",
    "GROUPS",
    "MAX_CACHE_ENTRIES",
    "MAX_PAIRS",
    "MAX_RATES",
    "MAX_SEEDS",
    "MAX_TOKENS",
    "PER_CONFIG",
    "POS_NOTE",
    "SENTENCE_COLUMNS",
    "TEXT_COLUMNS",
    "STAGES",
    "TOKEN_COLUMNS",
    "WITH_PLL",
    "Entry",
    "Estimate",
    "EvalConfig",
    "EvalReport",
    "EvaluationCancelled",
    "ProgressFn",
    "Tally",
    "Throughput",
    "Work",
    "default_cache_dir",
    "describe_seconds",
    "entry_key",
    "estimate",
    "evaluate",
    "evaluate_distributed",
    "hash_texts",
    "measure_throughput",
    "model_fingerprint",
    "parse_rates",
    "plan_work",
    "planned_rows",
    "sentence_seed",
    "sweep",
    "time_left",
]
