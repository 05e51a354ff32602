"""Before/after probes, run views and fine-tuning plans on tiny models (no job processes).

References: a probe's in-turn probabilities equal the pseudo-log-likelihood's; the preview's
corrupted blocks equal what the Trainer itself draws for those blocks; zips unzip to the folder.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_VOCAB, build_tiny_bert
from support.corpora import corpus_bytes

from mlm_core.errors import InputError, ModelLoadError
from mlm_core.explain.predict import pseudo_log_likelihood
from mlm_core.masking import build_strategy
from mlm_core.model.default_model import DEFAULT_MODEL_NAME
from mlm_core.model.loading import load_model
from mlm_core.text.corpus import read_corpus
from mlm_core.text.tokens import tokenize
from mlm_core.training import TrainConfig, Trainer, probes
from mlm_core.training import planning as finetune
from mlm_core.training import run_table as compare_runs
from mlm_core.training.store import FINISHED, QUEUED, RUNNING, RunRecord, RunStore
from mlm_core.views import charts


@pytest.fixture(scope="module")
def tuned_loaded(tmp_path_factory):
    """A second tiny BERT with the same vocabulary and other weights: 'after fine-tuning'."""
    return load_model(str(build_tiny_bert(tmp_path_factory.mktemp("tiny-other"), seed=1)), device="cpu")


# ----------------------------------------------------------------------------- probes


def test_parse_sentences_reads_answers_and_skips_blank_lines():
    parsed = probes.parse_sentences("the cat sat on the [MASK] . | mat, rug\n\n  \nthe dog ran .\n")
    assert parsed == [probes.ProbeSentence("the cat sat on the [MASK] .", ("mat", "rug")),
                      probes.ProbeSentence("the dog ran .")]
    with pytest.raises(InputError, match="at least one"):
        probes.parse_sentences(" \n | x\n")
    with pytest.raises(InputError, match="at most"):
        probes.parse_sentences("the cat .\n" * (probes.MAX_SENTENCES + 1))


def test_presets_use_the_models_mask_token():
    presets = probes.preset_sentences("<mask>")
    assert len(presets) >= 50
    assert all("<mask>" in p.text and "[MASK]" not in p.text for p in presets)
    assert presets[1] == probes.ProbeSentence("Paris is the capital of <mask>.", ("france",))


def test_base_model_of_a_run(tmp_path, tiny_model_dir):
    assert probes.base_model_for({"model": None}) == (DEFAULT_MODEL_NAME, "")
    name, note = probes.base_model_for({"model": "scratch-lstm"})
    assert name == DEFAULT_MODEL_NAME and "random weights" in note
    name, note = probes.base_model_for({"model": str(tmp_path / "gone")})
    assert name == DEFAULT_MODEL_NAME and "gone" in note
    assert probes.base_model_for({"model": str(tiny_model_dir)}) == (str(tiny_model_dir), "")


def test_probe_masks_in_turn_like_the_pseudo_log_likelihood(tiny_loaded, tuned_loaded):
    sentence = "the cat sat on the mat ."
    results = probes.probe(tiny_loaded, tuned_loaded, [probes.ProbeSentence(sentence)], top_k=3)
    ids = tokenize(tiny_loaded.tokenizer, sentence).ids
    for model, side in ((tiny_loaded, "before"), (tuned_loaded, "after")):
        _, log_probs = pseudo_log_likelihood(model, ids)
        got = [getattr(r, side).original_prob for r in results]
        np.testing.assert_allclose(got, np.exp(log_probs[1:-1]), rtol=1e-4)
    assert [r.original for r in results] == ["the", "cat", "sat", "on", "the", "mat", "."]
    assert results[1].context == "the ⟦cat⟧ sat on the mat ."
    assert all(len(r.before.top) == 3 and len(r.after.top) == 3 for r in results)


def test_probe_follows_the_answer_of_a_typed_mask(tiny_loaded, tuned_loaded):
    results = probes.probe(tiny_loaded, tuned_loaded, probes.parse_sentences(
        "the cat sat on the [MASK] . | zebra, mat\nthe [MASK] sat on the [MASK] . | cat"))
    first = results[0]
    assert first.original == "mat"  # "zebra" is not one token of this vocabulary: the next answer counts
    assert math.isclose(first.change, first.after.original_prob - first.before.original_prob)
    assert [r.original for r in results[1:]] == [None, None]  # two masks: the answer is ambiguous
    table = probes.probe_table(results)
    assert list(table["original"]) == ["mat", "—", "—"]
    assert table["change"].isna().tolist() == [False, True, True]


def test_probe_refuses_models_with_different_vocabularies(tiny_loaded, tmp_path):
    other = load_model(str(build_tiny_bert(tmp_path / "other-vocab", vocab=[*TINY_VOCAB, "zebra"])), device="cpu")
    with pytest.raises(InputError, match="different vocabularies"):
        probes.probe(tiny_loaded, other, [probes.ProbeSentence("the cat .")])


# ----------------------------------------------------------------------------- run views


def record(**fields) -> RunRecord:
    values = dict(id="20260101-000000-aaaaaa", status=FINISHED, created=1_700_000_000.0, updated=0.0,
                  config={"model": None, "strategy": "random", "masking": "dynamic", "steps": 10}, step=10,
                  total_steps=10, best_heldout_loss=2.0, best_accuracy=0.4, device="cpu", reason=None,
                  started=1_700_000_000.0, finished=1_700_000_100.0, pid=None, cancel_requested=False)
    return RunRecord(**{**values, **fields})


def test_format_duration():
    assert [compare_runs.format_duration(s) for s in (None, 4.4, 200, 7500)] == ["—", "4 s", "3 min 20 s",
                                                                                  "2 h 05 min"]


def test_progress_and_eta():
    running = record(status=RUNNING, step=25, total_steps=100, started=1000.0, finished=None)
    now = running.started + 50  # 25 steps in 50 s: 75 more take 150 s
    state = compare_runs.progress(running, now=now)
    assert state.fraction == 0.25 and state.eta_s == pytest.approx(150)
    assert "step 25/100" in state.text and "2 min 30 s left" in state.text
    queued = compare_runs.progress(record(status=QUEUED, step=0, total_steps=None, started=None, finished=None))
    assert queued.fraction == 0 and "queued" in queued.text
    done = compare_runs.progress(record())
    assert done.fraction == 1 and "finished after 1 min 40 s" in done.text
    # With the job's pace: completed steps' rate (2 s a step after the first), not the time since start.
    pace = {"t0": 1000.0, "first_step": 0, "t1": 1020.0, "s1": 1, "step": 25, "at": 1068.0}
    waiting = [compare_runs.progress(running, now=1068.0 + wait, pace=pace).eta_s for wait in (0, 1, 2, 30)]
    assert waiting == [pytest.approx(150), pytest.approx(149), pytest.approx(148), pytest.approx(148)]
    starting = compare_runs.progress(record(status=RUNNING, step=0, finished=None), pace={**pace, "step": 0})
    assert "starting" in starting.text


def test_runs_table_filter_and_sort():
    rows = [record(id="r-1", best_heldout_loss=3.0),
            record(id="r-2", status="failed", best_heldout_loss=None, config={"model": "/x/runs/r-1/model",
                   "strategy": "span", "masking": "static"}),
            record(id="r-3", best_heldout_loss=1.0, device="cuda:0")]
    frame = compare_runs.runs_table(rows)
    assert list(frame.columns) == list(compare_runs.TABLE_COLUMNS)
    assert frame.loc[1, "model"] == "run r-1" and frame.loc[0, "model"] == DEFAULT_MODEL_NAME
    assert list(compare_runs.filter_runs(frame, ["finished"], sort_by="best held-out loss", descending=False)["run"]
                ) == ["r-3", "r-1"]
    assert list(compare_runs.filter_runs(frame, text="SPAN")["run"]) == ["r-2"]
    assert list(compare_runs.filter_runs(frame, text="cuda")["run"]) == ["r-3"]
    assert list(compare_runs.filter_runs(frame, sort_by="best held-out loss")["run"]) == ["r-1", "r-3", "r-2"]


def test_metric_frames_flatten_categories_and_label_runs():
    metrics = [{"step": 2, "train_loss": 3.0, "heldout_loss": 2.5, "perplexity": math.exp(2.5),
                "masked_accuracy": 0.1, "tokens_per_s": 100.0, "by_category": {"stopword": {"n": 3, "top1": 0.5}}},
               {"step": 4, "train_loss": float("nan"), "heldout_loss": 2.0}]
    frame = compare_runs.metric_frame(metrics)
    assert compare_runs.categories(frame) == ["accuracy: stopword"]
    assert frame[frame.metric == "held-out loss"]["value"].tolist() == [2.5, 2.0]
    assert frame[frame.metric == "train loss"]["step"].tolist() == [2]  # NaN is left out, not drawn as 0
    both = compare_runs.compare_metrics({"A": metrics, "B": metrics[:1], "C": []})
    assert set(both.run) == {"A", "B"} and list(both.columns) == ["run", "step", "metric", "value"]


def test_config_table_puts_differences_first():
    table = compare_runs.config_table({
        "A": {"lr": 1e-3, "strategy": "random", "freeze": [], "strategy_params": {"mlm_probability": 0.15}},
        "B": {"lr": 1e-3, "strategy": "span", "freeze": ["embeddings"], "strategy_params": {}},
    })
    assert list(table.index[table["differs"]]) == ["freeze", "strategy", "strategy_params.mlm_probability"]
    assert table.loc["strategy_params.mlm_probability", "B"] == "—"
    assert table.loc["freeze", "B"] == "embeddings" and not table.loc["lr", "differs"]


def test_zip_folder_holds_every_file(tmp_path):
    folder = tmp_path / "20260101-000000-aaaaaa" / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "w.safetensors").write_bytes(b"\x00" * 1000)
    with zipfile.ZipFile(io.BytesIO(compare_runs.zip_folder(folder))) as archive:
        assert sorted(archive.namelist()) == ["20260101-000000-aaaaaa-model/config.json",
                                              "20260101-000000-aaaaaa-model/sub/w.safetensors"]
        assert archive.read("20260101-000000-aaaaaa-model/sub/w.safetensors") == b"\x00" * 1000


def test_curves_show_run_names_literally():
    frame = compare_runs.compare_metrics({"<b>run</b> %{x}": [{"step": 1, "masked_accuracy": 0.5}],
                                          "plain": [{"step": 1, "masked_accuracy": 0.25}]})
    figure = charts.metric_curves(frame[frame.metric == "masked-token accuracy"], "masked-token accuracy",
                                  series="run")
    assert [t.name for t in figure.data] == ["&lt;b&gt;run&lt;/b&gt; %{x}", "plain"]
    assert all("%{fullData.name}" in t.hovertemplate for t in figure.data)  # names never become templates
    assert figure.layout.yaxis.tickformat == ".0%" and list(figure.data[0].x) == [1]


# ----------------------------------------------------------------------------- fine-tuning plans


def test_training_strategy_keeps_privacy_and_needs_a_strategy():
    name, params, notices = finetune.training_strategy(build_strategy("span", {}, privacy=True,
                                                                      protect=["stopwords"]))
    assert name == "compose" and [s["name"] for s in params["steps"]] == ["privacy", "rule-based", "span"]
    assert notices and "replaced in the corpus" in notices[0]  # the trainer applies it before packing
    with pytest.raises(InputError, match="Privacy replacement alone"):
        finetune.training_strategy(build_strategy(None, {}, privacy=True))
    name_random, params_random, none = finetune.training_strategy(build_strategy("random", {"mlm_probability": 0.3}))
    assert (name_random, params_random["mlm_probability"], none) == ("random", 0.3, [])
    assert finetune.strategy_rate(name_random, params_random) == 0.3
    assert finetune.strategy_rate(name, params) == 0.15
    with pytest.raises(InputError, match="Choose a masking strategy"):
        finetune.training_strategy(None)


@pytest.mark.parametrize("masking", ["static", "dynamic"])
def test_preview_is_what_the_trainer_draws(tiny_model_dir, tiny_tokenizer, tmp_path, masking):
    data = corpus_bytes(lines=600)  # more texts than the preview's first prefix
    corpus = read_corpus(data, "c.txt")
    config = TrainConfig(model=str(tiny_model_dir), device="cpu", steps=20, batch_size=4, seq_len=32,
                         strategy="whole-word", masking=masking, rate_start=0.4, seed=7, eval_blocks=4,
                         # static takes no moving rate (test_static_masking); dynamic follows the schedule
                         **({"rate_schedule": "linear", "rate_end": 0.1} if masking == "dynamic" else {}))
    examples = finetune.preview_examples(tiny_tokenizer, corpus.texts, config)
    trainer = Trainer(config, corpus, tmp_path / "run")
    masked, rate = trainer.mask([0, 1, 2], epoch=0, step=0)
    assert rate == 0.4 and all(e.rate == 0.4 for e in examples)
    for b, example in enumerate(examples):
        assert example.block == b
        assert list(example.tokens) == tiny_tokenizer.convert_ids_to_tokens(masked.input_ids[b].tolist())
        assert list(example.originals) == tiny_tokenizer.convert_ids_to_tokens(masked.original_ids[b].tolist())
        assert example.chosen == int((masked.labels[b] != -100).sum()) > 0
        assert example.special[0] and example.kinds[0] is None


def make_finished(store: RunStore, model, device: str, speeds, lstm: bool = False) -> RunRecord:
    created, _ = store.create({"model": model, "strategy": "random", "masking": "dynamic"})
    store.transition(created.id, RUNNING, pid=1)
    store.update(created.id, device=device)
    for n, speed in enumerate(speeds):
        store.append_metrics(created.id, {"step": n + 1, "tokens_per_s": speed})
    folder = store.folder(created.id) / "model"
    folder.mkdir()
    (folder / ("lstm_config.json" if lstm else "config.json")).write_text(json.dumps({"model_type": "bert"}))
    return store.transition(created.id, FINISHED)


def test_model_options_list_finished_transformer_runs_only(tmp_path, tiny_model_dir):
    store = RunStore(tmp_path / "runs")
    bert = make_finished(store, str(tiny_model_dir), "cpu", [1.0])
    lstm = make_finished(store, "scratch-lstm", "cpu", [1.0], lstm=True)
    options = finetune.model_options(store)
    assert [o.model for o in options[:4]] == [None, "scratch-transformer", "scratch-lstm", "scratch-gru"]
    assert [o.model for o in options[4:]] == [f"run:{bert.id}"]  # by id: no server path in a link or config
    assert options[4].label.startswith("run: random 15% · ")  # by its name
    with pytest.raises(ModelLoadError, match="LSTM"):
        finetune.load_tokenizer(str(store.folder(lstm.id) / "model"))
    with pytest.raises(ModelLoadError, match="LSTM"):
        finetune.resolve_run_model(f"run:{lstm.id}", store)
    assert finetune.resolve_run_model(f"run:{bert.id}", store) == store.folder(bert.id) / "model"


def test_tokenizer_loading_refuses_pickle_only_folders(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="pickle"):
        finetune.load_tokenizer(str(folder))


def test_model_limits(tiny_model_dir):
    assert finetune.model_limits(str(tiny_model_dir)) == (2, 64)
    assert finetune.model_limits("scratch-transformer") == (None, 512)  # its layers are not BERT's layer.N
    layers, longest = finetune.model_limits(None)
    assert layers == 6 and longest == 512
    assert Path(finetune._tokenizer_source(None)[0]).is_dir()
