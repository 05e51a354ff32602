"""Evaluate the default model as users get it (merged through mlm_core's loader).

Prints one JSON document: held-out masked-token accuracy (top-1/top-5) and perplexity on
fixed masks (the same masks as train.py's evaluations), and cloze top-1/top-5 with each
sentence's five guesses on four sets: assets/cloze_en.jsonl, which training runs report and
phases were judged by, and assets/cloze_en_confirm.jsonl, assets/cloze_en_fresh.jsonl and
assets/cloze_en_everyday.jsonl, each written before a later phase was evaluated and used for
no decision, so their scores are unbiased checks of the first. The model card quotes all four. Calibration: for each set, the mean probability
of the model's first guess when it is an acceptable answer and when it is not (a
well-calibrated model is confident when right and unsure when wrong). The probe sentence
"The capital of France is [MASK]." reports the probability of "paris" and its rank.

    python recipes/default_model/evaluate.py --corpus /tmp/corpus > eval.json
    python recipes/default_model/evaluate.py --adapter /tmp/run/adapter-best.safetensors  # before shipping it
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from mlm_core.explain.predict import predict  # noqa: E402
from mlm_core.model import loading  # noqa: E402
from mlm_core.text.tokens import tokenize  # noqa: E402
from recipes.default_model.train import mask_tokens, masked_loss, pad  # noqa: E402


@torch.no_grad()
def heldout_metrics(loaded, lines: list[str], mlm_probability: float) -> dict:
    tokenizer, model = loaded.tokenizer, loaded.model
    sequences = tokenizer(lines, truncation=True, max_length=96)["input_ids"]
    special_ids = torch.tensor(tokenizer.all_special_ids)
    generator = torch.Generator().manual_seed(0)  # the same masks as train.py's evaluations
    loss_sum, count, top1, top5 = 0.0, 0, 0, 0
    for start in range(0, len(sequences), 64):
        ids, attention = pad(sequences[start : start + 64], tokenizer.pad_token_id)
        inputs, labels = mask_tokens(ids, torch.isin(ids, special_ids), mlm_probability,
                                     tokenizer.mask_token_id, 999, len(tokenizer), generator)
        if (labels != -100).sum() == 0:
            continue
        loss, logits, targets = masked_loss(model, inputs, attention, labels)
        loss_sum += loss.item() * len(targets)
        count += len(targets)
        best = logits.topk(5, dim=-1).indices
        top1 += (best[:, 0] == targets).sum().item()
        top5 += (best == targets[:, None]).any(-1).sum().item()
    return {"masked_tokens": count, "top1": top1 / count, "top5": top5 / count,
            "loss": loss_sum / count, "perplexity": math.exp(loss_sum / count)}


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def cloze_metrics(loaded, items: list[dict]) -> dict:
    rows, hits1, hits5 = [], 0, 0
    first_prob_right, first_prob_wrong = [], []
    for item in items:
        tokens = tokenize(loaded.tokenizer, item["text"])
        top = predict(loaded, tokens.ids, top_k=5).predictions[0].top
        guesses = [c.token for c in top]
        hit1, hit5 = guesses[0] in item["answers"], any(g in item["answers"] for g in guesses)
        hits1 += hit1
        hits5 += hit5
        (first_prob_right if hit1 else first_prob_wrong).append(top[0].prob)
        rows.append({"text": item["text"], "top5": guesses, "top5_probs": [round(c.prob, 4) for c in top],
                     "hit_top1": hit1, "hit_top5": hit5})
    return {"sentences": len(items), "top1": hits1 / len(items), "top5": hits5 / len(items),
            "first_prob_when_right": mean(first_prob_right), "first_prob_when_wrong": mean(first_prob_wrong),
            "rows": rows}


def probe_metrics(loaded, text: str, answer: str) -> dict:
    """The probability and rank (1 = first) of ``answer`` at the blank of ``text``."""
    tokens = tokenize(loaded.tokenizer, text)
    position = tokens.ids.index(loaded.mask_token_id)
    answer_id = loaded.tokenizer.convert_tokens_to_ids(answer)
    guess = predict(loaded, tokens.ids, originals={position: answer_id}, top_k=5).predictions[0]
    return {"text": text, "answer": answer, "prob": guess.original_prob, "rank": guess.original_rank,
            "top5": [c.token for c in guess.top], "top5_probs": [round(c.prob, 4) for c in guess.top]}


def main() -> None:
    parser = argparse.ArgumentParser(description="Evaluate the default model.")
    parser.add_argument("--corpus", type=Path, help="folder with heldout.txt from build_corpus.py")
    parser.add_argument("--heldout-segments", type=int, default=3000)
    parser.add_argument("--mlm-probability", type=float, default=0.2)
    parser.add_argument("--cloze", type=Path, default=ROOT / "assets" / "cloze_en.jsonl")
    parser.add_argument("--confirm", type=Path, default=ROOT / "assets" / "cloze_en_confirm.jsonl")
    parser.add_argument("--fresh", type=Path, default=ROOT / "assets" / "cloze_en_fresh.jsonl")
    parser.add_argument("--everyday", type=Path, default=ROOT / "assets" / "cloze_en_everyday.jsonl")
    parser.add_argument("--adapter", type=Path, help="evaluate this adapter file instead of the shipped one")
    args = parser.parse_args()
    if args.adapter:
        # The loader reads the adapter from these two names; pointing them elsewhere evaluates
        # a candidate through exactly the merge users get, without touching the shipped file.
        loading.ADAPTER_DIR, loading.ADAPTER_FILE = args.adapter.resolve().parent, args.adapter.name
    loaded = loading.load_model(None, device="cpu")

    def items(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    report = {"model": loaded.name, "adapter": args.adapter.name if args.adapter else "shipped",
              "cloze": cloze_metrics(loaded, items(args.cloze)),
              "cloze_confirm": cloze_metrics(loaded, items(args.confirm)),
              "cloze_fresh": cloze_metrics(loaded, items(args.fresh)),
              "cloze_everyday": cloze_metrics(loaded, items(args.everyday)),
              "probe": probe_metrics(loaded, "The capital of France is [MASK].", "paris")}
    if args.corpus:
        lines = (args.corpus / "heldout.txt").read_text().splitlines()[: args.heldout_segments]
        report["heldout"] = heldout_metrics(loaded, lines, args.mlm_probability)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
