"""A corpus too big for memory, packed as it is read: tokenized in chunks, blocks written to memory-mapped files.

``prepare_streamed`` reads the file in pieces, splits each text by ``split_texts``' hash (its
last-text fix-ups included), and cuts each split with ``data.Blocks``, the packer a corpus read whole
uses too, writing the blocks to files instead of memory: a test checks that both give the same blocks.
Memory is bounded by a chunk of ``CHUNK_TEXTS`` texts, not by the corpus. While it reads,
``Preparing`` reports the bytes read and the time left, and stops when asked.

The blocks go to ``<cache>/stream-<key>/`` (``key``: ``data.cache_key``, the same rules as the
in-memory cache): per split, four raw arrays of shape (blocks, seq_len) (``ARRAYS``) and
``blocks.json`` with the block counts. They are written under a temporary name, fsynced and
renamed, so a run resumed (or another run on the same corpus) reuses them and a killed or cancelled
job leaves no half file behind. ``PackedData`` wraps copy-on-write memory maps of them: a batch
reads its rows from the file, so the trainer's random access is unchanged.

Strategies that need each block's word texts (word-list and regex rules) keep them as Python
strings, which would grow with the corpus: they are refused for a streamed corpus, naming the limit.

Example::

    corpus = open_corpus_file(Path("big.txt"), "big.txt")      # StreamedCorpus over 50 MB
    train, heldout = prepare_streamed(corpus, tokenizer, TrainConfig(seq_len=64), Path("cache"))
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mlm_core.errors import Cancelled, InputError
from mlm_core.masking import needs_word_texts, privacy_step, strategy_from_params
from mlm_core.masking.language import text_language
from mlm_core.text.corpus import StreamedCorpus
from mlm_core.text.tokens import tokenizer_lock
from mlm_core.training.config import TrainConfig
from mlm_core.training.data import (
    BLOCK_ARRAYS,
    CHUNK_TEXTS,
    Blocks,
    Categories,
    PackedData,
    cache_key,
    is_held_out,
)

ARRAYS = BLOCK_ARRAYS  # one raw file per array and split
CACHE_BYTES_PER_TOKEN = sum(np.dtype(t).itemsize for t in ARRAYS.values())  # 18
MANIFEST = "blocks.json"
SAMPLE_WINDOWS = 16  # pieces of the file tokenized to estimate its token count (disk of the blocks)
SAMPLE_WINDOW_BYTES = 64 * 1024
PROGRESS_EVERY_S = 2.0  # at most one progress report this often (a GB takes about half an hour)


def check_streamable(config: TrainConfig) -> None:
    """InputError when the strategy of ``config`` cannot train on a corpus read as it goes."""
    if needs_word_texts(strategy_from_params(config.strategy, config.strategy_params)):
        from mlm_core.text import corpus  # the limit as set now (tests lower it)

        limit = f"{corpus.MAX_CORPUS_BYTES / 2**20:,.4g} MB"
        raise InputError(f"A word-list or regex rule keeps the words of every block in memory, so it trains on "
                         f"corpora up to {limit} (the most read whole); this corpus is bigger. Use a smaller "
                         "corpus, or another strategy.")


class Preparing:
    """Progress of reading a corpus: ``report({"done_bytes", "total_bytes", "eta_s"})`` at the start, at most
    every ``PROGRESS_EVERY_S`` and at the end; ``should_stop`` asked at each chunk (True: ``Cancelled``).

    Bytes are counted from the texts read (UTF-8, one line break each), so with blank lines or spaces
    trimmed around texts the count runs a little behind the file; it reaches the total at the end.
    ``eta_s``: the rest at the rate so far (None before anything is read).
    """

    def __init__(self, total_bytes: int, report: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.report, self.should_stop, self.clock = max(1, total_bytes), report, should_stop, clock
        self.done = 0
        self.started = self.last = clock()
        self._send()

    def advance(self, texts: list[str]) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(0)
        self.done = min(self.total, self.done + sum(len(t.encode("utf-8", "surrogatepass")) + 1 for t in texts))
        if self.clock() - self.last >= PROGRESS_EVERY_S:
            self._send()

    def finish(self) -> None:
        self.done = self.total
        self._send()

    def _send(self) -> None:
        self.last = now = self.clock()
        if self.report is None:
            return
        rate = self.done / (now - self.started) if self.done and now > self.started else None
        self.report({"done_bytes": self.done, "total_bytes": self.total,
                     "eta_s": None if rate is None else round((self.total - self.done) / rate, 1)})


def preparing_text(record: dict) -> str:
    """'Preparing the corpus: 35% (about 12 min 05 s left)' for a progress ``record`` of ``Preparing``."""
    from mlm_core.training.run_table import format_duration

    share = record["done_bytes"] / max(1, record["total_bytes"])
    left = f" (about {format_duration(record['eta_s'])} left)" if record.get("eta_s") is not None else ""
    return f"Preparing the corpus: {share:.0%}{left}"


class _Files:
    """A ``Blocks`` sink: one split's arrays appended to raw files in ``folder``, fsynced by ``close(sync=True)``."""

    def __init__(self, folder: Path, split: str):
        self.files = {name: (folder / f"{split}.{name}").open("wb") for name in ARRAYS}

    def __call__(self, arrays: dict[str, np.ndarray], words) -> None:
        for name, handle in self.files.items():
            handle.write(arrays[name].tobytes())

    def close(self, sync: bool = False) -> None:
        for handle in self.files.values():
            if sync and not handle.closed:
                handle.flush()
                os.fsync(handle.fileno())
            handle.close()


def _pack_streamed(corpus: StreamedCorpus, tokenizer, config: TrainConfig, folder: Path,
                   preparing: Preparing) -> dict[str, int]:
    """Write both splits' blocks into ``folder``; returns their block counts."""
    strategy = strategy_from_params(config.strategy, config.strategy_params)
    privacy = privacy_step(strategy)
    categories = Categories(text_language(strategy))
    files = {split: _Files(folder, split) for split in ("train", "heldout")}
    try:
        blocks = {split: Blocks(tokenizer, config.seq_len, files[split]) for split in files}
        chunks: dict[str, list[str]] = {"train": [], "heldout": []}
        counts = {"train": 0, "heldout": 0}
        # The last text of each split waits: split_texts moves one when the other split ends empty.
        last: dict[str, str | None] = {"train": None, "heldout": None}

        def flush(split: str) -> None:
            if chunks[split]:
                blocks[split].add_texts(chunks[split], categories)
                chunks[split] = []

        for batch in corpus.batches(CHUNK_TEXTS):
            preparing.advance(batch)
            for text in batch:
                if privacy is not None:
                    text = privacy.apply(text, mask_token=tokenizer.mask_token).text
                split = "heldout" if is_held_out(text, config.heldout_fraction) else "train"
                counts[split] += 1
                if last[split] is not None:
                    chunks[split].append(last[split])
                    if len(chunks[split]) >= CHUNK_TEXTS:
                        flush(split)
                last[split] = text
        if counts["train"] + counts["heldout"] < 2:
            raise InputError("The corpus is too small: it needs at least two texts (one is held out).")
        if not counts["heldout"]:
            last["heldout"], last["train"] = last["train"], None
        elif not counts["train"]:
            last["train"], last["heldout"] = last["heldout"], None
        for split in ("train", "heldout"):
            if last[split] is not None:
                chunks[split].append(last[split])
            flush(split)
        counted = {split: packer.finish() for split, packer in blocks.items()}
        for sink in files.values():
            sink.close(sync=True)
        preparing.finish()
        return counted
    finally:
        for sink in files.values():
            sink.close()


def _open(folder: Path, seq_len: int) -> tuple[PackedData, PackedData]:
    blocks = json.loads((folder / MANIFEST).read_text())
    data = []
    for split in ("train", "heldout"):
        # mode "c": copy-on-write, so the tensors are writable for torch (nothing is ever written back)
        arrays = {name: torch.from_numpy(np.memmap(folder / f"{split}.{name}", dtype=dtype, mode="c",
                                                   shape=(blocks[split], seq_len)))
                  for name, dtype in ARRAYS.items()}
        data.append(PackedData(arrays["ids"], arrays["word_ids"], arrays["categories"], arrays["special"], None))
    return data[0], data[1]


def _sweep(cache_dir: Path, key: str) -> None:
    """Remove temporaries of this cache entry left by jobs that died while writing them."""
    from mlm_core.training.store import process_alive

    for stale in cache_dir.glob(f"stream-{key}.tmp-*"):
        with contextlib.suppress(ValueError):
            if not process_alive(int(stale.name.rsplit("-", 1)[1])):
                shutil.rmtree(stale, ignore_errors=True)


def prepare_streamed(corpus: StreamedCorpus, tokenizer, config: TrainConfig, cache_dir: Path | None,
                     progress: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None
                     ) -> tuple[PackedData, PackedData]:
    """(train, heldout) blocks of a streamed corpus, memory-mapped from ``cache_dir`` (written on first use).

    ``cache_dir`` None (a process that writes nothing): a temporary folder, removed once the maps are open.
    While the blocks are written, ``progress`` and ``should_stop`` are ``Preparing``'s; a stop (``Cancelled``)
    or any failure leaves no cache entry.
    """
    check_streamable(config)
    if cache_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="masklab-blocks-"))
        try:
            blocks = _pack_streamed(corpus, tokenizer, config, scratch, Preparing(corpus.size, progress, should_stop))
            (scratch / MANIFEST).write_text(json.dumps(blocks))
            return _open(scratch, config.seq_len)
        finally:  # the maps keep the data; on POSIX the files go once they are unmapped
            shutil.rmtree(scratch, ignore_errors=True)
    key = cache_key(corpus, tokenizer, config)
    final = cache_dir / f"stream-{key}"
    if (final / MANIFEST).is_file():
        return _open(final, config.seq_len)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _sweep(cache_dir, key)
    tmp = cache_dir / f"stream-{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        blocks = _pack_streamed(corpus, tokenizer, config, tmp, Preparing(corpus.size, progress, should_stop))
        with (tmp / MANIFEST).open("w") as manifest:  # written last: its presence says the blocks are complete
            manifest.write(json.dumps({**blocks, "seq_len": config.seq_len}))
            manifest.flush()
            os.fsync(manifest.fileno())
        try:
            tmp.rename(final)
        except OSError:  # another job wrote the same blocks first: theirs are used
            if not (final / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _open(final, config.seq_len)


def estimated_cache_bytes(corpus_bytes: int, tokens_per_byte: float, seq_len: int) -> int:
    """Disk the blocks of a corpus of ``corpus_bytes`` take: its tokens, with each block's [CLS] and [SEP],
    × ``CACHE_BYTES_PER_TOKEN``. (200 MB of English text, seq_len 64: 903.6 MB written, 904.1 MB estimated.)"""
    return int(corpus_bytes * tokens_per_byte * seq_len / (seq_len - 2) * CACHE_BYTES_PER_TOKEN)


def sample_tokens_per_byte(corpus: StreamedCorpus, tokenizer, windows: int = SAMPLE_WINDOWS) -> float:
    """Tokens (separators included) per byte of the corpus, from ``windows`` pieces spread over the whole file."""
    texts: list[str] = []
    sampled = 0
    with corpus.path.open("rb") as handle:
        for i in range(windows):
            handle.seek(corpus.size * i // windows)
            lines = handle.read(SAMPLE_WINDOW_BYTES).split(b"\n")[1:-1]  # whole lines only
            sampled += sum(len(line) + 1 for line in lines)
            texts += [text for line in lines if (text := line.decode("utf-8", "replace").strip())]
    if not texts:
        return 1.0  # no whole line in the sample (very long lines): assume one token a byte, the most likely
    with tokenizer_lock(tokenizer):
        counts = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return sum(len(c) + 1 for c in counts) / max(1, sampled)


def streamed_disk_bytes(corpus: StreamedCorpus, config: TrainConfig, root: Path) -> int:
    """Disk the blocks of ``corpus`` will take in the run store at ``root``; InputError when it cannot stream
    or when the disk lacks room for them and the corpus's copy."""
    from mlm_core.training.costs import format_bytes
    from mlm_core.training.planning import load_tokenizer

    check_streamable(config)
    tokenizer = load_tokenizer(config.model)
    if (root / "cache" / f"stream-{cache_key(corpus, tokenizer, config)}" / MANIFEST).is_file():
        blocks = 0  # written by an earlier run on the same corpus and settings: reused
    else:
        blocks = estimated_cache_bytes(corpus.size, sample_tokens_per_byte(corpus, tokenizer), config.seq_len)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < blocks + corpus.size:
        raise InputError(f"This corpus needs about {format_bytes(blocks + corpus.size)} in the run store "
                         f"(its copy {format_bytes(corpus.size)}, its tokenized blocks {format_bytes(blocks)}); "
                         f"the disk holding it has {format_bytes(free)} free.")
    return blocks
