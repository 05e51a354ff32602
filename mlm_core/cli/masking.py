"""CLI twins of the Explore page's masking: ``predict`` (fill the masks) and ``mask`` (show the corruption).

    python -m mlm_core predict "Paris is the capital of [MASK]." --top-k 3
    python -m mlm_core mask "The cat sat on the mat." --strategy whole-word --rate 0.3 --json
"""

from __future__ import annotations

import argparse

from mlm_core.cli.common import (
    Command,
    add_model_argument,
    add_strategy_arguments,
    positive_int,
    strategy_from_args,
)

KIND_MARKS = {"masked": "M", "random": "R", "kept": "K", "excluded": "X", None: " "}  # one letter per token


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="text with the model's mask token, e.g. 'Paris is the capital of [MASK].'")
    add_model_argument(parser)
    parser.add_argument("--top-k", type=positive_int, default=5, help="guesses per position (default 5)")
    parser.add_argument("--fill", choices=["independent", "joint"], default="independent",
                        help="independent: one pass; joint: fill one mask at a time, most confident first")
    add_strategy_arguments(parser, required=False)


def run_predict(args: argparse.Namespace) -> dict:
    from mlm_core.explain.exploration import explore
    from mlm_core.explain.predict import fill_text
    from mlm_core.model.loading import load_model

    loaded = load_model(args.model, args.device)
    result = explore(loaded, args.text, strategy_from_args(args), args.seed, top_k=args.top_k, fill=args.fill)
    prediction = result.prediction
    return {
        "model": loaded.name,
        "mask_token": loaded.mask_token,
        "tokens": loaded.tokenizer.convert_ids_to_tokens(list(result.input_ids)),
        "original_tokens": list(result.tokens.tokens),
        "kinds": list(result.kinds),
        "masked_positions": list(prediction.positions),
        "ratio": result.ratio,
        "fill": prediction.fill,  # "independent" when joint filling was asked for more masks than allowed
        "fill_requested": args.fill,
        "log_prob": prediction.log_prob,
        "filled_text": fill_text(loaded, prediction.filled_ids),
        "predictions": [
            {
                "position": p.position,
                "kind": result.kinds[p.position],
                "original": p.original_token,
                "original_prob": p.original_prob,
                "fill_step": p.fill_step,
                "top": [{"token": c.token, "prob": c.prob} for c in p.top],
            }
            for p in prediction.predictions
        ],
        "notices": list(result.notices),
    }


def format_predict(record: dict) -> str:
    lines = [f"model: {record['model']}  (mask token {record['mask_token']}, fill: {record['fill']})"]
    for item in record["predictions"]:
        guesses = ", ".join(f"{c['token']} {c['prob']:.3f}" for c in item["top"])
        lines.append(f"position {item['position']}: {guesses}")
    lines.append(f"filled: {record['filled_text']}")
    lines.extend(f"note: {notice}" for notice in record["notices"])
    return "\n".join(lines)


def add_mask_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="the text to mask")
    add_model_argument(parser)
    add_strategy_arguments(parser, required=True)


def run_mask(args: argparse.Namespace) -> dict:
    from mlm_core.explain.exploration import check_mask_count, reading_tokens, surprisal_scores
    from mlm_core.masking import Vocab, apply_strategy, is_adaptive
    from mlm_core.model.loading import load_model

    loaded = load_model(args.model, args.device)
    strategy = strategy_from_args(args)
    tokens, privacy = reading_tokens(loaded, args.text, strategy)
    protected = privacy.protected_positions(tokens) if privacy else ()
    scores = surprisal_scores(loaded, tokens) if is_adaptive(strategy) else None
    result = apply_strategy(tokens, strategy, Vocab.from_tokenizer(loaded.tokenizer), rng=args.seed,
                            scores=scores, protected=protected)
    masks = sum(kind in ("masked", "random", "kept") or int(i) == loaded.mask_token_id  # typed ones too
                for kind, i in zip(result.kinds, result.input_ids))
    check_mask_count(masks, drawn=True)  # the same limit as predict and the app
    return {
        "model": loaded.name,
        "strategy": args.strategy,
        "seed": args.seed,
        "text": tokens.text,
        "tokens": loaded.tokenizer.convert_ids_to_tokens([int(i) for i in result.input_ids]),
        "original_tokens": list(tokens.tokens),
        "kinds": list(result.kinds),
        "labels": [int(label) for label in result.labels],
        "ratio": result.ratio,
        "privacy": [] if privacy is None else [
            {"kind": r.kind, "original": r.original, "replacement": r.replacement} for r in privacy.replacements
        ],
    }


def format_mask(record: dict) -> str:
    lines = [f"model: {record['model']}  strategy: {record['strategy']}  seed: {record['seed']}"]
    for shown, original, kind in zip(record["tokens"], record["original_tokens"], record["kinds"]):
        change = f"  (was {original})" if shown != original else ""
        lines.append(f"  [{KIND_MARKS[kind]}] {shown}{change}")
    lines.append(f"ratio (α): {record['ratio']:.3f}")
    lines.extend(f"privacy: {p['kind']} '{p['original']}' -> {p['replacement']}" for p in record["privacy"])
    return "\n".join(lines)


PREDICT = Command("predict", "predict the masked positions of a text", add_predict_arguments, run_predict,
                  format_predict)
MASK = Command("mask", "show how a masking strategy corrupts a text", add_mask_arguments, run_mask, format_mask)
