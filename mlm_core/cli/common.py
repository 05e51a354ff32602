"""What every command shares: the ``Command`` declaration, exit codes, one-line errors, printing,
reading user files, and the argument groups several commands add (model, masking strategy, text file).

Command modules import from here and never from ``mlm_core.cli`` itself, so there is no import cycle.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from mlm_core.errors import InputError, MaskLabError
from mlm_core.text.corpus import one_line

# Exit statuses (README, "Command line"). A training run that ends in any state but finished exits non-zero
# with one ``error:`` line naming the reason; its traceback, if any, is in the run's log.txt.
EXIT_OK = 0
EXIT_BUG = 1  # an unexpected exception: still one line, the traceback only with MASKLAB_DEBUG=1
EXIT_BAD_INPUT = 2  # also argparse's status for a usage error, and settings refused before a run starts
EXIT_RUN_FAILED = 3  # train / runs resume: the run failed or diverged; it cannot be resumed
EXIT_RUN_INTERRUPTED = 4  # the run stopped but can go on (a full disk, a read-only folder): `runs resume ID`
EXIT_RUN_CANCELLED = 5  # the run was cancelled (`runs cancel`, the Runs page)
EXIT_INTERRUPTED = 130  # the shell's 128 + SIGINT (Ctrl-C; a foreground run is then resumable too)


@dataclass(frozen=True)
class Printed:
    """A command's result when it has already printed its output itself (``train --json`` streams
    JSON lines; a non-main process under ``accelerate launch`` prints nothing): ``main`` prints no more."""

    record: dict | None = None
    exit_code: int = EXIT_OK


@dataclass(frozen=True)
class Command:
    """One subcommand, declared once: ``registry.COMMANDS`` lists these and builds the parser from them.

    ``run`` returns a JSON-ready dict, printed as JSON with ``--json`` or through ``format_text``
    otherwise, or ``Printed`` when it printed already. ``json_help=None``: the command has no ``--json``.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict | Printed]
    format_text: Callable[[dict], str]
    json_help: str | None = "print one JSON document"
    # True: options the parser does not know reach ``run`` as ``args.extra_options`` (``app`` passes them
    # on to Streamlit); False: they are a usage error.
    extra_options: bool = False


# Characters a terminal acts on instead of showing: C0 controls but tab and line feed (ESC starts
# ANSI/OSC sequences that recolour, retitle or clear), DEL, the C1 controls (\x9b is an 8-bit CSI, and
# many terminals take it UTF-8 encoded too), the line and paragraph separators, the bidirectional
# embeddings, overrides and isolates (they reorder what is shown), and lone surrogates, which no
# terminal encoding takes. Text read from corpora, tokenizers, run names or ids may hold any of them.
TERMINAL_ACTIVE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
MAX_MESSAGE_CHARS = 1000  # an error line quoting a huge value stays one readable line


def terminal_text(text: str) -> str:
    r"""``text`` with every character of ``TERMINAL_ACTIVE`` written as its Python escape, so a terminal
    shows it instead of acting on it: ``terminal_text("a\x1b[2Jb") == r"a\x1b[2Jb"``."""
    return TERMINAL_ACTIVE.sub(lambda match: ascii(match.group())[1:-1], text)


def json_text(document: str) -> str:
    """A JSON document with the ``TERMINAL_ACTIVE`` characters that ``json.dumps(ensure_ascii=False)``
    leaves raw (it escapes only those below U+0020) written as ``\\uXXXX`` escapes: the same JSON for
    a parser, inert on a terminal. They occur only inside strings, so the document stays valid."""
    return TERMINAL_ACTIVE.sub(lambda match: f"\\u{ord(match.group()):04x}", document)


def one_line_message(exc: BaseException) -> str:
    """The message on one line: the contract is one ``error:`` line; some libraries' messages span several."""
    return message_line(str(exc)) or type(exc).__name__


def message_line(message: str) -> str:
    """``message`` as one line for the terminal: its lines joined, control characters escaped
    (``terminal_text``: a message may quote a corpus line or an id) and cut at ``MAX_MESSAGE_CHARS``."""
    message = terminal_text(" ".join(part.strip() for part in message.splitlines() if part.strip()))
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


def emit(text: str, as_json_record: dict | None = None) -> None:
    """Print a command's text, or its JSON document when ``as_json_record`` is given, with control
    characters escaped (``terminal_text``, ``json_text``): corpus lines, tokens and run names reach the
    terminal as text, never as escape sequences. Where the terminal cannot encode the rest (CJK on a
    Latin-1 console), JSON falls back to ASCII escapes, text to backslashes."""
    text = terminal_text(text) if as_json_record is None else json_text(text)
    try:
        print(text)
    except UnicodeEncodeError:  # raised before anything is written: print encodes the whole string first
        if as_json_record is not None:
            print(json.dumps(as_json_record, ensure_ascii=True, indent=1, default=str))
        else:
            encoding = sys.stdout.encoding or "utf-8"
            print(text.encode(encoding, errors="backslashreplace").decode(encoding, errors="replace"))


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


def folder_argument(name: str | None, option: str):
    """``name`` (from ``option``, e.g. ``--cache-dir``) as the Path of a folder the command may create;
    InputError when it, or a folder above it, is a file. None stays None.

    Checked before any work, so the user reads "--cache-dir must be a folder; 'x' is a file." at once
    rather than a FileExistsError after the model has loaded.
    """
    from pathlib import Path

    if name is None:
        return None
    path = Path(name).expanduser()
    try:
        for part in (path, *path.parents):  # the nearest part that exists decides
            if part.is_dir():
                return path
            if part.exists():
                where = "" if part == path else f"inside '{one_line(str(part), 120)}', which is "
                raise InputError(f"{option} must be a folder; '{one_line(name, 120)}' is {where}a file.")
    except OSError as exc:  # no permission to look, a name too long for the file system
        raise InputError(f"Cannot use {option} '{one_line(name, 120)}': {exc.strerror or exc}.") from None
    return path


def output_file_argument(name: str | None, option: str):
    """``name`` (from ``option``, e.g. ``--out``) as the Path of a file to write; InputError when it is
    a folder or its folder is missing or a file. Checked before any work (an evaluation takes minutes)."""
    from pathlib import Path

    if name is None:
        return None
    path = Path(name).expanduser()
    shown = one_line(name, 120)
    try:
        if path.is_dir():
            raise InputError(f"Cannot write {option} '{shown}': it is a folder; name a file.")
        folder = path.parent
        if folder.exists() and not folder.is_dir():
            raise InputError(f"Cannot write {option} '{shown}': '{one_line(str(folder), 120)}' is a file, not a folder.")
        if not folder.is_dir():
            raise InputError(f"Cannot write {option} '{shown}': its folder does not exist.")
    except OSError as exc:
        raise InputError(f"Cannot use {option} '{shown}': {exc.strerror or exc}.") from None
    return path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_argument(parser: argparse.ArgumentParser, also: str = "") -> None:
    """--model and --device; ``also`` names more models the command accepts (``train``: the scratch models)."""
    parser.add_argument("--model", default=None, help=f"hub id, local folder or a finished run as run:ID{also} "
                        "(default: the built-in model)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: GPU when present)")


def add_text_file_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--column and --text-unit: how a txt, CSV/TSV or JSONL ``what`` (corpus, file) is read into texts."""
    parser.add_argument("--column", default=None, help=f"text column of a CSV/TSV/JSONL {what}")
    parser.add_argument("--text-unit", choices=["line", "paragraph"], default="line",
                        help="txt: a text per line or paragraph")


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
    from mlm_core.masking import MAIN_STRATEGIES

    group = parser.add_argument_group("masking (options apply to the chosen strategy)")
    group.add_argument("--strategy", choices=MAIN_STRATEGIES, required=required, default=None,
                       help="how positions are chosen (default: only the typed mask tokens)")
    for name, help_text in strategy_param_names().items():
        if name == "rate":
            continue  # --rate below covers it for the rule-based strategy
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"param_{name}", default=None, metavar="VALUE",
                           help=help_text.replace("%", "%%"))  # argparse %-formats help; a spec may say "15%"
    group.add_argument("--rate", default=None, metavar="P",
                       help="masking rate: --mlm-probability, or the rule-based share of matching words")
    group.add_argument("--privacy", action="store_true", help="replace names, addresses, places, e-mails, URLs, phones and numbers first")
    group.add_argument("--protect", default="", help="never mask these: stopwords,punctuation,numbers")
    group.add_argument("--exclude", default="", help="remove from the context: stopwords, punctuation or numbers")
    group.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")


def strategy_from_args(args: argparse.Namespace):
    """The strategy that ``add_strategy_arguments``' flags describe (None: only the typed mask tokens)."""
    from mlm_core.masking import STRATEGIES, build_strategy

    given = {k[len("param_"):]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
    if args.rate is not None:
        given["rate" if args.strategy == "rule-based" else "mlm_probability"] = args.rate
    language = given.pop("language", None)  # the text's: every step that reads words gets it, whatever the strategy
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
    return build_strategy(args.strategy, params, args.privacy, protect, args.exclude, language)
