"""The engine of ``evaluate``: read, mask, predict and count, one chunk of sentences at a time.

Masks: sentence ``i`` (its index in the file) is masked with the seed ``sentence_seed(seed, i)``,
so a sentence's mask depends only on (seed, index), never on the batch, the order or the process.

How it runs: texts are read in chunks of ``CHUNK_SENTENCES`` (a list or any iterable, so a large
file streams), tokenized once per chunk (one tokenizer call, ``tokenize_many``), masked together with
each sentence's own seed (``mask_each``), sorted by length and packed into batches of at most
``max_tokens`` (rows x longest row) to limit padding; logits are computed only at the predicted
positions (``model.forward``, the explorer's and the trainer's pass, whose ``chosen_logits`` projects
the masks of consecutive passes onto the vocabulary together); PLL masks each token in turn
(``model.forward.in_turn_logits``). Aggregates live in memory (a few numbers per configuration and
category); per-sentence and per-token rows go straight to CSV files in the cache entry, so memory
stays bounded by the chunk, not the file.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mlm_core.errors import EvaluationCancelled, InputError
from mlm_core.evaluate.cache import (
    SENTENCE_COLUMNS,
    TOKEN_COLUMNS,
    Entry,
    default_cache_dir,
    entry_key,
    hash_one,
    hash_texts,
    model_fingerprint,
    prune_cache,
    read_entry,
    write_summary,
)
from mlm_core.evaluate.config import (
    MAX_PAIRS,
    MAX_SEEDS,
    WITH_PLL,
    EvalConfig,
    plain_key,
    pll_key,
    sentence_seed,
)
from mlm_core.evaluate.estimate import PLL, PREDICT, STAGES, record_run
from mlm_core.evaluate.report import EvalReport
from mlm_core.evaluate.tally import GROUP_OF, Tally
from mlm_core.explain.predict import count_true
from mlm_core.explain.whatif import parse_heads
from mlm_core.masking import (
    IGNORE_INDEX,
    AttentionExclusion,
    RuleBased,
    Vocab,
    apply_strategy,
    compose,
    is_adaptive,
    mask_each,
    prepare_text,
)
from mlm_core.model.batching import pack
from mlm_core.model.forward import chosen_logits, head_gates, in_turn_logits
from mlm_core.model.loading import LoadedModel
from mlm_core.text.privacy import PrivacyMasking
from mlm_core.text.tokens import Tokens, tokenize_many

CHUNK_SENTENCES = 1024  # sentences tokenized, masked and written together (the memory bound)
MAX_TOKENS = {"cpu": 2048, "cuda": 65536}  # rows x padded length per pass (the CPU gains little beyond; the
# shared model's lock is held for one pass, so other sessions wait at most that long)
MAX_BATCH_ROWS = 512
# Padding is compute thrown away; each pass also costs a fixed few ms of a small model's Python on the CPU.
# 400 demo sentences in blocks of 100 (benchmarks/evaluate.py, 2 threads): without this bound 8,005 padded
# tokens in 8 passes (41% padding), 1.80 s; at a fifth 5,639 in 14 passes (16%), 1.45 s; at a tenth
# 4,994 in 28 passes, 1.58 s. BERT's pass keeps padding out of its linear layers (model.bert_pass) and
# projects the masks of several passes at once (forward.chosen_logits), so fewer, fuller passes now win:
# at 0.35 instead of 0.2, 6,820 padded tokens in 8 passes instead of 5,639 in 14, and a block of 100 took
# 127.7 instead of 133.3 ms with the pipeline run between blocks; back to back, the paired median of ten
# runs was 0.95 of the time for blocks of 100 and 1.00 for one call of 1,024 sentences. A GPU pays little
# for padding and much per pass: there a pass may be half padding.
PADDING_WASTE = {"cpu": 0.35, "cuda": 0.5}
# Rows of (M, V) logits ranked together (``rank_targets``): 16 x 30,522 floats of the default model are 2 MB,
# which stay in a core's L2 cache. Ranked whole, 50-280 masks (6-34 MB) went out to memory on each of ranking's
# passes over them. 400 demo sentences in benchmarks/evaluate.py's blocks of 100, the same results bit for bit:
# 563 -> 544 ms back to back; 156.9 -> 155.1 ms a block when the pipeline runs between blocks (its caches lost).
RANK_ROWS = 16
ProgressFn = Callable[[int, int | None, str], None]  # (done, total or None, what is running); see evaluate


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


def rank_targets(logits: torch.Tensor, targets: np.ndarray, never_guessed: torch.Tensor):
    """Rank (1 = first choice), log p and first guess of ``targets`` (M,) under ``logits`` (M, V), as numpy.

    ``never_guessed`` (the special tokens' ids) are never a guess and never rank above the original,
    unless one is the original itself (e.g. [UNK]); tied tokens rank in argmax order (a smaller id
    first). ``logits`` is used up: it is changed in place.

    Ranked ``RANK_ROWS`` rows at a time: ranking reads the logits several times over (log-sum-exp,
    maximum, signs, sums), and a block of rows that fits a core's cache is read from there.
    """
    parts = [_rank_rows(logits[start : start + RANK_ROWS], targets[start : start + RANK_ROWS], never_guessed)
             for start in range(0, max(len(logits), 1), RANK_ROWS)]  # no rows: one empty block
    return tuple(np.concatenate(columns) for columns in zip(*parts))


def _rank_rows(logits: torch.Tensor, targets: np.ndarray, never_guessed: torch.Tensor):
    device = logits.device
    targets = torch.from_numpy(targets).to(device)
    with torch.inference_mode():  # the logits are inference tensors: changed in place below
        own = logits.gather(1, targets[:, None])  # (M, 1)
        log_p = (own - torch.logsumexp(logits, dim=-1, keepdim=True))[:, 0]  # no (M, V) log-softmax kept
        logits[:, never_guessed] = -math.inf  # never a guess ...
        logits.scatter_(1, targets[:, None], own)  # ... except the original itself (e.g. [UNK])
        # The first maximum, as argmax gives it. On the CPU numpy's argmax is vectorised and torch's (max with
        # indices) is not: 65 instead of 200 µs for 16 rows of the default model.
        guess = np.argmax(logits.numpy(), 1) if logits.device.type == "cpu" else logits.max(1).indices.cpu().numpy()
        # Whom the original beats, from the signs of (logits - own): +1 above it, 0 level, -1 below. Summed as
        # floats the counts are exact (whole numbers under 2**24) and took 0.4 of the time of counting two
        # comparisons (logits > own, logits == own): 166 instead of 420 µs for 16 rows of the default model.
        signs = logits.sub_(own).sign_()  # the logits are not needed any more
        above_minus_below = signs.sum(1)
        not_level = signs.abs_().sum(1)  # level tokens stay 0
        rank = ((above_minus_below + not_level) / 2).int() + 1
        tied = torch.nonzero(not_level < signs.shape[1] - 1)[:, 0]  # rare: another token scores exactly the same
        if len(tied):  # ties rank in argmax order: the tied tokens with a smaller id come first
            earlier = torch.arange(signs.shape[1], device=device)[None, :] < targets[tied, None]
            rank[tied] += count_true((signs[tied] == 0) & earlier, 1)
    return rank.cpu().numpy(), log_p.cpu().numpy(), guess


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
        self.max_length = loaded.max_length
        self.pll_keys = {pll_key(p.config) for p in pairs} if with_pll else set()
        self.adaptive = {id(p): is_adaptive(p.strategy) for p in pairs}
        # Adaptive masking scores tokens by their surprisal under the plain model, as the explorer does.
        self.pll_keys |= {plain_key(p.config) for p in pairs if self.adaptive[id(p)]}
        # Progress counts padded tokens through the model (estimate.plan_work's units): a sentence of T
        # tokens, S of them scored, is T per configuration and seed and T x S per PLL context.
        self.total_texts = total
        self.planned = 0  # units of the chunks read so far
        self.seen = 0  # texts read so far
        self.done = 0
        self.stage_units = dict.fromkeys(STAGES, 0)
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)

    @property
    def total(self) -> int | None:
        """Units of the whole run: exact for the chunks read, extrapolated at their mean for the rest."""
        if self.total_texts is None:
            return None
        rest = max(0, self.total_texts - self.seen)
        return max(self.done, self.planned + (round(rest * self.planned / self.seen) if self.seen else 0))

    def _plan(self, variants: dict[bool, list[_Record]]) -> None:
        for pair in self.pairs:
            self.planned += sum(len(r.tokens) if r.tokens else 1 for r in variants[pair.config.privacy])
        for key in self.pll_keys:
            self.planned += sum(len(r.tokens) * self._scorable(r) for r in variants[key[0]] if r.tokens)

    @staticmethod
    def _scorable(record: _Record) -> int:
        return max(1, len(record.tokens) - sum(record.tokens.special))

    def _tick(self, units: int, what: str, stage: str = PREDICT) -> None:
        if self.cancel is not None and self.cancel():
            raise EvaluationCancelled("The analysis was cancelled; nothing was saved.")
        self.done += units
        self.stage_units[stage] += units
        if self.progress is not None:
            self.progress(self.done, self.total, what)

    def timed(self, stage: str, function, *args):
        """``function(*args)``, its time added to ``stage`` (the pace ``estimate.record_run`` keeps)."""
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            self.stage_seconds[stage] += time.perf_counter() - started

    # -- chunks

    def run(self, texts: Iterable[str], first_index: int, digest) -> None:
        index = first_index
        for chunk in _chunks(texts, CHUNK_SENTENCES):
            if digest is not None:
                for text in chunk:
                    hash_one(digest, text)
            variants = {privacy: self._prepare(chunk, index, privacy) for privacy in {p.config.privacy for p in self.pairs}}
            self.seen += len(chunk)
            self._plan(variants)
            pll = {key: self.timed(PLL, self._pll, variants[key[0]], key) for key in sorted(self.pll_keys, key=repr)}
            for pair in self.pairs:
                plain = pll.get(plain_key(pair.config)) if self.adaptive[id(pair)] else None
                own = pll.get(pll_key(pair.config)) if self.with_pll else None
                self.timed(PREDICT, self._evaluate_pair, pair, variants[pair.config.privacy], own, plain)
            index += len(chunk)

    def _prepare(self, chunk: list[str], first: int, privacy: bool) -> list[_Record]:
        step = PrivacyMasking() if privacy else None
        replacements: list = []  # per text: its privacy result, None, or the InputError it raised
        for text in chunk:
            try:
                replacements.append(prepare_text(text, step, mask_token=self.vocab.mask_token) if step else None)
            except InputError as exc:
                replacements.append(exc)
        tokenized = iter(tokenize_many(self.loaded.tokenizer, [
            text if r is None else r.text for text, r in zip(chunk, replacements) if not isinstance(r, InputError)]))
        records = []
        for offset, replaced in enumerate(replacements):
            index = first + offset
            tokens = replaced if isinstance(replaced, InputError) else next(tokenized)
            if isinstance(tokens, InputError):
                records.append(_Record(index, None, note=str(tokens)))
                continue
            note = ""
            if len(tokens) > self.max_length:
                note = f"truncated from {len(tokens)} to the model's {self.max_length} tokens"
                tokens = _truncate(tokens, self.max_length)
            protected = tuple(p for p in replaced.protected_positions(tokens) if p < len(tokens)) if replaced else ()
            records.append(_Record(index, tokens, protected, note))
        return records

    # -- forward passes

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indexes into ``lengths`` grouped into passes of at most max_tokens (rows x longest), shortest first,
        with little padding (``batching.pack``)."""
        waste = PADDING_WASTE.get(self.loaded.device.type, PADDING_WASTE["cpu"])
        return pack(lengths, self.max_tokens, waste, max_rows=MAX_BATCH_ROWS)

    def _pass_input(self, masked: list, lengths: list[int], batch: list[int]):
        """(input_ids, attention_mask, chosen) of one pass over the masked sentences ``batch``, padded to its longest."""
        width = max(lengths[i] for i in batch)
        ids = np.full((len(batch), width), self.vocab.pad_token_id or 0, dtype=np.int64)
        attention = np.zeros((len(batch), width), dtype=np.int64)
        chosen = np.zeros((len(batch), width), dtype=bool)
        for row, i in enumerate(batch):
            _, result, positions = masked[i]
            ids[row, : lengths[i]] = result.input_ids
            attention[row, : lengths[i]] = ~result.attention_exclude
            chosen[row, positions] = True
        device = self.loaded.device
        return tuple(torch.from_numpy(array).to(device) for array in (ids, attention, chosen))

    def _pll(self, records: list[_Record], key: tuple) -> dict[int, np.ndarray]:
        """Per sentence index: (T,) log p of each token with it masked (NaN where not scored)."""
        privacy, protect, exclude, heads = key
        context = compose(*(RuleBased(rule=r, mode="protect") for r in protect),
                          AttentionExclusion(rule=exclude) if exclude else None)
        gates = head_gates(self.loaded, heads)
        special = set(self.loaded.special_ids)
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
        copies = [(record.tokens.ids, p, ~excluded) for record, excluded, positions in items for p in positions]
        owners = [record.index for record, _, positions in items for _ in positions]
        batches = self._batches([len(ids) for ids, _, _ in copies])
        planned = sum(len(r.tokens) * self._scorable(r) for r in records if r.tokens)
        ticked = 0
        for batch, logits in in_turn_logits(self.loaded, copies, batches, gates=gates):
            targets = np.array([copies[i][0][copies[i][1]] for i in batch], dtype=np.int64)
            _, log_p, _ = rank_targets(logits, targets, self.loaded.special_id_tensor)
            for row, i in enumerate(batch):
                scores[owners[i]][copies[i][1]] = log_p[row]
            units = sum(len(copies[i][0]) for i in batch)
            ticked += units
            self._tick(units, STAGES[PLL], PLL)  # every pass: the longest stage moves too
        self._tick(max(0, planned - ticked), STAGES[PLL], PLL)  # excluded tokens were planned, not run
        return scores

    # -- one configuration and seed over one chunk

    def _evaluate_pair(self, pair: _Pair, records: list[_Record], pll: dict | None, plain: dict | None) -> None:
        tally, sentence_rows, token_rows = Tally(), [], []
        masked = []  # (record, MaskResult, chosen positions)
        label = pair.config.label
        what = f"{STAGES[PREDICT]} · {label}"
        planned = sum(len(r.tokens) if r.tokens else 1 for r in records)
        tally.sentences += len(records)
        for record in records:
            if record.tokens is None:
                tally.skipped += 1
                sentence_rows.append([label, pair.seed, record.index, "", 0, 0, "", "", "", "", "", record.note])
        kept = [record for record in records if record.tokens is not None]
        tally.truncated += sum(bool(record.note) for record in kept)
        scores = None
        if plain is not None:
            scores = [np.nan_to_num(-plain[record.index], nan=0.0).clip(min=0.0) for record in kept]
        results = mask_each([r.tokens for r in kept], pair.strategy, self.vocab,
                            [sentence_seed(pair.seed, r.index) for r in kept], scores=scores,
                            protected=[r.protected for r in kept])
        for record, result in zip(kept, results, strict=True):
            masked.append((record, result, np.flatnonzero(result.labels != IGNORE_INDEX)))
        predictions: dict[int, tuple] = {}
        lengths = [len(r.tokens) if len(c) else 0 for r, _, c in masked]
        with_chosen = [i for i, n in enumerate(lengths) if n]
        batches = [[with_chosen[i] for i in batch] for batch in self._batches([lengths[i] for i in with_chosen])]

        def passes():
            for batch in batches:
                yield self._pass_input(masked, lengths, batch)
                self._tick(sum(lengths[i] for i in batch), what)  # asked for the next pass: this one has run

        for indexes, logits in chosen_logits(self.loaded, passes(), gates=pair.gates):  # (M, V): the passes' masks
            done = [i for k in indexes for i in batches[k]]
            targets = np.concatenate([masked[i][1].labels[masked[i][2]] for i in done])
            rank, log_p, guess = rank_targets(logits, targets, self.loaded.special_id_tensor)
            start = 0
            for i in done:
                count = len(masked[i][2])
                predictions[i] = (rank[start : start + count], log_p[start : start + count], guess[start : start + count])
                start += count
        self._tick(planned - sum(lengths), what)  # skipped texts and those with nothing chosen
        tokenizer = self.loaded.tokenizer
        predicted_tokens = []  # (groups, rank, log p) of each sentence's: counted in one go below
        for i, (record, result, positions) in enumerate(masked):
            self._sentence(pair, tally, record, result, positions, predictions.get(i),
                           None if pll is None else pll.get(record.index), sentence_rows, token_rows, tokenizer,
                           predicted_tokens)
        if predicted_tokens:
            tally.add_predictions(*(np.concatenate(parts) for parts in zip(*predicted_tokens)))
        sentence_rows.sort(key=lambda row: row[2])
        token_rows.sort(key=lambda row: (row[2], row[3]))
        for name, rows in (("sentences", sentence_rows), ("tokens", token_rows)):
            with open(pair.folder / f"{name}.csv", "a", newline="", encoding="utf-8", errors="replace") as handle:
                csv.writer(handle, lineterminator="\n").writerows(rows)
        pair.tally.add(tally)

    def _sentence(self, pair, tally, record, result, positions, predicted, pll, sentence_rows, token_rows, tokenizer,
                  predicted_tokens):
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
        predicted_tokens.append((np.array([GROUP_OF.get(tokens.categories[p], -1) for p in positions]), rank, log_p))
        count = len(positions)
        sentence_rows.append([label, pair.seed, record.index, tokens.text, len(tokens), count,
                              np.count_nonzero(hit1) / count, np.count_nonzero(hit5) / count, float(log_p.mean()),
                              pll_total, pll_per_token, note])
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
    with_pll: bool = WITH_PLL,
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
    ``with_pll``: also the pseudo-log-likelihood of each sentence (default ``WITH_PLL``: off, it costs
    about one pass per token). ``progress(done, total, what)`` is called after every forward pass, in
    padded tokens (``estimate.plan_work``'s units; ``total`` is None for an iterable of unknown length
    unless ``total`` gives its number of texts, and is extrapolated from the texts read so far);
    ``what`` names the stage (``estimate.STAGES``) and, for masked predictions, the configuration; ``cancel()`` returning True
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
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cache_unwritable(root, exc, named=cache_dir is not None) from None
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
                entry = read_entry(root / key(config, seed, texts_hash), config, seed)
                if entry is not None:
                    found[(config, seed)] = entry
    pairs = []
    try:
        for config in configs:
            for seed in seeds:
                if (config, seed) in found:
                    continue
                folder = root / f".tmp-{uuid.uuid4().hex}"
                try:
                    folder.mkdir()
                    for name, columns in (("sentences", SENTENCE_COLUMNS), ("tokens", TOKEN_COLUMNS)):
                        (folder / f"{name}.csv").write_text(",".join(columns) + "\n", encoding="utf-8")
                except OSError as exc:  # a read-only or full disk, or a folder like /proc
                    raise cache_unwritable(root, exc, named=cache_dir is not None) from None
                pairs.append(_Pair(config, seed, config.build(), head_gates(loaded, config.heads_off), folder))
        if pairs:
            engine = _Engine(loaded, pairs, with_pll, max_tokens, progress, cancel, total)
            digest = hashlib.sha256() if texts_hash is None else None
            engine.run(texts, first_index, digest)
            texts_hash = texts_hash or digest.hexdigest()
            record_run(loaded, engine.stage_units, engine.stage_seconds)
        for pair in pairs:
            final = root / key(pair.config, pair.seed, texts_hash)
            write_summary(pair.folder, pair.config, pair.seed, loaded.name, pair.tally)
            try:
                os.replace(pair.folder, final)
            except OSError:  # the same entry was written meanwhile (another session): keep that one
                shutil.rmtree(pair.folder, ignore_errors=True)
            found[(pair.config, pair.seed)] = Entry(pair.config, pair.seed, pair.tally, final)
    finally:
        for pair in pairs:
            if pair.folder.exists() and pair.folder.name.startswith(".tmp-"):
                shutil.rmtree(pair.folder, ignore_errors=True)
    prune_cache(root)
    entries = tuple(found[(c, s)] for c in configs for s in seeds)
    return EvalReport(loaded.name, entries, with_pll, loaded.device.type, time.monotonic() - started,
                      report_notices(entries, loaded))


def cache_unwritable(root: Path, exc: OSError, named: bool) -> InputError:
    """The error for an evaluation folder that cannot be written: the per-sentence rows are written there as
    they are computed, so nothing can run without it. A folder the user named is named back; the server's
    own folder (the Batch page) is not, since a browser user must not learn the server's paths."""
    why = exc.strerror or type(exc).__name__
    if named:
        return InputError(f"--cache-dir {str(root)!r} cannot be written ({why}); choose a writable folder.")
    return InputError(f"The evaluation folder cannot be written ({why}): the disk may be full or read-only. "
                      "Try again later, or ask the operator to free space.")


def report_notices(entries: Sequence[Entry], loaded: LoadedModel) -> tuple[str, ...]:
    """What a reader of the report must know: skipped or cut texts, privacy and heads in explorer links."""
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
