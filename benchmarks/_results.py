"""Where each benchmark leaves its figures (``benchmarks/results/<name>.json``) for ``python -m benchmarks``.

A result holds what the README's table shows (``ours``, ``baseline``, ``ratio``, ``goal``), the
lines the script printed, the command that produced it and the machine it ran on, so the README
section can be rebuilt later without re-running anything (``python -m benchmarks --readme-only``).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Captured when a benchmark imports this module, i.e. before it starts measuring: the
# background load it ran under, not the load it added itself.
LOAD_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def gpu_name() -> str | None:
    """The first CUDA device's name, or None (torch is imported only if the benchmark has it)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine() -> dict:
    """What the figures depend on: the hardware, the software and how busy the machine was."""
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "streamlit"):
        module = sys.modules.get(package)
        if module is not None:
            versions[package] = getattr(module, "__version__", "?")
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib(), 1) if memory_gib() else None,
        "os": os_name(),
        "gpu": gpu_name(),
        "versions": versions,
        "load_at_start": [round(x, 2) for x in LOAD_AT_START] if LOAD_AT_START else None,
        "load_at_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def command_line() -> str:
    """How to repeat this run: ``python benchmarks/NAME.py`` with the arguments it was given."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = script.relative_to(Path(__file__).resolve().parent.parent)
    except ValueError:
        shown = script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def write_result(name: str, *, title: str, ours: str, baseline: str, ratio: float, goal: str, better: str,
                 printed: list[str], figures: dict, machine_info: dict | None = None) -> Path:
    """Write ``results/<name>.json`` atomically (a half-written file would break the README rebuild).

    ``better`` is "lower" or "higher" (for the ratio); ``printed`` are the summary lines the
    script printed; ``figures`` the raw numbers behind them.
    """
    record = {
        "name": name,
        "title": title,
        "ours": ours,
        "baseline": baseline,
        "ratio": ratio,
        "goal": goal,
        "better": better,
        "command": command_line(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info or machine(),
        "printed": printed,
        "figures": figures,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    os.replace(partial, path)
    return path


class Printer:
    """``print`` that also keeps the lines, so the JSON holds exactly what the script printed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
