"""Static masking is static: every epoch gives each block the same mask, whatever else is set.

Counted the way the issue measured it: over every training block, how many got a different mask
(corrupted ids or labels) in epoch 2 than in epoch 1. Static runs count 0 in every combination
they accept; the combinations that would change the mask (a moving rate, adaptive masking) are
refused before a run starts; dynamic runs count more than 0.
"""

from __future__ import annotations

import pytest
import torch
from support.apptest import open_app_page
from support.apptest import shown_errors as errors
from support.cli import run_cli
from support.corpora import corpus_bytes

from mlm_core.errors import InputError
from mlm_core.text.corpus import read_corpus
from mlm_core.training import checkpoints
from mlm_core.training.config import TrainConfig
from mlm_core.training.trainer import Trainer, TrainingCallbacks

STATIC_COMBINATIONS = {
    "random": {},
    "whole-word": dict(strategy="whole-word"),
    "span": dict(strategy="span"),
    "rule-based": dict(strategy="rule-based", strategy_params={"rule": "stopwords"}),
    "linear-not-moving": dict(rate_schedule="linear", rate_start=0.3),  # the end defaults to the start
    "constant-with-an-end": dict(rate_schedule="constant", rate_start=0.3, rate_end=0.1),  # constant ignores it
}
REFUSED = {
    "linear": (dict(rate_schedule="linear", rate_start=0.4, rate_end=0.1), "rate cannot change"),
    "cosine": (dict(rate_schedule="cosine", rate_start=0.3, rate_end=0.15), "rate cannot change"),
    "adaptive": (dict(strategy="adaptive", strategy_params={"uniform_mix": 0.2}), "adaptive masking chooses"),
}


@pytest.fixture(scope="module")
def corpus():
    return read_corpus(corpus_bytes(), "corpus.txt")


def config(model_dir, **overrides) -> TrainConfig:
    settings = dict(model=str(model_dir), device="cpu", steps=60, batch_size=4, seq_len=32, lr=1e-3,
                    eval_every=30, eval_blocks=4, checkpoint_every=2, heldout_fraction=0.2, seed=3)
    return TrainConfig(**{**settings, **overrides})


def masks_by_epoch(trainer: Trainer, epoch: int, ranks: int = 1) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Block -> (corrupted ids, labels) as the training loop draws them over ``epoch``.

    ``ranks`` > 1 splits each step's rows as ``train_step`` does on each process (rows[rank::ranks]).
    """
    drawn = {}
    per_epoch = trainer.batches_per_epoch
    for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
        rows, step_epoch = trainer.rows_for(step)
        assert step_epoch == epoch
        for rank in range(ranks):
            share = rows[rank::ranks]
            masked, _ = trainer.mask(share, step_epoch, step)
            for n, block in enumerate(share):
                drawn[block] = (masked.input_ids[n].clone(), masked.labels[n].clone())
    return drawn


def changed_blocks(first: dict, second: dict) -> int:
    """Blocks drawn in both epochs whose mask differs (an epoch leaves out the blocks of a partial batch)."""
    both = first.keys() & second.keys()
    assert len(both) >= len(first) // 2
    return sum(not (torch.equal(first[b][0], second[b][0]) and torch.equal(first[b][1], second[b][1]))
               for b in both)


@pytest.mark.parametrize("settings", STATIC_COMBINATIONS.values(), ids=STATIC_COMBINATIONS.keys())
def test_static_gives_every_block_the_same_mask_each_epoch(tiny_model_dir, corpus, tmp_path, settings):
    trainer = Trainer(config(tiny_model_dir, masking="static", **settings), corpus, tmp_path)
    assert trainer.total_steps > 2 * trainer.batches_per_epoch  # the run really has a second epoch
    first, second = masks_by_epoch(trainer, 0), masks_by_epoch(trainer, 1)
    assert any(int((labels != -100).sum()) for _, labels in first.values())  # something was masked
    assert changed_blocks(first, second) == 0
    assert changed_blocks(first, masks_by_epoch(trainer, 2, ranks=2)) == 0  # two processes draw the same rows


@pytest.mark.parametrize("settings", [*STATIC_COMBINATIONS.values(), REFUSED["linear"][0], REFUSED["adaptive"][0]],
                         ids=[*STATIC_COMBINATIONS.keys(), "linear", "adaptive"])
def test_dynamic_gives_blocks_a_fresh_mask_each_epoch(tiny_model_dir, corpus, tmp_path, settings):
    trainer = Trainer(config(tiny_model_dir, masking="dynamic", **settings), corpus, tmp_path)
    first = masks_by_epoch(trainer, 0)
    trainer.token_loss = torch.rand(trainer.token_loss.shape, generator=torch.Generator().manual_seed(0))
    assert changed_blocks(first, masks_by_epoch(trainer, 1)) > 0


@pytest.mark.parametrize("name", REFUSED)
def test_static_refuses_what_would_change_its_masks(tiny_model_dir, name):
    settings, reason = REFUSED[name]
    with pytest.raises(InputError, match=reason):
        config(tiny_model_dir, masking="static", **settings)
    config(tiny_model_dir, masking="dynamic", **settings)  # dynamic takes them


def test_static_masks_survive_resume(tiny_model_dir, corpus, tmp_path):
    class StopAfter(TrainingCallbacks):
        def on_step(self, step, total, loss):
            if step == 3:
                raise KeyboardInterrupt("killed")

    settings = config(tiny_model_dir, masking="static", strategy="whole-word")
    uninterrupted = masks_by_epoch(Trainer(settings, corpus, tmp_path / "reference"), 0)
    with pytest.raises(KeyboardInterrupt):
        Trainer(settings, corpus, tmp_path / "run", StopAfter()).run()
    latest = checkpoints.latest_valid(tmp_path / "run" / "checkpoints")
    resumed = Trainer(settings, corpus, tmp_path / "run")
    assert resumed.restore(latest)[0] == 2
    assert changed_blocks(uninterrupted, masks_by_epoch(resumed, 1)) == 0


def test_cli_refuses_static_with_a_moving_rate(capsys, tmp_path, tiny_model_dir):
    (tmp_path / "c.txt").write_bytes(corpus_bytes(20))
    status, out, err = run_cli(capsys, "train", "--corpus", tmp_path / "c.txt", "--model", tiny_model_dir, "--static",
                               "--rate-schedule", "linear", "--rate-start", "0.4", "--rate-end", "0.1",
                               "--out", tmp_path / "runs")
    assert status == 2
    assert err.startswith("error:") and "use dynamic masking with a rate schedule" in err
    assert "Traceback" not in err + out


def test_finetune_page_says_why_static_refuses_a_moving_rate(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    app = open_app_page("app_pages/finetune.py", {"masking": "static", "schedule": "linear", "rate_start": "0.4",
                                                  "rate_end": "0.1"})
    assert not app.exception, app.exception
    assert app.radio(key="ft-masking").value == "static"
    assert any("rate cannot change" in e for e in errors(app)), errors(app)
    app.radio(key="ft-masking").set_value("dynamic").run()
    assert not any("rate cannot change" in e for e in errors(app))
