"""Run every benchmark script in this folder, then rebuild the README's figures: ``python -m benchmarks``.

Each script runs in its own process (fresh caches, no state shared between benchmarks), must
end its output with ``ratio: X`` where X = ours / baseline (lower is better unless it says
otherwise), and saves its figures in ``benchmarks/results/<name>.json``. From those files (and
any suite figures saved there, e.g. ``chaos.json``, ``fuzz.json``) the section of README.md
between ``<!-- reliability:start -->`` and ``<!-- reliability:end -->`` is rebuilt.

    python -m benchmarks                      # every benchmark, then the README section
    python -m benchmarks --only classroom     # one benchmark (repeatable), then the README section
    python -m benchmarks --readme-only        # the README section from the saved results
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = ROOT / "README.md"
RESULTS = HERE / "results"


def benchmark_scripts() -> dict[str, Path]:
    return {p.stem: p for p in sorted(HERE.glob("*.py")) if not p.name.startswith("_")}


def run_benchmarks(scripts: dict[str, Path]) -> int:
    failed = 0
    summary = []
    for name, script in scripts.items():
        print(f"== {name}", flush=True)
        started = time.time()
        done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True)
        sys.stdout.write(done.stdout)
        lines = done.stdout.strip().splitlines()
        saved = RESULTS / f"{name}.json"
        if done.returncode == 0 and lines and not lines[-1].startswith("ratio: ") and not saved.exists():
            summary.append(f"{name}: skipped ({lines[-1]})")  # e.g. the GPU benchmark on a machine without one
        elif done.returncode != 0 or not lines or not lines[-1].startswith("ratio: "):
            failed += 1
            sys.stderr.write(done.stderr[-2000:])
            summary.append(f"{name}: FAILED (exit {done.returncode}); the README keeps its previous figures")
        elif not saved.exists() or saved.stat().st_mtime < started:
            failed += 1
            summary.append(f"{name}: {lines[-1]}, but it did not save {saved.relative_to(ROOT)}")
        else:
            summary.append(f"{name}: {lines[-1]}")
    print("== summary")
    print("\n".join(summary))
    return failed


def main(argv: list[str] | None = None) -> int:
    from benchmarks._report import MarkerError, update_readme

    scripts = benchmark_scripts()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(scripts), metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(scripts)}")
    parser.add_argument("--readme-only", action="store_true",
                        help="run nothing; rebuild the README section from benchmarks/results/*.json")
    args = parser.parse_args(argv)
    if args.only and args.readme_only:
        parser.error("--only and --readme-only exclude each other")

    failed = 0
    if not args.readme_only:
        failed = run_benchmarks({name: scripts[name] for name in args.only} if args.only else scripts)
    try:
        skipped = update_readme(README, RESULTS, expected=list(scripts))
    except MarkerError as exc:
        print(f"error: README.md not updated: {exc}", file=sys.stderr)
        return 2
    for line in skipped:
        print(f"warning: {line}", file=sys.stderr)
    print(f"README.md: section rebuilt from {RESULTS.relative_to(ROOT)}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # `python benchmarks/__main__.py` works too
    sys.exit(main())
