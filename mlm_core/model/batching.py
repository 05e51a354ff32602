"""Forward passes that arrive together run together: one padded batch for many sessions.

A class of 30 sends its sentences within the same few milliseconds. Run one at a time under the
shared model's lock, they queue, and one matrix product of one short sentence keeps one core busy;
run as one batch, the same work takes less time, and the model keeps one core busy while the
sessions' page code runs on the others.

How a pass is gathered (``Gatherer.submit``):

1. a request joins the batch being formed for its model and options (``Request.compatible``: same
   attention output; the model is the gatherer's own, so a batch never mixes models or survives a
   reload, which loads a new model object with a new gatherer);
2. the first request of a batch leads it. Alone (no other request in flight) it runs at once in its
   own thread, as an unbatched pass would. Otherwise it waits
   ``GATHER_SECONDS`` for others (not when a pass is running: that gathers the next batch by itself)
   and hands the batch to the one worker thread, which closes it once it holds the model's lock; until
   then more requests join, up to ``MAX_BATCH_TOKENS`` padded tokens or ``MAX_BATCH_ROWS`` rows;
3. the rows are sorted by length and packed into passes with little padding, run with an attention
   mask (padding is never attended to, so each row's logits and attentions are those of the row
   alone, up to float rounding), and each request gets its own slice;
4. if a batched pass fails, each of its requests runs alone, so a bad request fails only itself.

Models without attention (the recurrent family) read padding as input, so their rows are batched only
with rows of the same length.

Example: ``gatherer_for(loaded).submit(loaded, Request(ids=(101, 103, 102), positions=(1,)))`` gives
(logits (1, V), None), as ``forward.forward`` would alone.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from mlm_core.model.families import has_attention
from mlm_core.model.loading import LoadedModel

GATHER_SECONDS = 0.004  # long enough for a class's simultaneous requests to meet, short beside one pass (~15 ms)
MAX_BATCH_ROWS = 64
MAX_BATCH_TOKENS = 8192  # rows x longest row per pass
# With attentions, rows x longest row² per pass: they hold layers x heads times that many floats (300 MB on a
# 6-layer, 12-head model), so a few long texts run in separate passes rather than 16 x 75 MB at once.
MAX_BATCH_ATTENTION = 1_000_000
PADDING_WASTE = 0.5  # a pass is split where padding would exceed this share of its tokens
# A batched pass runs with the torch threads of the request that led it: in the app, the server's
# setting (``loading.use_app_threads``: one unless the operator says otherwise). The one worker thread
# then keeps one core busy with the model while the sessions' page code, which is most of a request's
# CPU, runs on the other. Forcing two intra-op threads per batched pass raised the CPU per prediction
# from 0.06 to 0.11 s in benchmarks/classroom.py on a busy 2-core machine (idle OpenMP threads spin).


@dataclass(frozen=True)
class Request:
    """One sentence's pass: ids (T,), positions whose logits are wanted (None: all), attended (T,) of 0/1."""

    ids: tuple[int, ...]
    positions: tuple[int, ...] | None = None
    attended: tuple[int, ...] | None = None  # None: every token attended to
    output_attentions: bool = False

    def compatible(self) -> tuple:
        return (self.output_attentions,)


@dataclass
class _Slot:
    request: Request
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple | None = None
    error: BaseException | None = None


@dataclass
class _Batch:
    threads: int  # the leader's torch threads: a lone request runs as its caller would have run it
    slots: list[_Slot] = field(default_factory=list)

    def fits(self, request: Request) -> bool:
        """Whether ``request`` may join: rows, padded tokens and (with attentions) their squares within bounds."""
        rows = len(self.slots) + 1
        width = max([len(request.ids), *(len(s.request.ids) for s in self.slots)])
        return rows <= MAX_BATCH_ROWS and rows * width <= MAX_BATCH_TOKENS and (
            not request.output_attentions or rows * width * width <= MAX_BATCH_ATTENTION)


def pack(lengths: Sequence[int], max_tokens: int = MAX_BATCH_TOKENS, waste: float = PADDING_WASTE,
         max_square: int | None = None, max_rows: int | None = None) -> list[list[int]]:
    """Indexes grouped into passes: sorted by length, a new pass where the padded size would pass
    ``max_tokens`` (or rows x longest² ``max_square``, or ``max_rows`` rows) or padding would exceed
    ``waste`` of it. Example: ``pack([5, 40, 6])`` -> ``[[0, 2], [1]]``."""
    passes: list[list[int]] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lambda k: lengths[k]):
        if passes:
            rows = len(passes[-1]) + 1
            padded = rows * lengths[i]  # sorted: this row is the longest so far
            fits = (padded <= max_tokens and (max_square is None or padded * lengths[i] <= max_square)
                    and (max_rows is None or rows <= max_rows))
            if fits and real + lengths[i] >= (1 - waste) * padded:
                passes[-1].append(i)
                real += lengths[i]
                continue
        passes.append([i])
        real = lengths[i]
    return passes


class Gatherer:
    """The batches being formed for one model object (``gatherer_for``); thread-safe.

    It keeps no reference to the model: the caller's ``LoadedModel`` comes with each request, so a
    gatherer goes away with its model.
    """

    def __init__(self, run_pass: Callable | None = None) -> None:
        self._forming: dict[tuple, _Batch] = {}
        self._lock = threading.Lock()
        self._run_pass = run_pass or run_requests
        self._in_flight = 0  # requests submitted and not yet answered
        self._busy = False
        self.passes = 0  # forward passes run (tests and benchmarks read them)
        self.rows = 0

    def submit(self, loaded: LoadedModel, request: Request) -> tuple[torch.Tensor, np.ndarray | None]:
        """This request's (logits, attentions), computed in a batch with whatever arrives meanwhile."""
        slot = _Slot(request)
        key = request.compatible() + (() if has_attention(loaded.model) else (len(request.ids),))
        with self._lock:
            # A lone request (the CLI, a quiet server, one thread's calls one after another) runs at once in
            # its own thread. With others in flight, the batch goes to the worker thread.
            company = self._in_flight > 0
            self._in_flight += 1
            batch = self._forming.get(key)
            leader = batch is None or not batch.fits(request)
            if leader:
                batch = self._forming[key] = _Batch(threads=torch.get_num_threads())
            batch.slots.append(slot)
        try:
            if leader and not company:  # alone: run in this thread, as an unbatched pass would (no hand-over)
                self._close_and_run(loaded, key, batch)
            elif leader:
                if not self._busy:  # a pass running gathers the next batch by itself; otherwise wait for company
                    time.sleep(GATHER_SECONDS)
                try:
                    _worker().submit(self._close_and_run, loaded, key, batch)
                except RuntimeError:  # the interpreter is shutting down: no new threads; run it here
                    self._close_and_run(loaded, key, batch)
            slot.done.wait()
        finally:
            with self._lock:
                self._in_flight -= 1
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _close_and_run(self, loaded: LoadedModel, key: tuple, batch: _Batch) -> None:
        try:
            with loaded.lock:  # a hooked pass of another thread (head gates, captum) finishes first
                with self._lock:  # from here on nobody joins this batch
                    if self._forming.get(key) is batch:
                        del self._forming[key]
                    self._busy = True
                try:
                    self._run(loaded, batch)
                finally:
                    self._busy = False
        except BaseException:
            error = _current_error()
            for slot in batch.slots:
                if slot.result is None and slot.error is None:
                    slot.error = error
        finally:
            for slot in batch.slots:  # never leave a request waiting, whatever happened above
                if slot.result is None and slot.error is None:
                    slot.error = RuntimeError("The batched forward pass ended without a result.")
                slot.done.set()

    def _run(self, loaded: LoadedModel, batch: _Batch) -> None:
        slots = batch.slots
        square = MAX_BATCH_ATTENTION if slots[0].request.output_attentions else None
        for rows in pack([len(s.request.ids) for s in slots], max_square=square):
            chunk = [slots[i] for i in rows]
            try:
                results = self._run_pass(loaded, [s.request for s in chunk], batch.threads)
            except Exception:
                if len(chunk) == 1:
                    chunk[0].error = _current_error()
                else:
                    self._run_alone(loaded, chunk)  # one request's failure must not fail the others
                continue
            self.passes += 1
            self.rows += len(chunk)
            for slot, result in zip(chunk, results):
                slot.result = result
                slot.done.set()

    def _run_alone(self, loaded: LoadedModel, slots: list[_Slot]) -> None:
        for slot in slots:
            try:
                slot.result = self._run_pass(loaded, [slot.request], None)[0]
                self.passes += 1
                self.rows += 1
            except Exception:
                slot.error = _current_error()
            slot.done.set()


def _current_error() -> BaseException:
    return sys.exc_info()[1]


def run_requests(loaded: LoadedModel, requests: list[Request], threads: int | None
              ) -> list[tuple[torch.Tensor, np.ndarray | None]]:
    """One padded pass for ``requests``: per request, float32 logits (P, V) or (T, V), and attentions
    (L, H, T, T) as numpy when asked, sliced to the request's own length. ``threads``: torch's intra-op
    threads for the pass in this thread (None: as they are)."""
    from mlm_core.model.forward import run

    width = max(len(r.ids) for r in requests)
    pad = loaded.tokenizer.pad_token_id or 0
    ids = np.full((len(requests), width), pad, dtype=np.int64)
    attended = np.zeros((len(requests), width), dtype=np.int64)
    rows: list[int] = []
    positions: list[int] = []
    for row, request in enumerate(requests):
        n = len(request.ids)
        ids[row, :n] = request.ids
        attended[row, :n] = 1 if request.attended is None else request.attended
        wanted = range(n) if request.positions is None else request.positions
        rows += [row] * len(wanted)
        positions += list(wanted)
    device = loaded.device
    chosen = (torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(positions, dtype=torch.long, device=device))
    output_attentions = requests[0].output_attentions
    # Every token attended to (one sentence, or sentences of one length, nothing excluded): no mask at all,
    # which gives the same numbers and spares each layer building and adding one.
    mask = None if attended.all() else torch.from_numpy(attended).to(device)
    with intra_op_threads(threads if device.type == "cpu" else None):
        logits, recorded = run(loaded, torch.from_numpy(ids).to(device), mask, chosen,
                               output_attentions=output_attentions)
    stacked = None
    if output_attentions and recorded is not None:  # None: a model without attention (recurrent)
        stacked = torch.stack(list(recorded), dim=1).float().cpu().numpy()  # (B, L, H, W, W)
    results = []
    start = 0
    for row, request in enumerate(requests):
        n = len(request.ids)
        count = n if request.positions is None else len(request.positions)
        attentions = None if stacked is None else np.ascontiguousarray(stacked[row, :, :, :n, :n])
        mine = logits[start : start + count]
        results.append((mine.clone() if len(requests) > 1 else mine, attentions))  # no view into another's rows
        start += count
    return results


class intra_op_threads:  # noqa: N801 - used as a context manager, like torch's own
    """Run a block with ``threads`` torch intra-op threads in this thread (None: unchanged)."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.before = None

    def __enter__(self):
        if self.threads is not None and torch.get_num_threads() != self.threads:
            self.before = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc) -> None:
        if self.before is not None:
            torch.set_num_threads(self.before)


_gatherers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model object -> its Gatherer
_gatherers_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def gatherer_for(loaded: LoadedModel) -> Gatherer:
    """The one gatherer of ``loaded``'s model object (every spelling of the model's name shares it)."""
    with _gatherers_lock:
        gatherer = _gatherers.get(loaded.model)
        if gatherer is None:
            gatherer = _gatherers[loaded.model] = Gatherer()
        return gatherer


def _worker() -> ThreadPoolExecutor:
    """The one thread that runs batched passes. One thread, so torch keeps one pool of intra-op threads
    (each OS thread that sets its thread count gets its own) and passes never compete for the cores."""
    global _executor
    with _gatherers_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="masklab-forward")
        return _executor
