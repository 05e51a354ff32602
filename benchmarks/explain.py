"""Cost of the "why?" views on the default model: one attention view and one 32-step Integrated
Gradients attribution, against the named baseline of one plain forward pass on the same input.

Inputs: three everyday sentences of exactly 30 tokens ([CLS] and [SEP] included), one [MASK]
each. The three measurements run interleaved in one process after a warm-up, with the same
torch thread count, so background load hits all of them alike.

* forward (baseline): ``model.forward.forward`` — logits only;
* attention view: ``attention_maps`` (every layer and head) + ``rollout`` (what the Rollout view draws);
* IG: ``attribute(..., method="ig", steps=32)`` with its default internal batch (all steps in one pass).

    python benchmarks/explain.py [--rounds N] [--device cpu] [--threads N]

Lower is better; the last line is ``ratio: IG / forward`` (IG needs 32 forward and backward
passes, so a ratio near 32-100 means the batching and the position-only vocabulary projection work).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks._results import Printer, write_result  # noqa: E402
from mlm_core.explain.attention import attention_maps, rollout  # noqa: E402
from mlm_core.explain.attribution import attribute  # noqa: E402
from mlm_core.model.forward import forward  # noqa: E402
from mlm_core.model.loading import load_model  # noqa: E402
from mlm_core.text.tokens import tokenize  # noqa: E402

SENTENCES = [
    "Every morning the old fisherman walked down to the harbour , checked the sky and the wind , and then "
    "pushed his small boat into the [MASK] .",
    "After a long day at school the tired children ran home , dropped their heavy bags by the door and then "
    "asked their mother for some [MASK] .",
    "The museum in the centre of our town was closed for repairs all week , so we spent the whole rainy "
    "afternoon in the old [MASK] instead .",
]
TOKENS = 30
STEPS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="passes over the sentences (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    loaded = load_model(None, device=args.device)
    torch.set_num_threads(args.threads or torch.get_num_threads())  # one count for all three measurements
    inputs = [tokenize(loaded.tokenizer, s).ids for s in SENTENCES]
    lengths = [len(ids) for ids in inputs]
    assert all(n == TOKENS for n in lengths), f"sentences must have {TOKENS} tokens, got {lengths}"

    def sync():
        if loaded.device.type == "cuda":
            torch.cuda.synchronize(loaded.device)

    def run_forward(ids):
        forward(loaded, ids)

    def run_attention(ids):
        rollout(attention_maps(loaded, ids))

    deltas = []

    def run_ig(ids):
        deltas.append(abs(attribute(loaded, ids, steps=STEPS).delta))

    measured = (("forward", run_forward), ("attention view", run_attention), ("IG 32 steps", run_ig))
    for ids in inputs:  # warm-up: allocator, transformers' attention recorders, captum imports
        for _ in range(2):
            for _, function in measured:
                function(ids)
    deltas.clear()

    times: dict[str, list[float]] = {name: [] for name, _ in measured}
    for round_ in range(args.rounds):
        for ids in inputs:
            for name, function in measured if round_ % 2 == 0 else measured[::-1]:  # alternate the order
                sync()
                start = time.perf_counter()
                function(ids)
                sync()
                times[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    ratio = medians["IG 32 steps"] / medians["forward"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    say = Printer()  # prints, and keeps the lines for results/explain.json
    say(
        f"model: {loaded.name} on {loaded.describe()['device']}; {len(inputs)} sentences of {TOKENS} tokens "
        f"x {args.rounds} rounds; load average {load:.2f}"
    )
    say(f"forward pass (baseline): median {medians['forward']:.1f} ms")
    say(f"attention view (all layers and heads + rollout): median {medians['attention view']:.1f} ms")
    say(
        f"Integrated Gradients, {STEPS} steps: median {medians['IG 32 steps']:.1f} ms "
        f"(median |convergence delta| {statistics.median(deltas):.1e})"
    )
    say(f"attention view / forward = {medians['attention view'] / medians['forward']:.2f}")
    say(f"lower is better: IG time / one forward pass = {ratio:.1f}")
    write_result(
        "explain", title=f"{STEPS}-step Integrated Gradients vs one forward pass, {TOKENS} tokens "
        f"(median; lower is better)",
        ours=f"IG {medians['IG 32 steps'] / 1000:.2f} s; attention view {medians['attention view']:.0f} ms",
        baseline=f"forward {medians['forward']:.0f} ms", ratio=ratio, goal="IG ≈ 1 s", better="lower",
        printed=say.lines,
        figures={"medians_ms": medians, "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
                 "median_abs_delta": statistics.median(deltas), "device": args.device, "model": loaded.name},
    )
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
