"""GPU figures: fine-tuning throughput and model FLOPs utilisation (MFU) in bf16, and prediction latency.

Two models are trained for a few steps each by MaskLab's own ``Trainer`` (Accelerate, bf16 autocast,
the vocabulary projection only at masked positions):

* the default model (``masklab-minilm-en``, 6 layers x 384);
* a BERT-base-sized model (12 layers x 768, 12 heads, 30,522-token vocabulary) built from a config with
  random weights, written to a temporary folder in safetensors: nothing is downloaded.

MFU = model FLOPs per second achieved / the GPU's peak dense bf16 FLOPs. Model FLOPs per optimizer step
(the usual 6N rule, counting a multiply-add as 2 FLOPs and the backward pass as twice the forward):

    tokens  x (6 x N_encoder + 12 x L x S x H)      the encoder's weight matrices and attention scores
  + masked  x (6 x H x H + 6 x H x V)               the MLM head, at masked positions only

N_encoder: parameters of the encoder's linear layers (embeddings excluded: a lookup is no FLOP);
L layers, S tokens per block, H width, V vocabulary; ``tokens`` are the non-padding tokens of the step
and ``masked`` its masked positions (the step's masking rate x its tokens). Peaks (dense bf16, no sparsity): H100/H200 SXM 989 TFLOPS, H100 PCIe
756, A100 312, L4 121, A10 125, RTX 4090 165; another GPU needs ``--peak-tflops``.

Prediction latency: one prediction with attentions, top-5, on the default model (median of 200).

    python benchmarks/gpu.py [--steps 40] [--batch 32] [--length 128] [--peak-tflops X]

On a machine without a GPU it says so and exits 0 without writing a result. The last line is
``ratio: X`` with X = the BERT-base-sized model's MFU / 0.40 (higher is better; 40% MFU is a good
figure for a model of this size).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks._results import Printer, write_result  # noqa: E402

MFU_GOAL = 0.40
PEAK_BF16_TFLOPS = {  # dense, without structured sparsity, from the vendors' data sheets
    "H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0,
}


def peak_tflops(device_name: str, given: float | None) -> float | None:
    if given:
        return given
    for name, peak in PEAK_BF16_TFLOPS.items():  # the most specific names come first
        if name in device_name:
            return peak
    return None


def training_flops(model, tokens: int, masked: int, length: int) -> float:
    """Model FLOPs of one optimizer step by the formula in the module docstring."""
    config = model.config
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    encoder = model.base_model.encoder
    linear = sum(m.weight.numel() for m in encoder.modules() if isinstance(m, torch.nn.Linear))
    return tokens * (6 * linear + 12 * layers * length * hidden) + masked * (6 * hidden * hidden + 6 * hidden * vocab)


def corpus_bytes(blocks: int, length: int) -> bytes:
    """Enough everyday English for ``blocks`` blocks: the project's cloze sentences, filled and repeated."""
    import json

    from mlm_core.resources import asset

    sentences = []
    for line in asset("cloze_en.jsonl").read_text().splitlines():
        record = json.loads(line)
        sentences += [record["text"].replace("[MASK]", answer) for answer in record["answers"]]
    text = " ".join(sentences)
    copies = blocks * length * 6 // len(text) + 2
    return "\n".join([text] * copies).encode()


def bert_base_folder(folder: Path) -> str:
    """A BERT-base-sized masked LM with random weights and the default model's uncased tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from mlm_core.model.default_model import base_encoder_dir

    tokenizer = AutoTokenizer.from_pretrained(base_encoder_dir())
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer)))  # BertConfig's defaults are BERT-base
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def synchronize(device: str) -> None:
    """Wait for the GPU's queued kernels, so a timer measures the work and not its launch."""
    if device == "cuda":
        torch.cuda.synchronize()


def measure_training(model_name: str | None, args, work: Path, device: str = "cuda") -> dict:
    from mlm_core.text.corpus import read_corpus
    from mlm_core.training import TrainConfig, Trainer

    corpus = read_corpus(corpus_bytes((args.steps + 4) * args.batch * 2, args.length), "gpu-bench.txt")
    config = TrainConfig(model=model_name, device=device, strategy="random", masking="dynamic",
                         steps=args.steps + args.warmup, batch_size=args.batch, seq_len=args.length, lr=1e-4,
                         eval_every=10**6, checkpoint_every=10**6, seed=0)
    trainer = Trainer(config, corpus, work)
    model = trainer.accelerator.unwrap_model(trainer.model)
    for step in range(args.warmup):  # kernels chosen, allocator warmed
        trainer.train_step(step)
    synchronize(device)
    flops, tokens, steps_s = 0.0, 0, []
    for step in range(args.warmup, args.warmup + args.steps):
        start = time.perf_counter()
        _, step_tokens, rate = trainer.train_step(step)
        synchronize(device)
        steps_s.append(time.perf_counter() - start)
        # masked positions: the step's masking rate times its tokens (special tokens are never masked,
        # so this overstates the head's share by about 2 tokens per block: under 0.1% of the FLOPs)
        flops += training_flops(model, step_tokens, round(step_tokens * rate), args.length)
        tokens += step_tokens
    seconds = sum(steps_s)
    return {"tokens_per_s": tokens / seconds, "flops_per_s": flops / seconds, "step_ms": 1000 * statistics.median(steps_s),
            "parameters": sum(p.numel() for p in model.parameters())}


def measure_prediction(rounds: int = 200) -> float:
    from mlm_core.explain.predict import predict
    from mlm_core.model.loading import load_model
    from mlm_core.text.tokens import tokenize

    loaded = load_model(None, device="cuda")
    ids = tokenize(loaded.tokenizer, "The capital of France is [MASK].").ids
    for _ in range(20):
        predict(loaded, ids, top_k=5, output_attentions=True)
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        predict(loaded, ids, top_k=5, output_attentions=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per model (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--batch", type=int, default=32, help="blocks per step (default 32)")
    parser.add_argument("--length", type=int, default=128, help="tokens per block (default 128)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not listed")
    args = parser.parse_args()
    say = Printer()
    if not torch.cuda.is_available():
        say("no GPU here (torch.cuda.is_available() is false): nothing measured, no result written")
        return 0
    device = torch.cuda.get_device_name(0)
    peak = peak_tflops(device, args.peak_tflops)
    if peak is None:
        say(f"unknown GPU {device!r}: give its dense bf16 peak with --peak-tflops")
        return 2
    work = Path(tempfile.mkdtemp(prefix="masklab-gpu-"))
    try:
        results = {"default model": measure_training(None, args, work / "default")}
        results["BERT-base-sized"] = measure_training(bert_base_folder(work / "bert-base"), args, work / "base")
        latency_ms = measure_prediction()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"GPU: {device}, peak dense bf16 {peak:g} TFLOPS; torch {torch.__version__}; "
        f"batch {args.batch} x {args.length} tokens, {args.steps} timed steps after {args.warmup}")
    for name, figures in results.items():
        figures["mfu"] = figures["flops_per_s"] / (peak * 1e12)
        say(f"{name} ({figures['parameters'] / 1e6:.0f} M parameters): {figures['tokens_per_s']:,.0f} tokens/s, "
            f"median step {figures['step_ms']:.1f} ms, {figures['flops_per_s'] / 1e12:.1f} TFLOPS, MFU {figures['mfu']:.1%}")
    say(f"prediction with attentions, top-5, default model: median {latency_ms:.2f} ms")
    base = results["BERT-base-sized"]
    ratio = base["mfu"] / MFU_GOAL
    say(f"higher is better: MFU {base['mfu']:.1%} / {MFU_GOAL:.0%} = {ratio:.2f}")
    write_result(
        "gpu", title=f"fine-tuning in bf16 on a GPU, batch {args.batch} x {args.length} (MFU; higher is better)",
        ours=(f"BERT-base-sized {base['tokens_per_s']:,.0f} tokens/s, MFU {base['mfu']:.1%}; default model "
              f"{results['default model']['tokens_per_s']:,.0f} tokens/s; prediction {latency_ms:.1f} ms"),
        baseline=f"goal: MFU {MFU_GOAL:.0%} of {peak:g} TFLOPS", ratio=ratio, goal="≥ 1", better="higher",
        printed=say.lines, figures={"results": results, "prediction_ms": latency_ms, "peak_tflops": peak},
    )
    print(f"ratio: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
