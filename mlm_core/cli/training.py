"""What ``train`` and ``experiment`` share: the training flags (declared by TrainConfig), the run store
named by ``--out``, the progress printer and the run store's storage faults as one clear line.

    parser = argparse.ArgumentParser(); add_train_arguments(parser)
    config = train_config_from_args(parser.parse_args(["--corpus", "c.txt", "--steps", "50"]), "c.txt")
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlm_core.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_RUN_CANCELLED,
    EXIT_RUN_FAILED,
    EXIT_RUN_INTERRUPTED,
    add_model_argument,
    add_strategy_arguments,
    add_text_file_arguments,
    folder_argument,
    strategy_from_args,
)
from mlm_core.errors import InputError, MaskLabError
from mlm_core.settings import ParamSpec

# TrainConfig settings whose flag keeps an older, shorter name:
TRAIN_FLAG_NAMES = {"batch_size": "batch", "prune_sparsity": "prune"}
# ...and those set by other flags: --text-unit (how any text file is read), --static/--dynamic, the masking
# --seed, and checkpoint_every (--checkpoint-evals: counted in evaluations, as on the Fine-tune page).
SET_BY_OTHER_FLAGS = ("text_unit", "masking", "seed", "checkpoint_every")
RUN_EXIT_HELP = (
    f"Exit status of train and runs resume: 0 the run finished; {EXIT_BAD_INPUT} bad input (settings refused "
    f"before the run starts, a run store that cannot be written); {EXIT_RUN_FAILED} the run failed or diverged; "
    f"{EXIT_RUN_INTERRUPTED} it was interrupted and can be resumed (a full disk, a folder it cannot write: "
    "`runs resume RUN_ID` once fixed); "
    f"{EXIT_RUN_CANCELLED} it was cancelled; {EXIT_INTERRUPTED} Ctrl-C. Each but 0 prints one error: line "
    "with the reason; the run's log.txt keeps any traceback."
)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every ``train`` flag: the corpus, the model, the masking scheme and the training settings."""
    parser.add_argument("--corpus", default=None, help="txt (one text per line), CSV/TSV or JSONL file")
    add_text_file_arguments(parser, "corpus")
    from mlm_core.text.datasets import add_dataset_arguments

    add_dataset_arguments(parser)  # written as a txt corpus; over the corpus size limit it is streamed
    from mlm_core.training.scratch import SCRATCH_MODELS

    add_model_argument(parser, "".join(f", or {name} ({about})" for name, about in SCRATCH_MODELS.items()))
    add_strategy_arguments(parser, required=False)
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--static", dest="masking", action="store_const", const="static",
                      help="one mask per example, reused every epoch")
    when.add_argument("--dynamic", dest="masking", action="store_const", const="dynamic",
                      help="a fresh mask each epoch (default)")
    parser.set_defaults(masking="dynamic")
    settings = parser.add_argument_group("training settings (limits and defaults: TrainConfig)")
    length = settings.add_mutually_exclusive_group()
    for spec in train_setting_specs():
        add_setting_flag(length if spec.name in ("steps", "epochs") else settings, spec,
                         TRAIN_FLAG_NAMES.get(spec.name, spec.name))
    parser.add_argument("--freeze", nargs="*", default=[], metavar="PART",
                        help="freeze parts: embeddings, layer.N, all-but-head")
    parser.add_argument("--out", default=None,
                        help="run store folder (default ~/.masklab/runs or $MASKLAB_HOME/runs)")
    parser.epilog = RUN_EXIT_HELP


def train_setting_specs() -> tuple[ParamSpec, ...]:
    """The training settings that have a ``train`` flag of their own: TrainConfig's, and CHECKPOINT_EVALS."""
    from mlm_core.settings import param_specs
    from mlm_core.training import CHECKPOINT_EVALS, TrainConfig

    own = tuple(spec for spec in param_specs(TrainConfig) if spec.name not in SET_BY_OTHER_FLAGS)
    return (*own, CHECKPOINT_EVALS)


def add_setting_flag(parser, spec: ParamSpec, name: str) -> None:
    """``--name`` for a declared setting: its help, default and limits; a bad value is a usage error."""

    def parse(text: str):
        try:
            return spec.parse(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    default = "" if spec.default is None else f" (default {spec.format(spec.default)})"
    metavar = "{" + ",".join(spec.choices) + "}" if spec.choices else spec.kind.upper()
    # Several choices (--log-with): the flag repeated, or a comma list, or both; each use adds its items.
    several = {"action": "extend"} if spec.kind == "multi_choice" else {}
    if several:
        default = "; repeat the flag or give a comma list" + (default if spec.default else "")
    parser.add_argument(f"--{name.replace('_', '-')}", dest=spec.name, type=parse, default=None, metavar=metavar,
                        help=(spec.help.rstrip(".") + default).replace("%", "%%"), **several)  # argparse %-formats


def train_config_from_args(args: argparse.Namespace, corpus_name: str):
    """The TrainConfig that ``add_train_arguments``' flags describe; an unset flag keeps TrainConfig's default."""
    from mlm_core.masking import params_of
    from mlm_core.training import TrainConfig

    strategy = strategy_from_args(args)
    given = {spec.name: getattr(args, spec.name) for spec in train_setting_specs()}
    settings = {name: value for name, value in given.items() if value is not None}
    if args.epochs is not None:
        settings["steps"] = None  # the flags exclude each other; in TrainConfig steps would win
    steps = settings.get("steps", TrainConfig.spec("steps").default)
    settings.update(TrainConfig.cadence(steps, settings.pop("eval_every", None), settings.pop("checkpoint_evals", None)))
    return TrainConfig(
        corpus_name=corpus_name, corpus_column=args.column, text_unit=args.text_unit,
        model=args.model, strategy=strategy.name if strategy else "random",
        strategy_params=params_of(strategy) if strategy else {},
        masking=args.masking, freeze=args.freeze, seed=args.seed, device=args.device, **settings,
    )


def open_store(args: argparse.Namespace):
    from mlm_core.training.jobs import default_store
    from mlm_core.training.store import RunStore

    store = RunStore(folder_argument(args.out, "--out")) if args.out else default_store()
    notice = store.take_rebuilt_notice()  # the index was empty or damaged: rebuilt from the run folders
    if notice:
        print(f"note: {notice}", file=sys.stderr)
    return store


class ProgressPrinter:
    """Training progress: JSON lines with --json, else a progress bar on a terminal."""

    def __init__(self, as_json: bool, run_id: str):
        self.as_json = as_json
        self.run_id = run_id
        self.bar = None

    def __call__(self, event: str, data: dict) -> None:
        if self.as_json:
            if event != "step":
                print(json.dumps({"event": event, "run_id": self.run_id, **data}, default=str), flush=True)
            return
        if event == "preparing":  # a corpus over the size limit being tokenized: one line every few seconds
            from mlm_core.training.streaming import preparing_text

            print(preparing_text(data), file=sys.stderr, flush=True)
        elif event == "start":
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


@contextmanager
def storage_errors(args: argparse.Namespace) -> Iterator[None]:
    """A full or read-only run store met outside a run (creating it, resuming, cancelling): one clear line.

    Inside a run, ``jobs.execute`` turns the same faults into an interrupted run.
    """
    import sqlite3

    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        from mlm_core.policy import masklab_home
        from mlm_core.training import checkpoints

        root = Path(args.out) if args.out else masklab_home() / "runs"  # as jobs.default_store names it
        fault = checkpoints.storage_fault(exc, root)
        if fault is None:
            raise
        if fault.kind == checkpoints.FULL:
            raise MaskLabError(f"The disk holding {root} is full ({fault.strerror}); free space and try again."
                               ) from None
        raise MaskLabError(f"Cannot write to {root} ({fault.strerror}); make it writable and try again.") from None
