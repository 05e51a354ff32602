"""benchmarks/gpu.py: its FLOPs formula, its measuring loop (run here on the CPU with the tiny model), and
what it does on a machine without a GPU (says so, exits 0, writes nothing)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch
from support import REPO
from transformers import AutoModelForMaskedLM

from benchmarks import gpu


def test_without_a_gpu_it_says_so_and_exits_0():
    if torch.cuda.is_available():
        return  # the real benchmark runs on such a machine; this test is for the others
    done = subprocess.run([sys.executable, "benchmarks/gpu.py"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("no GPU here")


def test_the_flops_formula_by_hand():
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32)
    model = BertForMaskedLM(config)
    # per layer: Q, K, V, attention output (16 x 16 each), intermediate 16 x 32 and output 32 x 16
    linear = 2 * (4 * 16 * 16 + 2 * 16 * 32)
    tokens, masked, length = 40, 6, 20
    expected = tokens * (6 * linear + 12 * 2 * length * 16) + masked * (6 * 16 * 16 + 6 * 16 * 100)
    assert gpu.training_flops(model, tokens, masked, length) == expected


def test_peaks_are_found_by_name():
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert gpu.peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert gpu.peak_tflops("NVIDIA A100-SXM4-40GB", None) == 312.0
    assert gpu.peak_tflops("Some Future GPU", None) is None
    assert gpu.peak_tflops("Some Future GPU", 500.0) == 500.0


def test_the_measuring_loop_runs_on_the_cpu(tiny_model_dir, tmp_path):
    args = argparse.Namespace(steps=2, warmup=1, batch=2, length=16)
    figures = gpu.measure_training(str(tiny_model_dir), args, tmp_path, device="cpu")
    assert figures["tokens_per_s"] > 0 and figures["flops_per_s"] > 0
    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir)
    assert figures["parameters"] == sum(p.numel() for p in model.parameters())
