"""The evaluation cache: one folder per (texts, model, configuration, seed, options).

An entry is ``<root>/<key>/`` with ``summary.json`` (configuration, seed, model, tally) and the
rows in ``sentences.csv`` and ``tokens.csv``; ``key = entry_key(...)`` hashes the texts, the model's
fingerprint (its weights included, so a changed model misses), the configuration, the seed and the
options. Entries are written to a ``.tmp-`` folder and renamed, so a cancelled or crashed run
leaves nothing half written; ``prune_cache`` keeps the most recently used ``MAX_CACHE_ENTRIES``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from mlm_core.evaluate.config import EvalConfig
from mlm_core.evaluate.tally import Tally
from mlm_core.model.loading import LoadedModel

ENGINE_VERSION = 1  # part of every cache key: bump when results would change
MAX_CACHE_ENTRIES = 500  # oldest entries beyond this are removed after each evaluation
SENTENCE_COLUMNS = ("config", "seed", "sentence", "text", "tokens", "predicted", "top1", "top5",
                    "mean_log_prob", "pll", "pll_per_token", "note")
TOKEN_COLUMNS = ("config", "seed", "sentence", "position", "token", "word", "category", "kind", "guess",
                 "rank", "top1", "top5", "log_prob")
TEXT_COLUMNS = ("config", "text", "note", "token", "word", "category", "kind", "guess")


def hash_texts(texts: Iterable[str]) -> str:
    """sha256 of the texts themselves (what is evaluated, whatever the file format or column)."""
    digest = hashlib.sha256()
    for text in texts:
        hash_one(digest, text)
    return digest.hexdigest()


def hash_one(digest, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    digest.update(len(data).to_bytes(8, "little") + data)


_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (what it was taken of, digest)
_fingerprints_lock = threading.Lock()


def model_fingerprint(loaded: LoadedModel) -> str:
    """Name, configuration and a digest of the weights (sums and a strided sample of each tensor).

    Kept per model object until a tensor is replaced or changed in place (its version counter moves):
    reading every weight took 56 ms, once per analysis, which was a seventh of a 100-sentence one.
    """
    config = json.dumps(loaded.model.config.to_dict(), sort_keys=True, default=str)
    tensors = list(itertools.chain(loaded.model.parameters(), loaded.model.buffers()))
    state = (loaded.name, config, len(loaded.tokenizer), tuple((t.data_ptr(), t._version) for t in tensors))
    with _fingerprints_lock:
        kept = _fingerprints.get(loaded.model)
    if kept is not None and kept[0] == state:
        return kept[1]
    digest = hashlib.sha256(loaded.name.encode())
    digest.update(config.encode())
    digest.update(str(len(loaded.tokenizer)).encode())
    with torch.no_grad():
        for tensor in tensors:
            flat = tensor.detach().reshape(-1).float()
            sample = flat[:: max(1, flat.numel() // 16)][:16]
            digest.update(torch.cat([flat.sum()[None], sample]).cpu().numpy().tobytes())
    with _fingerprints_lock:
        _fingerprints[loaded.model] = (state, digest.hexdigest())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    from mlm_core.policy import masklab_home

    return masklab_home() / "evaluations"


def entry_key(texts_hash: str, fingerprint: str, config: EvalConfig, seed: int, with_pll: bool,
              first_index: int, max_length: int) -> str:
    blob = json.dumps({"engine": ENGINE_VERSION, "texts": texts_hash, "model": fingerprint,
                       "config": config.to_dict(), "seed": int(seed), "pll": bool(with_pll),
                       "first": int(first_index), "max_length": int(max_length)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def prune_cache(root: Path, keep: int = MAX_CACHE_ENTRIES) -> None:
    """Drop the oldest entries beyond ``keep`` and temporaries a day old (crashed runs)."""
    now = time.time()
    entries = []
    for path in root.iterdir() if root.is_dir() else ():
        with contextlib.suppress(OSError):
            if path.name.startswith(".tmp-"):
                if now - path.stat().st_mtime > 86400:
                    shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir():
                entries.append((path.stat().st_mtime, path))
    for _, path in sorted(entries)[: max(0, len(entries) - keep)]:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Entry:
    """One (configuration, seed): its counts and the folder holding its rows."""

    config: EvalConfig
    seed: int
    tally: Tally
    folder: Path
    cached: bool = False


def write_summary(folder: Path, config: EvalConfig, seed: int, model: str, tally: Tally) -> None:
    """The entry's ``summary.json``: what ``read_entry`` reads back."""
    (folder / "summary.json").write_text(json.dumps({"config": config.to_dict(), "seed": seed, "model": model,
                                                     "tally": tally.to_dict()}))


def read_entry(folder: Path, config: EvalConfig, seed: int) -> Entry | None:
    """The cached entry in ``folder``, marked as used (pruning drops the least recently used); None if absent."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        tally = Tally.from_dict(json.loads((folder / "summary.json").read_text())["tally"])
        os.utime(folder)
        return Entry(config, seed, tally, folder, cached=True)
    return None
