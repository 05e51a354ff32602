"""Views of the run store for the Runs and Fine-tune pages: the runs table, progress and ETA,
metric curves in long form, configs side by side, and a run's model as a zip.

Everything returns pandas frames or dataclasses (figures are built in ``charts``).

Example::

    frame = runs_table(store.list())
    curves = compare_metrics({"run A": store.metrics(a), "run B": store.metrics(b)})
    table = config_table({"run A": record_a.config, "run B": record_b.config})
"""

from __future__ import annotations

import io
import math
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlm_core.errors import InputError
from mlm_core.training.costs import time_left
from mlm_core.training.planning import HIDDEN_MODEL, model_name, strategy_rate
from mlm_core.training.store import QUEUED, RUNNING, RunRecord

ACTIVE_STATES = (QUEUED, RUNNING)
METRICS = {  # metrics.jsonl key → label; one chart per metric
    "train_loss": "train loss",
    "heldout_loss": "held-out loss",
    "perplexity": "held-out perplexity",
    "masked_accuracy": "masked-token accuracy",
    "masked_top5": "masked-token top-5 accuracy",
    "tokens_per_s": "tokens/s",
    "masking_rate": "masking rate",
    "lr": "learning rate",
}
CATEGORY_PREFIX = "accuracy: "  # by-category accuracies: "accuracy: stopword", ...
TABLE_COLUMNS = ("run", "name", "status", "model", "strategy", "masking", "steps", "best held-out loss",
                 "best accuracy", "device", "duration", "created")
MAX_ZIP_BYTES = 4 * 1024**3  # a model folder larger than this is refused (zip is built in memory)
Reveal = Callable[[str], bool]  # whether a base model may be shown by its name: planning.model_name


def format_duration(seconds: float | None) -> str:
    """'2 h 05 min', '3 min 20 s', '12 s' or '—'."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def generated_name(config: Mapping, reveal: Reveal | None = None) -> str:
    """A run's name made from its settings, e.g. 'whole-word 30% · masklab-minilm-en · 200 steps'.

    Strategy and rate, ``static`` when the mask is fixed (dynamic is the default), the model (a
    hub id or folder by its last part, or ``HIDDEN_MODEL`` where ``reveal`` hides it: see
    ``planning.model_name``) and the length.
    """
    strategy = str(config.get("strategy") or "random")
    try:
        rate = strategy_rate(strategy, dict(config.get("strategy_params") or {}))
    except Exception:  # noqa: BLE001 - a config from an older version: name it without the rate
        rate = None
    what = strategy + (f" {rate:.0%}" if rate is not None else "")
    if config.get("masking") == "static":
        what += " static"
    model = model_name(config.get("model"), reveal)
    model = model if model.startswith("run ") or model == HIDDEN_MODEL else Path(model).name or model
    steps, epochs = config.get("steps"), config.get("epochs")
    length = f"{steps} steps" if steps else f"{epochs} epoch{'s' if epochs != 1 else ''}" if epochs else ""
    return " · ".join(part for part in (what, model, length) if part)


def run_name(record: RunRecord, reveal: Reveal | None = None) -> str:
    """The name the user gave the run, else the one made from its settings (plain text: escape it)."""
    return record.name or generated_name(record.config, reveal)


def run_label(record: RunRecord, status: bool = True, reveal: Reveal | None = None) -> str:
    """A run in menus and legends: its name, when it was created (which tells runs of one name
    apart) and, unless ``status`` is False, its status."""
    created = time.strftime("%d %b %H:%M:%S", time.localtime(record.created))
    return f"{run_name(record, reveal)} · {created}" + (f" · {record.status}" if status else "")


def run_reason(record: RunRecord, reveal: Reveal | None = None) -> str:
    """Why the run stopped (empty when it did not), with its base model written as ``model_name`` names
    it where ``reveal`` hides it: a loading error quotes the folder it read.

    Example: "Cannot load '/home/t/private': …" reads "Cannot load 'a model not offered on this server': …".
    """
    reason = record.reason or ""
    model = record.config.get("model")
    if not reason or not isinstance(model, str) or model_name(model, reveal) != HIDDEN_MODEL:
        return reason
    spellings = {model.rstrip("/") or model}
    try:
        spellings.add(str(Path(model).expanduser().resolve()))  # how a loader quotes what it opened
        spellings.add(str(Path(model).expanduser()))
    except (OSError, ValueError, RuntimeError):
        pass
    spellings = {spelling for spelling in spellings if any(c.isalnum() for c in spelling)}  # not "." or "/"
    for spelling in sorted(spellings, key=len, reverse=True):  # the longest first: no half-replaced path
        reason = reason.replace(spelling, HIDDEN_MODEL)
    return reason


def shown_config(config: Mapping, reveal: Reveal | None = None) -> Mapping:
    """``config`` with its base model replaced by ``HIDDEN_MODEL`` where ``reveal`` hides it."""
    model = config.get("model")
    if reveal is None or model is None or model_name(model, reveal) != HIDDEN_MODEL:
        return config
    return {**config, "model": HIDDEN_MODEL}


def runs_table(records: Sequence[RunRecord], reveal: Reveal | None = None) -> pd.DataFrame:
    """One row per run with the columns of ``TABLE_COLUMNS`` (numbers stay numbers for sorting); base
    models that ``reveal`` hides read ``HIDDEN_MODEL`` (``planning.model_name``), in the name too."""
    rows = []
    for r in records:
        c = r.config
        steps = r.total_steps or c.get("steps")
        rows.append({
            "run": r.id,
            "name": run_name(r, reveal),
            "status": r.status,
            "model": model_name(c.get("model"), reveal),
            "strategy": c.get("strategy", ""),
            "masking": c.get("masking", ""),
            "steps": f"{r.step}/{steps if steps is not None else '?'}",
            "best held-out loss": r.best_heldout_loss,
            "best accuracy": r.best_accuracy,
            "device": r.device or "",
            "duration": r.duration,
            "created": pd.Timestamp(r.created, unit="s").tz_localize("UTC").tz_convert(None).floor("s"),
        })
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def filter_runs(frame: pd.DataFrame, statuses: Sequence[str] = (), text: str = "",
                sort_by: str = "created", descending: bool = True) -> pd.DataFrame:
    """Rows whose status is in ``statuses`` (all if empty) and whose text columns contain ``text``."""
    kept = frame
    if statuses:
        kept = kept[kept["status"].isin(list(statuses))]
    text = text.strip().lower()
    if text:
        haystack = kept[["run", "name", "model", "strategy", "masking", "device"]].astype(str).agg(" ".join, axis=1)
        kept = kept[haystack.str.lower().str.contains(text, regex=False)]
    if sort_by in kept.columns:
        kept = kept.sort_values(sort_by, ascending=not descending, na_position="last", kind="stable")
    return kept.reset_index(drop=True)


# ----------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class Progress:
    fraction: float  # 0..1
    eta_s: float | None  # None until a step has been timed
    text: str


def progress(record: RunRecord, now: float | None = None, pace: dict | None = None) -> Progress:
    """How far a run is, and its time left: from its completed steps' rate when its ``pace`` (the job's
    pace.json, ``costs.time_left``) is given, so it never rises while a step runs; else from the time
    since it started."""
    now = time.time() if now is None else now
    total = record.total_steps or record.config.get("steps") or 0
    fraction = min(1.0, record.step / total) if total else 0.0
    eta = None
    if record.status == RUNNING and pace is not None:
        eta = time_left(pace, total, now)
    elif record.status == RUNNING and record.started and record.step > 0 and total:
        elapsed = now - record.started
        eta = elapsed / record.step * (total - record.step)
    text = f"step {record.step:,}/{total:,}" if total else f"step {record.step:,}"
    if record.status == RUNNING:
        text += f" · about {format_duration(eta)} left" if eta is not None else " · starting"
    elif record.status == QUEUED:
        text += " · queued (waiting for a free slot)"
    else:
        text += f" · {record.status}"
        if record.duration is not None:
            text += f" after {format_duration(record.duration)}"
    return Progress(fraction, eta, text)


# ----------------------------------------------------------------------------- metrics


def metric_frame(metrics: Sequence[Mapping]) -> pd.DataFrame:
    """Long form (step, metric, value) of one run's evaluations; categories as 'accuracy: <name>'."""
    rows = []
    for record in metrics:
        step = record.get("step")
        for key, label in METRICS.items():
            value = record.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                rows.append((step, label, float(value)))
        for category, stats in sorted((record.get("by_category") or {}).items()):
            rows.append((step, CATEGORY_PREFIX + category, float(stats.get("top1", math.nan))))
    return pd.DataFrame(rows, columns=["step", "metric", "value"])


def compare_metrics(runs: Mapping[str, Sequence[Mapping]]) -> pd.DataFrame:
    """Long form (run, step, metric, value) of several runs (label → metrics)."""
    frames = [metric_frame(metrics).assign(run=label) for label, metrics in runs.items()]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["run", "step", "metric", "value"])
    return pd.concat(frames, ignore_index=True)[["run", "step", "metric", "value"]]


EVAL_FIELDS = ("step", "heldout_loss", "perplexity", "masked_accuracy", "masked_top5")


def best_and_final(metrics: Sequence[Mapping]) -> tuple[dict | None, dict | None]:
    """(best, final) evaluations of a run: the lowest held-out loss, and the last one.

    The final evaluation is at the last step, so for a finished run it measures the saved model;
    the best may be earlier (the saved model is the final one, not the best). None when none.
    """
    evaluated = [m for m in metrics if isinstance(m.get("heldout_loss"), int | float) and math.isfinite(m["heldout_loss"])]
    if not evaluated:
        return None, None
    best = min(evaluated, key=lambda m: m["heldout_loss"])  # the first of equal losses, as the trainer keeps it
    return ({k: best.get(k) for k in EVAL_FIELDS}, {k: evaluated[-1].get(k) for k in EVAL_FIELDS})


def categories(frame: pd.DataFrame) -> list[str]:
    """The by-category accuracy metrics present in a metric frame."""
    return sorted(m for m in frame["metric"].unique() if str(m).startswith(CATEGORY_PREFIX))


# ----------------------------------------------------------------------------- configs


def _flatten(config: Mapping, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, list | tuple):
            flat[name] = ", ".join(map(str, value)) or "—"
        else:
            flat[name] = "—" if value is None or value == {} else str(value)
    return flat


def config_table(configs: Mapping[str, Mapping], reveal: Reveal | None = None) -> pd.DataFrame:
    """Settings (rows) × runs (columns), plus a boolean 'differs' column; differing rows first. A base
    model that ``reveal`` hides reads ``HIDDEN_MODEL`` (``shown_config``)."""
    flat = {label: _flatten(shown_config(config, reveal)) for label, config in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    table = pd.DataFrame({label: [f.get(k, "—") for k in keys] for label, f in flat.items()}, index=keys)
    table.index.name = "setting"
    table["differs"] = table.nunique(axis=1) > 1
    return table.sort_values("differs", ascending=False, kind="stable")


# ----------------------------------------------------------------------------- files


def zip_folder(folder: Path) -> bytes:
    """The folder's files as a zip (paths relative to the folder). Built in memory, on request."""
    folder = Path(folder)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()]
    if sum(p.stat().st_size for p in files) > MAX_ZIP_BYTES:
        raise InputError(f"The model folder is over {MAX_ZIP_BYTES / 1024**3:.0f} GB; copy it from {folder}.")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:  # weights barely compress
        for path in files:
            archive.write(path, f"{folder.parent.name}-model/{path.relative_to(folder)}")
    return buffer.getvalue()
