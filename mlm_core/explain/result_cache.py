"""One bounded cache of results for every session: when a class types the teacher's sentence, the model runs once.

* Keys are the whole request: the model object's token (``model_token``: one per loaded model object,
  so a reloaded model never answers from its predecessor's entries), the text and every setting that
  changes the result (strategy, seed, clicked positions, top-k, fill, attention views).
* Size: the operator's ``shared_results_mb`` (``mlm_core.policy``), counted from the arrays a result
  holds; least recently used first out. 0 turns the cache off; a result bigger than the whole bound
  is returned but not kept.
* Results are shared between sessions, so they are frozen: dataclasses are frozen, sequences are
  tuples, and every numpy array in them is made read-only (``freeze``) before anyone sees it.
* Single flight: while one thread computes a key, others asking for it wait for that result instead
  of computing it again. If the computation fails, each waiter tries on its own (and gets its own error).
* Invalidation: entries of a model go when the loader drops it from its cache (``loading.on_unload``)
  or when the model object is garbage-collected.

Example: ``shared_results().get(key, compute)`` returns ``compute()``'s result, computed once per key.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from mlm_core.model.loading import LoadedModel, on_unload
from mlm_core.policy import server_policy

MB = 2**20
ENTRY_OVERHEAD = 4096  # bytes counted per entry beyond its arrays (tokens, candidates, strings)


def freeze(value: Any) -> int:
    """Make every numpy array reachable from ``value`` (dataclass fields, tuples, lists, dicts) read-only.

    Returns the bytes those arrays hold. Refuses a non-frozen dataclass: its fields could be reassigned.
    """
    seen: set[int] = set()

    def walk(item) -> int:
        if id(item) in seen:
            return 0
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            item.flags.writeable = False
            return item.nbytes
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            if not item.__dataclass_params__.frozen:
                raise TypeError(f"{type(item).__name__} is not frozen; it cannot be shared between sessions.")
            return sum(walk(getattr(item, f.name)) for f in dataclasses.fields(item))
        if isinstance(item, (tuple, list, frozenset, set)):
            return sum(walk(x) for x in item)
        if isinstance(item, dict):
            return sum(walk(x) for x in item.values())
        return 0

    return walk(value)


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.ok = False


class ResultCache:
    """A thread-safe LRU of frozen results bounded in bytes, with single-flight computation."""

    def __init__(self, max_bytes: int | Callable[[], int]) -> None:
        self._max_bytes = max_bytes if callable(max_bytes) else (lambda: max_bytes)
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = self.shared = 0  # shared: answered by another thread's computation

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key``'s result is kept (a look that counts as neither hit nor miss)."""
        with self._lock:
            return key in self._entries

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The cached result for ``key``, else ``compute()`` (frozen, kept if it fits)."""
        limit = self._max_bytes()
        if limit <= 0:
            return compute()
        while True:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return self._entries[key][0]
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    leader = True
                    self.misses += 1
                else:
                    leader = False
            if leader:
                return self._compute(key, compute, flight, limit)
            flight.done.wait()
            if flight.ok:
                with self._lock:
                    self.shared += 1
                return flight.value
            # the leader failed: try again (one waiter leads the next attempt, the others wait for it)

    def _compute(self, key: Hashable, compute: Callable[[], Any], flight: _Flight, limit: int) -> Any:
        try:
            value = compute()
            size = freeze(value) + ENTRY_OVERHEAD
            flight.value, flight.ok = value, True
            with self._lock:
                if size <= limit:
                    self._entries[key] = (value, size)
                    self.bytes += size
                    while self.bytes > limit:
                        _, (_, dropped) = self._entries.popitem(last=False)
                        self.bytes -= dropped
            return value
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def forget(self, keep: Callable[[Hashable], bool]) -> int:
        """Drop the entries whose key ``keep`` rejects; returns how many went."""
        with self._lock:
            gone = [key for key in self._entries if not keep(key)]
            for key in gone:
                self.bytes -= self._entries.pop(key)[1]
            return len(gone)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0


_tokens: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model object -> its token
_tokens_lock = threading.Lock()
_counter = itertools.count(1)


def model_token(loaded: LoadedModel) -> int:
    """A number for ``loaded``'s model object, never reused in this process: the model part of every key.

    ``id()`` would do only while the object lives; a reloaded model could get its predecessor's id.
    """
    model = loaded.model
    with _tokens_lock:
        token = _tokens.get(model)
        if token is None:
            token = _tokens[model] = next(_counter)
            weakref.finalize(model, forget_token, token)
        return token


def forget_token(token: int) -> None:
    """Drop every shared result computed with the model whose token is ``token``."""
    _shared.forget(lambda key: not (isinstance(key, tuple) and key and key[0] == token))


def _forget_model(model) -> None:
    with _tokens_lock:
        token = _tokens.get(model)
    if token is not None:
        forget_token(token)


_shared = ResultCache(lambda: server_policy().shared_results_mb * MB)
on_unload(_forget_model)  # the loader dropped a model: its results go too


def shared_results() -> ResultCache:
    """The process's one cache, shared by every session (keys start with ``model_token``)."""
    return _shared
