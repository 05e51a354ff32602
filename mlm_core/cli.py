"""Command-line twin of the app: ``python -m mlm_core COMMAND --help``.

Every command prints readable text, or one JSON document with ``--json``. Bad input gives
one line on stderr and exit status 2; nothing prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from mlm_core.errors import MaskLabError

EXIT_BAD_INPUT = 2
COMMANDS: dict[str, Callable[[argparse.Namespace], dict]] = {}


def command(name: str):
    def register(function):
        COMMANDS[name] = function
        return function

    return register


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="hub id or local folder (default: the built-in model)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: GPU when present)")


def strategy_param_names() -> dict[str, str]:
    """Every strategy parameter once, with the help text of its first declaration."""
    from mlm_core.masking import STRATEGIES

    names: dict[str, str] = {}
    for name, spec in STRATEGIES.items():
        if name in ("compose", "manual", "attention-exclusion", "privacy"):
            continue
        for param in spec.params:
            names.setdefault(param.name, param.help)
    return names


def add_strategy_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """--strategy and its options, generated from the masking registry (one place)."""
    from mlm_core.explore import MAIN_STRATEGIES

    group = parser.add_argument_group("masking (options apply to the chosen strategy)")
    group.add_argument("--strategy", choices=MAIN_STRATEGIES, required=required, default=None,
                       help="how positions are chosen (default: only the typed mask tokens)")
    for name, help_text in strategy_param_names().items():
        if name == "rate":
            continue  # --rate below covers it for the rule-based strategy
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"param_{name}", default=None, metavar="VALUE",
                           help=help_text)
    group.add_argument("--rate", default=None, metavar="P",
                       help="masking rate: --mlm-probability, or the rule-based share of matching words")
    group.add_argument("--privacy", action="store_true", help="replace e-mails, URLs, phones and numbers first")
    group.add_argument("--protect", default="", help="never mask these: stopwords,punctuation,numbers")
    group.add_argument("--exclude", default="", help="remove from the context: stopwords, punctuation or numbers")
    group.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")


def strategy_from_args(args: argparse.Namespace):
    from mlm_core.explore import build_strategy
    from mlm_core.masking import STRATEGIES

    given = {k[len("param_"):]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
    if args.rate is not None:
        given["rate" if args.strategy == "rule-based" else "mlm_probability"] = args.rate
    if args.strategy is None:
        if given:
            raise MaskLabError(f"--{next(iter(given)).replace('_', '-')} needs --strategy.")
        params = {}
    else:
        valid = {p.name for p in STRATEGIES[args.strategy].params}
        wrong = sorted(set(given) - valid)
        if wrong:
            raise MaskLabError(
                f"--{wrong[0].replace('_', '-')} is not an option of the {args.strategy} strategy; its options: "
                + ", ".join(f"--{v.replace('_', '-')}" for v in sorted(valid))
            )
        params = given
    protect = [rule.strip() for rule in args.protect.split(",") if rule.strip()]
    return build_strategy(args.strategy, params, args.privacy, protect, args.exclude)


@command("predict")
def run_predict(args: argparse.Namespace) -> dict:
    from mlm_core.explore import explore
    from mlm_core.models import load_model
    from mlm_core.predict import fill_text

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
        "fill": prediction.fill,
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


@command("mask")
def run_mask(args: argparse.Namespace) -> dict:
    from mlm_core.explore import reading_tokens, surprisal_scores
    from mlm_core.masking import Vocab, apply_strategy
    from mlm_core.models import load_model
    from mlm_core.training import is_adaptive

    loaded = load_model(args.model, args.device)
    strategy = strategy_from_args(args)
    tokens, privacy = reading_tokens(loaded, args.text, strategy)
    protected = privacy.protected_positions(tokens) if privacy else ()
    scores = surprisal_scores(loaded, tokens) if is_adaptive(strategy) else None
    result = apply_strategy(tokens, strategy, Vocab.from_tokenizer(loaded.tokenizer), rng=args.seed,
                            scores=scores, protected=protected)
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
    marks = {"masked": "M", "random": "R", "kept": "K", "excluded": "X", None: " "}
    lines = [f"model: {record['model']}  strategy: {record['strategy']}  seed: {record['seed']}"]
    for shown, original, kind in zip(record["tokens"], record["original_tokens"], record["kinds"]):
        change = f"  (was {original})" if shown != original else ""
        lines.append(f"  [{marks[kind]}] {shown}{change}")
    lines.append(f"ratio (α): {record['ratio']:.3f}")
    lines.extend(f"privacy: {p['kind']} '{p['original']}' -> {p['replacement']}" for p in record["privacy"])
    return "\n".join(lines)


def format_predict(record: dict) -> str:
    lines = [f"model: {record['model']}  (mask token {record['mask_token']}, fill: {record['fill']})"]
    for item in record["predictions"]:
        guesses = ", ".join(f"{c['token']} {c['prob']:.3f}" for c in item["top"])
        lines.append(f"position {item['position']}: {guesses}")
    lines.append(f"filled: {record['filled_text']}")
    lines.extend(f"note: {notice}" for notice in record["notices"])
    return "\n".join(lines)


FORMATTERS: dict[str, Callable[[dict], str]] = {"predict": format_predict, "mask": format_mask}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlm_core",
        description="MaskLab: see and test what masking does to masked language models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="predict the masked positions of a text")
    p.add_argument("text", help="text with the model's mask token, e.g. 'Paris is the capital of [MASK].'")
    add_model_argument(p)
    p.add_argument("--top-k", type=positive_int, default=5, help="guesses per position (default 5)")
    p.add_argument("--fill", choices=["independent", "joint"], default="independent",
                   help="independent: one pass; joint: fill one mask at a time, most confident first")
    add_strategy_arguments(p, required=False)
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = sub.add_parser("mask", help="show how a masking strategy corrupts a text")
    p.add_argument("text", help="the text to mask")
    add_model_argument(p)
    add_strategy_arguments(p, required=True)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        record = COMMANDS[args.command](args)
    except MaskLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line for the user, the traceback only on request
        if os.environ.get("MASKLAB_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set MASKLAB_DEBUG=1 for details)", file=sys.stderr)
        return 1
    try:
        if args.json:
            print(json.dumps(record, ensure_ascii=False, indent=1))
        else:
            print(FORMATTERS[args.command](record))
    except BrokenPipeError:  # e.g. piped into head: the reader has what it wanted
        sys.stderr.close()
    return 0
