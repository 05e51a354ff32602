"""The training engine on the tiny BERT: masks, eval set, exact resume, faults (seconds each)."""

from __future__ import annotations

import math

import pytest
import torch
from support.corpora import corpus_bytes

from mlm_core.model.forward import masked_logits
from mlm_core.text.corpus import read_corpus
from mlm_core.training import checkpoints
from mlm_core.training.config import CHECKPOINTS_RESUME_NEEDS, OPTIMIZER_DEFAULTS
from mlm_core.training.trainer import (
    MAX_OOM_RETRIES,
    Cancelled,
    Diverged,
    TrainConfig,
    Trainer,
    TrainingCallbacks,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus():
    return read_corpus(corpus_bytes(), "corpus.txt")


def config(model_dir, **overrides) -> TrainConfig:
    settings = dict(model=str(model_dir), device="cpu", steps=8, batch_size=4, seq_len=32, lr=1e-3,
                    eval_every=1, eval_blocks=8, checkpoint_every=3, heldout_fraction=0.2, seed=3)
    return TrainConfig(**{**settings, **overrides})


class Recorder(TrainingCallbacks):
    """Keeps every evaluation; optionally dies (like a SIGKILL) after step ``die_after``."""

    def __init__(self, die_after: int | None = None):
        self.evals, self.checkpoints, self.die_after = [], [], die_after

    def on_step(self, step, total, loss):
        if step == self.die_after:
            raise KeyboardInterrupt("killed")

    def on_eval(self, record):
        self.evals.append(record)

    def on_checkpoint(self, step, path):
        self.checkpoints.append(step)


def losses(records: list[dict]) -> list[tuple]:
    return [(r["step"], r["train_loss"], r["heldout_loss"], r["masked_accuracy"], r["masking_rate"])
            for r in records]


# ----------------------------------------------------------------------------- masks


def test_static_masks_repeat_across_epochs_and_dynamic_masks_do_not(tiny_model_dir, corpus, tmp_path):
    rows = [0, 1, 2, 3]
    static = Trainer(config(tiny_model_dir, masking="static"), corpus, tmp_path / "s")
    dynamic = Trainer(config(tiny_model_dir, masking="dynamic"), corpus, tmp_path / "d")
    s0, s1 = static.mask(rows, 0, 0)[0], static.mask(rows, 5, 40)[0]
    d0, d1 = dynamic.mask(rows, 0, 0)[0], dynamic.mask(rows, 1, 40)[0]
    assert torch.equal(s0.input_ids, s1.input_ids) and torch.equal(s0.labels, s1.labels)
    assert not torch.equal(d0.labels, d1.labels)
    assert torch.equal(d0.labels, dynamic.mask(rows, 0, 7)[0].labels)  # reproducible: (seed, block, epoch)
    # A block's mask does not depend on its batch neighbours or position in the batch.
    assert torch.equal(static.mask([2, 9], 3, 0)[0].labels[0], s0.labels[2])
    # The training loop draws through the same policy: each epoch visits every block once.
    assert static.batches_per_epoch * static.batch_size <= len(static.train_data)
    seen = [r for step in range(static.batches_per_epoch) for r in static.rows_for(step)[0]]
    assert len(seen) == len(set(seen)) == static.batches_per_epoch * static.batch_size
    assert static.rows_for(0)[0] != static.rows_for(static.batches_per_epoch)[0]  # reshuffled per epoch


def test_every_run_is_evaluated_on_the_same_fixed_masks(tiny_model_dir, corpus, tmp_path):
    one = Trainer(config(tiny_model_dir, strategy="whole-word", masking="static", seed=1), corpus, tmp_path / "a")
    two = Trainer(config(tiny_model_dir, strategy="span", masking="dynamic", seed=9,
                         rate_schedule="linear", rate_start=0.4, rate_end=0.1), corpus, tmp_path / "b")
    (batch_a, mask_a), (batch_b, mask_b) = one.eval_batch, two.eval_batch
    assert torch.equal(batch_a.ids, batch_b.ids)
    assert torch.equal(mask_a.input_ids, mask_b.input_ids) and torch.equal(mask_a.labels, mask_b.labels)
    assert int((mask_a.labels != -100).sum()) > 0
    before = mask_a.labels.clone()
    one.run()
    assert one.eval_batch[1].labels is mask_a.labels and torch.equal(mask_a.labels, before)


def test_masked_logits_match_the_full_model_output(tiny_model_dir, corpus, tmp_path):
    trainer = Trainer(config(tiny_model_dir), corpus, tmp_path)
    trainer.model.eval()
    masked, _ = trainer.mask([0, 1, 2], 0, 0)
    chosen = masked.labels != -100
    attention = trainer.attention(masked, torch.arange(3))
    with torch.no_grad():
        ours = masked_logits(trainer.model, masked.input_ids, attention, chosen)
        reference = trainer.model(input_ids=masked.input_ids, attention_mask=attention).logits[chosen]
    assert ours.shape == (int(chosen.sum()), trainer.vocab.vocab_size)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- runs and resume


def test_the_same_seed_gives_the_same_run_in_one_process(tiny_model_dir, corpus, tmp_path):
    first, second = Recorder(), Recorder()
    torch.manual_seed(123)  # whatever ran before must not matter (dropout draws from the global RNG)
    Trainer(config(tiny_model_dir, steps=4), corpus, tmp_path / "a", first).run()
    torch.rand(7)
    Trainer(config(tiny_model_dir, steps=4), corpus, tmp_path / "b", second).run()
    assert losses(first.evals) == losses(second.evals)
    assert all(math.isfinite(r["heldout_loss"]) for r in first.evals)


@pytest.mark.parametrize(
    "settings",
    [
        dict(eval_every=2, checkpoint_every=3),  # resume falls between two evaluations
        dict(strategy="adaptive", strategy_params={"uniform_mix": 0.2}, masking="dynamic",
             rate_schedule="linear", rate_start=0.4, rate_end=0.15, steps=18, batch_size=8),  # epochs > 1
    ],
    ids=["random-dynamic", "adaptive-dynamic-schedule"],
)
def test_resuming_from_a_checkpoint_gives_the_uninterrupted_losses(tiny_model_dir, corpus, tmp_path, settings):
    reference = Recorder()
    Trainer(config(tiny_model_dir, **settings), corpus, tmp_path / "ref", reference).run()

    crashed = Recorder(die_after=5)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(tiny_model_dir, **settings), corpus, tmp_path / "run", crashed).run()
    latest = checkpoints.latest_valid(tmp_path / "run" / "checkpoints")
    assert latest is not None and latest.name == "step-00000003"
    torch.rand(5)  # the RNG state comes from the checkpoint, not from this process
    resumed = Recorder()
    result = Trainer(config(tiny_model_dir, **settings), corpus, tmp_path / "run", resumed).run(latest)
    kept = [r for r in crashed.evals if r["step"] <= 3]
    assert losses(kept + resumed.evals) == losses(reference.evals)
    assert result["step"] == reference.evals[-1]["step"]


# ----------------------------------------------------------------------------- faults


def test_nan_loss_stops_the_run_as_diverged_naming_the_step(tiny_model_dir, corpus, tmp_path, monkeypatch):
    original = Trainer.train_step

    def poisoned(self, step):
        if step == 2:
            with torch.no_grad():
                self.model.bert.embeddings.LayerNorm.weight.fill_(float("inf"))
        return original(self, step)

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    with pytest.raises(Diverged, match="at step 3"):
        Trainer(config(tiny_model_dir), corpus, tmp_path).run()


def test_a_huge_learning_rate_on_a_poisoned_model_diverges(tiny_model_dir, corpus, tmp_path):
    lr = TrainConfig.spec("lr").max  # the largest learning rate a user may set
    trainer = Trainer(config(tiny_model_dir, lr=lr, grad_clip=0.0, warmup_ratio=0.0), corpus, tmp_path)
    with torch.no_grad():
        trainer.model.cls.predictions.transform.dense.weight.mul_(1e38)  # finite, but overflows at once
    with pytest.raises(Diverged, match=r"the loss became (nan|inf) at step \d+"):
        trainer.run()


def test_cuda_out_of_memory_splits_the_batch_then_gives_up(tiny_model_dir, corpus, tmp_path, monkeypatch):
    original = Trainer.train_step
    failures = {"left": 2, "calls": 0}

    def flaky(self, step):
        failures["calls"] += 1
        if failures["left"]:
            failures["left"] -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, step)

    monkeypatch.setattr(Trainer, "train_step", flaky)
    trainer = Trainer(config(tiny_model_dir, steps=2, batch_size=8), corpus, tmp_path / "a")
    trainer.run()
    assert trainer.micro_batches == 4  # doubled twice, the same effective batch in smaller pieces

    failures["left"], failures["calls"] = 10**6, 0
    trainer = Trainer(config(tiny_model_dir, steps=2, batch_size=8), corpus, tmp_path / "b")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        trainer.run()
    assert failures["calls"] == MAX_OOM_RETRIES + 1  # bounded
    assert trainer.micro_batches == min(2**MAX_OOM_RETRIES, trainer.batch_size)


def test_micro_batches_give_the_same_gradient_step(tiny_model_dir, corpus, tmp_path):
    whole = Trainer(config(tiny_model_dir, steps=1, batch_size=8), corpus, tmp_path / "a")
    split = Trainer(config(tiny_model_dir, steps=1, batch_size=8), corpus, tmp_path / "b")
    split.micro_batches = 4
    for trainer in (whole, split):
        trainer.model.eval()  # no dropout: the two must agree up to summation order
        trainer.train_step(0)
    for (name, a), (_, b) in zip(whole.model.named_parameters(), split.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_should_stop_cancels_between_steps(tiny_model_dir, corpus, tmp_path):
    class StopAtThree(Recorder):
        def should_stop(self):
            return len(self.evals) >= 3

    with pytest.raises(Cancelled, match="step 3"):
        Trainer(config(tiny_model_dir), corpus, tmp_path, StopAtThree()).run()


@pytest.mark.parametrize(("keep", "kept"), [(None, [8]), (2, [6, 8])])
def test_checkpoints_keep_only_what_resume_needs(tiny_model_dir, corpus, tmp_path, keep, kept):
    """The default keeps the newest checkpoint only (resume needs no more); the best one is not kept."""
    recorder = Recorder()
    settings = {} if keep is None else {"keep_checkpoints": keep}
    trainer = Trainer(config(tiny_model_dir, steps=10, checkpoint_every=2, eval_every=5, **settings), corpus,
                      tmp_path, recorder)
    result = trainer.run()
    assert recorder.checkpoints == [2, 4, 6, 8]  # none at the last step: the final model is saved instead
    found = checkpoints.checkpoints(tmp_path / "checkpoints")
    assert [int(p.name.split("-")[1]) for p in found] == kept
    assert all(checkpoints.verify(p) for p in found)
    timing = result["timing"]  # what the next run's estimate is made of
    assert (timing["steps"], timing["evals"], timing["checkpoints"]) == (10, 2, 4)
    assert all(timing[k] > 0 for k in ("step_s", "eval_s", "checkpoint_s", "final_s", "first_step_s"))
    assert (timing["batch_size"], timing["seq_len"]) == (trainer.batch_size, 32)


def test_the_default_retention_is_what_resume_needs():
    assert TrainConfig().keep_checkpoints == CHECKPOINTS_RESUME_NEEDS == 1


def test_config_validation_names_every_problem():
    with pytest.raises(ValueError) as info:
        TrainConfig(masking="sometimes", steps=0, lr=2.0, seq_len=4)
    message = str(info.value)
    for part in ("masking must be one of static, dynamic", "steps must be", "lr must be", "seq_len must be"):
        assert part in message
    with pytest.raises(ValueError) as info:
        TrainConfig(eval_every=0, checkpoint_every=0, keep_checkpoints=0, warmup_ratio=1.0, grad_clip=-1)
    message = str(info.value)
    for part in ("eval_every must be", "checkpoint_every must be", "keep_checkpoints must be", "warmup_ratio",
                 "grad_clip must be a number of at least 0"):
        assert part in message
    with pytest.raises(ValueError, match="Unknown masking strategy"):
        TrainConfig(strategy="nonsense")
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), "future_field": 1}) == TrainConfig()


def test_each_setting_is_declared_once_and_the_cadence_follows_one_rule():
    lr = TrainConfig.spec("lr")
    assert (lr.default, lr.min, lr.max) == (None, 1e-7, 0.5)  # the UI's bounds: they protect users
    assert TrainConfig().lr == OPTIMIZER_DEFAULTS["pretrained"]["lr"]  # None: the kind of model's default
    with pytest.raises(ValueError, match="lr must be a number from 1e-07 to 0.5"):
        TrainConfig(lr=0.6)
    assert TrainConfig.spec("steps").default == TrainConfig().steps == 200
    # Left unset, about 20 evaluations per run and a checkpoint every 5 evaluations.
    assert (TrainConfig(steps=400).eval_every, TrainConfig(steps=400).checkpoint_every) == (20, 100)
    assert TrainConfig.cadence(400) == {"eval_every": 20, "checkpoint_every": 100}
    assert TrainConfig.cadence(400, eval_every=7, checkpoint_evals=2) == {"eval_every": 7, "checkpoint_every": 14}
    assert TrainConfig(steps=8).eval_every == 1  # never 0
    assert TrainConfig(steps=None, epochs=2).eval_every == 50  # no step count yet: as for 1,000 steps
    given = TrainConfig(steps=400, eval_every=30, checkpoint_every=45)
    assert (given.eval_every, given.checkpoint_every) == (30, 45)
    assert TrainConfig.from_dict(given.to_dict()) == given  # stored resolved: a run never changes cadence
    with pytest.raises(ValueError, match="give steps or epochs"):
        TrainConfig(steps=None)


def test_privacy_replaces_personal_data_before_packing_and_combined_strategies_keep_their_rate(tiny_model_dir):
    from transformers import AutoTokenizer

    from mlm_core.masking import params_of, strategy_from_params
    from mlm_core.training import rate_schedule, training_texts

    strategy = strategy_from_params("compose", {"steps": [
        {"name": "privacy", "params": {}},
        {"name": "rule-based", "params": {"rule": "stopwords", "mode": "protect"}},
        {"name": "random", "params": {"mlm_probability": 0.3}},
    ]})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = training_texts(("mail bob@example.org now", "the cat sat"), strategy, tokenizer)
    assert "bob@example.org" not in texts[0] and texts[1] == "the cat sat"
    cfg = TrainConfig(model=str(tiny_model_dir), strategy="compose", strategy_params=params_of(strategy))
    assert rate_schedule(strategy, cfg, 10).rate(0) == pytest.approx(0.3)  # not the 0.15 default
