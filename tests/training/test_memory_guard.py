"""The training memory guard: a run's peak memory estimated from its settings and refused before it
starts when it does not fit; a step that runs out of CPU memory ends the run with a message.

What "available" means is fixed per test (``available=`` or a patched ``memory.available_memory``), so
the outcome does not depend on the machine the tests run on.
"""

from __future__ import annotations

import re

import pytest
import torch
from support.corpora import corpus_bytes

from mlm_core.cli import main
from mlm_core.errors import MemoryLimitError
from mlm_core.training import TrainConfig, costs, jobs, memory
from mlm_core.training.store import FAILED

GB = 1_000_000_000
CORPUS = corpus_bytes()
CPU_OUT_OF_MEMORY = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                     "you tried to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)")


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MASKLAB_MAX_RUNS", "1")


def small(model_dir, **overrides) -> TrainConfig:
    values = dict(model=str(model_dir), device="cpu", steps=3, batch_size=4, seq_len=32, eval_every=3, eval_blocks=4,
                  heldout_fraction=0.2)
    return TrainConfig(**{**values, **overrides})


@pytest.mark.parametrize("model", [None, "scratch-transformer", "scratch-lstm"])
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_the_estimate_grows_with_batch_and_length(model, device_type):
    def peak(batch: int, length: int) -> int:
        return memory.estimate_memory(TrainConfig(model=model, batch_size=batch, seq_len=length), device_type).peak_bytes

    batches = [peak(b, 128) for b in (1, 2, 8, 32, 512, 4096)]
    lengths = [peak(16, s) for s in (8, 32, 128, 512, 2048)]
    assert batches == sorted(batches) and len(set(batches)) == len(batches)
    assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths)


def test_the_estimate_reads_a_local_model_and_names_its_parts(tiny_model_dir):
    estimate = memory.estimate_memory(small(tiny_model_dir, batch_size=8, seq_len=64))
    assert set(estimate.parts) == {"process", "model and optimizer", "activations", "predictions at the masks"}
    assert estimate.peak_bytes == sum(estimate.parts.values()) == estimate.fixed_bytes + 8 * estimate.per_block_bytes
    assert memory.estimate_memory(TrainConfig(model="no-such-org/no-such-model")) is None  # unknown: no guess


def test_a_huge_batch_is_refused_with_the_estimate_what_is_free_and_a_batch_that_fits():
    config = TrainConfig(batch_size=4096, seq_len=512)
    with pytest.raises(MemoryLimitError) as refused:
        memory.check_memory(config, "cpu", available=8 * GB)
    message = str(refused.value)
    assert "batch 4,096 × 512 tokens" in message and "8.0 GB available" in message
    needed = memory.estimate_memory(config).peak_bytes
    assert f"needs about {costs.format_bytes(needed)}" in message
    batch = int(re.search(r"Choose a batch size of ([\d,]+) or less", message).group(1).replace(",", ""))
    fits = memory.estimate_memory(TrainConfig(batch_size=batch, seq_len=512)).peak_bytes
    too_big = memory.estimate_memory(TrainConfig(batch_size=2 * batch, seq_len=512)).peak_bytes
    assert fits <= 0.9 * 8 * GB < too_big  # the suggestion is the largest power of two that fits


def test_the_default_run_fits_and_one_block_too_many_asks_for_shorter_blocks_or_a_smaller_model():
    assert memory.check_memory(TrainConfig(), "cpu", available=8 * GB).batch_size == 16
    one_block = TrainConfig(batch_size=1, seq_len=4096)
    fixed = memory.estimate_memory(one_block).fixed_bytes
    with pytest.raises(MemoryLimitError, match=r"Even one block does not fit: choose blocks of [\d,]+ tokens"):
        memory.check_memory(one_block, "cpu", available=int(fixed / 0.9) + 300_000_000)
    with pytest.raises(MemoryLimitError, match="choose a smaller model"):
        memory.check_memory(one_block, "cpu", available=fixed // 2)


def test_gpu_runs_are_checked_against_free_gpu_memory():
    config = TrainConfig(batch_size=512, seq_len=512)
    cpu, gpu = memory.estimate_memory(config, "cpu"), memory.estimate_memory(config, "cuda")
    assert gpu.parts["activations"] < cpu.parts["activations"]  # bf16 autocast
    with pytest.raises(MemoryLimitError, match="the GPU has 4.0 GB available"):
        memory.check_memory(config, "cuda", available=4 * GB)


def test_submit_refuses_before_the_run_exists(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device_type: 2 * GB)
    store = jobs.default_store()
    with pytest.raises(MemoryLimitError, match="2.0 GB available"):
        jobs.submit(store, small(tiny_model_dir, batch_size=4096, seq_len=512), CORPUS, launch=False)
    assert store.list() == []
    record, created = jobs.submit(store, small(tiny_model_dir), CORPUS, launch=False)  # a small run still starts
    assert created and record.status != FAILED


def test_cli_train_refuses_a_huge_batch_in_one_line_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device_type: 8 * GB)
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(CORPUS)
    out = tmp_path / "runs"
    status = main(["train", "--corpus", str(corpus), "--batch", "4096", "--seq-len", "512", "--device", "cpu",
                   "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("error: This run needs about") and "Choose a batch size" in lines[0]
    assert jobs.RunStore(out).list() == []


def test_running_out_of_cpu_memory_in_a_step_fails_the_run_with_the_batch_size(tiny_model_dir, monkeypatch, capsys):
    from mlm_core.training import trainer as training

    def exhausted(self, step):
        raise RuntimeError(CPU_OUT_OF_MEMORY)

    store = jobs.default_store()
    record, _ = jobs.submit(store, small(tiny_model_dir), CORPUS, launch=False)
    monkeypatch.setattr(training.Trainer, "train_step", exhausted)
    done = jobs.execute(store, record.id)
    assert done.status == FAILED
    assert done.reason.startswith("Out of memory at step 1 with batch 4 × 32 tokens")
    assert "smaller batch" in done.reason
    assert "Traceback" not in capsys.readouterr().err


def test_a_python_memory_error_is_caught_too_and_other_errors_are_not():
    assert memory.out_of_cpu_memory(MemoryError())
    assert memory.out_of_cpu_memory(RuntimeError(CPU_OUT_OF_MEMORY))
    assert not memory.out_of_cpu_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not memory.out_of_cpu_memory(ValueError("DefaultCPUAllocator: can't allocate memory"))


def test_torch_cpu_allocation_failure_is_recognised():
    with pytest.raises(RuntimeError) as failed:
        torch.empty(10**15, dtype=torch.uint8)  # a petabyte: no machine gives it
    assert memory.out_of_cpu_memory(failed.value)


def test_fine_tune_page_says_it_will_not_fit_and_start_refuses(monkeypatch):
    from support.apptest import clear_streamlit_caches, open_app_page, shown_errors

    monkeypatch.setattr(memory, "available_memory", lambda device_type: 8 * GB)
    clear_streamlit_caches()
    try:
        app = open_app_page("app_pages/finetune.py")  # the demo corpus and the default model
        app.number_input(key="ft-batch").set_value(4096)
        app.number_input(key="ft-seq").set_value(512)
        app.run()
        assert not app.exception, app.exception
        assert any("Memory:" in c.value and "This run needs about" in c.value for c in app.caption)
        app.button(key="ft-start").click().run()
        assert not app.exception, app.exception
        refusals = [e for e in shown_errors(app) if "batch 4,096 × 512 tokens" in e]
        assert len(refusals) == 1 and "8.0 GB available" in refusals[0] and "Choose a batch size" in refusals[0]
        assert jobs.default_store().list() == []
    finally:
        clear_streamlit_caches()


def test_the_block_estimate_samples_the_whole_corpus(tiny_tokenizer):
    """Plain lines first, then lines that tokenise into one piece per character: the estimate must see both."""
    texts = ["the cat sat on the mat and the dog ran to the house " * 6] * 200 + ["! " * 160] * 4000
    from mlm_core.training.costs import estimate_train_blocks

    estimated = estimate_train_blocks(tiny_tokenizer, texts, 64, 0.0)
    ids = tiny_tokenizer(texts, add_special_tokens=False)["input_ids"]
    actual = sum(len(piece) + 1 for piece in ids) // 62
    assert 0.67 * actual <= estimated <= 1.5 * actual, (estimated, actual)
