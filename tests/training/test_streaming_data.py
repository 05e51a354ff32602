"""One packer for every corpus (``data.Blocks``): its block invariants, in memory and streamed to a cache,
bounded memory, progress while a big corpus is read, and a stop that leaves no cache behind."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc

import pytest
import torch
from support.corpora import corpus_bytes

import mlm_core.text.corpus as corpus_module
from mlm_core.errors import Cancelled, CorpusError, InputError
from mlm_core.masking import CATEGORY_CODES
from mlm_core.text.corpus import StreamedCorpus, open_corpus_file, read_corpus
from mlm_core.text.tokens import word_category
from mlm_core.training import data as data_module
from mlm_core.training import streaming
from mlm_core.training.config import TrainConfig
from mlm_core.training.data import SPECIAL_CODE, pack, prepare_data
from mlm_core.training.streaming import CACHE_BYTES_PER_TOKEN, Preparing, prepare_streamed, preparing_text
from mlm_core.training.trainer import Trainer, TrainingCallbacks

FIELDS = ("ids", "word_ids", "categories", "special")
# Texts that test the word and category rules: accents, typed special tokens, e-mails, numbers, CJK,
# zero-width characters, punctuation runs and a line long enough to span several blocks.
TRICKY = (
    "Café naïve [MASK] <mask> [CLS] bob@example.com 12,5% ;-) 東京 dog\u200bcat\n"
    "我爱北京天安门。le chat est sur la table\n"
    "  \n\u200b\n"
    "The cat sat on the mat, didn't it? 3.14 -- ... !!\n"
    + " ".join(["the big red house of paris"] * 40) + "\n"
)


def streamed(path, data: bytes, unit: str = "line") -> StreamedCorpus:
    path.write_bytes(data)
    return StreamedCorpus(path, path.name, unit, hashlib.sha256(data).hexdigest(), len(data))


def texts_of(data: bytes) -> list[str]:
    return list(read_corpus(data, "c.txt").texts)


def assert_same_blocks(expected, got) -> None:
    for one, other in zip(expected, got, strict=True):
        assert one.words == other.words
        for field in FIELDS:
            assert torch.equal(getattr(one, field), getattr(other, field)), field


def assert_block_invariants(data, texts: list[str], tokenizer, language: str = "en") -> None:
    """[CLS] content [SEP] blocks whose contents are the texts' tokens, a separator after each, in order;
    specials marked, word ids block-local and in order; with word texts, each word's tokens have its category."""
    ids, words, codes, special = data.ids, data.word_ids, data.categories, data.special
    assert (ids[:, 0] == tokenizer.cls_token_id).all() and (ids[:, -1] == tokenizer.sep_token_id).all()
    stream = [i for text in texts for i in [*tokenizer(text, add_special_tokens=False,
                                                       split_special_tokens=True)["input_ids"],
                                             tokenizer.sep_token_id]]
    content = ids[:, 1:-1].reshape(-1).tolist()
    if len(stream) >= len(content):
        assert content == stream[: len(content)]  # whole blocks; the remainder is left out
    else:  # one block, padded
        assert len(data) == 1 and content == stream + [tokenizer.pad_token_id] * (len(content) - len(stream))
    assert torch.equal(special, torch.isin(ids, torch.tensor(tokenizer.all_special_ids)))
    # [UNK] is special too, yet part of a word: it keeps that word's category
    structural = torch.isin(ids, torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id]))
    assert (words[special] == -1).all() and (codes[structural] == SPECIAL_CODE).all()
    assert (words[~special] >= 0).all()
    for b in range(len(data)):
        row = words[b][words[b] >= 0]
        # from 0, in text order (a word made only of [UNK] has no id in the block: ids may skip it)
        assert row.numel() == 0 or (row[0] == 0 and (row.diff() >= 0).all())
        if data.words is not None:
            assert row.numel() == 0 or int(row.max()) == len(data.words[b]) - 1
            for w in row.unique().tolist():
                expected = CATEGORY_CODES[word_category(data.words[b][w], language)]
                assert (codes[b][words[b] == w] == expected).all(), data.words[b][w]


@pytest.mark.parametrize("tokenizer_name", ["tiny_tokenizer", "default_tokenizer"])
@pytest.mark.parametrize(("seq_len", "keep_words", "language"),
                         [(32, False, "en"), (8, True, "en"), (64, True, "fr"), (16, True, "zh")],
                         ids=["plain", "short-blocks-words", "french-stopwords", "chinese-words"])
def test_blocks_hold_the_texts_tokens_with_block_local_words_and_their_categories(
        tokenizer_name, seq_len, keep_words, language, request):
    tokenizer = request.getfixturevalue(tokenizer_name)
    texts = texts_of(corpus_bytes(60) + b"\n" + TRICKY.encode())
    data = pack(texts, tokenizer, seq_len, keep_words, language)
    assert len(data) > 10
    assert_block_invariants(data, texts, tokenizer, language)
    if not keep_words:  # the categories without word texts: the same as with them
        kept = pack(texts, tokenizer, seq_len, True, language)
        assert torch.equal(kept.categories, data.categories) and torch.equal(kept.word_ids, data.word_ids)


def test_a_corpus_shorter_than_a_block_is_padded_to_one(tiny_tokenizer):
    texts = ["the cat", "a dog"]
    data = pack(texts, tiny_tokenizer, 64, keep_words=True)
    assert len(data) == 1 and data.words == (("the", "cat", "a", "dog"),)
    assert_block_invariants(data, texts, tiny_tokenizer)


def test_the_blocks_do_not_depend_on_the_chunk_size(tiny_tokenizer, tmp_path, monkeypatch):
    """Words are numbered across chunks and a word cut by a block edge keeps its text, in memory and streamed."""
    data = corpus_bytes(300) + b"\n" + TRICKY.encode()
    texts = texts_of(data)
    config = TrainConfig(seq_len=16, strategy="rule-based", strategy_params={"rule": "stopwords", "language": "fr"})
    whole = pack(texts, tiny_tokenizer, 16, True, "fr")
    in_memory = prepare_data(read_corpus(data, "c.txt"), tiny_tokenizer, config, None)
    on_disk = prepare_streamed(streamed(tmp_path / "c.txt", data), tiny_tokenizer, config, None)
    monkeypatch.setattr(data_module, "CHUNK_TEXTS", 3)
    monkeypatch.setattr(streaming, "CHUNK_TEXTS", 3)
    assert_same_blocks([whole], [pack(texts, tiny_tokenizer, 16, True, "fr")])
    assert_same_blocks(in_memory, prepare_data(read_corpus(data, "c.txt"), tiny_tokenizer, config, None))
    assert_same_blocks(on_disk, prepare_streamed(streamed(tmp_path / "c.txt", data), tiny_tokenizer, config, None))


@pytest.mark.parametrize("tokenizer_name", ["tiny_tokenizer", "default_tokenizer"])
@pytest.mark.parametrize(
    "settings",
    [dict(seq_len=32), dict(seq_len=16, heldout_fraction=0.3), dict(seq_len=64, strategy="privacy"),
     dict(seq_len=32, strategy="whole-word", strategy_params={"language": "zh"}),
     dict(seq_len=32, strategy="rule-based", strategy_params={"rule": "stopwords", "language": "fr"})],
    ids=["random", "short-blocks", "privacy", "chinese-words", "french-stopwords"],
)
def test_a_corpus_read_as_it_goes_gives_the_blocks_of_the_corpus_read_whole(tokenizer_name, settings, request,
                                                                             tmp_path):
    """The split made while reading (hash, privacy replacement first) is ``split_texts``' split."""
    tokenizer = request.getfixturevalue(tokenizer_name)
    data = corpus_bytes(300) + b"\n" + TRICKY.encode()
    config = TrainConfig(**settings)
    whole = prepare_data(read_corpus(data, "c.txt"), tokenizer, config, None)
    stream = prepare_streamed(streamed(tmp_path / "c.txt", data), tokenizer, config, tmp_path / "cache")
    assert_same_blocks(whole, stream)
    assert len(stream[0]) > 10 and len(stream[1]) >= 1


@pytest.mark.parametrize("data", [b"the cat\nthe dog\n", b"the cat sat\n" + b"a dog ran\n" * 3],
                         ids=["two-texts", "four-texts"])
@pytest.mark.parametrize("fraction", [0.001, 0.5])
def test_the_split_fixups_and_short_splits_match(data, fraction, tiny_tokenizer, tmp_path):
    """A split left empty by the hash takes the other's last text, and a split shorter than a block is
    padded to one, as in memory."""
    config = TrainConfig(seq_len=16, heldout_fraction=fraction)
    whole = prepare_data(read_corpus(data, "c.txt"), tiny_tokenizer, config, None)
    stream = prepare_streamed(streamed(tmp_path / "c.txt", data), tiny_tokenizer, config, None)
    assert_same_blocks(whole, stream)


def test_a_short_run_gives_the_same_losses_either_way(tiny_model_dir, tmp_path):
    torch.set_num_threads(1)
    data = corpus_bytes(240)
    settings = dict(model=str(tiny_model_dir), device="cpu", steps=4, batch_size=4, seq_len=32, lr=1e-3,
                    eval_every=2, eval_blocks=8, checkpoint_every=100, heldout_fraction=0.2, seed=3)
    records = []
    for corpus in (read_corpus(data, "c.txt"), streamed(tmp_path / "c.txt", data)):

        class Recorder(TrainingCallbacks):
            def __init__(self):
                self.evals = []

            def on_eval(self, record):
                self.evals.append((record["step"], record["train_loss"], record["heldout_loss"]))

        recorder = Recorder()
        torch.manual_seed(0)
        Trainer(TrainConfig(**settings), corpus, tmp_path / f"run{len(records)}", recorder,
                cache_dir=tmp_path / "cache").run()
        records.append(recorder.evals)
    assert records[0] == records[1] and len(records[0]) == 2


def test_the_blocks_are_written_once_atomically_and_reused(tiny_tokenizer, tmp_path, monkeypatch):
    corpus = streamed(tmp_path / "c.txt", corpus_bytes(200))
    config = TrainConfig(seq_len=32)
    train, heldout = prepare_streamed(corpus, tiny_tokenizer, config, tmp_path / "cache")
    (folder,) = (tmp_path / "cache").iterdir()  # no temporary left behind
    assert folder.name.startswith("stream-") and ".tmp" not in folder.name
    assert json.loads((folder / "blocks.json").read_text())["train"] == len(train)
    on_disk = sum(f.stat().st_size for f in folder.iterdir() if f.suffix != ".json")
    assert on_disk == (len(train) + len(heldout)) * 32 * CACHE_BYTES_PER_TOKEN

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the cached blocks should be reused")

    monkeypatch.setattr(data_module, "encode_chunk", no_tokenizing)
    again = prepare_streamed(corpus, tiny_tokenizer, config, tmp_path / "cache")
    assert_same_blocks((train, heldout), again)


def test_a_failure_while_writing_leaves_no_cache_entry(tiny_tokenizer, tmp_path, monkeypatch):
    corpus = streamed(tmp_path / "c.txt", corpus_bytes(2000))

    def disk_full(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(streaming._Files, "__call__", disk_full)
    with pytest.raises(OSError):
        prepare_streamed(corpus, tiny_tokenizer, TrainConfig(seq_len=32), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_word_list_rules_are_refused_for_a_streamed_corpus_naming_the_limit(tiny_tokenizer, tmp_path):
    corpus = streamed(tmp_path / "c.txt", corpus_bytes(50))
    config = TrainConfig(strategy="rule-based", strategy_params={"rule": "words", "words": ["cat"]})
    with pytest.raises(InputError, match="up to 50 MB"):
        prepare_streamed(corpus, tiny_tokenizer, config, tmp_path / "cache")


# ----------------------------------------------------------------------------- reading the file


def test_files_over_the_limit_are_streamed_with_the_texts_read_corpus_gives(tmp_path, monkeypatch):
    data = ("\ufeffcafé au lait\n\n  spaced  \r\n\u200b\n".encode() + "crème brûlée\n".encode("cp1252")
            + b"last line without a break")
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    assert isinstance(open_corpus_file(path, "c.txt"), type(read_corpus(data, "c.txt")))  # under the limit: whole
    monkeypatch.setattr(corpus_module, "MAX_CORPUS_BYTES", 10)
    monkeypatch.setattr(corpus_module, "_STREAM_READ_BYTES", 7)  # pieces cut inside lines and characters
    for unit in ("line", "paragraph"):
        corpus = open_corpus_file(path, "c.txt", text_unit=unit)
        assert isinstance(corpus, StreamedCorpus) and corpus.sha256 == hashlib.sha256(data).hexdigest()
        texts = [t for batch in corpus.batches(2) for t in batch]
        assert texts == list(read_corpus(data, "c.txt", text_unit=unit).texts)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("c.csv", b"text\nhello world\n" * 10, "needs a .txt file"),
        ("c.txt", b"fine line\n" * 3 + b"bad \x00 line\n", "Line 4: the file contains NUL bytes"),
        ("c.txt", "\ufeffhello\n".encode("utf-16"), "UTF-16"),
        ("c.txt", b"\n \n\n" * 20, "no text"),
    ],
    ids=["csv", "nul", "utf-16", "blank"],
)
def test_streamed_files_that_cannot_be_used_get_one_clear_message(name, data, message, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "MAX_CORPUS_BYTES", 10)
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CorpusError, match=message):
        open_corpus_file(path, name)


def test_memory_while_packing_does_not_grow_with_the_corpus(tiny_tokenizer, tmp_path, monkeypatch):
    """Python's allocations (numpy's included) peak at about the same size for a corpus four times bigger.

    The file is read in pieces far smaller than these corpora, as a real one is read in 4 MB pieces."""
    monkeypatch.setattr(corpus_module, "_STREAM_READ_BYTES", 64 * 1024)
    peaks = []
    for lines in (6_000, 24_000):
        corpus = streamed(tmp_path / f"c{lines}.txt", corpus_bytes(lines, seed=lines))
        tracemalloc.start()
        prepare_streamed(corpus, tiny_tokenizer, TrainConfig(seq_len=32), tmp_path / "cache")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0], peaks


# ----------------------------------------------------------------------------- the command line


def train_json(capsys, *argv: str) -> tuple[int, list[dict]]:
    from mlm_core.cli import main

    capsys.readouterr()
    status = main(["train", *argv, "--steps", "2", "--batch", "4", "--seq-len", "32", "--device", "cpu",
                   "--json"])
    return status, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("source", ["corpus", "parquet"])
def test_train_streams_a_corpus_over_the_limit_from_a_file_or_a_dataset(source, tiny_model_dir, tmp_path, capsys,
                                                                         monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(corpus_module, "MAX_CORPUS_BYTES", 2000)
    data = corpus_bytes(300)
    if source == "corpus":
        (tmp_path / "big.txt").write_bytes(data)
        given = ["--corpus", str(tmp_path / "big.txt")]
    else:
        pq.write_table(pa.table({"text": data.decode().splitlines()}), tmp_path / "big.parquet")
        given = ["--dataset", str(tmp_path / "big.parquet")]
    status, lines = train_json(capsys, *given, "--model", str(tiny_model_dir), "--out", str(tmp_path / "runs"))
    assert status == 0 and lines[-1]["status"] == "finished"
    (cached,) = (tmp_path / "runs" / "cache").glob("stream-*")  # the blocks were streamed into the cache
    assert (cached / "blocks.json").is_file()
    assert not list((tmp_path / "runs" / "cache").glob("dataset-*"))  # the dataset's txt copy is gone


def test_a_streamed_run_is_not_resumed_by_several_processes(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """runs resume under torchrun would send the corpus itself to the other processes: refused first."""
    from mlm_core.cli import build_parser
    from mlm_core.cli.runs import _resume_together
    from mlm_core.errors import MaskLabError

    monkeypatch.setattr(corpus_module, "MAX_CORPUS_BYTES", 2000)
    (tmp_path / "big.txt").write_bytes(corpus_bytes(300))
    status, lines = train_json(capsys, "--corpus", str(tmp_path / "big.txt"), "--model", str(tiny_model_dir),
                               "--out", str(tmp_path / "runs"))
    assert status == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = build_parser().parse_args(["runs", "resume", lines[-1]["run_id"], "--out", str(tmp_path / "runs")])
    with pytest.raises(MaskLabError, match="trains in one process"):
        _resume_together(args)()


def test_train_refuses_a_rule_that_cannot_stream_before_the_run_exists(tiny_model_dir, tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setattr(corpus_module, "MAX_CORPUS_BYTES", 2000)
    (tmp_path / "big.txt").write_bytes(corpus_bytes(300))
    capsys.readouterr()
    from mlm_core.cli import main

    status = main(["train", "--corpus", str(tmp_path / "big.txt"), "--model", str(tiny_model_dir), "--strategy",
                   "rule-based", "--rule", "words", "--words", "cat", "--out", str(tmp_path / "runs")])
    assert status == 2
    assert capsys.readouterr().err.startswith("error: A word-list or regex rule keeps the words of every block")
    assert not [p for p in (tmp_path / "runs").iterdir() if (p / "config.json").exists()]  # no run was created


def test_the_disk_the_blocks_take_is_estimated_from_samples_of_the_file(tiny_tokenizer, tmp_path):
    corpus = streamed(tmp_path / "c.txt", corpus_bytes(20_000))
    config = TrainConfig(seq_len=32)
    train, heldout = prepare_streamed(corpus, tiny_tokenizer, config, tmp_path / "cache")
    written = (len(train) + len(heldout)) * 32 * CACHE_BYTES_PER_TOKEN
    estimate = streaming.estimated_cache_bytes(corpus.size, streaming.sample_tokens_per_byte(corpus, tiny_tokenizer),
                                               config.seq_len)
    assert abs(estimate - written) < 0.05 * written


def test_tokenizing_a_streamed_corpus_is_left_out_of_the_next_runs_start_up():
    """The next run's time is estimated from this one's pace; its start-up must not carry minutes of tokenizing."""
    from mlm_core.training.costs import REFERENCE_PACE, _pace_of

    timing = {"steps": 1, "step_s": 2.0, "evals": 0, "eval_s": 0.0, "checkpoints": 0, "checkpoint_s": 0.0,
              "final_s": 0.5, "first_step_s": 2.0, "batch_size": 8, "seq_len": 64, "eval_blocks": 8}
    plain = _pace_of(timing, 30.0, REFERENCE_PACE["cpu"])
    streamed_run = _pace_of({**timing, "streamed_data_s": 600.0}, 630.0, REFERENCE_PACE["cpu"])
    assert streamed_run.startup_s == pytest.approx(plain.startup_s) == pytest.approx(30.0)


def test_the_disk_check_counts_blocks_only_until_they_are_written(tiny_model_dir, tiny_tokenizer, tmp_path):
    corpus = streamed(tmp_path / "c.txt", corpus_bytes(2000))
    config = TrainConfig(model=str(tiny_model_dir), seq_len=32)
    assert streaming.streamed_disk_bytes(corpus, config, tmp_path / "runs") > 0
    prepare_streamed(corpus, tiny_tokenizer, config, tmp_path / "runs" / "cache")
    assert streaming.streamed_disk_bytes(corpus, config, tmp_path / "runs") == 0  # a second run reuses them


# ----------------------------------------------------------------------------- progress and stopping


def test_progress_is_reported_at_the_start_every_few_seconds_and_at_the_end():
    now = [100.0]
    records = []
    progress = Preparing(10_000, records.append, clock=lambda: now[0])
    assert records == [{"done_bytes": 0, "total_bytes": 10_000, "eta_s": None}]
    for _ in range(8):  # 0.5 s and 100 bytes (99 characters and a line break) a chunk
        now[0] += 0.5
        progress.advance(["x" * 99])
    # one report per PROGRESS_EVERY_S (2 s): at 400 bytes after 2 s, the rest (9,600 bytes) takes 48 s
    assert records[1:] == [{"done_bytes": 400, "total_bytes": 10_000, "eta_s": 48.0},
                           {"done_bytes": 800, "total_bytes": 10_000, "eta_s": 46.0}]
    progress.finish()
    assert records[-1] == {"done_bytes": 10_000, "total_bytes": 10_000, "eta_s": 0.0}
    assert preparing_text(records[1]) == "Preparing the corpus: 4% (about 48 s left)"
    assert preparing_text(records[0]) == "Preparing the corpus: 0%"


def test_a_streamed_corpus_reports_its_bytes_read_up_to_its_size(tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "PROGRESS_EVERY_S", 0.0)  # every chunk
    monkeypatch.setattr(streaming, "CHUNK_TEXTS", 50)
    corpus = streamed(tmp_path / "c.txt", corpus_bytes(400))
    records = []
    prepare_streamed(corpus, tiny_tokenizer, TrainConfig(seq_len=32), tmp_path / "cache", records.append)
    done = [r["done_bytes"] for r in records]
    assert len(records) >= 9 and done[0] == 0 and done == sorted(done) and done[-1] == corpus.size
    assert {r["total_bytes"] for r in records} == {corpus.size}
    assert done[-2] == corpus.size  # counted from the texts: exact for a file without blank lines or padding


def test_a_stop_while_preparing_ends_promptly_and_leaves_no_cache(tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "CHUNK_TEXTS", 20)
    corpus = streamed(tmp_path / "c.txt", corpus_bytes(400))
    asked = []

    def stop_at_the_third_chunk() -> bool:
        asked.append(1)
        return len(asked) >= 3

    with pytest.raises(Cancelled):
        prepare_streamed(corpus, tiny_tokenizer, TrainConfig(seq_len=32), tmp_path / "cache", None,
                         stop_at_the_third_chunk)
    assert len(asked) == 3  # asked at each chunk: stopped at once, not at the end of the file
    assert list((tmp_path / "cache").iterdir()) == []  # the half-written blocks are gone


def test_a_run_cancelled_while_preparing_ends_cancelled_with_no_cache(tiny_model_dir, tmp_path, monkeypatch):
    from mlm_core.training import jobs
    from mlm_core.training.costs import read_pace
    from mlm_core.training.store import RunStore

    monkeypatch.setattr(corpus_module, "MAX_CORPUS_BYTES", 2000)
    monkeypatch.setattr(streaming, "CHUNK_TEXTS", 20)
    monkeypatch.setattr(streaming, "PROGRESS_EVERY_S", 0.0)
    store = RunStore(tmp_path / "runs")
    (tmp_path / "big.txt").write_bytes(corpus_bytes(300))
    config = TrainConfig(model=str(tiny_model_dir), device="cpu", steps=2, batch_size=4, seq_len=32,
                         corpus_name="big.txt")
    record, _ = jobs.submit(store, config, tmp_path / "big.txt", launch=False)
    seen = []

    def cancel_once_preparing(self) -> bool:  # the user's Cancel, read between chunks
        seen.append(read_pace(store.folder(record.id)))
        return len(seen) >= 2

    monkeypatch.setattr(jobs.StoreCallbacks, "should_stop", cancel_once_preparing)
    done = jobs.execute(store, record.id)
    assert done.status == "cancelled" and done.step == 0
    assert 0 < seen[-1]["preparing"]["done_bytes"] < seen[-1]["preparing"]["total_bytes"]  # for the Runs page
    assert not list((store.root / "cache").glob("stream-*"))


def test_train_prints_preparing_records_before_the_first_step(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from mlm_core.cli import main

    monkeypatch.setattr(corpus_module, "MAX_CORPUS_BYTES", 2000)
    (tmp_path / "big.txt").write_bytes(corpus_bytes(300))
    argv = ["--corpus", str(tmp_path / "big.txt"), "--model", str(tiny_model_dir)]
    status, lines = train_json(capsys, *argv, "--out", str(tmp_path / "runs"))
    events = [line["event"] for line in lines]
    assert status == 0 and events.index("preparing") < events.index("start")
    preparing = [line for line in lines if line["event"] == "preparing"]
    assert preparing[0]["done_bytes"] == 0
    assert preparing[-1]["done_bytes"] == preparing[-1]["total_bytes"] == len(corpus_bytes(300))
    assert set(preparing[-1]) == {"event", "run_id", "done_bytes", "total_bytes", "eta_s"}
    capsys.readouterr()
    status = main(["train", *argv, "--steps", "1", "--batch", "4", "--seq-len", "16", "--device", "cpu",
                   "--out", str(tmp_path / "runs2")])
    assert status == 0 and "Preparing the corpus: 100%" in capsys.readouterr().err


def test_the_live_panel_shows_the_preparing_progress(tiny_model_dir, tmp_path, monkeypatch):
    from support.apptest import clear_streamlit_caches, open_app_page

    from mlm_core.training import jobs
    from mlm_core.training.costs import write_pace
    from mlm_core.training.store import CANCELLED, RUNNING

    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    store = jobs.default_store()
    config = TrainConfig(model=str(tiny_model_dir), device="cpu", steps=2, batch_size=4, seq_len=32,
                         corpus_name="c.txt")
    record, _ = jobs.submit(store, config, corpus_bytes(), launch=False)
    store.transition(record.id, RUNNING, pid=os.getpid())  # a live process: refresh keeps it running
    write_pace(store.folder(record.id), {"preparing": {"done_bytes": 350, "total_bytes": 1000, "eta_s": 725.0}})
    clear_streamlit_caches()
    try:
        app = open_app_page("app_pages/finetune.py", query={"run": record.id})
        bar = app.get("progress")[0]
        assert bar.text == "Preparing the corpus: 35% (about 12 min 05 s left)"
    finally:
        store.transition(record.id, CANCELLED)  # never left running with this process's pid
        clear_streamlit_caches()
