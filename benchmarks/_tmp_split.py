"""Throughput of batch analysis: mlm_core.evaluate against a loop over transformers' fill-mask pipeline.

Both sides get the same weights (the pipeline a copy of the model as transformers runs it,
``layout.as_it_comes``), the same sentences of the demo corpus and the same masks:
whole-word masking at 15% (exactly round(p·n) tokens, at least one per sentence), every chosen
token replaced by [MASK]. The pipeline reads each sentence with its masks typed in (the benchmark
checks that it tokenizes to exactly our masked ids, and keeps only those sentences) and returns
the top-5 at each mask; we score those against the originals, so both sides compute top-1/top-5
accuracy. Ours does more: log-probability of the original, categories, and per-sentence and
per-token rows written to disk. Pseudo-log-likelihood is off (the pipeline has no equivalent).

The sentences are split into blocks; ours and the pipeline alternate block by block (who goes
first alternates too), after a warm-up, so background load hits both alike.

    python benchmarks/evaluate.py [--sentences N] [--blocks K]

Higher is better: the last line is ``ratio: ours/pipeline`` in sentences per second.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._results import Printer, write_result  # noqa: E402
from mlm_core.evaluate import EvalConfig, evaluate, sentence_seed  # noqa: E402
from mlm_core.masking import Vocab, apply_strategy  # noqa: E402
from mlm_core.model.layout import as_it_comes  # noqa: E402
from mlm_core.model.loading import load_model  # noqa: E402
from mlm_core.resources import asset  # noqa: E402
from mlm_core.text.tokens import tokenize  # noqa: E402

DEMO = asset("demo_corpus.txt")
CONFIG = EvalConfig("whole-word", {"mlm_probability": 0.15, "exact": True, "mask_replace_prob": 1.0,
                                   "random_replace_prob": 0.0})
TOP_K = 5


def masked_text(tokens, result, mask_token: str) -> str:
    """The sentence with every masked token's characters replaced by the mask token."""
    text, parts, cursor = tokens.text, [], 0
    for position in result.chosen_positions:
        start, end = tokens.offsets[position]
        parts.append(text[cursor:start] + mask_token)
        cursor = end
    return "".join(parts) + text[cursor:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=400, help="sentences of the demo corpus (default 400)")
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks (default 4)")
    args = parser.parse_args()

    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    loaded = load_model(None, device="cpu")
    fill_mask = pipeline("fill-mask", model=as_it_comes(loaded.model), tokenizer=loaded.tokenizer, device=loaded.device)
    vocab, strategy = Vocab.from_tokenizer(loaded.tokenizer), CONFIG.build()

    # The same masks on both sides: ours come from the engine's own per-sentence seeds.
    lines = [line.strip() for line in DEMO.read_text().splitlines() if line.strip()]
    sentences, prompts, answers, left_out = [], [], [], 0
    for line in lines[: args.sentences * 2]:
        tokens = tokenize(loaded.tokenizer, line)
        result = apply_strategy(tokens, strategy, vocab, rng=sentence_seed(0, len(sentences)))
        prompt = masked_text(tokens, result, loaded.mask_token)
        if list(tokenize(loaded.tokenizer, prompt).ids) != [int(i) for i in result.input_ids]:
            left_out += 1  # a mask inside a word would not survive as text: leave that sentence out of both
            continue
        sentences.append(line)
        prompts.append(prompt)
        answers.append([int(result.labels[p]) for p in result.chosen_positions])
        if len(sentences) == args.sentences:
            break

    def baseline(start: int, stop: int) -> tuple[int, int, int]:
        n = hit1 = hit5 = 0
        for prompt, original in zip(prompts[start:stop], answers[start:stop]):
            out = fill_mask(prompt, top_k=TOP_K)
            per_mask = out if len(original) > 1 else [out]
            for guesses, answer in zip(per_mask, original):
                ids = [g["token"] for g in guesses]
                n, hit1, hit5 = n + 1, hit1 + (ids[0] == answer), hit5 + (answer in ids)
        return n, hit1, hit5

    with tempfile.TemporaryDirectory() as cache:
        import collections, functools, statistics
        from mlm_core.evaluate import engine as eng
        from mlm_core.model import bert_pass as bp
        tot = collections.defaultdict(float)
        def wrap(mod, name):
            f = getattr(mod, name)
            @functools.wraps(f)
            def g(*a, **k):
                t = time.perf_counter()
                try: return f(*a, **k)
                finally: tot[name] += time.perf_counter() - t
            setattr(mod, name, g)
        for m, n in ((bp, "bert_pass"), (bp, "head_logits"), (eng._Engine, "_rank"), (eng, "mask_each"), (eng._Engine, "_prepare"),
                     (eng._Engine, "_sentence"), (eng, "model_fingerprint"), (eng, "prune_cache"), (eng, "write_summary"), (eng, "record_run"), (eng._Engine, "_pass_input")):
            wrap(m, n)

        def ours(start: int, stop: int):
            evaluate(loaded, sentences[start:stop], CONFIG, first_index=start, with_pll=False, cache_dir=cache, reuse=False)

        ours(0, 16); baseline(0, 16)
        tot.clear(); total = 0.0; N = 0
        for rep in range(5):
            for block in range(4):
                s0, s1 = block * 100, block * 100 + 100
                baseline(s0, s0 + 20)
                t = time.perf_counter(); ours(s0, s1); total += time.perf_counter() - t; N += 1
        print("per block", round(total / N * 1000, 1), "ms")
        for k, v in sorted(tot.items(), key=lambda kv: -kv[1]): print(f"{k:20s} {v / N * 1000:6.1f} ms")
    return
    n = len(sentences)
    rate = {name: n / seconds[name] for name in seconds}
    say = Printer()  # prints, and keeps the lines for results/evaluate.json
    say(f"model: {loaded.name} on {loaded.describe()['device']}; {n} sentences of {DEMO.name} "
        f"({left_out} left out: a mask inside a word does not survive as text), "
          f"{totals['ours'][0]} masks, {args.blocks} alternating blocks")
    say(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    for name, label in (("ours", "ours (mlm_core.evaluate, batched, logits at masks only)"),
                        ("pipeline", "pipeline (transformers fill-mask, one call per sentence)")):
        masks, hit1, hit5 = totals[name]
        say(f"{label}: {rate[name]:.1f} sentences/s ({seconds[name]:.2f} s); top-1 {hit1 / masks:.3f}, "
            f"top-5 {hit5 / masks:.3f} over {masks} masks")
    ratio = rate["ours"] / rate["pipeline"]
    verdict = "ours is faster" if ratio > 1 else "the pipeline is faster"
    say(f"higher is better: ours / pipeline sentences per second = {ratio:.2f} ({verdict})")
    write_result(
        "evaluate", title=f"batch analysis, {n} sentences (sentences/s; higher is better)",
        ours=f"{rate['ours']:.1f} sentences/s",
        baseline=f'`pipeline("fill-mask")` loop {rate["pipeline"]:.1f} sentences/s',
        ratio=ratio, goal="≥ 5", better="higher", printed=say.lines,
        figures={"sentences_per_s": rate, "seconds": seconds, "sentences": n, "masks": totals["ours"][0],
                 "top1_top5": {k: [v[1] / v[0], v[2] / v[0]] for k, v in totals.items()},
                 "model": loaded.name},
    )
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
