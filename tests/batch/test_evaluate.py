"""Batch analysis (mlm_core.evaluate): known answers, categories, batching, streaming, cache, CLI.

Known answers come from two tiny BERTs: a "copy" model whose output at a position is its input
token (so kept-only corruption must give top-1 = 1.0), and the randomly initialised fixture model
(chance level: log p of the original ≈ -log V).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import shutil
import subprocess
import tracemalloc

import numpy as np
import pytest
import torch
from conftest import TINY_VOCAB, TINY_WORDS
from hypothesis import given, settings
from hypothesis import strategies as st
from support import REPO, free_port

from mlm_core.cli import main
from mlm_core.errors import EvaluationCancelled, InputError
from mlm_core.evaluate import EvalConfig, evaluate, sentence_seed, sweep
from mlm_core.explain.exploration import explore
from mlm_core.explain.predict import pseudo_log_likelihood
from mlm_core.explain.whatif import count_hooks
from mlm_core.links import parse_heads_off
from mlm_core.masking import build_strategy
from mlm_core.text.tokens import tokenize

# The subpackage itself: ``from mlm_core import evaluate`` may give the public function of that name.
ev = importlib.import_module("mlm_core.evaluate")

SENTENCES = [
    "the cat sat on the mat.",
    "the dog ran in the big house!",
    "paris is the capital of france, he said.",
    "she sat on a small red tree?",
    "it was a blue city.",
]
KEPT_ONLY = {"mask_replace_prob": 0.0, "random_replace_prob": 0.0}


def random_sentences(n: int, seed: int = 0) -> list[str]:
    """Sentences of uniformly drawn vocabulary words: no word is frequent enough to favour a biased model."""
    rng = random.Random(seed)
    words = [w for w in TINY_WORDS if not w.startswith("##")]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + rng.choice(".!?,") for _ in range(n)]


@pytest.fixture(scope="module")
def copy_loaded(tmp_path_factory):
    """A BERT whose logits at each position peak at that position's input token (identity through the layers)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    from mlm_core.model.loading import load_model

    folder = tmp_path_factory.mktemp("copy-bert")
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    BertTokenizerFast(vocab={t: i for i, t in enumerate(TINY_VOCAB)}, do_lower_case=True).save_pretrained(folder)
    size = 64  # wider than the vocabulary, so one-hot embeddings fit
    config = BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=size, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    model = BertForMaskedLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()  # attention and feed-forward add nothing: each layer is LayerNorm(x)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
        model.bert.embeddings.word_embeddings.weight.copy_(torch.eye(len(TINY_VOCAB), size))
        model.cls.predictions.transform.dense.weight.copy_(torch.eye(size))  # decoder: tied embeddings
    model.save_pretrained(folder)
    return load_model(str(folder), device="cpu")


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def run(loaded, texts, configs, cache_dir, **options):
    return evaluate(loaded, texts, configs, cache_dir=cache_dir, **options)


# ----------------------------------------------------------------------------- known answers


def test_copy_model_recovers_every_kept_token(copy_loaded, cache):
    config = EvalConfig("random", {"mlm_probability": 0.5, **KEPT_ONLY})
    report = run(copy_loaded, SENTENCES * 4, config, cache, seeds=[0, 1])
    record = report.to_dict()["configurations"][0]
    assert record["overall"]["n"] > 30
    assert record["overall"]["top1"] == 1.0 and record["overall"]["top5"] == 1.0
    assert record["overall"]["mean_log_prob"] > -0.1  # p(original) ≈ 0.99
    for name, metrics in record["by_category"].items():
        assert metrics["n"] == 0 or metrics["top1"] == 1.0, name
    tokens = report.rows("tokens")
    assert set(tokens["kind"]) == {"kept"} and (tokens["rank"] == 1).all()
    assert (tokens["guess"] == tokens["token"]).all()


def test_copy_model_cannot_recover_tokens_it_does_not_see(copy_loaded, cache):
    config = EvalConfig("random", {"mlm_probability": 0.5, "mask_replace_prob": 1.0, "random_replace_prob": 0.0})
    record = run(copy_loaded, SENTENCES * 4, config, cache).to_dict()["configurations"][0]
    assert record["overall"]["n"] > 10
    assert record["overall"]["top1"] < 0.2  # it copies [MASK], which is never a guess


def test_random_weights_are_at_chance_level(tiny_loaded, cache):
    report = run(tiny_loaded, random_sentences(150), EvalConfig("random", {"mlm_probability": 0.3}), cache,
                 with_pll=False)
    overall = report.to_dict()["configurations"][0]["overall"]
    vocabulary = len(TINY_VOCAB)
    assert overall["n"] > 300
    assert abs(overall["mean_log_prob"] + math.log(vocabulary)) < 0.25  # near-uniform softmax
    assert overall["top1"] < 0.12  # chance: 1 / 35 ordinary tokens
    assert overall["top5"] < 0.35  # chance: 5 / 35


# ----------------------------------------------------------------------------- categories


def test_each_predicted_token_carries_its_words_category(tiny_loaded, cache):
    text = "the cat, 12 times!"
    config = EvalConfig("random", {"mlm_probability": 1.0, **KEPT_ONLY})
    report = run(tiny_loaded, [text], config, cache)
    tokens = report.rows("tokens")
    by_word = dict(zip(tokens["word"], tokens["category"]))
    assert by_word == {"the": "stopword", "cat": "content", ",": "punctuation", "12": "number", "times": "content",
                       "!": "punctuation"}
    reference = tokenize(tiny_loaded.tokenizer, text)
    assert tokens["position"].tolist() == reference.eligible_positions
    summary = report.summary().set_index("category")
    assert summary.loc["all", "n"] == len(reference.eligible_positions)
    assert summary.loc["punctuation", "n"] == 2 and summary.loc["stopword", "n"] == 1
    assert sum(summary.loc[c, "n"] for c in ("stopword", "punctuation", "number", "content")) == summary.loc["all", "n"]


def test_a_rule_based_configuration_masks_only_its_category(tiny_loaded, cache):
    config = EvalConfig("rule-based", {"rule": "stopwords", **KEPT_ONLY})
    tokens = run(tiny_loaded, SENTENCES, config, cache).rows("tokens")
    assert len(tokens) > 5 and set(tokens["category"]) == {"stopword"}


# ----------------------------------------------------------------------------- same strategy objects, same results


def test_batched_and_one_by_one_give_the_same_results(tiny_loaded, tmp_path, monkeypatch):
    texts = random_sentences(12, seed=3)
    configs = [EvalConfig("random", {"mlm_probability": 0.4}), EvalConfig("span", exclude="punctuation")]
    batched = run(tiny_loaded, texts, configs, tmp_path / "a", seeds=[0, 5], with_pll=True)
    monkeypatch.setattr(ev.engine, "CHUNK_SENTENCES", 5)
    one_by_one = run(tiny_loaded, texts, configs, tmp_path / "b", seeds=[0, 5], max_tokens=1,  # one row per pass
                     with_pll=True)
    for kind in ("tokens", "sentences"):
        a, b = batched.rows(kind), one_by_one.rows(kind)
        assert a.drop(columns=[c for c in a if "log" in c or "pll" in c]).equals(
            b.drop(columns=[c for c in b if "log" in c or "pll" in c]))
    np.testing.assert_allclose(batched.rows("tokens")["log_prob"], one_by_one.rows("tokens")["log_prob"], atol=1e-4)
    np.testing.assert_allclose(batched.rows("sentences")["pll"], one_by_one.rows("sentences")["pll"], atol=1e-3)


def test_a_sentence_masks_as_the_explorer_masks_it(tiny_loaded, cache):
    config = EvalConfig("whole-word", {"mlm_probability": 0.4}, exclude="stopwords")
    report = run(tiny_loaded, SENTENCES, config, cache, seeds=[7])
    tokens = report.rows("tokens")
    for index, text in enumerate(SENTENCES):
        mine = tokens[tokens["sentence"] == index]
        seen = explore(tiny_loaded, text, config.build(), sentence_seed(7, index), top_k=5)
        assert list(seen.prediction.positions) == mine["position"].tolist()
        assert [seen.kinds[p] for p in seen.prediction.positions] == mine["kind"].tolist()
        for guess, (_, row) in zip(seen.prediction.predictions, mine.iterrows()):
            assert guess.original_rank == row["rank"]
            assert math.isclose(guess.original_prob, math.exp(row["log_prob"]), rel_tol=1e-4)


def test_pll_matches_the_one_sentence_reference(tiny_loaded, cache):
    report = run(tiny_loaded, SENTENCES, EvalConfig(), cache, with_pll=True)
    rows = report.rows("sentences")
    for index, text in enumerate(SENTENCES):
        total, _ = pseudo_log_likelihood(tiny_loaded, tokenize(tiny_loaded.tokenizer, text).ids)
        assert math.isclose(rows.loc[index, "pll"], total, rel_tol=1e-4)


def test_exclusion_and_heads_change_the_numbers_and_leave_no_hook(tiny_loaded, cache):
    texts = random_sentences(20, seed=1)
    hooks = count_hooks(tiny_loaded.model)
    plain, excluded, heads = (EvalConfig("random", {"mlm_probability": 0.3}, **extra) for extra in
                              ({}, {"exclude": "stopwords"}, {"heads_off": ((0, 0), (1, 1))}))
    report = run(tiny_loaded, texts, [plain, excluded, heads], cache, with_pll=True)
    assert count_hooks(tiny_loaded.model) == hooks
    records = {r["label"]: r for r in report.to_dict()["configurations"]}
    assert set(records) == {plain.label, excluded.label, heads.label}
    base = records[plain.label]
    for other in (excluded, heads):
        assert records[other.label]["overall"]["n"] == base["overall"]["n"]  # same masks: the seed decides
        assert records[other.label]["overall"]["mean_log_prob"] != base["overall"]["mean_log_prob"]
        assert records[other.label]["pll"]["mean_per_token"] != base["pll"]["mean_per_token"]
    with pytest.raises(InputError, match="do not exist"):
        run(tiny_loaded, texts, EvalConfig(heads_off=((9, 0),)), cache)


def test_adaptive_and_privacy_configurations_run(tiny_loaded, cache):
    texts = ["mail bob@example.org about the cat.", "the dog sat on 12 mats."]
    configs = [EvalConfig("adaptive", {"mlm_probability": 0.5}), EvalConfig("random", privacy=True)]
    report = run(tiny_loaded, texts, configs, cache, with_pll=False)
    assert all(r["overall"]["n"] > 0 for r in report.to_dict()["configurations"])
    assert "[EMAIL]" in report.rows("sentences").iloc[-2]["text"].upper()


# ----------------------------------------------------------------------------- bad and awkward texts


def test_invisible_and_overlong_texts_are_reported_not_fatal(tiny_loaded, cache):
    long_text = " ".join(["the cat sat"] * 40)  # 120 words: more than the tiny model's 64 positions
    report = run(tiny_loaded, ["the cat sat.", "\u200b \u200d", long_text], EvalConfig(), cache)
    rows = report.rows("sentences")
    assert "Nothing to mask" in rows.loc[1, "note"] and rows.loc[1, "predicted"] == 0
    assert "truncated" in rows.loc[2, "note"] and rows.loc[2, "tokens"] == tiny_loaded.max_length
    assert any("skipped" in n for n in report.notices) and any("longer than" in n for n in report.notices)


def test_html_in_texts_is_kept_as_text_in_rows(tiny_loaded, cache):
    payload = "<img src=x onerror=alert(1)> the cat, \"sat\"\nhere"
    rows = run(tiny_loaded, [payload], EvalConfig(), cache).rows("sentences")
    assert rows.loc[0, "text"] == payload


# ----------------------------------------------------------------------------- streaming, progress, cancel, cache


def test_memory_stays_bounded_while_streaming(tiny_loaded, tmp_path, monkeypatch):
    monkeypatch.setattr(ev.engine, "CHUNK_SENTENCES", 100)
    config = EvalConfig("random", {"mlm_probability": 0.3})

    def peak(n: int) -> int:
        texts = (s for s in random_sentences(n, seed=n))  # a generator: never a list in memory
        tracemalloc.start()
        evaluate(tiny_loaded, texts, config, cache_dir=tmp_path / str(n), with_pll=False)
        _, high = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return high

    small, large = peak(200), peak(1000)
    assert large < small * 1.3 + 512 * 1024, (small, large)  # 5x the sentences, about the same peak
    assert large < 20 * 2**20


def test_progress_reaches_the_total_and_cancel_leaves_nothing(tiny_loaded, cache):
    seen = []
    run(tiny_loaded, SENTENCES, [EvalConfig(), EvalConfig("span")], cache, progress=lambda *a: seen.append(a))
    dones = [done for done, _, _ in seen]
    assert dones == sorted(dones) and dones[-1] == seen[-1][1]
    entries = set(cache.iterdir())
    calls = []
    with pytest.raises(EvaluationCancelled):
        run(tiny_loaded, random_sentences(50), EvalConfig("whole-word"), cache, max_tokens=64,
            cancel=lambda: calls.append(1) or len(calls) > 2)
    assert set(cache.iterdir()) == entries  # no new entry and no temporary folder


def test_results_are_cached_by_texts_model_and_configuration(tiny_loaded, copy_loaded, cache):
    config = EvalConfig("random", {"mlm_probability": 0.3})
    first = run(tiny_loaded, SENTENCES, config, cache, seeds=[0, 1])
    again = run(tiny_loaded, SENTENCES, [config, config.with_rate(0.5)], cache, seeds=[0, 1])
    assert first.cached == 0 and again.cached == 2  # the new rate is computed, the old one read back
    assert again.summary().iloc[:5].equals(first.summary())
    assert run(tiny_loaded, SENTENCES[:-1], config, cache).cached == 0  # other texts
    assert run(copy_loaded, SENTENCES, config, cache).cached == 0  # other weights
    assert run(tiny_loaded, SENTENCES, config, cache, seeds=[0, 1], reuse=False).cached == 0


# ----------------------------------------------------------------------------- configurations


def test_configurations_round_trip_through_the_explorer_and_its_links():
    strategy = build_strategy("span", {"mlm_probability": "0.3", "geometric_p": 0.5}, True, ["numbers"], "punctuation")
    config = EvalConfig.from_strategy(strategy, heads_off=[(1, 0)])
    assert config == EvalConfig("span", {"mlm_probability": 0.3, "geometric_p": "0.5"}, ("numbers",), "punctuation",
                                True, ((1, 0),))
    assert config.label == "span p=0.3 geometric_p=0.5 +privacy protect numbers exclude punctuation heads off 1:0"
    query = config.explorer_query("the cat", 42, model="m")
    assert query == {"text": "the cat", "strategy": "span", "p_mlm_probability": "0.3", "p_geometric_p": "0.5",
                     "privacy": "1", "protect": "numbers", "exclude": "punctuation", "seed": "42", "model": "m"}
    assert EvalConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InputError, match="Choose a masking strategy"):
        EvalConfig.from_strategy(None)
    for chooses_nothing in (build_strategy(None, {}, True, ["stopwords"], "numbers"),
                            build_strategy("rule-based", {"mode": "protect"})):
        with pytest.raises(InputError, match="chooses tokens"):
            EvalConfig.from_strategy(chooses_nothing)


def test_sweeps_and_their_parsers():
    assert len(ev.parse_rates("0.05:0.8:0.05")) == 16 and ev.parse_rates("0.1, 0.3") == (0.1, 0.3)
    for bad, message in (("0:1:0", "positive"), ("0,0.5", "above 0"), ("x", "look like"), ("0.001:1:0.001", "At most")):
        with pytest.raises(InputError, match=message):
            ev.parse_rates(bad)
    assert parse_heads_off("0:1, 2:3") == ((0, 1), (2, 3))
    with pytest.raises(InputError, match="layer:head"):
        parse_heads_off("0-1")
    grid = sweep(EvalConfig(exclude="stopwords"), rates=[0.1, 0.2], strategies=["random", "rule-based"])
    assert [c.label for c in grid] == ["random p=0.1 exclude stopwords", "random p=0.2 exclude stopwords",
                                       "rule-based rate=0.1 exclude stopwords", "rule-based rate=0.2 exclude stopwords"]
    assert sentence_seed(0, 5) == sentence_seed(0, 5) < 2**31 and sentence_seed(0, 5) != sentence_seed(1, 5)


def test_json_shape_and_intervals(tiny_loaded, cache):
    data = run(tiny_loaded, random_sentences(30), EvalConfig(), cache, seeds=[0, 1, 2]).to_dict()
    record = data["configurations"][0]
    assert set(record["overall"]) >= {"top1", "top5", "n", "mean_log_prob", "top1_ci"}
    assert set(record["by_category"]) == {"stopword", "punctuation", "number", "content"}
    for metrics in (record["overall"], *record["by_category"].values()):
        assert set(metrics) >= {"top1", "top5", "n"}
    low, high = record["overall"]["top5_ci"]
    assert 0 <= low <= record["overall"]["top5"] <= high <= 1
    assert "not offered" in data["pos"] and len(record["per_seed"]) == 3


def test_exports_and_charts_keep_user_text_literal(tiny_loaded, cache):
    from mlm_core.views import charts

    config = EvalConfig("rule-based", {"rule": "words", "words": "<b>cat</b>,the", **KEPT_ONLY})
    texts = ['<b>cat</b> sat, "quoted"\nnext line', *SENTENCES]
    report = run(tiny_loaded, texts, sweep(config, rates=[0.5, 1.0]), cache)
    rows = report.rows("sentences")
    as_json = json.loads(report.rows_bytes("sentences", "json"))
    assert as_json[0]["text"] == texts[0] == rows.loc[0, "text"]
    csv_text = report.rows_bytes("tokens", "csv").decode()
    assert csv_text.startswith(",".join(ev.TOKEN_COLUMNS)) and len(csv_text.splitlines()) == 1 + len(report.rows("tokens"))
    summary = report.summary()
    for figure in (charts.category_bars(summary), charts.rate_curves(summary, "top5", "stopword")):
        names = [trace.name for trace in figure.data if trace.name]
        assert names and all("<b>" not in name and "&lt;b&gt;" in name for name in names)


# ----------------------------------------------------------------------------- command line


def test_cli_evaluate_json_and_exports(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "sentences.csv"
    corpus.write_text("id,text\n" + "".join(f'{i},"{s}"\n' for i, s in enumerate(SENTENCES)))
    out, tokens_out = tmp_path / "rows.csv", tmp_path / "tokens.json"
    code = main(["evaluate", str(corpus), "--model", str(tiny_model_dir), "--sweep-rate", "0.2,0.4", "--seeds", "2",
                 "--exclude", "punctuation", "--out", str(out), "--tokens-out", str(tokens_out), "--json",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert [c["label"] for c in record["configurations"]] == ["random p=0.2 exclude punctuation",
                                                              "random p=0.4 exclude punctuation"]
    assert record["configurations"][0]["overall"]["n"] > 0 and record["column"] == "text"
    assert record["pll"] is ev.WITH_PLL is False and record["configurations"][0]["pll"] is None  # off unless asked
    assert out.read_text().startswith("config,seed,sentence,text")
    assert len(out.read_text().splitlines()) == 1 + len(SENTENCES) * 2 * 2
    first = json.loads(tokens_out.read_text().splitlines()[0])
    assert set(first) >= {"word", "category", "rank", "top1", "log_prob"}
    assert main(["evaluate", str(corpus), "--model", str(tiny_model_dir), "--cache-dir", str(tmp_path / "cache"),
                 "--no-pll"]) == 0
    assert "top-1" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "data", "message"), [
    ("ragged.csv", b"id,text\n1,the cat\n2,the dog,extra\n", "Line 3"),
    ("quote.csv", b'id,text\n1,"the cat\n', "Line"),
    ("bad.jsonl", b'{"text": "the cat"}\n{"text": \n', "Line 2"),
    ("binary.txt", b"\x00\x01\x02the cat", "NUL"),
    ("empty.txt", b"  \n", "empty"),
])
def test_cli_rejects_bad_files_naming_the_line(tiny_model_dir, tmp_path, capsys, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    assert main(["evaluate", str(path), "--model", str(tiny_model_dir), "--cache-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and len(error.strip().splitlines()) == 1


def test_cli_rejects_bad_options(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "s.txt"
    corpus.write_text("the cat sat.\n")
    for extra, message in ((["--sweep-rate", "0:1"], "start:stop:step"), (["--heads-off", "7:0"], "do not exist"),
                           (["--sweep-strategy", "nope"], "Unknown strategy"), (["--out", str(tmp_path / "no/x.csv")],
                                                                              "Cannot write")):
        assert main(["evaluate", str(corpus), "--model", str(tiny_model_dir), "--cache-dir", str(tmp_path), *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.txt")]) == 2


def test_accelerate_launch_splits_the_file_and_gathers_the_same_result(tiny_model_dir, tmp_path, capsys):
    """Two CPU processes (gloo) under ``accelerate launch``: the gathered report equals a one-process run."""
    launcher = shutil.which("accelerate")
    if launcher is None:
        pytest.skip("accelerate's launcher is not on PATH")
    corpus = tmp_path / "s.txt"
    corpus.write_text("\n".join(random_sentences(9, seed=4)) + "\n")
    args = ["evaluate", str(corpus), "--model", str(tiny_model_dir), "--seeds", "2", "--json", "--no-pll"]
    port = str(free_port())
    root = REPO
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
                           "-m", "mlm_core", *args, "--cache-dir", str(tmp_path / "c1")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    gathered = json.loads(done.stdout)  # one document: only the main process prints
    assert gathered["device"] == "cpu x 2" and gathered["sentences"] == 9
    assert main([*args, "--cache-dir", str(tmp_path / "c2")]) == 0
    alone = json.loads(capsys.readouterr().out)
    for mine, theirs in zip(gathered["configurations"], alone["configurations"]):
        assert mine["overall"]["n"] == theirs["overall"]["n"] and mine["overall"]["top1"] == theirs["overall"]["top1"]
        assert math.isclose(mine["overall"]["mean_log_prob"], theirs["overall"]["mean_log_prob"], rel_tol=1e-5)


def test_the_model_fingerprint_is_kept_until_a_weight_changes(tiny_loaded):
    from mlm_core.evaluate.cache import model_fingerprint

    first = model_fingerprint(tiny_loaded)
    assert model_fingerprint(tiny_loaded) == first
    weight = next(tiny_loaded.model.parameters())
    original = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)  # changed in place: the version counter moves
    try:
        assert model_fingerprint(tiny_loaded) != first
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert model_fingerprint(tiny_loaded) == first  # read again: the same weights, the same fingerprint


# ----------------------------------------------------------------------------- ranking


def reference_rank(scores: list[float], target: int, never_guessed: set[int]) -> tuple[int, int]:
    """(rank, first guess) by the definition: candidates are every token but the never-guessed ones, the original
    always included; the guess is the first best candidate; the rank counts candidates that score higher, and tied
    candidates with a smaller id."""
    candidates = [v for v in range(len(scores)) if v not in never_guessed or v == target]
    best = max(scores[v] for v in candidates)
    guess = min(v for v in candidates if scores[v] == best)
    rank = 1 + sum(scores[v] > scores[target] or (scores[v] == scores[target] and v < target) for v in candidates)
    return rank, guess


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_ranks_and_guesses_follow_the_definition_ties_included(data):
    """Small whole-number scores make ties common; more rows than one ranking block, so blocks are joined."""
    vocab = data.draw(st.integers(6, 40))
    rows = data.draw(st.integers(1, 2 * ev.engine.RANK_ROWS + 3))
    scores = data.draw(st.lists(st.lists(st.integers(-3, 3).map(float), min_size=vocab, max_size=vocab),
                                min_size=rows, max_size=rows))
    targets = np.array(data.draw(st.lists(st.integers(0, vocab - 1), min_size=rows, max_size=rows)), dtype=np.int64)
    never_guessed = sorted(data.draw(st.sets(st.integers(0, vocab - 1), max_size=3)))
    logits = torch.tensor(scores)
    rank, log_p, guess = ev.engine.rank_targets(logits.clone(), targets, torch.tensor(never_guessed, dtype=torch.long))
    expected = [reference_rank(row, int(t), set(never_guessed)) for row, t in zip(scores, targets)]
    assert rank.tolist() == [r for r, _ in expected]
    assert guess.tolist() == [g for _, g in expected]
    np.testing.assert_allclose(log_p, torch.log_softmax(logits, -1)[torch.arange(rows), targets].numpy(), atol=1e-6)
