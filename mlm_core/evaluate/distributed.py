"""``evaluate_distributed``: one batch analysis over several processes (``accelerate launch``).

Each process evaluates a contiguous slice of the texts on its own device; the main process gathers
the counts and rows into cache entries keyed as a one-process run's. ``python -m mlm_core evaluate``
does this by itself when launched that way.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch

from mlm_core.evaluate.cache import (
    Entry,
    default_cache_dir,
    entry_key,
    hash_texts,
    model_fingerprint,
    write_summary,
)
from mlm_core.evaluate.config import WITH_PLL, EvalConfig
from mlm_core.evaluate.engine import ProgressFn, evaluate, report_notices
from mlm_core.evaluate.report import EvalReport
from mlm_core.evaluate.tally import Tally


def evaluate_distributed(model: str | None, texts: Sequence[str], configs: Sequence[EvalConfig], *,
                         seeds: Sequence[int] = (0,), with_pll: bool = WITH_PLL, cache_dir: str | Path | None = None,
                         reuse: bool = True, progress: ProgressFn | None = None,
                         device: str | None = None) -> EvalReport | None:
    """Under ``accelerate launch``: each process evaluates a contiguous slice of ``texts`` on its own
    device; the main process gathers counts and rows and returns the report (others return None).

    Masks depend only on (seed, sentence index), so the result equals a one-process run's.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from mlm_core.model.loading import load_model
    from mlm_core.training.jobs import leave_group

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())  # CPU processes: a gloo group
    loaded = load_model(model, str(state.device))
    with state.split_between_processes(list(range(len(texts)))) as mine:
        start = mine[0] if mine else len(texts)
        part = evaluate(loaded, texts[start : start + len(mine)], configs, seeds=seeds, with_pll=with_pll,
                        first_index=start, cache_dir=cache_dir, reuse=reuse,
                        progress=progress if state.is_main_process else None)
    payload = [(e.config.to_dict(), e.seed, e.tally.to_dict(), (e.folder / "sentences.csv").read_text("utf-8"),
                (e.folder / "tokens.csv").read_text("utf-8")) for e in part.entries]
    gathered = gather_object([payload])  # one payload per process, in rank (= text) order
    state.wait_for_everyone()
    leave_group(state)  # the last exchange: what follows is the main process's alone
    if not state.is_main_process:
        return None
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest, fingerprint = hash_texts(texts), model_fingerprint(loaded)
    entries = []
    for k, first in enumerate(gathered[0]):
        config, seed = EvalConfig.from_dict(first[0]), first[1]
        tally = Tally()
        folder = root / f".tmp-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        for n, name in enumerate(("sentences", "tokens")):
            bodies = [payload[k][3 + n] for payload in gathered]
            (folder / f"{name}.csv").write_text(
                bodies[0] + "".join(body.split("\n", 1)[1] for body in bodies[1:]), encoding="utf-8")
        for payload in gathered:
            tally.add(Tally.from_dict(payload[k][2]))
        write_summary(folder, config, seed, loaded.name, tally)
        final = root / entry_key(digest, fingerprint, config, seed, with_pll, 0, loaded.max_length)
        try:
            if final.exists():
                shutil.rmtree(final)
            os.replace(folder, final)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
        entries.append(Entry(config, seed, tally, final))
    return EvalReport(loaded.name, tuple(entries), with_pll, f"{state.device.type} x {state.num_processes}",
                      part.seconds, report_notices(entries, loaded) + (
                          f"Evaluated by {state.num_processes} processes with Accelerate.",))
