"""Training throughput: mlm_core's Trainer against the standard transformers MLM recipe.

Ours: ``mlm_core.training.trainer.Trainer`` (random 15% masking, dynamic: a fresh mask per block and
epoch), which computes the vocabulary projection only at the masked positions.
Standard: transformers ``Trainer`` + ``DataCollatorForLanguageModeling`` + ``BertForMaskedLM`` on
blocks packed like the library's ``run_mlm.py`` example (``group_texts``).

Both get: the default model (two fresh copies from ``load_fresh(None)``), the same corpus and
train/held-out split, blocks of 128 tokens, batches of 16, the same number of steps, learning
rate, warm-up, linear decay, weight decay and gradient clipping, one process and one torch
thread count (one by default: on a shared or busy machine more threads spin against the other
processes and both sides slow down several times over). They alternate step by step (the transformers Trainer drives; after each of its
steps a callback runs one step of ours), so background load on the machine hits both alike.
The first step of each (warm-up) is not timed. Held-out loss: both final models, with their
full outputs, on the same held-out blocks with the same masks (the engine's fixed evaluation set).

The corpus is English text from the machine: the fortune files (Debian ``fortunes``), else
WordNet's example sentences (Debian ``wordnet``), else the cloze sentences in ``assets/``.

    python benchmarks/train.py [--steps 30] [--threads N]

Higher tokens/s is better; the last line is ``ratio: ours/standard`` (tokens per second).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._results import Printer, write_result  # noqa: E402
from mlm_core.model.loading import load_fresh  # noqa: E402
from mlm_core.resources import asset  # noqa: E402
from mlm_core.text.corpus import read_corpus  # noqa: E402
from mlm_core.training import TrainConfig, Trainer, split_texts  # noqa: E402

FORTUNES = Path("/usr/share/games/fortunes")
WORDNET = Path("/usr/share/wordnet")
BLOCK, BATCH, LR, WARMUP, DECAY, CLIP = 128, 16, 5e-5, 0.06, 0.01, 1.0
EVAL_BLOCKS = 64


def spread(texts: list[str], needed_chars: int) -> list[str]:
    """Every k-th text, so a smaller corpus still samples every file."""
    return texts[:: max(1, sum(map(len, texts)) // needed_chars)]


def corpus_texts(needed_chars: int) -> tuple[list[str], str]:
    """English texts of at least ``needed_chars`` characters, and where they came from."""
    texts: list[str] = []
    if FORTUNES.is_dir():
        for path in sorted(FORTUNES.iterdir()):
            if path.suffix or not path.is_file():  # the .dat/.u8 files are indexes
                continue
            try:
                raw = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            texts += [t for t in (" ".join(b.split()) for b in raw.split("\n%\n")) if len(t) > 20]
        if sum(map(len, texts)) >= needed_chars:
            return spread(texts, needed_chars), f"fortune files ({FORTUNES})"
    texts = []
    for part in ("noun", "verb", "adj", "adv"):
        path = WORDNET / f"data.{part}"
        if path.is_file():  # synset lines: "offset ... | gloss; "example"; "example"" (the header is indented)
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if "|" in line and not line.startswith(" "):
                    texts += re.findall(r'"([^"]{20,})"', line.split("|", 1)[1])
    if sum(map(len, texts)) >= needed_chars:
        return spread(texts, needed_chars), f"WordNet example sentences ({WORDNET})"
    cloze = []
    for line in asset("cloze_en.jsonl").read_text().splitlines():
        record = json.loads(line)
        cloze += [record["text"].replace("[MASK]", answer) for answer in record["answers"]]
    copies = needed_chars // max(1, sum(map(len, cloze))) + 1
    return cloze * copies, "assets/cloze_en.jsonl sentences, repeated"


def group_texts(examples: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """run_mlm.py's group_texts: concatenate every field, drop the remainder, cut into blocks."""
    concatenated = {k: sum(examples[k], []) for k in examples}
    total = (len(concatenated["input_ids"]) // block_size) * block_size
    return {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}


@torch.no_grad()
def token_losses(model, masked, attention) -> torch.Tensor:
    """(M,) cross-entropy at each masked position, from the model's full output (no shortcut)."""
    model.eval()
    losses = []
    for part in torch.arange(masked.input_ids.shape[0]).split(16):
        labels = masked.labels[part]
        chosen = labels != -100
        logits = model(input_ids=masked.input_ids[part], attention_mask=attention[part]).logits[chosen]
        losses.append(nn.functional.cross_entropy(logits, labels[chosen], reduction="none"))
    model.train()
    return torch.cat(losses).double()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="masklab-bench-"))
    try:
        run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps for each side (default 30)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1, see above)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers import (
        DataCollatorForLanguageModeling,
        PrinterCallback,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers import Trainer as HFTrainer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    blocks_needed = max((args.steps + 2) * BATCH, int(1.2 * EVAL_BLOCKS / TrainConfig.heldout_fraction))
    needed = blocks_needed * BLOCK * 5  # ~5 characters per token of English
    texts, source = corpus_texts(needed)
    corpus = read_corpus("\n".join(texts).encode(), "bench.txt")
    config = TrainConfig(model=None, device="cpu", strategy="random", masking="dynamic", steps=args.steps,
                         batch_size=BATCH, seq_len=BLOCK, lr=LR, warmup_ratio=WARMUP, weight_decay=DECAY,
                         grad_clip=CLIP, eval_every=10**6, eval_blocks=EVAL_BLOCKS, checkpoint_every=10**6,
                         seed=0)
    ours = Trainer(config, corpus, work / "ours")  # builds its own fresh copy with load_fresh(None)

    standard = load_fresh(None)  # a second fresh copy
    tokenizer = standard.tokenizer
    train_texts, _ = split_texts(corpus.texts, config.heldout_fraction)  # the same split as ours
    encoded = tokenizer(train_texts, return_special_tokens_mask=True)
    blocks = group_texts({k: list(v) for k, v in encoded.items()}, BLOCK)
    dataset = [{k: blocks[k][i] for k in blocks} for i in range(len(blocks["input_ids"]))]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)

    batch, masked = ours.eval_batch
    attention = ours.attention(masked, torch.arange(batch.shape[0]))
    start_loss = float(token_losses(standard.model, masked, attention).mean())

    timing = {"ours": [], "standard": []}
    marks = {"end": None}

    class Interleave(TrainerCallback):
        """After each standard step, one step of ours; each side's time is measured separately."""

        def on_train_begin(self, args, state, control, **kwargs):
            marks["end"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            timing["standard"].append((now - marks["end"], BATCH * BLOCK))
            step = len(timing["ours"])
            tick = time.perf_counter()
            _, tokens, _ = ours.train_step(step)
            timing["ours"].append((time.perf_counter() - tick, tokens))
            marks["end"] = time.perf_counter()

    training_args = TrainingArguments(
        output_dir=str(work / "standard"), per_device_train_batch_size=BATCH, max_steps=args.steps,
        learning_rate=LR, warmup_steps=WARMUP, weight_decay=DECAY, max_grad_norm=CLIP, lr_scheduler_type="linear",
        use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, seed=0,
    )
    hf_trainer = HFTrainer(model=standard.model, args=training_args, train_dataset=dataset,
                           data_collator=collator, callbacks=[Interleave()])
    hf_trainer.remove_callback(PrinterCallback)  # its end-of-run summary would time both sides together
    say = Printer()  # prints, and keeps the lines for results/train.json
    say(f"corpus: {source}; {len(corpus.texts):,} texts; train blocks: ours {len(ours.train_data):,}, "
        f"standard {len(dataset):,}; held-out: {batch.shape[0]} blocks, {int((masked.labels != -100).sum())} "
          f"masked tokens")
    say(f"settings: {args.steps} steps, batch {BATCH} x {BLOCK} tokens, lr {LR}, torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    hf_trainer.train()

    rates = {}
    for side, steps in timing.items():
        timed = steps[1:] if len(steps) > 1 else steps  # the first step warms up allocators and caches
        rates[side] = sum(t for _, t in timed) / sum(s for s, _ in timed)
    per_token = {"ours": token_losses(ours.model, masked, attention),
                 "standard": token_losses(standard.model, masked, attention)}
    losses = {side: float(values.mean()) for side, values in per_token.items()}
    difference = per_token["ours"] - per_token["standard"]  # paired: the same tokens, the same masks
    noise = 2 * float(difference.std()) / len(difference) ** 0.5
    for side, name in (("ours", "mlm_core Trainer"), ("standard", "transformers Trainer + collator")):
        seconds = sum(s for s, _ in timing[side][1:])
        say(f"{name:32s} {rates[side]:9,.0f} tokens/s  ({seconds:6.1f} s for {len(timing[side]) - 1} "
            f"timed steps)  held-out loss {losses[side]:.4f}")
    say(f"held-out loss before training: {start_loss:.4f} (both start from the same weights)")
    ratio = rates["ours"] / rates["standard"]
    faster = "ours is faster" if ratio > 1 else "the standard recipe is faster"
    gap = losses["ours"] - losses["standard"]
    if gap <= 0:
        loss_note = "better"
    elif gap <= noise:
        loss_note = "equal within noise"
    else:
        loss_note = "worse"
    say(f"held-out loss, ours - standard: {gap:+.4f} (paired over {len(difference)} masked tokens; "
        f"2 standard errors: {noise:.4f}) -> {loss_note}")
    say(f"{faster} ({ratio:.2f}x tokens/s); ours' held-out loss: {loss_note}; "
        f"load average now {os.getloadavg()[0]:.1f}")
    write_result(
        "train", title=f"fine-tuning throughput, default model, batch {BATCH} x {BLOCK}, {args.steps} steps, "
        f"{torch.get_num_threads()} thread(s) (tokens/s; higher is better)",
        ours=f"{rates['ours']:,.0f} tokens/s, held-out loss {losses['ours']:.3f}",
        baseline=f"`Trainer` + `DataCollatorForLanguageModeling`: {rates['standard']:,.0f} tokens/s, "
        f"loss {losses['standard']:.3f}",
        ratio=ratio, goal=f"≥ 1.5 at equal loss (loss: {loss_note})", better="higher",
        printed=say.lines,
        figures={"tokens_per_s": rates, "heldout_loss": losses, "loss_before": start_loss, "loss_gap": gap,
                 "two_standard_errors": noise, "steps": args.steps, "torch_threads": torch.get_num_threads(),
                 "corpus": source},
    )
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
