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

from mlm_core.cli import explain as cli_explain
from mlm_core.errors import MaskLabError

EXIT_BAD_INPUT = 2
COMMANDS: dict[str, Callable[[argparse.Namespace], dict]] = {}


def command(name: str):
    def register(function):
        COMMANDS[name] = function
        return function

    return register


def read_user_file(name: str, what: str) -> bytes:
    """The bytes of a file named on the command line; MaskLabError when it cannot be used.

    The size is checked before reading, so a huge file is refused without filling memory.
    """
    from pathlib import Path

    from mlm_core.text.corpus import MAX_CORPUS_BYTES, one_line, too_big

    path = Path(name)
    shown = one_line(name, 120)
    try:
        if not path.is_file():
            raise MaskLabError(f"No {what} at '{shown}'.")
        size = path.stat().st_size
        if size > MAX_CORPUS_BYTES:  # refused before reading: memory stays bounded
            raise too_big(size)
        return path.read_bytes()
    except OSError as exc:  # no permission, a name too long for the file system, a read error
        raise MaskLabError(f"Cannot read '{shown}': {exc.strerror or exc}.") from None


def one_line_message(exc: BaseException) -> str:
    """The message on one line: the contract is one ``error:`` line; some libraries' messages span several."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__


def emit(text: str, as_json_record: dict | None = None) -> None:
    """Print ``text`` even where the terminal cannot encode all of it (a lone surrogate from an
    undecodable argument, CJK on a Latin-1 console): JSON falls back to ASCII escapes, text to backslashes."""
    try:
        print(text)
    except UnicodeEncodeError:  # raised before anything is written: print encodes the whole string first
        if as_json_record is not None:
            print(json.dumps(as_json_record, ensure_ascii=True, indent=1, default=str))
        else:
            encoding = sys.stdout.encoding or "utf-8"
            print(text.encode(encoding, errors="backslashreplace").decode(encoding, errors="replace"))


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
    from mlm_core.explain.exploration import MAIN_STRATEGIES

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
    from mlm_core.explain.exploration import build_strategy
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
    from mlm_core.explain.exploration import reading_tokens, surprisal_scores
    from mlm_core.masking import Vocab, apply_strategy
    from mlm_core.model.loading import load_model
    from mlm_core.training.trainer import is_adaptive

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


def _store(args: argparse.Namespace):
    from mlm_core.training.jobs import default_store
    from mlm_core.training.store import RunStore

    return RunStore(args.out) if args.out else default_store()


def _final_record(record) -> dict:
    data = record.as_dict()
    data["held_out_loss"] = data.get("best_heldout_loss")
    data["masked_accuracy"] = data.get("best_accuracy")
    return data


class ProgressPrinter:
    """Training progress: JSON lines with --json, else a progress bar on a terminal."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.bar = None

    def __call__(self, event: str, data: dict) -> None:
        if self.as_json:
            if event != "step":
                print(json.dumps({"event": event, **data}), flush=True)
            return
        if event == "start":
            from tqdm import tqdm

            self.bar = tqdm(total=data["total_steps"], initial=data["resumed_from"], unit="step",
                            disable=not sys.stderr.isatty(), file=sys.stderr)
            print(f"training on {data['device']}: {data['train_blocks']} blocks, {data['total_steps']} steps",
                  file=sys.stderr)
        elif event == "step" and self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{data['loss']:.3f}")
        elif event == "eval":
            line = (f"step {data['step']}: train loss {data['train_loss']:.3f}, held-out loss "
                    f"{data.get('heldout_loss', float('nan')):.3f}, accuracy {data.get('masked_accuracy', 0):.3f}, "
                    f"{data['tokens_per_s']:.0f} tokens/s")
            (self.bar.write if self.bar is not None else print)(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_foreground(store, run_id: str, as_json: bool) -> dict:
    from mlm_core.training.jobs import execute

    printer = ProgressPrinter(as_json)
    try:
        record = execute(store, run_id, printer)
    finally:
        printer.close()
    final = _final_record(record)
    if as_json:  # the last JSON line is the run's final record; nothing more is printed
        print(json.dumps({"event": "final", **final}, default=str), flush=True)
        final["_printed"] = True
    return final


@command("train")
def run_train(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from mlm_core.masking import params_of
    from mlm_core.training.jobs import submit
    from mlm_core.training.trainer import TrainConfig

    corpus_path = Path(args.corpus)
    corpus_bytes = read_user_file(args.corpus, "corpus file")
    strategy = strategy_from_args(args)
    config = TrainConfig(
        corpus_name=corpus_path.name, corpus_column=args.column, text_unit=args.text_unit,
        model=args.model, strategy=strategy.name if strategy else "random",
        strategy_params=params_of(strategy) if strategy else {},
        masking=args.masking, rate_schedule=args.rate_schedule, rate_end=args.rate_end,
        steps=None if args.epochs and not args.steps else (args.steps or 200), epochs=args.epochs,
        batch_size=args.batch, seq_len=args.seq_len, lr=args.lr, freeze=args.freeze,
        prune_sparsity=args.prune, eval_every=args.eval_every, checkpoint_every=args.eval_every,
        seed=args.seed, device=args.device,
    )
    store = _store(args)
    record, _ = submit(store, config, corpus_bytes, launch=False)
    return _run_foreground(store, record.id, args.json)


@command("runs")
def run_runs(args: argparse.Namespace) -> dict:
    from mlm_core.training import jobs

    store = _store(args)
    if args.action == "list":
        return {"runs": [_final_record(r) for r in store.list()]}
    if not args.run_id:
        raise MaskLabError(f"runs {args.action} needs a run id (see `python -m mlm_core runs list`).")
    if args.action == "show":
        store.refresh()
        record = _final_record(store.get(args.run_id))
        record["metrics"] = store.metrics(args.run_id)
        return record
    if args.action == "cancel":
        return _final_record(store.request_cancel(args.run_id))
    if args.action == "delete":
        store.delete(args.run_id)
        return {"run_id": args.run_id, "deleted": True}
    jobs.resume(store, args.run_id, launch=False)
    return _run_foreground(store, args.run_id, args.json)


def format_run(record: dict) -> str:
    if record.get("deleted"):
        return f"deleted run {record['run_id']}"
    loss = record.get("held_out_loss")
    accuracy = record.get("masked_accuracy")
    cfg = record.get("config", {})
    return (f"{record['run_id']}  {record['status']:<11}  step {record['step']}/{record.get('total_steps') or '?'}  "
            f"held-out loss {'-' if loss is None else f'{loss:.3f}'}  accuracy "
            f"{'-' if accuracy is None else f'{accuracy:.3f}'}  {cfg.get('strategy', '')}/{cfg.get('masking', '')}"
            + (f"  ({record['reason']})" if record.get("reason") else ""))


def format_runs(record: dict) -> str:
    if "runs" in record:
        return "\n".join(format_run(r) for r in record["runs"]) or "no runs yet"
    return format_run(record)


@command("evaluate")
def run_evaluate(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from mlm_core import evaluate as ev
    from mlm_core.model.loading import load_model
    from mlm_core.text.corpus import read_corpus

    path = Path(args.file)
    corpus = read_corpus(read_user_file(args.file, "file"), path.name, args.column, args.text_unit)
    texts = corpus.texts[: args.limit] if args.limit else corpus.texts
    heads = ev.parse_heads_off(args.heads_off)
    base = ev.EvalConfig.from_strategy(strategy_from_args(args), heads)
    strategies = [name.strip() for name in (args.sweep_strategy or "").split(",") if name.strip()]
    configs = ev.sweep(base, ev.parse_rates(args.sweep_rate) if args.sweep_rate else (), strategies)
    seeds = list(range(args.seed, args.seed + args.seeds))
    options = dict(seeds=seeds, with_pll=not args.no_pll, cache_dir=args.cache_dir, reuse=not args.no_cache)
    bar = None
    if sys.stderr.isatty() and not args.json:
        from tqdm import tqdm

        bar = tqdm(total=len(texts), unit="sentence", file=sys.stderr)

    def progress(done: int, total: int | None, what: str) -> None:
        if bar is not None and total:
            bar.n = round(done / total * len(texts))
            bar.set_description(what[:40])
            bar.refresh()

    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under `accelerate launch`: split, evaluate, gather
            report = ev.evaluate_distributed(args.model, texts, configs, progress=progress, device=args.device,
                                             **options)
            if report is None:  # not the main process: it prints nothing
                return {"_printed": True}
        else:
            report = ev.evaluate(load_model(args.model, args.device), texts, configs, progress=progress, **options)
    finally:
        if bar is not None:
            bar.close()
    record = {"file": corpus.name, "format": corpus.format, "column": corpus.column, **report.to_dict(),
              "outputs": {}}
    record["notices"] = [*corpus.notices, *record["notices"]]  # "read as Windows-1252", as the page warns
    for kind, out in (("sentences", args.out), ("tokens", args.tokens_out)):
        if out:
            try:
                report.write_rows(kind, out)
            except OSError as exc:
                raise MaskLabError(f"Cannot write {out}: {exc.strerror or exc}.") from exc
            record["outputs"][kind] = str(out)
    return record


def _percent(value) -> str:
    return "   -  " if value is None else f"{value:6.1%}"


def _interval(metrics: dict, name: str) -> str:
    low, high = metrics.get(f"{name}_ci") or (None, None)
    return "" if low is None else f" [{low:.1%}, {high:.1%}]"


def format_evaluate(record: dict) -> str:
    lines = [f"model: {record['model']} on {record['device']} · {record['sentences']:,} sentences of {record['file']} · "
             f"seeds {','.join(map(str, record['seeds']))} · {record['seconds']:.1f} s"
             + (f" ({record['cached']} from the cache)" if record["cached"] else "")]
    for config in record["configurations"]:
        pll = config["pll"]
        lines.append("")
        lines.append(f"{config['label']}" + (f"   PLL/token {pll['mean_per_token']:.3f}" if pll else ""))
        groups = [("all", config["overall"]), *config["by_category"].items()]
        for name, metrics in groups:
            log_p = "-" if metrics["mean_log_prob"] is None else f"{metrics['mean_log_prob']:.3f}"
            lines.append(f"  {name:<12} n {metrics['n']:>7,}  top-1 {_percent(metrics['top1'])}"
                         f"{_interval(metrics, 'top1'):<17}  top-5 {_percent(metrics['top5'])}  log p {log_p}")
    lines.append("")
    lines.extend(f"note: {notice}" for notice in record["notices"])
    lines.append(f"note: {record['intervals']}")
    lines.append(f"note: {record['pos']}")
    lines.extend(f"wrote {kind} rows to {out}" for kind, out in record["outputs"].items())
    return "\n".join(lines)


FORMATTERS: dict[str, Callable[[dict], str]] = {
    "predict": format_predict,
    "mask": format_mask,
    "train": format_run,
    "runs": format_runs,
    "evaluate": format_evaluate,
}
COMMANDS.update(attend=cli_explain.run_attend, attribute=cli_explain.run_attribute)
FORMATTERS.update(attend=cli_explain.format_attend, attribute=cli_explain.format_attribute)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line and exit status 2, like every other bad input."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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

    p = sub.add_parser("train", help="fine-tune a masked LM on a corpus with a masking scheme")
    p.add_argument("--corpus", required=True, help="txt (one text per line), CSV/TSV or JSONL file")
    p.add_argument("--column", default=None, help="text column of a CSV/TSV/JSONL corpus")
    p.add_argument("--text-unit", choices=["line", "paragraph"], default="line", help="txt: a text per line or paragraph")
    add_model_argument(p)
    add_strategy_arguments(p, required=False)
    when = p.add_mutually_exclusive_group()
    when.add_argument("--static", dest="masking", action="store_const", const="static",
                      help="one mask per example, reused every epoch")
    when.add_argument("--dynamic", dest="masking", action="store_const", const="dynamic",
                      help="a fresh mask each epoch (default)")
    p.set_defaults(masking="dynamic")
    p.add_argument("--rate-schedule", choices=["constant", "linear", "cosine"], default="constant",
                   help="move the masking rate from --rate to --rate-end over the run")
    p.add_argument("--rate-end", type=float, default=None, help="masking rate at the end of the run")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default 200)")
    length.add_argument("--epochs", type=float, default=None, help="passes over the corpus")
    p.add_argument("--batch", type=positive_int, default=16, help="blocks per step (default 16)")
    p.add_argument("--seq-len", type=positive_int, default=128, help="block length in tokens (default 128)")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    p.add_argument("--freeze", nargs="*", default=[], metavar="PART",
                   help="freeze parts: embeddings, layer.N, all-but-head")
    p.add_argument("--prune", type=float, default=0.0, help="magnitude-pruning sparsity kept during training")
    p.add_argument("--eval-every", type=positive_int, default=50, help="evaluate and checkpoint every N steps")
    p.add_argument("--out", default=None, help="run store folder (default ~/.masklab/runs or $MASKLAB_HOME/runs)")
    p.add_argument("--json", action="store_true", help="one JSON object per line; the last is the final record")

    p = sub.add_parser("runs", help="list, show, resume, cancel or delete training runs")
    p.add_argument("action", choices=["list", "show", "resume", "cancel", "delete"])
    p.add_argument("run_id", nargs="?", help="the run (see runs list)")
    p.add_argument("--out", default=None, help="run store folder (default ~/.masklab/runs)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("evaluate", help="masking experiments over a file of sentences, by token category")
    p.add_argument("file", help="txt (one text per line), CSV/TSV or JSONL file of sentences")
    p.add_argument("--column", default=None, help="text column of a CSV/TSV/JSONL file")
    p.add_argument("--text-unit", choices=["line", "paragraph"], default="line", help="txt: a text per line or paragraph")
    add_model_argument(p)
    add_strategy_arguments(p, required=False)
    p.set_defaults(strategy="random")
    p.add_argument("--sweep-rate", default=None, metavar="RATES",
                   help="masking rates to sweep: start:stop:step (e.g. 0.05:0.8:0.05) or a list (0.1,0.3)")
    p.add_argument("--sweep-strategy", default=None, metavar="NAMES",
                   help="strategy x rate grid: also run these strategies (e.g. random,whole-word,span)")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="masking draws per configuration, seeds --seed .. --seed+N-1 (intervals need 2 or more)")
    p.add_argument("--heads-off", default="", metavar="L:H,...", help="switch attention heads off, e.g. 0:1,2:3")
    p.add_argument("--no-pll", action="store_true", help="skip the pseudo-log-likelihood (one pass per token)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N texts")
    p.add_argument("--out", default=None, help="write per-sentence rows here (.csv, or JSON lines for .json/.jsonl)")
    p.add_argument("--tokens-out", default=None, help="write per-token rows here (.csv or .json/.jsonl)")
    p.add_argument("--cache-dir", default=None, help="result cache (default $MASKLAB_HOME/evaluations)")
    p.add_argument("--no-cache", action="store_true", help="recompute even if these results are cached")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    cli_explain.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        record = COMMANDS[args.command](args)
    except MaskLabError as exc:
        print(f"error: {one_line_message(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line for the user, the traceback only on request
        if os.environ.get("MASKLAB_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {one_line_message(exc)} "
              "(set MASKLAB_DEBUG=1 for details)", file=sys.stderr)
        return 1
    try:
        if record.pop("_printed", False):
            pass  # streamed already (train --json)
        elif args.json:
            emit(json.dumps(record, ensure_ascii=False, indent=1, default=str), record)
        else:
            emit(FORMATTERS[args.command](record))
    except BrokenPipeError:  # e.g. piped into head: the reader has what it wanted
        sys.stderr.close()
    return 0
