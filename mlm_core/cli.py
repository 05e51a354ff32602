"""Command-line twin of the app: ``python -m mlm_core COMMAND --help``.

Every command prints readable text, or one JSON document with ``--json``. Bad input gives
one line on stderr and exit status 2; nothing prints a traceback.
"""

from __future__ import annotations

import argparse
import json
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


@command("predict")
def run_predict(args: argparse.Namespace) -> dict:
    from mlm_core.models import load_model
    from mlm_core.predict import fill_text, predict
    from mlm_core.tokens import tokenize

    loaded = load_model(args.model, args.device)
    tokens = tokenize(loaded.tokenizer, args.text)
    result = predict(loaded, tokens.ids, top_k=args.top_k, fill=args.fill)
    return {
        "model": loaded.name,
        "mask_token": loaded.mask_token,
        "tokens": list(tokens.tokens),
        "masked_positions": list(result.positions),
        "fill": result.fill,
        "log_prob": result.log_prob,
        "filled_text": fill_text(loaded, result.filled_ids),
        "predictions": [
            {
                "position": p.position,
                "fill_step": p.fill_step,
                "top": [{"token": c.token, "prob": c.prob} for c in p.top],
            }
            for p in result.predictions
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


FORMATTERS: dict[str, Callable[[dict], str]] = {"predict": format_predict}


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
    if args.json:
        print(json.dumps(record, ensure_ascii=False, indent=1))
    else:
        print(FORMATTERS[args.command](record))
    return 0
