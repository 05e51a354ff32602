"""CLI twins of the Explore page's "why?" panels: ``attend`` and ``attribute``.

    python -m mlm_core attend "The cat sat on the [MASK]." --layer 5 --head 3 --json
    python -m mlm_core attend "The cat sat on the [MASK]." --rollout
    python -m mlm_core attribute "Paris is the capital of [MASK]." --method ig --steps 32
    python -m mlm_core attribute "Paris is the capital of France." --position 6 --target france

``run_*`` return one JSON-ready dict; ``format_*`` turn it into readable text. Indices are
0-based, like token positions ([CLS] is position 0); a negative layer counts from the top.
"""

from __future__ import annotations

import argparse

import numpy as np

from mlm_core.errors import InputError

TOP_PER_ROW = 3  # attended tokens listed per row in the text output


def add_parsers(sub) -> None:
    """Add the ``attend`` and ``attribute`` subcommands to ``build_parser``'s subparsers."""
    from mlm_core.cli import add_model_argument, positive_int
    from mlm_core.explain.attribution import BASELINES, DEFAULT_STEPS, MAX_STEPS, METHODS

    p = sub.add_parser("attend", help="attention weights of a text (one head, mean of heads, or rollout)")
    p.add_argument("text", help="text, with the model's mask token where a word is hidden")
    add_model_argument(p)
    p.add_argument("--layer", type=int, default=-1, help="layer, 0-based; negative counts from the top (default -1)")
    p.add_argument("--head", type=int, default=None, help="head, 0-based (default: mean of the layer's heads)")
    p.add_argument("--rollout", action="store_true", help="attention rollout through layers 0..LAYER instead")
    p.add_argument("--words", action="store_true", help="merge word pieces into words")
    p.add_argument("--json", action="store_true", help="print one JSON document: tokens and the T×T attention")

    p = sub.add_parser("attribute", help="which tokens drove the prediction at a mask (captum)")
    p.add_argument("text", help="text with the model's mask token, or use --position to mask a token")
    add_model_argument(p)
    p.add_argument("--position", type=int, default=None, help="token position to explain (masked if it is not)")
    p.add_argument("--target", default=None, help="token to explain (default: the model's first guess)")
    p.add_argument("--method", choices=METHODS, default="ig", help="ig (default), saliency or input_x_gradient")
    p.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                   help=f"integration steps for ig (default {DEFAULT_STEPS}, at most {MAX_STEPS})")
    p.add_argument("--baseline", choices=BASELINES, default="pad", help="baseline token for ig (default pad)")
    p.add_argument("--words", action="store_true", help="merge word pieces into words")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def _layer_index(layer: int, n_layers: int) -> int:
    if not -n_layers <= layer < n_layers:
        raise InputError(f"--layer must be between 0 and {n_layers - 1} (or -1 for the top); got {layer}.")
    return layer % n_layers


def run_attend(args: argparse.Namespace) -> dict:
    from mlm_core.explain import attention
    from mlm_core.model.loading import load_model
    from mlm_core.text.tokens import tokenize

    loaded = load_model(args.model, args.device)
    tokens = tokenize(loaded.tokenizer, args.text)
    layer = _layer_index(args.layer, loaded.num_layers)
    head = args.head
    if head is not None and not 0 <= head < loaded.num_heads:
        raise InputError(f"--head must be between 0 and {loaded.num_heads - 1}; got {head}.")
    att = attention.attention_maps(loaded, tokens.ids)  # (L, H, T, T)
    if args.rollout:
        matrix, view = attention.rollout(att)[layer], "rollout"
    elif head is None:
        matrix, view = att[layer].mean(axis=0), "mean of heads"
    else:
        matrix, view = att[layer, head], "head"
    labels = list(tokens.tokens)
    masked = tokens.mask_positions
    if getattr(args, "words", False):
        groups = attention.word_groups(tokens.word_ids)
        matrix = attention.merge_words(matrix, groups)
        labels = attention.group_labels(tokens.tokens, groups, loaded.tokenizer)
        masked = sorted({g for g, members in enumerate(groups) for p in members if p in tokens.mask_positions})
    return {
        "model": loaded.name,
        "view": view,
        "layer": layer,
        "head": None if args.rollout else head,
        "words": bool(getattr(args, "words", False)),
        "masked_positions": masked,
        "tokens": labels,
        "attention": np.asarray(matrix, dtype=float).round(6).tolist(),
    }


def format_attend(record: dict) -> str:
    which = record["view"] if record["head"] is None else f"head {record['head']}"
    lines = [f"model: {record['model']}  layer {record['layer']}, {which}  (row: from; top {TOP_PER_ROW} attended)"]
    tokens = record["tokens"]
    for i, row in enumerate(record["attention"]):
        best = np.argsort(row)[::-1][:TOP_PER_ROW]
        marker = "*" if i in record["masked_positions"] else " "
        targets = ", ".join(f"{j} {tokens[j]} {row[j]:.2f}" for j in best)
        lines.append(f"{marker}{i:>3} {tokens[i]:<14} -> {targets}")
    return "\n".join(lines)


def run_attribute(args: argparse.Namespace) -> dict:
    from mlm_core.explain import attention
    from mlm_core.explain.attribution import attribute
    from mlm_core.explain.exploration import with_masks
    from mlm_core.model.loading import load_model
    from mlm_core.text.tokens import tokenize

    loaded = load_model(args.model, args.device)
    tokens = tokenize(loaded.tokenizer, args.text)
    ids = list(tokens.ids)
    original = None
    if args.position is not None and 0 <= args.position < len(ids) and ids[args.position] != loaded.mask_token_id:
        original = loaded.tokenizer.convert_ids_to_tokens(ids[args.position])
        ids = list(with_masks(tokens, [args.position], loaded).ids)
    result = attribute(loaded, ids, args.position, args.target, args.method, args.steps, args.baseline)
    record = result.as_dict()
    record.update(model=loaded.name, original_token=original, words=False)
    if getattr(args, "words", False):
        groups = attention.word_groups(tokens.word_ids)
        masked = loaded.tokenizer.convert_ids_to_tokens(ids)
        record.update(
            tokens=attention.group_labels(masked, groups, loaded.tokenizer),
            scores=[float(s) for s in attention.merge_scores(result.scores, groups)],
            words=True,
        )
    return record


def format_attribute(record: dict) -> str:
    head = (
        f"model: {record['model']}  {record['method']} for '{record['target']}' at position {record['position']}"
        f"  p = {record['target_prob']:.4f}"
    )
    lines = [head]
    if record["method"] == "ig":
        lines.append(
            f"baseline [{record['baseline']}] p = {record['baseline_prob']:.4f}  steps {record['steps']}  "
            f"convergence delta {record['delta']:+.2e}"
        )
    if record.get("original_token"):
        lines.append(f"masked token was '{record['original_token']}'")
    scale = max((abs(s) for s in record["scores"]), default=0.0) or 1.0
    for i, (token, score) in enumerate(zip(record["tokens"], record["scores"])):
        bar = ("+" if score > 0 else "-") * round(20 * abs(score) / scale)
        lines.append(f"{i:>3} {token:<14} {score:+.4f} {bar}")
    lines.append(f"{record['seconds']:.2f} s")
    return "\n".join(lines)
