"""The atheris harnesses under pytest: saved crash inputs replay cleanly, and each harness fuzzes for a
short budget in a subprocess (libFuzzer owns the process it runs in).

``MASKLAB_FUZZ_SECONDS`` sets the budget per harness (default 20). With ``MASKLAB_WRITE_RESULTS=1``
the figures (executions, seconds, crashes found now, crashes found earlier and fixed) go to
benchmarks/results/fuzz.json.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("atheris")  # requirements-dev.txt; the harnesses cannot run without it

import fuzz_corpus  # noqa: E402
import fuzz_masking  # noqa: E402
import fuzz_model_folder  # noqa: E402
from fuzz_support import HERE, ROOT, SEEDS, regression_inputs  # noqa: E402

from mlm_core.errors import (
    CorpusError,  # noqa: E402
    MaskLabError,  # noqa: E402
)

FUZZ_SECONDS = int(os.environ.get("MASKLAB_FUZZ_SECONDS", "20"))
HARNESSES = {
    "corpus": ("corpus reader", fuzz_corpus),
    "masking": ("tokenize → mask", fuzz_masking),
    "model_folder": ("model folder loading", fuzz_model_folder),
}
RESULTS = ROOT / "benchmarks" / "results" / "fuzz.json"
DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_figures: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def write_results():
    """After the module: the figures of the harnesses that ran, when asked for."""
    yield
    if os.environ.get("MASKLAB_WRITE_RESULTS") != "1" or not _figures:
        return
    rows = []
    for harness, figures in _figures.items():
        label = HARNESSES[harness][0]
        rows += [
            {"name": f"{label}: executions", "value": figures["executions"]},
            {"name": f"{label}: seconds", "value": figures["seconds"]},
            {
                "name": f"{label}: executions per second",
                "value": round(figures["executions"] / max(1, figures["seconds"])),
            },
            {"name": f"{label}: crashes found in this run", "value": figures["crashes"]},
            {
                "name": f"{label}: crashes found earlier and fixed (regression inputs)",
                "value": figures["fixed"],
            },
        ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"title": "Fuzzing (atheris)", "rows": rows}, indent=1) + "\n")


def test_every_harness_has_saved_regressions():
    # Each crash the fuzzers found was fixed and its input saved; an empty folder means a lost regression.
    assert regression_inputs("corpus") and regression_inputs("masking")


@pytest.mark.parametrize("path", regression_inputs("corpus"), ids=lambda p: p.name)
def test_corpus_crash_inputs_now_give_a_corpus_or_a_corpus_error(path):
    data = path.read_bytes()
    fuzz_corpus.check(data)  # raises on any exception but CorpusError, or on a broken invariant
    body, name, column, unit, max_bytes = fuzz_corpus.parse(data)
    with pytest.raises(CorpusError) as caught:  # each saved input is a bad file: it must say why, on one line
        fuzz_corpus_read(body, name, column, unit, max_bytes)
    assert "\n" not in str(caught.value)


def fuzz_corpus_read(body, name, column, unit, max_bytes):
    from mlm_core.text.corpus import read_corpus

    return read_corpus(body, name, column, unit, **({} if max_bytes is None else {"max_bytes": max_bytes}))


@pytest.mark.parametrize("path", regression_inputs("masking"), ids=lambda p: p.stem)
def test_masking_crash_cases_now_pass_or_give_a_masklab_error(path):
    case = json.loads(path.read_text())
    try:
        fuzz_masking.run_case(case)  # asserts the engine's invariants when it succeeds
    except MaskLabError as exc:
        assert str(exc).strip() and "\n" not in str(exc)


def test_model_folder_seeds_and_their_mutations_load_or_give_a_masklab_error():
    """A few dozen inputs in this process, in seconds: each seed, seeded byte changes of it, saved crashes."""
    rng = random.Random(0)
    inputs = []
    for seed in sorted((SEEDS / "model_folder").iterdir()):
        data = seed.read_bytes()
        inputs.append(data)
        for _ in range(8):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(1, len(mutated))] = rng.randrange(256)  # byte 0 keeps the file chosen
            inputs.append(bytes(mutated))
    inputs += [path.read_bytes() for path in regression_inputs("model_folder")]
    for data in inputs:
        fuzz_model_folder.check(data)  # raises on any exception but MaskLabError, or a broken invariant
    assert len(inputs) >= 36


@pytest.mark.parametrize("harness", list(HARNESSES))
def test_harness_fuzzes_for_its_budget_without_a_crash(harness, tmp_path):
    """libFuzzer for MASKLAB_FUZZ_SECONDS from the seeds and saved regressions: no crash, OOM or timeout."""
    module = HARNESSES[harness][1]
    work, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    artifacts.mkdir()
    shutil.copytree(SEEDS / harness, work)  # libFuzzer adds what it finds to the first folder: a copy
    if harness == "corpus":
        for path in regression_inputs(harness):
            shutil.copy(path, work / path.name)
    command = [
        sys.executable,
        module.__file__,
        f"-max_total_time={FUZZ_SECONDS}",
        "-timeout=30",  # one input may take this long on a busy machine; longer is a hang worth reporting
        "-rss_limit_mb=4096",  # torch and three tokenizers take ~400 MB before the first input
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        str(work),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        command,
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=FUZZ_SECONDS + 600,
        stdin=subprocess.DEVNULL,
    )
    output = done.stdout + done.stderr
    crashes = sorted(artifacts.iterdir())
    runs = DONE.search(output)
    _figures[harness] = {
        "executions": int(runs.group(1)) if runs else 0,
        "seconds": int(runs.group(2)) if runs else FUZZ_SECONDS,
        "crashes": len(crashes),
        "fixed": len(regression_inputs(harness)),
    }
    details = "\n".join(f"{p.name}: {base64.b64encode(p.read_bytes()[:2000]).decode()}" for p in crashes)
    assert done.returncode == 0 and not crashes, f"{output[-6000:]}\nartifacts (base64):\n{details}"
    assert runs and int(runs.group(1)) > 0, output[-3000:]
