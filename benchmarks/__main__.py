"""Run every benchmark script in this folder and print their ratio lines: ``python -m benchmarks``.

Each script runs in its own process (fresh caches, no state shared between benchmarks) and must
end its output with ``ratio: X`` where X = ours / baseline (lower is better unless it says otherwise).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_"))
    failed = 0
    summary = []
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        done = subprocess.run([sys.executable, str(script)], cwd=HERE.parent, capture_output=True, text=True)
        sys.stdout.write(done.stdout)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines or not lines[-1].startswith("ratio: "):
            failed += 1
            sys.stderr.write(done.stderr[-2000:])
            summary.append(f"{script.stem}: FAILED (exit {done.returncode})")
        else:
            summary.append(f"{script.stem}: {lines[-1]}")
    print("== summary")
    print("\n".join(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
