"""CLI twin of the Batch page: ``evaluate``, masking experiments over a file of sentences by token category.

    python -m mlm_core evaluate sentences.txt --strategy random --sweep-rate 0.1:0.5:0.1 --seeds 3
    accelerate launch -m mlm_core evaluate sentences.txt --json   # split over processes, one report
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

from mlm_core.cli.common import (
    Command,
    Printed,
    add_model_argument,
    add_strategy_arguments,
    add_text_file_arguments,
    folder_argument,
    output_file_argument,
    positive_int,
    read_user_file,
    strategy_from_args,
)
from mlm_core.errors import CorpusError, InputError, MaskLabError
from mlm_core.text.datasets import TextSource, add_dataset_arguments


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", default=None,
                        help="txt (one text per line), CSV/TSV or JSONL file of sentences")
    add_text_file_arguments(parser, "file")
    add_dataset_arguments(parser)
    parser.add_argument("--stream", action="store_true",
                        help="read a txt file line by line as the evaluation goes: any size, bounded memory "
                        "(UTF-8; the corpus size limit does not apply)")
    add_model_argument(parser)
    add_strategy_arguments(parser, required=False)
    parser.set_defaults(strategy="random")
    parser.add_argument("--sweep-rate", default=None, metavar="RATES",
                        help="masking rates to sweep: start:stop:step (e.g. 0.05:0.8:0.05) or a list (0.1,0.3)")
    parser.add_argument("--sweep-strategy", default=None, metavar="NAMES",
                        help="strategy x rate grid: also run these strategies (e.g. random,whole-word,span)")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="masking draws per configuration, seeds --seed .. --seed+N-1 (intervals need 2 or more)")
    parser.add_argument("--heads-off", default="", metavar="L:H,...", help="switch attention heads off, e.g. 0:1,2:3")
    parser.add_argument("--pll", action=argparse.BooleanOptionalAction, default=None,  # None: evaluate.WITH_PLL
                        help="also the pseudo-log-likelihood of each sentence: one pass per token, so about as many "
                        "times slower as a sentence has tokens (off unless asked; --no-pll skips it)")
    parser.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N texts")
    parser.add_argument("--out", default=None,
                        help="write per-sentence rows here (.csv, or JSON lines for .json/.jsonl)")
    parser.add_argument("--tokens-out", default=None, help="write per-token rows here (.csv or .json/.jsonl)")
    parser.add_argument("--cache-dir", default=None, help="result cache (default $MASKLAB_HOME/evaluations)")
    parser.add_argument("--no-cache", action="store_true", help="recompute even if these results are cached")


def run_evaluate(args: argparse.Namespace) -> dict | Printed:
    from mlm_core import evaluate as ev
    from mlm_core.links import parse_heads_off
    from mlm_core.model.loading import load_model
    from mlm_core.text.corpus import one_line

    # Where results go is checked first: a file named as --cache-dir fails now, not after the evaluation.
    cache_dir = folder_argument(args.cache_dir, "--cache-dir")
    outputs = {"sentences": output_file_argument(args.out, "--out"),
               "tokens": output_file_argument(args.tokens_out, "--tokens-out")}
    corpus = _open_texts(args)
    if isinstance(corpus, TextSource):  # streamed: never held in memory whole
        texts = itertools.islice(corpus, args.limit) if args.limit else iter(corpus)
        count = min(corpus.rows, args.limit or corpus.rows) if corpus.rows is not None else args.limit
        notices = ()
    else:
        texts = corpus.texts[: args.limit] if args.limit else corpus.texts
        count, notices = len(texts), corpus.notices
    heads = parse_heads_off(args.heads_off)
    base = ev.EvalConfig.from_strategy(strategy_from_args(args), heads)
    strategies = [name.strip() for name in (args.sweep_strategy or "").split(",") if name.strip()]
    configs = ev.sweep(base, ev.parse_rates(args.sweep_rate) if args.sweep_rate else (), strategies)
    if args.seeds > ev.MAX_SEEDS:  # before the list of seeds is built: --seeds 10**12 must not fill memory
        raise InputError(f"--seeds must be from 1 to {ev.MAX_SEEDS}; got {args.seeds:,}.")
    seeds = list(range(args.seed, args.seed + args.seeds))
    options = dict(seeds=seeds, with_pll=ev.WITH_PLL if args.pll is None else args.pll, cache_dir=cache_dir, reuse=not args.no_cache)
    bar = None
    if sys.stderr.isatty() and not args.json:
        from tqdm import tqdm

        bar = tqdm(total=count, unit="sentence", file=sys.stderr)

    def progress(done: int, total: int | None, what: str) -> None:
        if bar is not None and total and count:
            bar.n = round(done / total * count)
            bar.set_description(what[:40])
            bar.refresh()

    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under `accelerate launch`: split, evaluate, gather
            texts = texts if isinstance(texts, tuple) else list(texts)  # each process takes a slice
            report = ev.evaluate_distributed(args.model, texts, configs, progress=progress, device=args.device,
                                             **options)
            if report is None:  # not the main process: it prints nothing
                return Printed()
        else:
            report = ev.evaluate(load_model(args.model, args.device), texts, configs, progress=progress,
                                 total=count, **options)
    finally:
        if bar is not None:
            bar.close()
    record = {"file": corpus.name, "format": corpus.format, "column": corpus.column, **report.to_dict(),
              "outputs": {}}
    record["notices"] = [*notices, *record["notices"]]  # "read as Windows-1252", as the page warns
    for kind, out in outputs.items():
        if out:
            try:
                report.write_rows(kind, out)
            except OSError as exc:
                raise MaskLabError(f"Cannot write {one_line(str(out), 120)}: {exc.strerror or exc}.") from exc
            record["outputs"][kind] = str(out)
    return record


def _open_texts(args: argparse.Namespace):
    """A Corpus read whole, or a TextSource streamed (a --dataset, or a txt file with --stream)."""
    from pathlib import Path

    from mlm_core.text.corpus import MAX_CORPUS_BYTES, format_of, read_corpus, too_big
    from mlm_core.text.datasets import open_dataset, stream_text_file

    if (args.file is None) == (args.dataset is None):
        raise InputError("Give a file of sentences or --dataset PATH (one of them).")
    if args.dataset is not None:
        return open_dataset(args.dataset, args.split, args.column)
    if args.split is not None:
        raise InputError("--split goes with --dataset.")
    path = Path(args.file)
    if args.stream:
        if format_of(path.name) != "txt" or args.text_unit != "line":
            raise InputError("--stream reads a txt file with one text per line.")
        return stream_text_file(path)
    try:
        huge = path.is_file() and path.stat().st_size > MAX_CORPUS_BYTES
    except OSError:
        huge = False  # read_user_file says why
    if huge and format_of(path.name) == "txt":
        raise CorpusError(f"{too_big(path.stat().st_size)} Or evaluate it with --stream, line by line.")
    return read_corpus(read_user_file(args.file, "file"), path.name, args.column, args.text_unit)


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


EVALUATE = Command("evaluate", "masking experiments over a file of sentences, by token category",
                   add_evaluate_arguments, run_evaluate, format_evaluate)
