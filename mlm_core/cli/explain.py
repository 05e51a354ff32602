"""CLI twins of the Explore page's "why?" panels: ``attend`` and ``attribute``.

    python -m mlm_core attend "The cat sat on the [MASK]." --layer 5 --head 3 --json
    python -m mlm_core attend "The cat sat on the [MASK]." --rollout
    python -m mlm_core attend "The cat sat on the [MASK]." --exclude the,3 --exclude-mode keys-and-queries
    python -m mlm_core attribute "Paris is the capital of [MASK]." --method ig --steps 32
    python -m mlm_core attribute "Paris is the capital of France." --position 6 --target france

``run_*`` return one JSON-ready dict; ``format_*`` turn it into readable text; ``ATTEND`` and
``ATTRIBUTE`` declare the two commands for ``mlm_core.cli.registry``. Indices are
0-based, like token positions ([CLS] is position 0); a negative layer counts from the top.
"""

from __future__ import annotations

import argparse

import numpy as np

from mlm_core.cli.common import Command, add_model_argument, positive_int
from mlm_core.errors import InputError

TOP_PER_ROW = 3  # attended tokens listed per row in the text output


def add_attend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="text, with the model's mask token where a word is hidden")
    add_model_argument(parser)
    parser.add_argument("--layer", type=int, default=-1,
                        help="layer, 0-based; negative counts from the top (default -1)")
    parser.add_argument("--head", type=int, default=None, help="head, 0-based (default: mean of the layer's heads)")
    parser.add_argument("--rollout", action="store_true", help="attention rollout through layers 0..LAYER instead")
    parser.add_argument("--words", action="store_true", help="merge word pieces into words")
    from mlm_core.explain.attention import EXCLUDE_MODES

    parser.add_argument("--exclude", default=None, metavar="WORDS_OR_POSITIONS",
                        help="remove tokens from the context (a_ij = 0): a comma list of words (every token of "
                        "each) and token positions (0 is the first special token), e.g. the,3")
    parser.add_argument("--exclude-mode", choices=EXCLUDE_MODES, default=EXCLUDE_MODES[0],
                        help="keys (default): no token attends to them, each row renormalised over the tokens left "
                        "(the standard key-padding mask); keys-and-queries: their own rows are zero too")


def add_attribute_arguments(parser: argparse.ArgumentParser) -> None:
    from mlm_core.explain.attribution import BASELINES, DEFAULT_STEPS, MAX_STEPS, METHODS

    parser.add_argument("text", help="text with the model's mask token, or use --position to mask a token")
    add_model_argument(parser)
    parser.add_argument("--position", type=int, default=None, help="token position to explain (masked if it is not)")
    parser.add_argument("--target", default=None, help="token to explain (default: the model's first guess)")
    parser.add_argument("--method", choices=METHODS, default="ig", help="ig (default), saliency or input_x_gradient")
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                        help=f"integration steps for ig (default {DEFAULT_STEPS}, at most {MAX_STEPS})")
    parser.add_argument("--baseline", choices=BASELINES, default="pad", help="baseline token for ig (default pad)")
    parser.add_argument("--words", action="store_true", help="merge word pieces into words")


def _layer_index(layer: int, n_layers: int) -> int:
    if not -n_layers <= layer < n_layers:
        raise InputError(f"--layer must be between 0 and {n_layers - 1} (or -1 for the top); got {layer}.")
    return layer % n_layers


def run_attend(args: argparse.Namespace) -> dict:
    from mlm_core.explain import attention
    from mlm_core.model.loading import load_model
    from mlm_core.text.tokens import tokenize
    from mlm_core.views.words import word_view

    loaded = load_model(args.model, args.device)
    tokens = tokenize(loaded.tokenizer, args.text)
    layer = _layer_index(args.layer, loaded.num_layers)
    head = args.head
    if head is not None and not 0 <= head < loaded.num_heads:
        raise InputError(f"--head must be between 0 and {loaded.num_heads - 1}; got {head}.")
    excluded, mode = [], getattr(args, "exclude_mode", "keys")
    if getattr(args, "exclude", None) is not None:
        from mlm_core.explain.concepts import exclusion_positions

        excluded = exclusion_positions(tokens, args.exclude.split(","))
    removed = [i in excluded for i in range(len(tokens))] if excluded else None
    att = attention.attention_maps(loaded, tokens.ids, removed, mode)  # (L, H, T, T)
    before = attention.attention_maps(loaded, tokens.ids) if excluded else None

    def view_of(maps):
        if args.rollout:
            return attention.rollout(maps)[layer], "rollout"
        if head is None:
            return maps[layer].mean(axis=0), "mean of heads"
        return maps[layer, head], "head"

    matrix, view = view_of(att)
    words = word_view(tokens.tokens, tokens.word_ids, loaded.tokenizer, merge=getattr(args, "words", False))
    matrix, labels, masked = words.matrix(matrix), list(words.labels), words.positions(tokens.mask_positions)
    extra = {}
    if excluded:
        extra = {"excluded_positions": words.positions(excluded), "exclude_mode": mode,
                 "attention_before": np.asarray(words.matrix(view_of(before)[0]), dtype=float).round(6).tolist()}
    return {
        "model": loaded.name,
        "view": view,
        "layer": layer,
        "head": None if args.rollout else head,
        "words": bool(getattr(args, "words", False)),
        "masked_positions": masked,
        "tokens": labels,
        "attention": np.asarray(matrix, dtype=float).round(6).tolist(),
        **extra,
    }


EXCLUDE_NOTES = {
    "keys": "x: removed from the context (a_ij = 0 for these j); every row is renormalised over the tokens left",
    "keys-and-queries": "x: removed from the context (a_ij = 0 if i or j is removed); their own rows are all 0, "
                        "the other rows are renormalised over the tokens left",
}


def format_attend(record: dict) -> str:
    which = record["view"] if record["head"] is None else f"head {record['head']}"
    lines = [f"model: {record['model']}  layer {record['layer']}, {which}  (row: from; top {TOP_PER_ROW} attended)"]
    excluded = record.get("excluded_positions", [])
    if excluded:
        lines.append(f"{record['exclude_mode']}: {EXCLUDE_NOTES[record['exclude_mode']]}")
    tokens = record["tokens"]
    for i, row in enumerate(record["attention"]):
        best = np.argsort(row)[::-1][:TOP_PER_ROW]
        marker = "x" if i in excluded else "*" if i in record["masked_positions"] else " "
        targets = ", ".join(f"{j} {tokens[j]} {row[j]:.2f}" for j in best if row[j] > 0) or "(nothing: row is 0)"
        lines.append(f"{marker}{i:>3} {tokens[i]:<14} -> {targets}")
    return "\n".join(lines)


def run_attribute(args: argparse.Namespace) -> dict:
    from mlm_core.explain.attribution import attribute
    from mlm_core.explain.exploration import with_masks
    from mlm_core.model.loading import load_model
    from mlm_core.text.tokens import tokenize
    from mlm_core.views.words import word_view

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
        words = word_view(loaded.tokenizer.convert_ids_to_tokens(ids), tokens.word_ids, loaded.tokenizer)
        record.update(tokens=list(words.labels), scores=[float(s) for s in words.scores(result.scores)], words=True)
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


ATTEND = Command("attend", "attention weights of a text (one head, mean of heads, or rollout)", add_attend_arguments,
                 run_attend, format_attend,
                 json_help="print one JSON document: tokens and the T×T attention")
ATTRIBUTE = Command("attribute", "which tokens drove the prediction at a mask (captum)", add_attribute_arguments,
                    run_attribute, format_attribute)
