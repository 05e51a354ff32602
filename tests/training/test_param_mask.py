"""Training with a parameter mask (W⊙M): magnitude or random, from the CLI flags and the Fine-tune page."""

from __future__ import annotations

import pytest
import torch
from support.apptest import open_app_page
from support.apptest import shown_errors as errors
from support.corpora import corpus_bytes

from mlm_core.text.corpus import read_corpus
from mlm_core.training.config import TrainConfig
from mlm_core.training.trainer import Trainer


@pytest.fixture(scope="module")
def corpus():
    return read_corpus(corpus_bytes(), "corpus.txt")


@pytest.mark.parametrize("kind", ["magnitude", "random"])
def test_masked_weights_start_and_stay_at_zero(tiny_model_dir, corpus, tmp_path, kind):
    config = TrainConfig(model=str(tiny_model_dir), device="cpu", steps=3, batch_size=4, seq_len=32, lr=1e-2,
                         eval_every=3, eval_blocks=4, heldout_fraction=0.2, prune_sparsity=0.4, prune_mask=kind)
    trainer = Trainer(config, corpus, tmp_path)
    assert trainer.prune
    parameters = dict(trainer.model.named_parameters())
    for name, keep in trainer.prune.items():
        assert not parameters[name][~keep].any(), name  # W⊙M before the first step
    trainer.run()
    hidden = sum(int((~keep).sum()) for keep in trainer.prune.values())
    total = sum(keep.numel() for keep in trainer.prune.values())
    assert hidden == pytest.approx(0.4 * total, rel=0.01)
    for name, keep in trainer.prune.items():
        assert not parameters[name][~keep].any(), name
        assert parameters[name][keep].ne(0).all(), name  # the kept weights still train
    if kind == "random":
        assert all(int((~keep).sum()) == round(0.4 * keep.numel()) for keep in trainer.prune.values())
        again = Trainer(config, corpus, tmp_path / "again")
        assert all(torch.equal(keep, again.prune[name]) for name, keep in trainer.prune.items())


def test_cli_flags_set_the_parameter_mask():
    from mlm_core.cli import build_parser
    from mlm_core.cli.training import train_config_from_args

    args = build_parser().parse_args(["train", "--corpus", "c.txt", "--prune", "0.3", "--prune-mask", "random"])
    config = train_config_from_args(args, "c.txt")
    assert (config.prune_sparsity, config.prune_mask) == (0.3, "random")


def test_finetune_page_takes_the_parameter_mask_from_its_link(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    app = open_app_page("app_pages/finetune.py", {"prune": "0.3", "prune_mask": "random"})
    assert not errors(app), errors(app)
    assert app.number_input(key="ft-prune").value == pytest.approx(0.3)
    assert app.radio(key="ft-prune-mask").value == "random"
    app.radio(key="ft-prune-mask").set_value("magnitude").run()
    assert "prune_mask" not in app.query_params  # the default leaves the link
