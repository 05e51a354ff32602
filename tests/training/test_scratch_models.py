"""Models trained from scratch: the recurrent masked LM (LSTM/GRU) as a transformers model class, the
scratch models' sizes and per-kind defaults, and every trained model usable where a model goes.

The recurrent folders are tiny (16 wide, the 39-token fixture vocabulary of tests/conftest.py) and built
under the tests' temporary folder, which the pages may load from (conftest).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_VOCAB
from streamlit.testing.v1 import AppTest
from support import REPO
from support.apptest import clear_streamlit_caches
from support.apptest import shown_errors as errors

from mlm_core.cli import main
from mlm_core.errors import InputError, ModelLoadError
from mlm_core.model.loading import load_fresh, load_model
from mlm_core.training import costs, memory
from mlm_core.training.config import OPTIMIZER_DEFAULTS, SCRATCH_MODELS, SCRATCH_SIZES, TrainConfig
from ui.strategy import NONE

SENTENCE = "the cat sat on the [MASK]."
CELLS = ("lstm", "gru")


def build_tiny_recurrent(folder: Path, cell: str, seed: int = 0) -> Path:
    """A randomly initialised tiny recurrent masked LM and the fixture tokenizer, saved like a trained one."""
    from transformers import BertTokenizerFast

    from mlm_core.model.recurrent import RecurrentForMaskedLM, RecurrentMLMConfig

    folder.mkdir(parents=True, exist_ok=True)
    BertTokenizerFast(vocab={t: i for i, t in enumerate(TINY_VOCAB)}, do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(seed)
    config = RecurrentMLMConfig(vocab_size=len(TINY_VOCAB), embedding_size=12, hidden_size=16, num_hidden_layers=2,
                                cell=cell, architectures=["RecurrentForMaskedLM"])
    RecurrentForMaskedLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def recurrent_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recurrent")
    return {cell: build_tiny_recurrent(root / cell, cell) for cell in CELLS}


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


# ----------------------------------------------------------------------------- the model class


@pytest.mark.parametrize("cell", CELLS)
def test_saved_model_loads_back_with_the_same_logits(recurrent_dirs, cell, tmp_path):
    from transformers import AutoModelForMaskedLM

    loaded = load_fresh(str(recurrent_dirs[cell]), device="cpu")  # the checked loader, which registers the class
    model = loaded.model.eval()
    assert type(model).__name__ == "RecurrentForMaskedLM" and model.config.cell == cell
    copy = tmp_path / "copy"
    model.save_pretrained(copy)
    assert {p.name for p in copy.iterdir()} == {"config.json", "model.safetensors"}  # safetensors, no pickle
    again = AutoModelForMaskedLM.from_pretrained(copy, use_safetensors=True, trust_remote_code=False).eval()
    ids = torch.tensor([[2, 15, 19, 20, 4, 5, 3]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)


def test_forward_contract(recurrent_dirs):
    model = load_fresh(str(recurrent_dirs["gru"]), device="cpu").model.eval()
    ids = torch.tensor([[2, 15, 19, 20, 4, 5, 3]])
    out = model(input_ids=ids, labels=ids, output_attentions=True, output_hidden_states=True,
                token_type_ids=torch.zeros_like(ids))
    assert out.logits.shape == (1, 7, len(TINY_VOCAB)) and out.attentions is None
    assert len(out.hidden_states) == 3 and torch.isfinite(out.loss)  # the embeddings, then each layer
    embeds = model.get_input_embeddings()(ids)
    assert torch.allclose(model(inputs_embeds=embeds).logits, model(input_ids=ids).logits)
    with pytest.raises(ValueError, match="exactly one"):
        model(input_ids=ids, inputs_embeds=embeds)


def test_a_padded_batch_gives_each_sentence_its_own_result(recurrent_dirs):
    """Trailing padding is packed away: a sentence scores the same alone or padded beside a longer one."""
    model = load_fresh(str(recurrent_dirs["lstm"]), device="cpu").model.eval()
    short, long = [2, 15, 4, 3], [2, 15, 19, 20, 4, 5, 3]
    batch = torch.tensor([short + [0] * 3, long])
    mask = torch.tensor([[1] * 4 + [0] * 3, [1] * 7])
    with torch.no_grad():
        together = model(input_ids=batch, attention_mask=mask).logits
        alone = model(input_ids=torch.tensor([short])).logits
    assert torch.allclose(together[0, :4], alone[0], atol=1e-6)


# ----------------------------------------------------------------------------- where a model goes


@pytest.mark.parametrize("cell", CELLS)
def test_predict_cli_takes_the_folder(recurrent_dirs, cell, capsys):
    capsys.readouterr()
    assert main(["predict", "--model", str(recurrent_dirs[cell]), SENTENCE, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["predictions"][0]["position"] == 6 and len(result["predictions"][0]["top"]) == 5


def test_attention_views_say_the_model_has_none(recurrent_dirs, capsys):
    from mlm_core.explain.attention import attention_maps
    from mlm_core.explain.whatif import head_importance, mask_heads

    loaded = load_model(str(recurrent_dirs["lstm"]), device="cpu")
    assert not loaded.has_attention and loaded.num_heads == 0
    ids = [2, 15, 19, 20, 4, 5, 3]
    for action in (lambda: attention_maps(loaded, ids), lambda: head_importance(loaded, ids, 4),
                   lambda: mask_heads(loaded, ids, [4], [(0, 0)])):
        with pytest.raises(InputError, match=r"recurrent \(LSTM\) masked LM, without attention weights"):
            action()
    capsys.readouterr()
    assert main(["attend", "--model", str(recurrent_dirs["lstm"]), SENTENCE]) == 2
    assert capsys.readouterr().err.startswith("error: Attention weights: this model is a recurrent (LSTM)")


def test_predictions_exclusion_and_attribution_work(recurrent_dirs):
    from mlm_core.explain.attribution import attribute
    from mlm_core.explain.predict import predict
    from mlm_core.explain.whatif import count_hooks, exclude_tokens

    loaded = load_model(str(recurrent_dirs["gru"]), device="cpu")
    ids = [2, 15, 19, 20, 4, 5, 3]
    prediction = predict(loaded, ids, output_attentions=True)
    assert prediction.attentions is None and not prediction.notices  # no attention, and no window notice
    whatif = exclude_tokens(loaded, ids, [4], [False, True, False, False, False, False, False])
    assert whatif[0].before.top[0].prob != whatif[0].after.top[0].prob  # the context changed the guess
    hooks = count_hooks(loaded.model)
    result = attribute(loaded, ids, 4, method="ig", steps=8)
    assert len(result.scores) == len(ids) and torch.isfinite(torch.tensor(result.scores)).all()
    assert result.scores[1:6].any() and count_hooks(loaded.model) == hooks  # the context mattered; no hook left


def test_explore_page_shows_predictions_and_says_why_no_attention(recurrent_dirs):
    clear_streamlit_caches()
    try:
        app = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        app.query_params["text"] = SENTENCE
        app.query_params["model"] = str(recurrent_dirs["gru"])
        app.query_params["strategy"] = NONE  # the typed mask only
        app.run()
        assert not app.exception, app.exception
        assert not errors(app), errors(app)
        assert [c for c in app.get("plotly_chart") if c.key.startswith("topk-")]  # the guesses' charts
        assert any("recurrent (GRU) masked LM, without attention weights" in i.value for i in app.info)
    finally:
        clear_streamlit_caches()


# ----------------------------------------------------------------------------- hostile recurrent folders


HOSTILE = {
    "100,000 layers": ({"num_hidden_layers": 100_000}, "declares 100,000 layers"),
    "hidden of 2e6": ({"hidden_size": 2_000_000}, "would take .* GB of memory"),
    "embedding as text": ({"embedding_size": "16"}, "gives embedding_size as \"16\", not a positive whole number"),
    "vocabulary of 0": ({"vocab_size": 0}, "gives vocab_size as 0, not a positive whole number"),
    "odd hidden": ({"hidden_size": 17}, "settings that do not fit .*hidden_size must be even"),
    "unknown cell": ({"cell": "transformer"}, "settings that do not fit .*cell must be one of lstm, gru"),
    "remote code": ({"auto_map": {"AutoModelForMaskedLM": "x.Model"}}, "asks to run its own code"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_recurrent_config_is_refused_before_allocation(recurrent_dirs, tmp_path, case, capsys):
    import re

    folder = shutil.copytree(recurrent_dirs["lstm"], tmp_path / "hostile")
    changes, message = HOSTILE[case]
    edit_config(folder, **changes)
    with pytest.raises(ModelLoadError) as caught:
        load_fresh(str(folder), device="cpu")
    assert re.search(message, str(caught.value)), caught.value
    capsys.readouterr()
    assert main(["predict", "--model", str(folder), SENTENCE]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ----------------------------------------------------------------------------- settings


def test_defaults_by_kind_of_model_and_sizes_resolved():
    pretrained, scratch = OPTIMIZER_DEFAULTS["pretrained"], OPTIMIZER_DEFAULTS["scratch"]
    assert (TrainConfig().lr, TrainConfig().warmup_ratio) == (pretrained["lr"], pretrained["warmup_ratio"])
    for name in SCRATCH_MODELS:
        config = TrainConfig(model=name)
        assert (config.lr, config.warmup_ratio) == (scratch["lr"], scratch["warmup_ratio"])
        assert config.scratch_hidden == SCRATCH_SIZES[name]["hidden"]
    assert TrainConfig(model="scratch-gru", lr=3e-4).lr == 3e-4  # a given value wins
    assert TrainConfig(model="scratch-lstm", scratch_hidden=64).scratch_embedding == 64  # as wide as the layers
    assert TrainConfig(model="scratch-transformer").scratch_embedding is None  # a BERT has no separate width
    assert TrainConfig.from_dict(TrainConfig(model="scratch-gru").to_dict()) == TrainConfig(model="scratch-gru")


@pytest.mark.parametrize("settings, message", [
    (dict(model="scratch-transformer", scratch_hidden=100, scratch_heads=3), "must be divisible by scratch_heads"),
    (dict(model="scratch-gru", scratch_hidden=33), "must be even for scratch-gru"),
    (dict(model="scratch-lstm", scratch_heads=2), "scratch_heads applies to scratch-transformer only"),
    (dict(model="scratch-transformer", scratch_embedding=64), "scratch_embedding applies to scratch-lstm and"),
    (dict(scratch_layers=3), "apply to models trained from scratch"),
    (dict(model="scratch-gru", scratch_layers=0), "scratch_layers must be"),
])
def test_size_combinations_that_do_not_fit_are_refused(settings, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**settings)


def test_sizes_are_train_flags_and_reach_the_estimates():
    from mlm_core.cli.training import train_setting_specs

    flags = {spec.name for spec in train_setting_specs()}
    assert {"scratch_hidden", "scratch_layers", "scratch_heads", "scratch_embedding"} <= flags
    small = TrainConfig(model="scratch-gru", scratch_hidden=32, scratch_layers=1)
    large = TrainConfig(model="scratch-gru", scratch_hidden=512, scratch_layers=4)
    assert costs.parameter_count("scratch-gru", costs.scratch_sizes(small)) < costs.parameter_count("scratch-gru")
    assert memory.estimate_memory(small).peak_bytes < memory.estimate_memory(large).peak_bytes


# ----------------------------------------------------------------------------- training end to end


@pytest.mark.parametrize("model", list(SCRATCH_MODELS))
def test_train_json_names_a_model_folder_predict_takes(model, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat.\nparis is the capital of france.\nthe dog ran home.\n" * 20)
    sizes = ["--scratch-hidden", "16", "--scratch-layers", "1"]
    sizes += ["--scratch-heads", "2"] if model == "scratch-transformer" else ["--scratch-embedding", "8"]
    capsys.readouterr()
    status = main(["train", "--corpus", str(corpus), "--model", model, *sizes, "--steps", "2", "--batch", "2",
                   "--seq-len", "16", "--out", str(tmp_path / "runs"), "--device", "cpu", "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    final = json.loads(lines[-1])
    assert status == 0 and final["status"] == "finished", final.get("reason")
    assert final["config"]["lr"] == OPTIMIZER_DEFAULTS["scratch"]["lr"] and final["config"]["scratch_hidden"] == 16
    folder = Path(final["model_path"])
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert main(["predict", "--model", str(folder), "paris is the [MASK] of france.", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["position"] == 4


# ----------------------------------------------------------------------------- runs saved before this class


def write_legacy_lstm(folder: Path, hidden: int = 16, layers: int = 2) -> torch.nn.Module:
    """An LSTM as earlier MaskLab runs saved it: lstm.safetensors + lstm_config.json + the tokenizer."""
    from safetensors.torch import save_file
    from torch import nn
    from transformers import BertTokenizerFast

    class LegacyLSTM(nn.Module):  # the earlier training.scratch.LSTMForMaskedLM, verbatim in its layers
        def __init__(self):
            super().__init__()
            self.embeddings = nn.Embedding(len(TINY_VOCAB), hidden)
            self.lstm = nn.LSTM(hidden, hidden // 2, num_layers=layers, batch_first=True, bidirectional=True)
            self.norm = nn.LayerNorm(hidden)
            self.decoder = nn.Linear(hidden, len(TINY_VOCAB))

        def forward(self, input_ids):
            return self.decoder(self.norm(self.lstm(self.embeddings(input_ids))[0]))

    torch.manual_seed(1)
    legacy = LegacyLSTM().eval()
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in legacy.state_dict().items()}, str(folder / "lstm.safetensors"))
    (folder / "lstm_config.json").write_text(json.dumps(
        {"model_type": "lstm", "vocab_size": len(TINY_VOCAB), "hidden": hidden, "layers": layers}))
    BertTokenizerFast(vocab={t: i for i, t in enumerate(TINY_VOCAB)}, do_lower_case=True).save_pretrained(folder)
    return legacy


def test_an_earlier_lstm_run_is_converted_when_its_model_is_opened(tmp_path):
    from mlm_core.training.planning import is_lstm_folder, resolve_run_model, run_model_folder
    from mlm_core.training.store import FINISHED, RUNNING, RunStore

    store = RunStore(tmp_path / "runs")
    record, _ = store.create({"model": "scratch-lstm", "strategy": "random", "masking": "dynamic"})
    store.transition(record.id, RUNNING, pid=1)
    record = store.transition(record.id, FINISHED)
    legacy = write_legacy_lstm(store.folder(record.id) / "model")
    assert is_lstm_folder(store.folder(record.id) / "model")
    folder = run_model_folder(store, record)
    assert not is_lstm_folder(folder) and resolve_run_model(f"run:{record.id}", store) == folder
    loaded = load_fresh(str(folder), device="cpu")
    ids = torch.tensor([[2, 15, 19, 20, 4, 5, 3]])
    with torch.no_grad():
        assert torch.allclose(loaded.model.eval()(input_ids=ids).logits, legacy(ids), atol=1e-6)


def test_an_earlier_lstm_that_cannot_be_converted_gets_a_clear_message(tmp_path):
    from mlm_core.training.planning import is_lstm_folder, resolve_run_model, run_model_folder
    from mlm_core.training.store import FINISHED, RUNNING, RunStore

    store = RunStore(tmp_path / "runs")
    record, _ = store.create({"model": "scratch-lstm", "strategy": "random", "masking": "dynamic"})
    store.transition(record.id, RUNNING, pid=1)
    record = store.transition(record.id, FINISHED)
    write_legacy_lstm(store.folder(record.id) / "model")
    (store.folder(record.id) / "model" / "lstm.safetensors").write_bytes(b"damaged")
    assert is_lstm_folder(run_model_folder(store, record))  # left as it was
    with pytest.raises(ModelLoadError, match="LSTM saved by an earlier MaskLab that cannot be converted"):
        resolve_run_model(f"run:{record.id}", store)


# ----------------------------------------------------------------------------- the Fine-tune page


def test_finetune_page_shows_a_scratch_models_sizes_and_learning_rate(tmp_path, monkeypatch):
    from support.apptest import open_app_page

    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    clear_streamlit_caches()
    try:
        app = open_app_page("app_pages/finetune.py", {"model": "scratch-gru", "scratch_hidden": "64"})
        assert not errors(app), errors(app)
        keys = {w.key for w in app.number_input}
        assert {"ft-scratch-hidden-scratch-gru", "ft-scratch-layers-scratch-gru",
                "ft-scratch-embedding-scratch-gru"} <= keys and "ft-scratch-heads-scratch-gru" not in keys
        assert app.number_input(key="ft-scratch-hidden-scratch-gru").value == 64  # from the link
        assert app.number_input(key="ft-lr-scratch").value == OPTIMIZER_DEFAULTS["scratch"]["lr"]
        app.number_input(key="ft-scratch-hidden-scratch-gru").set_value(33).run()
        assert any("must be even for scratch-gru" in e for e in errors(app))
        plain = open_app_page("app_pages/finetune.py")
        assert not [w for w in plain.number_input if w.key.startswith("ft-scratch-")]
        assert plain.number_input(key="ft-lr").value == OPTIMIZER_DEFAULTS["pretrained"]["lr"]
    finally:
        clear_streamlit_caches()
